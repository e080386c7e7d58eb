"""Text generation on both runtimes: a tiny instruction-tuned causal LM (a registered generation version,
tests/support/generation_serving.py) served by the real program, ``python -m freestack_server``, started
exactly as its images start it (tests/support/images.py): Seldon's protocol (strData, jsonData) and the Open
Inference Protocol with mlserver-huggingface's tensors (plain HTTP and Triton's official client). Answers
equal what the version answers in this process; parameters beyond the deployment's bounds get a 400 naming
the bound; an over-long prompt is cut from the left (Seldon's server here) or refused (MLServer's here);
concurrent requests share a generate call; the request log keeps prompts, completions and token counts,
and the monitor reads it; the deploy's smoke test passes on a real server and names a wrong answer."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from freestack.errors import DeployError
from freestack.serving.smoke import smoke_test, smoke_test_v2
from freestack.serving.spec import GenerationBounds
from freestack.spec import parse_spec
from tests.dags.test_score_generation_dag import _spec as chat_pipeline
from tests.support.generation_serving import GenerationVersion, make_generation_version
from tests.support.images import ImageServer, start_like_image
from tests.support.serving import needs_serving_env
from tests.support.serving_hostile import PREDICT, read_answer, request

ROOT = Path(__file__).resolve().parents[2]
KEEP_MODEL_SERVERS = True  # the module's two servers answer every test (see tests/conftest.py)
pytestmark = [
    needs_serving_env,
    pytest.mark.skipif(
        not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
        reason="the MLServer environment is missing: run `make mlserver-venv`",
    ),
]

MODEL = "chat"
MAX_NEW, DEFAULT_NEW, MAX_TEMPERATURE, MAX_PROMPT, MAX_STOPS, MAX_PROMPTS = 24, 6, 1.5, 64, 2, 3
TRUNCATE = {"seldon": "left", "mlserver": "refuse"}
LONG = "Tell me about the digits " + "one two three four five " * 30  # far over MAX_PROMPT tokens


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generation")


@pytest.fixture(scope="module")
def version(work) -> GenerationVersion:
    return make_generation_version((work / "storage").as_uri(), MODEL, "v1", work)


def _env(work: Path, runtime: str) -> dict[str, str]:
    """What a manifest gives the container: the model's name, one worker, the request log and the
    deployment's generation bounds (FREESTACK_GENERATION_*, as deploy.generation writes them)."""
    bounds = GenerationBounds(
        max_new_tokens=MAX_NEW,
        default_max_new_tokens=DEFAULT_NEW,
        max_temperature=MAX_TEMPERATURE,
        max_prompt_tokens=MAX_PROMPT,
        truncate=TRUNCATE[runtime],
        max_stop_strings=MAX_STOPS,
        max_prompts_per_request=MAX_PROMPTS,
    )
    return {
        "FREESTACK_MODEL_NAME": MODEL,
        "FREESTACK_SERVER_WORKERS": "1",
        "FREESTACK_HOME": str(work),
        "FREESTACK_REQUEST_LOG_URI": f"{(work / 'storage').as_uri()}/monitoring/{MODEL}",
        "FREESTACK_REQUEST_LOG_RATE": "1.0",
        "FREESTACK_REQUEST_LOG_FLUSH_SECONDS": "1",
        **bounds.env(),
    }


@pytest.fixture(scope="module")
def servers(work, version):
    """Both runtimes serving the version, each started as its image starts it."""
    out: dict[str, ImageServer] = {}
    try:
        for runtime in ("seldon", "mlserver"):
            ready = f"/v2/models/{MODEL}/ready" if runtime == "mlserver" else "/health/status"
            out[runtime] = start_like_image(
                runtime, version.uri, work / runtime, env=_env(work, runtime), ready_path=ready, timeout=180
            )
        yield out
    finally:
        for server in out.values():
            server.stop()


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def seldon(servers, body) -> tuple[int, dict]:
    return post(servers["seldon"].url + PREDICT, body)


def v2(servers, body) -> tuple[int, dict]:
    return post(f"{servers['mlserver'].url}/v2/models/{MODEL}/infer", body)


