"""A real backfill through `airflow standalone`'s scheduler (LocalExecutor, SQLite).

Five days of landing data -> `airflow backfill create` -> five lake partitions. A second backfill
with reprocessing rewrites them byte for byte. Then a sweep's agents as mapped tasks, a crashed
scheduler restarted, and ``freestack backfill`` on a second pipeline whose ingest DAG is paused (issue 23,
point 9). The backfill and the crashed scheduler run twice: on a stack with the runtime wing's speed-ups
(the embedded default) and on one without them (stock Airflow), one after the other; the speed-ups change
how soon the scheduler wakes and what it preloads, not what a run does, so the sweep and the paused DAG's
backfill run on the default stack only. Slow (it starts the whole of Airflow): `-m slow`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import psutil
import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
DAYS = [f"2026-11-0{d}" for d in range(1, 6)]


#: the two ways Airflow runs here: with the runtime wing's speed-ups (``freestack up``'s default) and stock
#: (``FREESTACK_SPEEDUPS=0``); a module's stack fixture takes one as its param, and a test marked
#: ``both_modes(fixture)`` runs on a stack of each, started one after the other
MODES = ("speedups", "stock")


def both_modes(fixture: str):
    return pytest.mark.parametrize(fixture, MODES, indirect=True)


#: a test on the speed-ups' stack only: the same stack (and state) as the both_modes tests' first
SPEEDUPS_ONLY = pytest.mark.parametrize("standalone", ["speedups"], indirect=True)


@pytest.fixture(scope="module")
def standalone(request, tmp_path_factory):
    from freestack.embedded import AirflowAPI
    from freestack.serving.processes import stop_process

    mode = getattr(request, "param", "speedups")
    base = tmp_path_factory.mktemp(f"standalone-{mode}")
    specs = base / "pipelines"
    specs.mkdir()
    # train on demand only (a yearly cron): the lake updates of the backfill must not start sweeps
    text = (ROOT / "include" / "pipelines" / "digits.yaml").read_text()
    assert "\ntrain:\n" in text
    text = text.replace("\ntrain:\n", '\ntrain:\n  schedule: "0 0 1 1 *"\n', 1)
    (specs / "digits.yaml").write_text(text)
    # the same pipeline under another name, left paused as its DAGs are created (the paused backfill test)
    (specs / "nightly.yaml").write_text(text.replace("name: digits\n", "name: nightly\n", 1))
    env, proc, log = start_airflow(base, specs, parallelism=4, speedups=mode == "speedups")
    _LOG[:] = [log]
    yield {"env": env, "base": base, "proc": proc, "log": log, "api": AirflowAPI(env)}
    stop_process(proc.pid, grace_seconds=15)  # its process group, as `freestack down` stops it


def start_airflow(
    base: Path, specs: Path, *, parallelism: int, speedups: bool = True
) -> tuple[dict, subprocess.Popen, Path]:
    """`airflow standalone` on a free 127.0.0.1 port with its home, storage and pipelines under ``base``,
    the runtime wing's speed-ups on or off, once its API answers: (environment, process, log file). Stop it
    with ``stop_process(proc.pid)``."""
    import urllib.request

    from freestack.embedded import airflow_env, start_standalone

    port = free_port()
    env = airflow_env()
    env.update(
        {
            "FREESTACK_SPEEDUPS": "1" if speedups else "0",
            "AIRFLOW_HOME": str(base / "airflow"),
            "FREESTACK_HOME": str(base),
            "FREESTACK_STORAGE_ROOT": (base / "storage").as_uri(),
            "FREESTACK_PIPELINES_DIR": str(specs),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        }
    )
    log = base / "standalone.log"
    proc = start_standalone(env, log)
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as r:
                if r.status == 200:
                    return env, proc, log
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"airflow standalone did not start:\n{log.read_text()[-4000:]}")
        time.sleep(2)


def _airflow(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), *args], env=env, capture_output=True, text=True
    )
    if check and out.returncode != 0:
        raise AssertionError(f"airflow {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return out


def _backfill(env, api, *extra: str) -> None:
    """``airflow backfill create`` over DAYS once the previous backfill is closed (the scheduler closes one
    every 30 s; watched through the REST API, an `airflow` command is seconds of CPU), retried while
    SQLite is briefly locked by the scheduler."""
    deadline = time.monotonic() + 180
    while any(not b["completed_at"] for b in api.call("GET", "/backfills?dag_id=digits_ingest")["backfills"]):
        assert time.monotonic() < deadline, _log_tail()
        time.sleep(2)
    while True:
        out = _airflow(
            env,
            "backfill",
            "create",
            "--dag-id",
            "digits_ingest",
            "--from-date",
            DAYS[0],
            "--to-date",
            DAYS[-1],
            *extra,
            check=False,
        )
        if out.returncode == 0:
            return
        text = out.stderr + out.stdout
        transient = "Another backfill is running" in text or "database is locked" in text
        assert transient and time.monotonic() < deadline, text[-3000:]
        time.sleep(3)


def _unpause(api, dag_id: str) -> None:
    """Unpause through the REST API, as the UI's toggle does (an `airflow` command is seconds of CPU)."""
    api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})


