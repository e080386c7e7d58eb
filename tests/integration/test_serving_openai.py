"""The OpenAI API of a text-generation version, through the official ``openai`` client (sync, async and
streaming) and plain HTTP, against the model server started exactly as its MLServer image starts it
(tests/support/images.py), with an API key. Greedy answers equal what the version answers in this
process; the request log keeps each request under the version that answered; every bad request is a 4xx
in OpenAI's error format; a client that leaves mid-stream frees its slot; a flood of streams past the
deployment's limit gets 429s, never a hang."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from freestack.serving.spec import GenerationBounds
from tests.support.generation_serving import SMOKE_PROMPTS, GenerationVersion, make_generation_version
from tests.support.images import ImageServer, start_like_image

ROOT = Path(__file__).resolve().parents[2]
KEEP_MODEL_SERVERS = True  # the module's server answers every test (see tests/conftest.py)
pytestmark = pytest.mark.skipif(
    not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
    reason="the MLServer environment is missing: run `make mlserver-venv`",
)

MODEL, KEY = "chat", "sk-test-freestack"
MAX_NEW, MAX_PROMPT, MAX_REQUESTS = 48, 64, 10
LONG = 24  #: the new tokens of a long stream (a flood's, one that is left)
#: a request for this many new tokens makes the server's generation loop raise (tests/support/engine_fault)
FAULT = 13


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openai")


@pytest.fixture(scope="module")
def version(work) -> GenerationVersion:
    return make_generation_version((work / "storage").as_uri(), MODEL, "v1", work)


@pytest.fixture(scope="module")
def server(work, version) -> ImageServer:
    bounds = GenerationBounds(
        max_new_tokens=MAX_NEW,
        default_max_new_tokens=8,
        max_prompt_tokens=MAX_PROMPT,
        truncate="refuse",
        max_requests=MAX_REQUESTS,
        max_prompts_per_request=MAX_REQUESTS,  # a request of more could never be generated for at once
    )
    env = {
        "FREESTACK_MODEL_NAME": MODEL,
        "FREESTACK_HOME": str(work),
        "FREESTACK_SERVER_API_KEY": KEY,
        "FREESTACK_REQUEST_LOG_URI": f"{(work / 'storage').as_uri()}/monitoring/{MODEL}",
        "FREESTACK_REQUEST_LOG_RATE": "1.0",
        "FREESTACK_REQUEST_LOG_FLUSH_SECONDS": "1",
        "FREESTACK_TEST_ENGINE_FAULT": str(FAULT),
        **bounds.env(),
    }
    s = start_like_image(
        "mlserver",
        version.uri,
        work / "mlserver",
        env=env,
        ready_path=f"/v2/models/{MODEL}/ready",
        timeout=180,
        first_on_path=(ROOT / "tests" / "support" / "engine_fault",),
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def _expected(version: GenerationVersion, prompt: str, n: int = 8) -> str:
    return version.alone([version.chat(prompt)], max_new_tokens=n)[0]


def test_the_sync_client_gets_the_versions_greedy_answer_with_usage(client, version):
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": SMOKE_PROMPTS[0]}], max_tokens=8, temperature=0
    )
    (choice,) = answer.choices
    assert choice.message.content.strip() == _expected(version, SMOKE_PROMPTS[0])
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    one = version.answer([version.chat(SMOKE_PROMPTS[0])], max_new_tokens=8)[0]
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        one.prompt_tokens,
        one.completion_tokens,
    )
    assert answer.usage.total_tokens == one.prompt_tokens + one.completion_tokens
    assert answer.model == f"{MODEL}:v1" and answer.object == "chat.completion"
    raw = client.chat.completions.with_raw_response.create(
        model=f"{MODEL}:v1", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=2
    )
    assert raw.headers["x-freestack-version"] == f"{MODEL}:v1"
    assert [m.id for m in client.models.list().data] == [MODEL, f"{MODEL}:v1"]


def test_prometheus_counts_the_openai_requests_like_any_other(server, client):
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count me"}], max_tokens=2
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert (
        'rest_server_requests_total{app_name="mlserver",method="POST",path="/v1/chat/completions",status_code="200"}'
        in metrics
    )
    # and per version, by protocol, under the names the Deployments page reads for either runtime
    v2 = {"inputs": [{"name": "args", "datatype": "BYTES", "shape": [1], "data": ["count me"]}]}
    assert _post(server, f"/v2/models/{MODEL}/infer", v2)[0] == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    for protocol in ("openai", "v2"):
        assert f'freestack_model_predict_seconds_count{{protocol="{protocol}",version="v1"}}' in metrics, (
            protocol
        )
        assert f'freestack_prediction_rows_total{{protocol="{protocol}",version="v1"}}' in metrics, protocol
    from freestack.ui.catalog.deployment_pages import serving_stats

    seen = serving_stats(f"http://127.0.0.1:{server.metrics_port}/metrics")
    assert seen.requests >= 2 and seen.rows >= 2 and seen.mean_latency_ms > 0, seen
    # what an LLM operator watches: a stream's time to first token and between tokens, tokens per answer
    streamed = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=6, stream=True)
    assert len(list(streamed)) > 2
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    for name in (
        "time_to_first_token_seconds",
        "inter_token_latency_seconds",
        "queue_time_seconds",
        "prompt_tokens",
        "generation_tokens",
    ):
        counted = re.search(rf'^freestack_llm_{name}_count{{version="v1"}} (\S+)$', metrics, re.M)
        assert counted and float(counted.group(1)) >= 1, name
    seen = serving_stats(f"http://127.0.0.1:{server.metrics_port}/metrics")  # what the Deployments page shows
    assert seen.ttft_ms[0] is not None and seen.itl_ms[0] is not None and seen.generated_tokens > 0, seen
    assert seen.queue_ms[0] is not None, seen


def test_the_async_client_gets_every_concurrent_answer_right(server, version):
    async def ask_all():
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
        async with aclient:
            jobs = [
                aclient.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=8, temperature=0
                )
                for p in SMOKE_PROMPTS * 2
            ]
            return await asyncio.gather(*jobs)

    answers = asyncio.run(ask_all())
    want = version.alone([version.chat(p) for p in SMOKE_PROMPTS * 2], max_new_tokens=8)
    assert [a.choices[0].message.content.strip() for a in answers] == want


def test_a_stream_sends_the_same_answer_in_pieces_then_its_usage(client):
    messages = [{"role": "user", "content": SMOKE_PROMPTS[1]}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # pieces, not one block
    usage = {"include_usage": True, "continuous_usage_stats": True}  # vLLM's, as guidellm asks
    counted = list(
        client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, stream=True, stream_options=usage
        )
    )
    so_far = [c.usage.completion_tokens for c in counted if c.choices]
    assert so_far[0] == 0 and so_far == sorted(so_far) and so_far[-1] == whole.usage.completion_tokens
    assert len(set(so_far)) > 2  # the count so far, chunk by chunk, not 0 until the end
    assert {c.usage.prompt_tokens for c in counted} == {whole.usage.prompt_tokens}


def test_completions_continue_text_prompts_and_stop_at_a_stop_string(client):
    answer = client.completions.create(model=MODEL, prompt=["Once upon", "The digits"], max_tokens=10)
    assert [c.index for c in answer.choices] == [0, 1] and answer.object == "text_completion"
    text = answer.choices[0].text
    assert len(text) > 3
    stop = text[2:4]
    cut = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=10, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    # token ids in and out (OpenAI's array of tokens; vLLM's return_token_ids): what a trainer learns from
    extra = {"return_token_ids": True}
    ids = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, extra_body=extra)
    first = ids.choices[0].model_dump()
    assert ids.choices[0].text == text and first["token_ids"], first
    again = client.completions.create(
        model=MODEL, prompt=first["prompt_token_ids"], max_tokens=10, extra_body=extra
    )
    assert again.choices[0].model_dump()["token_ids"] == first["token_ids"] and again.choices[0].text == text
    both = client.completions.create(model=MODEL, prompt=[first["prompt_token_ids"]] * 2, max_tokens=10)
    assert [c.text for c in both.choices] == [text, text]
    # with logprobs (answered beside the batch): the same text, its leading space kept, and the same ids
    logged = client.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=10, logprobs=1, extra_body=extra
    )
    kept = logged.choices[0].model_dump()
    assert logged.choices[0].text == text and kept["token_ids"] == first["token_ids"], kept
    assert (
        "".join(logged.choices[0].logprobs.tokens) == text[: len("".join(logged.choices[0].logprobs.tokens))]
    )
    chat = [{"role": "user", "content": "Once upon"}]
    plain, scored = (
        client.chat.completions.create(model=MODEL, messages=chat, max_tokens=6, extra_body=extra, **more)
        for more in ({}, {"logprobs": True})
    )
    assert scored.choices[0].model_dump()["token_ids"] == plain.choices[0].model_dump()["token_ids"] != []


class Verdict(BaseModel):
    """What a JSON-extraction client asks for: the SDK sends it as a strict JSON schema."""

    ok: bool


def test_structured_outputs_parse_whatever_the_weights_streamed_or_not(client, version):
    """The SDK's ``parse`` with a pydantic model, a streamed json_schema request and a json_object
    completion, on a random model: every answer is the JSON asked for; free text is answered as before."""
    messages = [{"role": "user", "content": "Is it true?"}]
    parsed = client.chat.completions.parse(
        model=MODEL, messages=messages, response_format=Verdict, max_tokens=MAX_NEW
    )
    assert isinstance(parsed.choices[0].message.parsed, Verdict) and parsed.choices[0].finish_reason == "stop"
    form = {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": Verdict.model_json_schema(), "strict": True},
    }
    chunks = client.chat.completions.create(
        model=MODEL, messages=messages, response_format=form, max_tokens=MAX_NEW, stream=True
    )
    Verdict.model_validate_json("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    small = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
    }
    form = {"type": "json_schema", "json_schema": {"name": "n", "schema": small}}
    many = client.completions.create(
        model=MODEL, prompt=["a", "b", "c"], max_tokens=MAX_NEW, extra_body={"response_format": form}
    )
    assert [set(json.loads(c.text)) for c in many.choices] == [{"n"}] * 3
    free = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    assert free.choices[0].message.content.strip() == _expected(version, messages[0]["content"])


ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two digits",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 9},
                "b": {"type": "integer", "minimum": 0, "maximum": 9},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


def test_an_agent_loop_calls_a_tool_gets_its_result_and_answers(client):
    """call -> tool result -> final answer with the SDK, on a random model: a required call names the tool
    and its arguments follow its parameters; a named call comes streamed; the tool's result goes back in."""
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[ADD], tool_choice="required", max_tokens=MAX_NEW
    )
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "add" and set(args) == {"a", "b"} and call.id.startswith("call_")
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": str(args["a"] + args["b"])},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[ADD], tool_choice="none", max_tokens=8
    )
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    named = {"type": "function", "function": {"name": "add"}}
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages[:1],
            tools=[ADD],
            tool_choice=named,
            max_tokens=MAX_NEW,
            stream=True,
        )
    )
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [t.function.name for t in calls] == ["add"] and set(json.loads(calls[0].function.arguments)) == {
        "a",
        "b",
    }
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    with pytest.raises(openai.BadRequestError, match="response_template"):
        client.chat.completions.create(model=MODEL, messages=messages[:1], tools=[ADD], max_tokens=MAX_NEW)


