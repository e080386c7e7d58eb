"""The embedded stack's processes: find every process of one ``AIRFLOW_HOME``'s stack, also those whose
parent was killed, and stop them (``freestack down``).

``freestack up`` starts ``airflow standalone`` in its own session and records its pid
(``$AIRFLOW_HOME/standalone.pid``). Everything it starts stays in that session, also what leaves its
process group (Airflow puts each task in a group of its own) or loses its parent (the LocalExecutor
workers of a killed scheduler, the task of a killed supervisor), and also what no longer carries
Airflow's environment. The kernel does not hand out a pid again while it names a live session, so the
session's processes are the stack's even when ``airflow standalone`` itself is gone.

A process belongs to the stack of ``AIRFLOW_HOME`` H when it is one of ours (same user) and

- it is in the session of the recorded ``airflow standalone`` (when that process still runs, it must
  itself carry H, else the pid file is stale and names someone else's process), or
- its environment says ``AIRFLOW_HOME=H`` and holds ``FREESTACK_AIRFLOW_BIN`` (set only for the
  stack's components and ``freestack airflow``); when such a process leads a session, the whole
  session is the stack's (a stack started without a pid file), or
- it descends from one of these.

Never: this process and its ancestors, the session it runs in, and the model servers and address
holders (``freestack.serving.processes``: their own sessions, stopped gracefully by their own path).
The LocalExecutor workers and task processes rename themselves (``setproctitle``), which overwrites
what ``/proc/<pid>/environ`` shows: the session is what finds them.

:func:`stop_stack` sends SIGTERM to all of them at once, SIGKILL to what is left after the grace, and
looks again (a process may have started meanwhile); it returns each process with how it ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from freestack.serving.processes import SUPERVISOR
from freestack_server.core.address import HOLDER

#: set by ``freestack.embedded.standalone_env`` in the environment of the stack's processes
STACK_MARKER = "FREESTACK_AIRFLOW_BIN"

#: how long a process may take to go after SIGKILL before it is reported as left running
KILL_WAIT_S = 5.0


@dataclass(frozen=True)
class Stopped:
    """One stopped process: its pid, its command line and how it ended: ``TERM`` (it exited after
    SIGTERM), ``KILL`` (it was still running after the grace and got SIGKILL), ``gone`` (it exited before
    it was signalled) or ``left`` (it survived SIGKILL: stuck in the kernel)."""

    pid: int
    command: str
    ended: str


def stack_processes(airflow_home: str | os.PathLike, leader: int | None = None) -> list[psutil.Process]:
    """The running processes of the stack of ``airflow_home`` (see the module's docstring); ``leader``:
    the pid ``freestack up`` recorded for ``airflow standalone``, if any."""
    home = os.path.realpath(airflow_home)
    table = _our_processes()
    servers = {pid for pid, (proc, sid) in table.items() if sid == pid and _is_server(proc)}
    env_matched = {pid for pid, (proc, _) in table.items() if _env_home(proc) == home}
    sessions = {pid for pid in env_matched if table[pid][1] == pid}
    if leader and _leads_stack(leader, table, env_matched):
        sessions.add(leader)
    with contextlib.suppress(OSError):
        sessions.discard(os.getsid(0))
    sessions -= servers
    found = {pid for pid, (_, sid) in table.items() if sid in sessions} | env_matched
    found |= _descendants(found, table)
    found = {pid for pid in found if pid not in servers and table[pid][1] not in servers}
    return [table[pid][0] for pid in sorted(found)]


def _our_processes() -> dict[int, tuple[psutil.Process, int | None]]:
    """pid -> (process, session id) of this user's live processes, less this one and its ancestors."""
    me = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        me |= {p.pid for p in psutil.Process().parents()}
    uid = os.getuid()
    table = {}
    for proc in psutil.process_iter(["pid", "ppid", "uids", "status", "cmdline"]):
        info = proc.info
        if proc.pid in me or info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if info.get("uids") is None or info["uids"].real != uid:
            continue
        try:
            sid = os.getsid(proc.pid)
        except OSError:
            continue
        table[proc.pid] = (proc, sid)
    return table


def _leads_stack(leader: int, table: dict, env_matched: set[int]) -> bool:
    """Whether the recorded ``airflow standalone`` pid names this stack's session: it still runs with
    this AIRFLOW_HOME, or it is gone (its pid is not handed out again while its session lives)."""
    if leader in table:
        return leader in env_matched
    try:
        return psutil.Process(leader).status() == psutil.STATUS_ZOMBIE  # exited, not yet collected
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def _is_server(proc: psutil.Process) -> bool:
    cmd = " ".join(proc.info.get("cmdline") or [])
    return SUPERVISOR in cmd or HOLDER in cmd


def _env_home(proc: psutil.Process) -> str | None:
    """The AIRFLOW_HOME in ``proc``'s environment when it is one of the stack's processes, else None."""
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None
    home = env.get("AIRFLOW_HOME")
    return os.path.realpath(home) if home and STACK_MARKER in env else None


def _descendants(roots: set[int], table: dict) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (proc, _) in table.items():
        children.setdefault(proc.info.get("ppid") or 0, []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out and child not in roots:
                out.add(child)
                todo.append(child)
    return out


def stop_stack(
    airflow_home: str | os.PathLike,
    leader: int | None = None,
    *,
    grace_seconds: float = 10.0,
    rounds: int = 3,
) -> list[Stopped]:
    """Stop every process of the stack of ``airflow_home`` (:func:`stack_processes`): SIGTERM to all,
    SIGKILL to what runs after ``grace_seconds``; then look again, up to ``rounds`` times, for what
    started meanwhile. Returns each process stopped, ``leader`` first."""
    done: list[Stopped] = []
    seen: set[tuple[int, float]] = set()
    for _ in range(rounds):
        procs = [p for p in stack_processes(airflow_home, leader) if _key(p) not in seen]
        if not procs:
            break
        seen |= {_key(p) for p in procs}
        done += stop_processes(procs, grace_seconds=grace_seconds)
    return sorted(done, key=lambda s: (s.pid != leader, s.pid))


def _key(proc: psutil.Process) -> tuple[int, float]:
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return proc.pid, 0.0


def stop_processes(procs: Iterable[psutil.Process], *, grace_seconds: float = 10.0) -> list[Stopped]:
    """SIGTERM each of ``procs`` (a pid reused since it was found is left alone), wait up to
    ``grace_seconds`` for them to exit, SIGKILL those still running. Returns how each ended."""
    procs = list(procs)
    commands = {p.pid: command(p) for p in procs}
    ended: dict[int, str] = {}
    signalled = []
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
            signalled.append(proc)
        except psutil.Error:
            ended[proc.pid] = "gone"
    running = _wait(signalled, grace_seconds)
    for proc in running:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    stuck = {p.pid for p in _wait(running, KILL_WAIT_S)}
    for proc in signalled:
        ended[proc.pid] = "left" if proc.pid in stuck else "KILL" if proc in running else "TERM"
    return [Stopped(p.pid, commands[p.pid], ended[p.pid]) for p in procs]


def _wait(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for ``procs`` to exit; returns those still running."""
    deadline = time.monotonic() + timeout
    running = list(procs)
    while running:
        running = [p for p in running if _running(p)]
        if not running or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    return running


def _running(proc: psutil.Process) -> bool:
    """Whether ``proc`` runs: one that exited and waits for its parent to collect it (a zombie) does not."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def command(proc: psutil.Process, width: int = 100) -> str:
    """``proc``'s command line, short: a Python script by its name (``airflow scheduler``), a shell script
    by its shell and name (``bash airflow scheduler``), a renamed process by its title; at most ``width``
    characters."""
    try:
        args = [a for a in proc.cmdline() if a]
    except psutil.Error:
        args = []
    if not args:
        return "?"
    interpreter = os.path.basename(args[0])
    if len(args) > 1 and "/" in args[1] and interpreter.startswith(("python", "bash", "sh")):
        # a shell script keeps its shell: `bash airflow scheduler`, the shim
        script = os.path.basename(args[1])
        args = [script, *args[2:]] if interpreter.startswith("python") else [interpreter, script, *args[2:]]
    text = " ".join(args).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


__all__ = ["STACK_MARKER", "Stopped", "command", "stack_processes", "stop_processes", "stop_stack"]
