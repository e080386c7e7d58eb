"""The same DAGs, scaled out: Postgres, Redis + CeleryExecutor with two workers, S3 (SeaweedFS).

Everything is started natively on 127.0.0.1 (``tests/scaleout/stack.py``, what ``docker/compose.yaml``
runs). The pipeline is driven as a user would, through Airflow's REST API: a 3-day backfill of
``digits_ingest``, then ``digits_train`` (a 2-agent sweep -> evaluate -> gate -> deploy). Then the
failure cases: a worker killed in the middle of a sweep, PostgreSQL restarted during a run, and the S3
server unreachable for a while. Run apart with ``make test-scaleout`` (``-m scaleout``).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, date, datetime, timedelta

import pytest

from tests.scaleout.stack import BUCKET, ROOT, Stack, missing_components

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]

DAYS = [date(2026, 11, 1) + timedelta(days=i) for i in range(3)]
TERMINAL = ("success", "failed")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    missing = missing_components()
    if missing:  # `make test` installs them (make scaleout-deps); say what is missing when run by hand
        pytest.skip("the scaled-out stack needs: " + "; ".join(missing))
    s = Stack(tmp_path_factory.mktemp("scaleout"))
    text = (ROOT / "include" / "pipelines" / "digits.yaml").read_text()
    assert "\ntrain:\n" in text  # train on demand only: the backfill's lake updates must not start sweeps
    (s.specs / "digits.yaml").write_text(text.replace("\ntrain:\n", '\ntrain:\n  schedule: "0 0 1 1 *"\n', 1))
    try:
        s.start()
        _land(s, [*DAYS, datetime.now(UTC).date() - timedelta(days=1)])  # + the day the scheduler runs itself
        yield s
    finally:
        s.stop()
    from freestack.serving.processes import serving_processes

    left = [
        what for i in range(s.workers) for _, what in serving_processes(s.base / f"worker{i}" / "serving")
    ]
    assert not left, f"the stack left model servers or address holders running: {left}"


def _land(s: Stack, days: list[date]) -> None:
    """Landing files in S3, written by this process through the same S3 connection as the workers."""
    import os
    from unittest import mock

    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    conns = {k: v for k, v in s.control_env().items() if k.startswith("AIRFLOW_CONN_")}
    with mock.patch.dict(os.environ, conns):
        for d in days:
            make_landing(s.storage_root, d, 1)


def _keys(s: Stack, prefix: str) -> list[str]:
    out, token = [], None
    s3 = s.s3()
    while True:
        kw = {"Bucket": BUCKET, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = s3.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _wait_dag(s: Stack, dag_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.rest("GET", f"/dags/{dag_id}")
            break
        except Exception:
            assert time.monotonic() < deadline, f"{dag_id} was not parsed\n{s.procs['dag-processor'].tail()}"
            time.sleep(3)
    s.rest("PATCH", f"/dags/{dag_id}?update_mask=is_paused", {"is_paused": False})


def _run(s: Stack, dag_id: str, run_id: str) -> dict:
    return s.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}")


def _wait_run(s: Stack, dag_id: str, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = _run(s, dag_id, run_id)
        if run["state"] in TERMINAL:
            return run
        assert time.monotonic() < deadline, (
            f"{dag_id} {run_id} still {run['state']}: {_tis(s, dag_id, run_id)}\n{_logs(s)}"
        )
        time.sleep(3)


def _tis(s: Stack, dag_id: str, run_id: str) -> list[dict]:
    out = s.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    return [{k: t.get(k) for k in ("task_id", "map_index", "state", "try_number", "hostname")} for t in out]


def _logs(s: Stack) -> str:
    return "\n".join(
        f"--- {n}\n{s.procs[n].tail(2500)}" for n in ("scheduler", "worker0", "worker1") if n in s.procs
    )


def _ran_on(s: Stack) -> dict[int, set[str]]:
    """Which tasks each worker ran: the task logs in its own AIRFLOW_HOME."""
    out: dict[int, set[str]] = {}
    for i in range(s.workers):
        logs = s.base / f"worker{i}" / "airflow" / "logs"
        out[i] = {f"{p.parent.parent.name}/{p.parent.name}" for p in logs.rglob("attempt=*.log")}
    return out


def test_pipeline_through_the_rest_api_on_celery_postgres_and_s3(stack):
    s = stack
    for dag_id in ("digits_ingest", "digits_train"):
        _wait_dag(s, dag_id)

    # a 3-day backfill, through the REST API
    backfill = s.rest(
        "POST",
        "/backfills",
        {
            "dag_id": "digits_ingest",
            "from_date": f"{DAYS[0]}T00:00:00Z",
            "to_date": f"{DAYS[-1]}T00:00:00Z",
            "max_active_runs": 3,
        },
    )
    deadline = time.monotonic() + 300
    while True:
        runs = [
            r
            for r in s.rest("GET", "/dags/digits_ingest/dagRuns?limit=50")["dag_runs"]
            if r["run_type"] == "backfill"
        ]
        if len(runs) == len(DAYS) and all(r["state"] in TERMINAL for r in runs):
            break
        assert time.monotonic() < deadline, f"backfill {backfill['id']}: {runs}\n{_logs(s)}"
        time.sleep(3)
    assert all(r["state"] == "success" for r in runs), runs
    lake = _keys(s, "freestack/lake/digits/")
    for d in DAYS:
        assert f"freestack/lake/digits/ds={d}/part.parquet" in lake, lake

    # the train pipeline (sweep with two agents -> evaluate -> gate (registers) -> promote -> deploy)
    conf = {"end_ds": str(DAYS[-1]), "sweep": True, "sweep_agents": 2, "epochs": 4}
    s.rest(
        "POST", "/dags/digits_train/dagRuns", {"dag_run_id": "scaleout", "logical_date": None, "conf": conf}
    )
    run = _wait_run(s, "digits_train", "scaleout", 600)
    tis = _tis(s, "digits_train", "scaleout")
    assert run["state"] == "success", f"{tis}\n{_logs(s)}"
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
    skipped = {k for k, v in states.items() if v == "skipped"}
    assert {k[0] for k in skipped} <= {"train", "approve", "blocked"}, states
    assert all(v in ("success", "skipped") for v in states.values()), states
    assert states[("agent", 0)] == states[("agent", 1)] == "success"

    # everything the tasks handed on is in S3: lake, sweep state, registry, deployment record, task logs
    runs_keys = _keys(s, "freestack/runs/digits/")
    assert any("/trials/" in k and k.endswith("trial.json") for k in runs_keys), runs_keys[:20]
    registry = _keys(s, "freestack/registry/digits/")
    assert "freestack/registry/digits/aliases.json" in registry
    aliases = json.loads(
        s.s3().get_object(Bucket=BUCKET, Key="freestack/registry/digits/aliases.json")["Body"].read()
    )
    version = (
        aliases["production"]["version"] if isinstance(aliases["production"], dict) else aliases["production"]
    )
    assert f"freestack/registry/digits/{version}/model.safetensors" in registry
    assert _keys(s, "airflow-logs/dag_id=digits_train/run_id=scaleout/"), "task logs were not shipped to S3"

    # the tasks ran on both workers (each worker's own log folder), and none shares a disk with another
    ran = _ran_on(s)
    assert all(ran[i] for i in ran), ran
    assert set().union(*ran.values()) >= {
        "run_id=scaleout/task_id=deploy",
        "run_id=scaleout/task_id=evaluate",
    }

    # the model is served (by whichever worker ran deploy) and answers
    rec = json.loads(
        s.s3().get_object(Bucket=BUCKET, Key="freestack/deployments/digits/digits.json")["Body"].read()
    )
    assert rec["state"] == "serving" and rec["version"] == version
    import urllib.request

    row = [0.0] * 64
    req = urllib.request.Request(
        rec["predict_url"],
        data=json.dumps({"data": {"ndarray": [row]}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        answer = json.loads(r.read())
    probs = answer["data"]["ndarray"][0]
    assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-4
    _views_read_s3(s, version)


def _views(s: Stack, path: str, token: str | None = None) -> tuple[int, dict | list]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"{s.api}/freestack/ui/api{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _views_read_s3(s: Stack, version: str) -> None:
    """The ML views of the scaled-out API server read the registry, sweep, deployment and lake on S3."""
    assert _views(s, "/models/digits")[0] == 401  # behind the login here too
    code, model = _views(s, "/models/digits", s.token())
    assert code == 200 and model["aliases"]["production"] == version, model
    assert [v["version"] for v in model["versions"]] == [version] and model["root"].startswith("s3://")
    code, sweeps = _views(s, "/sweeps/digits", s.token())
    assert code == 200 and len(sweeps) == 1 and sweeps[0]["airflow_run"] == "scaleout"
    code, sweep = _views(s, f"/sweeps/digits/{sweeps[0]['sweep_id']}", s.token())
    stored = [
        k
        for k in _keys(s, f"freestack/runs/digits/{sweeps[0]['sweep_id']}/trials/")
        if k.endswith("trial.json")
    ]
    assert code == 200 and len(sweep["trials"]) == len(stored) > 0 and sweep["best"]
    code, served = _views(s, "/deployments", s.token())
    assert code == 200 and [(d["version"], d["health"]) for d in served] == [(version, "ok")]
    code, lake = _views(s, "/data/digits", s.token())
    assert code == 200 and {str(d) for d in DAYS} <= {p["ds"] for p in lake["partitions"]}


def _trials(s: Stack, run_id: str) -> list[dict]:
    s3 = s.s3()
    keys = [k for k in _keys(s, "freestack/runs/digits/") if "/trials/" in k and k.endswith("trial.json")]
    docs = [json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in keys]
    return [d for d in docs if run_id in json.dumps(d.get("attempts", []))]


def test_a_worker_killed_mid_sweep_its_trials_are_released_and_the_sweep_completes(stack):
    s = stack
    conf = {"end_ds": str(DAYS[-1]), "sweep": True, "sweep_agents": 2, "epochs": 8}
    s.rest(
        "POST",
        "/dags/digits_train/dagRuns",
        {"dag_run_id": "kill-worker", "logical_date": None, "conf": conf},
    )
    # wait until both agents train, then kill the worker that runs agent 0 (celery worker and its tasks)
    deadline = time.monotonic() + 240
    while True:
        running = [t for t in _trials(s, "kill-worker") if t.get("state") == "running"]
        tis = {(t["task_id"], t["map_index"]): t for t in _tis(s, "digits_train", "kill-worker")}
        agent = tis.get(("agent", 0))
        if agent and agent["state"] == "running" and len(running) >= 2:
            break
        assert time.monotonic() < deadline, f"{tis}\n{_logs(s)}"
        time.sleep(1)
    victim = next(i for i in range(s.workers) if _agent_on(s, i, 0))
    old_pid = s.kill(f"worker{victim}")

    run = _wait_run(s, "digits_train", "kill-worker", 600)
    tis = _tis(s, "digits_train", "kill-worker")
    assert run["state"] == "success", f"{tis}\n{_logs(s)}"
    assert s.procs[f"worker{victim}"].pid != old_pid  # the stack's restart policy brought the worker back
    trials = _trials(s, "kill-worker")
    bad = [(t["id"], t["state"], t.get("error"), t["attempts"]) for t in trials if t["state"] != "finished"]
    assert trials and not bad, json.dumps(bad, indent=1)
    # the dead agent's trial was leased again by another agent (or its retry) and finished
    released = [t for t in trials if len(t["attempts"]) > 1]
    assert released, [(t["id"], t["attempts"]) for t in trials]
    agent0 = next(t for t in tis if t["task_id"] == "agent" and t["map_index"] == 0)
    assert agent0["state"] == "success" and agent0["try_number"] >= 2, agent0


def _agent_on(s: Stack, worker: int, index: int) -> bool:
    """Worker ``worker`` ran (runs) mapped agent ``index``: its first attempt's log is in its own folder."""
    logs = s.base / f"worker{worker}" / "airflow" / "logs" / "dag_id=digits_train" / "run_id=kill-worker"
    return (logs / "task_id=agent" / f"map_index={index}" / "attempt=1.log").exists()


