"""Smoke test of the Data API benchmark (bench/data_api/run.py): a tiny run writes a complete report.

No timing assertions: only that every mode ran for every size and the report has its fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_data_api_benchmark_tiny_run(tmp_path):
    out = tmp_path / "data_api.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.data_api.run",
            "--sizes-mib",
            "1,2",
            "--repeats",
            "2",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "data_api"
    assert report["machine"]["cores"] >= 1 and report["params"]["sizes_mib"] == [1, 2]
    modes = ("direct", "service_http", "service_datafs", "bare_http")
    for size in ("1MiB", "2MiB"):
        for mode in modes:
            samples = report["samples"][size][mode]
            assert len(samples) == 2 and all("error" not in s for s in samples), samples
            assert all(s["upload_mb_s"] > 0 and s["download_mb_s"] > 0 for s in samples)
        row = report["summary"][size]
        for mode in modes[1:]:
            assert row[mode]["upload_ratio"] > 0 and row[mode]["download_ratio"] > 0
        assert row["service_http"]["download_vs_bare_http"] > 0  # the service against HTTP's own ceiling
        assert row["target"]["service_http_download_vs_bare_http"] == 0.8 and isinstance(
            row["target"]["met"], bool
        )
    assert report["server"]["peak_rss_mib"] > 0
    assert (
        "Data API benchmark" in proc.stdout
        and "target: service_http download >= 0.8x bare_http" in proc.stdout
    )
