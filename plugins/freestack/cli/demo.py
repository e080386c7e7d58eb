"""``freestack demo``: the demo pipeline, run the way production runs it.

It starts the embedded Airflow (``freestack up``: scheduler, LocalExecutor, API server, UI) unless it
is already running, lands five daily drops of real digits ending yesterday, backfills ``digits_ingest``
over them through Airflow's REST API, then triggers ``digits_train`` as the UI's Trigger button does:
the sweep's agents run in parallel, and every task's log stays readable in the UI afterwards. The
Airflow UI keeps running (``make down`` stops everything).

The terminal gets a short summary; the full reports (lake, trials, metrics, gate, serving) and each
step's timing go to ``.freestack/demo.log``. A second run re-lands the same days with new rows (every
digit shifted one pixel, then two on the next run, then one again), reprocesses them and retrains:
champion against challenger.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from freestack.cli.backfill import ended_since
from freestack.cli.demo_summary import summary_lines
from freestack.cli.output import plural
from freestack.cli.reports import lake_report
from freestack.cli.stack import UpError, ensure_up
from freestack.embedded import AirflowAPI, AirflowTimeout, airflow_env, standalone_files
from freestack.ingest.lake import lake_partitions, read_manifest
from freestack.registry.core import ModelRegistry
from freestack.settings import checkout_dir, default_storage_root, project_home
from freestack.spec import load_spec, spec_file
from freestack.storage import storage_root

DEMO_DAYS = 5
DEMO_AGENTS = 2
PIPELINE = "digits"
INGEST, TRAIN, MONITOR = f"{PIPELINE}_ingest", f"{PIPELINE}_train", f"{PIPELINE}_monitor"
TERMINAL = ("success", "failed")


class DemoError(Exception):
    """A step of the demo failed; the message says which and where to look."""


@dataclass
class Out:
    """The terminal summary (short) and the full log (``.freestack/demo.log``)."""

    log_path: Path
    lines: int = 0
    t0: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines += text.count("\n") + 1
        self.detail(text)

    def detail(self, text: str) -> None:
        self._log.write(f"[{time.monotonic() - self.t0:7.1f}s] {text}\n")
        self._log.flush()


def demo() -> int:
    for k, v in airflow_env().items():
        os.environ.setdefault(k, v)
    out = Out(project_home() / ".freestack" / "demo.log")
    out.say(
        f"freestack demo: the {PIPELINE} pipeline under the real scheduler (full log: {_rel(out.log_path)})"
    )
    try:
        api, ui = _airflow_up(out)
        days = _land(out)
        _ingest(api, days, out)
        run_id = _train(api, days[-1], out)
        _pause(api, MONITOR, False)
        out.say(
            f"{MONITOR}: unpaused: it judges the served model's request log each day (docs: concepts/monitoring)"
        )
        _summary(api, ui, run_id, out)
    except (DemoError, AirflowTimeout) as exc:
        out.say(f"error: {exc}")
        return 1
    return 0


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _airflow_up(out: Out) -> tuple[AirflowAPI, str]:
    try:
        url, password, started = ensure_up(dict(os.environ), timeout=300.0)
    except UpError as exc:
        raise DemoError(str(exc)) from None
    out.say(
        f"Airflow: {url} ({'started' if started else 'already running'}; user admin, password {password})"
    )
    api = AirflowAPI(dict(os.environ), notice=out.say)  # a long wait for Airflow is said, and where to look
    _wait(
        lambda: _dag_known(api, INGEST) and _dag_known(api, TRAIN),
        240,
        "the DAG processor to parse the DAGs",
        f"check `freestack airflow dags list-import-errors` and {_rel(_standalone_log())}",
    )
    return api, url


def _standalone_log() -> Path:
    return standalone_files(dict(os.environ))[1]


def _dag_known(api: AirflowAPI, dag_id: str) -> bool:
    import urllib.error

    try:
        api.call("GET", f"/dags/{dag_id}")
        return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def _wait(ok, timeout: float, what: str, hint: str) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}; {hint}")
        time.sleep(1.0)


def _land(out: Out) -> list[date]:
    """Land the five days ending yesterday (UTC). Days already in the lake are re-landed with new rows
    (a later round), so the backfill reprocesses them and the retrained model meets the current one."""
    sys.path.insert(0, str(checkout_dir() / "include"))
    from demo.landing import make_landing

    today = datetime.now(UTC).date()
    days = [today - timedelta(days=DEMO_DAYS - k) for k in range(DEMO_DAYS)]
    spec = load_spec(spec_file(PIPELINE))
    round_ = _rounds_done(spec)
    seen = {d.isoformat() for d in days} & set(lake_partitions(spec))
    variant = round_shift(round_) if seen else 0
    uris = make_landing(default_storage_root(), days[0], DEMO_DAYS, variant=variant)
    what = (
        f"new rows (round {round_ + 1}: each digit {plural(variant, 'pixel')} to the right)"
        if seen
        else "real digits, a few malformed rows each"
    )
    out.say(f"landed {plural(len(uris), 'daily drop')}, {days[0]} to {days[-1]}: {what}")
    for u in uris:
        out.detail(f"  {u}")
    return days


def round_shift(rounds_done: int) -> int:
    """Pixels every digit moves right in a later round: 1, then 2, then 1 again... Each round differs from
    the one before, so the retrained model meets the current one on data that moved, and the shift never
    grows so wide that no model clears the gate's threshold, however many versions other runs registered."""
    return 1 + (max(rounds_done, 1) - 1) % 2


def _rounds_done(spec) -> int:
    return len(ModelRegistry(storage_root(spec.storage_root), spec.model_name).versions())