def test_n_seed_and_logprobs_as_openai_defines_them(client, version):
    """n answers per prompt (indices prompt * n + j, the prompt's tokens counted once); a seed gives a
    sampled answer again, streamed or not; logprobs are the model's own (plain transformers' log-softmax
    of the same tokens), greedy tokens the most likely, with top_logprobs and the legacy columns."""
    import torch

    messages = [{"role": "user", "content": SMOKE_PROMPTS[0]}]
    one = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6)
    three = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    texts = client.completions.create(model=MODEL, prompt=["Once upon", "The digits"], max_tokens=4, n=2)
    assert [c.index for c in texts.choices] == [0, 1, 2, 3] and texts.choices[0].text == texts.choices[1].text
    sampled = {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 1.0, "seed": 11, "n": 2}
    first, again = (client.chat.completions.create(**sampled) for _ in range(2))
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    streamed = ["", ""]
    for chunk in client.chat.completions.create(**sampled, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == [c.message.content for c in first.choices]
    scored = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, logprobs=True, top_logprobs=2
    )
    kept = scored.choices[0].logprobs.content
    assert len(kept) == scored.usage.completion_tokens
    assert all(k.logprob == k.top_logprobs[0].logprob >= k.top_logprobs[1].logprob for k in kept)
    tok = version.tokenizer
    text = tok.apply_chat_template(version.chat(SMOKE_PROMPTS[0]), tokenize=False, add_generation_prompt=True)
    prompt = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():  # plain transformers, greedy: the same tokens, and their distributions
        out = version.model.generate(
            prompt, max_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    chosen = out.sequences[0, prompt.shape[1] :].tolist()
    plain = [float(step[0].float().log_softmax(-1)[t]) for step, t in zip(out.logits, chosen, strict=False)]
    assert [k.token for k in kept] == [tok.decode([t]) for t in chosen[: len(kept)]]
    assert max(abs(a - k.logprob) for a, k in zip(plain, kept, strict=False)) < 1e-3
    legacy = (
        client.completions.create(model=MODEL, prompt="Once upon", max_tokens=4, logprobs=2)
        .choices[0]
        .logprobs
    )
    assert (
        len(legacy.tokens)
        == len(legacy.token_logprobs)
        == len(legacy.top_logprobs)
        == len(legacy.text_offset)
    )
    assert "".join(legacy.tokens).startswith(legacy.tokens[0]) and legacy.text_offset[0] == 0


def test_the_request_log_names_the_version_that_answered(client, work):
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "log me"}], max_tokens=3
    )
    rows = _logged(work, answer.id)
    assert len(rows) == 1
    r = rows[0]
    assert (r["model"], r["version"], r["prediction"]) == (MODEL, "v1", answer.choices[0].message.content)
    assert r["completion_tokens"] == answer.usage.completion_tokens
    assert json.loads(r["input.prompt"])[-1] == {"role": "user", "content": "log me"}


