"""Many LoRA versions on one base in one deployment: a text-generation deployment of an adapter version,
started as its MLServer image starts it (tests/support/images.py), answers other registered adapter
versions of the same base by the OpenAI API's ``model`` (``<model>:<version>``, ``<model>@<alias>``),
loading each through peft's multi-adapter API on the one copy of the base: each answer equals the
version's own, the request log names the version, the base is loaded once (the log and the RSS say so),
the least recently used adapter is unloaded past the bound, and a version that cannot share the base is
refused saying why."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import httpx
import openai
import pyarrow.parquet as pq
import pytest

from freestack.registry.core import ModelRegistry
from freestack.serving.spec import GenerationBounds
from tests.support.generation_serving import SMOKE_PROMPTS, GenerationVersion, make_generation_version
from tests.support.images import ImageServer, start_like_image

ROOT = Path(__file__).resolve().parents[2]
KEEP_MODEL_SERVERS = True  # the module's server answers every test (see tests/conftest.py)
pytestmark = pytest.mark.skipif(
    not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
    reason="the MLServer environment is missing: run `make mlserver-venv`",
)

MODEL, MAX_ADAPTERS = "chat", 2
KEY = "lora-deployment-key"  # runtime adapters (POST /v1/load_lora_adapter) are for the key's holders


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lora")


@pytest.fixture(scope="module")
def versions(work) -> dict[str, GenerationVersion]:
    """v1, v2, v3: adapters on one base (their own draws); v4: full weights."""
    root = (work / "storage").as_uri()
    out = {
        v: make_generation_version(root, MODEL, v, work, lora=True, adapter_seed=i)
        for i, v in enumerate(["v1", "v2", "v3"], start=10)
    }
    out["v4"] = make_generation_version(root, MODEL, "v4", work, seed=4)
    registry = ModelRegistry(root, MODEL)
    registry.promote("v1")
    registry.set_alias("staging", "v2")
    return out


@pytest.fixture(scope="module")
def server(work, versions) -> ImageServer:
    env = {
        "FREESTACK_MODEL_NAME": MODEL,
        "FREESTACK_HOME": str(work),
        "FREESTACK_REQUEST_LOG_URI": f"{(work / 'storage').as_uri()}/monitoring/{MODEL}",
        "FREESTACK_REQUEST_LOG_RATE": "1.0",
        "FREESTACK_REQUEST_LOG_FLUSH_SECONDS": "1",
        "FREESTACK_SERVER_API_KEY": KEY,
        # v2 (staging) answers half of the requests for "chat"; a trainer may push the adapter it trains
        **GenerationBounds(
            max_new_tokens=16,
            max_adapters=MAX_ADAPTERS,
            canary_alias="staging",
            canary_weight=0.5,
            runtime_adapters=True,
        ).env(),
    }
    production = f"{(work / 'storage').as_uri()}/registry/{MODEL}@production"  # the server follows the alias
    s = start_like_image(
        "mlserver",
        production,
        work / "mlserver",
        env=env,
        ready_path=f"/v2/models/{MODEL}/ready",
        timeout=180,
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def _ask(client, model: str, prompt: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0
    )


def _own(version: GenerationVersion, prompt: str) -> str:
    return version.alone([version.chat(prompt)], max_new_tokens=8)[0]


def _base_loads(log: str) -> int:
    """How many times the server loaded a model's weights (transformers' progress line, once a load)."""
    return log.count("Loading weights: 100%")


def _rss_kib(pid: int) -> int:
    """The resident memory of the server's process tree (the supervisor and its child)."""
    total = 0
    for p in [pid, *_children(pid)]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        for k in map(int, kids):
            out += [k, *_children(k)]
    return out


def test_two_adapter_versions_answer_from_one_deployment_with_one_base(client, server, versions):
    prompt = SMOKE_PROMPTS[0]
    want = {v: _own(versions[v], prompt) for v in ("v1", "v2")}
    assert want["v1"] != want["v2"]  # the adapters differ: a wrong routing shows
    before = _rss_kib(server.proc.pid)
    first = _ask(client, f"{MODEL}@production", prompt)
    assert first.choices[0].message.content.strip() == want["v1"] and first.model == f"{MODEL}:v1"
    second = _ask(client, f"{MODEL}:v2", prompt)
    assert second.choices[0].message.content.strip() == want["v2"] and second.model == f"{MODEL}:v2"
    grown = _rss_kib(server.proc.pid) - before
    log = server.log()
    assert "loaded adapter chat:v2 on the deployment's base" in log
    assert _base_loads(log) == 1
    adapter_kib = (versions["v2"].folder / "adapter_model.safetensors").stat().st_size // 1024
    assert grown < 0.2 * before + adapter_kib * 4, (before, grown, adapter_kib)
    assert f"{MODEL}:v2" in [m.id for m in client.models.list().data]


