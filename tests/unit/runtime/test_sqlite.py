"""The embedded Airflow's SQLite metadata database waits for its write lock (freestack.metadb)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from freestack.embedded import BUSY_TIMEOUT_S, SQLITE_CONNECT_ARGS, airflow_env, settings_for


def test_sqlite_gets_the_busy_timeout_and_postgres_is_left_alone():
    assert settings_for(None) == settings_for("sqlite:////tmp/airflow.db") != {}
    assert settings_for("postgresql+psycopg2://airflow:airflow@127.0.0.1/airflow") == {}
    env = airflow_env()
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] == "freestack.embedded.SQLITE_CONNECT_ARGS"


def test_airflow_engine_waits_for_the_lock(tmp_path):
    """Airflow's own engine, configured by airflow_env, sets SQLite's busy timeout to 60 s."""
    env = {**airflow_env(), "AIRFLOW_HOME": str(tmp_path)}
    code = (
        "from sqlalchemy import text\n"
        "from airflow import settings\n"
        "c = settings.engine.raw_connection(); print(type(c.driver_connection).__name__); c.close()\n"
        "with settings.engine.connect() as c: print(c.execute(text('PRAGMA busy_timeout')).scalar())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-2:] == [
        "SavepointSafeConnection",
        str(int(BUSY_TIMEOUT_S * 1000)),
    ]


def _savepoint_then_write(path, connect_args) -> list[int]:
    """A transaction that opens with a savepoint and reads, while another connection commits a row,
    then writes (Airflow's backfill creation does this); returns the table's rows afterwards."""
    engine = create_engine(f"sqlite:///{path}", connect_args=connect_args)
    other = threading.Thread(target=lambda: (time.sleep(0.1), _insert(engine, 2)))
    other.start()
    try:
        with Session(engine) as s:
            with s.begin_nested():
                s.execute(text("SELECT count(*) FROM t")).scalar()
                time.sleep(0.4)  # the other connection commits meanwhile (or waits for this one)
                s.execute(text("INSERT INTO t VALUES (1)"))
            s.commit()
    finally:
        other.join()
    with engine.connect() as c:
        return sorted(r[0] for r in c.execute(text("SELECT x FROM t")))


def _insert(engine, x: int) -> None:
    with engine.begin() as c:
        c.execute(text(f"INSERT INTO t VALUES ({x})"))


def test_a_transaction_opened_by_a_savepoint_waits_for_the_lock_instead_of_failing(tmp_path):
    """SQLite in WAL mode fails a deferred transaction's first write at once when another connection
    committed after its first read, whatever the busy timeout: what made Airflow answer a backfill with
    503 and delete the runs it had written. With the embedded stack's connect args it waits."""
    for name in ("stock.db", "embedded.db"):
        with sqlite3.connect(tmp_path / name) as c:
            c.execute("PRAGMA journal_mode=wal")
            c.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(Exception, match="database is locked"):
        _savepoint_then_write(tmp_path / "stock.db", {"timeout": 5.0})
    assert _savepoint_then_write(tmp_path / "embedded.db", {**SQLITE_CONNECT_ARGS, "timeout": 5.0}) == [1, 2]


def test_now_keeps_fractions_of_a_second_on_sqlite():
    """The scheduler starts a queued run when ``run_after <= now()``: with SQLite's whole-second
    CURRENT_TIMESTAMP, a run triggered at .6 s waited for the next second."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import create_engine, func, literal, select
    from sqlalchemy.dialects import postgresql, sqlite

    from freestack.runtime.sqlite import SQLITE_NOW, fractional_now

    assert fractional_now() and fractional_now()  # idempotent
    assert str(select(func.now()).compile(dialect=sqlite.dialect())) == f"SELECT {SQLITE_NOW} AS now_1"
    assert "now()" in str(select(func.now()).compile(dialect=postgresql.dialect()))
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        raw = conn.exec_driver_sql(f"SELECT {SQLITE_NOW}").scalar()
        assert len(raw) == len("2026-01-01 00:00:00.000") and raw[-4] == "."
        got = conn.execute(select(func.now())).scalar()
        assert got.microsecond % 1000 == 0 and abs(got.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(
            seconds=5
        )
        # a time 50 ms ago, stored as Airflow stores times (microseconds): due now
        past = (datetime.now(UTC) - timedelta(milliseconds=50)).strftime("%Y-%m-%d %H:%M:%S.%f")
        assert conn.execute(select(literal(past) <= func.now())).scalar() == 1
        future = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%d %H:%M:%S.%f")
        assert conn.execute(select(literal(future) <= func.now())).scalar() == 0
