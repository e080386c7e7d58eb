"""Orchestration benchmark: what Airflow costs around the demo pipeline's work, and DAG parse time.

    python -m bench.orchestration.run [--quick] [--days 5] [--specs 50] [--out bench/results/orchestration.json]

1. **Parse time.** The dags file (``dags/freestack_pipelines.py``) over a folder of 1 spec (the demo's)
   and of ``--specs`` specs (copies of it), three ways:
   - ``python -X importtime`` of a fresh interpreter running the file: every import it pays, and the
     wall time of the file itself once Airflow and the ``airflow.*`` modules the file names are imported
     (what a DAG-processor child pays: the processor has those loaded before it forks the parse); and
     the heavy libraries left in ``sys.modules`` (must be none of ``MUST_NOT``);
   - what the DAG processor records: ``airflow dag-processor --num-runs 1`` against a fresh metadata
     database, with Airflow's StatsD metrics sent to a UDP listener here: its
     ``dag_processing.last_duration`` timing for the file (from the start of the processor's child for
     the file until the processor has its result: running the file, serializing its DAGs and sending
     them back; not the writes to the metadata database that follow).
2. **The demo pipeline under ``airflow standalone``** (LocalExecutor, SQLite, 127.0.0.1): ``--days``
   days of landing data (the last complete days), ``<p>_ingest`` unpaused with catchup so that the
   scheduler makes one run per day, then ``<p>_train`` triggered through the REST API (as the UI's
   Trigger button does) with the sweep (``--agents`` agents) through promote and deploy. The freestack plugin's task-timings
   listener (``FREESTACK_TASK_TIMINGS``) records when each task's ``execute`` started; the metadata
   database has when it was queued (``queued_dttm``), when ``execute`` returned (``end_date``, taken in
   the task process) and when the success was committed (``updated_at``). Per task: queued -> code
   start, code end -> success committed, and scheduled -> queued (the scheduler's own latency);
   median and p90.
   End-to-end: the ingest runs' span (first run queued to last run done) plus the train run's.
3. **The same pipeline in one plain process** (:mod:`bench.orchestration.plain`): the same operators'
   ``execute`` in order, agents in parallel processes, on a fresh storage root. (2) and (3) run
   ``--repeat`` times, alternating, each on a fresh Airflow home and storage root; ratio = the median
   of (2) / the median of (3). A single pair varies by 20% or more on a small shared machine, mostly in
   the training both runs do, so one pair says little.

Targets (``summary.checks``): median per-task overhead <= 0.5 s; end-to-end <= 1.3 x plain; 50 specs
parse in < 2 s; no heavy import at parse time. ``--quick`` (the test suite's smoke size): 1 day, a
2-trial sweep of 2 epochs, 3 specs for parse time, one repeat.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import free_port, host, parser, write_report

REPO = Path(__file__).resolve().parents[2]
DAG_FILE = REPO / "dags" / "freestack_pipelines.py"
DIGITS = REPO / "include" / "pipelines" / "digits.yaml"
MUST_NOT = (
    "torch",
    "pandas",
    "pyarrow",
    "wandb",
    "numpy",
    "scipy",
    "sklearn",
    "transformers",
    "peft",
    "matplotlib",
)
HEAVY = (*MUST_NOT, "safetensors", "huggingface_hub")
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


# ---------------------------------------------------------------------------------------------------------
# specs


def write_specs(folder: Path, n: int, *, quick: bool = False, first_day: str | None = None) -> list[Path]:
    """``n`` pipeline specs: the demo's as ``digits``, then copies named ``p01``... (each its own pipeline).
    Training runs on demand only (a yearly cron), so that lake updates start no train runs by themselves.
    With ``first_day``, ingest starts that day with catchup: the scheduler itself creates one run per
    day from then to the last complete day."""
    folder.mkdir(parents=True, exist_ok=True)
    text = DIGITS.read_text()
    for line in ("\ntrain:\n", "\nname: digits\n", "\nstart_date: 2026-11-01\n", "\ncatchup: false\n"):
        assert line in text, f"the demo spec changed shape: no {line.strip()!r}"
    text = text.replace("\ntrain:\n", '\ntrain:\n  schedule: "0 0 1 1 *"\n', 1)
    if first_day:
        text = text.replace("\nstart_date: 2026-11-01\n", f"\nstart_date: {first_day}\n", 1)
        text = text.replace("\ncatchup: false\n", "\ncatchup: true\n", 1)
    if quick:
        text = re.sub(r"\n  run_cap: \d+\n", "\n  run_cap: 2\n", text, count=1)
        text = re.sub(r"\n  epochs: \d+\n", "\n  epochs: 2\n", text, count=1)
        # two epochs do not make a good model: let the gate promote it, so that deploy runs
        text = re.sub(r"\n  threshold: [0-9.]+\n", "\n  threshold: 0.0\n", text, count=1)
        text = re.sub(r"\n  max_regression: .*\n", "\n", text, count=1)
    paths = []
    for i in range(n):
        name = "digits" if i == 0 else f"p{i:02d}"
        p = folder / f"{name}.yaml"
        p.write_text(text.replace("\nname: digits\n", f"\nname: {name}\n", 1))
        paths.append(p)
    return paths


def _env(base: Path, specs: Path, **extra: str) -> dict[str, str]:
    from freestack.embedded import airflow_env

    env = airflow_env()
    env.update(
        {
            "AIRFLOW_HOME": str(base / "airflow"),
            "FREESTACK_HOME": str(base),
            "FREESTACK_STORAGE_ROOT": (base / "storage").as_uri(),
            "FREESTACK_PIPELINES_DIR": str(specs),
            "FREESTACK_SERVING_DIR": str(base / "serving"),
            "WANDB_MODE": "offline",
            **{
                k: str(base / "wandb" / k.lower())
                for k in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR")
            },
            "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
            **extra,
        }
    )
    env.pop("FREESTACK_TASK_TIMINGS", None)
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------------------
# 1. parse time

_PARSE_PROBE = r"""
import importlib, json, runpy, sys, time
t0 = time.perf_counter()
import airflow.sdk  # what a DAG-processor child has loaded before it runs a DAG file
# and the airflow.* modules the file names, which the processor imports before it forks the parse
from airflow.utils.file import iter_airflow_imports
for module in iter_airflow_imports(sys.argv[1]):
    importlib.import_module(module)
