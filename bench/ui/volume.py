"""A registry and a sweep at real volume for the ML views: ``versions`` committed versions of one model
(each with its marker, metrics, lineage, card and a small weights file) and one sweep of ``trials`` trials
with per-epoch histories, written through freestack's storage layer under any storage root. The
benchmark (``bench/ui/run.py``) and the views' tests build their state with it."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

PARAMS = ("learning_rate", "batch_size", "model.dropout")


def _commit(folder, files: dict[str, bytes], at: str) -> None:
    from freestack.storage import join, write_bytes
    from freestack.version.files import MARKER

    for rel, data in files.items():
        write_bytes(join(folder, rel), data)
    manifest = {rel: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for rel, d in files.items()}
    marker = {
        "model": folder.parent.name,
        "version": folder.name,
        "registered_at": at,
        "source": None,
        "files": manifest,
    }
    write_bytes(join(folder, MARKER), json.dumps(marker).encode())


def _version_files(
    model: str, version: str, k: int, rng: random.Random, partitions: list[dict]
) -> dict[str, bytes]:
    acc = 0.80 + 0.15 * rng.random()
    promoted = acc > 0.85
    lineage = {
        "model": model,
        "version": version,
        "window": {"end_ds": partitions[-1]["ds"], "days": 30},
        "partitions": partitions,
        "spec_hash": hashlib.sha256(b"spec").hexdigest(),
        "code_version": "0.1.0",
        "airflow": {"dag_id": f"{model}_train", "run_id": f"scheduled__run-{k:05d}", "task_id": "train"},
        "costs": {"model_mb": 0.21, "train": _train_costs(rng), "serving": _serving_costs(rng)},
        "gate": {
            "promote": promoted,
            "decision": "promote" if promoted else "block",
            "metric": "accuracy",
            "reasons": [
                f"accuracy {acc:.4f} {'≥' if promoted else '<'} 0.8500 (threshold, higher is better)"
            ],
        },
    }
    metrics = {
        "test_accuracy": acc,
        "test_macro_f1": acc - 0.01,
        "test_log_loss": 1 - acc,
        "best_val_accuracy": acc,
    }
    return {
        "config.json": b'{"freestack_model": "mlp"}',
        "model.safetensors": bytes(256),
        "metrics.json": json.dumps(metrics).encode(),
        "lineage.json": json.dumps(lineage).encode(),
        "README.md": f"---\nlibrary_name: pytorch\n---\n# {model} {version}\n\naccuracy {acc:.4f}\n".encode(),
    }


def _train_costs(rng: random.Random) -> dict[str, Any]:
    """A training's costs as freestack.train.costs.TrainCosts records them (a CPU run, priced)."""
    wall = 20 + 10 * rng.random()
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(wall * 1.8, 3),
        "gpu_s": 0.0,
        "peak_memory_mb": round(900 + 100 * rng.random(), 1),
        "peak_gpu_memory_mb": None,
        "samples": 12_000,
        "epochs": 12,
        "resumed_from": None,
        "ranks": 1,
        "device": "cpu",
        "cost": round(wall * 1.8 / 3600 * 0.05, 6),
        "currency": "USD",
    }


def _serving_costs(rng: random.Random) -> dict[str, Any]:
    """What serving it costs as freestack.serving.costs.ServingCosts records them (Seldon, 2 workers)."""
    p50 = 0.2 + 0.1 * rng.random()
    return {
        "runtime": "seldon",
        "workers": 2,
        "start_s": round(1.5 + rng.random(), 3),
        "requests": 2_000,
        "errors": 0,
        "latency_p50_ms": round(p50, 3),
        "latency_p99_ms": round(p50 * 1.6, 3),
        "batch_rows": 32,
        "concurrency": 4,
        "rows_per_s": round(120_000 + 40_000 * rng.random(), 1),
        "peak_memory_mb": round(800 + 50 * rng.random(), 1),
        "cpu_ms_per_request": round(p50 * 1.1, 3),
        "cost_per_1k_requests": round(p50 * 1.1 / 3600 * 0.05, 6),
        "currency": "USD",
    }


