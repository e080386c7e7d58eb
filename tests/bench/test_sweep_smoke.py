"""Smoke test of the sweep benchmark (bench/sweep/run.py): a tiny run writes a complete report.

No timing assertions: only that every part ran, with the real controller and trainer, and that the
report holds its figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sweep_benchmark_tiny_run(tmp_path):
    out = tmp_path / "sweep.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.sweep.run",
            "--days",
            "2",
            "--trials",
            "2",
            "--epochs",
            "1",
            "--repeats",
            "1",
            "--hb-trials",
            "3",
            "--hb-epochs",
            "3",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    par = report["parallel"]
    assert set(par["median_wall_s"]) == {"one_agent_same_threads", "one_agent_all_cores", "two_agents"}
    two = par["runs"]["two_agents"][0]
    assert two["trials"] == 2 and sorted(two["per_agent_trials"]) == [1, 1] and two["duplicates"] == 0
    assert par["speedup"] > 0 and all(v > 0 for v in par["median_wall_s"].values())
    hb = report["hyperband"]
    assert hb["without"]["trials"] == hb["with"]["trials"] == 3
    assert hb["without"]["epochs"] == 9 and hb["with"]["epochs"] <= 9
    assert 0 < hb["without"]["best_val_accuracy"] <= 1
    assert report["machine"]["cores"] >= 1
    # the multi-objective comparison (bench/sweep/objectives.py): bayes, tpe and nsga2 at equal trial-epochs
    # on the generated reviews (a text task), each with its front and hypervolume
    out = tmp_path / "sweep_objectives.json"
    args = ["--trials", "3", "--epochs", "1", "--repeats", "1", "--tasks", "reviews", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sweep.objectives", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    methods = json.loads(out.read_text())["tasks"]["reviews"]["methods"]
    assert set(methods) == {"bayes", "tpe", "nsga2"}
    for m in methods.values():
        assert m["trial_epochs"] == 3 and 0 < m["hypervolume"] <= 1 and 0 < m["best_val_accuracy"] <= 1, m
        assert m["runs"][0]["front"], m