t1 = time.perf_counter()
ns = runpy.run_path(sys.argv[1])
t2 = time.perf_counter()
from airflow.sdk import DAG
dags = [v for v in ns.values() if isinstance(v, DAG)]
print(json.dumps({"airflow_import_s": t1 - t0, "file_s": t2 - t1, "dags": len(dags),
                  "tasks": sum(len(d.tasks) for d in dags),
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] in %r and "." not in m)}))
"""


def importtime(specs: Path, base: Path) -> dict[str, Any]:
    env = _env(base, specs)
    probe = _PARSE_PROBE % (HEAVY,)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe, str(DAG_FILE)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"parsing the dags file failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # "import time: self [us] | cumulative | imported package"; top-level lines have no indentation
    rows = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)))
    top = sorted(((cum, name) for _, cum, depth, name in rows if depth == 0), reverse=True)[:12]
    freestack = sum(self_ for self_, _, _, name in rows if name.startswith("freestack"))
    return {
        "interpreter_wall_s": round(wall, 3),
        "imports_total_s": round(sum(r[0] for r in rows) / 1e6, 3),
        "airflow_import_s": round(result["airflow_import_s"], 3),
        "file_s": round(result["file_s"], 3),
        "freestack_modules_self_s": round(freestack / 1e6, 3),
        "dags": result["dags"],
        "tasks": result["tasks"],
        "heavy_modules_loaded": result["modules"],
        "top_imports_cumulative_ms": [{"module": n, "ms": round(c / 1000, 1)} for c, n in top],
    }


class StatsdListener:
    """A UDP socket on 127.0.0.1 collecting StatsD lines (``name:value|type[|#tags]``)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.lines.extend(data.decode(errors="replace").splitlines())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def fresh_db(env: dict[str, str], db: Path, template: Path) -> None:
    """A freshly migrated metadata database at ``db``: ``airflow db migrate`` once, a copy of that empty
    database (``template``) for every later parse folder; the same tables either way, a migration less."""
    if db.exists():
        return
    if template.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, db)
        return
    subprocess.run(
        [AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, check=True, timeout=600
    )
    shutil.copyfile(db, template)


def dag_processor(specs: Path, base: Path) -> dict[str, Any]:
    """``airflow dag-processor --num-runs 1`` and its ``dag_processing.last_duration`` StatsD timing."""
    listener = StatsdListener()
    env = _env(
        base,
        specs,
        AIRFLOW__METRICS__STATSD_ON="True",
        AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
        AIRFLOW__METRICS__STATSD_PORT=str(listener.port),
        AIRFLOW__METRICS__STATSD_PREFIX="airflow",
    )
    try:
        fresh_db(env, base / "airflow" / "airflow.db", base.parent / "migrated-airflow.db")
        t0 = time.perf_counter()
        out = subprocess.run(
            [AIRFLOW, "dag-processor", "--num-runs", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        wall = time.perf_counter() - t0
        time.sleep(0.5)
    finally:
        listener.close()
    if out.returncode != 0:
        raise SystemExit(f"airflow dag-processor failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    durations = []
    for line in listener.lines:
        if "dag_processing.last_duration" in line and "freestack_pipelines" in line:
            m = re.search(r":([0-9.]+)\|ms", line)
            if m:  # Airflow hands the timer its duration in seconds (a float), which goes out as is
                durations.append(float(m.group(1)))
    if not durations:
        raise SystemExit(
            "the DAG processor sent no dag_processing.last_duration metric for the dags file; "
            f"it sent: {sorted({ln.split(':')[0] for ln in listener.lines})[:20]}"
        )
    return {"last_duration_s": round(durations[-1], 3), "processor_wall_s": round(wall, 3)}


def parse_bench(n_specs: int, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in (1, n_specs):
        specs = work / f"specs_{n}"
        write_specs(specs, n)
        base = work / f"parse_{n}"
        base.mkdir(parents=True, exist_ok=True)
        out[f"specs_{n}"] = {
            "specs": n,
            "importtime": importtime(specs, base),
            "dag_processor": dag_processor(specs, base),
        }
        print(
            f"parse {n:>3} spec(s): file {out[f'specs_{n}']['importtime']['file_s']:.2f} s "
            f"(+ Airflow import {out[f'specs_{n}']['importtime']['airflow_import_s']:.2f} s), "
            f"dag processor {out[f'specs_{n}']['dag_processor']['last_duration_s']:.2f} s, "
            f"{out[f'specs_{n}']['importtime']['dags']} DAGs",
            flush=True,
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# 2. the pipeline under airflow standalone


def _db_rows(db: Path, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def _ts(value: Any) -> float | None:
    if value is None:
        return None
    text = str(value).replace("Z", "+00:00")
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _wait_runs(db: Path, dag_id: str, n: int, timeout: float, log: Path) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            runs = _db_rows(
                db,
                "SELECT run_id, state, queued_at, start_date, end_date FROM dag_run WHERE dag_id = ?",
                (dag_id,),
            )
        except sqlite3.OperationalError:
            runs = []
        done = [r for r in runs if r["state"] in ("success", "failed")]
        if len(done) >= n:
            failed = [r for r in done if r["state"] != "success"]
            if failed:
                raise SystemExit(f"{dag_id} runs failed: {failed}; see {log}")
            return done
        time.sleep(1)
    raise SystemExit(f"{dag_id}: {n} runs did not finish in {timeout:.0f} s; see {log}")


def _rest(env: dict[str, str], method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A call to Airflow's public REST API as the admin that ``airflow standalone`` made (the password
    file ``freestack up`` reads too), with a JWT from ``/auth/token``."""
    import urllib.request

    from freestack.embedded import standalone_files

    url = env["AIRFLOW__API__BASE_URL"]
    password = json.loads(standalone_files(env)[2].read_text())["admin"]
    req = urllib.request.Request(
        f"{url}/auth/token",
        data=json.dumps({"username": "admin", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        token = json.loads(r.read())["access_token"]
    req = urllib.request.Request(
        f"{url}/api/v2{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def standalone_bench(
    work: Path, days: list[str], agents: int, quick: bool, name: str = "standalone", speedups: bool = True
) -> dict[str, Any]:
    from freestack.embedded import healthy, start_standalone, warm_execution_api
    from freestack.serving.processes import free_port_block, stop_process

    base = work / name
    specs = base / "pipelines"
    write_specs(specs, 1, quick=quick, first_day=days[0])
    port = free_port()
    timings = base / "task_timings.jsonl"
    env = _env(
        base,
        specs,
        FREESTACK_TASK_TIMINGS=str(timings),
        FREESTACK_SERVE_PORT=str(free_port_block()),
        FREESTACK_SPEEDUPS="1" if speedups else "0",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
    )
    log = base / "standalone.log"
    proc = start_standalone(env, log)
    db = base / "airflow" / "airflow.db"
    try:
        deadline = time.monotonic() + 300
        while not healthy(f"http://127.0.0.1:{port}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"airflow standalone did not start; see {log}")
            time.sleep(1)
        warm_execution_api(f"http://127.0.0.1:{port}")  # what `freestack up` does before it returns
        sys.path.insert(0, str(REPO / "include"))
        from demo.landing import make_landing

        make_landing(env["FREESTACK_STORAGE_ROOT"], date.fromisoformat(days[0]), len(days))
        deadline = time.monotonic() + 240
        while True:  # the DAG processor has serialized both DAGs
            try:
                got = {r["dag_id"] for r in _db_rows(db, "SELECT dag_id FROM serialized_dag")}
            except sqlite3.OperationalError:
                got = set()
            if {"digits_ingest", "digits_train"} <= got:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the DAGs were not serialized in time; see {log}")
            time.sleep(1)
        # unpausing lets the scheduler catch up: one ingest run per day, days[0] to days[-1] (yesterday);
        # through the REST API, as the UI's toggle does (an `airflow dags unpause` is an interpreter start each)
        for dag_id in ("digits_train", "digits_ingest"):
            _rest(env, "PATCH", f"/dags/{dag_id}", {"is_paused": False})
        ingest_runs = _wait_runs(db, "digits_ingest", len(days), 900, log)
        # triggered the way the UI's Trigger button does it: the REST API, as the standalone admin
        t_trigger = time.time()
        run = _rest(
            env,
            "POST",
            "/dags/digits_train/dagRuns",
            {"logical_date": None, "conf": {"end_ds": days[-1], "sweep_agents": agents}},
        )
        trigger_s = time.time() - t_trigger
        train_runs = _wait_runs(db, "digits_train", 1, 1800, log)
        memory = _executor_memory(proc.pid)
        tis = _db_rows(
            db,
            "SELECT dag_id, run_id, task_id, map_index, try_number, state, scheduled_dttm, queued_dttm, "
            "start_date, end_date, updated_at, duration FROM task_instance",
        )
    finally:
        stop_process(proc.pid, grace_seconds=60)  # its process group, as `freestack down` stops it
        _stop_model_servers(env)
    events: dict[tuple, dict[str, float]] = {}
    for line in timings.read_text().splitlines() if timings.exists() else []:
        e = json.loads(line)
        key = (e["dag_id"], e["run_id"], e["task_id"], e["map_index"] if e["map_index"] is not None else -1)
        events.setdefault(key, {})[e["event"]] = e["t"]
    tasks = []
    for ti in tis:
        if ti["state"] != "success":
            continue
        key = (ti["dag_id"], ti["run_id"], ti["task_id"], ti["map_index"])
        ev = events.get(key, {})
        queued, end, done = _ts(ti["queued_dttm"]), _ts(ti["end_date"]), _ts(ti["updated_at"])
        if "start" not in ev or queued is None or end is None or done is None:
            continue  # a branch's skipped tasks never ran
        # end_date is taken in the task process as soon as execute returns (before the listener's
        # "end"); updated_at is when the API server committed the success to the database
        tasks.append(
            {
                "dag_id": ti["dag_id"],
                "task_id": ti["task_id"],
                "map_index": ti["map_index"],
                "scheduled_to_queued_s": round(queued - _ts(ti["scheduled_dttm"]), 3)
                if ti["scheduled_dttm"]
                else None,
                "queued_to_code_s": round(ev["start"] - queued, 3),
                "queued_to_started_s": round(_ts(ti["start_date"]) - queued, 3) if ti["start_date"] else None,
                "code_s": round(end - ev["start"], 3),
                "code_to_success_s": round(done - end, 3),
            }
        )
    ingest_span = max(_ts(r["end_date"]) for r in ingest_runs) - min(_ts(r["queued_at"]) for r in ingest_runs)
    train = train_runs[-1]
    if train["run_id"] != run["dag_run_id"]:
        raise SystemExit(
            f"digits_train ran {train['run_id']}, not the run triggered ({run['dag_run_id']}); see {log}"
        )
    train_span = _ts(train["end_date"]) - _ts(train["queued_at"])
    return {
        "tasks": tasks,
        "ingest_span_s": round(ingest_span, 3),
        "train_span_s": round(train_span, 3),
        "wall_s": round(ingest_span + train_span, 3),
        "tasks_run": len(tasks),
        "train_run_id": train["run_id"],
        "speedups": speedups,
        "trigger_request_s": round(trigger_s, 3),
        "train_run_started_after_s": round(_ts(train["start_date"]) - _ts(train["queued_at"]), 3),
        "scheduler_and_workers_memory": memory,
        "trial_epochs": _trial_epochs(Path(env["FREESTACK_STORAGE_ROOT"].removeprefix("file://"))),
    }


def _executor_memory(pgid: int) -> dict[str, Any]:
    """Memory of the scheduler and its LocalExecutor workers: PSS (each shared page counted once, split
    among the processes sharing it) is what they cost together; the RSS sum counts shared pages again
    for every process."""
    import psutil

    pss = rss = n = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if not ("airflow scheduler" in cmd or "LocalExecutor" in cmd):
            continue
        try:
            if os.getpgid(p.pid) != pgid:
                continue
            m = p.memory_full_info()
        except (psutil.Error, OSError):
            continue
        pss, rss, n = pss + m.pss, rss + m.rss, n + 1
    return {"processes": n, "pss_mib": round(pss / 2**20), "rss_sum_mib": round(rss / 2**20)}


def _trial_epochs(storage: Path) -> int:
    """Epochs the sweep's trials trained (the work), from the controller's trial records."""
    total = 0
    for path in storage.glob("runs/*/*/trials/*/trial.json"):
        try:
            total += int(json.loads(path.read_text()).get("epochs_run") or 0)
        except (ValueError, OSError):
            continue
    return total


def _stop_model_servers(env: dict[str, str]) -> None:
    """Stop the model server the pipeline's deploy started (it outlives Airflow on purpose)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "freestack.cli",
            "serve",
            "--root",
            env["FREESTACK_STORAGE_ROOT"],
            "stop",
            "digits",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------------------------------------------------
# 3. the same pipeline in one plain process


def plain_bench(
    work: Path, days: list[str], agents: int, quick: bool, run_id: str | None, name: str = "plain"
) -> dict[str, Any]:
    from freestack.serving.processes import free_port_block

    base = work / name
    specs = base / "pipelines"
    write_specs(specs, 1, quick=quick)
    env = _env(base, specs, FREESTACK_SERVE_PORT=str(free_port_block()))
    sys.path.insert(0, str(REPO / "include"))
    from demo.landing import make_landing

    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "from bench.orchestration.plain import run_pipeline\n"
        "from freestack.runtime.preload import MODULES, preload\n"
        "preload(MODULES)  # before the clock, as the scheduler does before the run\n"
        f"bag = DagBag(dag_folder={str(DAG_FILE)!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        f"print(json.dumps(run_pipeline(bag.dags, 'digits', {days!r}, {days[-1]!r}, {agents}, {run_id!r})))\n"
    )
    make_landing(env["FREESTACK_STORAGE_ROOT"], date.fromisoformat(days[0]), len(days))
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=3600
        )
    finally:
        _stop_model_servers(env)
    if out.returncode != 0:
        raise SystemExit(f"the plain pipeline failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["trial_epochs"] = _trial_epochs(base / "storage")
    return result


# ---------------------------------------------------------------------------------------------------------
# report


def _q(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return round(values[lo] + (values[hi] - values[lo]) * (k - lo), 3)


def summarise(
    parse: dict[str, Any], airflow: list[dict[str, Any]], plain: list[dict[str, Any]], n_specs: int
) -> dict[str, Any]:
    """The parts that ran (``--parts``): per-task figures over the tasks of every repeat, the pipeline's
    wall times as the median of the repeats (each pair ran back to back on the same machine) and the ratio
    of those medians; the parse times and the heavy modules loaded at parse time."""
    summary = {
        **(_pipeline_summary(airflow, plain) if airflow and plain else {}),
        **_parse_summary(parse, n_specs),
    }
    overhead = summary.get("overhead_per_task_s", {}).get("median")
    summary["checks"] = {
        "target": "median per-task overhead <= 0.5 s; pipeline <= 1.3 x plain; 50 specs parse < 2 s; "
        f"none of {', '.join(MUST_NOT)} at parse time",
        "overhead_ok": overhead <= 0.5 if overhead is not None else None,
        "ratio_ok": summary["ratio"] <= 1.3 if summary.get("ratio") is not None else None,
        "parse_ok": summary[f"parse_{n_specs}_specs_s"] < 2 if parse and n_specs >= 50 else None,
        "imports_ok": not summary["parse_heavy_imports"] if parse else None,
    }
    return summary


def _pipeline_summary(airflow: list[dict[str, Any]], plain: list[dict[str, Any]]) -> dict[str, Any]:
    tasks = [t for run in airflow for t in run["tasks"]]
    before = [t["queued_to_code_s"] for t in tasks]
    after = [t["code_to_success_s"] for t in tasks]
    total = [t["queued_to_code_s"] + t["code_to_success_s"] for t in tasks]
    sched = [t["scheduled_to_queued_s"] for t in tasks if t["scheduled_to_queued_s"] is not None]
    summary = {
        "tasks": len(tasks),
        "queued_to_code_s": {"median": _q(before, 0.5), "p90": _q(before, 0.9)},
        "code_to_success_s": {"median": _q(after, 0.5), "p90": _q(after, 0.9)},
        "overhead_per_task_s": {"median": _q(total, 0.5), "p90": _q(total, 0.9)},
        "scheduled_to_queued_s": {"median": _q(sched, 0.5), "p90": _q(sched, 0.9)},
        "repeats": len(airflow),
        "pipeline_airflow_s": _q([r["wall_s"] for r in airflow], 0.5),
        "pipeline_plain_s": _q([r["wall_s"] for r in plain], 0.5),
        "pipeline_airflow_runs_s": [r["wall_s"] for r in airflow],
        "pipeline_plain_runs_s": [r["wall_s"] for r in plain],
        "ratio_per_repeat": [
            round(a["wall_s"] / p["wall_s"], 3) for a, p in zip(airflow, plain, strict=False)
        ],
    }
    summary["ratio"] = round(summary["pipeline_airflow_s"] / summary["pipeline_plain_s"], 3)
    return summary


def _parse_summary(parse: dict[str, Any], n_specs: int) -> dict[str, Any]:
    if not parse:
        return {}
    heavy = sorted(
        {m for k in parse.values() for m in k["importtime"]["heavy_modules_loaded"]} & set(MUST_NOT)
    )
    return {
        "parse_1_spec_s": parse["specs_1"]["dag_processor"]["last_duration_s"],
        f"parse_{n_specs}_specs_s": parse[f"specs_{n_specs}"]["dag_processor"]["last_duration_s"],
        "parse_heavy_imports": heavy,
    }


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    m = host()
    m["airflow"] = version("apache-airflow")
    m["executor"] = "LocalExecutor (airflow standalone, SQLite)"
    return m


def _print_summary(s: dict[str, Any], label: str, repeats: int, n_specs: int) -> None:
    if "ratio" in s:
        print(
            f"[{label}] per-task overhead: median {s['overhead_per_task_s']['median']} s, "
            f"p90 {s['overhead_per_task_s']['p90']} s (queued->code {s['queued_to_code_s']['median']} s, "
            f"code->success {s['code_to_success_s']['median']} s)"
        )
        print(
            f"[{label}] pipeline (median of {repeats}): airflow {s['pipeline_airflow_s']} s vs plain "
            f"{s['pipeline_plain_s']} s = {s['ratio']}x (per repeat: {s['ratio_per_repeat']})"
        )
    if "parse_1_spec_s" in s:
        print(
            f"parse: 1 spec {s['parse_1_spec_s']} s, {n_specs} specs {s[f'parse_{n_specs}_specs_s']} s; "
            f"heavy imports: {s['parse_heavy_imports'] or 'none'}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.orchestration.run", __doc__, out="orchestration.json", workdir=True)
    ap.add_argument(
        "--quick", action="store_true", help="smoke size: 1 day, 2-trial sweep of 2 epochs, 3 specs"
    )
    ap.add_argument("--days", type=int, default=None, help="days of landing data (default 5; 1 with --quick)")
    ap.add_argument(
        "--specs", type=int, default=None, help="specs in the parse-time folder (default 50; 3 quick)"
    )
    ap.add_argument("--agents", type=int, default=2)
    ap.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="pipeline runs under Airflow and plain, alternating (default 5; 1 with --quick)",
    )
    ap.add_argument("--parts", default="parse,airflow,plain", help="a subset of parse,airflow,plain")
    ap.add_argument(
        "--speedups",
        choices=("on", "off", "both"),
        default="both",
        help="the runtime speed-ups (FREESTACK_SPEEDUPS) in the Airflow runs: on (the embedded "
        "stack's default), off (stock Airflow behaviour) or both, alternating (default)",
    )
    args = ap.parse_args(argv)
    n_days = args.days or (1 if args.quick else 5)
    n_specs = args.specs or (3 if args.quick else 50)
    repeats = max(1, args.repeat or (1 if args.quick else 5))
    # the last complete days (UTC), so that the scheduler's catchup makes exactly these runs
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n_days - i)).isoformat() for i in range(n_days)]
    parts = set(args.parts.split(","))
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="freestack-bench-orch-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        parse = parse_bench(n_specs, work) if "parse" in parts else {}
        modes = {"on": [True], "off": [False], "both": [True, False]}[args.speedups]
        airflow: dict[bool, list[dict[str, Any]]] = {m: [] for m in modes}
        plain: list[dict[str, Any]] = []
        for i in range(repeats):
            suffix = f"_{i + 1}" if i else ""
            run_id = None
            for on in modes if "airflow" in parts else ():
                label = "speed-ups on" if on else "stock"
                airflow[on].append(
                    standalone_bench(
                        work,
                        days,
                        args.agents,
                        args.quick,
                        f"standalone{'' if on else '_stock'}{suffix}",
                        speedups=on,
                    )
                )
                run_id = run_id or airflow[on][-1]["train_run_id"]
                print(
                    f"[{i + 1}/{repeats}] airflow standalone ({label}): {airflow[on][-1]['wall_s']:.1f} s "
                    f"({airflow[on][-1]['tasks_run']} tasks)",
                    flush=True,
                )
            if "plain" in parts:
                # the scheduler's train run id seeds the sweep: the plain run trains the very same trials
                plain.append(plain_bench(work, days, args.agents, args.quick, run_id, f"plain{suffix}"))
                print(f"[{i + 1}/{repeats}] plain process: {plain[-1]['wall_s']:.1f} s", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {
        "name": "orchestration",
        "machine": machine(),
        "params": {
            "days": days,
            "agents": args.agents,
            "specs": n_specs,
            "quick": args.quick,
            "repeats": repeats,
            "speedups": args.speedups,
            "pipeline": "digits_ingest x days (scheduler catchup), then digits_train (sweep -> deploy) "
            "triggered through the REST API",
        },
        "samples": {
            "parse": parse,
            "airflow": airflow.get(True, []),
            "airflow_stock": airflow.get(False, []),
            "plain": plain,
        },
    }
    for on, key in ((True, "summary"), (False, "summary_stock")):
        ran = airflow.get(on) and plain
        if ran or (parse and on == modes[0]):  # what ran: the pipeline's sides, the parse, or both
            report[key] = s = summarise(parse, airflow[on] if ran else [], plain if ran else [], n_specs)
            _print_summary(s, "speed-ups on" if on else "stock Airflow", repeats, n_specs)
    report["ratio"] = report.get("summary", report.get("summary_stock", {})).get("ratio")
    if "summary_stock" in report:
        report["ratio_stock"] = report["summary_stock"]["ratio"]
    print(f"report: {write_report(report, args.out, indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
