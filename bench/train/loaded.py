"""Training beside other work: the training loop's samples/s with torch's own CPU pool (a thread per core)
against the pool a freestack task sizes (its share of the cores), while other processes load the machine.

    python -m bench.train.loaded [--rows 20000] [--epochs 2] [--batch-size 64] [--repeats 3]
                                 [--load busy|train] [--load-procs 1] [--sized-threads N]
                                 [--modes own_loaded,sized_loaded,own_quiet,sized_quiet]
                                 [--out bench/results/train_loaded.json]

1. The data and the training are ``bench.train.run``'s: its synthetic set (64 float32 features, 10
   classes) and its ``freestack_nockpt`` child (``freestack.ml.loop.fit`` with validation, clipping and
   the schedule, no checkpoints), each run in a fresh process with ``torch.set_num_threads(threads)``.
2. The contenders, alternated within each repeat:
     - ``own_loaded``:   torch's own pool (one thread per usable core) while the load runs;
     - ``sized_loaded``: ``--sized-threads`` while the load runs;
     - ``own_quiet`` / ``sized_quiet``: the same without the load (what the sized pool costs a training
       that has the machine to itself).
3. The load: ``--load-procs`` processes started by the bench before a loaded sample and stopped after it
   (by pid): ``busy`` a Python busy loop each (one core each), ``train`` a second training each, with
   the measured sample's own thread count (two tasks of one worker under the same rule). The sample
   starts once every load process has used a CPU-second.
4. ``--sized-threads`` defaults to what ``FREESTACK_TASK_THREADS``'s default gives a worker whose task
   slots are all busy: the usable cores shared by the measured task and the ``--load-procs`` others
   (``freestack.ml.threads.share``), at least 1.

samples/s = training rows x epochs / wall seconds of ``fit``'s call. The figure is the ratio
``sized_loaded / own_loaded`` (medians, same run); ``sized_quiet / own_quiet`` says what sizing costs
alone. Other work on the machine (besides the bench's own load) is reported per sample as
``others_busy_fraction``.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    add_child_options,
    add_modes,
    busy_cpu_s,
    chosen_modes,
    host,
    parser,
    run_child,
    usable_cores,
    write_report,
)

MODES = ("own_loaded", "sized_loaded", "own_quiet", "sized_quiet")
BUSY_LOOP = "while True:\n    pass\n"


def _cpu_s(pid: int) -> float:
    """CPU seconds a process has used (utime + stime of /proc/<pid>/stat), 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_load(kind: str, procs: int, threads: int, ctx: dict[str, Any]) -> list[subprocess.Popen]:
    """``procs`` load processes, returned once each has used a CPU-second (a training's imports first)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if kind == "busy":
        argv = [sys.executable, "-c", BUSY_LOOP]
    else:  # a training that outlasts the sample: stopped by the bench
        argv = [
            sys.executable,
            "-m",
            "bench.train.run",
            "--child",
            "freestack_nockpt",
            "--data",
            ctx["data"],
            "--scratch",
            ctx["scratch"],
            "--kind",
            "mlp",
            "--epochs",
            "100000",
            "--batch-size",
            str(ctx["batch_size"]),
            "--threads",
            str(threads),
            "--device",
            "cpu",
        ]
    started = [
        subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(procs)
    ]
    deadline = time.monotonic() + 120
    while any(_cpu_s(p.pid) < 1.0 for p in started) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in started):
            stop_load(started)
            raise RuntimeError(f"a {kind} load process ended before the sample")
        time.sleep(0.2)
    return started


def stop_load(started: list[subprocess.Popen]) -> None:
    """Each load process ended by its pid: SIGTERM, then SIGKILL after 5 s."""
    for p in started:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in started:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()


def sample(mode: str, ctx: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """One training in a fresh process, beside the load for a ``*_loaded`` mode."""
    threads = ctx["cores"] if mode.startswith("own") else ctx["sized_threads"]
    argv = [
        "--child",
        "freestack_nockpt",
        "--data",
        ctx["data"],
        "--scratch",
        ctx["scratch"],
        "--kind",
        "mlp",
        "--epochs",
        str(ctx["epochs"]),
        "--batch-size",
        str(ctx["batch_size"]),
        "--threads",
        str(threads),
        "--device",
        "cpu",
    ]
    busy0, children0, t0 = busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    load = start_load(ctx["load"], ctx["load_procs"], threads, ctx) if mode.endswith("loaded") else []
    load0 = sum(_cpu_s(p.pid) for p in load)
    try:
        got = run_child("bench.train.run", argv, timeout=timeout)
        load_s = sum(_cpu_s(p.pid) for p in load) - load0
    finally:
        stop_load(load)
    busy1, children1, elapsed = busy_cpu_s(), _children_cpu_s(), time.perf_counter() - t0
    out = {"threads": threads, **got, "mode": mode}  # the child's threads: torch's pool as it reported it
    if "error" in got:
        return out
    out["load_cpu_s_during_sample"] = load_s
    if busy0 is not None and busy1 is not None:
        # CPU the machine was busy with besides the bench's processes (the sample, its load), as a fraction
        # of the cores over the same time: other people's work on a shared machine
        others = max(0.0, (busy1 - busy0) - (children1 - children0))
        out["others_busy_fraction"] = others / (elapsed * ctx["cores"])
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def summarise(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    per_mode: dict[str, Any] = {}
    for mode, ss in samples.items():
        ok = [s["samples_per_s"] for s in ss if "error" not in s]
        per_mode[mode] = {
            "samples_per_s": round(statistics.median(ok), 1) if ok else None,
            "samples_per_s_min": round(min(ok), 1) if ok else None,
            "samples_per_s_max": round(max(ok), 1) if ok else None,
            "threads": ss[0]["threads"] if ss else None,
            "runs": len(ok),
            "errors": len(ss) - len(ok),
        }

    def ratio(a: str, b: str) -> float | None:
        x, y = per_mode.get(a, {}).get("samples_per_s"), per_mode.get(b, {}).get("samples_per_s")
        return round(x / y, 3) if x and y else None

    return {
        "ratio_loaded": ratio("sized_loaded", "own_loaded"),
        "ratio_quiet": ratio("sized_quiet", "own_quiet"),
        "ratio_of": "samples/s with the sized pool / with torch's own pool (a thread per core), medians",
        "modes": per_mode,
    }


def main(argv: list[str] | None = None) -> int:
    from bench.train.run import write_data

    ap = parser("bench.train.loaded", __doc__, out="train_loaded.json")
    ap.add_argument(
        "--rows", type=int, default=20_000, help="rows generated, 10%% validation (default 20000)"
    )
    ap.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size (default 64, the train: default)")
    ap.add_argument("--repeats", type=int, default=3, help="samples per mode (default 3)")
    ap.add_argument("--load", choices=("busy", "train"), default="busy", help="what loads the machine")
    ap.add_argument("--load-procs", type=int, default=1, help="load processes (default 1)")
    ap.add_argument(
        "--sized-threads",
        type=int,
        default=None,
        help="the sized pool (default: the usable cores shared by 1 + --load-procs tasks)",
    )
    add_modes(ap, MODES)
    add_child_options(ap, experiments=False)
    args = ap.parse_args(argv)
    modes = chosen_modes(ap, args.modes, MODES)
    for name in ("rows", "epochs", "batch_size", "repeats", "load_procs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")

    import torch

    from freestack.ml.threads import share

    cores = usable_cores()
    sized = args.sized_threads or share(cores, 1 + args.load_procs)
    workdir = Path(tempfile.mkdtemp(prefix="freestack-bench-loaded-"))
    try:
        data = write_data(workdir / "data", args.rows)
        ctx = {
            "data": str(workdir / "data"),
            "scratch": str(workdir / "scratch"),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "cores": cores,
            "sized_threads": sized,
            "load": args.load,
            "load_procs": args.load_procs,
        }
        samples: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for r in range(args.repeats):
            for mode in modes:
                s = sample(mode, ctx, args.timeout)
                s["repeat"] = r
                samples[mode].append(s)
                shown = s.get("error") or f"{s['samples_per_s']:,.0f} samples/s on {s['threads']} thread(s)"
                print(f"  repeat {r + 1}/{args.repeats}: {mode}: {shown}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "name": "train_loaded",
        "machine": {**host(), "torch_version": torch.__version__},
        "params": {
            "rows": data["rows"],
            "rows_train": data["rows_train"],
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "load": args.load,
            "load_procs": args.load_procs,
            "own_threads": cores,
            "sized_threads": sized,
            "trainer": "bench.train.run freestack_nockpt (freestack.ml.loop.fit, no checkpoints)",
        },
        "samples": samples,
        "summary": summarise(samples),
    }
    path = write_report(report, args.out)
    sm = report["summary"]
    print(
        f"sized ({sized}) / own ({cores}) threads, samples/s: beside the {args.load} load {sm['ratio_loaded']}, "
        f"quiet {sm['ratio_quiet']}; report {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