def args(*prompts: str, **parameters) -> dict:
    """A V2 request as mlserver-huggingface's clients send one: the prompts in "args", the parameters as raw inputs."""
    inputs = [{"name": "args", "datatype": "BYTES", "shape": [len(prompts)], "data": list(prompts)}]
    for name, value in parameters.items():
        datatype = (
            "BYTES" if isinstance(value, str | list) else "FP32" if isinstance(value, float) else "INT32"
        )
        data = value if isinstance(value, list) else [value]
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": [len(data)],
                "data": data,
                "parameters": {"content_type": "raw" if datatype != "BYTES" else "str"},
            }
        )
    return {"inputs": inputs}


def generated(body: dict) -> list[dict]:
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["parameters"]["content_type"]) == (
        "output",
        "BYTES",
        "hg_jsonlist",
    )
    assert out["shape"] == [len(out["data"]), 1]
    return [json.loads(v) for v in out["data"]]


# ---------------------------------------------------------------------------------------------------------
# Seldon's protocol


def test_strdata_and_jsondata_prompts_and_messages_answer_as_in_process(servers, version):
    chat = version.chat("What is 2 + 2?")
    code, body = seldon(servers, {"strData": "What is 2 + 2?"})
    assert code == 200, body
    assert (
        body["strData"] == version.alone([chat], max_new_tokens=DEFAULT_NEW)[0]
    )  # no parameters: the default
    assert body["meta"]["tags"]["model_version"] == "v1" and body["meta"]["tags"]["request_id"]

    code, body = seldon(
        servers,
        {
            "jsonData": {"prompt": "What is 2 + 2?", "parameters": {"max_new_tokens": 12}},
            "meta": {"puid": "mine-1"},
        },
    )
    assert code == 200, body
    (c,) = body["jsonData"]["completions"]
    want = version.answer([chat], max_new_tokens=12)[0]
    assert c == {
        "text": want.text,
        "finish_reason": want.finish_reason,
        "prompt_tokens": want.prompt_tokens,
        "completion_tokens": want.completion_tokens,
        "truncated": False,
    }
    assert body["jsonData"]["model_version"] == "v1" and body["meta"]["tags"]["request_id"] == "mine-1"

    turns = [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2 + 2?"},
    ]
    code, body = seldon(servers, {"jsonData": {"messages": turns, "parameters": {"max_new_tokens": 8}}})
    assert code == 200, body
    assert (
        body["jsonData"]["completions"][0]["text"]
        == version.alone([version.chat(messages=turns)], max_new_tokens=8)[0]
    )

    code, body = seldon(
        servers,
        {
            "jsonData": {
                "instances": [{"prompt": "What is 7 + 5?"}, {"messages": turns}],
                "parameters": {"max_new_tokens": 8},
            }
        },
    )
    assert code == 200, body
    chats = [version.chat("What is 7 + 5?"), version.chat(messages=turns)]
    assert [c["text"] for c in body["jsonData"]["completions"]] == version.alone(chats, max_new_tokens=8)
    assert body["meta"]["tags"]["generate_batch"] == 2  # one request's prompts: one generate call


def test_seldons_metadata_describes_prompts_completions_and_the_bounds(servers):
    with urllib.request.urlopen(f"{servers['seldon'].url}/api/v1.0/metadata", timeout=10) as r:
        meta = json.loads(r.read())
    assert [i["messagetype"] for i in meta["inputs"]] == ["strData", "jsonData"]
    assert [o["messagetype"] for o in meta["outputs"]] == ["strData", "jsonData"]
    custom = meta["custom"]
    assert (custom["task"], custom["max_new_tokens"], custom["max_prompt_tokens"], custom["truncate"]) == (
        "generation",
        str(MAX_NEW),
        str(MAX_PROMPT),
        "left",
    )