def _found(api, path: str) -> dict | None:
    """``GET path`` through the REST API (polled: an `airflow` command is seconds of CPU), or None on 404."""
    from urllib.error import HTTPError

    try:
        return api.call("GET", path)
    except HTTPError as exc:  # 404: the DAG is not parsed yet
        assert exc.code == 404, exc
        return None


def _runs(api, dag_id: str = "digits_ingest") -> list[dict]:
    """The DAG's runs, as the REST API lists them."""
    got = _found(api, f"/dags/{dag_id}/dagRuns?limit=100")
    return [{**r, "run_id": r["dag_run_id"]} for r in (got or {}).get("dag_runs", [])]


def _wait_backfill(api, since: float, timeout: float = 420) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in _runs(api) if r["run_id"].startswith("backfill__")]
        finished = [r for r in runs if r["state"] in ("success", "failed") and r.get("end_date")]
        fresh = [r for r in finished if _ts(r["end_date"]) >= since]
        if len(fresh) >= len(DAYS):
            return runs
        time.sleep(2)
    raise AssertionError(f"backfill did not finish: {_runs(api)}\n{_log_tail()}")


_LOG: list[Path] = []


def _log_tail(chars: int = 6000) -> str:
    """The end of the standalone log, for a failure message (a crashed component shows there)."""
    if not _LOG or not _LOG[0].exists():
        return ""
    return "standalone log, last lines:\n" + _LOG[0].read_text(errors="replace")[-chars:]


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _hashes(base: Path) -> dict[str, str]:
    lake = base / "storage" / "lake" / "digits"
    return {
        p.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(lake.glob("ds=*/part.parquet"))
    }


@both_modes("standalone")
def test_backfill_five_days_then_reprocess_byte_identical(standalone):
    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    env, base = standalone["env"], standalone["base"]
    make_landing(env["FREESTACK_STORAGE_ROOT"], date(2026, 11, 1), 5)

    # wait until the dag processor has serialized the DAG
    deadline = time.monotonic() + 180
    while _found(standalone["api"], "/dags/digits_ingest/details") is None:
        assert time.monotonic() < deadline, standalone["log"].read_text()[-4000:]
        time.sleep(3)

    _unpause(standalone["api"], "digits_ingest")  # new DAGs start paused; a paused DAG's runs wait
    started = time.time()
    _backfill(env, standalone["api"])
    runs = _wait_backfill(standalone["api"], started - 1)
    assert sorted(r["logical_date"][:10] for r in runs) == DAYS
    assert all(r["state"] == "success" for r in runs), runs
    first = _hashes(base)
    assert sorted(first) == [f"ds={d}" for d in DAYS]
    mtimes = {p: p.stat().st_mtime for p in (base / "storage/lake/digits").glob("ds=*/part.parquet")}

    # every listening socket of the embedded Airflow is on the loopback interface
    group = [p for p in psutil.process_iter(["pid"]) if _in_group(p, standalone["proc"].pid)]
    listening = {
        (c.laddr.ip, c.laddr.port) for p in group for c in _conns(p) if c.status == psutil.CONN_LISTEN
    }
    assert listening and all(ip in ("127.0.0.1", "::1") for ip, _ in listening), listening

    # the scheduler marks a backfill complete shortly after its last run; only one may run per DAG
    started = time.time()
    _backfill(env, standalone["api"], "--reprocess-behavior", "completed")
    runs = _wait_backfill(standalone["api"], started - 1)
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