def test_postgres_restarted_during_a_run_the_run_completes(stack):
    s = stack
    conf = {"end_ds": str(DAYS[-1]), "sweep": False, "epochs": 12}
    s.rest(
        "POST", "/dags/digits_train/dagRuns", {"dag_run_id": "pg-restart", "logical_date": None, "conf": conf}
    )
    deadline = time.monotonic() + 240
    while {t["task_id"]: t["state"] for t in _tis(s, "digits_train", "pg-restart")}.get("train") != "running":
        assert time.monotonic() < deadline, _logs(s)
        time.sleep(1)
    s.restart_postgres(down_seconds=5)
    s._token = None
    run = _wait_run(s, "digits_train", "pg-restart", 600)
    tis = _tis(s, "digits_train", "pg-restart")
    assert run["state"] == "success", f"{tis}\n{_logs(s)}"
    assert "database system is ready to accept connections" in s.procs["postgres"].tail(100000)


def test_s3_unreachable_for_a_while_retries_survive_it_and_nothing_is_lost(stack):
    s = stack
    day = date(2026, 11, 10)
    _land(s, [day])
    s.stop_s3()  # down before the task starts: its first try cannot reach the lake
    run_id = "s3-outage"
    s.rest(
        "POST",
        "/dags/digits_ingest/dagRuns",
        {"dag_run_id": run_id, "logical_date": f"{day}T00:00:00Z", "conf": {}},
    )
    deadline = time.monotonic() + 120
    while True:
        ti = _tis(s, "digits_ingest", run_id)
        if ti and (ti[0]["try_number"] or 0) >= 1 and ti[0]["state"] in ("up_for_retry", "failed", "running"):
            break
        assert time.monotonic() < deadline, f"{ti}\n{_logs(s)}"
        time.sleep(1)
    time.sleep(3)
    # back within the task's retries (2, 10 s apart); S3 clients retry too, so the try that succeeds
    # may be the first one, still waiting for the server
    s.restart_s3()
    run = _wait_run(s, "digits_ingest", run_id, 300)
    ti = _tis(s, "digits_ingest", run_id)[0]
    assert run["state"] == "success", f"{ti}\n{_logs(s)}"
    # the partition is whole: it reads back with every good row, and no temporary object is left over
    import io

    import pyarrow.parquet as pq

    keys = _keys(s, f"freestack/lake/digits/ds={day}/")
    assert f"freestack/lake/digits/ds={day}/part.parquet" in keys, keys
    body = s.s3().get_object(Bucket=BUCKET, Key=f"freestack/lake/digits/ds={day}/part.parquet")["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows > 300
    from freestack.storage.objects import TMP_MARK

    assert not [k for k in _keys(s, "freestack/") if TMP_MARK in k], "a temporary object was left"
