"""Smoke test of the chart pages' browser benchmark (bench/ui/charts.py): a tiny run in Debian's Chromium
writes a complete report.

No timing assertions: only that every page was drawn and the report has its fields (a busy machine may
miss the 1 s target, which the exit code says: 0 met, 1 missed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ui_charts_benchmark_tiny_run(tmp_path):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's Chromium is missing: `make browser-deps` (as root)")
    out = tmp_path / "ui_charts.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    tiny = ["--versions", "3", "--trials", "6", "--repeats", "1", "--out", str(out)]
    command = [sys.executable, "-m", "bench.ui.charts", *tiny]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "ui_charts" and report["met"] == (proc.returncode == 0)
    pages = report["pages"]
    assert len(pages) == 3 and all(t["cold_s"] > 0 and t["warm_s"] > 0 for t in pages.values())
    charts = pages["versions page (1 chart)"]
    assert charts["cold_bytes"] > 300_000 > charts["warm_bytes"]  # the bundle once, then from the cache
    assert set(report["ratios"]) == {
        "versions_cold_vs_no_chart",
        "versions_warm_vs_no_chart",
        "sweep_cold_vs_no_chart",
        "sweep_warm_vs_no_chart",
    }
    assert "slowest chart page" in proc.stdout
