"""``freestack up`` / ``down`` / ``airflow``: the embedded Airflow (``airflow standalone``) in the background,
and any ``airflow`` command against it. ``down`` stops every process of the stack
(:mod:`freestack.runtime.procs`) and the local model servers, and lists them with how each ended."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from freestack.cli.output import emit, plural, table
from freestack.embedded import (
    airflow_env,
    ensure_migrated,
    forget_stack,
    healthy,
    record_stack,
    recorded_stack,
    standalone_env,
    standalone_files,
    start_standalone,
    warm_execution_api,
)
from freestack.runtime.procs import stop_stack
from freestack.serving.processes import stop_serving

#: how long ``up`` waits for an answer while nothing moves (the log does not grow, the port does not open)
STALL_S = 240.0
#: how long ``up`` waits in all, however the stack progresses
MOST_S = 1800.0
#: ``up``'s exit code when it stopped waiting but the stack still starts (1: it did not start)
STILL_STARTING = 3


class UpError(Exception):
    """The embedded Airflow did not start; the message says why and where its log is."""


class StillStarting(UpError):
    """The embedded Airflow had not answered when ``up`` stopped waiting, but still runs; the message
    names its pid, its log and how to check on it."""


def ensure_up(env: dict[str, str], timeout: float = STALL_S) -> tuple[str, str, bool]:
    """Start ``airflow standalone`` unless it already runs; wait until it answers, for as long as it makes
    progress (``timeout``: the most seconds without any, :data:`MOST_S` in all). Returns its URL, the
    admin password and whether it was started now. The stack's address is recorded
    (:func:`~freestack.embedded.record_stack`): later commands find it there, whatever its port."""
    pid_file, log_file, pw_file = standalone_files(env)
    url = env["AIRFLOW__API__BASE_URL"]
    started = not (pid_file.exists() and _alive(int(pid_file.read_text())))
    if not started:
        _check_address(env, url)
        if not healthy(url):  # started by an earlier `up` that stopped waiting: wait for it here
            _wait_answering(url, _Stack(int(pid_file.read_text()), None), log_file, timeout)
    if started:
        ensure_migrated(env)
        proc = start_standalone(env, log_file)
        pid_file.write_text(str(proc.pid))
        record_stack(env, proc.pid)
        _wait_answering(url, _Stack(proc.pid, proc), log_file, timeout)
        warm_execution_api(url)
    password = "(see the log)"
    for _ in range(30):
        if pw_file.exists():
            password = json.loads(pw_file.read_text()).get("admin", password)
            break
        time.sleep(1)
    return url, password, started


@dataclass
class _Stack:
    """``airflow standalone``: its pid, and its process when this ``up`` started it."""

    pid: int
    proc: subprocess.Popen | None

    def ended(self) -> str | None:
        """How it ended (``exited with <code>``, ``is gone``), None while it runs."""
        if self.proc is not None:
            code = self.proc.poll()
            return None if code is None else f"exited with {code}"
        return None if _alive(self.pid) else "is gone"


@dataclass
class _Progress:
    """The signs that a starting stack moves: its log's size and whether its port listens."""

    url: str
    log_file: Path
    seen: tuple[int, bool] = (-1, False)
    last: float = field(default_factory=time.monotonic)

    def quiet_for(self) -> float:
        """Seconds since the log last grew or the port began (or stopped) listening."""
        now = (self.log_file.stat().st_size if self.log_file.exists() else 0, _listening(self.url))
        if now != self.seen:
            self.seen, self.last = now, time.monotonic()
        return time.monotonic() - self.last


def _wait_answering(url: str, stack: _Stack, log_file: Path, stall: float) -> None:
    """Wait until Airflow answers at ``url``: UpError if it ends first, StillStarting once it has shown no
    progress for ``stall`` seconds or :data:`MOST_S` have passed (it keeps starting in the background)."""
    t0, progress = time.monotonic(), _Progress(url, log_file)
    while not healthy(url):
        ended = stack.ended()
        if ended is not None:
            raise UpError(f"airflow standalone {ended}; see {log_file}")
        quiet, waited = progress.quiet_for(), time.monotonic() - t0
        if quiet > stall or waited > max(MOST_S, stall):
            why = (
                f"nothing moved for {quiet:.0f} s"
                if quiet > stall
                else f"the most `up` waits, {MOST_S:.0f} s"
            )
            raise StillStarting(
                f"airflow standalone (pid {stack.pid}) is still starting: no answer at {url} after "
                f"{waited:.0f} s ({why}; its log {log_file} last grew {quiet:.0f} s ago). It goes on in "
                f"the background: `make up` again waits for it, `tail -f {log_file}` shows it, "
                "`make down` stops it"
            )
        time.sleep(1)


