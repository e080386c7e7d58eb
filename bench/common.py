"""What every benchmark shares: its command line, its child processes, profiling, and what it reports
about the machine and its own memory."""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import runpy
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def peak_rss_mib() -> float:
    """This process's peak resident memory."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / (1 << 20)


def busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has been busy (all cores; /proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


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
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range, as deploys choose theirs
    (``free_port_block``): a port from that range may be taken as a client connection's source port
    before the server started on it binds it (a load generator opens thousands)."""
    from freestack.serving.processes import free_port_block

    return free_port_block()


def write_report(report: dict[str, Any], out: str | Path, *, indent: int = 2) -> Path:
    """Write a benchmark's JSON report to ``out`` (its folder created), as every benchmark does."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=indent) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------
# the harness: command line, child processes, experiments


def parser(
    module: str, doc: str | None, *, out: str | None = None, workdir: bool = False
) -> argparse.ArgumentParser:
    """The command line of ``python -m <module>``, described by its docstring's first paragraph; ``out``
    is the default report's name under bench/results (``--out``); ``workdir`` adds ``--workdir``."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n\n")[0])
    if out is not None:
        ap.add_argument("--out", default=str(RESULTS / out))
    if workdir:
        ap.add_argument(
            "--workdir", default=None, help="scratch folder (default: a new one under $TMPDIR, removed)"
        )
    return ap


def add_cell_options(ap: argparse.ArgumentParser, *, repeats: int, warmup: float, duration: float) -> None:
    """``--repeats``, ``--warmup`` and ``--duration`` of the benchmarks that load a server cell by cell."""
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--warmup", type=float, default=warmup, help="seconds not counted per cell")
    ap.add_argument("--duration", type=float, default=duration, help="seconds measured per cell")


def add_modes(ap: argparse.ArgumentParser, modes: tuple[str, ...]) -> None:
    """``--modes``: which of the benchmark's contenders run (default all)."""
    ap.add_argument("--modes", default=",".join(modes), help="comma-separated subset of " + ",".join(modes))


def chosen_modes(ap: argparse.ArgumentParser, text: str, modes: tuple[str, ...]) -> list[str]:
    """The ``--modes`` asked for, in the order given; an unknown one is a usage error."""
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = set(chosen) - set(modes)
    if unknown:
        ap.error(f"unknown mode(s) {sorted(unknown)}; choose from {','.join(modes)}")
    return chosen


def median(samples: list[dict[str, Any]], key: str, ndigits: int | None = None) -> float | None:
    """The median of ``key`` over the samples that ran (no ``error``) and have it; None if none did."""
    vals = [s[key] for s in samples if "error" not in s and s.get(key) is not None]
    if not vals:
        return None
    return statistics.median(vals) if ndigits is None else round(statistics.median(vals), ndigits)


def add_child_options(ap: argparse.ArgumentParser, *, experiments: bool = True) -> None:
    """``--timeout`` per child run and the hidden ``--child`` a driver starts its children with; with
    ``experiments``, ``--profile`` and ``--patch`` for the runs of freestack (baselines run as they are)."""
    ap.add_argument("--timeout", type=float, default=None, help="seconds per child run")
    if experiments:
        ap.add_argument("--profile", action="store_true", help="cProfile the freestack runs (to stderr)")
        ap.add_argument(
            "--patch",
            default=None,
            help="a Python file whose install() is called in each freestack child before timing "
            "(to measure a proposed change by monkeypatching)",
        )
    ap.add_argument("--child", help=argparse.SUPPRESS)


def experiment_flags(profile: bool, patch: str | None) -> list[str]:
    """The ``--profile`` and ``--patch`` a driver got, to pass on to a child that runs freestack."""
    return (["--profile"] if profile else []) + (["--patch", str(Path(patch).resolve())] if patch else [])


def install_patch(patch: str | None) -> None:
    """Call ``install()`` of the ``--patch`` file: it monkeypatches freestack before the clock starts."""
    if patch:
        runpy.run_path(patch)["install"]()


@contextmanager
def profiled(enabled: bool, label: str, *, dump: Path | None = None) -> Iterator[None]:
    """cProfile the block when ``enabled``: the top functions by cumulative and by own time go to stderr
    (the driver echoes a profiled child's stderr); with ``dump``, the raw stats go to that file too."""
    if not enabled:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        if dump is not None:
            prof.dump_stats(str(dump))
        sys.stderr.write(f"--- cProfile of {label} ---\n")
        stats = pstats.Stats(prof, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(30)


def alternating(
    module: str, argv: list[str], repeats: int, sides: tuple[str, str] = ("freestack", "trl"), **kw: Any
) -> dict[str, list[dict[str, Any]]]:
    """``repeats`` rounds of ``module``'s two sides, each a :func:`run_child` with ``--child <side>``, the
    order swapped every round (what runs first on a warm machine alternates); each sample echoed to
    stderr. Returns the samples by side."""
    samples: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for i in range(repeats):
        for side in sides if i % 2 == 0 else sides[::-1]:
            out = run_child(module, [*argv, "--child", side], **kw)
            print(side, json.dumps(out), file=sys.stderr)
            samples[side].append(out)
    return samples


def run_child(
    module: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    echo_stderr: bool = False,
) -> dict[str, Any]:
    """Run ``python -m <module> <argv>`` in a fresh interpreter, so each sample pays its own imports and
    has its own memory peak, as a task process does; return the last JSON object it printed, with
    ``process_s`` (the whole process) and ``loadavg_1m_before`` (other work on the machine skews wall
    times). A run that fails returns ``error`` and the tail of its stderr instead."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, *argv],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    elapsed = time.perf_counter() - started
    if echo_stderr and proc.stderr:
        sys.stderr.write(proc.stderr)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit {proc.returncode}"
        return {"error": reason, "stderr_tail": proc.stderr[-2000:], "process_s": round(elapsed, 3)}
    return {**json.loads(lines[-1]), "process_s": elapsed, "loadavg_1m_before": load}