def test_concurrent_requests_of_two_versions_each_get_their_versions_answer(server, versions):
    """A batch of 32 greedy requests, both adapters: each answer is the one its prompt gets alone."""
    prompts = [f"{p} ({i})" for i, p in enumerate((SMOKE_PROMPTS * 32)[:32])]
    asked = [("v1" if i % 2 else "v2", p) for i, p in enumerate(prompts)]

    async def ask_all():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0) as c:
            jobs = [
                c.chat.completions.create(
                    model=f"{MODEL}:{v}", messages=[{"role": "user", "content": p}], max_tokens=8
                )
                for v, p in asked
            ]
            return await asyncio.gather(*jobs)

    answers = asyncio.run(ask_all())
    for (v, p), a in zip(asked, answers, strict=True):
        assert a.model == f"{MODEL}:{v}"
        assert a.choices[0].message.content.strip() == _own(versions[v], p)


def test_the_v2_protocol_answers_with_the_version_it_names_whichever_adapter_ran_last(
    client, server, versions
):
    """V2 requests for the model are the model's requests: production's version or (half of them) the
    canary's, each answered by its own adapter and named in ``model_version``, never by the one that ran
    last for another request."""
    prompt = SMOKE_PROMPTS[3]
    body = {"inputs": [{"name": "args", "datatype": "BYTES", "shape": [1], "data": [prompt]}]}
    body["parameters"] = {"max_new_tokens": 8}
    seen = set()
    for i in range(12):
        _ask(client, f"{MODEL}:{'v2' if i % 2 else 'v3'}", prompt)  # another adapter is the active one now
        req = urllib.request.Request(
            f"{server.url}/v2/models/{MODEL}/infer",
            json.dumps(body).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            got = json.loads(r.read())
        answer = json.loads(got["outputs"][0]["data"][0])["generated_text"]
        assert answer == _own(versions[got["model_version"]], prompt), got["model_version"]
        seen.add(got["model_version"])
    assert seen <= {"v1", "v2"} and "v1" in seen  # production (v1) and its canary (staging: v2)


def test_the_request_log_names_each_version(client, work):
    one = _ask(client, f"{MODEL}:v2", "log v2")
    folder = work / "storage" / "monitoring" / MODEL / "requests"
    deadline = time.monotonic() + 20
    rows: list = []
    while not rows and time.monotonic() < deadline:
        rows = [
            r
            for f in folder.rglob("*.parquet")
            for r in pq.read_table(f).to_pylist()
            if r["request_id"] == one.id
        ]
        time.sleep(0.5)
    assert [r["version"] for r in rows] == ["v2"]


def test_past_the_bound_the_least_recently_used_adapter_is_unloaded(client, server, versions):
    _ask(client, f"{MODEL}:v2", "x")
    answer = _ask(client, f"{MODEL}:v3", SMOKE_PROMPTS[1])  # v1 (deployed) and v2 are the bound of 2
    assert answer.choices[0].message.content.strip() == _own(versions["v3"], SMOKE_PROMPTS[1])
    assert "unloaded adapter chat:v2 (least recently used)" in server.log()
    again = _ask(client, f"{MODEL}:v2", SMOKE_PROMPTS[1])  # loaded again when asked
    assert again.choices[0].message.content.strip() == _own(versions["v2"], SMOKE_PROMPTS[1])


def test_a_version_that_cannot_share_the_base_is_refused_saying_why(client):
    with pytest.raises(openai.BadRequestError, match="not a LoRA adapter"):
        _ask(client, f"{MODEL}:v4", "x")
    with pytest.raises(openai.NotFoundError, match="no registered version 'v9'") as refused:
        _ask(client, f"{MODEL}:v9", "x")
    assert "registry" not in str(refused.value) and "file:" not in str(refused.value)  # no path is told
    with pytest.raises(openai.BadRequestError, match="'aliases.json' is not a version name"):
        _ask(client, f"{MODEL}:aliases.json", "x")  # the registry's own file, not a version
    with pytest.raises(openai.NotFoundError, match="no alias 'nope'"):
        _ask(client, f"{MODEL}@nope", "x")
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        _ask(client, "other:v1", "x")


def test_a_canary_alias_answers_its_share_of_the_models_requests(client):
    models = [_ask(client, MODEL, "canary?").model for _ in range(40)]
    assert set(models) == {f"{MODEL}:v1", f"{MODEL}:v2"}
    assert 8 <= models.count(f"{MODEL}:v2") <= 32, models  # 0.5 of 40, well within chance


def test_an_alias_names_its_version_and_a_promotion_is_served_without_a_new_base(
    client, server, versions, work
):
    prompt = SMOKE_PROMPTS[2]
    staged = _ask(client, f"{MODEL}@staging", prompt)
    assert staged.model == f"{MODEL}:v2" and staged.choices[0].message.content.strip() == _own(
        versions["v2"], prompt
    )
    ModelRegistry((work / "storage").as_uri(), MODEL).promote("v2")
    deadline = time.monotonic() + 15  # the deployment reads the aliases again within ALIAS_TTL_S
    production = f"{MODEL}@production"  # not "chat": half of its requests are the canary's (v2) anyway
    while _ask(client, production, prompt).model != f"{MODEL}:v2" and time.monotonic() < deadline:
        time.sleep(0.5)
    answer = _ask(client, MODEL, prompt)  # production and the canary: both v2 now
    assert answer.model == f"{MODEL}:v2" and answer.choices[0].message.content.strip() == _own(
        versions["v2"], prompt
    )
    assert _base_loads(server.log()) == 1


def test_a_trainer_samples_its_rollouts_from_the_adapter_it_pushes(client, server, versions, work, tmp_path):
    """``train.grpo.rollouts: server``: each step the adapter being trained is written (safetensors) and
    loaded by name (vLLM's /v1/load_lora_adapter, behind the key), the prompts go as token ids to
    /v1/completions and the server's token ids come back: greedy, they are the local model's own. A GRPO
    run samples every step there, and leaves no adapter loaded nor folder behind."""
    import pandas as pd
    import torch
    from safetensors.torch import save_file

    from freestack.ml.lm.causal import add_causal_lora, load_causal_lm
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.grpo import GrpoEncoding, GrpoNet, GrpoSettings
    from freestack.ml.lm.prompts import eos_ids, load_tokenizer
    from freestack.ml.lm.rewards import Reward, RewardSet, exact_match
    from freestack.ml.lm.rollout_sources import grpo_splits
    from freestack.ml.lm.rollouts import RolloutError, RolloutServer
    from freestack.ml.loop import TrainConfig, fit_source
    from freestack.ml.stream import InMemory

    url = f"{server.url}/v1"
    refused = httpx.post(f"{url}/load_lora_adapter", json={"lora_name": "x", "lora_path": str(tmp_path)})
    assert refused.status_code == 401, refused.text  # no key: refused before anything is read
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_config.json").write_text("{}")
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"not read")
    guarded = {"Authorization": f"Bearer {KEY}"}
    bad = httpx.post(
        f"{url}/load_lora_adapter",
        json={"lora_name": "x", "lora_path": str(tmp_path / "pickled")},
        headers=guarded,
    )
    assert bad.status_code == 400 and "holds no adapter_model.safetensors" in bad.text, bad.text
    (tmp_path / "pickled" / "adapter_model.safetensors").write_bytes(b"")
    save_file({"w": torch.zeros(2)}, tmp_path / "pickled" / "adapter_model.safetensors")
    alien = httpx.post(
        f"{url}/load_lora_adapter",
        json={"lora_name": "x", "lora_path": str(tmp_path / "pickled")},
        headers=guarded,
    )
    assert alien.status_code == 400, alien.text  # not a LoRA adapter of this base
    hostile = [  # each a 400 naming what is wrong, in OpenAI's error format; the server answers on
        (b"", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "nested too deep"),
        (b'{"lora_name": "x"}', "lora_path"),
        (b'{"lora_name": 7, "lora_path": "/tmp"}', "lora_name"),
        (b'{"lora_name": "x", "lora_path": "/tmp", "extra": 1}', "unknown parameter 'extra'"),
        (b'{"lora_name": "x", "lora_path": "\\ud800"}', "lora_path: Input should be a valid string"),
        (b'{"lora_name": "x", "lora_path": "/tmp/a\\u0000b"}', "cannot be read"),
        (json.dumps({"lora_name": "x" * 129, "lora_path": "/tmp"}).encode(), "lora_name"),
        (json.dumps({"lora_name": "../x", "lora_path": "/tmp"}).encode(), "letters, digits"),
    ]
    for body, says in hostile:
        got = httpx.post(f"{url}/load_lora_adapter", content=body, headers=guarded)
        assert got.status_code == 400 and says in got.json()["error"]["message"], (body[:60], got.text[:300])
    gone = httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "never"}, headers=guarded)
    assert gone.status_code == 404 and "no adapter named 'never'" in gone.text, gone.text
    assert httpx.post(f"{url}/unload_lora_adapter", json={"lora_name": "x"}).status_code == 401

    base = work / "base-0-drawn"  # the deployed versions' base
    tok = load_tokenizer(base)
    model = add_causal_lora(
        load_causal_lm(str(base)), {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}
    )
    with torch.no_grad():  # an adapter of its own, which answers otherwise than the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    rollouts = RolloutServer(url, MODEL, KEY, adapter_dir=str(tmp_path / "adapters"))
    prompt = tok(versions["v1"].chat(SMOKE_PROMPTS[0])[-1]["content"])["input_ids"]
    served = rollouts.sample(model, [prompt], 2, max_tokens=8, temperature=0.0, top_p=1.0)
    local = (
        model.eval()
        .generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id
        )[0, len(prompt) :]
        .tolist()
    )
    assert served == [local[: len(served[0])]] * 2 and served[0], (served, local)
    rollouts.close()

    columns = ChatColumns(prompt="prompt", response="response", system=versions["v1"].columns.system)
    frame = pd.DataFrame({"prompt": [f"say {i}" for i in range(8)], "response": [str(i) for i in range(8)]})
    enc = GrpoEncoding(tok, columns, 64)
    e = enc.encode_frame(frame)
    train = InMemory({n: torch.tensor(v) for n, v in e.x.items()}, torch.tensor(e.y))
    settings = GrpoSettings(num_generations=2, max_completion_length=6, rollouts="server")
    rewards = RewardSet((Reward("exact_match", 1.0, exact_match("response")),))
    pushed = RolloutServer(url, MODEL, KEY, adapter_dir=str(tmp_path / "run"))
    net = GrpoNet(
        model, grpo=settings, reward_names=("exact_match",), base={}, columns=columns, max_length=64
    )
    eos = eos_ids(tok, model.generation_config.to_dict())
    splits = grpo_splits(net, {"train": train, "val": train}, enc, rewards, eos, server=pushed)
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=1e-3, warmup_epochs=0, device="cpu")
    result = fit_source(net, splits["train"], splits["val"], config, task="grpo")
    assert len(result.steps) == 2 and all(s["completion_length"] > 0 for s in result.steps), result.steps
    log = server.log()
    assert log.count(f"from {tmp_path / 'run'}") == 2, log[-2000:]  # each step's adapter, loaded by name
    assert not [m.id for m in client.models.list() if "grpo-" in m.id]  # the last one unloaded at the end
    assert not list((tmp_path / "run").iterdir())
    with pytest.raises(RolloutError, match="refused load_lora_adapter"):
        RolloutServer(url, MODEL, "wrong-key").sample(
            model, [prompt], 2, max_tokens=4, temperature=1.0, top_p=1.0
        )


