"""The embedded stack: ``airflow standalone`` with this project's DAGs and plugins, everything inside
the project and on 127.0.0.1 (``freestack up``, ``make demo``, the end-to-end tests and benchmarks).

:func:`airflow_env` is the environment it runs with. It is also where the embedded stack's SQLite
metadata database gets its busy timeout: ``airflow standalone`` keeps its metadata in SQLite (WAL
mode), one writer at a time, and a writer that finds the database locked waits up to the driver's
busy timeout, 5 s by default, then fails with ``database is locked``. Under load (a scheduler, a DAG
processor, an API server answering every task, and CLI commands such as ``airflow backfill create``,
all on two cores) 5 s is not always enough, and Airflow does not always survive the failure:
``backfill create`` deletes the runs it had already committed, and a scheduler that was scheduling one
of them crashed on the vanished row (``ObjectDeletedError``), which left every later run queued. So
``[database] sql_alchemy_connect_args`` (a documented setting) points at :data:`SQLITE_CONNECT_ARGS`
here: a writer waits up to :data:`BUSY_TIMEOUT_S` for the lock, and a transaction that begins with a
savepoint takes the lock first (:class:`SavepointSafeConnection`), so it waits too. Postgres deployments (``docker/``,
Helm) do not use these settings.

Airflow imports this module in every process (through that setting), so it stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

#: seconds a SQLite writer waits for the lock before ``database is locked``
BUSY_TIMEOUT_S = 60.0


class _SavepointCursor(sqlite3.Cursor):
    """A cursor whose ``SAVEPOINT`` outside a transaction first takes the write lock (``BEGIN IMMEDIATE``)."""

    def execute(self, sql, parameters=(), /):  # type: ignore[override]
        if not self.connection.in_transaction and sql.lstrip()[:9].upper() == "SAVEPOINT":
            super().execute("BEGIN IMMEDIATE")
        return super().execute(sql, parameters)


class SavepointSafeConnection(sqlite3.Connection):
    """sqlite3's connection, but a transaction that starts with a savepoint takes the write lock first.

    The driver begins a transaction right before its first write, which then waits for the lock (the
    busy timeout). A ``SAVEPOINT`` (SQLAlchemy's ``begin_nested``, which Airflow's backfill creation
    uses) instead opens a deferred transaction in SQLite itself: its first read pins a snapshot, and
    its first write after another process committed fails at once with ``database is locked`` (WAL's
    stale snapshot), whatever the timeout. Airflow then answers 503 and deletes the runs it had
    written, a reprocessed backfill's existing runs too, under a scheduler still scheduling them."""

    def cursor(self, factory=_SavepointCursor):  # type: ignore[override]
        return super().cursor(factory)


#: ``[database] sql_alchemy_connect_args`` (sqlite3.connect keyword arguments)
SQLITE_CONNECT_ARGS: dict = {"timeout": BUSY_TIMEOUT_S, "factory": SavepointSafeConnection}

#: ``[database] sql_alchemy_connect_args_async`` (aiosqlite passes them to sqlite3.connect)
SQLITE_CONNECT_ARGS_ASYNC: dict = {"timeout": BUSY_TIMEOUT_S, "factory": SavepointSafeConnection}


def settings_for(sql_alchemy_conn: str | None) -> dict[str, str]:
    """The ``AIRFLOW__DATABASE__*`` variables for this metadata connection: the busy timeout for
    SQLite (also when unset: Airflow's default is SQLite), nothing for any other database."""
    if sql_alchemy_conn and not sql_alchemy_conn.startswith("sqlite"):
        return {}
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": f"{__name__}.SQLITE_CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": f"{__name__}.SQLITE_CONNECT_ARGS_ASYNC",
    }


