"""Smoke test of the LoRA benchmarks: a tiny run of bench/serve/lora_memory.py (the 3.6M-parameter base, 2
adapter versions, a stream beside the second one's load) against the real model server, and of
bench/serve/lora_batches.py (mixed-adapter batches against turns), each writing a complete report that
bench.report turns into rows. No timing or memory assertions beyond the reports' shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
    reason="the MLServer environment is missing: run `make mlserver-venv`",
)
def test_lora_memory_benchmark_tiny_run(tmp_path):
    from bench.report import rows_of

    out = tmp_path / "serve_lora.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"), str(ROOT / "include")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "bench.serve.lora_memory",
        "--size",
        "base",
        "--adapters",
        "2",
        "--stream-tokens",
        "24",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "serve_lora" and report["machine"]["cores"] >= 1
    assert report["adapters"] == 2 and len(report["rss_bytes_by_adapters"]) == 2 and report["base_loads"] == 1
    s = report["summary"]
    assert s["rss_1"] > 0 and s["rss_n"] > 0 and s["adapters_own_bytes"] > 0 and isinstance(s["met"], bool)
    assert len(report["longest_gap_idle_s"]) == 3 and len(report["longest_gap_loading_s"]) == 1
    assert s["gap_idle_ms"] > 0 and s["gap_loading_ms"] > 0
    row, gap = rows_of([("serve_lora", "serve_lora", report)])
    assert (
        row.bench == "serve_lora"
        and row.ratio == s["ratio"]
        and "while each of 1 versions loads" in gap.measure
    )
    assert len(report["batch_paused_ms"]) == 1 and report["batch_paused_ms"][0] > 0

    # mixed-adapter batches against turns (bench/serve/lora_batches.py), in this environment's peft
    out = tmp_path / "lora_batches.json"
    cmd = [sys.executable, "-m", "bench.serve.lora_batches", "--size", "base", "--adapters", "1,2"]
    cmd += ["--prompts", "4", "--new-tokens", "4", "--rounds", "1", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [c["adapters"] for c in report["cells"]] == [1, 2]
    assert all(
        c["answers_equal"] == 4 and set(c["tokens_per_s"]) == {"mixed", "turns"} for c in report["cells"]
    )
    assert [r.bench for r in rows_of([("lora_batches", "lora_batches", report)])] == ["lora_batches"] * 2
