"""Smoke test of the streaming benchmark (bench/train/stream.py): a tiny run writes a complete report that
bench.report turns into rows. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_streaming_benchmark_tiny_run(tmp_path):
    from bench.report import rows_of

    out = tmp_path / "train_stream.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    cmd = [
        sys.executable,
        "-m",
        "bench.train.stream",
        "--rows-per-day",
        "1500",
        "--days",
        "1",
        "--scale",
        "2",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"memory_1x", "memory_2x", "stream_1x", "stream_2x"}
    for name, run in report["runs"].items():
        assert (
            run["data"]["mode"] == name.split("_")[0] and run["samples_per_s"] > 0 and run["peak_rss_mib"] > 0
        )
        assert sum(run["rows"].values()) == 1500 * (1 if name.endswith("1x") else 2), run
    assert report["runs"]["stream_2x"]["rows"] == report["runs"]["memory_2x"]["rows"]  # the same splits
    assert not list((tmp_path / "work" / "spool").iterdir())  # every spool removed
    summary = report["summary"]
    assert summary["peak_rss_ratio_stream"] > 0 and summary["throughput_ratio_stream_vs_memory"] > 0
    rows = rows_of([("train_stream", "train_stream", report)])
    assert [r.measure for r in rows] == [
        "streamed window 2x as large, peak memory",
        "streamed window, samples/s",
    ]
