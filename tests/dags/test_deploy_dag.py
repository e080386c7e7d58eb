"""The deploy task and the manual ``<p>_rollback`` DAG, run for real through dag.test() against the
real model server: the rollback moves production back and the served version follows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.serving_helpers import in_process, make_version

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.usefixtures("airflow_db"),
    pytest.mark.skipif(not (ROOT / ".venv-serving" / "bin" / "python").exists(),
                       reason="the serving environment is missing: run `make serving-venv`"),
]  # fmt: skip


@pytest.fixture
def pipeline(tmp_path, storage, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    specs = tmp_path / "pipelines"
    specs.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", specs / "digits.yaml")
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    uris = {v: make_version(storage, "digits", v, tmp_path, seed=i, n_features=64, classes=tuple(range(10)))
            for i, v in enumerate(("v1", "v2"), start=1)}  # fmt: skip
    from tests.serving_helpers import make_version as _mv  # noqa: F401  (same helper, for readers)

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return {"bag": bag, "root": storage, "uris": uris}


def _served(root: str):
    from freestack.serving.local import Deployments, describe

    rec = Deployments(root, "digits").get("digits")
    return rec, describe(rec)


def test_rollback_dag_restores_the_previous_version(pipeline):
    from freestack.registry import ModelRegistry
    from freestack.serving.local import http_json, stop_local

    root, uris = pipeline["root"], pipeline["uris"]
    reg = ModelRegistry(root, "digits")
    reg.promote("v1")
    reg.promote("v2")
    assert reg.aliases()["previous"] == "v1"
    rollback = pipeline["bag"].get_dag("digits_rollback")
    assert rollback.schedule is None or str(rollback.timetable.summary) in ("None", "Never")
    assert rollback.params["version"] == "previous"
    try:
        # production (v2) is served first, as the train DAG's deploy task leaves it
        deploy_only = pipeline["bag"].get_dag("digits_rollback").partial_subset(["deploy"], include_upstream=False)
        assert deploy_only.test().state == "success"
        rec, now = _served(root)
        assert rec["version"] == "v2" and now["health"] == "ok"

        run = rollback.test()
        assert run.state == "success"
        assert reg.aliases()["production"] == "v1" and reg.aliases()["previous"] == "v2"
        rec, now = _served(root)
        assert rec["version"] == "v1" and now["health"] == "ok" and rec["previous"]["version"] == "v2"
        rows = np.random.default_rng(0).uniform(0, 16, size=(4, 64))
        code, body = http_json(rec["predict_url"], {"data": {"ndarray": rows.tolist()}})
        assert code == 200
        assert np.abs(np.asarray(body["data"]["ndarray"]) - in_process(uris["v1"], rows)).max() < 1e-5

        # a named version, through the form's Param
        run = rollback.test(run_conf={"version": "v2"})
        assert run.state == "success"
        assert _served(root)[0]["version"] == "v2"

        # an unknown version fails the run and leaves production and the server alone
        run = rollback.test(run_conf={"version": "v9"})
        assert run.state == "failed"
        assert reg.aliases()["production"] == "v2" and _served(root)[1]["health"] == "ok"
    finally:
        stop_local(root, "digits", "digits")
