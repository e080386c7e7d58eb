"""Promoting another LoRA version of the same base on a real local deploy (runtime mlserver): the running server
serves it after a smoke test through its own OpenAI API, with no new server and no second copy of the base; the
record says so. A version on another base, or a full-weight one, gets a new server blue/green."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from freestack.serving.launch import serving_dir
from freestack.serving.local import deploy_local, stop_local
from freestack.serving.processes import free_port_block, serving_processes
from freestack.serving.records import Deployments
from freestack.serving.spec import DeploySpec
from tests.support.generation_serving import SMOKE_PROMPTS, GenerationVersion, make_generation_version
from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    needs_serving_env,
    pytest.mark.skipif(
        not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
        reason="the MLServer environment is missing: run `make mlserver-venv`",
    ),
]

MODEL, NAME = "chat", "chat-in-place"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("in-place")


@pytest.fixture(scope="module")
def versions(work) -> dict[str, GenerationVersion]:
    """a1, a2: adapters on one base (their own draws); b1: an adapter on another base; f1: full weights."""
    root = (work / "storage").as_uri()
    out = {
        v: make_generation_version(root, MODEL, v, work, lora=True, adapter_seed=i)
        for i, v in [(1, "a1"), (2, "a2")]
    }
    out["b1"] = make_generation_version(root, MODEL, "b1", work, seed=7, lora=True, adapter_seed=3)
    return out


def _rss_kib(pid: int) -> int:
    """The resident memory of the server's process tree (MLServer runs the model in the same process)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields.get("Pid", "0")) == pid or fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total


def _asked(url: str, model: str = MODEL) -> tuple[str, str]:
    """(answer, the version that answered) for the first smoke prompt, greedy."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": SMOKE_PROMPTS[0]}], max_tokens=8, temperature=0
    )
    answer = raw.parse()
    assert answer.model == raw.headers["x-freestack-version"]
    return answer.choices[0].message.content.strip(), answer.model


def _v2_version(url: str) -> str:
    body = {"inputs": [{"name": "args", "datatype": "BYTES", "shape": [1], "data": [SMOKE_PROMPTS[0]]}]}
    got = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60).json()
    return got["model_version"]


def test_another_adapter_of_the_same_base_is_promoted_on_the_running_server(work, versions):
    spec = DeploySpec.model_validate(
        {
            "runtime": "mlserver",
            "generation": {"max_new_tokens": 16},
            "local": {"port": free_port_block(), "smoke_rows": 2, "start_timeout_seconds": 180},
        }
    )
    root = (work / "storage").as_uri()

    def deploy(version: str) -> dict:
        return deploy_local(
            root_uri=root,
            model=MODEL,
            name=NAME,
            version=version,
            version_uri=versions[version].uri,
            local=spec.local,
            runtime="mlserver",
            reason=f"serve {version}",
        )

    def expected(version: str) -> str:
        v = versions[version]
        return v.alone([v.chat(SMOKE_PROMPTS[0])], max_new_tokens=8)[0]

    first = deploy("a1")
    try:
        assert _asked(first["url"]) == (expected("a1"), f"{MODEL}:a1")
        rss_before = _rss_kib(first["pid"])

        second = deploy("a2")  # the same base: the running server serves it
        assert second["pid"] == first["pid"] and second["color"] == first["color"]
        assert second["in_place"] and second["version"] == "a2" and second["smoke"]["rows"] == 2
        assert _asked(second["url"]) == (expected("a2"), f"{MODEL}:a2")  # at once, at the address
        assert _v2_version(second["url"]) == "a2"  # the V2 protocol follows too
        assert _rss_kib(first["pid"]) < rss_before * 1.2  # one adapter more, not a second base
        listed = dict(serving_processes(serving_dir()))[first["pid"]]
        assert f"{MODEL} a2 (started with a1)" in listed, listed
        record, _ = Deployments(root, MODEL).read(NAME)
        assert record["version"] == "a2" and record["history"][-1]["in_place"]
        assert record["previous"]["version"] == "a1"

        back = deploy("a1")  # a rollback on the same base: in place too
        assert back["pid"] == first["pid"] and _asked(back["url"]) == (expected("a1"), f"{MODEL}:a1")
        assert deploy("a1").get("unchanged")

        other = deploy("b1")  # another base: a new server, blue/green
        assert other["pid"] != first["pid"] and other["color"] != first["color"]
        assert not other.get("in_place")
        assert _asked(other["url"]) == (expected("b1"), f"{MODEL}:b1")
        log = Path(first["log"]).read_text()
        assert log.count("loaded adapter chat:a2") == 1  # loaded once, on the one base
    finally:
        stop_local(root, MODEL, NAME)
