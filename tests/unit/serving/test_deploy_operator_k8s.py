"""FreestackDeployOperator with ``where="kubernetes"``: the deploy stage's own rollout, with no pipeline spec.

Against the fake API server with a service proxy (``tests/fakes/k8s_api.py``): the operator applies a
SeldonDeployment valid against Seldon Core's CRD and defers; its trigger (run here on an asyncio loop, as
the triggerer runs it) reports Available; ``execute_complete`` smoke-tests the rollout through the proxy
and returns the record kept in ``deployments/<model>/<name>.json``. Bad argument combinations fail when
the DAG file is parsed; a rollout that is not Available or answers otherwise fails the task, saying so.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from freestack.kube import KubeRef
from freestack.providers.operators import ArgumentError, FreestackDeployOperator
from freestack.serving import manifests, seldon_deployments
from tests.fakes.k8s_api import ProxyingKubeAPI, stored_sample
from tests.support.serving import make_version
from tests.unit.serving.test_k8s import CONN, CRD, NS, run_trigger

NAME = "digits-ops"


@pytest.fixture
def cluster(tmp_path, storage, monkeypatch):
    """The proxying fake API server behind connection ``CONN``, and versions v1, v2 of ``digits``."""
    api = ProxyingKubeAPI().start()
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": api.kubeconfig()}}),
    )
    uris = {v: make_version(storage, "digits", v, tmp_path, seed=i) for i, v in enumerate(("v1", "v2"), 1)}
    yield api, storage, uris
    api.stop()


def _context() -> dict:
    return {"ds": "2026-01-05", "run_id": "manual__k8s", "dag": SimpleNamespace(dag_id="mine")}


def _operator(**kw) -> FreestackDeployOperator:
    given = {"model": "digits", "version": "v1", "where": "kubernetes", "name": NAME}
    given.update(namespace=NS, conn_id=CONN)
    return FreestackDeployOperator(task_id="deploy", **{**given, **kw})


def _defer(op: FreestackDeployOperator) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(_context())
    return deferred.value


def _triggered(deferred: TaskDeferred) -> dict:
    """The trigger's event, from a trigger rebuilt from its serialized form as the triggerer rebuilds it
    (looking every 20 ms instead of the target's 10 s)."""
    classpath, kwargs = deferred.trigger.serialize()
    assert (kwargs["name"], kwargs["namespace"], kwargs["conn_id"]) == (NAME, NS, CONN)
    module, cls = classpath.rsplit(".", 1)
    return run_trigger(getattr(importlib.import_module(module), cls)(**{**kwargs, "poll_seconds": 0.02}))


def test_the_operator_rolls_out_defers_and_smoke_tests(cluster):
    api, storage, uris = cluster
    api.pods[f"{NAME}-main"] = uris["v1"]
    op = _operator()
    deferred = _defer(op)
    assert deferred.method_name == "execute_complete" and deferred.kwargs == {"version": "v1"}
    stored = seldon_deployments.get(KubeRef(NAME, NS, CONN))
    manifests.validate_manifest(stored, CRD)
    assert stored["metadata"]["labels"]["freestack.io/version"] == "v1"
    assert [p["name"] for p in stored["spec"]["predictors"]] == ["main"]

    event = _triggered(deferred)
    assert (event["status"], event["name"], event["namespace"]) == ("available", NAME, NS)
    record = op.execute_complete(_context(), event, **deferred.kwargs)
    (sent,) = [r for r in api.requests if "service" in r]
    assert sent["path"] == f"/api/v1/namespaces/{NS}/services/{NAME}-main:http/proxy/api/v1.0/predictions"
    assert (record["version"], record["state"], record["namespace"]) == ("v1", "serving", NS)
    assert record["smoke"]["rows"] == len(stored_sample(uris["v1"])["rows"]) and "history" not in record
    kept = Path(storage.removeprefix("file://"), "deployments", "digits", f"{NAME}.json")
    assert json.loads(kept.read_text())["state"] == "serving"

    lineage = op.get_openlineage_facets_on_complete(None)
    assert [d.name for d in lineage.inputs] == [uris["v1"].removeprefix("file://")]
    assert [d.name for d in lineage.outputs] == [str(kept)]
    assert lineage.run_facets["freestack_modelVersion"].version == "v1"


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"port": 9100}, "port: only where='local' reads it"),
        ({"where": "local"}, "namespace, conn_id: only where='kubernetes' reads it"),
        ({"where": "local", "namespace": None}, "conn_id: only where='kubernetes' reads it"),
        ({"namespace": "Not_A_Name"}, "namespace 'Not_A_Name' is not a valid Kubernetes name"),
        ({"name": "my_model"}, "deploy.name 'my_model' must be a Kubernetes name"),
        ({"where": "cluster"}, "where: Input should be 'local' or 'kubernetes'"),
    ],
)
def test_bad_argument_combinations_fail_at_parse_naming_them(given, named):
    with pytest.raises(ArgumentError, match="FreestackDeployOperator: ") as info:
        _operator(**given)
    assert named in str(info.value)


def test_a_templated_name_is_checked_when_the_task_runs(cluster):
    _operator(namespace="{{ params.namespace }}")  # cannot be judged at parse: rendered, it is checked
    op = _operator(name="{{ params.name }}")
    op.name = "Bad_Name"  # as the template rendered
    with pytest.raises(AirflowFailException, match="deploy.name 'Bad_Name' must be a Kubernetes name"):
        op.rollout_spec(cluster[2]["v1"])


def test_a_rollout_that_answers_otherwise_fails_naming_it(cluster):
    api, _storage, uris = cluster
    api.pods[f"{NAME}-main"] = uris["v2"]  # the pods do not serve v1's model
    op = _operator()
    deferred = _defer(op)
    with pytest.raises(RuntimeError, match=r"smoke row 0 .*; the served model is not the evaluated one"):
        op.execute_complete(_context(), _triggered(deferred), **deferred.kwargs)


def test_a_rollout_not_available_fails_with_the_stages_message(cluster):
    api, _storage, _uris = cluster
    api.outcome = "Failed"
    op = _operator()
    deferred = _defer(op)
    event = _triggered(deferred)
    assert event["status"] == "failed"
    with pytest.raises(
        RuntimeError, match=rf"SeldonDeployment {NS}/{NAME} did not become Available \(failed\)"
    ):
        op.execute_complete(_context(), event, **deferred.kwargs)


def test_rbac_and_a_missing_crd_fail_at_once(cluster):
    api, _storage, _uris = cluster
    api.forbidden = True
    with pytest.raises(AirflowFailException, match=r"(?s)403 .*RBAC.*the task failed at once"):
        _operator().execute(_context())
    api.forbidden = False
    api.crd_installed = False
    with pytest.raises(AirflowFailException, match="Seldon Core's CRD is not installed"):
        _operator().execute(_context())
    api.crd_installed = True
    api.fail_next = [503] * 10  # the API server failing: retried with the task's retries
    with pytest.raises(RuntimeError, match="503"):
        _operator().execute(_context())
