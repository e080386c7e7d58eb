"""Connection settings for the embedded Airflow's SQLite metadata database.

``airflow standalone`` keeps its metadata in SQLite (WAL mode): one writer at a time, and a writer
that finds the database locked waits up to the driver's busy timeout, 5 s by default, then fails with
``database is locked``. Under load (a scheduler, a DAG processor, an API server answering every task,
and CLI commands such as ``airflow backfill create``, all on two cores) 5 s is not always enough, and
Airflow does not always survive the failure: ``backfill create`` deletes the runs it had already
committed, and a scheduler that was scheduling one of them crashed on the vanished row
(``ObjectDeletedError``), which left every later run queued.

``freestack.cli.airflow_env`` points Airflow's ``[database] sql_alchemy_connect_args`` (and the async
twin) here when the metadata database is SQLite: a writer then waits up to :data:`BUSY_TIMEOUT_S`
for the lock. Postgres deployments (``docker/``, Helm) do not use these settings.
"""

from __future__ import annotations

#: seconds a SQLite writer waits for the lock before ``database is locked``
BUSY_TIMEOUT_S = 60.0

#: ``[database] sql_alchemy_connect_args`` (sqlite3.connect keyword arguments)
SQLITE_CONNECT_ARGS: dict = {"timeout": BUSY_TIMEOUT_S}

#: ``[database] sql_alchemy_connect_args_async`` (aiosqlite passes them to sqlite3.connect)
SQLITE_CONNECT_ARGS_ASYNC: dict = {"timeout": BUSY_TIMEOUT_S}


def settings_for(sql_alchemy_conn: str | None) -> dict[str, str]:
    """The ``AIRFLOW__DATABASE__*`` variables for this metadata connection: the busy timeout for
    SQLite (also when unset: Airflow's default is SQLite), nothing for any other database."""
    if sql_alchemy_conn and not sql_alchemy_conn.startswith("sqlite"):
        return {}
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{__name__}.SQLITE_CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": f"{__name__}.SQLITE_CONNECT_ARGS_ASYNC",
    }


#: what ``func.now()`` compiles to on SQLite once :func:`fractional_now` is installed
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
_fractional_now = False


def fractional_now() -> bool:
    """Make ``func.now()`` keep fractions of a second on SQLite, in this process.

    SQLAlchemy compiles ``func.now()`` to ``CURRENT_TIMESTAMP`` on SQLite, which has whole seconds,
    while Airflow stores times with microseconds. The scheduler starts a queued run only when
    ``run_after <= now()``: a run triggered from the UI, REST API or CLI at 12:00:00.6 is therefore
    "not yet due" until 12:00:01, and then waits for the scheduler's next idle loop, up to a second
    more (``bench/orchestration``: 0.7-1.2 s between the trigger and the run's start). Compiled as
    ``strftime('%Y-%m-%d %H:%M:%f', 'now')`` (UTC, milliseconds, the same text form Airflow's times
    compare with), it is due at once. Other databases keep their own ``now()``. Idempotent; True once
    installed."""
    global _fractional_now
    if _fractional_now:
        return True
    from sqlalchemy.ext.compiler import compiles
    from sqlalchemy.sql.functions import now

    @compiles(now, "sqlite")
    def _sqlite_now(element, compiler, **kw):  # noqa: ARG001
        return SQLITE_NOW

    _fractional_now = True
    return True

