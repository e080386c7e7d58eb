"""The local model servers' processes and ports, portably (psutil: Linux, macOS, the BSDs).

A model server runs as ``python -m freestack.serving.server supervise <config>`` in its own session
(it is its process group's leader), so a whole server (supervisor, gunicorn, workers, metrics) is
stopped by signalling that group. A pid in a deployment record is only ever signalled after its
command line has been checked to be one of these supervisors.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from typing import Any

import psutil

#: what every model-server supervisor's command line holds
SUPERVISOR = "freestack.serving.server supervise"


def cmdline(pid: int) -> str:
    """The command line of ``pid`` as one string ('' when it is gone or not ours to read)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except (psutil.Error, ValueError):
        return ""


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


def supervisors(marker: str) -> list[int]:
    """Pids of the live model-server supervisors whose command line contains ``marker`` (a path)."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or ())
        if SUPERVISOR in cmd and marker in cmd:
            out.append(proc.info["pid"])
    return out


def stop_process(pid: int, *, grace_seconds: float = 15.0) -> None:
    """SIGTERM the server's process group (supervisor, gunicorn, workers, metrics), SIGKILL after grace."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # we always start servers as group leaders; anything else is not ours to signal
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        _reap(pid)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


# ------------------------------------------------------------------------------------------------------
# ports


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now, as gunicorn binds it (lingering TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


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
    """A ``port`` for ``deploy.local`` whose four ports are free on ``host``: blue (P), green (P+1)
    and their metrics (P+100, P+101), as the ``serve_port`` setting for tests and benchmarks.

    The block lies below the kernel's ephemeral range: a process that opens thousands of client
    connections may otherwise have one of them take a port that a later deploy wants to bind.
    """
    top = max(ephemeral_port_floor() - 200, 12000)
    for _ in range(200):
        p = random.randint(10000, top)
        if all(_bindable(host, q) for q in (p, p + 1, p + 100, p + 101)):
            return p
    raise RuntimeError(f"no free port block on {host}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


__all__ = [
    "SUPERVISOR", "cmdline", "ephemeral_port_floor", "free_port_block", "is_ours", "port_free", "process_alive",
    "stop_process", "supervisors",
]  # fmt: skip
