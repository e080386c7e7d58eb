"""The local model servers' processes and ports, portably (psutil: Linux, macOS, the BSDs).

A model server runs as ``python -m freestack_server --env-file <file>`` in its own session
(it is its process group's leader). It is stopped by SIGTERM to the supervisor alone, which stops
gunicorn gracefully (workers finish their requests while Seldon's metrics process, in the same group,
still answers them); whatever of the group is left after the grace is signalled as a group. A
deployment's address holder (``python -m freestack_server hold HOME HOST PORT``) runs in its
own session too. A pid in a deployment record is only ever signalled after its command line has been
checked to be one of these processes.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import psutil

from freestack_server.core.address import HOLDER
from freestack_server.core.config import read_env_file

#: what every model-server supervisor's command line holds
SUPERVISOR = "freestack_server --env-file"


def cmdline(pid: int) -> str:
    """The command line of ``pid`` as one string ('' when it is gone or not ours to read)."""
    return " ".join(_args(pid))


def is_ours(pid: int | None, config_path: str | None = None) -> bool:
    """True when ``pid`` is a live freestack model-server supervisor (for ``config_path``, if given)."""
    if not pid:
        return False
    cmd = cmdline(int(pid))
    return SUPERVISOR in cmd and (config_path is None or config_path in cmd)


def process_alive(record: dict[str, Any] | None) -> bool:
    """Whether a deployment record's server runs here, now."""
    if not record or record.get("state") != "serving" or record.get("target", "local") != "local":
        return False
    if record.get("hostname") != socket.gethostname():
        return False
    return is_ours(record.get("pid"), record.get("config"))


def is_holder(pid: int | None, home: str | None = None) -> bool:
    """True when ``pid`` is a live address holder (for the deployment folder ``home``, if given)."""
    holder = _holder_of(_args(int(pid))) if pid else None
    return holder is not None and (home is None or holder[0] == str(home))


