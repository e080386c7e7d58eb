"""Smoke test of the DPO benchmark (bench/train/dpo.py): a tiny CPU run of freestack's loop against TRL's
DPOTrainer on a 2-layer Llama writes a complete report, both sides on the same tokens. No timing
assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dpo_benchmark_tiny_run(tmp_path):
    out = tmp_path / "dpo_train.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    cmd = [sys.executable, "-m", "bench.train.dpo", "--size", "small", "--rows", "16", "--batch-size", "4"]
    cmd += ["--repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "dpo_train" and report["ratio"] > 0
    freestack, trl = report["samples"]["freestack"][0], report["samples"]["trl"][0]
    assert freestack["tokens"] == trl["tokens"] > 0  # the same pairs, rendered alike
    assert freestack["pairs_per_s"] > 0 and trl["pairs_per_s"] > 0
