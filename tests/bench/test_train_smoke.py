"""Smoke test of the training benchmark (bench/train/run.py): a tiny run writes a complete report.

No timing assertions: only that every mode ran and the report has its fields, with positive numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODES = ("baseline", "freestack", "freestack_memckpt", "freestack_nockpt", "freestack_custom")


def test_train_benchmark_tiny_run(tmp_path):
    out = tmp_path / "train.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.train.run",
            "--rows",
            "2000",
            "--epochs",
            "2",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["name"] == "train"
    machine = report["machine"]
    for key in ("cpu_model", "cores", "memory_gib", "python", "torch_version", "device"):
        assert key in machine, key
    assert machine["cores"] >= 1
    assert machine["device"] == "cpu"

    params = report["params"]
    assert params["rows"] == 2000
    assert params["rows_train"] + params["rows_val"] == 2000
    assert params["rows_val"] > 0
    assert params["epochs"] == 2 and params["repeats"] == 1 and params["threads"] == 1
    assert params["kind"] == "mlp"

    for mode in MODES:
        samples = report["samples"][mode]
        assert len(samples) == 1, mode
        s = samples[0]
        assert "error" not in s, s
        for key in ("wall_s", "cpu_s", "samples_per_s", "peak_rss_mib"):
            assert s[key] > 0, (mode, key, s[key])
        assert s["rows_train"] == params["rows_train"], mode
        assert s["threads"] == 1, mode
        assert 0.0 <= s["val_accuracy"] <= 1.0, mode
        if mode != "baseline":
            assert s["epochs_run"] == 2 and not s["stopped_early"], mode  # no early stop
    assert report["samples"]["freestack"][0]["checkpoint_saves"] == 2
    assert report["samples"]["freestack"][0]["checkpoint_bytes"] > 0
    assert report["samples"]["freestack_memckpt"][0]["checkpoint_saves"] == 2
    assert report["samples"]["freestack_nockpt"][0]["checkpoint_saves"] == 0
    assert report["samples"]["freestack_custom"][0]["checkpoint_saves"] == 2  # the custom module's path

    summary = report["summary"]
    for key in (
        "baseline_samples_per_s",
        "freestack_samples_per_s",
        "ratio",
        "ratio_memckpt",
        "ratio_nockpt",
        "ratio_custom_vs_builtin",
    ):
        assert summary[key] > 0, key
    assert set(summary["modes"]) == set(MODES)
    assert isinstance(summary["checks"]["ratio_ok"], bool) and isinstance(
        summary["checks"]["custom_ok"], bool
    )
    assert report["targets"] == {"ratio_min": 0.95}
