"""Smoke test of the distributed-training benchmark (bench/train/distributed.py): a tiny CPU run of one
process against 2 gloo ranks writes a complete report that bench.report turns into rows. No timing
assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_distributed_benchmark_tiny_run(tmp_path):
    from bench.report import rows_of

    out = tmp_path / "train_distributed.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    cmd = [
        sys.executable,
        "-m",
        "bench.train.distributed",
        "--kinds",
        "cnn",
        "--rows",
        "2000",
        "--epochs",
        "1",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    modes = {(s["mode"], s["world_size"]) for s in report["samples"]}
    assert modes == {("one", 1), ("two", 2)}, modes
    assert all(s["samples_per_s"] > 0 for s in report["samples"])
    summary = report["summary"]["cnn"]
    assert summary["scaling_efficiency"] > 0 and summary["gloo_allreduce_ms_per_step"] > 0
    (row,) = rows_of([("train_distributed", "train_distributed", report)])
    assert row.measure.startswith("cnn: 2 gloo ranks of 1 thread") and row.target == ">= 0.85"