def _args(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except (psutil.Error, ValueError):
        return []


def _holder_of(args: list[str]) -> tuple[str, str, int] | None:
    """(home, host, port) of a holder's command line, else None."""
    cmd = " ".join(args)
    if HOLDER not in cmd or len(args) < 3 or not args[-1].isdigit():
        return None
    return args[-3], args[-2], int(args[-1])


def supervisors(marker: str) -> list[int]:
    """Pids of the live model-server supervisors whose command line contains ``marker`` (a path)."""
    return [pid for pid, args in _ours(marker) if SUPERVISOR in " ".join(args)]


def holders(marker: str) -> list[tuple[int, str, str, int]]:
    """(pid, home, host, port) of the live address holders whose deployment folder contains ``marker``."""
    found = [(pid, _holder_of(args)) for pid, args in _ours(marker)]
    return [(pid, *h) for pid, h in found if h is not None]


def _ours(marker: str) -> list[tuple[int, list[str]]]:
    """(pid, command line) of the supervisors and holders whose command line contains ``marker``."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        args = proc.info.get("cmdline") or []
        cmd = " ".join(args)
        if (SUPERVISOR in cmd or HOLDER in cmd) and marker in cmd:
            out.append((proc.info["pid"], list(args)))
    return out


def serving_processes(serving_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """Every model-server supervisor and address holder started under ``serving_dir``: (pid, what it is),
    e.g. ``model server digits v3 (blue supervisor) on 127.0.0.1:9001, behind 127.0.0.1:9000``."""
    return [(pid, _describe(args)) for pid, args in _ours(str(serving_dir).rstrip("/") + "/")]


def _describe(args: list[str]) -> str:
    holder = _holder_of(args)
    if holder is not None:
        home, host, port = holder
        return f"address holder for {os.path.basename(home)} on {host}:{port}"
    env_file = args[args.index("--env-file") + 1] if "--env-file" in args[:-1] else ""
    try:
        cfg = read_env_file(env_file)
    except (OSError, ValueError):
        return f"model server (supervisor) with env file {env_file or '?'}"
    behind = f", behind {cfg.host}:{cfg.address.port}" if cfg.address else ""
    version = cfg.version
    try:  # another adapter of the same base promoted on this server (freestack.serving.in_place)
        serves = cfg.serves_file.read_text().strip() if cfg.serves_file else version
    except OSError:
        serves = version
    if serves != version:
        version = f"{serves} (started with {cfg.version})"
    return f"model server {cfg.model} {version} ({cfg.predictor} supervisor) on {cfg.host}:{cfg.port}{behind}"


def stop_serving_processes(serving_dir: str | os.PathLike, *, grace_seconds: float = 15.0) -> list[str]:
    """Stop every model server and address holder started under ``serving_dir`` (servers first, all at
    once and gracefully; then the holders). Returns what was stopped, one line each."""
    return [f"{what} (pid {pid})" for pid, what, _ in stop_serving(serving_dir, grace_seconds=grace_seconds)]


def stop_serving(
    serving_dir: str | os.PathLike, *, grace_seconds: float = 15.0
) -> list[tuple[int, str, str]]:
    """:func:`stop_serving_processes`, with how each ended: (pid, what it was, ``TERM`` or ``KILL``).
    ``KILL``: something of its process group still ran after the grace and was killed."""
    found = serving_processes(serving_dir)
    servers = [(pid, what) for pid, what in found if not what.startswith("address holder")]
    ended = stop_servers([pid for pid, _ in servers], grace_seconds=grace_seconds)
    stopped = [(pid, what, ended.get(pid, "TERM")) for pid, what in servers]
    for pid, what in found:
        if (pid, what) not in servers and is_holder(pid):
            stopped.append((pid, what, stop_holder(pid, grace_seconds=min(grace_seconds, 5.0))))
    return stopped


def stop_holder(pid: int, *, grace_seconds: float = 5.0) -> str:
    """Stop an address holder (checked to be one): it closes its copy of the deployment's socket.
    Returns how it ended (``TERM``, ``KILL``; ``gone`` when it was not running)."""
    return stop_process(pid, grace_seconds=grace_seconds) if is_holder(pid) else "gone"


def stop_server(pid: int, *, grace_seconds: float = 15.0) -> None:
    """Stop one model server gracefully (see :func:`stop_servers`)."""
    stop_servers([pid], grace_seconds=grace_seconds)


def stop_servers(pids: list[int], *, grace_seconds: float = 15.0) -> dict[int, str]:
    """SIGTERM each model server's supervisor (only those whose command line says so), which stops its
    gunicorn gracefully; what is left of their process groups after ``grace_seconds`` is stopped as a
    group (SIGTERM, then SIGKILL after 2 s). Returns how each supervisor's group ended: ``TERM`` (by
    the first SIGTERM, or the group's) or ``KILL``."""
    leaders = [pid for pid in pids if SUPERVISOR in cmdline(pid) and _leader(pid)]
    for pid in leaders:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(_running(pid) for pid in leaders):
        time.sleep(0.05)
    # what is left of each group (its leader was checked above)
    return {pid: "KILL" if _stop_group(pid, grace_seconds=2.0) == "KILL" else "TERM" for pid in leaders}


def _leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (reaped here if it is our child and has exited)."""
    _reap(pid)
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop_process(pid: int, *, grace_seconds: float = 15.0) -> str:
    """SIGTERM the server's process group (supervisor, gunicorn, workers, metrics), SIGKILL after grace.
    Returns how it ended: ``TERM``, ``KILL``, or ``gone`` when it was not running."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return "gone"
    if pgid != pid:  # we always start servers as group leaders; anything else is not ours to signal
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return "gone"
        return "TERM"
    return _stop_group(pgid, grace_seconds=grace_seconds)


def _stop_group(pgid: int, *, grace_seconds: float) -> str:
    """SIGTERM process group ``pgid`` (its leader's pid), SIGKILL what is left after the grace: ``TERM``
    when the group was gone within the grace, ``KILL`` when it had to be killed, ``gone`` when there
    was no group to signal."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        _reap(pgid)
        return "gone"
    ended = "KILL"
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        _reap(pgid)
        if not _group_running(pgid):
            ended = "TERM"
            break
        time.sleep(0.1)
    if ended == "KILL":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    _reap(pgid)
    return ended


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs: exited ones whose parent has not collected them
    yet (zombies) do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
    return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# ------------------------------------------------------------------------------------------------------
# ports


def port_free(host: str, port: int, *, wait: float = 0.0) -> bool:
    """Whether ``host:port`` can be bound, as gunicorn binds it (lingering TIME_WAIT does not count);
    ``wait``: seconds to keep trying (processes that were just killed release their sockets)."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
        time.sleep(0.05)


def port_listener(host: str, port: int) -> int | None:
    """The pid of the process listening on ``host:port``, or None when none does or it cannot be seen
    (another user's process, or macOS without privileges)."""
    try:
        conns = psutil.net_connections("tcp")
    except (psutil.Error, OSError):
        return None
    listening = [c for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port]
    return next((c.pid or None for c in listening if c.laddr.ip in (host, "0.0.0.0", "::")), None)


def port_owner(host: str, port: int) -> str:
    """Who listens on ``host:port``, as ' (pid N: command)', or '' when that cannot be seen (another
    user's process, or macOS without privileges)."""
    pid = port_listener(host, port)
    return f" (pid {pid}: {cmdline(pid)[:120] or '?'})" if pid else ""


def ephemeral_port_floor() -> int:
    """The lowest port the kernel hands to client sockets: Linux's ``ip_local_port_range``, macOS's
    ``net.inet.ip.portrange.first``, else IANA's 49152. Servers that must be able to bind a chosen port
    later pick it below this."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        out = subprocess.run(
            ["sysctl", "-n", "net.inet.ip.portrange.first"], capture_output=True, text=True, timeout=5
        )
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return 49152


def free_port_block(host: str = "127.0.0.1") -> int:
    """A ``port`` for ``deploy.local`` whose three ports are free on ``host``: the deployment's address
    (P) and the blue and green servers' own ports (P+1, P+2), as the ``serve_port`` setting for tests
    and benchmarks. (The metrics ports are chosen free at deploy time unless set: :func:`free_port`.)

    The block lies below the kernel's ephemeral range: a process that opens thousands of client
    connections may otherwise have one of them take a port that a later deploy wants to bind.
    """
    top = max(ephemeral_port_floor() - 200, 12000)
    for _ in range(200):
        p = random.randint(10000, top)
        if all(_bindable(host, q) for q in (p, p + 1, p + 2)):
            return p
    raise RuntimeError(f"no free port block on {host}")


def free_port(host: str = "127.0.0.1", *, exclude: Iterable[int] = ()) -> int:
    """A port the kernel hands out free on ``host`` now (from its ephemeral range), not in ``exclude``: for
    the metrics servers. Serving ports (``free_port_block``, ``deploy.local.port``) lie below that range,
    so a metrics port never lands on another deployment's address or on its idle colour's port, which is
    free between deploys."""
    skip = set(exclude)
    floor = ephemeral_port_floor()
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            p = s.getsockname()[1]
        if p not in skip and p >= floor:
            return p
    raise RuntimeError(f"no free port on {host} in the kernel's ephemeral range (from {floor})")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


__all__ = [
    "SUPERVISOR",
    "cmdline",
    "ephemeral_port_floor",
    "free_port",
    "free_port_block",
    "holders",
    "is_holder",
    "is_ours",
    "port_free",
    "port_listener",
    "port_owner",
    "process_alive",
    "serving_processes",
    "stop_holder",
    "stop_process",
    "stop_server",
    "stop_servers",
    "stop_serving",
    "stop_serving_processes",
    "supervisors",
]
