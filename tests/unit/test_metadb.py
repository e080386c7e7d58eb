"""The embedded Airflow's SQLite metadata database waits for its write lock (freestack.metadb)."""

from __future__ import annotations

import subprocess
import sys

from freestack.cli import airflow_env
from freestack.metadb import BUSY_TIMEOUT_S, settings_for


def test_sqlite_gets_the_busy_timeout_and_postgres_is_left_alone():
    assert settings_for(None) == settings_for("sqlite:////tmp/airflow.db") != {}
    assert settings_for("postgresql+psycopg2://airflow:airflow@127.0.0.1/airflow") == {}
    env = airflow_env()
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] == "freestack.metadb.SQLITE_CONNECT_ARGS"


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
