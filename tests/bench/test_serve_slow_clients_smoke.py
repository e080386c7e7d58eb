"""Smoke test of bench/serve/slow_clients.py: a tiny run writes a complete report that bench.report reads.

No timing assertions: only that both cells were measured without errors, no worker was killed, the
malformed corpus was answered, and the report's fields are there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@needs_serving_env
def test_slow_clients_benchmark_tiny_run(tmp_path):
    out = tmp_path / "slow_clients.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.serve.slow_clients",
            "--repeats",
            "1",
            "--warmup",
            "0.5",
            "--duration",
            "2",
            "--slow",
            "2",
            "--interval",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "serve_slow_clients" and report["params"]["worker_classes"] == ["freestack"]
    for cell in ("none", "slow"):
        (sample,) = report["samples"]["freestack"][cell]
        assert sample["errors"] == 0 and sample["rps"] > 0, (cell, sample)
    assert report["samples"]["freestack"]["slow"][0]["slow_clients"] == 2
    s = report["summary"]["freestack"]
    assert s["workers_killed"] == [] and s["ratio"] > 0
    assert s["corpus_cases"] > 100 and s["corpus_json_4xx"] == s["corpus_cases"], report["corpus"][
        "freestack"
    ]

    from bench.report import rows_of

    rows = rows_of([("serve_slow_clients", out.stem, report)])
    assert [r.bench for r in rows] == ["serve_slow_clients"] * 2 and rows[1].met is True