def make_registry(root_uri: str, model: str, versions: int, seed: int = 0) -> list[str]:
    """Commit ``versions`` versions of ``model`` (one a day) and point production/previous/staging at the
    last three; returns the version names, oldest first."""
    from freestack.storage import join, to_path, write_bytes

    rng = random.Random(seed)
    folder = join(to_path(root_uri), "registry", model)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    names = []
    for k in range(versions):
        day = start + timedelta(days=k)
        version = f"v{day:%Y%m%d}-{k:08x}"
        parts = [
            {
                "ds": (day - timedelta(days=d)).date().isoformat(),
                "sha256": hashlib.sha256(f"{k}-{d}".encode()).hexdigest(),
            }
            for d in range(5, 0, -1)
        ]
        _commit(
            join(folder, version), _version_files(model, version, k, rng, parts), f"{day.isoformat()[:19]}Z"
        )
        names.append(version)
    history = [
        {
            "at": f"{start + timedelta(days=k)}",
            "action": "promote",
            "alias": "production",
            "version": v,
            "from": names[k - 1] if k else None,
            "by": "gate",
        }
        for k, v in enumerate(names)
    ]
    aliases = {
        "production": names[-1],
        "previous": names[-2] if versions > 1 else None,
        "staging": names[-3] if versions > 2 else None,
        "history": history,
    }
    write_bytes(join(folder, "aliases.json"), json.dumps({k: v for k, v in aliases.items() if v}).encode())
    return names


def _trial(k: int, rng: random.Random, epochs: int) -> dict[str, Any]:
    params = {
        "learning_rate": 10 ** rng.uniform(-4, -2),
        "batch_size": rng.choice([32, 64, 128]),
        "model.dropout": rng.uniform(0, 0.5),
    }
    ceiling = 0.6 + 0.38 * rng.random()
    stopped = rng.random() < 0.3
    n = 3 if stopped else epochs
    history = [{"epoch": e + 1, "val_accuracy": ceiling * (1 - 0.7 ** (e + 1))} for e in range(n)]
    state = "failed" if rng.random() < 0.03 else "finished"
    return {
        "id": f"t{k:04d}",
        "number": k,
        "params": params,
        "config": params,
        "state": state,
        "stopped": stopped,
        "history": history if state == "finished" else history[:1],
        "summary": {"task": "classification"},
        "lease": {"slot": f"demo_train/run/agent/{k % 2}"},
        "error": "CUDA out of memory" if state == "failed" else None,
    }


def make_sweep(root_uri: str, pipeline: str, trials: int, epochs: int = 10, seed: int = 0) -> str:
    """One finished random sweep of ``trials`` trials under ``runs/<pipeline>/``; returns its id."""
    from freestack.storage import join, to_path, write_bytes

    rng = random.Random(seed)
    sweep_id = f"sweep-20240101-{seed:08x}"
    folder = join(to_path(root_uri), "runs", pipeline, sweep_id)
    config = {
        "method": "random",
        "metric": {"name": "val_accuracy", "goal": "maximize"},
        "run_cap": trials,
        "parameters": {p: {"values": [1]} for p in PARAMS},
    }
    docs = [_trial(k, rng, epochs) for k in range(trials)]
    for d in docs:
        write_bytes(join(folder, "trials", d["id"], "trial.json"), json.dumps(d).encode())
    best = max(
        (d for d in docs if d["state"] == "finished"),
        key=lambda d: max(r["val_accuracy"] for r in d["history"]),
    )
    write_bytes(
        join(folder, "sweep.json"),
        json.dumps(
            {
                "id": sweep_id,
                "pipeline": pipeline,
                "config": config,
                "created_at": "2024-01-01T00:00:00+00:00",
                "request": {"end_ds": "2024-01-01", "airflow": {"run_id": "manual__sweep"}},
            }
        ).encode(),
    )
    write_bytes(
        join(folder, "best.json"),
        json.dumps(
            {
                "sweep_id": sweep_id,
                "metric": "val_accuracy",
                "goal": "maximize",
                "trials": trials,
                "best_trial": best["id"],
                "best_value": max(r["val_accuracy"] for r in best["history"]),
            }
        ).encode(),
    )
    return sweep_id


__all__ = ["make_registry", "make_sweep"]
