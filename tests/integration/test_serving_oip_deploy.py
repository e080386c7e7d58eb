"""A local deployment with ``deploy.runtime: mlserver``: MLServer 1.7.1 (.venv-mlserver) behind the same
stable address, smoke test and blue/green switch as Seldon's runtime. A load loop speaking the Open
Inference Protocol through a redeploy sees no failed request; Triton's official client reaches the
deployment's address; ``freestack serve predict`` sends a V2 request."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from freestack.errors import DeployError
from freestack.serving.local import deploy_local, describe, serving_dir, stop_local
from freestack.serving.processes import free_port_block, stop_serving_processes
from freestack.serving.records import Deployments
from freestack.serving.spec import LocalTarget
from tests.support.serving import LoadLoop, in_process, make_version, needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 8
KEEP_MODEL_SERVERS = True  # one deployment walks through its versions (see conftest)
pytestmark = [needs_serving_env, pytest.mark.skipif(not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
                                                    reason="the MLServer environment is missing: run `make mlserver-venv`")]  # fmt: skip


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    work = tmp_path_factory.mktemp("oip-deploy")
    root = (work / "storage").as_uri()
    uris = {v: make_version(root, "oipdep", v, work, seed=i) for i, v in enumerate(("v1", "v2"), start=1)}
    local = LocalTarget(port=free_port_block(), smoke_rows=8, log_sample_rate=0.0, start_timeout_seconds=120)
    rec = deploy_local(root_uri=root, model="oipdep", name="oipdep", version="v1", version_uri=uris["v1"],
                       local=local, runtime="mlserver")  # fmt: skip
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
    got = client.infer("oipdep", [inp], outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)])
    np.testing.assert_allclose(got.as_numpy("probabilities"), in_process(dep["uris"]["v1"], rows), atol=1e-5)


def test_a_redeploy_under_v2_load_keeps_the_address_and_fails_no_request(dep):
    before = Deployments(dep["root"], "oipdep").get("oipdep")
    with LoadLoop("127.0.0.1", before["port"], [0.5] * N_FEATURES, v2_model="oipdep") as load:
        time.sleep(1.0)
        rec = deploy_local(root_uri=dep["root"], model="oipdep", name="oipdep", version="v2",
                           version_uri=dep["uris"]["v2"], local=dep["local"], runtime="mlserver")  # fmt: skip
        t1 = time.monotonic()
        deadline = t1 + 10
        while time.monotonic() < deadline and not all(f["sent"] for f in load.figures(t1 + 0.05).values()):
            time.sleep(0.2)
    assert rec["url"] == before["url"] and rec["color"] != before["color"] and rec["version"] == "v2"
    for style, f in load.figures().items():
        assert f["sent"] > 0 and f["failed"] == 0, f"{style}: {f['failed']} of {f['sent']} failed: {f['errors']}"
    for style, f in load.figures(t1 + 0.05).items():
        assert f["versions"] == ["v2"], (style, f)  # only the new version once switched
