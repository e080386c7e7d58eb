"""Seldon's own Python client (``seldon_core.seldon_client.SeldonClient``, from the serving environment)
against a real local model server, as docs/stages/serving.md shows it: ``microservice`` (the server's
``/predict``) and ``predict`` (``/api/v1.0/predictions``), with ``ndarray`` rows and ``jsonData``
records; the answers equal the version's in-process predictions."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from freestack.errors import DeployError
from freestack.serving.local import deploy_local, stop_local
from freestack.serving.spec import LocalTarget
from tests.support.serving import in_process, make_version, needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = needs_serving_env
N_FEATURES = 8


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("seldon-client")
    root = (work / "storage").as_uri()
    uri = make_version(root, "m", "v1", work, n_features=N_FEATURES)
    local = LocalTarget(workers=1, smoke_rows=8, start_timeout_seconds=90)
    rec = deploy_local(root_uri=root, model="m", name="m", version="v1", version_uri=uri, local=local)
    yield {"record": rec, "uri": uri}
    try:
        stop_local(root, "m", "m")
    except DeployError:
        pass


def doc_example() -> str:
    """The Python block of serving.md's "Calling it from Python" section."""
    page = (ROOT / "docs" / "stages" / "serving.md").read_text()
    section = page[page.index("### Calling it from Python") :]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_documented_seldon_client_calls_answer_as_the_version_does(served):
    rec = served["record"]
    rows = np.random.default_rng(3).normal(size=(5, N_FEATURES)) * 3
    address = rec["predict_url"].split("//", 1)[1].split("/", 1)[0]
    code = doc_example().replace("127.0.0.1:9000", address)
    code = code.replace("rows = [[0.5, 1.2, 3.3, 0.0, 2.1, 0.7, 1.1, 4.0]]", f"rows = {rows.tolist()}")
    code += "\nimport json\nprint(json.dumps([reply, same.response, records.response]))\n"
    python = os.environ.get("FREESTACK_SERVING_PYTHON") or str(ROOT / ".venv-serving" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    answer, same, records = json.loads(out.stdout.strip().splitlines()[-1])
    want = in_process(served["uri"], rows)
    for got in (answer, same):
        assert got["data"]["names"] == ["0", "1", "2"]
        assert np.abs(np.asarray(got["data"]["ndarray"]) - want).max() < 1e-5
    probs = [[p["probabilities"][c] for c in ("0", "1", "2")] for p in records["jsonData"]["predictions"]]
    assert np.abs(np.asarray(probs) - want).max() < 1e-5
