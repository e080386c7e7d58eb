"""A local deployment with ``deploy.runtime: mlserver``: MLServer 1.7.1 (.venv-mlserver) behind the same
stable address, smoke test and blue/green switch as Seldon's runtime. A load loop speaking the Open
Inference Protocol through a redeploy sees no failed request; Triton's official client reaches the
deployment's address; ``freestack serve predict`` sends a V2 request; what is not HTTP gets a V2 400 at the
address too; and a deployment whose model cannot be loaded again after a crash reads DOWN in
``freestack serve status``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import psutil
import pytest

from freestack.cli import main
from freestack.errors import DeployError
from freestack.serving.launch import serving_dir
from freestack.serving.local import deploy_local, describe, stop_local
from freestack.serving.processes import free_port_block, stop_serving_processes
from freestack.serving.records import Deployments
from freestack.serving.spec import LocalTarget
from tests.support.serving import LoadLoop, in_process, make_version, needs_serving_env
from tests.support.serving_hostile import TLS_HELLO, exchange

ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 8
KEEP_MODEL_SERVERS = True  # one deployment walks through its versions (see conftest)
pytestmark = [
    needs_serving_env,
    pytest.mark.skipif(
        not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
        reason="the MLServer environment is missing: run `make mlserver-venv`",
    ),
]


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    work = tmp_path_factory.mktemp("oip-deploy")
    root = (work / "storage").as_uri()
    uris = {v: make_version(root, "oipdep", v, work, seed=i) for i, v in enumerate(("v1", "v2"), start=1)}
    local = LocalTarget(
        port=free_port_block(),
        smoke_rows=8,
        log_sample_rate=0.0,
        start_timeout_seconds=120,
        grpc_port=free_port_block(),
        metrics_port=free_port_block(),
    )
    rec = deploy_local(
        root_uri=root,
        model="oipdep",
        name="oipdep",
        version="v1",
        version_uri=uris["v1"],
        local=local,
        runtime="mlserver",
    )
    yield {"root": root, "uris": uris, "local": local, "first": rec}
    try:
        stop_local(root, "oipdep", "oipdep")
    except DeployError:
        pass
    stop_serving_processes(serving_dir() / "oipdep")


def test_the_deployment_answers_v2_at_its_address_after_the_smoke_test(dep):
    import tritonclient.http as httpclient

    rec = dep["first"]
    assert rec["runtime"] == "mlserver" and rec["predict_url"] == f"{rec['url']}/v2/models/oipdep/infer"
    assert rec["smoke"]["rows"] == 8 and rec["smoke"]["max_abs_diff"] < 1e-4
    assert describe(rec)["health"] == "ok"
    client = httpclient.InferenceServerClient(rec["url"].removeprefix("http://"))
    rows = np.random.default_rng(2).normal(size=(3, N_FEATURES)).astype(np.float32)
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=False)
    got = client.infer(
        "oipdep", [inp], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    )
    np.testing.assert_allclose(got.as_numpy("probabilities"), in_process(dep["uris"]["v1"], rows), atol=1e-5)


def test_a_redeploy_under_v2_load_keeps_the_address_and_fails_no_request(dep):
    before = Deployments(dep["root"], "oipdep").get("oipdep")
    with LoadLoop("127.0.0.1", before["port"], [0.5] * N_FEATURES, v2_model="oipdep") as load:
        time.sleep(1.0)
        rec = deploy_local(
            root_uri=dep["root"],
            model="oipdep",
            name="oipdep",
            version="v2",
            version_uri=dep["uris"]["v2"],
            local=dep["local"],
            runtime="mlserver",
        )
        t1 = time.monotonic()
        deadline = t1 + 10
        while time.monotonic() < deadline and not all(f["sent"] for f in load.figures(t1 + 0.05).values()):
            time.sleep(0.2)
    assert rec["url"] == before["url"] and rec["color"] != before["color"] and rec["version"] == "v2"
    for style, f in load.figures().items():
        assert f["sent"] > 0 and f["failed"] == 0, (
            f"{style}: {f['failed']} of {f['sent']} failed: {f['errors']}"
        )
    for style, f in load.figures(t1 + 0.05).items():
        assert f["versions"] == ["v2"], (style, f)  # only the new version once switched


def test_the_grpc_and_metrics_ports_are_the_settings_and_serve_status_shows_them(dep, capsys):
    """deploy.local.grpc_port and metrics_port: blue's, green's + 1 (the redeploy above moved to green);
    the record and `freestack serve status` name them, and Triton's gRPC client answers there."""
    import tritonclient.grpc as grpcclient

    rec = Deployments(dep["root"], "oipdep").get("oipdep")
    offset = ("blue", "green").index(rec["color"])
    grpc_port, metrics_port = dep["local"].grpc_port + offset, dep["local"].metrics_port + offset
    assert (rec["grpc_port"], rec["grpc_address"]) == (grpc_port, f"127.0.0.1:{grpc_port}")
    assert (
        rec["metrics_port"] == metrics_port
        and rec["metrics_url"] == f"http://127.0.0.1:{metrics_port}/metrics"
    )
    assert grpcclient.InferenceServerClient(rec["grpc_address"]).is_model_ready("oipdep")
    lines = _status(dep["root"], capsys)
    assert f"  metrics   http://127.0.0.1:{metrics_port}/metrics" in lines, lines
    assert any(
        line.startswith(f"  grpc      127.0.0.1:{grpc_port}  (the {rec['color']} server's own")
        for line in lines
    ), lines


