"""Smoke test of the SFT benchmark (bench/train/sft.py): a tiny CPU run of freestack's loop against TRL's
SFTTrainer on a 2-layer Llama writes a complete report that bench.report turns into a row. No timing
assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sft_benchmark_tiny_run(tmp_path):
    from bench.report import rows_of

    out = tmp_path / "train_sft.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    cmd = [
        sys.executable,
        "-m",
        "bench.train.sft",
        "--size",
        "small",
        "--rows",
        "16",
        "--batch-size",
        "4",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "train_sft"
    samples = report["samples"]
    assert {s["side"] for s in samples} == {"freestack", "trl"}
    # the same examples, batches and LoRA adapter on both sides
    assert {s["tokens"] for s in samples} == {report["params"]["data"]["train"]["tokens"]}
    assert {s["steps"] for s in samples} == {4}
    assert len({s["trainable_parameters"] for s in samples}) == 1
    assert all(s["tokens_per_s"] > 0 and s["train_seconds"] > 0 for s in samples)
    assert {s["dtype"] for s in samples} == {"torch.float32"}
    params, summary = report["params"], report["summary"]
    assert params["device"] == "cpu" and params["batch_size"] == 4 and params["rows"] == 16
    assert params["trainable_parameters"] < params["parameters"]
    assert summary["freestack_tokens_per_s"] > 0 and summary["trl_tokens_per_s"] > 0
    assert summary["ratio"] > 0 and summary["target"] == 0.95 and isinstance(summary["met"], bool)
    (row,) = rows_of([("train_sft", "train_sft", report)])
    assert row.bench == "train_sft" and "tokens/s" in row.measure and row.target == ">= 0.95"
