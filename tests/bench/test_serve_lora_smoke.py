"""Smoke test of the LoRA memory benchmark (bench/serve/lora_memory.py): a tiny run (the 3.6M-parameter
base, 2 adapter versions) against the real model server writes a complete report that bench.report turns
into a row. No timing or memory assertions beyond the report's shape."""

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
    (row,) = rows_of([("serve_lora", "serve_lora", report)])
    assert row.bench == "serve_lora" and row.ratio == s["ratio"]
