"""Smoke test of the fine-tuning benchmark (bench/train/finetune.py): a tiny run writes a complete report
that bench.report turns into rows. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_finetuning_benchmark_tiny_run(tmp_path):
    from bench.report import rows_of

    out = tmp_path / "train_finetune.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    cmd = [
        sys.executable,
        "-m",
        "bench.train.finetune",
        "--size",
        "tiny",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    lora, full = report["modes"]["lora"], report["modes"]["full"]
    assert all(
        m["samples_per_s"]["freestack"] > 0 and m["samples_per_s"]["baseline"] > 0 for m in (lora, full)
    )
    assert lora["trainable_parameters"] < full["trainable_parameters"] == full["total_parameters"]
    assert (
        lora["version_weights"] == "adapter_model.safetensors"
        and lora["version_weights_mib"] < full["version_weights_mib"]
    )
    assert len(rows_of([("train_finetune", "train_finetune", report)])) == 3
