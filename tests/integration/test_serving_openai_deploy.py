"""The OpenAI API's key on a real local deploy: a text-generation version deployed on runtime mlserver with
``deploy.api_key.conn_id``, the key read from a real Airflow connection (``AIRFLOW_CONN_*``) as the deploy task
reads it. The official ``openai`` client with the key gets the version's answer at the deployment's address;
without it, or with another key, ``openai.AuthenticationError``. The key is in the server's env file (mode
0600) and in no record, status or process listing; a rotated key starts a new server on the next deploy."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import openai
import pytest

from freestack.cli import main
from freestack.hooks.credentials import server_api_key
from freestack.serving.launch import API_KEY_VARIABLE, serving_dir
from freestack.serving.local import deploy_local, describe, stop_local
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

MODEL, CONN = "chat", "llm_api_key"
KEY, ROTATED = "sk-freestack-deploy-4f1c", "sk-freestack-rotated-9b2e"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openai-deploy")


@pytest.fixture(scope="module")
def version(work) -> GenerationVersion:
    return make_generation_version((work / "storage").as_uri(), MODEL, "v1", work)


def set_key(monkeypatch, key: str) -> None:
    """The Airflow connection whose password is the key (the environment's secrets backend)."""
    conn = {"conn_type": "generic", "password": key}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN.upper()}", json.dumps(conn))


def ask(url: str, key: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": SMOKE_PROMPTS[0]}], max_tokens=8, temperature=0
    )
    return answer.choices[0].message.content.strip()


def refused(url: str, key: str | None) -> None:
    """``key`` None: the client sends no Authorization header at all (the official client needs a key to
    start, so its header is omitted from each request)."""
    sent: list[str | None] = []
    hook = httpx.Client(event_hooks={"request": [lambda r: sent.append(r.headers.get("authorization"))]})
    headers = {"Authorization": openai.Omit()} if key is None else {}
    client = openai.OpenAI(
        base_url=f"{url}/v1",
        api_key=key or "unused",
        http_client=hook,
        max_retries=0,
        timeout=60,
    )
    with pytest.raises(openai.AuthenticationError):
        client.models.list(extra_headers=headers)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_headers=headers
        )
    assert sent == [None if key is None else f"Bearer {key}"] * 2


def test_a_local_deploy_serves_the_openai_api_with_the_connections_key(work, version, monkeypatch, capsys):
    spec = DeploySpec.model_validate(
        {
            "runtime": "mlserver",
            "api_key": {"conn_id": CONN},
            "generation": {"max_new_tokens": 16},
            "local": {
                "port": free_port_block(),
                "workers": 1,
                "smoke_rows": 2,
                "log_sample_rate": 0.0,
                "start_timeout_seconds": 180,
            },
        }
    )
    root = (work / "storage").as_uri()
    set_key(monkeypatch, KEY)

    def deploy() -> dict:
        return deploy_local(
            root_uri=root,
            model=MODEL,
            name="chat-keyed",
            version="v1",
            version_uri=version.uri,
            local=spec.local,
            runtime="mlserver",
            api_key=server_api_key(spec),
        )

    rec = deploy()
    try:
        expected = version.alone([version.chat(SMOKE_PROMPTS[0])], max_new_tokens=8)[0]
        assert ask(rec["url"], KEY) == expected  # at the deployment's address, with the key
        for wrong in (None, "sk-wrong"):
            refused(rec["url"], wrong)
        env_file = Path(rec["config"])
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert f"{API_KEY_VARIABLE}='{KEY}'" in env_file.read_text()
        record, _ = Deployments(root, MODEL).read("chat-keyed")
        assert record["api_key_conn_id"] == CONN
        assert main(["serve", "--root", root, "status", "--json"]) == 0
        main(["serve", "--root", root, "status"])
        shown = capsys.readouterr().out
        assert "chat-keyed" in shown
        for text in (json.dumps(record), json.dumps(describe(record)), shown):
            assert KEY not in text
        assert KEY not in repr(serving_processes(serving_dir()))

        assert deploy().get("unchanged")  # the same key: nothing to do
        set_key(monkeypatch, ROTATED)
        rotated = deploy()  # a new key needs a new server
        assert not rotated.get("unchanged") and rotated["color"] != rec["color"]
        assert ask(rotated["url"], ROTATED) == expected
        refused(rotated["url"], KEY)
        capsys.readouterr()  # serve predict sends the key the record's connection holds, over V2
        assert main(["serve", "--root", root, "predict", "chat-keyed", "--model", MODEL]) == 0
        assert "generated_text" in capsys.readouterr().out
    finally:
        stop_local(root, MODEL, "chat-keyed")


def test_what_serving_a_version_costs_through_its_openai_api(version, work, monkeypatch):
    """evaluate's serving costs (freestack.serving.costs) on runtime mlserver: the version started as a deploy
    starts it, behind a one-time key, asked through its OpenAI API, streamed: time to first token, the gap
    between tokens, tokens a second, the server's memory; then stopped, its folder gone. A folder that holds
    no model is refused, saying so."""
    from freestack.errors import DeployError
    from freestack.serving.costs import measure_serving

    monkeypatch.setenv("FREESTACK_SERVING_DIR", str(work / "serving-costs"))
    deploy = DeploySpec(runtime="mlserver", measure={"seconds": 0.5, "warmup_seconds": 0.2, "concurrency": 2})
    costs = measure_serving(version.uri, model=MODEL, version="v1", deploy=deploy, sample=version.sample)
    assert (costs.runtime, costs.workers, costs.errors, costs.batch_rows) == ("mlserver", 1, 0, 1), costs
    assert 0 < costs.ttft_p50_ms <= costs.ttft_p99_ms <= costs.latency_p99_ms, costs
    assert 0 < costs.itl_ms < costs.latency_p50_ms and costs.tokens_per_s > 0 and costs.requests > 0, costs
    assert costs.peak_memory_mb > 100 and costs.cpu_ms_per_request > 0 and costs.start_s > 0, costs
    assert not list((work / "serving-costs").glob("costs-*")), "the measurement's folder is left behind"
    empty = work / "not-a-model"
    empty.mkdir()
    (empty / "notes.txt").write_text("no model here")
    with pytest.raises(DeployError, match="cannot be served to measure it"):
        measure_serving(empty.as_uri(), model=MODEL, version="v2", deploy=deploy, sample=version.sample)
