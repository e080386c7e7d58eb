"""Sweeps on two objectives: freestack's ``bayes`` (W&B's engine, one metric) against Optuna's ``tpe`` and
``nsga2`` at equal trial-epochs, on two tasks of different kinds, with the real controller and trainer.

    python -m bench.sweep.objectives [--trials 12] [--epochs 6] [--repeats 2] [--out bench/results/sweep_objectives.json]

Tasks, each landed and ingested into a fresh storage root as a pipeline's ingest does:

- ``digits``: the demo's digits (8x8 images, scikit-learn's copy of UCI), 5 days; the digits CNN over
  learning rate, dropout and its channels;
- ``reviews``: short product reviews, text (a word-piece tokenizer trained on the split, token embeddings,
  a convolution), 5 days of 300 rows whose label follows the sentiment of their words (10% flipped);
  its MLP head over learning rate, dropout and hidden sizes. The reviews are generated here from word
  lists: no text dataset ships with the packages this machine can install.

Both objectives are the trainer's own: ``val_accuracy`` (maximize; the kept epoch's) and the model's
``trainable_params`` (minimize). Every sweep runs ``--trials`` trials of ``--epochs`` epochs (patience off,
no early termination), so each method spends the same trial-epochs. ``bayes`` optimises accuracy alone
(it takes one metric); its front is read from its trials afterwards, as the others'. Per sweep: the best
accuracy reached, the Pareto front, and its hypervolume against the reference point (accuracy 0,
1.1 x the largest parameter count any sweep of the task drew), parameters scaled by that reference so the
hypervolume is a fraction (1 would be accuracy 1 with no parameters). ``--repeats`` sweeps per method,
each its own sweep id (so its own seeds); the summary is the median.
"""

from __future__ import annotations

import csv
import io
import os
import random
import statistics
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from bench.common import parser, write_report

REPO = Path(__file__).resolve().parents[2]
START = date(2026, 11, 1)
DAYS = 5
METHODS = ("bayes", "tpe", "nsga2")
OBJECTIVES = [{"name": "val_accuracy", "goal": "maximize"}, {"name": "trainable_params", "goal": "minimize"}]
LR = {"distribution": "log_uniform_values", "min": 3e-4, "max": 3e-2}
DROPOUT = {"distribution": "uniform", "min": 0.0, "max": 0.4}
PARAMETERS = {
    "digits": {
        "learning_rate": LR,
        "model": {
            "parameters": {"dropout": DROPOUT, "channels": {"values": [[4, 8], [8, 16], [16, 32], [32, 64]]}}
        },
    },
    "reviews": {
        "learning_rate": LR,
        "model": {"parameters": {"dropout": DROPOUT, "hidden": {"values": [[8], [32], [128], [256, 64]]}}},
    },
}
GOOD = "great excellent love perfect sturdy comfortable fast beautiful reliable recommend".split()
BAD = "broken poor hate awful flimsy slow ugly cheap returned disappointing".split()
PLAIN = "the a it this item product was is very quite and but for my with arrived box colour size".split()


def review_spec() -> dict[str, Any]:
    return {
        "name": "reviews_bench",
        "description": "Is a short product review positive? Text only.",
        "schedule": None,
        "start_date": START.isoformat(),
        "source": {
            "landing": "landing/{pipeline}/{ds}/",
            "format": "csv",
            "schema": {
                "key": "id",
                "target": "label",
                "columns": [
                    {"name": "id", "type": "string", "nullable": False},
                    {"name": "review", "type": "text", "nullable": False},
                    {"name": "label", "type": "string", "nullable": False, "allowed": ["neg", "pos"]},
                ],
            },
        },
        "model": {"hidden": [32], "text": {"vocab_size": 300, "max_length": 16}},
        "train": {"epochs": 6, "window_days": 30, "learning_rate": 0.003, "batch_size": 32},
    }


def review_rows(day: int, n: int = 300) -> bytes:
    """One day's reviews: 6-12 words, positive or negative ones among plain ones, the label their balance
    (ties at random), one in ten flipped."""
    rng = random.Random(day)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "review", "label"])
    for k in range(n):
        good, bad = rng.randint(0, 3), rng.randint(0, 3)
        words = (
            rng.sample(GOOD, good)
            + rng.sample(BAD, bad)
            + rng.choices(PLAIN, k=rng.randint(6, 12) - good - bad)
        )
        rng.shuffle(words)
        label = "pos" if good > bad or (good == bad and rng.random() < 0.5) else "neg"
        if rng.random() < 0.1:
            label = "neg" if label == "pos" else "pos"
        writer.writerow([f"d{day}-{k}", " ".join(words), label])
    return out.getvalue().encode()


def land(task: str, spec_path: Path) -> str:
    """Land and ingest the task's days; the window's last day."""
    from freestack.ingest.core import ingest_partition
    from freestack.settings import default_storage_root
    from freestack.spec import load_spec
    from freestack.storage import join, to_path, write_bytes

    spec = load_spec(spec_path)
    root = default_storage_root()
    if task == "digits":
        if (
            str(REPO / "include") not in sys.path
        ):  # the demo's landing data (include/demo), as make demo lands it
            sys.path.insert(0, str(REPO / "include"))
        from demo.landing import make_landing

        make_landing(root, START, DAYS)
    for k in range(DAYS):
        ds = (START + timedelta(days=k)).isoformat()
        if task == "reviews":
            write_bytes(join(to_path(root), "landing", spec.name, ds, "reviews.csv"), review_rows(k))
        ingest_partition(spec, ds)
    return (START + timedelta(days=DAYS - 1)).isoformat()


