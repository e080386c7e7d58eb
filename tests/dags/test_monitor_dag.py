"""<p>_monitor under dag.test(): a quiet day, a drifted day (an e-mail through Airflow's SmtpNotifier to a real
SMTP server, the drift asset, whose event starts a ``<p>_train`` run that retrains on the latest window and is
gated), and a day of bad logs (no verdict, no alert)."""

from __future__ import annotations

import contextlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from unittest import mock

import numpy as np
import pytest
import yaml

from tests.dags.test_sweep_dag import _states
from tests.dags.test_train_dag import (
    ROOT,
    lake,  # noqa: F401  (the five-day digits lake fixture)
)
from tests.support.runs import run_note
from tests.unit.monitor.test_drift import shifted

pytestmark = pytest.mark.usefixtures("airflow_db")
ROWS = 300
DRIFT = "freestack://drift/digits"


@pytest.fixture
def smtp(monkeypatch):
    """A real SMTP server on 127.0.0.1 that keeps what it receives; the smtp_default connection points at it."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    from freestack.serving.processes import free_port

    got: list = []

    class Keep(Message):
        def handle_message(self, message):
            got.append(message)

    port = free_port()
    server = Controller(Keep(), hostname="127.0.0.1", port=port)
    server.start()
    conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "extra": {
            "disable_tls": True,
            "disable_ssl": True,
            "from_email": "freestack@example.com",
            "timeout": 10,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))
    yield got
    server.stop()


def _log_day(root: str, version: str, model, pre, X: np.ndarray, day: datetime) -> None:
    """One day of requests of ``X`` (30 rows each) with the version's in-process answers, as the server logs them."""
    import torch

    from freestack_server.core.requestlog import RequestLog, monitoring_uri

    log = RequestLog(
        monitoring_uri(root, "digits"),
        rate=1.0,
        model="digits",
        version=version,
        deployment="digits",
        columns=[(f, "numeric") for f in pre.features],
        classes=[str(c) for c in pre.classes],
    )
    with torch.no_grad():
        out = model.predict_proba(torch.as_tensor(X, dtype=torch.float32)).numpy()
    for k in range(0, len(X), 30):
        log.add(
            f"{day:%d}-{k}", X[k : k + 30].astype(np.float32), out[k : k + 30], ts=day + timedelta(minutes=k)
        )
    log.flush()


