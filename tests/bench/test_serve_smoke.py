"""Smoke test of the serving benchmark (bench/serve/run.py): a --quick run (0.1 s warm-up and 0.3 s
measured per cell: enough requests for every figure, none of them meaningful) writes a complete report.

No timing assertions: only that every server answered every cell, without errors, with positive
throughput, and that the report has its fields. The stock ``seldon-core-microservice`` binds 0.0.0.0,
so it is left out unless FREESTACK_BENCH_STOCK=1 (the benchmark itself runs it once per run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTTP = ["seldon", "seldon_sync", "mlserver", "bare"]  # mlserver: the Open Inference Protocol runtime
CELLS = ["c1", "c8", "c32", "batch32_c8"]


@pytest.mark.slow
@pytest.mark.skipif(
    not (ROOT / ".venv-serving" / "bin" / "python").exists()
    or not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
    reason="a serving environment is missing: run `make serving-venv mlserver-venv`",
)
def test_serve_benchmark_quick_run(tmp_path):
    out = tmp_path / "serve.json"
    http = HTTP + (["seldon_stock"] if os.environ.get("FREESTACK_BENCH_STOCK") == "1" else [])
    servers = [*http, "inproc", "inproc_seldon"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.serve.run",
            "--quick",
            "--warmup",
            "0.1",
            "--duration",
            "0.3",
            "--servers",
            ",".join(servers),
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "serve" and report["machine"]["cores"] >= 1
    assert report["params"]["repeats"] == 1 and set(report["params"]["cells"]) == set(CELLS)
    summary = report["summary"]
    for server in [*http, "inproc"]:
        for cell in CELLS:
            samples = report["samples"][server][cell]
            assert len(samples) == 1, (server, cell)
            s = samples[0]
            assert s["errors"] == 0 and s["requests"] > 0 and s["rps"] > 0, (server, cell, s)
            assert s["p50_ms"] > 0 and s["p99_ms"] >= s["p50_ms"], (server, cell, s)
            assert summary[server][cell]["errors"] == 0 and summary[server][cell]["rps"] > 0
    for server in http:
        s = report["samples"][server]["c8"][0]
        assert s["server_cpu_s"] > 0 and s["generator_cpu_s"] > 0, s  # what each side cost
        answer = report["first_answers"][
            server
        ]  # the same probabilities were checked (Seldon's shape, or V2's)
        assert answer.get("data", {}).get("ndarray") or answer["outputs"][0]["data"], answer
    for server in [s for s in servers if s != "bare"]:
        cells = CELLS if server != "inproc_seldon" else ["c1"]
        assert all(summary[server][c]["ratio_rps"] > 0 for c in cells), server
    inproc_seldon = report["samples"]["inproc_seldon"]["c1"][0]
    assert inproc_seldon["errors"] == 0 and inproc_seldon["rps"] > 0
    assert summary["checks"]["errors_ok"] is True and "seldon_c8_ratio" in summary["checks"]
    assert (
        summary["checks_oip"]["mlserver_c8_ratio"] > 0 and report["params"]["servers"]["mlserver"]["settings"]
    )
    assert "Serving benchmark" in proc.stdout