def write_spec(folder: Path, task: str, method: str, trials: int, epochs: int) -> Path:
    if task == "digits":
        data = yaml.safe_load((REPO / "include" / "pipelines" / "digits.yaml").read_text())
    else:
        data = review_spec()
    data["train"] = {**(data.get("train") or {}), "epochs": epochs, "patience": 10_000}
    sweep: dict[str, Any] = {"method": method, "run_cap": trials, "parameters": PARAMETERS[task]}
    if method == "bayes":
        sweep["metric"] = OBJECTIVES[0]
    else:
        sweep["metrics"] = OBJECTIVES
    data["sweep"] = sweep
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_sweep(spec_path: Path, sweep_id: str, end_ds: str) -> list[dict[str, Any]]:
    """One sweep, one agent in this process: its trials' (val_accuracy, trainable_params), finished ones."""
    from freestack.spec import load_spec
    from freestack.sweeps.core import LocalAgent, create_sweep, load_trials
    from freestack.sweeps.trials import make_trial_runner
    from freestack.sweeps.values import objective_value
    from freestack.tracking.wandb import WandbSettings

    spec = load_spec(spec_path)
    sweep = create_sweep(spec, sweep_id, {"end_ds": end_ds}, agents=1)
    runner = make_trial_runner(spec, sweep, tracking_settings=WandbSettings(mode="disabled"))
    LocalAgent(spec, sweep_id, runner, ttl=120).run()
    out = []
    for doc, _ in load_trials(spec, sweep_id):
        acc = objective_value(doc, "val_accuracy", "maximize")
        size = objective_value(doc, "trainable_params", "minimize")
        if doc["state"] == "finished" and acc is not None and size is not None:
            out.append(
                {
                    "trial": doc["id"],
                    "val_accuracy": acc,
                    "trainable_params": size,
                    "epochs": len(doc["history"]),
                }
            )
    return out


def front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both objectives (higher accuracy, fewer parameters)."""
    return sorted(
        (
            p
            for p in points
            if not any(
                q["val_accuracy"] >= p["val_accuracy"]
                and q["trainable_params"] <= p["trainable_params"]
                and (q["val_accuracy"], q["trainable_params"]) != (p["val_accuracy"], p["trainable_params"])
                for q in points
            )
        ),
        key=lambda p: p["trainable_params"],
    )


def hypervolume(on_front: list[dict[str, Any]], max_params: float) -> float:
    """The area the front dominates up to the reference point (accuracy 0, ``max_params``), parameters
    scaled by ``max_params``. Two objectives: a sum of rectangles over the front sorted by size. Written
    here: Optuna computes it only in a private module (``optuna._hypervolume``)."""
    area, best = 0.0, 0.0
    for k, p in enumerate(sorted(on_front, key=lambda p: p["trainable_params"])):
        best = max(best, p["val_accuracy"])
        nxt = on_front[k + 1]["trainable_params"] if k + 1 < len(on_front) else max_params
        area += best * (nxt - p["trainable_params"]) / max_params
    return round(area, 4)


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.sweep.objectives", __doc__, out="sweep_objectives.json")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tasks", default="digits,reviews")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="freestack-bench-mo-"))
    os.environ.update(
        {
            "FREESTACK_STORAGE_ROOT": (work / "storage").as_uri(),
            "FREESTACK_HOME": str(work),
            "WANDB_MODE": "disabled",
            "WANDB_DIR": str(work / "wandb"),
        }
    )
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    tasks: dict[str, Any] = {}
    for task in args.tasks.split(","):
        end_ds = land(task, write_spec(work / "specs" / task, task, "bayes", args.trials, args.epochs))
        sweeps = {
            m: [
                run_sweep(
                    write_spec(work / "specs" / task, task, m, args.trials, args.epochs),
                    f"sweep-{task}-{m}-{r}",
                    end_ds,
                )
                for r in range(args.repeats)
            ]
            for m in METHODS
        }
        top = 1.1 * max(p["trainable_params"] for runs in sweeps.values() for pts in runs for p in pts)
        tasks[task] = {"reference": {"val_accuracy": 0.0, "trainable_params": top}, "methods": {}}
        for m, runs in sweeps.items():
            each = [
                {
                    "best_val_accuracy": max(p["val_accuracy"] for p in pts),
                    "front": front(pts),
                    "trial_epochs": sum(p["epochs"] for p in pts),
                }
                for pts in runs
            ]
            for e in each:
                e["hypervolume"] = hypervolume(e["front"], top)
            tasks[task]["methods"][m] = {
                "runs": each,
                "points": runs,
                "best_val_accuracy": round(statistics.median(e["best_val_accuracy"] for e in each), 4),
                "hypervolume": round(statistics.median(e["hypervolume"] for e in each), 4),
                "trial_epochs": statistics.median(e["trial_epochs"] for e in each),
            }
            print(
                f"{task:<8} {m:<6} best val_accuracy {tasks[task]['methods'][m]['best_val_accuracy']:.4f}  hypervolume {tasks[task]['methods'][m]['hypervolume']:.4f}  trial-epochs {tasks[task]['methods'][m]['trial_epochs']}",
                flush=True,
            )
    from bench.sweep.run import machine

    report = {
        "name": "sweep_objectives",
        "machine": machine(),
        "params": {
            "trials": args.trials,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "objectives": OBJECTIVES,
            "parameters": PARAMETERS,
        },
        "tasks": tasks,
    }
    print(f"report: {write_report(report, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
