"""OpenLineage from the digits pipeline under dag.test(): the provider's listener, its file transport, and
the operators' ``get_openlineage_facets_on_complete`` (:mod:`freestack.lineage_events`). Ingest reports
landing files -> the partition's part file, train the window's part files -> the version folder, the gate
the candidate -> the registered version with its decision, deploy the version -> the deployment record,
score a lake day + the version -> the day's scores. An unreachable HTTP endpoint fails no task; nothing
is emitted without a transport or with ``[openlineage] disabled``; the DAG files never load OpenLineage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime

import pytest

import freestack
from tests.dags.test_train_dag import ROOT, lake  # noqa: F401  (the five-day digits lake fixture)

pytestmark = pytest.mark.usefixtures("airflow_db")

NAMESPACE = "freestack-tests"


@contextlib.contextmanager
def _listening(monkeypatch, transport: dict, **options: str):
    """The provider's listener on the task runner's and the DAG runs' listener managers, sending through
    ``transport``. The provider's plugin adds it only when a transport is configured as a process starts
    (this one started without): the managers are built first, so the plugin stays out of them."""
    from airflow.listeners.listener import get_listener_manager as dag_runs
    from airflow.providers.openlineage.plugins.listener import OpenLineageListener
    from airflow.sdk.listener import get_listener_manager as tasks

    managers = [tasks(), dag_runs()]
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps(transport))
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__NAMESPACE", NAMESPACE)
    # sent from a thread of the task's process rather than a fork of it (torch's threads run here)
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD", "True")
    for key, value in options.items():
        monkeypatch.setenv(f"AIRFLOW__OPENLINEAGE__{key.upper()}", value)
    listener = OpenLineageListener()
    for manager in managers:
        manager.add_listener(listener)
    try:
        yield
    finally:
        for manager in managers:
            manager.pm.unregister(listener)


@pytest.fixture
def ol_file(tmp_path, monkeypatch):
    """The events, one JSON a line, in ``tmp_path/ol.json`` (the provider's file transport)."""
    path = tmp_path / "ol.json"
    with _listening(monkeypatch, {"type": "file", "log_file_path": str(path), "append": True}):
        yield path


def _completed(path) -> dict[str, list[dict]]:
    """The tasks' COMPLETE events by job (``<dag_id>.<task_id>``), in the order they were sent."""
    by_job: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event["eventType"] == "COMPLETE" and "." in event["job"]["name"]:
            by_job.setdefault(event["job"]["name"], []).append(event)
    return by_job


def _states(run) -> dict[str, list[str]]:
    """The states of each task of ``run``: test_sweep_dag's, imported when called (that module imports
    this one's listener)."""
    from tests.dags.test_sweep_dag import _states

    return _states(run)


def _names(datasets: list[dict]) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in datasets]


def _file(path) -> tuple[str, str]:
    return ("file", str(path))