def _asset_events(uri: str, *runs) -> list[int]:
    """The ids of the events on ``uri`` that ``runs`` emitted (other tests on this worker's Airflow emit
    their own)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
        query = query.filter(AssetModel.uri == uri, AssetEvent.source_run_id.in_([r.run_id for r in runs]))
        return [e.id for e in query]


@contextlib.contextmanager
def _started_by(event_ids: list):
    """dag.test() makes a manual run; the scheduler makes an asset-triggered one that consumed the events
    (what a drift alert's run is): the run dag.test() makes is turned into that."""
    from airflow.models import dagrun
    from airflow.models.asset import AssetEvent
    from airflow.utils.types import DagRunType

    made = dagrun.get_or_create_dagrun

    def create(**kwargs):
        run = made(**kwargs)
        session = kwargs["session"]
        run.run_type = DagRunType.ASSET_TRIGGERED
        run.consumed_asset_events.extend(session.query(AssetEvent).filter(AssetEvent.id.in_(event_ids)))
        session.commit()
        return run

    with mock.patch.object(dagrun, "get_or_create_dagrun", create):
        yield


def test_quiet_day_drifted_day_and_bad_logs(lake, smtp):  # noqa: F811
    from sklearn.datasets import load_digits

    from freestack import version as model_version
    from freestack.registry.core import ModelRegistry

    spec_file = lake["specs"] / "digits.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["monitor"]["notify"] = [
        {
            "notifier": "airflow.providers.smtp.notifications.smtp.SmtpNotifier",
            "args": {"to": "ml-team@example.com"},
        }
    ]
    spec.pop("sweep")  # a drift alert's run trains with the spec's defaults: one training, 6 epochs
    spec["train"]["epochs"] = 6
    spec_file.write_text(yaml.safe_dump(spec))
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    train = bag.get_dag("digits_train")
    assert "freestack://drift/digits" in repr(train.timetable.asset_condition)  # retraining on drift
    assert train.test(run_conf={"end_ds": "2026-11-04"}).state == "success"  # a day lands after it
    reg = lake["root"] / "registry" / "digits"
    version = ModelRegistry(lake["root"].as_uri(), "digits").resolve("production")
    ref = json.loads((reg / version / "reference.json").read_text())
    assert (
        ref["source"] == "window" and ref["rows"] > 1400 and len(ref["series"]) == 65
    )  # 64 pixels, the prediction
    assert "reference.json" in json.loads((reg / version / "_REGISTERED.json").read_text())["files"]
    loaded = model_version.open((reg / version).as_uri()).load()
    model, pre = loaded.model, loaded.preprocessor
    X = load_digits().data
    rng = np.random.default_rng(3)
    root = lake["root"].as_uri()
    _log_day(root, version, model, pre, X[rng.choice(len(X), ROWS)], datetime(2026, 11, 10, 1, tzinfo=UTC))
    _log_day(
        root, version, model, pre, shifted(X[rng.choice(len(X), ROWS)]), datetime(2026, 11, 11, 1, tzinfo=UTC)
    )

    dag = bag.get_dag("digits_monitor")  # a run's logical date ends its interval: the day before is judged
    quiet = dag.test(logical_date=datetime(2026, 11, 11, tzinfo=UTC))
    assert _states(quiet) == {"monitor": ["success"], "alert": ["skipped"], "retrain": ["skipped"]}
    reports = lake["root"] / "monitoring" / "digits" / "reports"
    summary = json.loads((reports / "2026-11-10T000000--2026-11-11T000000" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rows"] == ROWS and not smtp
    assert (reports / "2026-11-10T000000--2026-11-11T000000" / "report.html").read_text().count("<img") == 2

    drifted = dag.test(logical_date=datetime(2026, 11, 12, tzinfo=UTC))
    assert _states(drifted) == {"monitor": ["success"], "alert": ["success"], "retrain": ["success"]}
    summary = json.loads((reports / "2026-11-11T000000--2026-11-12T000000" / "summary.json").read_text())
    first = summary["alerts"][0]
    assert summary["status"] == "drift" and first["statistic"] == "psi" and first["threshold"] == 0.2
    assert len(smtp) == 1 and "digits drifted" in smtp[0]["Subject"]
    mail = "".join(p.get_payload(decode=True).decode() for p in smtp[0].walk() if not p.is_multipart())
    assert first["series"] in mail and "PSI" in mail and "0.2" in mail and "report.html" in mail
    assert (
        lake["root"] / "monitoring" / "digits" / "alerts" / "2026-11-11T000000--2026-11-12T000000.json"
    ).exists()
    assert not _asset_events(DRIFT, quiet)  # a quiet interval starts no training
    assert len(_asset_events(DRIFT, drifted)) == 1
    _retrains_on_drift(lake, drifted, version)
    assert len(_asset_events("freestack://monitoring/digits", quiet, drifted)) == 2

    # a day with a truncated file and a version that has no reference statistics: a report, no alert
    day = lake["root"] / "monitoring" / "digits" / "requests" / "ds=2026-11-12" / "hour=03"
    day.mkdir(parents=True)
    good = next((lake["root"] / "monitoring" / "digits" / "requests" / "ds=2026-11-10").rglob("*.parquet"))
    (day / "cut.parquet").write_bytes(good.read_bytes()[:300])
    _log_day(root, "v-unknown", model, pre, X[:200], datetime(2026, 11, 12, 4, tzinfo=UTC))
    bad = dag.test(logical_date=datetime(2026, 11, 13, tzinfo=UTC))
    assert _states(bad) == {"monitor": ["success"], "alert": ["skipped"], "retrain": ["skipped"]}
    summary = json.loads((reports / "2026-11-12T000000--2026-11-13T000000" / "summary.json").read_text())
    assert summary["status"] == "no_data" and not summary["alerts"] and len(smtp) == 1
    assert "cut.parquet: unreadable" in summary["problems"][0]
    assert "v-unknown has no reference statistics" in summary["notes"][0]
    shutil.rmtree(day)
    empty = dag.test(logical_date=datetime(2026, 11, 21, tzinfo=UTC))
    summary = json.loads((reports / "2026-11-20T000000--2026-11-21T000000" / "summary.json").read_text())
    assert (
        empty.state == "success"
        and summary["status"] == "no_data"
        and "no requests were logged" in summary["notes"][0]
    )
    # a run triggered without a logical date has no interval to judge: it fails at once, saying so
    from tests.dags.test_reusable_operators import _tries

    none = dag.test(logical_date=None)
    assert _states(none)["monitor"] == ["failed"] and _tries(none, "monitor") == 1


def _retrains_on_drift(lake, drifted, production: str) -> None:  # noqa: F811
    """The drift event starts ``digits_train`` (as the scheduler does): it trains on the latest window (the
    day that landed after production's), is gated, and its note names the alert that started it."""
    from airflow.dag_processing.dagbag import DagBag

    from freestack.registry.core import ModelRegistry

    train = DagBag(dag_folder=str(ROOT / "dags")).get_dag("digits_train")  # the form's earlier values go
    with _started_by(_asset_events(DRIFT, drifted)):
        run = train.test(logical_date=None)
    states = _states(run)
    assert run.run_type == "asset_triggered" and states["train"] == ["success"], states
    assert states["gate"] == ["success"] and states["evaluate"] == ["success"], states
    reg = ModelRegistry(lake["root"].as_uri(), "digits")
    (new,) = [v["version"] for v in reg.versions() if v["version"] != production]
    lineage = reg.lineage(new)
    assert [p["ds"] for p in lineage["partitions"]][-1] == "2026-11-05", (
        run_note(run),
        lineage["window"],
        production,
        new,
    )
    assert (
        lineage["gate"]["decision"] in ("promote", "block")
        and lineage["gate"]["champion_version"] == production
    )
    note = run_note(run) or ""
    assert f"**Retraining on drift:** digits_monitor run {drifted.run_id} alerted: " in note, note
    assert "PSI" in note and "report.html" in note, note
