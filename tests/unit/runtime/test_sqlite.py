"""The embedded Airflow's SQLite metadata database waits for its write lock (freestack.metadb)."""

from __future__ import annotations

import subprocess
import sys

from freestack.embedded import BUSY_TIMEOUT_S, airflow_env, settings_for


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
        "with settings.engine.connect() as c: print(c.execute(text('PRAGMA busy_timeout')).scalar())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(int(BUSY_TIMEOUT_S * 1000))


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
        assert got.microsecond % 1000 == 0 and abs(got.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(seconds=5)
        # a time 50 ms ago, stored as Airflow stores times (microseconds): due now
        past = (datetime.now(UTC) - timedelta(milliseconds=50)).strftime("%Y-%m-%d %H:%M:%S.%f")
        assert conn.execute(select(literal(past) <= func.now())).scalar() == 1
        future = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%d %H:%M:%S.%f")
        assert conn.execute(select(literal(future) <= func.now())).scalar() == 0