def test_ingest_train_and_score_report_their_datasets(ol_file, lake):  # noqa: F811
    from freestack.ingest.lake import read_manifest
    from freestack.spec import load_spec
    from tests.support.runs import dags_with

    bag = dags_with(lake["specs"], "score", {"schedule": "@daily"}, merge=True)
    train = bag.get_dag("digits_train").test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 4})
    assert train.state == "success", _states(train)
    score = bag.get_dag("digits_score").test(logical_date=datetime(2026, 11, 3, tzinfo=UTC))
    assert score.state == "success", _states(score)
    events = [json.loads(line) for line in ol_file.read_text().splitlines()]
    per_task = Counter(e["job"]["name"] for e in events if "." in e["job"]["name"])
    assert per_task["digits_ingest.ingest"] == 10 and per_task["digits_train.train"] == 2  # START, COMPLETE
    assert per_task["digits_score.score"] == 2 and {e["job"]["namespace"] for e in events} == {NAMESPACE}
    done, root, spec = _completed(ol_file), lake["root"], load_spec(lake["specs"] / "digits.yaml")

    parts = []
    for event, day in zip(done["digits_ingest.ingest"], range(1, 6), strict=True):
        ds = f"2026-11-0{day}"
        part = read_manifest(spec, ds)["part"]
        assert _names(event["inputs"]) == [_file(root / "landing" / "digits" / ds / "digits.csv")]
        (out,) = event["outputs"]
        assert (out["namespace"], out["name"]) == _file(
            root / "lake" / "digits" / f"ds={ds}" / "part.parquet"
        )
        assert out["facets"]["version"]["datasetVersion"] == part["sha256"]
        assert out["outputFacets"]["outputStatistics"]["rowCount"] > 300
        parts.append((out["namespace"], out["name"]))

    (trained,) = done["digits_train.train"]
    model = trained["run"]["facets"]["freestack_modelVersion"]
    assert (
        model["_producer"] == f"urn:freestack:{freestack.__version__}"
    )  # freestack's facet, not the provider's
    version = model["version"]
    assert model["name"] == "digits" and "sha256" not in model  # a candidate: registered by the gate
    assert _names(trained["inputs"]) == parts
    assert _names(trained["outputs"]) == [_file(root / "candidates" / "digits" / version)]
    assert trained["run"]["facets"]["freestack_metrics"]["metrics"]["best_val_accuracy"] > 0.5

    (gated,) = done["digits_train.gate"]
    registered = root / "registry" / "digits" / version
    sha = hashlib.sha256((registered / "_REGISTERED.json").read_bytes()).hexdigest()
    assert gated["run"]["facets"]["freestack_modelVersion"]["sha256"] == sha
    gate = gated["run"]["facets"]["freestack_gate"]
    assert gate["promote"] is True and gate["route"] == "promote" and gate["metric"] == "accuracy"
    assert _names(gated["outputs"]) == [_file(registered)]

    (deployed,) = done["digits_train.deploy"]
    assert _names(deployed["inputs"]) == [_file(registered)]
    assert _names(deployed["outputs"]) == [_file(root / "deployments" / "digits" / "digits.json")]

    (scored,) = done["digits_score.score"]
    assert _names(scored["inputs"]) == [parts[1], _file(registered)]
    (out,) = scored["outputs"]
    manifest = json.loads((root / "scores" / "digits" / "ds=2026-11-02" / "_manifest.json").read_text())
    assert (out["namespace"], out["name"]) == _file(root / "scores" / "digits" / "ds=2026-11-02")
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == manifest["rows_scored"]
    assert scored["run"]["facets"]["freestack_modelVersion"]["sha256"] == sha
    cached = scored["run"]["facets"]["freestack_cache"]  # the step cache's key and miss, in lineage too
    assert cached["hit"] is False and cached["miss"] == "no earlier run" and len(cached["key"]) == 64
    (evaluated,) = done["digits_train.evaluate"]
    assert evaluated["run"]["facets"]["freestack_cache"]["miss"] == "no earlier run"


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_fails_no_task(tmp_path, storage, monkeypatch):
    """HTTP transport at a closed port: ingest succeeds; each event waits at most ``[openlineage]
    execution_timeout`` for the client's retries, then the task goes on without it."""
    import shutil

    from airflow.dag_processing.dagbag import DagBag

    from demo.landing import make_landing

    specs = tmp_path / "pipelines"
    specs.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", specs / "digits.yaml")
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    make_landing(storage, date(2026, 11, 1), 1)
    ingest = DagBag(dag_folder=str(ROOT / "dags")).get_dag("digits_ingest")
    transport = {"type": "http", "url": f"http://127.0.0.1:{_closed_port()}"}
    with _listening(monkeypatch, transport, execution_timeout="2"):
        started = time.monotonic()
        run = ingest.test(logical_date=datetime(2026, 11, 1, tzinfo=UTC))
        took = time.monotonic() - started
    assert run.state == "success" and _states(run) == {"ingest": ["success"]}
    assert took < 30, took  # START and COMPLETE: 2 s each at most, however long the client would retry


def test_nothing_is_emitted_without_a_transport_or_when_disabled(monkeypatch):
    from airflow.providers.openlineage import conf

    for key in ("TRANSPORT", "CONFIG_PATH", "DISABLED"):
        monkeypatch.delenv(f"AIRFLOW__OPENLINEAGE__{key}", raising=False)
    for key in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(key, raising=False)
    assert conf.is_disabled()  # the plugin then registers no listener: no event, no extraction
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", json.dumps({"type": "console"}))
    assert not conf.is_disabled()
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__DISABLED", "True")
    assert conf.is_disabled()


def test_the_operators_load_no_openlineage_until_it_asks():
    code = (
        "import sys\n"
        "import freestack.ingest.operators, freestack.train.operators, freestack.evaluate.operators\n"
        "import freestack.score.operators, freestack.serving.operators, freestack.sweeps.operators\n"
        "import freestack.providers.operators\n"
        "print(sorted(m for m in sys.modules if m.startswith(('openlineage', 'freestack.lineage_events'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "file:///srv/lake/digits/ds=2026-11-01/part.parquet",
            ("file", "/srv/lake/digits/ds=2026-11-01/part.parquet"),
        ),
        ("file:///srv/a%20b/", ("file", "/srv/a b")),
        ("s3://aws_default@models/registry/digits/v1", ("s3://models", "registry/digits/v1")),
        ("s3://models/lake/digits/", ("s3://models", "lake/digits")),
        ("data://alice/lake/digits/ds=2026-11-01", ("data://alice", "lake/digits/ds=2026-11-01")),
        ("gs://bucket/key", ("gs://bucket", "key")),
        ("/srv/lake", ("file", "/srv/lake")),
    ],
)
def test_dataset_names_follow_openlineage_naming(uri, expected):
    from freestack.lineage_events import dataset_name

    assert dataset_name(uri) == expected


def test_data_my_is_named_by_its_user(tmp_path, monkeypatch, clean_stores):
    from freestack.lineage_events import dataset_name

    monkeypatch.setenv(
        "AIRFLOW_CONN_FREESTACK_DATA_DEFAULT",
        json.dumps({"conn_type": "freestack_data", "login": "alice", "extra": {"root": tmp_path.as_uri()}}),
    )
    assert dataset_name("data://.my/ml/lake/digits") == ("data://alice", "ml/lake/digits")