def test_stop_strings_end_an_answer_and_sampling_stays_within_its_bounds(servers, version):
    chat = version.chat("Reverse the digits: 98765")
    full = version.answer([chat], max_new_tokens=MAX_NEW)[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    want = version.answer([chat], max_new_tokens=MAX_NEW, stop=(stop,))[0]
    assert want.finish_reason == "stop" and len(want.text) < len(full)
    code, body = seldon(
        servers,
        {
            "jsonData": {
                "prompt": "Reverse the digits: 98765",
                "parameters": {"max_new_tokens": MAX_NEW, "stop": stop},
            }
        },
    )
    assert code == 200, body
    (c,) = body["jsonData"]["completions"]
    assert (c["text"], c["finish_reason"]) == (want.text, "stop")
    sampled = {"max_new_tokens": 10, "temperature": MAX_TEMPERATURE, "top_p": 0.9, "stop": ["\n", "##"]}
    code, body = seldon(servers, {"jsonData": {"prompt": "Say something", "parameters": sampled}})
    assert code == 200 and body["jsonData"]["completions"][0]["completion_tokens"] <= 10, body


@pytest.mark.parametrize("runtime", ["seldon", "mlserver"])
@pytest.mark.parametrize(
    ("parameters", "says"),
    [
        ({"max_new_tokens": MAX_NEW + 1}, f"bound of {MAX_NEW} (deploy.generation.max_new_tokens)"),
        (
            {"temperature": MAX_TEMPERATURE + 0.1},
            f"bound of {MAX_TEMPERATURE:g} (deploy.generation.max_temperature)",
        ),
        ({"stop": ["a", "b", "c"]}, f"at most {MAX_STOPS} (deploy.generation.max_stop_strings)"),
        ({"top_p": 0}, '"top_p" must be a number above 0'),
        ({"max_new_tokens": 0}, '"max_new_tokens" must be a whole number'),
        ({"temperature": -1}, '"temperature" must be a number, 0 (greedy) or more'),
        ({"num_beams": 4}, "unknown generation parameters ['num_beams']"),
    ],
    ids=["max_new_tokens", "temperature", "stop", "top_p", "zero-tokens", "negative-temperature", "unknown"],
)
def test_parameters_beyond_the_bounds_are_400_naming_the_bound(servers, runtime, parameters, says):
    if runtime == "seldon":
        code, body = seldon(servers, {"jsonData": {"prompt": "hi", "parameters": parameters}})
        info = body["status"]["info"] if code != 200 else ""
    else:  # as mlserver-huggingface's clients send them: inputs named by the parameter
        code, body = v2(servers, args("hi", **parameters))
        info = body.get("error", "")
        says = "input 'num_beams' is not one this model takes" if "num_beams" in parameters else says
    assert code == 400 and says in info, body


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (
            {"data": {"ndarray": [[1.0, 2.0]]}},
            'takes no "data" (ndarray or tensor): send {"strData": "a prompt"}',
        ),
        ({"data": {"tensor": {"shape": [1, 2], "values": [1.0, 2.0]}}}, 'takes no "data"'),
        ({"binData": "aGk="}, 'takes no "binData"'),
        ({"jsonData": {"prompt": 5}}, "a prompt is text, not int"),
        ({"jsonData": {"messages": [{"role": "robot", "content": "hi"}]}}, "each message needs a role"),
        ({"jsonData": {"instances": []}}, '"instances" must be a non-empty list'),
        ({"jsonData": {"prompt": "a", "messages": []}}, 'must hold one of "prompt" and "messages"'),
        ({"jsonData": {"prompt": "a", "top_k": 3}}, "jsonData holds ['top_k']"),
        ({"jsonData": {"prompt": "a", "parameters": [1]}}, '"parameters" must be an object'),
        ({"strData": 5}, '"strData" must be a string'),
    ],
    ids=[
        "ndarray",
        "tensor",
        "binData",
        "number",
        "role",
        "no-instances",
        "both",
        "unknown-key",
        "parameters",
        "strData",
    ],
)
def test_what_a_generation_model_does_not_take_gets_a_400_saying_what_to_send(servers, message, says):
    code, body = seldon(servers, message)
    assert code == 400 and says in body["status"]["info"], body


@pytest.mark.parametrize("n", [MAX_PROMPTS + 1, 10_000])
def test_a_request_of_more_prompts_than_the_deployment_takes_is_a_413_on_both_runtimes(servers, n):
    """One request may carry at most deploy.generation.max_prompts_per_request prompts (not max_batch_rows,
    10,000 by default: that many would hold every other client for minutes)."""
    says = (
        f"{n} prompts in one request; this deployment answers at most {MAX_PROMPTS} a request "
        "(deploy.generation.max_prompts_per_request)"
    )
    code, body = seldon(
        servers, {"jsonData": {"instances": [{"prompt": f"What is {i} + 1?"} for i in range(n)]}}
    )
    assert code == 413 and says in body["status"]["info"], body
    code, body = v2(servers, args(*[f"What is {i} + 1?" for i in range(n)], max_new_tokens=2))
    assert code == 413 and set(body) == {"error"} and says in body["error"], body
    code, body = v2(servers, args(*[f"What is {i} + 1?" for i in range(MAX_PROMPTS)], max_new_tokens=2))
    assert code == 200 and len(generated(body)) == MAX_PROMPTS, body