@pytest.mark.parametrize(
    "raw",
    [TLS_HELLO, b"\x00\x01\x02\x03", b"GARBAGE\r\n\r\n"],
    ids=["TLS ClientHello", "NUL bytes", "garbage"],
)
def test_what_is_not_http_gets_a_v2_400_at_the_deployments_address(dep, raw):
    """The address server (oip_server.AddressServer, a second uvicorn server) runs the launcher's HTTP
    protocol too: uvicorn's parser refusals are 400 ``{"error"}``, not plain text."""
    rec = Deployments(dep["root"], "oipdep").get("oipdep")
    ans = exchange(rec["port"], raw, timeout=30)
    assert ans.status == 400 and ans.headers["content-type"] == "application/json", ans
    assert set(ans.json()) == {"error"} and "not HTTP/1.1" in ans.json()["error"], ans.body
    assert ans.headers.get("connection") == "close"


def test_a_deployment_whose_model_cannot_load_again_reads_down(tmp_path, capsys):
    """The repository API is closed, so nobody can unload a deployment's model; what is left is a server
    that loses it. Here the version's files are deleted and MLServer is killed: the supervisor (the
    recorded pid) restarts it, the restart answers the model's readiness 404 until it fails to load and
    exits with the boot error, and the supervisor does not restart a broken version again. `freestack
    serve status` reads DOWN: whenever
    the health check got an HTTP answer other than 200 (the process runs but its model does not answer), and
    for good once the process is gone."""
    root = (tmp_path / "storage").as_uri()
    uri = make_version(root, "oipdown", "v1", tmp_path, seed=4)
    local = LocalTarget(port=free_port_block(), smoke_rows=8, log_sample_rate=0.0, start_timeout_seconds=120)
    rec = deploy_local(
        root_uri=root,
        model="oipdown",
        name="oipdown",
        version="v1",
        version_uri=uri,
        local=local,
        runtime="mlserver",
    )
    try:
        assert _status(root, capsys)[0] == "oipdown/oipdown: v1 serving"
        shutil.rmtree(urlparse(uri).path)
        children = psutil.Process(rec["pid"]).children()
        assert children, "the supervisor runs no MLServer"
        for child in children:
            child.kill()
        seen: list[tuple[float, str, str]] = []  # (s after the kill, state, health)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and not (seen and "process is gone" in seen[-1][1]):
            first, url_line = _status(root, capsys)[:2]
            seen.append(
                (
                    round(time.monotonic() - t0, 1),
                    first.removeprefix("oipdown/oipdown: v1 "),
                    url_line.rpartition("(health: ")[2].removesuffix(")"),
                )
            )
            time.sleep(0.2)
        changes = [s for i, s in enumerate(seen) if i == 0 or s[1:] != seen[i - 1][1:]]
        print("\nserve status after the model was lost: " + json.dumps(changes))
        assert seen[-1][1].startswith("DOWN (the recorded process is gone"), changes
        for _, state, health in seen:  # an HTTP answer other than 200 is never read as serving
            assert state.startswith("DOWN") or not health.startswith("HTTP "), changes
        print(
            f"DOWN while the process ran (model ready: HTTP 404): {sum(s.startswith('DOWN (the process runs') for _, s, _ in seen)} "
            f"of {len(seen)} checks"
        )
    finally:
        try:
            stop_local(root, "oipdown", "oipdown")
        except DeployError:
            pass
        stop_serving_processes(serving_dir() / "oipdown")


def _status(root: str, capsys) -> list[str]:
    """`freestack serve status`: the lines it printed for the one deployment under ``root``."""
    capsys.readouterr()
    assert main(["serve", "--root", root, "status"]) == 0
    return capsys.readouterr().out.splitlines()
