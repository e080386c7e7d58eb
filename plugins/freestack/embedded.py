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
import functools
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from freestack.errors import FreestackError
from freestack.settings import checkout_dir, project_home

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
    """Environment for the embedded Airflow: home, dags and plugins inside the project, 127.0.0.1 on the
    port of :func:`stack_address`, and the runtime wing's speed-ups on (``FREESTACK_SPEEDUPS=0`` in the
    environment keeps them off)."""
    home = checkout_dir()
    airflow_home = Path(os.environ.get("AIRFLOW_HOME") or home / ".airflow")
    port, url = stack_address(airflow_home)
    defaults = {
        "AIRFLOW_HOME": str(airflow_home),
        "FREESTACK_HOME": str(project_home()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": url,
        # the LocalExecutor forks this many workers up front (Airflow's default: 32), each a copy of
        # the scheduler with its preloaded libraries: 4 per core (8 at least, 32 at most) is plenty on
        # one machine, and every idle copy fewer is memory left to the tasks
        "AIRFLOW__CORE__PARALLELISM": str(min(32, max(8, 4 * (os.cpu_count() or 1)))),
        # freestack.runtime: preloading, the scheduler's wake-up, SQLite's fractional now()
        "FREESTACK_SPEEDUPS": "1",
    }
    # W&B (the scheduler starts the tasks' shared wandb-core service) writes inside the project
    wandb_home = project_home() / ".freestack" / "wandb"
    for key, sub in (
        ("WANDB_DIR", ""),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        defaults[key] = str(wandb_home / sub)
    # SQLite metadata (the default): writers wait for the lock instead of failing after 5 s
    defaults.update(settings_for(os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")))
    return {**defaults, **os.environ}


def standalone_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus the PATH shim that keeps every standalone component on 127.0.0.1."""
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


#: the variables that name the API server's address: one set in the environment wins over the stack record
ADDRESS_VARIABLES = ("AIRFLOW_PORT", "AIRFLOW__API__PORT", "AIRFLOW__API__BASE_URL")
DEFAULT_PORT = "8080"


def stack_record(airflow_home: Path) -> Path:
    """Where ``freestack up`` writes down the address its stack listens on (beside its pid file)."""
    return airflow_home / "standalone.json"


def record_stack(env: dict[str, str], pid: int) -> None:
    """Write down that ``airflow standalone`` (``pid``) serves at ``env``'s port and URL: every later
    command of this project (``freestack backfill``, ``make demo``, ``freestack airflow``) talks to it
    there, whichever port it was started on, until it stops."""
    import psutil

    record = {
        "url": env["AIRFLOW__API__BASE_URL"],
        "port": int(env["AIRFLOW__API__PORT"]),
        "pid": pid,
        "started": psutil.Process(pid).create_time(),
    }
    path = stack_record(Path(env["AIRFLOW_HOME"]))
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def recorded_stack(airflow_home: Path) -> dict[str, Any] | None:
    """The running stack's record (``url``, ``port``, ``pid``), or None: none was written, or it is stale
    (its process is gone or its pid now belongs to another process: ``make down`` removes it, a crash or a
    reboot leaves it)."""
    import psutil

    try:
        record = json.loads(stack_record(airflow_home).read_text())
        alive = abs(psutil.Process(int(record["pid"])).create_time() - float(record["started"])) < 0.01
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return record if alive else None


def forget_stack(airflow_home: Path) -> None:
    stack_record(airflow_home).unlink(missing_ok=True)


def stack_address(airflow_home: Path) -> tuple[str, str]:
    """The API server's port and URL: as the environment names them (``AIRFLOW_PORT``, ``AIRFLOW__API__*``),
    else those of the stack running from ``airflow_home`` (its record), else 127.0.0.1:8080."""
    if not any(os.environ.get(k) for k in ADDRESS_VARIABLES):
        record = recorded_stack(airflow_home)
        if record is not None:
            return str(record["port"]), str(record["url"])
    port = os.environ.get("AIRFLOW_PORT") or os.environ.get("AIRFLOW__API__PORT") or DEFAULT_PORT
    return port, os.environ.get("AIRFLOW__API__BASE_URL") or f"http://127.0.0.1:{port}"


def healthy(url: str, timeout: float = 2.0, *, late: bool = False) -> bool:
    """Whether the Airflow API server at ``url`` answers its health check within ``timeout`` seconds (a
    server that is down refuses the connection at once, whatever the timeout); with ``late``, a check
    still unanswered then counts too (a saturated machine answers late, and the calls wait for it)."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=timeout) as r:
            return r.status == 200
    except OSError as exc:
        return late and timed_out(exc)


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


#: seconds Airflow's API server may take to answer a call before the call counts as unanswered
API_TIMEOUT_S = 60.0
#: tries of an unanswered call that is safe to send again, and the pause before the second (then doubling, at
#: most TIMEOUT_PAUSE_MAX_S): on a saturated machine the API server answers late, not never
TIMEOUT_TRIES = 6
TIMEOUT_PAUSE_S = 5.0
TIMEOUT_PAUSE_MAX_S = 60.0
#: methods whose second sending does what the first did
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})


class AirflowTimeout(FreestackError, TimeoutError):
    """Airflow's API server left a call unanswered on every try; the message says where, what was asked,
    and where to follow what Airflow goes on running."""


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is an answer that did not come in time (reading it, or connecting), not a refusal."""
    if isinstance(exc, AirflowTimeout):
        return False
    return isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class AirflowAPI:
    """Airflow's public REST API (``/api/v2``) on the embedded instance, as the admin that ``airflow
    standalone`` creates (its password file under ``AIRFLOW_HOME``), with a JWT from ``/auth/token``:
    what the UI's buttons do, for ``freestack demo`` and the CLI.

    A call left unanswered for :data:`API_TIMEOUT_S` is sent again when that does no harm, after 5, 10,
    20, 40 and 60 s, each wait said through ``notice`` with where to follow the pipeline meanwhile
    (``follow``: the UI, or the DAG or run the caller points it at); :class:`AirflowTimeout` when no try
    was answered. A POST that starts something is sent again only after looking for what the unanswered
    try made (:meth:`trigger`, :meth:`create_backfill`)."""

    def __init__(self, env: dict[str, str], notice: Callable[[str], None] = _to_stderr) -> None:
        self.url = env["AIRFLOW__API__BASE_URL"]
        self.follow = self.url
        self.notice = notice
        self._password_file = standalone_files(env)[2]
        self._token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None, *, safe: bool = False) -> Any:
        """``method /api/v2{path}``: the decoded JSON answer (Airflow's API answers JSON only). Sent again
        while unanswered if ``method`` is idempotent or the POST changes nothing (``safe``: a dry run);
        any other POST is sent once."""
        token = self._token_now()
        send = functools.partial(self._send, method, path, body, token)
        return self.patiently(send, f"{method} {path}", None if method in IDEMPOTENT or safe else 1)

    def trigger(self, dag_id: str, conf: dict[str, Any], note: str | None = None) -> dict[str, Any]:
        """A manual run of ``dag_id`` (the UI's Trigger button) under a run id chosen here: after a try left
        unanswered the run is looked up first, and is the answer if that try made it (one run, never two)."""
        run_id = f"manual__{datetime.now(UTC).isoformat()}"
        path = f"/dags/{quote(dag_id, safe='')}/dagRuns"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf, **({"note": note} if note else {})}

        def made(token: str) -> dict[str, Any] | None:
            try:
                return self._send("GET", f"{path}/{quote(run_id, safe='')}", None, token)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                raise

        return self._post_once(path, body, made)

    def create_backfill(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /backfills``: after a try left unanswered, the DAG's backfill of the same days created
        since the first try, if there is one, is the answer (a second backfill is never created)."""
        since = time.time() - 1.0
        days = (_ts(body["from_date"]), _ts(body["to_date"]))

        def made(token: str) -> dict[str, Any] | None:
            query = urlencode({"dag_id": body["dag_id"], "order_by": "-id", "limit": 10})
            found = self._send("GET", f"/backfills?{query}", None, token).get("backfills", [])
            return next(
                (
                    b
                    for b in found
                    if _ts(b["created_at"]) >= since and (_ts(b["from_date"]), _ts(b["to_date"])) == days
                ),
                None,
            )

        return self._post_once("/backfills", body, made)

    def _post_once(self, path: str, body: dict[str, Any], made: Callable[[str], Any]) -> Any:
        """POST ``body``; before each try after the first, ``made(token)`` looks for what a try made."""
        token, tries = self._token_now(), 0

        def send() -> Any:
            nonlocal tries
            tries += 1
            found = made(token) if tries > 1 else None
            return found if found is not None else self._send("POST", path, body, token)

        return self.patiently(send, f"POST {path}")

    def patiently(self, send: Callable[[], Any], what: str, tries: int | None = None) -> Any:
        """``send()``, tried again while Airflow leaves it unanswered (up to ``tries``, default
        :data:`TIMEOUT_TRIES`); :class:`AirflowTimeout` when no try was answered."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

        t0, most = time.monotonic(), tries or TIMEOUT_TRIES
        retrying = Retrying(
            retry=retry_if_exception(timed_out),
            stop=stop_after_attempt(most),
            reraise=True,
            wait=wait_exponential(multiplier=TIMEOUT_PAUSE_S, max=TIMEOUT_PAUSE_MAX_S),
            before_sleep=lambda state: self.notice(self._slow_line(what, state.next_action.sleep)),
        )
        try:
            return retrying(send)
        except OSError as exc:
            if not timed_out(exc):
                raise
            raise AirflowTimeout(self._timeout_line(what, most, time.monotonic() - t0)) from None

    def _slow_line(self, what: str, pause: float) -> str:
        return (
            f"Airflow at {self.url} has not answered {what} in {API_TIMEOUT_S:g} s (a busy machine "
            f"answers late): asking again in {pause:.0f} s; the pipeline keeps running meanwhile, "
            f"follow it at {self.follow}"
        )

    def _timeout_line(self, what: str, tries: int, seconds: float) -> str:
        sent = "once: it may have been done" if tries == 1 else f"{tries} times over {seconds:.0f} s"
        return (
            f"Airflow at {self.url} left {what} unanswered ({API_TIMEOUT_S:g} s each try), sent {sent}; "
            f"the pipeline keeps running in Airflow: follow it at {self.follow}, and run this command "
            "again once the machine is less busy"
        )

    def _token_now(self) -> str:
        if self._token is None:
            login = {"username": "admin", "password": json.loads(self._password_file.read_text())["admin"]}
            send = functools.partial(self._request, "POST", "/auth/token", login, {})
            answer = self.patiently(send, "POST /auth/token")  # a login changes nothing: sent again
            self._token = answer["access_token"]
        return self._token

    def _send(self, method: str, path: str, body: dict | None, token: str) -> Any:
        return self._request(method, f"/api/v2{path}", body, {"Authorization": f"Bearer {token}"})

    def _request(self, method: str, path: str, body: dict | None, headers: dict[str, str]) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **headers},
        )
        with urllib.request.urlopen(req, timeout=API_TIMEOUT_S) as r:
            return json.loads(r.read().decode())


def _ts(text: str) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


__all__ = [
    "API_TIMEOUT_S",
    "AirflowAPI",
    "AirflowTimeout",
    "BUSY_TIMEOUT_S",
    "DEFAULT_PORT",
    "SQLITE_CONNECT_ARGS",
    "SQLITE_CONNECT_ARGS_ASYNC",
    "airflow_env",
    "ensure_migrated",
    "forget_stack",
    "healthy",
    "record_stack",
    "recorded_stack",
    "settings_for",
    "stack_address",
    "stack_record",
    "standalone_env",
    "standalone_files",
    "start_standalone",
    "timed_out",
    "warm_execution_api",
]
