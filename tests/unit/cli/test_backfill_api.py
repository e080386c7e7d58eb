"""``freestack backfill`` against Airflow's own REST API: the real API server app (in this process, on
127.0.0.1, with the simple auth manager and its generated admin password, as ``airflow standalone``
runs it) over a migrated metadata database holding the project's DAGs. No scheduler runs: the test
plays its part and finishes the runs the backfill created."""

from __future__ import annotations

import os
import threading
import time

import airflow  # noqa: F401  (Airflow sets up logging when imported: here, not on a test's captured output)
import pytest

from freestack.cli import backfill as backfill_cli
from freestack.cli import main
from tests.conftest import ROOT
from tests.support.ports import free_port
from tests.unit.cli.test_backfill import land


@pytest.fixture(scope="module")
def api_server(airflow_db):
    """The API server app with the project's DAGs in its database: its base URL."""
    import uvicorn
    from airflow.api_fastapi.app import create_app
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    _forget_backfills("digits_ingest")  # the session's database may hold runs of these days from other tests
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    sync_bag_to_db(bag, "dags-folder", None)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app("core"), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API server did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    _forget_backfills("digits_ingest")


def _forget_backfills(dag_id: str) -> None:
    """Leave the session's database as the test found it: no backfill or run of ``dag_id``, paused."""
    from airflow.models.backfill import Backfill, BackfillDagRun
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete, select, update

    with create_session() as session:
        ids = select(Backfill.id).where(Backfill.dag_id == dag_id)
        session.execute(delete(BackfillDagRun).where(BackfillDagRun.backfill_id.in_(ids)))
        session.execute(delete(DagRun).where(DagRun.dag_id == dag_id))
        session.execute(delete(Backfill).where(Backfill.dag_id == dag_id))
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=True))


def _finish_backfill_runs(dag_id: str, stop: threading.Event) -> None:
    """What the scheduler would do: each backfill run of ``dag_id`` succeeds, one per half second."""
    from airflow.models.dagrun import DagRun
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from sqlalchemy import select

    while not stop.is_set():
        with create_session() as session:
            run = session.scalars(
                select(DagRun)
                .where(DagRun.dag_id == dag_id, DagRun.run_type == "backfill", DagRun.state == "queued")
                .limit(1)
            ).first()
            if run is not None:
                run.state, run.start_date, run.end_date = "success", timezone.utcnow(), timezone.utcnow()
        time.sleep(0.5)


def test_backfill_through_the_real_api(api_server, monkeypatch, capsys, storage):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", api_server)
    monkeypatch.setattr(backfill_cli, "POLL_SECONDS", 0.2)
    assert os.path.exists(
        os.path.join(os.environ["AIRFLOW_HOME"], "simple_auth_manager_passwords.json.generated")
    )
    argv = ["backfill", "digits", "--start", "2026-11-01", "--end", "2026-11-03"]

    land(storage, ["2026-11-01", "2026-11-02", "2026-11-03"])

    # new DAGs start paused, and unpausing one (catchup: false) starts its latest interval, which has no data
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: digits_ingest is paused") and "latest interval" in err and "--unpause" in err
    )

    stop = threading.Event()
    worker = threading.Thread(target=_finish_backfill_runs, args=("digits_ingest", stop), daemon=True)
    worker.start()
    try:
        code = main([*argv, "--unpause", "--timeout", "120"])
    finally:
        stop.set()
        worker.join()
    got = capsys.readouterr()
    assert code == 0, got.err
    # the in-process API server logs its requests to the same stdout: the CLI's lines only
    lines = [ln for ln in got.out.splitlines() if ln.startswith(("backfill ", "digits_ingest 2"))]
    assert (
        lines[0].startswith("backfill ") and "of digits_ingest: 3 runs, 2026-11-01 to 2026-11-03" in lines[0]
    )
    assert sorted(ln.split(":")[0] for ln in lines[1:4]) == [f"digits_ingest 2026-11-0{d}" for d in (1, 2, 3)]
    assert lines[-1].endswith("3 runs succeeded")

    # the same days again: nothing to do, unless reprocessing; the train DAG has no schedule to backfill
    assert main(argv) == 1
    assert "nothing to backfill" in capsys.readouterr().err
    assert main([*argv, "--dag", "train", "--unpause"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # the address it used, then what it refused
    assert err.startswith(f"error: Airflow at {api_server} refused the backfill of digits_train")