def _logged(work: Path, request_id: str, timeout: float = 20.0) -> list[dict]:
    folder = work / "storage" / "monitoring" / MODEL / "requests"
    deadline = time.monotonic() + timeout
    while True:
        found = [
            r
            for f in folder.rglob("*.parquet")
            for r in pq.read_table(f).to_pylist()
            if r["request_id"] == request_id
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _post(server: ImageServer, path: str, body, key: str | None = KEY) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(server.url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


HI = [{"role": "user", "content": "hi"}]
LONE = "the text holds a lone surrogate (an unpaired \\ud800-\\udfff escape): send valid Unicode text"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": "other", "messages": HI}, 404, "does not exist here"),
        ({"model": f"{MODEL}:v9", "messages": HI}, 404, "GET /v1/models"),
        ({"messages": HI}, 400, '"model" is required'),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, 400, "unknown role"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, 400, "no text content"),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            },
            400,
            "text only",
        ),
        (
            {
                "model": MODEL,
                "messages": HI,
                "tools": [ADD],
                "tool_choice": {"type": "function", "function": {"name": "mul"}},
            },
            400,
            "tool_choice names 'mul', which is not one of the tools ['add']",
        ),
        ({"model": MODEL, "messages": HI, "tool_choice": "required"}, 400, 'needs "tools" to call'),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400, 'send its "tool_call_id"'),
        ({"model": MODEL, "prompt": "x", "tools": [ADD]}, 400, "unknown parameter 'tools'"),
        ({"model": MODEL, "messages": HI, "max_tokens": MAX_NEW + 1}, 400, f"bound of {MAX_NEW}"),
        ({"model": MODEL, "messages": HI, "max_tokens": -1}, 400, "1 or more"),
        ({"model": MODEL, "messages": HI, "max_tokens": "5"}, 400, "whole number"),
        ({"model": MODEL, "messages": HI, "temperature": 9}, 400, "max_temperature"),
        ({"model": MODEL, "messages": HI, "top_p": 0}, 400, "top_p"),
        ({"model": MODEL, "messages": HI, "n": 0}, 400, "n: Input should be greater than or equal to 1"),
        ({"model": MODEL, "messages": HI, "top_logprobs": 2}, 400, 'top_logprobs goes with "logprobs": true'),
        ({"model": MODEL, "messages": HI, "seed": "7"}, 400, "seed: Input should be a valid integer"),
        (
            {
                "model": MODEL,
                "messages": HI,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}},
                },
            },
            400,
            "response_format.json_schema.schema: the schema cannot be followed",
        ),
        ({"model": MODEL, "messages": HI, "response_format": {"type": "yaml"}}, 400, "response_format.type"),
        ({"model": MODEL, "messages": HI, "frobnicate": 1}, 400, "unknown parameter 'frobnicate'"),
        (
            {"model": MODEL, "prompt": [1, 10**9]},
            400,
            "the token id 1000000000, outside the model's vocabulary",
        ),
        ({"model": MODEL, "prompt": [[1, 2], [1.5]]}, 400, "token ids or a list of token-id lists"),
        ({"model": MODEL, "prompt": "x", "return_token_ids": True, "stream": True}, 400, "leave out stream"),
        ({"model": f"{MODEL}:aliases.json", "messages": HI}, 400, "'aliases.json' is not a version name"),
        # the same refusal on both routes (one check of text), naming the field
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "a\ud800b"}]},
            400,
            f"messages[0].content: {LONE}",
        ),
        ({"model": MODEL, "prompt": ["hi", "a\ud800b"]}, 400, f"prompt[1]: {LONE}"),
    ],
)
def test_a_bad_request_is_a_4xx_in_openais_error_format(server, body, status, says):
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    code, answer = _post(server, path, body)
    assert code == status, answer
    error = answer["error"]
    assert says in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}
    if LONE in says:
        assert error["message"] == says and error["param"] == says.split(":")[0], error