def test_a_lone_surrogate_is_refused_not_a_500(servers):
    code, body = seldon(servers, b'{"strData": "hi \\ud800"}')
    assert code == 400 and "lone surrogate" in body["status"]["info"], body


def test_an_over_long_prompt_is_cut_from_the_left_where_truncate_is_left(servers, version):
    code, body = seldon(servers, {"jsonData": {"prompt": LONG, "parameters": {"max_new_tokens": 8}}})
    assert code == 200, body
    (c,) = body["jsonData"]["completions"]
    want = version.answer([version.chat(LONG)], max_new_tokens=8, max_prompt_tokens=MAX_PROMPT)[0]
    assert c["truncated"] is True and c["prompt_tokens"] == MAX_PROMPT and c["text"] == want.text


def test_an_over_long_prompt_is_refused_where_truncate_is_refuse(servers, version):
    code, body = v2(servers, args(LONG, max_new_tokens=8))
    assert code == 413 and set(body) == {"error"}, body
    assert f"limit of {MAX_PROMPT} (deploy.generation.max_prompt_tokens)" in body["error"]
    assert "generation.truncate: left" in body["error"]
    code, body = v2(servers, args("What is 2 + 2?", max_new_tokens=8))  # the next request is served as ever
    assert code == 200 and generated(body)[0]["truncated"] is False


# ---------------------------------------------------------------------------------------------------------
# the Open Inference Protocol, as mlserver-huggingface speaks it


def test_oip_speaks_mlserver_huggingfaces_tensors(servers, version):
    with urllib.request.urlopen(f"{servers['mlserver'].url}/v2/models/{MODEL}", timeout=10) as r:
        meta = json.loads(r.read())
    assert {"args", "array_inputs", "max_new_tokens", "temperature", "top_p", "stop"} <= {
        i["name"] for i in meta["inputs"]
    }
    assert meta["outputs"] == [
        {
            "name": "output",
            "datatype": "BYTES",
            "shape": [-1, 1],
            "parameters": {"content_type": "hg_jsonlist"},
        }
    ]
    assert meta["parameters"]["task"] == "generation" and meta["parameters"]["max_new_tokens"] == MAX_NEW

    code, body = v2(servers, args("What is 2 + 2?", max_new_tokens=9))  # the parameter as a raw input
    assert code == 200, body
    (one,) = generated(body)
    want = version.answer([version.chat("What is 2 + 2?")], max_new_tokens=9)[0]
    assert one == {
        "generated_text": want.text,
        "finish_reason": want.finish_reason,
        "prompt_tokens": want.prompt_tokens,
        "completion_tokens": want.completion_tokens,
        "truncated": False,
    }

    prompts = ["What is 2 + 2?", "Reverse the digits: 123"]
    code, body = v2(
        servers, {**args(*prompts), "parameters": {"max_new_tokens": 7}}
    )  # parameters of the request
    assert code == 200, body
    assert [g["generated_text"] for g in generated(body)] == version.alone(
        [version.chat(p) for p in prompts], max_new_tokens=7
    )

    turns = [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 2 + 2?"},
    ]
    chat_body = {
        "inputs": [
            {
                "name": "array_inputs",
                "datatype": "BYTES",
                "shape": [3],
                "parameters": {"content_type": "hg_jsonlist"},
                "data": [json.dumps(m) for m in turns],
            }
        ],
        "parameters": {"max_new_tokens": 6},
    }
    code, body = v2(servers, chat_body)
    assert code == 200, body
    assert (
        generated(body)[0]["generated_text"]
        == version.alone([version.chat(messages=turns)], max_new_tokens=6)[0]
    )

    code, body = v2(
        servers, {**args("What is 2 + 2?", max_new_tokens=5), "parameters": {"return_full_text": True}}
    )
    assert code == 200 and generated(body)[0]["generated_text"].startswith("What is 2 + 2?"), body


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
            "one prompt input, got ['input']",
        ),
        (
            {"inputs": [{"name": "args", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
            "prompts are BYTES",
        ),
        (
            {
                **args("hi"),
                "inputs": [
                    *args("hi")["inputs"],
                    {"name": "num_beams", "datatype": "INT32", "shape": [1], "data": [2]},
                ],
            },
            "input 'num_beams' is not one this model takes",
        ),
        (args("hi", max_new_tokens=[3, 4]), "a generation parameter is one value"),
        (
            {**args("hi"), "parameters": {"num_beams": 4}},
            "unknown generation parameters ['num_beams']: a request may set",
        ),
        (
            {**args("hi"), "parameters": {"max_tokens": 5, "max_new_tokens": 5}},
            "unknown generation parameters ['max_tokens']",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "array_inputs",
                        "datatype": "BYTES",
                        "shape": [1],
                        "parameters": {"content_type": "hg_jsonlist"},
                        "data": ["{not json"],
                    }
                ]
            },
            "a value is not JSON",
        ),
    ],
    ids=[
        "no-prompt-input",
        "numbers",
        "unknown-input",
        "two-values",
        "unknown-parameter",
        "misnamed-parameter",
        "bad-json",
    ],
)
def test_bad_v2_generation_requests_get_a_400_in_the_v2_format(servers, body, says):
    code, answer = v2(servers, body)
    assert code == 400 and set(answer) == {"error"} and says in answer["error"], answer


