"""Smoke test of the Data API listing / If-Match / kill -9 benchmark (bench/data_api/listing.py): a tiny
run writes a complete report.

No timing assertions: only that every part ran and the report has its fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_data_api_listing_benchmark_tiny_run(tmp_path):
    out = tmp_path / "dataapi_listing.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.data_api.listing",
            "--small",
            "20",
            "--large",
            "1200",
            "--repeats",
            "1",
            "--object-mib",
            "4",
            "--kills",
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
    assert report["name"] == "dataapi_listing" and report["machine"]["cores"] >= 1
    listing = report["samples"]["listing"]
    assert listing["small"]["pages"] == 1 and listing["large"]["pages"] == 2
    assert report["summary"]["listing"]["ratio"] > 0
    if_match = report["summary"]["if_match"]
    assert if_match["anonymous"]["status"] == 401 and if_match["owner"]["status"] == 200
    kills = report["summary"]["kill_9"]
    assert kills["kills"] == 2 and kills["temps_after_kills"] == 2 and kills["temps_after_restart"] == 0
    assert "listing page:" in proc.stdout