@SPEEDUPS_ONLY
def test_sweep_agents_run_in_parallel_as_mapped_tasks_in_their_pool(standalone):
    """After the backfill filled the lake: a sweep with two agents under the LocalExecutor."""
    import sqlite3

    env = standalone["env"]
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    conf = json.dumps({"end_ds": DAYS[-1], "sweep": True, "sweep_agents": 2, "epochs": 30})
    deadline = time.monotonic() + 120
    while (
        _airflow(
            env, "dags", "trigger", "digits_train", "--run-id", "sweep-e2e", "--conf", conf, check=False
        ).returncode
        != 0
    ):
        assert time.monotonic() < deadline, "digits_train could not be triggered"
        time.sleep(3)
    _unpause(standalone["api"], "digits_train")
    deadline = time.monotonic() + 480
    state = None
    while time.monotonic() < deadline:
        with sqlite3.connect(db, timeout=30) as c:
            row = c.execute(
                "select state from dag_run where dag_id='digits_train' and run_id='sweep-e2e'"
            ).fetchone()
        state = row[0] if row else None
        if state in ("success", "failed"):
            break
        time.sleep(3)
    with sqlite3.connect(db, timeout=30) as c:
        tis = c.execute(
            "select task_id, map_index, state, start_date, end_date, pid, pool from task_instance "
            "where dag_id='digits_train' and run_id='sweep-e2e'"
        ).fetchall()
        pool = c.execute("select slots from slot_pool where pool='freestack_sweep'").fetchone()
    assert state == "success", f"{tis}\n{_log_tail()}"
    assert pool is not None and pool[0] >= 1  # created by the plugin's listener when the scheduler started
    agents = sorted((t[3], t[4], t[5], t[6]) for t in tis if t[0] == "agent")
    assert len(agents) == 2 and all(a[3] == "freestack_sweep" for a in agents)
    if pool[0] >= 2:  # on a machine with 2+ cores the pool lets both agents train at once
        assert agents[1][0] < agents[0][1], agents
    assert agents[0][2] != agents[1][2]  # two worker processes
    states = {t[0]: t[2] for t in tis}
    assert states["train"] == "skipped" and states["select_best"] == "success"
    sweeps = list((standalone["base"] / "storage" / "runs" / "digits").glob("sweep-*/trials/*/trial.json"))
    trials = [json.loads(p.read_text()) for p in sweeps]
    assert len(trials) == 8 and all(len(t["attempts"]) == 1 and t["state"] == "finished" for t in trials)
    # an owner is the agent's slot (dag/run/task/map index) and its try: both mapped agents ran trials
    slots = {t["attempts"][0]["owner"].rsplit("/try", 1)[0] for t in trials}
    assert slots == {f"digits_train/sweep-e2e/agent/{i}" for i in (0, 1)}, slots


def _schedulers(shim) -> list:
    """The shim's live ``airflow scheduler`` children (a killed one may linger as a zombie until reaped)."""
    out = []
    for child in shim.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "scheduler" in child.cmdline():
                out.append(child)
        except psutil.Error:  # gone, or a zombie, between the listing and the look
            continue
    return out


@both_modes("standalone")
def test_a_crashed_scheduler_is_restarted_and_runs_go_on(standalone):
    """The scheduler dies (SIGKILL); freestack's component supervisor starts it again and a new run
    succeeds, instead of every later run staying queued."""
    import signal

    env, log = standalone["env"], standalone["log"]
    shims = [
        p
        for p in psutil.process_iter(["pid", "cmdline"])
        if _in_group(p, standalone["proc"].pid)
        and any(a.endswith("include/bin/airflow") for a in (p.info["cmdline"] or []))
        and "scheduler" in (p.info["cmdline"] or [])
    ]
    assert len(shims) == 1, [p.info["cmdline"] for p in shims]
    scheduler = _schedulers(shims[0])
    assert len(scheduler) == 1, scheduler
    old_pid = scheduler[0].pid
    scheduler[0].send_signal(signal.SIGKILL)

    deadline = time.monotonic() + 60
    while "airflow scheduler exited (status" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, _log_tail()
        time.sleep(1)
    deadline = time.monotonic() + 30
    while not (restarted := [c.pid for c in _schedulers(shims[0]) if c.pid != old_pid]):
        assert time.monotonic() < deadline, _log_tail()
        time.sleep(0.5)
    assert restarted[0] != old_pid
    # the dead scheduler's executor workers (which ignore SIGTERM) were stopped: only the new one's remain
    workers = [
        p
        for p in psutil.process_iter(["pid", "ppid", "cmdline"])
        if _in_group(p, standalone["proc"].pid)
        and " ".join(p.info["cmdline"] or ()).startswith("airflow worker -- LocalExecutor")
    ]
    assert all(p.info["ppid"] == restarted[0] for p in workers), [(p.pid, p.info["ppid"]) for p in workers]

    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    make_landing(env["FREESTACK_STORAGE_ROOT"], date(2026, 11, 6), 1)  # a day no earlier test ingested
    _unpause(standalone["api"], "digits_ingest")  # (already, when the backfill test ran first)
    standalone["api"].call(
        "POST",
        "/dags/digits_ingest/dagRuns",
        {"dag_run_id": "after-crash", "logical_date": "2026-11-06T00:00:00Z"},
    )
    deadline = time.monotonic() + 240
    while True:
        states = {r["run_id"]: r["state"] for r in _runs(standalone["api"])}
        if states.get("after-crash") in ("success", "failed"):
            break
        assert time.monotonic() < deadline, f"{states}\n{_log_tail()}"
        time.sleep(3)
    assert states["after-crash"] == "success", _log_tail()
    assert (standalone["base"] / "storage/lake/digits/ds=2026-11-06/part.parquet").exists()


