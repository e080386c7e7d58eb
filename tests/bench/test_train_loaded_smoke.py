"""Smoke test of the loaded-worker training benchmark (bench/train/loaded.py): a tiny run beside a tiny
load writes a complete report and leaves no load process behind.

No timing assertions: only that every mode ran on the pool it names and the report has its fields.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODES = ("own_loaded", "sized_loaded", "own_quiet", "sized_quiet")


def test_train_loaded_benchmark_tiny_run(tmp_path):
    out = tmp_path / "loaded.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    env["TMPDIR"] = str(tmp_path)  # the bench's data folder, named on its load processes' command lines
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.train.loaded",
            "--rows",
            "600",
            "--epochs",
            "1",
            "--repeats",
            "1",
            "--load",
            "train",
            "--sized-threads",
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
    assert report["name"] == "train_loaded"
    params = report["params"]
    assert params["load"] == "train" and params["load_procs"] == 1 and params["sized_threads"] == 1
    assert params["own_threads"] == report["machine"]["cores"] >= 1
    for mode in MODES:
        [s] = report["samples"][mode]
        assert "error" not in s, s
        assert s["mode"] == mode and s["samples_per_s"] > 0 and s["rows_train"] == params["rows_train"]
        assert s["threads"] == (1 if mode.startswith("sized") else params["own_threads"])  # torch's pool
        if mode.endswith("loaded"):
            assert s["load_cpu_s_during_sample"] >= 0
    summary = report["summary"]
    assert summary["ratio_loaded"] > 0 and summary["ratio_quiet"] > 0
    assert set(summary["modes"]) == set(MODES)
    # every load process was stopped: no child of this test's run is left training
    left = subprocess.run(["pgrep", "-f", f"--data {tmp_path}"], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == ""