def test_what_openai_clients_send_is_named_as_they_sent_it(server, client):
    """A bound names max_tokens (the client's name for it), an empty logit_bias is no bias, the SDK's
    models.retrieve answers, and too many prompts is not a context length error."""
    code, answer = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 99})
    error = answer["error"]
    assert code == 400 and error["param"] == "max_tokens", error
    assert error["message"].startswith(f"max_tokens 99 is over this deployment's bound of {MAX_NEW}"), error
    code, answer = _post(
        server, "/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 2, "logit_bias": {}}
    )
    assert code == 200 and answer["choices"], answer
    assert client.models.retrieve(f"{MODEL}:v1").id == f"{MODEL}:v1"
    with pytest.raises(openai.NotFoundError, match="GET /v1/models lists"):
        client.models.retrieve(f"{MODEL}:v9")
    code, answer = _post(server, "/v1/completions", {"model": MODEL, "prompt": ["x"] * 17, "max_tokens": 1})
    assert code == 413 and answer["error"]["code"] is None and "17 prompts" in answer["error"]["message"], (
        answer
    )


def test_json_nested_too_deep_is_a_400(server):
    deep = b'{"model": "chat", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    code, answer = _post(server, "/v1/chat/completions", deep)
    assert code == 400 and "nested too deep" in answer["error"]["message"], answer


