"""Checkpoints of trainings that never finished are pruned after ``checkpoint_retention_days``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from freestack.spec import load_spec
from freestack.train.core import prune_checkpoints

ROOT = Path(__file__).resolve().parents[3]


def test_old_checkpoints_are_pruned_and_the_rest_kept(storage, monkeypatch):
    monkeypatch.setenv("FREESTACK_CHECKPOINT_RETENTION_DAYS", "2")
    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    runs = Path(storage.removeprefix("file://")) / "runs" / "digits"
    old = runs / "digits_train" / "killed-long-ago" / "train" / "checkpoint.safetensors"
    fresh = runs / "digits_train" / "killed-today" / "train" / "checkpoint.safetensors"
    trial = runs / "sweeps" / "s1" / "trials" / "t0000" / "trial.json"  # sweep state: never pruned
    for p in (old, fresh, trial):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    three_days_ago = time.time() - 3 * 86400
    os.utime(old, (three_days_ago, three_days_ago))
    os.utime(trial, (three_days_ago, three_days_ago))
    removed = prune_checkpoints(spec)
    assert [Path(r).name for r in removed] == ["checkpoint.safetensors"] and "killed-long-ago" in removed[0]
    assert not old.exists() and fresh.exists() and trial.exists()
    assert prune_checkpoints(spec) == []  # nothing more to do; a missing runs/ folder is fine too
