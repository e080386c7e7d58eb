"""The CLI on a saturated machine: Airflow's API server answers late (past the client's timeout), not
never. A late answer to a call that is safe to repeat is waited out, each wait said with where to follow
the pipeline; a POST that starts something (a run, a backfill) is never sent twice; an Airflow that never
answers in time is one line that says the runs go on and where. Real servers on 127.0.0.1: a proxy
that holds answers (:class:`~tests.support.slow_http.LateProxy`) in front of the stand-in for Airflow's
API (``freestack backfill`` end to end), and in front of Airflow's own API server (the client's runs
and backfills)."""

from __future__ import annotations

import os

import airflow  # noqa: F401  (Airflow sets up logging when imported: here, not on a test's captured output)
import pytest

from freestack import embedded
from freestack.cli import main
from tests.support.slow_http import LateProxy
from tests.unit.cli.test_backfill import ARGV, DAYS, fake_airflow  # noqa: F401  (the fixture)
from tests.unit.cli.test_backfill_api import _forget_backfills, api_server  # noqa: F401  (the fixture)

RUNS = ("GET", "/api/v2/dags/digits_ingest/dagRuns")


@pytest.fixture
def quick_timeouts(monkeypatch):
    """A call counts as unanswered after 1 s (60 s in use), and the pauses between tries are short."""
    monkeypatch.setattr(embedded, "API_TIMEOUT_S", 1.0)
    monkeypatch.setattr(embedded, "TIMEOUT_PAUSE_S", 0.05)


@pytest.fixture
def late_airflow(fake_airflow, quick_timeouts, monkeypatch):  # noqa: F811
    """The stand-in Airflow behind a proxy whose held answers come 2.5 s late; the CLI talks to the proxy."""

    def start(late: dict[tuple[str, str], int]):
        api = fake_airflow(DAYS)
        proxy = LateProxy(os.environ["AIRFLOW__API__BASE_URL"], seconds=2.5)
        proxy.late = dict(late)
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", proxy.url)
        return api, proxy

    return start


def test_late_answers_are_waited_out_and_the_backfill_is_created_once(late_airflow, capsys):
    api, proxy = late_airflow(
        {
            ("POST", "/auth/token"): 1,
            ("GET", "/api/v2/dags/digits_ingest"): 1,
            ("POST", "/api/v2/backfills"): 1,
            RUNS: 2,
        }
    )
    with proxy:
        code = main(ARGV)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1] == "backfill 1 of digits_ingest: 5 runs succeeded"
    # the unanswered POST had created the backfill: found (GET /backfills), not sent again; the other
    # GET /backfills came first, finding no backfill of the DAG still open
    assert len(api.created) == 1 and proxy.calls.count(("POST", "/api/v2/backfills")) == 1
    assert proxy.calls.count(("GET", "/api/v2/backfills")) == 2
    waits = err.splitlines()  # each wait said: Airflow's address, what it has not answered, where to look
    assert len(waits) == 5 and all(w.startswith(f"Airflow at {proxy.url} has not answered ") for w in waits)
    assert "the pipeline keeps running meanwhile, follow it at" in waits[-1]
    assert waits[-1].endswith(f"follow it at {proxy.url}/dags/digits_ingest")  # the backfill's DAG, once made


def test_an_airflow_that_never_answers_in_time_is_one_line_saying_where_to_follow_the_runs(
    late_airflow, monkeypatch, capsys
):
    monkeypatch.setattr(embedded, "TIMEOUT_TRIES", 3)
    api, proxy = late_airflow({RUNS: 100})
    with proxy:
        code = main(ARGV)
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(api.created) == 1
    asked = "GET /dags/digits_ingest/dagRuns?"
    assert len(err) == 3 and err[0].startswith(f"Airflow at {proxy.url} has not answered {asked}")
    last = err[-1]
    assert last.startswith(f"error: Airflow at {proxy.url} left {asked}"), last
    assert "unanswered (1 s each try), sent 3 times over" in last
    assert f"the pipeline keeps running in Airflow: follow it at {proxy.url}/dags/digits_ingest" in last


@pytest.fixture
def no_train_runs():
    yield
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(DagRun).where(DagRun.dag_id == "digits_train"))
    _forget_backfills("digits_ingest")


def test_a_run_and_a_backfill_whose_answers_came_late_are_made_once_by_the_real_api(
    api_server,  # noqa: F811
    no_train_runs,
    monkeypatch,  # noqa: F811
):
    """Airflow's own API server does the POST; its answer is held past the timeout. The client finds the
    run by the id it chose, and the backfill by its days, instead of making a second of either."""
    monkeypatch.setattr(embedded, "API_TIMEOUT_S", 5.0)  # the real server answers in time on a busy machine
    monkeypatch.setattr(embedded, "TIMEOUT_PAUSE_S", 0.05)
    notices: list[str] = []
    with LateProxy(api_server, seconds=6.0) as proxy:
        proxy.late = {("POST", "/api/v2/dags/digits_train/dagRuns"): 1, ("POST", "/api/v2/backfills"): 1}
        env = {"AIRFLOW__API__BASE_URL": proxy.url, "AIRFLOW_HOME": os.environ["AIRFLOW_HOME"]}
        api = embedded.AirflowAPI(env, notice=notices.append)
        # other tests of this worker's Airflow may have left runs and backfills: only new ones count
        before = {
            r["dag_run_id"] for r in api.call("GET", "/dags/digits_train/dagRuns?limit=100")["dag_runs"]
        }
        backfills_before = {b["id"] for b in api.call("GET", "/backfills?dag_id=digits_ingest")["backfills"]}
        notices.clear()
        run = api.trigger("digits_train", {"end_ds": "2026-11-03"}, note="a late answer")
        runs = api.call("GET", "/dags/digits_train/dagRuns?limit=100")["dag_runs"]
        body = {
            "dag_id": "digits_ingest",
            "from_date": "2026-11-01T00:00:00Z",
            "to_date": "2026-11-03T00:00:00Z",
            "reprocess_behavior": "none",
        }
        backfill = api.create_backfill(body)
        backfills = api.call("GET", "/backfills?dag_id=digits_ingest")["backfills"]
    assert [r["dag_run_id"] for r in runs if r["dag_run_id"] not in before] == [
        run["dag_run_id"]
    ]  # one, the client's
    assert run["dag_run_id"].startswith("manual__")
    assert run["conf"] == {"end_ds": "2026-11-03"} and run["note"] == "a late answer"
    assert [b["id"] for b in backfills if b["id"] not in backfills_before] == [backfill["id"]] and backfill[
        "from_date"
    ].startswith("2026-11-01")
    assert proxy.calls.count(("POST", "/api/v2/dags/digits_train/dagRuns")) == 1
    assert proxy.calls.count(("POST", "/api/v2/backfills")) == 1
    assert len(notices) == 2 and all("has not answered POST " in n for n in notices)
