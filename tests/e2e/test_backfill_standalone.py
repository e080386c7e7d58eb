"""A real backfill through `airflow standalone`'s scheduler (LocalExecutor, SQLite).

Five days of landing data -> `airflow backfill create` -> five lake partitions. A second backfill
with reprocessing rewrites them byte for byte. Slow (it starts the whole of Airflow): `-m slow`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
DAYS = [f"2026-11-0{d}" for d in range(1, 6)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    from freestack.cli import airflow_env, start_standalone

    base = tmp_path_factory.mktemp("standalone")
    specs = base / "pipelines"
    specs.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", specs / "digits.yaml")
    port = _free_port()
    env = airflow_env()
    env.update(
        {
            "AIRFLOW_HOME": str(base / "airflow"),
            "FREESTACK_HOME": str(base),
            "FREESTACK_STORAGE_ROOT": (base / "storage").as_uri(),
            "FREESTACK_PIPELINES_DIR": str(specs),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__CORE__PARALLELISM": "4",
        }
    )
    log = base / "standalone.log"
    proc = start_standalone(env, log)
    url = f"http://127.0.0.1:{port}/api/v2/monitor/health"
    deadline = time.monotonic() + 300
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"airflow standalone did not start:\n{log.read_text()[-4000:]}")
        time.sleep(2)
    yield {"env": env, "base": base, "proc": proc, "log": log}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _airflow(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), *args], env=env, capture_output=True, text=True
    )
    if check and out.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out


def _backfill(env, *extra: str) -> None:
    """``airflow backfill create`` over DAYS, retried while the previous backfill is still being
    closed by the scheduler or SQLite is briefly locked by it."""
    deadline = time.monotonic() + 180
    while True:
        out = _airflow(env, "backfill", "create", "--dag-id", "digits_ingest", "--from-date", DAYS[0],
                       "--to-date", DAYS[-1], *extra, check=False)
        if out.returncode == 0:
            return
        text = out.stderr + out.stdout
        transient = "Another backfill is running" in text or "database is locked" in text
        assert transient and time.monotonic() < deadline, text[-3000:]
        time.sleep(3)


def _runs(env) -> list[dict]:
    out = _airflow(env, "dags", "list-runs", "digits_ingest", "-o", "json", check=False)
    if out.returncode != 0:
        return []
    for line in out.stdout.splitlines():  # the JSON is one line; log lines may surround it
        if line.startswith(("[{", "[]")):
            return json.loads(line)
    return []


def _wait_backfill(env, since: float, timeout: float = 420) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in _runs(env) if r["run_id"].startswith("backfill__")]
        finished = [r for r in runs if r["state"] in ("success", "failed") and r.get("end_date")]
        fresh = [r for r in finished if _ts(r["end_date"]) >= since]
        if len(fresh) >= len(DAYS):
            return runs
        time.sleep(5)
    raise AssertionError(f"backfill did not finish: {_runs(env)}")


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _hashes(base: Path) -> dict[str, str]:
    lake = base / "storage" / "lake" / "digits"
    return {
        p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(lake.glob("ds=*/part.parquet"))
    }


def test_backfill_five_days_then_reprocess_byte_identical(standalone):
    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    env, base = standalone["env"], standalone["base"]
    make_landing(env["FREESTACK_STORAGE_ROOT"], date(2026, 11, 1), 5)

    # wait until the dag processor has serialized the DAG
    deadline = time.monotonic() + 180
    while _airflow(env, "backfill", "create", "--dag-id", "digits_ingest", "--from-date", DAYS[0],
                   "--to-date", DAYS[-1], "--dry-run", check=False).returncode != 0:
        assert time.monotonic() < deadline, standalone["log"].read_text()[-4000:]
        time.sleep(3)

    _airflow(env, "dags", "unpause", "digits_ingest")  # new DAGs start paused; a paused DAG's runs wait
    started = time.time()
    _backfill(env)
    runs = _wait_backfill(env, started - 1)
    assert sorted(r["logical_date"][:10] for r in runs) == DAYS
    assert all(r["state"] == "success" for r in runs), runs
    first = _hashes(base)
    assert sorted(first) == [f"ds={d}" for d in DAYS]
    mtimes = {p: p.stat().st_mtime for p in (base / "storage/lake/digits").glob("ds=*/part.parquet")}

    # every listening socket of the embedded Airflow is on the loopback interface
    group = [p for p in psutil.process_iter(["pid"]) if _in_group(p, standalone["proc"].pid)]
    listening = {
        (c.laddr.ip, c.laddr.port)
        for p in group
        for c in _conns(p)
        if c.status == psutil.CONN_LISTEN
    }
    assert listening and all(ip in ("127.0.0.1", "::1") for ip, _ in listening), listening

    # the scheduler marks a backfill complete shortly after its last run; only one may run per DAG
    started = time.time()
    _backfill(env, "--reprocess-behavior", "completed")
    runs = _wait_backfill(env, started - 1)
    assert all(r["state"] == "success" for r in runs), runs
    assert _hashes(base) == first, "reprocessing the same landing data must give byte-identical partitions"
    rewritten = [p for p, t in mtimes.items() if p.stat().st_mtime > t]
    assert len(rewritten) == len(DAYS), "the reprocessing backfill did not rewrite the partitions"


def _in_group(proc: psutil.Process, pgid: int) -> bool:
    try:
        return os.getpgid(proc.pid) == pgid
    except (ProcessLookupError, PermissionError):
        return False


def _conns(proc: psutil.Process):
    try:
        return proc.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