def _listening(url: str) -> bool:
    """Whether something accepts connections at ``url``'s host and port (a server that listens but does
    not answer yet is starting)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1):
            return True
    except OSError:
        return False


def up(timeout: float = STALL_S) -> int:
    """``freestack up``: 0 once Airflow answers, :data:`STILL_STARTING` when it still starts after the
    wait, 1 when it cannot start."""
    env = airflow_env()
    try:
        url, password, started = ensure_up(env, timeout)
    except StillStarting as exc:
        print(f"still starting: {exc}", file=sys.stderr)
        return STILL_STARTING
    except UpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "started" if started else "already running"
    print(f"Airflow UI: {url} ({state})\n  user:     admin\n  password: {password}")
    print("stop it (and every model server it started) with: make down")
    return 0


def _check_address(env: dict[str, str], url: str) -> None:
    """UpError when the running stack listens elsewhere than ``url`` (the environment names another port)."""
    record = recorded_stack(Path(env["AIRFLOW_HOME"]))
    if record is not None and record["url"] != url:
        raise UpError(
            f"this project's Airflow already runs at {record['url']} (pid {record['pid']}), not "
            f"at {url}: leave AIRFLOW_PORT unset to use it there, or stop it with `make down` and "
            "start it on the new port"
        )


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def down(grace: float = 30.0) -> int:
    """Stop what ``up`` and ``demo`` started: every process of the embedded Airflow (also those whose
    parent was killed: orphaned executor workers, unsupervised tasks) and the local model servers.
    SIGTERM first, SIGKILL to what still runs after ``grace`` seconds; prints each process and how it
    ended."""
    from freestack.serving.launch import serving_dir

    if not grace >= 0:
        print(f"error: the grace period must be 0 or more seconds, not {grace}", file=sys.stderr)
        return 2
    env = airflow_env()
    pid_file, _, _ = standalone_files(env)
    leader = _recorded_pid(pid_file)
    stack = stop_stack(env["AIRFLOW_HOME"], leader, grace_seconds=grace)
    pid_file.unlink(missing_ok=True)
    forget_stack(Path(env["AIRFLOW_HOME"]))
    servers = stop_serving(serving_dir(), grace_seconds=grace)
    _report(env["AIRFLOW_HOME"], stack, leader, servers, grace)
    return 0


def _recorded_pid(pid_file) -> int | None:
    """The pid ``up`` recorded for ``airflow standalone``, if the file holds one."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _report(
    home: str, stack: list, leader: int | None, servers: list[tuple[int, str, str]], grace: float
) -> None:
    """A table of every stopped process (pid, how it ended: TERM, KILL after the grace, gone, left; what
    it was), then one line for the stack and one per model server."""
    rows = [(s.pid, s.ended, s.command) for s in stack] + [(pid, ended, what) for pid, what, ended in servers]
    if not rows:
        print("nothing was running")
        return
    t = table("PID", "ENDED", "PROCESS", right=("PID",))
    for pid, ended, what in rows:
        t.add_row(str(pid), ended, what)
    emit(t)
    others = len([s for s in stack if s.pid != leader])
    if any(s.pid == leader for s in stack):
        print(
            f"stopped airflow standalone (pid {leader}: scheduler, dag processor, triggerer, API server) "
            f"and {others} more of its processes"
        )
    elif stack:
        print(
            f"stopped {plural(len(stack), 'process', 'processes')} of the embedded Airflow (AIRFLOW_HOME {home})"
        )
    for pid, what, _ in servers:
        print(f"stopped {what} (pid {pid})")
    killed = [f"{pid} ({what})" for pid, ended, what in rows if ended == "KILL"]
    if killed:
        print(
            f"killed (SIGKILL) {plural(len(killed), 'process', 'processes')} that still ran {grace:g} s after "
            f"SIGTERM: {'; '.join(killed)}"
        )
    left = [f"{pid} ({what})" for pid, ended, what in rows if ended == "left"]
    if left:
        print(
            f"warning: still running after SIGKILL (stuck in the kernel?): {'; '.join(left)}", file=sys.stderr
        )


def airflow(args: list[str]) -> int:
    """Run ``airflow ARGS`` against this project's instance: its AIRFLOW_HOME, DAGs, plugins and
    settings (what ``make up`` and ``make demo`` use), as ``astro dev run`` does for Astro projects."""
    import os

    env = standalone_env(airflow_env())
    ensure_migrated(env)
    exe = env["FREESTACK_AIRFLOW_BIN"]
    os.execve(exe, [exe, *args], env)  # replaces this process: the exit code and signals are airflow's


__all__ = ["UpError", "airflow", "down", "ensure_up", "up"]