def test_nan_and_broken_json_and_unknown_routes_get_openai_errors(server):
    code, answer = _post(
        server,
        "/v1/chat/completions",
        b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    )
    assert code == 400 and "temperature" in answer["error"]["message"]
    code, answer = _post(server, "/v1/chat/completions", b"{not json")
    assert code == 400 and "not valid JSON" in answer["error"]["message"]
    code, answer = _post(server, "/v1/embeddings", {"model": MODEL, "input": "x"})
    assert code == 404 and "/v1/chat/completions" in answer["error"]["message"]
    code, answer = _post(server, "//v1/chat/completions", {"model": MODEL, "messages": HI})
    assert code == 404 and "with one slash" in answer["error"]["message"], answer  # OpenAI's format


def _documented_routes() -> list[tuple[str, str, str]]:
    """(method, path, key: yes/no/refused) of each row of docs/stages/serving.md's table of routes."""
    text = (ROOT / "docs" / "stages" / "serving.md").read_text()
    table = text.split("| route | key | statuses |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines()[2:]]
    routes = [(route.strip(" `").split(" ", 1), key.strip()) for route, key in rows]
    return [(method, path.replace("<name>", MODEL), key) for (method, path), key in routes]


def _ask(server: ImageServer, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> int:
    headers = {"Content-Type": "application/json", **headers}
    req = urllib.request.Request(server.url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_key_guards_every_route_but_the_probes(server):
    """Without the key, or with another, every route that reads or runs the model is a 401 in its error
    format (the OpenAI API, V2 infer and metadata, the API docs; gRPC UNAUTHENTICATED); the probes answer;
    ``api-key: <key>`` (Azure OpenAI's header, which the Kubernetes service proxy passes) opens them too."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    for key in (None, "sk-wrong"):
        code, answer = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": HI}, key=key)
        assert code == 401 and answer["error"]["code"] == "invalid_api_key"
        code, answer = _post(server, f"/v2/models/{MODEL}/infer", VALID[f"/v2/models/{MODEL}/infer"], key=key)
        assert code == 401 and "API key" in answer["error"], answer  # the V2 error format
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.models.retrieve(MODEL)
    routes = _documented_routes()
    assert len(routes) >= 12, routes
    for method, path, key in routes:  # the serving page's table of routes, each asked as it says
        body = json.dumps(VALID.get(path, {})).encode() if method == "POST" else None
        without = _ask(server, method, path, body, {})
        assert without == {"yes": 401, "no": 200, "refused": 403}[key], (method, path, key, without)
        if key == "yes":  # runtime adapters are off on this deployment: those routes say so (404)
            opened = 404 if path in RUNTIME_ADAPTER_ROUTES else 200
            assert _ask(server, method, path, body, {"api-key": KEY}) == opened, (method, path)
        if key == "yes" and path.startswith("/v2/models/"):  # a model it does not serve: 401 first
            assert _ask(server, method, path.replace(MODEL, "nope"), body, {}) == 401
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    assert client.is_model_ready(MODEL)  # the probes stay open over gRPC too
    prompt = grpcclient.InferInput("args", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"hi"], dtype=object))
    for headers in ({}, {"authorization": "Bearer sk-wrong"}):
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.infer(MODEL, [prompt], headers=headers)
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            client.get_model_metadata(MODEL, headers=headers)
    answer = client.infer(MODEL, [prompt], headers={"authorization": f"Bearer {KEY}"})
    assert json.loads(answer.as_numpy("output")[0][0])["generated_text"]


def test_a_model_path_of_any_bytes_is_a_404_in_openais_format(client):
    for name in ("%ff%fe", "x" * 5000, f"{MODEL}/../../etc", "%00"):
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve(name)
        assert missing.value.body["code"] == "model_not_found", missing.value.body


def test_an_over_long_prompt_is_a_413_naming_the_limit(server):
    long = "one two three four five " * 40_000  # about 1 MB
    code, answer = _post(
        server, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": long}]}
    )
    assert code == 413 and answer["error"]["code"] == "context_length_exceeded"
    assert f"limit of {MAX_PROMPT}" in answer["error"]["message"]


def test_a_prompt_of_no_tokens_is_a_400_and_generation_goes_on(server, client, version):
    """A prompt that tokenizes to nothing is refused naming the field, on its own or in a list; the engine
    never sees it, so the next request is answered as before and the server stays ready."""
    for prompt, index in (("", 0), ([""], 0), (["hi", ""], 1)):
        code, answer = _post(server, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 4})
        error = answer["error"]
        assert code == 400 and error["param"] == "prompt", answer
        assert error["message"].startswith(f"prompt {index} is empty"), error
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": SMOKE_PROMPTS[0]}], max_tokens=8, temperature=0
    )
    assert answer.choices[0].message.content.strip() == _expected(version, SMOKE_PROMPTS[0])
    with urllib.request.urlopen(f"{server.url}/v2/models/{MODEL}/ready", timeout=10) as r:
        assert r.status == 200


def test_a_client_that_leaves_mid_stream_frees_its_slot(server, client):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to ten."}],
        "max_tokens": LONG,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    deadline = time.monotonic() + 20
    while "its client left" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "its client left" in server.log()
    answer = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_a_flood_of_streams_past_the_limit_gets_429s_and_the_rest_are_answered(server):
    async def flood(n: int):
        limits = httpx.Limits(max_connections=n)
        async with httpx.AsyncClient(
            timeout=120, limits=limits, headers={"Authorization": f"Bearer {KEY}"}
        ) as c:

            async def one(i):
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"n {i}"}],
                    "max_tokens": LONG,
                    "stream": True,
                }
                async with c.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
                    text = (await r.aread()).decode()
                    return r.status_code, text, r.headers.get("retry-after")

            return await asyncio.gather(*(one(i) for i in range(n)))

    results = asyncio.run(flood(200))
    ok = [t for code, t, _ in results if code == 200]
    refused = [(t, after) for code, t, after in results if code == 429]
    assert ok and refused and len(ok) + len(refused) == 200
    assert all(t.rstrip().endswith("data: [DONE]") for t in ok)
    assert all("rate_limit" not in t for t in ok)
    for text, after in refused:
        error = json.loads(text)["error"]
        assert "deploy.generation.max_requests" in error["message"] and error["code"] == "rate_limit_exceeded"
        assert after == "1"


# -- fuzzing: any request, then a valid one answered as before ---------------------------------------------

#: text a client may send: any, and what broke servers (empty, lone surrogate escapes, a NUL)
TEXT = st.text(max_size=40) | st.sampled_from(["", " ", "a\ud800b", "\udfff", "\x00", "é" * 50])
#: any JSON value, small
ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "robot"]) | ANY},
    optional={"content": TEXT | st.lists(ANY, max_size=2) | ANY, "name": ANY},
)
#: a completion's prompt as token ids: the vocabulary's, past the model's rows (a tiny model has a few
#: hundred), and past 32 and 64 bits
IDS = st.lists(
    st.integers(0, 1024) | st.sampled_from([-1, 2**31 - 1, 2**31, 2**63 - 1]), min_size=1, max_size=4
)
#: schemas a client may send: valid ones, one with $defs/$ref (as pydantic writes a nested model), and
#: ones refused before generating (no finite instance; a pattern past the lexer's bounds)
NESTED = {
    "type": "object",
    "properties": {"p": {"$ref": "#/$defs/P"}},
    "required": ["p"],
    "$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
}
SCHEMAS = (
    st.sampled_from(
        [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            NESTED,
            {"type": "object", "properties": {"n": {"$ref": "#"}}, "required": ["n"]},
            {"type": "string", "pattern": "^(a{1000}){1000}$"},
        ]
    )
    | ANY
)
JSON_SCHEMA = st.builds(
    lambda schema, strict: {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": strict},
    },
    SCHEMAS,
    st.booleans() | ANY,
)
TOOLS = st.lists(
    st.sampled_from([ADD])
    | st.builds(lambda p: {"type": "function", "function": {"name": "make", "parameters": p}}, SCHEMAS),
    min_size=1,
    max_size=2,
)
#: the fields the OpenAI routes take, each from values near the valid ones or from any JSON at all
FIELDS = {
    "model": st.sampled_from([MODEL, f"{MODEL}:v1", f"{MODEL}@production", f"{MODEL}:..", "other", ""]) | ANY,
    "messages": st.lists(MESSAGE, max_size=3) | ANY,
    "prompt": TEXT | st.lists(TEXT, max_size=3) | IDS | st.lists(IDS, min_size=1, max_size=2) | ANY,
    "max_tokens": st.integers(-2, MAX_NEW + 2) | ANY,
    "temperature": st.floats(-1, 3) | ANY,
    "top_p": st.floats(-0.5, 1.5) | ANY,
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=5) | ANY,
    "stream": st.booleans() | ANY,
    "n": st.integers(-1, 3) | ANY,
    "seed": st.integers(-5, 5) | ANY,
    "logit_bias": ANY,
    "stream_options": ANY,
    "tools": ANY | TOOLS,
    "tool_choice": st.sampled_from(
        ["none", "auto", "required", {"type": "function", "function": {"name": "make"}}]
    )
    | ANY,
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}]) | JSON_SCHEMA | ANY,
    "logprobs": st.booleans() | st.integers(-1, 6) | ANY,
    "top_logprobs": st.integers(-1, 21) | ANY,
}
V2_INPUT = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["args", "text_inputs", "x"]) | ANY,
        "datatype": st.sampled_from(["BYTES", "FP32", "INT64", "BOOL"]) | ANY,
        "shape": st.lists(st.integers(-1, 3), max_size=3) | ANY,
        "data": st.lists(TEXT | st.integers(), max_size=3) | ANY,
    }
)
#: a valid request per route: each fuzzed request changes one or two of its fields (an early refusal of
#: another field would hide what a field does), or replaces the whole body
VALID = {
    "/v1/chat/completions": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    "/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 2},
    f"/v2/models/{MODEL}/infer": {
        "inputs": [{"name": "args", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]
    },
    "/v1/load_lora_adapter": {"lora_name": "pushed", "lora_path": "/nonexistent"},
    "/v1/unload_lora_adapter": {"lora_name": "pushed"},
}
#: vLLM's runtime LoRA routes, a 200 only with deploy.generation.runtime_adapters (tests/integration/test_serving_lora.py)
RUNTIME_ADAPTER_ROUTES = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


@st.composite
def _changed(draw) -> tuple[str, Any]:
    path = draw(st.sampled_from(sorted(VALID)))
    if path.startswith("/v2/"):
        return path, {"inputs": draw(st.lists(V2_INPUT, min_size=1, max_size=2) | ANY)}
    keys = draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=2, unique=True))
    return path, {**VALID[path], **{k: draw(FIELDS[k]) for k in keys}}


REQUESTS = _changed() | st.tuples(st.sampled_from(sorted(VALID)), ANY)


def _send(server: ImageServer, path: str, body: Any) -> tuple[int, str, str]:
    req = urllib.request.Request(
        server.url + path,
        data=json.dumps(body, allow_nan=True).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=REQUESTS)
def test_no_request_gets_a_5xx_or_keeps_the_next_from_its_right_answer(server, reference, request):
    """Any request to the OpenAI or V2 routes, of fields near the valid ones or of any JSON: never a 5xx,
    never an error that is not JSON in the route's error shape; and the next valid request is answered
    exactly as the version answers it, the server ready."""
    path, body = request
    code, kind, text = _send(server, path, body)
    assert code < 500, (path, body, code, text[:500])
    if code >= 400:
        error = json.loads(text)["error"]
        if path.startswith("/v1/"):
            assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        else:
            assert isinstance(error, str) and error, error
    elif "text/event-stream" in kind:
        assert text.rstrip().endswith("data: [DONE]"), text[-300:]
    assert _checked_answer(server) == reference and _ready(server)


#: the valid request sent after each fuzzed one (greedy: the same answer each time)
CHECK = ("/v1/completions", {"model": MODEL, "prompt": "Spell cat.", "max_tokens": 4, "temperature": 0})


def _checked_answer(server: ImageServer) -> tuple[int, Any, Any]:
    code, answer = _post(server, *CHECK)
    return code, answer.get("choices"), answer.get("usage")


@pytest.fixture(scope="module")
def reference(server) -> tuple[int, Any, Any]:
    """CHECK's answer before any fuzzing: its choices and usage (its id and time change)."""
    got = _checked_answer(server)
    assert got[0] == 200 and got[1], got
    return got


def _ready(server: ImageServer) -> bool:
    try:
        with urllib.request.urlopen(f"{server.url}/v2/models/{MODEL}/ready", timeout=5) as r:
            return r.status == 200
    except OSError:  # not ready (400), or no server at the port while it restarts
        return False


def test_an_engine_whose_loop_dies_fails_that_request_alone_and_a_loop_that_keeps_dying_restarts_the_server(
    server, client, version
):
    """The generation loop raises (tests/support/engine_fault, on the request for FAULT tokens): that
    request is told the engine failed it (503), the engine starts a new loop at once and the next request is
    answered as before, on the same server. A loop that dies again and again (4 times within a minute)
    turns readiness false, and the server stops and is started again by its supervisor, which answers as
    before. Its log says why; no request is logged as its client leaving."""
    from freestack.ml.lm.engine import RESTARTS

    before, ask = len(server.log()), {"model": MODEL, "messages": HI, "max_tokens": FAULT}
    code, answer = _post(server, "/v1/chat/completions", ask)
    assert code == 503 and "generation failed in the engine" in answer["error"]["message"], answer
    expected = _expected(version, SMOKE_PROMPTS[0])
    chat = [{"role": "user", "content": SMOKE_PROMPTS[0]}]
    answer = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=8, temperature=0)
    assert answer.choices[0].message.content.strip() == expected and _ready(server)
    log = server.log()[before:]
    assert "starting it again" in log and "the model server exited" not in log  # the same server answered
    for _ in range(RESTARTS):
        code, answer = _post(server, "/v1/chat/completions", ask)
        assert code == 503, answer
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while _ready(server):
        assert time.monotonic() < deadline, "still ready with a dead engine"
        time.sleep(0.1)
    deadline = time.monotonic() + 180
    while not _ready(server):
        assert time.monotonic() < deadline and server.proc.poll() is None, server.log()[-3000:]
        time.sleep(0.5)
    answer = client.chat.completions.create(model=MODEL, messages=chat, max_tokens=8, temperature=0)
    assert answer.choices[0].message.content.strip() == expected
    log = server.log()[before:]
    assert "its generation engine died (RuntimeError: an injected fault in the generation loop)" in log
    assert "the model server exited with 1; restarting" in log and "its client left" not in log
