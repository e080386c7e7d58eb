"""Smoke test of the GRPO benchmarks: a tiny CPU run of freestack's loop against TRL's GRPOTrainer from the
same carelessly instruction-tuned tiny model (bench/train/grpo.py) writes a complete report, both sides
putting the same prompts through; so does the run of rollouts from a deployed server against padded ones
(bench/train/grpo_server.py). No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_grpo_benchmark_tiny_run(tmp_path):
    out = tmp_path / "grpo_train.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    cmd = [
        sys.executable,
        "-m",
        "bench.train.grpo",
        "--prompts",
        "16",
        "--epochs",
        "1",
        "--num-generations",
        "4",
    ]
    cmd += ["--repeats", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "grpo_train" and report["ratio"] > 0 and 0 < report["exact_match_start"] < 1
    freestack, trl = report["samples"]["freestack"][0], report["samples"]["trl"][0]
    # the same prompts and sampling budget: the prompt tokens are equal, the sampled answers alike in length
    assert abs(freestack["tokens"] - trl["tokens"]) < 0.1 * trl["tokens"], (freestack, trl)
    assert 0 <= freestack["exact_match"] <= 1 and 0 <= trl["exact_match"] <= 1

    served = tmp_path / "grpo_server.json"
    cmd = [sys.executable, "-m", "bench.train.grpo_server", "--prompts", "16", "--epochs", "1"]
    cmd += ["--num-generations", "4", "--repeats", "1", "--out", str(served)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(served.read_text())
    padded, server = report["samples"]["padded"][0], report["samples"]["server"][0]
    assert report["name"] == "grpo_server" and report["ratio"] > 0, report
    assert abs(padded["tokens"] - server["tokens"]) < 0.2 * padded["tokens"], (padded, server)