def test_the_official_oip_client_generates_over_http_and_grpc(servers, version):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    want = version.alone([version.chat("What is 7 + 5?")], max_new_tokens=8)[0]
    server = servers["mlserver"]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    prompt = httpclient.InferInput("args", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"What is 7 + 5?"], dtype=object), binary_data=False)
    tokens = httpclient.InferInput("max_new_tokens", [1], "INT32")
    tokens.set_data_from_numpy(np.array([8], dtype=np.int32), binary_data=False)
    got = client.infer(
        MODEL, [prompt, tokens], outputs=[httpclient.InferRequestedOutput("output", binary_data=False)]
    )
    assert json.loads(got.as_numpy("output").reshape(-1)[0])["generated_text"] == want
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    gprompt = grpcclient.InferInput("args", [1], "BYTES")
    gprompt.set_data_from_numpy(np.array([b"What is 7 + 5?"], dtype=object))
    gtokens = grpcclient.InferInput("max_new_tokens", [1], "INT32")
    gtokens.set_data_from_numpy(np.array([8], dtype=np.int32))
    answer = grpc.infer(MODEL, [gprompt, gtokens]).as_numpy("output").reshape(-1)[0]
    assert json.loads(answer)["generated_text"] == want


# ---------------------------------------------------------------------------------------------------------
# concurrency: one generate call for the requests that arrive together

PROMPTS = [f"Question {i}: what is {i} + {3 * i}?" for i in range(8)]


def test_concurrent_seldon_requests_share_a_generate_call_and_each_gets_its_own_answer(servers, version):
    """Eight keep-alive connections write their requests at once: the worker's round parks their prompts
    and answers them with one left-padded generate call (meta.tags.generate_batch, and the Prometheus counter
    of requests that shared a call), each with its own prompt's answer."""
    want = version.alone([version.chat(p) for p in PROMPTS], max_new_tokens=10)
    socks = [socket.create_connection(("127.0.0.1", servers["seldon"].port), timeout=60) for _ in PROMPTS]
    batches = []
    try:
        for sock in socks:  # each connection accepted and idle, as a client's pool holds them
            sock.sendall(request("GET", "/health/ping", b"", None))
            assert read_answer(sock)[0].status == 200
        for _ in range(3):
            messages = [
                json.dumps({"jsonData": {"prompt": p, "parameters": {"max_new_tokens": 10}}}).encode()
                for p in PROMPTS
            ]
            for sock, message in zip(socks, messages, strict=True):
                sock.sendall(request("POST", PREDICT, message))
            for i, sock in enumerate(socks):
                answer, _ = read_answer(sock)
                assert answer.status == 200, answer.body
                body = answer.json()
                assert body["jsonData"]["completions"][0]["text"] == want[i]
                batches.append(body["meta"]["tags"]["generate_batch"])
    finally:
        for sock in socks:
            sock.close()
    assert max(batches) == len(PROMPTS), batches  # all eight in one call (batch_prompts: 8)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{servers['seldon'].metrics_port}/metrics", timeout=5
        ) as r:
            lines = [
                line
                for line in r.read().decode().splitlines()
                if line.startswith("freestack_generate_batched_requests_total")
            ]
        if lines and sum(float(line.rsplit(" ", 1)[1]) for line in lines) >= len(PROMPTS):
            break
        time.sleep(0.5)
    assert lines and sum(float(line.rsplit(" ", 1)[1]) for line in lines) >= len(PROMPTS), lines


