"""Smoke test of the ingest benchmark (bench/ingest/run.py): a tiny run writes a complete report.

No timing assertions: only that every mode ran and the report has its fields, with positive numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ingest_benchmark_tiny_run(tmp_path):
    out = tmp_path / "ingest.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.ingest.run",
            "--size-mb",
            "2",
            "--repeats",
            "1",
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

    assert report["name"] == "ingest"
    machine = report["machine"]
    for key in ("cpu_model", "cores", "memory_gib", "python", "pyarrow_version"):
        assert key in machine, key
    assert machine["cores"] >= 1

    params = report["params"]
    assert params["rows"] > 0 and params["csv_bytes"] > 0
    assert params["bad_rows_total"] > 0  # the validator had something to reject
    assert params["repeats"] == 1

    for mode in ("eager", "streaming", "freestack"):
        samples = report["samples"][mode]
        assert len(samples) == 1, mode
        s = samples[0]
        assert "error" not in s, s
        for key in ("wall_s", "rows_per_s", "mib_per_s", "peak_rss_mib"):
            assert s[key] > 0, (mode, key, s[key])
        assert s["rows"] == params["rows"], mode

    fs = report["samples"]["freestack"][0]
    assert fs["rows_quarantined"] > 0
    assert fs["rows_good"] + fs["rows_quarantined"] == params["rows"]

    summary = report["summary"]
    for key in (
        "baseline_rows_per_s",
        "freestack_rows_per_s",
        "throughput_ratio",
        "freestack_peak_rss_mib",
        "baseline_peak_rss_mib",
    ):
        assert summary[key] > 0, key
    assert summary["ratio_against"] in ("eager", "streaming")
    assert report["targets"] == {"throughput_ratio_min": 0.7, "peak_rss_mib_max_for_2gib": 1024}
    # the scratch folder given with --workdir is kept (the CSV can be reused), its outputs are not
    assert (tmp_path / "work" / "storage" / "landing").is_dir()
    assert not (tmp_path / "work" / "storage" / "lake").exists()
