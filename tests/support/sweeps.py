"""Shared by the sweep tests: a spec with a given sweep block, and a synthetic objective to train.

The objective stands in for the trainer where the tests are about the controller (proposals, leases,
run caps, early termination): its per-epoch metric is a known function of the hyperparameters, so the
tests can say which trials are good. The controller, storage and engine are all real. The trainer
itself is exercised through the sweep DAG test.

Run as a module, it is one agent process: ``python -m tests.support.sweeps SPEC SWEEP_ID AGENT_ID SLEEP TTL``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def write_spec(folder: Path, sweep: dict[str, Any], storage_root: str | None = None) -> Path:
    data = yaml.safe_load((ROOT / "include" / "pipelines" / "digits.yaml").read_text())
    data["sweep"] = sweep
    if storage_root:
        data["storage_root"] = storage_root
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "digits.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def quality(params: dict[str, Any]) -> float:
    """Best at learning_rate 10^-2.5 and dropout 0.1; 0..1."""
    lr = float(params.get("learning_rate", 3e-3))
    drop = float(params.get("model.dropout", params.get("dropout", 0.1)))
    return max(0.05, 1.0 - abs(math.log10(lr) + 2.5) / 3.0 - abs(drop - 0.1))


def objective(epochs: int = 8, sleep: float = 0.0, log_file: str | None = None):
    """A trial runner: accuracy rises towards quality(params) epoch by epoch."""

    def run(doc: dict[str, Any], report) -> dict[str, Any]:
        if log_file:  # one line per trial start: who ran what
            with open(log_file, "a") as f:
                f.write(json.dumps({"trial": doc["id"], "owner": doc["lease"]["owner"]}) + "\n")
        start = len(doc.get("history") or [])  # a taken-over trial resumes after its last epoch
        q = quality(doc["params"])
        epoch = start
        for epoch in range(start + 1, epochs + 1):
            if sleep:
                time.sleep(sleep)
            acc = q * (1.0 - 0.5**epoch)
            if report({"epoch": epoch, "val_accuracy": acc, "val_loss": 1.0 - acc}):
                break
        return {"summary": {"task": "classification", "quality": q}, "epochs_run": epoch}

    return run


#: accuracy against the model's size: past lr 10^-2.5 both get worse, below it each trades against the other
OBJECTIVES = [{"name": "val_accuracy", "goal": "maximize"}, {"name": "trainable_params", "goal": "minimize"}]


def sized(doc: dict[str, Any], report) -> dict[str, Any]:
    """A trial runner on OBJECTIVES: accuracy as :func:`quality`, and trainable parameters rising with lr."""
    q = quality(doc["params"])
    for epoch in (1, 2):
        report({"epoch": epoch, "val_accuracy": q * (1 - 0.5**epoch), "val_loss": 1 - q})
    params = round(1e6 * doc["params"]["learning_rate"])
    return {"summary": {"task": "classification"}, "epochs_run": 2, "costs": {"trainable_params": params}}


def main(argv: list[str]) -> None:
    from freestack.spec import load_spec
    from freestack.sweeps.core import LocalAgent

    spec_path, sweep_id, agent_id, sleep, ttl = argv[:5]
    log_file = argv[5] if len(argv) > 5 else None
    spec = load_spec(spec_path)
    report = LocalAgent(
        spec,
        sweep_id,
        objective(sleep=float(sleep), log_file=log_file),
        agent_id=agent_id,
        ttl=float(ttl),
        poll_seconds=0.2,
    ).run()
    print(json.dumps(report.as_dict()))


if __name__ == "__main__":
    main(sys.argv[1:])