def test_concurrent_v2_requests_join_one_continuous_batch_and_each_gets_its_own_answer(servers, version):
    want = version.alone([version.chat(p) for p in PROMPTS], max_new_tokens=10)
    start = threading.Barrier(len(PROMPTS))

    def one(i: int):
        start.wait()
        return v2(servers, {"id": f"c{i}", **args(PROMPTS[i], max_new_tokens=10)})

    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        results = list(pool.map(one, range(len(PROMPTS))))
    for i, (code, body) in enumerate(results):
        assert code == 200 and body["id"] == f"c{i}", body
        assert generated(body)[0]["generated_text"] == want[i]


# ---------------------------------------------------------------------------------------------------------
# the request log, and the monitor reading it


def _logged(work: Path, request_id: str, rows: int, timeout: float = 20.0) -> list[dict]:
    folder = work / "storage" / "monitoring" / MODEL / "requests"
    deadline = time.monotonic() + timeout
    while True:
        found = [
            r
            for f in folder.rglob("*.parquet")
            for r in pq.read_table(f).to_pylist()
            if r["request_id"] == request_id
        ]
        if len(found) >= rows or time.monotonic() > deadline:
            return sorted(found, key=lambda r: r["row"])
        time.sleep(0.5)


def test_the_request_log_keeps_prompts_completions_and_token_counts(servers, work, version):
    turns = [{"role": "user", "content": "What is 1 + 1?"}]
    code, body = seldon(
        servers,
        {
            "jsonData": {
                "instances": [{"prompt": "What is 2 + 2?"}, {"messages": turns}],
                "parameters": {"max_new_tokens": 5},
            },
            "meta": {"puid": "log-seldon"},
        },
    )
    assert code == 200, body
    code, answer = v2(servers, {"id": "log-v2", **args("Tell me about the digits", max_new_tokens=4)})
    assert code == 200, answer
    seldon_rows, v2_rows = _logged(work, "log-seldon", 2), _logged(work, "log-v2", 1)
    completions = body["jsonData"]["completions"]
    assert [r["input.prompt"] for r in seldon_rows] == ["What is 2 + 2?", json.dumps(turns)]
    for r, c in zip(seldon_rows, completions, strict=True):
        assert (
            r["prediction"],
            r["prompt_tokens"],
            r["completion_tokens"],
            r["finish_reason"],
            r["truncated"],
        ) == (c["text"], c["prompt_tokens"], c["completion_tokens"], c["finish_reason"], False)
        assert r["completion_chars"] == len(c["text"]) and r["prompt_chars"] == len(r["input.prompt"])
        assert (r["model"], r["version"], r["deployment"]) == (MODEL, "v1", MODEL)
    (r,) = v2_rows
    g = generated(answer)[0]
    assert (r["input.prompt"], r["prediction"], r["completion_tokens"]) == (
        "Tell me about the digits",
        g["generated_text"],
        g["completion_tokens"],
    )

    from freestack.monitor import stats
    from freestack.monitor.core import judge_version, read_requests
    from freestack.monitor.spec import Thresholds

    now = datetime.now(UTC)
    logged = read_requests(
        (work / "storage").as_uri(), MODEL, now - timedelta(hours=2), now + timedelta(minutes=1)
    )
    rows = logged.rows[logged.rows["request_id"].isin(["log-seldon", "log-v2"])]
    assert len(rows) == 3 and not logged.problems
    # a reference as the evaluation writes one for generation: the prompts' text and the answers' lengths
    prompts = [
        "What is 2 + 2?",
        "Reverse the digits: 123",
        "What is 7 + 5?",
        "Convert 2026-11-03 to DD/MM/YYYY.",
    ] * 5
    ref = {
        "version": "v1",
        "task": "regression",
        "features": {"prompt": "text"},
        "vocabulary": {"prompt": stats.vocabulary(prompts)},
        "series": stats.reference(
            {
                **stats.series_of(
                    {"prompt": prompts}, {"prompt": "text"}, {"prompt": set(stats.vocabulary(prompts))}
                ),
                "prediction": (
                    "numeric",
                    np.asarray([len(t) for t in version.sample["outputs"] * 5], np.float64),
                ),
            }
        ),
    }
    data = chat_pipeline(
        None
    )  # the chat model's pipeline, on this storage: its text signals read v1's sample
    data.pop("score")
    spec = parse_spec({**data, "storage_root": (work / "storage").as_uri()}, "chat.yaml")
    assert spec.monitor.thresholds == Thresholds()
    verdict = judge_version(ref, rows, rows.iloc[0:0], spec)
    assert verdict["rows"] == 3 and {"prompt.length", "prediction"} <= {s["name"] for s in verdict["series"]}
    assert {"empty", "refusal", "truncation"} <= {s["name"] for s in verdict["text"]["signals"]}


