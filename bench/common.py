"""What every benchmark reports about the machine and its own memory."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import sys
from pathlib import Path
from typing import Any


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def peak_rss_mib() -> float:
    """This process's peak resident memory."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1 << 20)


def host() -> dict[str, Any]:
    """CPU model, usable cores, memory, Python and platform; each benchmark adds its libraries."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except ImportError:
        try:
            mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            pass
    return {
        "cpu_model": cpu,
        "cores": usable_cores(),
        "memory_gib": round(mem / (1 << 30), 1) if mem else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_report(report: dict[str, Any], out: str | Path, *, indent: int = 2) -> Path:
    """Write a benchmark's JSON report to ``out`` (its folder created), as every benchmark does."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=indent) + "\n")
    return path