def _paused(api, dag_id: str) -> bool | None:
    """Whether the DAG is paused, or None while the DAG processor has not created it."""
    dag = _found(api, f"/dags/{dag_id}")
    return None if dag is None else dag["is_paused"]


@SPEEDUPS_ONLY
def test_backfill_of_a_paused_dag_runs_the_days_with_data_and_leaves_it_paused(standalone):
    """``freestack backfill`` on a PAUSED ingest DAG (nightly's, as the DAG processor created it). Airflow
    3.3 leaves a paused DAG's backfill runs queued, and unpausing a ``catchup: false`` DAG makes the
    scheduler start its latest interval. The command unpauses the DAG only for the backfill (after creating
    the runs, so the latest interval, which it covers, gets no scheduled run), pauses it again, prints its
    plan first, and leaves out the day with no landing files."""
    from datetime import UTC, datetime, timedelta

    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    env, base, api = standalone["env"], standalone["base"], standalone["api"]
    # the latest interval: what unpausing would start
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    days = [(yesterday - timedelta(days=k)).isoformat() for k in (3, 2, 1, 0)]
    gap = days[2]  # no landing files: no run may be created for it
    make_landing(env["FREESTACK_STORAGE_ROOT"], yesterday - timedelta(days=3), 2, pipeline="nightly")
    make_landing(env["FREESTACK_STORAGE_ROOT"], yesterday, 1, pipeline="nightly")

    deadline = time.monotonic() + 180  # the DAG processor parses the new DAG (which starts paused)
    while _paused(api, "nightly_ingest") is None:
        assert time.monotonic() < deadline, _log_tail()
        time.sleep(2)
    assert _paused(api, "nightly_ingest") is True

    freestack = [str(Path(sys.executable).with_name("freestack")), "backfill", "nightly"]
    started = time.monotonic()
    while True:
        got = subprocess.run(
            [*freestack, "--start", days[0], "--end", days[-1], "--timeout", "420"],
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
        if "has no DAG" not in got.stderr or time.monotonic() - started > 120:  # not serialized yet
            break
        time.sleep(3)
    took = time.monotonic() - started
    assert got.returncode == 0, f"{got.stdout}\n{got.stderr}\n{_log_tail()}"
    lines = got.stdout.splitlines()
    # the plan, before anything runs: the DAG, every day, which have data and which are left out
    assert "nightly_ingest" in lines[0] and "paused" in lines[0], got.stdout
    for d in (days[0], days[1], days[3]):
        assert any(d in ln and "landing file" in ln for ln in lines), got.stdout
    assert any(gap in ln and "left out" in ln and "no landing files" in ln for ln in lines), got.stdout
    assert "paused again" in got.stdout, got.stdout

    runs = _runs(api, "nightly_ingest")
    assert sorted(r["logical_date"][:10] for r in runs) == [days[0], days[1], days[3]], runs
    assert all(r["state"] == "success" and r["run_id"].startswith("backfill__") for r in runs), runs
    assert _paused(api, "nightly_ingest") is True, "the DAG must be paused again, as the backfill found it"
    lake = base / "storage" / "lake" / "nightly"
    assert sorted(p.name for p in lake.glob("ds=*")) == [f"ds={d}" for d in (days[0], days[1], days[3])]

    # unpausing now starts nothing: the latest interval has its (backfill) run
    _unpause(api, "nightly_ingest")
    time.sleep(10)  # several scheduler loops (heartbeat 1 s)
    after = _runs(api, "nightly_ingest")
    assert sorted(r["run_id"] for r in after) == sorted(r["run_id"] for r in runs), after
    print(f"backfill of a paused DAG, 3 days in 2 backfills: {took:.0f} s")