# ---------------------------------------------------------------------------------------------------------
# the deploy's smoke test


def test_the_smoke_test_passes_on_both_runtimes_and_names_a_wrong_answer(servers, work, version):
    sample = json.loads((version.folder / "evaluation" / "smoke.json").read_text())
    seldon_url, v2_url = servers["seldon"].url, servers["mlserver"].url
    checked = smoke_test(seldon_url, sample)
    assert checked["rows"] == len(sample["chats"]) and checked["max_abs_diff"] == 0.0
    assert smoke_test_v2(v2_url, MODEL, sample)["rows"] == len(sample["chats"])
    wrong = {**sample, "outputs": [*sample["outputs"][:2], "nope", *sample["outputs"][3:]]}
    for check in (lambda: smoke_test(seldon_url, wrong), lambda: smoke_test_v2(v2_url, MODEL, wrong)):
        with pytest.raises(DeployError) as err:
            check()
        message = str(err.value)
        assert "smoke row 2 (key 2)" in message and "the evaluation 'nope'" in message, message
        assert f"the server answered {sample['outputs'][2]!r}" in message, message
    time.sleep(2.5)  # two flushes of the request log: the smoke requests are not traffic
    folder = work / "storage" / "monitoring" / MODEL / "requests"
    ids = {r for f in folder.rglob("*.parquet") for r in pq.read_table(f).column("request_id").to_pylist()}
    assert not [i for i in ids if i.startswith("freestack-smoke")]