def _load(server, name: str, path: Path | str) -> httpx.Response:
    body = {"lora_name": name, "lora_path": str(path)}
    return httpx.post(
        f"{server.url}/v1/load_lora_adapter",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )


def _adapter(tmp_path: Path, name: str, source: Path, weights: bytes | None = None) -> Path:
    """A folder with ``source``'s adapter config, and its weights (or ``weights`` in their place)."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    data = (source / "adapter_model.safetensors").read_bytes() if weights is None else weights
    (folder / "adapter_model.safetensors").write_bytes(data)
    return folder


def test_a_runtime_adapter_is_read_only_from_bounded_regular_files_and_never_breaks_the_engine(
    client, server, versions, tmp_path
):
    """POST /v1/load_lora_adapter as a hostile key holder: a config that is a symlink to a device, a FIFO,
    too large, or an outside file; weights that are a pickle, truncated, with a huge header length, offsets
    past the end, or NaN; a name the model, an alias or a registered version already has. Each is a 400 in
    OpenAI's format naming what is wrong, at once (no read hangs or grows), and after each the server is
    ready and answers a valid request exactly as before; then SIGTERM stops it within a kubelet's grace."""
    import os
    import struct

    from safetensors.torch import load as load_safetensors
    from safetensors.torch import save as save_safetensors

    source = versions["v2"].folder
    before = _ask(client, f"{MODEL}:v1", SMOKE_PROMPTS[0]).choices[0].message.content
    weights = load_safetensors((source / "adapter_model.safetensors").read_bytes())
    poisoned = dict(weights)
    first = sorted(poisoned)[0]
    poisoned[first] = poisoned[first].clone()
    poisoned[first].view(-1)[0] = float("nan")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    cases: dict[str, tuple[Path, str]] = {}
    for kind in ("device", "fifo", "huge", "outside"):
        folder = _adapter(tmp_path, kind, source)
        config = folder / "adapter_config.json"
        config.unlink()
        if kind == "device":
            config.symlink_to("/dev/zero")
        elif kind == "fifo":
            os.mkfifo(config)
        elif kind == "huge":
            with open(config, "wb") as f:
                f.truncate(10 * 1024 * 1024)  # sparse: 10 MiB of nothing
        else:
            config.symlink_to("/etc/hostname")  # followed: a regular file, but no adapter's config
        cases[kind] = (folder, {"outside": "not a LoRA config"}.get(kind, "cannot be read"))
    raw = (source / "adapter_model.safetensors").read_bytes()
    for kind, data in {
        "pickle": b"\x80\x04\x95" + b"\x00" * 64,
        "truncated": raw[: len(raw) // 2],
        "header": struct.pack("<Q", 2**62) + b"{}",
        "offsets": struct.pack("<Q", len(header)) + header + b"\x00" * 16,
        "nan": save_safetensors(poisoned),
    }.items():
        says = "holds NaN or infinite values" if kind == "nan" else "not an adapter's safetensors"
        cases[kind] = (_adapter(tmp_path, kind, source, data), says)
    for kind, (folder, says) in cases.items():
        began = time.perf_counter()
        got = _load(server, f"hostile-{kind}", folder)
        assert got.status_code == 400 and says in got.json()["error"]["message"], (kind, got.text[:400])
        assert got.json()["error"]["param"] == "lora_path" and time.perf_counter() - began < 10, kind
    good = _adapter(tmp_path, "good", source)
    for name, says in {
        MODEL: "the model's own name",
        "production": "an alias's name",
        "staging": "an alias's name",
        "v3": f"a registered version of {MODEL!r}",
    }.items():
        got = _load(server, name, good)
        assert got.status_code == 400 and says in got.json()["error"]["message"], (name, got.text[:400])
    for ids in ([-1], [4294967296], [2**63 - 1]):  # token ids no vocabulary has: 400 naming the prompt
        got = httpx.post(
            f"{server.url}/v1/completions",
            json={"model": MODEL, "prompt": ids, "max_tokens": 2},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert got.status_code == 400 and got.json()["error"]["param"].startswith("prompt"), (
            ids,
            got.text[:300],
        )
        assert "is not one any vocabulary has" in got.json()["error"]["message"]
    ready = httpx.get(f"{server.url}/v2/models/{MODEL}/ready", timeout=10)
    assert ready.status_code == 200
    assert _ask(client, f"{MODEL}:v1", SMOKE_PROMPTS[0]).choices[0].message.content == before
    answered = _ask(client, MODEL, SMOKE_PROMPTS[0])  # the model's own name is still its own
    assert answered.model in (f"{MODEL}:v1", f"{MODEL}:v2"), answered.model
    assert "Traceback" not in server.log()[-20000:]
    # last in the module: with runtime adapters loaded and those folders refused, SIGTERM ends the server
    # by itself within a kubelet's grace (30 s), its engine and every thread stopped
    began = time.monotonic()
    assert server.stop(timeout=25) is not None, f"killed after 25 s: {server.log()[-3000:]}"
    print(f"SIGTERM to exit, with {MAX_ADAPTERS} adapters' room: {time.monotonic() - began:.1f} s")
