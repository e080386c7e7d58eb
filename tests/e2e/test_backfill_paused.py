"""``freestack backfill`` on a PAUSED ingest DAG under the real ``airflow standalone`` (issue 23, point 9).

Airflow 3.3 leaves a paused DAG's backfill runs queued, and unpausing a ``catchup: false`` DAG makes
the scheduler start its latest interval. The command unpauses the DAG only for the backfill (after
creating the runs, so the latest interval, which it covers, gets no scheduled run), pauses it again,
prints its plan first, and leaves out the day with no landing files. Slow (it starts Airflow): ``-m slow``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e import test_backfill_standalone as shared
from tests.e2e.test_backfill_standalone import _log_tail, _runs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
standalone = (
    shared.standalone
)  # its `airflow standalone` fixture (module scope: started once for this module)


def _paused(env) -> bool | None:
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db", timeout=30) as c:
        row = c.execute("select is_paused from dag where dag_id='digits_ingest'").fetchone()
    return None if row is None else bool(row[0])


def _freestack(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("freestack")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )


def test_backfill_of_a_paused_dag_runs_the_days_with_data_and_leaves_it_paused(standalone):
    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    env, base = standalone["env"], standalone["base"]
    yesterday = datetime.now(UTC).date() - timedelta(
        days=1
    )  # the latest interval: what unpausing would start
    days = [(yesterday - timedelta(days=k)).isoformat() for k in (3, 2, 1, 0)]
    gap = days[2]  # no landing files: no run may be created for it
    make_landing(env["FREESTACK_STORAGE_ROOT"], yesterday - timedelta(days=3), 2)
    make_landing(env["FREESTACK_STORAGE_ROOT"], yesterday, 1)

    deadline = time.monotonic() + 180  # the DAG processor parses the new DAG (which starts paused)
    while _paused(env) is None:
        assert time.monotonic() < deadline, _log_tail()
        time.sleep(2)
    assert _paused(env) is True

    started = time.monotonic()
    while True:
        got = _freestack(env, "backfill", "digits", "--start", days[0], "--end", days[-1], "--timeout", "420")
        if "has no DAG" not in got.stderr or time.monotonic() - started > 120:  # not serialized yet
            break
        time.sleep(3)
    took = time.monotonic() - started
    assert got.returncode == 0, f"{got.stdout}\n{got.stderr}\n{_log_tail()}"
    out = got.stdout
    # the plan, before anything runs: the DAG, every day, which have data and which are left out
    assert "digits_ingest" in out.splitlines()[0] and "paused" in out.splitlines()[0], out
    for d in (days[0], days[1], days[3]):
        assert any(d in ln and "landing file" in ln for ln in out.splitlines()), out
    assert any(gap in ln and "left out" in ln and "no landing files" in ln for ln in out.splitlines()), out
    assert "paused again" in out, out

    runs = _runs(standalone["api"])
    assert sorted(r["logical_date"][:10] for r in runs) == [days[0], days[1], days[3]], runs
    assert all(r["state"] == "success" and r["run_id"].startswith("backfill__") for r in runs), runs
    assert _paused(env) is True, "the DAG must be paused again, as the backfill found it"
    lake = base / "storage" / "lake" / "digits"
    assert sorted(p.name for p in lake.glob("ds=*")) == [f"ds={d}" for d in (days[0], days[1], days[3])]

    # unpausing now starts nothing: the latest interval has its (backfill) run
    subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "dags", "unpause", "digits_ingest"],
        env=env,
        capture_output=True,
        check=True,
    )
    time.sleep(15)  # several scheduler loops (heartbeat 1 s)
    after = _runs(standalone["api"])
    assert sorted(r["run_id"] for r in after) == sorted(r["run_id"] for r in runs), after
    print(f"backfill of a paused DAG, 3 days in 2 backfills: {took:.0f} s")
