"""Monitoring the model ``make demo`` deployed, under the real scheduler: requests to its address, then
``digits_monitor`` runs over their intervals. In-distribution digits: a report, no alert. The demo's shifted
second round (every digit moved one pixel): the first interval after the shift alerts, and the drift asset
starts a ``digits_train`` run that retrains on the latest window.

Slow (a real demo under the real scheduler): ``-m slow``. Shares the demo sandbox (tests/support/demo_sandbox.py).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from freestack.serving.smoke import http_json

pytestmark = pytest.mark.slow
KEEP_MODEL_SERVERS = True  # the sandbox's servers are its own
FEATURES = [f"px_{i}" for i in range(64)]
TERMINAL = ("success", "failed")


def _digits(variant: int) -> np.ndarray:
    from demo.landing import day_rows

    rows = [r for k in range(5) for r in day_rows(k, 5, variant)]
    return np.asarray([[float(v) for v in r[2:66]] for r in rows[::5]])  # ~360 of the 1,797 digits


def _send(url: str, X: np.ndarray) -> None:
    for k in range(0, len(X), 12):
        code, body = http_json(url, {"data": {"names": FEATURES, "ndarray": X[k : k + 12].tolist()}})
        assert code == 200 and len(body["meta"]["tags"]["request_id"]) == 32, body


def _logged_since(storage, since: datetime) -> int:
    import pyarrow.parquet as pq

    n = 0
    for f in (storage / "monitoring" / "digits" / "requests").rglob("*.parquet"):
        ts = pq.read_table(f, columns=["ts"]).column("ts").to_pylist()
        n += sum(t >= since for t in ts)
    return n


def _wait(ok, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = ok()
        if got:
            return got
        time.sleep(2.0)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def _monitor(api, start: datetime, end: datetime) -> dict[str, str]:
    """A digits_monitor run for [start, end), as a backfill or the schedule would make it; its task states."""
    body = {
        "logical_date": end.isoformat(),
        "data_interval_start": start.isoformat(),
        "data_interval_end": end.isoformat(),
    }
    run_id = api.call("POST", "/dags/digits_monitor/dagRuns", body)["dag_run_id"]
    path = f"/dags/digits_monitor/dagRuns/{run_id}"
    _wait(lambda: api.call("GET", path)["state"] in TERMINAL, 300, f"digits_monitor {run_id}")
    tis = api.call("GET", f"{path}/taskInstances")["task_instances"]
    return {t["task_id"]: t["state"] for t in tis}


def _summary(storage, start: datetime, end: datetime) -> dict:
    from freestack.monitor.core import interval_name

    return json.loads(
        (
            storage / "monitoring" / "digits" / "reports" / interval_name(start, end) / "summary.json"
        ).read_text()
    )


def _views_json(sandbox, api, path: str):
    import urllib.request

    req = urllib.request.Request(sandbox.url + path, headers={"Authorization": f"Bearer {api._token_now()}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _now() -> datetime:
    time.sleep(1.0)  # the boundary's second belongs to one interval only
    return datetime.now(UTC).replace(microsecond=0)


def test_requests_to_the_demo_model_are_judged_and_the_shifted_round_retrains(demo, sandbox):
    from freestack.monitor.core import interval_name
    from freestack.serving.records import Deployments

    api, storage = sandbox.api(), sandbox.storage
    url = Deployments(storage.as_uri(), "digits").get("digits")["predict_url"]
    t0 = _now()
    _send(url, _digits(0))
    _wait(lambda: _logged_since(storage, t0) >= 300, 90, "the request log (flushed every 10 s)")
    t1 = _now()
    states = _monitor(api, t0, t1)
    assert states == {"monitor": "success", "alert": "skipped", "retrain": "skipped"}, states
    quiet = _summary(storage, t0, t1)
    assert quiet["status"] == "ok" and quiet["rows"] >= 300 and not quiet["alerts"]
    assert (
        "<img"
        in (storage / "monitoring" / "digits" / "reports" / interval_name(t0, t1) / "report.html").read_text()
    )

    trains_before = {
        r["dag_run_id"] for r in api.call("GET", "/dags/digits_train/dagRuns?limit=100")["dag_runs"]
    }
    _send(url, _digits(1))  # the demo's second round: every digit one pixel to the right
    _wait(lambda: _logged_since(storage, t1) >= 300, 90, "the shifted requests in the log")
    t2 = _now()
    states = _monitor(api, t1, t2)
    assert states == {"monitor": "success", "alert": "success", "retrain": "success"}, states
    drifted = _summary(storage, t1, t2)
    first = drifted["alerts"][0]
    assert (
        drifted["status"] == "drift"
        and first["series"].startswith(("px_", "prediction"))
        and first["threshold"] == 0.2
    )
    assert (storage / "monitoring" / "digits" / "alerts").exists()
    page = _views_json(sandbox, api, "/freestack/ui/api/monitoring")
    shown = {r["name"]: r for p in page for r in p["intervals"]}
    assert (
        shown[interval_name(t1, t2)]["status"] == "drift" and shown[interval_name(t0, t1)]["status"] == "ok"
    )

    def retraining():
        runs = api.call("GET", "/dags/digits_train/dagRuns?limit=100")["dag_runs"]
        return next((r for r in runs if r["dag_run_id"] not in trains_before), None)

    run = _wait(retraining, 120, "digits_train to be scheduled by the drift asset")
    assert run["run_type"] == "asset_triggered", run
    path = f"/dags/digits_train/dagRuns/{run['dag_run_id']}"
    state = _wait(lambda: (s := api.call("GET", path)["state"]) in TERMINAL and s, 900, "the retraining run")
    assert state == "success"