def airflow_env() -> dict[str, str]:
    """Environment for the embedded Airflow: home, dags and plugins inside the project, 127.0.0.1, and
    the runtime wing's speed-ups on (``FREESTACK_SPEEDUPS=0`` in the environment keeps them off)."""
    from freestack.settings import checkout_dir, project_home

    home = checkout_dir()
    port = os.environ.get("AIRFLOW_PORT", "8080")
    defaults = {
        "AIRFLOW_HOME": str(home / ".airflow"),
        "FREESTACK_HOME": str(project_home()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        # the LocalExecutor forks this many workers up front (Airflow's default: 32), each a copy of
        # the scheduler with its preloaded libraries: 4 per core (8 at least, 32 at most) is plenty on
        # one machine, and every idle copy fewer is memory left to the tasks
        "AIRFLOW__CORE__PARALLELISM": str(min(32, max(8, 4 * (os.cpu_count() or 1)))),
        # freestack.runtime: preloading, the scheduler's wake-up, SQLite's fractional now()
        "FREESTACK_SPEEDUPS": "1",
    }
    # W&B (the scheduler starts the tasks' shared wandb-core service) writes inside the project
    wandb_home = project_home() / ".freestack" / "wandb"
    for key, sub in (("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config")):  # fmt: skip
        defaults[key] = str(wandb_home / sub) if sub else str(wandb_home)
    # SQLite metadata (the default): writers wait for the lock instead of failing after 5 s
    defaults.update(settings_for(os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")))
    env = dict(os.environ)
    for k, v in defaults.items():
        env.setdefault(k, v)
    return env


def standalone_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus the PATH shim that keeps every standalone component on 127.0.0.1."""
    from freestack.settings import checkout_dir

    out = dict(env)
    venv_bin = str(Path(sys.executable).parent)
    out["FREESTACK_AIRFLOW_BIN"] = str(Path(venv_bin) / "airflow")
    out["PATH"] = os.pathsep.join([str(checkout_dir() / "include" / "bin"), venv_bin, env.get("PATH", "")])
    return out


def start_standalone(env: dict[str, str], log_file: Path) -> subprocess.Popen:
    """Start ``airflow standalone`` in its own session (so it can be stopped as a group)."""
    env = standalone_env(env)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [env["FREESTACK_AIRFLOW_BIN"], "standalone"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def ensure_migrated(env: dict[str, str]) -> None:
    """Create or upgrade the embedded SQLite metadata database when it has no schema yet (a fresh
    clone, or a file left by a command that ran before ``airflow db migrate``). Other databases are
    the operator's to migrate."""
    import sqlite3

    conn = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if conn and not conn.startswith("sqlite"):
        return
    db = Path(conn.split("///", 1)[1]) if conn else Path(env["AIRFLOW_HOME"]) / "airflow.db"
    if db.exists():
        with contextlib.closing(sqlite3.connect(db)) as con:
            if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
                return
    db.parent.mkdir(parents=True, exist_ok=True)
    env = standalone_env(env)
    subprocess.run(
        [env["FREESTACK_AIRFLOW_BIN"], "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL
    )


def standalone_files(env: dict[str, str]) -> tuple[Path, Path, Path]:
    """``airflow standalone``'s pid file, log and generated admin password file under ``AIRFLOW_HOME``."""
    home = Path(env["AIRFLOW_HOME"])
    return (
        home / "standalone.pid",
        home / "standalone.log",
        home / "simple_auth_manager_passwords.json.generated",
    )


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether the Airflow API server at ``url`` answers its health check within ``timeout`` seconds (a
    server that is down refuses the connection at once, whatever the timeout)."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def warm_execution_api(url: str) -> float:
    """Answer the API server's first Task Execution API request now: the mounted app builds itself on
    its first request (seconds), which would otherwise delay the first task of the first run.
    Returns the seconds it took (0 if the server did not answer; the first task then pays it)."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"{url}/execution/health", timeout=60) as r:
            r.read()
    except OSError:
        return 0.0
    return time.monotonic() - t0


class AirflowAPI:
    """Airflow's public REST API (``/api/v2``) on the embedded instance, as the admin that ``airflow
    standalone`` creates (its password file under ``AIRFLOW_HOME``), with a JWT from ``/auth/token``:
    what the UI's buttons do, for ``freestack demo`` and the CLI."""

    def __init__(self, env: dict[str, str]) -> None:
        self.url = env["AIRFLOW__API__BASE_URL"]
        self._password_file = standalone_files(env)[2]
        self._token: str | None = None

    def _token_now(self) -> str:
        if self._token is None:
            password = json.loads(self._password_file.read_text())["admin"]
            body = json.dumps({"username": "admin", "password": password}).encode()
            req = urllib.request.Request(f"{self.url}/auth/token", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(req, timeout=60) as r:
                self._token = json.loads(r.read())["access_token"]
        return self._token

    def call(self, method: str, path: str, body: dict | None = None, *, text: bool = False):
        """``method /api/v2{path}``: the decoded JSON answer (or the raw text with ``text=True``)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._token_now()}"}
        if text:
            headers["Accept"] = "text/plain"
        req = urllib.request.Request(f"{self.url}/api/v2{path}", data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read().decode()
        return raw if text else json.loads(raw)


__all__ = [
    "AirflowAPI", "BUSY_TIMEOUT_S", "SQLITE_CONNECT_ARGS", "SQLITE_CONNECT_ARGS_ASYNC", "airflow_env", "ensure_migrated", "healthy", "settings_for",
    "standalone_env", "standalone_files", "start_standalone", "warm_execution_api",
]  # fmt: skip
