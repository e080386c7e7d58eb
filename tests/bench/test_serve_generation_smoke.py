"""Smoke test of the generation serving benchmark (bench/serve/generation.py): a tiny run (a 2-layer Llama, 8
requests of 4 new tokens a cell, one round) against the real Seldon server and the in-process loops writes a
complete report that bench.report turns into rows. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVING_PY = ROOT / ".venv-serving" / "bin" / "python"


@pytest.mark.skipif(
    not SERVING_PY.exists(), reason="the serving environment is missing: run `make serving-venv`"
)
def test_generation_serving_benchmark_tiny_run(tmp_path):
    from bench.report import rows_of

    out = tmp_path / "serve_generation.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    cmd = [
        sys.executable,
        "-m",
        "bench.serve.generation",
        "--size",
        "small",
        "--runtime",
        "seldon",
        "--requests",
        "8",
        "--max-new-tokens",
        "4",
        "--repeats",
        "1",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "serve_generation" and report["machine"]["cores"] >= 1
    params, summary = report["params"], report["summary"]
    assert (params["size"], params["runtimes"], params["concurrency"]) == ("small", ["seldon"], [1, 8])
    assert (params["max_new_tokens"], params["requests"], params["threads"], params["device"]) == (
        4,
        8,
        1,
        "cpu",
    )
    assert params["prompts"]["count"] == 8 and params["parameters"] > 0
    assert params["servers"]["seldon"]["settings"]["FREESTACK_TORCH_THREADS"] == "1"
    sides = {"seldon", "baseline", "inproc_generate"}
    assert {(s["side"], s["cell"]) for s in report["samples"]} == {
        (side, c) for side in sides for c in ("c1", "c8")
    }
    for s in report["samples"]:
        # every answer runs to max_new_tokens (the special tokens can never win), on every side
        assert s["requests"] == 8 and s["completion_tokens"] == 8 * 4, s
        # a cell of 32 tokens can end within one clock tick of the server's CPU time: cpu_s 0.0 (and
        # tokens_per_cpu_s None, as the bench writes it then)
        assert s["tokens_per_s"] > 0 and s["cpu_s"] >= 0 and 0 < s["p50_ms"] <= s["p99_ms"], s
        assert (s["tokens_per_cpu_s"] is None) == (s["cpu_s"] == 0), s
        assert len(s["latencies_ms"]) == 8 and "others_busy_fraction" in s and "loadavg_1m_before" in s
        assert "texts" not in s  # compared in the summary, not kept
    seldon = {s["cell"]: s for s in report["samples"] if s["side"] == "seldon"}
    assert seldon["c1"]["generate_batch"] == {"1": 8} and seldon["c1"]["finish_reasons"] == ["length"]
    assert sum(seldon["c8"]["generate_batch"].values()) == 8
    for side in ("seldon", "inproc_generate"):
        for cell in ("c1", "c8"):
            r = summary[side][cell]
            assert r["ratio"] > 0 and r["ratio_cpu"] > 0 and len(r["ratio_by_round"]) == 1, (side, cell, r)
            assert r["answers_equal"] == 1.0, (side, cell, r)  # greedy on the same weights: the same texts
    assert summary["seldon"]["c8"]["mean_generate_batch"] >= 1
    assert summary["baseline"]["c8"]["tokens_per_s"] > 0 and isinstance(summary["contended_samples"], list)
    rows = rows_of([("serve_generation", "serve_generation", report)])
    assert [r.bench for r in rows] == ["serve_generation"] * 2
    assert all("tokens/s" in r.measure and r.ratio > 0 for r in rows)
    assert "Generation serving" in proc.stdout
