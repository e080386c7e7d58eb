"""The deploy task and the manual ``<p>_rollback`` DAG, run for real through dag.test() against the
real model server: the rollback moves production back and the served version follows."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.runs import run_note
from tests.support.serving import in_process, make_version

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.usefixtures("airflow_db"),
    pytest.mark.skipif(
        not (ROOT / ".venv-serving" / "bin" / "python").exists(),
        reason="the serving environment is missing: run `make serving-venv`",
    ),
]


@pytest.fixture
def pipeline(tmp_path, storage, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    specs = tmp_path / "pipelines"
    specs.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", specs / "digits.yaml")
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    uris = {
        v: make_version(storage, "digits", v, tmp_path, seed=i, n_features=64, classes=tuple(range(10)))
        for i, v in enumerate(("v1", "v2"), start=1)
    }
    from tests.support.serving import make_version as _mv  # noqa: F401  (same helper, for readers)

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return {"bag": bag, "root": storage, "uris": uris}


def _served(root: str):
    from freestack.serving.local import describe
    from freestack.serving.records import Deployments

    rec = Deployments(root, "digits").get("digits")
    return rec, describe(rec)


def test_rollback_dag_restores_the_previous_version(pipeline):
    from freestack.registry.core import ModelRegistry
    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json

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
        deploy_only = (
            pipeline["bag"].get_dag("digits_rollback").partial_subset(["deploy"], include_upstream=False)
        )
        assert deploy_only.test().state == "success"
        rec, now = _served(root)
        assert rec["version"] == "v2" and now["health"] == "ok"
        address = (rec["url"], rec["holder_pid"])

        run = rollback.test()
        assert run.state == "success"
        assert reg.aliases()["production"] == "v1" and reg.aliases()["previous"] == "v2"
        rec, now = _served(root)
        assert rec["version"] == "v1" and now["health"] == "ok" and rec["previous"]["version"] == "v2"
        assert (rec["url"], rec["holder_pid"]) == address and rec["color"] != rec["history"][-2]["color"]
        rows = np.random.default_rng(0).uniform(0, 16, size=(4, 64))
        code, body = http_json(rec["predict_url"], {"data": {"ndarray": rows.tolist()}})
        assert code == 200
        assert np.abs(np.asarray(body["data"]["ndarray"]) - in_process(uris["v1"], rows)).max() < 1e-5

        # a named version, through the form's Param
        run = rollback.test(run_conf={"version": "v2"})
        assert run.state == "success"
        assert _served(root)[0]["version"] == "v2" and _served(root)[0]["url"] == address[0]

        # an unknown version fails the run and leaves production and the server alone
        run = rollback.test(run_conf={"version": "v9"})
        assert run.state == "failed"
        assert reg.aliases()["production"] == "v2" and _served(root)[1]["health"] == "ok"
    finally:
        stop_local(root, "digits", "digits")


def test_deploy_to_kubernetes_defers_until_available_then_canary(tmp_path, storage, monkeypatch):
    """target: kubernetes through the deploy task (dag.test runs the trigger inline) against a local
    Kubernetes API: main predictor first, then a new production version as a 10% canary."""
    import json

    import yaml
    from airflow.dag_processing.dagbag import DagBag

    from freestack.kube import KubeRef
    from freestack.registry.core import ModelRegistry
    from freestack.serving import manifests, seldon_deployments
    from freestack.serving.records import Deployments
    from tests.fakes.k8s_api import ProxyingKubeAPI

    deployed = KubeRef("digits", "models", "kube_test")  # the SeldonDeployment the spec below names
    api = ProxyingKubeAPI().start()  # with the service proxy the smoke test sends the version's rows through
    try:
        monkeypatch.setenv(
            "AIRFLOW_CONN_KUBE_TEST",
            json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": api.kubeconfig()}}),
        )
        specs = tmp_path / "pipelines"
        specs.mkdir()
        data = yaml.safe_load((ROOT / "include" / "pipelines" / "digits.yaml").read_text())
        data["deploy"] = {
            "target": "kubernetes",
            "kubernetes": {
                "conn_id": "kube_test",
                "namespace": "models",
                "image": "freestack/serving:test",
                "replicas": 2,
                "canary": {"traffic": 10},
                "poll_seconds": 0.2,
                "timeout_minutes": 1,
            },
        }
        (specs / "digits.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
        uris = {
            v: make_version(storage, "digits", v, tmp_path, seed=i, n_features=64, classes=tuple(range(10)))
            for i, v in enumerate(("v1", "v2"), start=1)
        }
        api.pods = {
            "digits-main": uris["v1"],
            "digits-canary": uris["v2"],
        }  # what each predictor's pods serve
        reg = ModelRegistry(storage, "digits")
        reg.promote("v1")
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        deploy = bag.get_dag("digits_rollback").partial_subset(["deploy"], include_upstream=False)
        assert deploy.test().state == "success"
        obj = seldon_deployments.get(deployed)
        assert manifests.summary(obj)["predictors"][0]["version"] == "v1"
        assert [p["name"] for p in obj["spec"]["predictors"]] == ["main"]
        manifests.validate_manifest(
            {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec")}
            | {
                "metadata": {
                    "name": obj["metadata"]["name"],
                    "namespace": "models",
                    "labels": obj["metadata"].get("labels", {}),
                }
            }
        )
        rec = Deployments(storage, "digits").get("digits")
        assert rec["state"] == "serving" and rec["target"] == "kubernetes" and rec["version"] == "v1"

        reg.promote("v2")  # the next production version goes out as a canary beside v1
        assert deploy.test().state == "success"
        obj = seldon_deployments.get(deployed)
        traffic = {p["name"]: p["traffic"] for p in obj["spec"]["predictors"]}
        assert traffic == {"main": 90, "canary": 10}
        rec = Deployments(storage, "digits").get("digits")
        assert rec["canary_version"] == "v2" and rec["version"] == "v1" and rec["state"] == "serving"

        from freestack.cli import main

        assert main(["serve", "--root", storage, "canary", "digits", "promote"]) == 0
        obj = seldon_deployments.get(deployed)
        assert [p["name"] for p in obj["spec"]["predictors"]] == ["main"]
        assert Deployments(storage, "digits").get("digits")["version"] == "v2"
    finally:
        api.stop()


def test_promote_dag_moves_staging_alone_and_production_with_its_server(pipeline):
    """``<p>_promote`` (what the Models page's buttons trigger): staging only moves; production moves,
    keeps previous, and is redeployed; each move records the run's triggering user, and the run's note
    says where the alias went."""
    from freestack.registry.core import ModelRegistry
    from freestack.serving.local import stop_local
    from tests.dags.test_sweep_dag import _states

    root = pipeline["root"]
    reg = ModelRegistry(root, "digits")
    reg.promote("v1")
    promote = pipeline["bag"].get_dag("digits_promote")
    assert promote.schedule is None or str(promote.timetable.summary) in ("None", "Never")
    assert promote.params.get_param("alias").schema["enum"] == ["production", "staging"]
    try:
        assert (
            pipeline["bag"]
            .get_dag("digits_rollback")
            .partial_subset(["deploy"], include_upstream=False)
            .test()
            .state
            == "success"
        )
        run = promote.test(run_conf={"version": "v2", "alias": "staging", "reason": "try it first"})
        assert run.state == "success" and _states(run)["deploy"] == ["skipped"]
        aliases = reg.aliases()
        assert (
            aliases["staging"] == "v2"
            and aliases["production"] == "v1"
            and _served(root)[0]["version"] == "v1"
        )
        move = aliases["history"][-1]
        assert (
            move["reason"] == "try it first"
            and move["by"].startswith("dag_test (")
            and run.run_id in move["by"]
        )

        assert run_note(run) == "**Promoted.** `v2` of `digits` is staging now."

        run = promote.test(run_conf={"version": "v2", "alias": "production"})
        assert run.state == "success" and _states(run)["deploy"] == ["success"]
        assert reg.aliases()["production"] == "v2" and reg.aliases()["previous"] == "v1"
        assert run_note(run) == "**Promoted.** `v2` of `digits` is production now (previous: `v1`)."
        rec, now = _served(root)
        assert rec["version"] == "v2" and now["health"] == "ok"

        run = promote.test(run_conf={"version": "v9", "alias": "staging"})
        assert run.state == "failed" and reg.aliases()["staging"] == "v2"
    finally:
        stop_local(root, "digits", "digits")


def test_a_deploy_overtaken_by_another_move_fails_and_says_by_whom(pipeline, monkeypatch):
    """Between a run's alias move and its deploy, another run moves production: the deploy serves nothing
    of this run's and fails (no retry) naming that move; never a success for a version that is not what
    production serves. Every move and deploy of the model runs in its pool of one slot."""
    from freestack.registry.core import ModelRegistry
    from freestack.registry.operators import MoveAliasOperator
    from freestack.serving.local import stop_local
    from tests.dags.test_sweep_dag import _states

    root = pipeline["root"]
    reg = ModelRegistry(root, "digits")
    reg.promote("v1")
    promote = pipeline["bag"].get_dag("digits_promote")
    assert {t.pool for t in promote.tasks} == {"freestack_deploy_digits"}
    assert promote.get_task("deploy").priority_weight > promote.get_task("move_alias").priority_weight
    original = MoveAliasOperator.execute

    def then_another_run_moves(self, context):
        out = original(self, context)
        reg.promote("v1", reason="a rollback meanwhile", by="alice (manual__other)")
        return out

    monkeypatch.setattr(MoveAliasOperator, "execute", then_another_run_moves)
    try:
        assert (
            pipeline["bag"]
            .get_dag("digits_rollback")
            .partial_subset(["deploy"], include_upstream=False)
            .test()
            .state
            == "success"
        )
        run = promote.test(run_conf={"version": "v2", "alias": "production"})
        assert run.state == "failed" and _states(run)["deploy"] == ["failed"]
        rec, now = _served(root)
        assert rec["version"] == "v1" == reg.resolve("production") and now["health"] == "ok"
        assert rec["alias"] == "production" and [h["version"] for h in rec["history"]] == [
            "v1"
        ]  # v2 never started
    finally:
        stop_local(root, "digits", "digits")


def test_serve_status_flags_a_deployment_whose_alias_moved(pipeline, capsys):
    """An alias moved behind the deployment's back (by hand, or a run that failed to deploy) shows as a
    MISMATCH with the fix, in `freestack serve status` and its JSON."""
    import json

    from freestack.cli import main
    from freestack.registry.core import ModelRegistry
    from freestack.serving.local import stop_local

    root = pipeline["root"]
    reg = ModelRegistry(root, "digits")
    reg.promote("v1")
    try:
        assert (
            pipeline["bag"]
            .get_dag("digits_rollback")
            .partial_subset(["deploy"], include_upstream=False)
            .test()
            .state
            == "success"
        )
        capsys.readouterr()
        assert main(["serve", "--root", root, "status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["alias_drift"] is None
        reg.promote("v2", by="test")
        capsys.readouterr()
        assert main(["serve", "--root", root, "status"]) == 0
        said = capsys.readouterr().out
        assert (
            "MISMATCH  serves v1 but production is v2" in said
            and "freestack models promote PIPELINE v2" in said
        )
        # a bare model's served alias may not move behind its deployment: refused with the way to do it
        assert main(["models", "rollback", "digits", "--root", root]) == 1
        assert "is served by deployment digits" in capsys.readouterr().err
        assert reg.resolve("production") == "v2"
    finally:
        stop_local(root, "digits", "digits")