def _ingest(api: AirflowAPI, days: list[date], out: Out) -> None:
    """Backfill the ingest DAG over ``days`` (reprocessing days done before), training paused meanwhile:
    one training on the whole window follows, not one per lake update."""
    t0 = time.monotonic()
    _pause(api, TRAIN, True)
    backfill = _create_backfill(api, days)
    api.follow = f"{api.url}/dags/{INGEST}"
    _pause(api, INGEST, False)
    _wait(
        lambda: _backfilled(api, backfill, days),
        900,
        f"the {INGEST} backfill",
        f"open {api.url}/dags/{INGEST}",
    )
    runs = _runs(api, INGEST, days)
    bad = [r["dag_run_id"] for r in runs if r["state"] != "success"]

    out.detail(lake_report(PIPELINE))
    if bad:
        raise DemoError(
            f"{len(bad)} {INGEST} run(s) failed: {', '.join(bad)}; see their task logs at {api.url}/dags/{INGEST}"
        )
    out.say(
        f"{INGEST}: backfill of {plural(len(runs), 'day')} succeeded in {time.monotonic() - t0:.0f} s ({_lake_line()})"
    )


def _lake_line() -> str:
    spec = load_spec(spec_file(PIPELINE))
    manifests = [read_manifest(spec, ds) or {} for ds in lake_partitions(spec)]
    good = sum(m.get("rows_good", 0) for m in manifests)
    bad = sum(m.get("rows_quarantined", 0) for m in manifests)
    return f"lake: {plural(len(manifests), 'partition')}, {plural(good, 'row')}, {bad} quarantined; `freestack lake {PIPELINE}`"


def _pause(api: AirflowAPI, dag_id: str, paused: bool) -> None:
    api.call("PATCH", f"/dags/{dag_id}?update_mask=is_paused", {"is_paused": paused})


def _create_backfill(api: AirflowAPI, days: list[date]) -> dict:
    import urllib.error

    body = {
        "dag_id": INGEST,
        "from_date": f"{days[0]}T00:00:00Z",
        "to_date": f"{days[-1]}T00:00:00Z",
        "reprocess_behavior": "completed",
        "max_active_runs": DEMO_DAYS,
    }
    deadline = time.monotonic() + 120
    while True:
        try:
            return api.create_backfill(body)
        except urllib.error.HTTPError as exc:
            answer = exc.read()[:300]
            # 409: the previous backfill is still being closed; 503, or 500 "Database error": SQLite locked
            # by the scheduler, the request rolled back
            busy = exc.code in (409, 503) or (exc.code == 500 and b"Database error" in answer)
            if not busy or time.monotonic() > deadline:
                raise DemoError(
                    f"could not create the {INGEST} backfill: HTTP {exc.code} {answer!r}"
                ) from None
            time.sleep(2.0)


def _backfilled(api: AirflowAPI, backfill: dict, days: list[date]) -> bool:
    """Every day's run ended since the backfill was created (the scheduler closes the backfill itself up to
    half a minute later: a later round's backfill waits for that), or the backfill is closed."""
    ended = ended_since(_runs(api, INGEST, days), backfill["created_at"])
    return len(ended) >= len(days) or bool(
        api.call("GET", f"/backfills/{backfill['id']}").get("completed_at")
    )


def _runs(api: AirflowAPI, dag_id: str, days: list[date]) -> list[dict]:
    lo, hi = f"{days[0]}T00:00:00Z", f"{days[-1]}T00:00:00Z"
    got = api.call("GET", f"/dags/{dag_id}/dagRuns?logical_date_gte={lo}&logical_date_lte={hi}&limit=100")
    return got["dag_runs"]


def _train(api: AirflowAPI, end: date, out: Out) -> str:
    """Trigger the train DAG as the UI does and wait for the run; returns its run id."""
    t0 = time.monotonic()
    _pause(api, TRAIN, False)
    run = api.trigger(TRAIN, {"end_ds": end.isoformat(), "sweep_agents": DEMO_AGENTS})
    run_id = run["dag_run_id"]
    api.follow = f"{api.url}/dags/{TRAIN}/runs/{run_id}"
    path = f"/dags/{TRAIN}/dagRuns/{run_id}"
    _wait(
        lambda: api.call("GET", path)["state"] in TERMINAL,
        1800,
        f"{TRAIN} run {run_id}",
        f"open {api.url}/dags/{TRAIN}/runs/{run_id}",
    )
    state = api.call("GET", path)["state"]
    out.say(f"{TRAIN}: run {run_id} {state} in {time.monotonic() - t0:.0f} s")
    if state != "success":
        failed = [t["task_id"] for t in _tis(api, run_id) if t["state"] in ("failed", "upstream_failed")]
        raise DemoError(
            f"{TRAIN} failed at {', '.join(failed) or '?'}; the task logs: {api.url}/dags/{TRAIN}/runs/{run_id}"
        )
    return run_id


def _tis(api: AirflowAPI, run_id: str) -> list[dict]:
    return api.call("GET", f"/dags/{TRAIN}/dagRuns/{run_id}/taskInstances?limit=200")["task_instances"]


def _summary(api: AirflowAPI, ui: str, run_id: str, out: Out) -> None:
    for line in summary_lines(PIPELINE, run_id, _tis(api, run_id), out.detail):
        out.say(line)
    out.say(
        f"the run in the UI: {ui}/dags/{TRAIN}/runs/{run_id}  (Airflow keeps running: `make down` stops it)"
    )


__all__ = ["DEMO_AGENTS", "DEMO_DAYS", "DemoError", "demo"]