def test_a_local_deploy_of_an_adapter_carries_deploy_generation_to_the_server(work):
    """A LoRA adapter version (its base a folder) deployed locally on MLServer: deploy.generation travels to
    its server (the env file, then model-settings.json) and the deploy's own smoke test passes there; the
    same bounds reach a manifest's env."""
    from freestack.serving import manifests
    from freestack.serving.local import deploy_local, stop_local
    from freestack.serving.processes import free_port_block
    from freestack.serving.spec import DeploySpec

    spec = DeploySpec.model_validate(
        {
            "runtime": "mlserver",
            "generation": {"max_new_tokens": 12, "truncate": "refuse"},
            "local": {
                "port": free_port_block(),
                "workers": 1,
                "smoke_rows": 4,
                "log_sample_rate": 0.0,
                "start_timeout_seconds": 180,
            },
        }
    )
    assert spec.local.generation == spec.kubernetes.generation == spec.generation
    m = manifests.build_manifest(
        MODEL,
        model=MODEL,
        version="v2",
        model_uri="file:///models/chat/v2",
        target=spec.kubernetes,
        runtime="mlserver",
    )
    env = {
        e["name"]: e["value"]
        for e in m["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["env"]
    }
    assert (env["FREESTACK_GENERATION_MAX_NEW_TOKENS"], env["FREESTACK_GENERATION_TRUNCATE"]) == (
        "12",
        "refuse",
    )
    root = (work / "storage").as_uri()
    adapter = make_generation_version(root, MODEL, "v2", work, seed=1, lora=True)
    assert "adapter_model.safetensors" in {p.name for p in adapter.folder.iterdir()}
    rec = deploy_local(
        root_uri=root,
        model=MODEL,
        name="chat-deploy",
        version="v2",
        version_uri=adapter.uri,
        local=spec.local,
        runtime="mlserver",
    )
    try:
        assert rec["smoke"]["rows"] == 4 and rec["smoke"]["tolerance"] == {"basis": "the same text"}
        assert "FREESTACK_GENERATION_MAX_NEW_TOKENS='12'" in Path(rec["config"]).read_text()
        settings = json.loads(
            (
                Path(rec["config"]).parent / f"{rec['color']}.mlserver" / MODEL / "model-settings.json"
            ).read_text()
        )
        assert settings["parameters"]["extra"]["generation"]["max_new_tokens"] == 12
        code, body = post(
            rec["predict_url"], args("What is 7 + 5?")
        )  # no max_new_tokens: the default, lowered to 12
        assert (
            code == 200
            and generated(body)[0]["generated_text"]
            == adapter.alone([adapter.chat("What is 7 + 5?")], max_new_tokens=12)[0]
        )
        code, body = post(rec["predict_url"], {**args("hi"), "parameters": {"max_new_tokens": 13}})
        assert code == 400 and "bound of 12 (deploy.generation.max_new_tokens)" in body["error"], body
        code, body = post(rec["predict_url"], args(LONG, max_new_tokens=4))
        assert code == 413, body
    finally:
        stop_local(root, MODEL, "chat-deploy")


def test_the_bounds_defaults_are_the_same_in_the_spec_the_settings_and_the_server():
    from freestack.settings import Settings
    from freestack_server.core.generation import Bounds

    spec, server = GenerationBounds(), Bounds()
    for name in GenerationBounds.model_fields:
        assert (
            getattr(spec, name)
            == getattr(server, name)
            == Settings.model_fields[f"generation_{name}"].default
        ), name
    assert GenerationBounds().env(defaults=False) == {}


# ---------------------------------------------------------------------------------------------------------
# the batching machinery alone (no server)


def _prompts(n: int, key: str, limit: int = 8):
    from freestack_server.core.generation import Prompts

    return Prompts(
        [[{"role": "user", "content": f"{key}{i}"}] for i in range(n)],
        [f"{key}{i}" for i in range(n)],
        key,
        limit,
    )


def _echo(calls: list, fail_shared: bool = False):
    from freestack_server.core.generation import Generated

    def run(prompts):
        calls.append([c[0]["content"] for c in prompts.chats])
        if (
            fail_shared and len(calls[-1]) > 1 and all(t.startswith("x") for t in calls[-1])
        ):  # x requests joined
            raise RuntimeError("a shared call failed")
        return [Generated(SimpleNamespace(text=c[0]["content"]), len(prompts)) for c in prompts.chats]

    return run


def test_the_worker_rounds_share_a_call_among_prompts_of_equal_parameters_up_to_the_limit():
    from freestack_server.seldon.batching import RequestBatcher

    calls: list = []
    batcher = RequestBatcher(_echo(calls), max_rows=100)
    parked = [
        _prompts(1, "a", limit=2),
        _prompts(1, "b"),
        _prompts(1, "a", limit=2),
        _prompts(1, "a", limit=2),
    ]
    got: list = [None] * len(parked)

    def job(i: int):
        def go():
            got[i] = [(g.completion.text, g.batch) for g in batcher.park(parked[i])]

        return go

    batcher.run([job(i) for i in range(len(parked))])
    assert got == [[("a0", 2)], [("b0", 1)], [("a0", 2)], [("a0", 1)]]  # a: two, then the third alone
    assert sorted(map(len, calls)) == [1, 1, 2] and batcher.batched == 2


def test_the_openai_api_on_seldons_runtime_is_a_404_naming_the_runtime_that_serves_it(servers):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    code, answer = post(servers["seldon"].url + "/v1/chat/completions", body)
    assert code == 404 and "deploy.runtime: mlserver" in answer["status"]["info"], answer


def test_both_runtimes_exit_on_sigterm_with_their_generation_engine_running(servers):
    """SIGTERM ends each server by itself, as the kubelet expects, with no kill after the grace period:
    on MLServer the version's generation engine (a thread of transformers' continuous batching) stops
    with the server. Last in the module: it stops the module's servers."""
    for runtime, server in servers.items():
        started = time.monotonic()
        code = server.stop(timeout=15)
        assert code is not None, f"{runtime} was killed after 15 s: {server.log()[-2000:]}"
        assert time.monotonic() - started < 15
