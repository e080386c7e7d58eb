"""Sweep benchmark: parallel agents, and hyperband's savings, with the real controller and trainer.

    python -m bench.sweep.run [--days 5] [--trials 16] [--epochs 12] [--hb-trials 16] [--hb-epochs 30]
                              [--out bench/results/sweep.json]

Setup: ``--days`` days of the demo digits (8x8 images, sklearn's copy of UCI) are landed and ingested
into a fresh storage root, exactly as ``make demo`` does; every trial trains the digits CNN with
``freestack.train.core.train`` on that lake window, through ``LocalAgent`` (leases, per-epoch reports
into ``trial.json``, the engine's proposals and stop decisions). W&B is disabled, so its run start-up
is not part of what is measured. Each agent is its own process, started together, like the mapped
tasks of the DAG under the LocalExecutor.

1. **Parallel agents.** The same grid sweep of ``--trials`` trials (so both runs train the identical
   trials; no early termination, so the work is the same) run by 1 agent and by 2 agents, each agent
   a process with cores/2 CPU threads (what the DAG gives each of 2 agents). Speed-up =
   wall(1 agent) / wall(2 agents), timed from the moment every agent has started (imports done) to
   the last agent's loop ending; median of ``--repeats``. Target: >= 1.8 on a 2-core machine. An agent
   loads the window and warms the trainer before it takes a trial (``make_trial_runner``), so that is
   start-up too. Also reported: against 1 agent given all the cores (what the DAG gives a lone agent),
   and the speed-up with every agent's start-up counted (from its launch: interpreter, imports, window).
2. **Hyperband.** A random sweep of ``--hb-trials`` trials over learning rate, batch size and dropout,
   run twice with the same sweep id (so the engine proposes the same trials): without early
   termination, and with ``hyperband {min_iter: 2, eta: 3}``. The trainer's own patience is off in
   both, so every epoch saved is hyperband's. Target: at least 2x fewer trial-epochs, with the best
   validation accuracy within 1% of the full sweep's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
START = date(2026, 11, 1)

GRID = {
    "method": "grid",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "parameters": {
        "learning_rate": {"values": [3e-3, 1e-2]},
        "batch_size": {"values": [32, 64]},
        "weight_decay": {"values": [0.0, 1e-4]},
        "model": {"parameters": {"dropout": {"values": [0.0, 0.2]}}},
    },
}
RANDOM = {
    "method": "random",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "parameters": {
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-2},
        "batch_size": {"values": [32, 64, 128]},
        "model": {"parameters": {"dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5}}},
    },
}
HYPERBAND = {"type": "hyperband", "min_iter": 2, "eta": 3}


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FREESTACK_STORAGE_ROOT": (root / "storage").as_uri(),
            "FREESTACK_HOME": str(root),
            "WANDB_MODE": "disabled",
            "WANDB_DIR": str(root / "wandb"),
            "WANDB_DATA_DIR": str(root / "wandb" / "data"),
            "WANDB_CACHE_DIR": str(root / "wandb" / "cache"),
            "WANDB_CONFIG_DIR": str(root / "wandb" / "config"),
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "include"), env.get("PYTHONPATH", "")]),
        }
    )
    return env


def write_spec(folder: Path, sweep: dict[str, Any], epochs: int, trials: int | None) -> Path:
    data = yaml.safe_load((REPO / "include" / "pipelines" / "digits.yaml").read_text())
    data["train"] = {**(data.get("train") or {}), "epochs": epochs, "patience": 10_000}
    data["sweep"] = {**sweep, **({"run_cap": trials} if trials else {})}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "digits.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------------------
# child processes


def child_setup(args: argparse.Namespace) -> None:
    """Land and ingest the demo days (in the storage root of this process's environment)."""
    from demo.landing import make_landing
    from freestack.ingest.core import ingest_partition
    from freestack.settings import default_storage_root
    from freestack.spec import load_spec

    spec = load_spec(args.spec)
    make_landing(default_storage_root(), START, args.days)
    for k in range(args.days):
        ingest_partition(spec, date.fromordinal(START.toordinal() + k).isoformat())


def child_agent(args: argparse.Namespace) -> None:
    import torch

    from freestack.spec import load_spec
    from freestack.sweeps.core import LocalAgent, load_sweep
    from freestack.sweeps.trials import make_trial_runner
    from freestack.tracking.wandb import WandbSettings

    torch.set_num_threads(args.threads)
    # what the first trial would otherwise import lazily (start-up, not the sweep's work)
    import freestack.ml.loop  # noqa: F401
    import freestack.ml.models  # noqa: F401
    import freestack.storage.datafs  # noqa: F401
    from freestack.sweeps.config import sweeps_engine

    sweeps_engine()
    spec = load_spec(args.spec)
    sweep = load_sweep(spec, args.sweep_id)
    runner = make_trial_runner(spec, sweep, tracking_settings=WandbSettings(mode="disabled"))
    # imports done: say so, and start when every agent is ready (start-up is not the sweep's work)
    print("ready", flush=True)
    while not os.path.exists(args.go):
        time.sleep(0.01)
    t0 = time.time()
    report = LocalAgent(spec, args.sweep_id, runner, agent_id=args.agent_id, ttl=120).run()
    print(json.dumps({**report.as_dict(), "started": t0, "ended": time.time()}), flush=True)


def child_create(args: argparse.Namespace) -> None:
    from freestack.spec import load_spec
    from freestack.sweeps.core import create_sweep

    spec = load_spec(args.spec)
    create_sweep(spec, args.sweep_id, {"end_ds": args.end_ds}, agents=args.agents)


def _child(env, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.sweep.run", *argv],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen) -> str:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{err[-4000:]}")
    return out


# ---------------------------------------------------------------------------------------------------------
# measurements


def create(env: dict[str, str], spec: Path, sweep_id: str, end_ds: str, agents: int) -> None:
    """Write the sweep (as the DAG's create task does) here, in the driver, on the work root of ``env``:
    not timed, and one interpreter with freestack imported instead of one per sweep."""
    os.environ.update({k: env[k] for k in ("FREESTACK_STORAGE_ROOT", "FREESTACK_HOME", "WANDB_MODE")})
    child_create(argparse.Namespace(spec=str(spec), sweep_id=sweep_id, end_ds=end_ds, agents=agents))


def run_sweep(env, spec: Path, sweep_id: str, agents: int, threads: int, end_ds: str) -> dict[str, Any]:
    """Create the sweep, start ``agents`` agent processes together; wall time until the last ends."""
    create(env, spec, sweep_id, end_ds, agents)
    go = Path(env["FREESTACK_HOME"]) / f"go-{sweep_id}"
    go.unlink(missing_ok=True)
    launched = time.time()
    procs = [
        _child(env, "_agent", str(spec), sweep_id, f"agent{i}", str(threads), str(go)) for i in range(agents)
    ]
    for p in procs:  # every agent has imported torch, the trainer and the controller, and read the window
        if not any(line.strip() == "ready" for line in iter(p.stdout.readline, "")):
            p.kill()
            raise RuntimeError(f"agent did not start: {p.communicate()[1][-3000:]}")
    go_at = time.time()
    go.touch()
    reports = [json.loads(_wait(p).strip().splitlines()[-1]) for p in procs]
    # from the first agent's start to the last agent's end (interpreter exit is not the sweep's work)
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    # and from the agents' launch: their start-up (interpreter, imports, the window, warm-up) included
    wall_startup = max(r["ended"] for r in reports) - launched - (min(r["started"] for r in reports) - go_at)
    storage = Path(env["FREESTACK_STORAGE_ROOT"].removeprefix("file://"))
    trials = [
        json.loads(p.read_text())
        for p in sorted((storage / "runs" / "digits" / sweep_id).glob("trials/*/trial.json"))
    ]
    best = max((max((r["val_accuracy"] for r in t["history"]), default=0.0) for t in trials), default=0.0)
    return {
        "agents": agents,
        "threads_per_agent": threads,
        "wall_s": round(wall, 3),
        "wall_with_startup_s": round(wall_startup, 3),
        "trials": len(trials),
        "per_agent_trials": [len(r["trials"]) for r in reports],
        "epochs": sum(len(t["history"]) for t in trials),
        "stopped_early": sum(bool(t.get("stopped")) for t in trials),
        "best_val_accuracy": best,
        "duplicates": len(trials) - len({t["id"] for t in trials}),
        "agent_spans_s": [
            [
                round(r["started"] - min(x["started"] for x in reports), 2),
                round(r["ended"] - min(x["started"] for x in reports), 2),
            ]
            for r in reports
        ],
    }


def machine() -> dict[str, Any]:
    from bench.train.run import machine as describe

    return describe("cpu")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):  # a child process
        kind, rest = argv[0], argv[1:]
        ns = argparse.Namespace()
        if kind == "_setup":
            ns.spec, ns.days = rest[0], int(rest[1])
            child_setup(ns)
        elif kind == "_agent":
            ns.spec, ns.sweep_id, ns.agent_id, ns.threads, ns.go = (
                rest[0],
                rest[1],
                rest[2],
                int(rest[3]),
                rest[4],
            )
            child_agent(ns)
        return 0

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=5)
    ap.add_argument("--trials", type=int, default=16, help="grid trials for the parallel-agents part (<= 16)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--hb-trials", type=int, default=16)
    ap.add_argument("--hb-epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-hyperband", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sweep.json")
    args = ap.parse_args(argv)

    cores = os.cpu_count() or 1
    end_ds = date.fromordinal(START.toordinal() + args.days - 1).isoformat()
    work = Path(tempfile.mkdtemp(prefix="freestack-bench-sweep-"))
    report: dict[str, Any] = {"machine": machine(), "params": vars(args) | {"out": str(args.out)}}
    try:
        env = _env(work)
        grid_spec = write_spec(work / "grid", GRID, args.epochs, args.trials)
        _wait(_child(env, "_setup", str(grid_spec), str(args.days)))

        per = max(1, cores // 2)
        runs: dict[str, list[dict[str, Any]]] = {
            "one_agent_same_threads": [],
            "one_agent_all_cores": [],
            "two_agents": [],
        }
        for r in range(args.repeats):  # interleaved, so drift in the machine's load hits all three
            runs["one_agent_same_threads"].append(run_sweep(env, grid_spec, f"p1s-{r}", 1, per, end_ds))
            runs["one_agent_all_cores"].append(run_sweep(env, grid_spec, f"p1a-{r}", 1, cores, end_ds))
            runs["two_agents"].append(run_sweep(env, grid_spec, f"p2-{r}", 2, per, end_ds))
        med = {k: sorted(x["wall_s"] for x in v)[len(v) // 2] for k, v in runs.items()}
        med_up = {k: sorted(x["wall_with_startup_s"] for x in v)[len(v) // 2] for k, v in runs.items()}
        speedup = med["one_agent_same_threads"] / med["two_agents"]
        vs_all = med["one_agent_all_cores"] / med["two_agents"]
        with_up = med_up["one_agent_same_threads"] / med_up["two_agents"]
        report["parallel"] = {
            "runs": runs,
            "median_wall_s": med,
            "median_wall_with_startup_s": med_up,
            "speedup": round(speedup, 3),
            "speedup_vs_one_agent_all_cores": round(vs_all, 3),
            "speedup_with_startup": round(with_up, 3),
            "target": 1.8,
            "met": speedup >= 1.8,
        }
        print(
            f"parallel agents ({args.trials} grid trials x {args.epochs} epochs, CNN on {args.days} days of digits; "
            f"median of {args.repeats}):"
        )
        print(f"  1 agent  x {per} thread(s): {med['one_agent_same_threads']:7.1f} s")
        print(f"  1 agent  x {cores} thread(s): {med['one_agent_all_cores']:7.1f} s")
        print(
            f"  2 agents x {per} thread(s): {med['two_agents']:7.1f} s  trials per agent "
            f"{runs['two_agents'][0]['per_agent_trials']}"
        )
        print(
            f"  speed-up {speedup:.2f} at the same threads per agent (target >= 1.8); "
            f"{vs_all:.2f} against one agent on all cores; {with_up:.2f} with start-up counted "
            f"({med_up['one_agent_same_threads']:.1f} s vs {med_up['two_agents']:.1f} s)"
        )

        if not args.skip_hyperband:
            full_spec = write_spec(work / "full", RANDOM, args.hb_epochs, args.hb_trials)
            hb_spec = write_spec(
                work / "hb", {**RANDOM, "early_terminate": HYPERBAND}, args.hb_epochs, args.hb_trials
            )
            full = run_sweep(env, full_spec, "hb-same-id", 1, cores, end_ds)
            shutil.rmtree(work / "storage" / "runs" / "digits" / "hb-same-id")  # same id: the same proposals
            hb = run_sweep(env, hb_spec, "hb-same-id", 1, cores, end_ds)
            fewer = full["epochs"] / max(1, hb["epochs"])
            gap = (full["best_val_accuracy"] - hb["best_val_accuracy"]) / full["best_val_accuracy"]
            report["hyperband"] = {
                "without": full,
                "with": hb,
                "epochs_ratio": round(fewer, 3),
                "best_gap": round(gap, 5),
                "target": {"epochs_ratio": 2.0, "best_gap": 0.01},
                "met": fewer >= 2.0 and gap <= 0.01,
                "early_terminate": HYPERBAND,
            }
            print(f"hyperband ({args.hb_trials} random trials, up to {args.hb_epochs} epochs each):")
            print(
                f"  without: {full['epochs']:4d} epochs, best val_accuracy {full['best_val_accuracy']:.4f}, {full['wall_s']:.1f} s"
            )
            print(
                f"  with:    {hb['epochs']:4d} epochs, best val_accuracy {hb['best_val_accuracy']:.4f}, {hb['wall_s']:.1f} s, "
                f"{hb['stopped_early']} trials stopped"
            )
            print(f"  {fewer:.2f}x fewer epochs (target >= 2), best within {100 * gap:.2f}% (target <= 1%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(with_summary(report), indent=2, default=str) + "\n")
    print(f"report: {args.out}")
    return 0


def with_summary(report: dict[str, Any]) -> dict[str, Any]:
    """``name``, ``summary`` and ``ratio`` (two agents' speed-up over one) first, like every benchmark."""
    par, hb = report.get("parallel") or {}, report.get("hyperband") or {}
    summary = {
        "speedup_two_agents": par.get("speedup"),
        "speedup_target": par.get("target"),
        "speedup_met": par.get("met"),
        "speedup_with_startup": par.get("speedup_with_startup"),
        "hyperband_epochs_ratio": hb.get("epochs_ratio"),
        "hyperband_best_gap": hb.get("best_gap"),
        "hyperband_met": hb.get("met"),
    }
    return {"name": "sweep", **report, "summary": summary, "ratio": par.get("speedup")}


if __name__ == "__main__":
    sys.exit(main())
