"""Smoke test of the batch scoring benchmark (bench/score/run.py): its --quick size writes a complete
report (both models' throughput against the plain loop, the memory ratio, the backfill on 1 and 2
workers) that bench.report turns into rows. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_score_benchmark_quick_run(tmp_path):
    from bench.report import rows_of

    out = tmp_path / "score.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    cmd = [
        sys.executable,
        "-m",
        "bench.score.run",
        "--quick",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "score" and report["machine"]["cores"] >= 1
    summary, samples = report["summary"], report["samples"]
    for model in ("digits", "text"):
        got = summary["throughput"][model]
        assert got["ratio"] > 0 and got["freestack_rows_per_s"] > 0 and got["plain_rows_per_s"] > 0, got
        arms = {s["arm"]: s["rows"] for s in samples["throughput"][model]["samples"]}
        assert (
            arms["freestack"]
            == arms["plain"]
            == report["params"]["rows" if model == "digits" else "text_rows"]
        )
    assert summary["peak_rss"]["ratio"] > 0 and set(summary["peak_rss"]["freestack_mib"]) == {"1x", "10x"}
    rss = samples["rss"]
    assert rss["freestack_10x"]["rows"] == 10 * rss["freestack_1x"]["rows"]
    backfill = summary["backfill"]
    assert backfill["speedup"] > 0 and backfill["days"] == 4
    for run in samples["backfill"]:  # every planned day scored once, shared between the workers
        assert sum(w["days"] for w in run["per_worker"]) == 4 and len(run["per_worker"]) == run["workers"]
    assert {"digits_throughput_ratio_ok", "text_throughput_ratio_ok", "peak_rss_ratio_ok"} <= set(
        summary["checks"]
    )
    scores = tmp_path / "work" / "storage" / "scores" / "scoredigits"
    assert (scores / "ds=2026-10-02" / "part.parquet").exists()  # what the stage wrote
    rows = rows_of([("score", "score", report)])
    assert [r.measure.split(", ")[0] for r in rows] == [
        "digits MLP (64 numbers)",
        "text model (trained tokenizer)",
        "partition 10x as large (20,000 rows)",
        "4-day backfill",
    ]
