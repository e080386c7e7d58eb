"""Smoke tests of the orchestration benchmark (bench/orchestration/run.py) at its smallest size, in two
parts (each a test of its own, so that neither is long): three specs are parsed; then a real `airflow
standalone` runs one ingest day and the train DAG (2-trial sweep through deploy) and the same stage code
runs in one plain process. The Airflow run is made with the runtime speed-ups on (the scheduler's
end-to-end tests run on stock Airflow too; the full benchmark runs both). No timing assertions: only that
the report is complete and the measured things happened (the scheduler preloaded the libraries, every
task was timed, no heavy import at parse time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NEEDS_SERVING = pytest.mark.skipif(
    not (ROOT / ".venv-serving" / "bin" / "python").exists(),
    reason="the serving environment is missing: run `make serving-venv`",
)


def _bench(tmp_path: Path, *parts: str) -> tuple[dict, Path]:
    out, work = tmp_path / "orchestration.json", tmp_path / "work"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(ROOT), str(ROOT / "plugins"), env.get("PYTHONPATH", "")] if p
    )
    args = [
        "--quick",
        "--speedups",
        "on",
        "--parts",
        ",".join(parts),
        "--out",
        str(out),
        "--workdir",
        str(work),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.orchestration.run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text()), work


@pytest.mark.slow
def test_orchestration_benchmark_parses_the_quick_specs(tmp_path):
    report, _ = _bench(tmp_path, "parse")
    assert report["name"] == "orchestration" and report["machine"]["cores"] >= 1
    s = report["summary"]
    assert s["parse_heavy_imports"] == [] and s["checks"]["imports_ok"] is True
    assert s["parse_1_spec_s"] > 0 and s["parse_3_specs_s"] > 0 and "ratio" not in s
    parse = report["samples"]["parse"]["specs_3"]["importtime"]
    assert (
        parse["dags"] == 18 and parse["file_s"] > 0
    )  # six DAGs a spec: ingest, train, rollback, promote, monitor, score
    assert report["samples"]["airflow"] == report["samples"]["plain"] == []


@pytest.mark.slow
@NEEDS_SERVING
def test_orchestration_benchmark_quick_run(tmp_path):
    report, work = _bench(tmp_path, "airflow", "plain")
    s = report["summary"]
    assert report["samples"]["parse"] == {} and "parse_1_spec_s" not in s
    assert s["repeats"] == 1 and len(report["samples"]["airflow"]) == len(report["samples"]["plain"]) == 1
    airflow = report["samples"]["airflow"][0]
    ran = {t["task_id"] for t in airflow["tasks"]}
    assert {
        "ingest",
        "choose",
        "create_sweep",
        "agent",
        "select_best",
        "evaluate",
        "gate",
        "promote",
        "deploy",
    } <= ran, ran
    for t in airflow["tasks"]:
        assert t["queued_to_code_s"] > 0 and t["code_s"] >= 0 and t["code_to_success_s"] >= -0.01, t
    assert s["overhead_per_task_s"]["median"] > 0 and report["ratio"] > 0
    assert airflow["speedups"] is True and report["samples"]["airflow_stock"] == []
    plain = report["samples"]["plain"][0]
    assert [st["stage"] for st in plain["stages"]][-1] == "deploy" and plain["deployed"]
    # the scheduler imported the libraries once for every task process
    log = (work / "standalone" / "standalone.log").read_text()
    assert "freestack preload:" in log and "torch" in log.split("freestack preload:", 1)[1].splitlines()[0]
