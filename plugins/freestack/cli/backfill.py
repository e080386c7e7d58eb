"""``freestack backfill PIPELINE --start --end``: a backfill of a pipeline's DAG on the running Airflow,
through its public REST API (``POST /api/v2/backfills``, as the UI's Backfill form does), followed until
every run finished: a progress bar on a terminal, one line per finished run otherwise.

The embedded instance (``make up``) is addressed as its generated admin; the DAG must be unpaused for
its runs to start (``--unpause`` does it).
"""

from __future__ import annotations

import json as _json
import time
import urllib.error
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn
from urllib.parse import urlencode

import typer

from freestack.cli.common import Pipeline, load_pipeline
from freestack.cli.errors import CliError
from freestack.cli.output import out, progress

FINISHED = ("success", "failed")
CLOSE_GRACE_S = 60.0
POLL_SECONDS = 2.0
BUSY_RETRIES = (1.0, 2.0, 4.0, 8.0, 15.0)  # seconds between tries while Airflow answers 503 (SQLite locked)


class Dag(StrEnum):
    ingest = "ingest"
    train = "train"


class Reprocess(StrEnum):
    none = "none"
    failed = "failed"
    completed = "completed"


class Airflow:
    """The embedded Airflow's REST API, with its failures as one-line :class:`CliError`\\ s."""

    def __init__(self) -> None:
        from freestack.embedded import AirflowAPI, airflow_env, healthy, standalone_files

        env = airflow_env()
        self.api = AirflowAPI(env)
        self.url = self.api.url
        if not healthy(self.url):
            raise CliError(f"Airflow is not reachable at {self.url}", "start it with `make up` (or `freestack up`)")
        if not standalone_files(env)[2].exists():
            raise CliError(f"no admin password file {standalone_files(env)[2]}",
                           "is the Airflow at this address the project's own (`make up`)?")  # fmt: skip

    def call(self, method: str, path: str, body: dict | None = None, what: str = "", *,
             not_found: CliError | None = None) -> Any:  # fmt: skip
        """One API call; a 503 (on SQLite the API server refuses a backfill while the scheduler holds
        the database lock, and rolls it back) is tried again, after 1, 2, 4, 8 and 15 s."""
        for pause in (*BUSY_RETRIES, None):
            try:
                return self.api.call(method, path, body)
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or pause is None:
                    self._refused(exc, method, path, what, not_found)
            except OSError as exc:
                raise CliError(f"Airflow stopped answering at {self.url} ({exc})", "is it still up? `make up` starts it") from None
            time.sleep(pause)

    def _refused(self, exc: urllib.error.HTTPError, method: str, path: str, what: str, not_found: CliError | None) -> NoReturn:
        if exc.code == 404 and not_found is not None:
            raise not_found from None
        raise CliError(f"Airflow refused {what or f'{method} {path}'}: HTTP {exc.code} {_detail(exc)}",
                       _hint(exc.code, self.url)) from None  # fmt: skip


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        detail = _json.loads(exc.read() or b"{}").get("detail")
    except ValueError:
        return ""
    return detail if isinstance(detail, str) else _json.dumps(detail)[:300]


def _hint(code: int, url: str) -> str:
    return {401: "the admin password file does not match this Airflow: restart it with `make down` and `make up`",
            409: "one backfill per DAG at a time: wait for the running one, or cancel it in the UI",
            503: "the scheduler kept the SQLite database locked for half a minute: try again, or run on PostgreSQL",
            }.get(code, f"see {url}")  # fmt: skip


def backfill(
    pipeline: Pipeline,
    start: Annotated[datetime, typer.Option("--start", formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="The first day.", show_default=False)],
    end: Annotated[datetime, typer.Option("--end", formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="The last day (inclusive).", show_default=False)],
    dag: Annotated[Dag, typer.Option(help="Which of the pipeline's DAGs.")] = Dag.ingest,
    reprocess: Annotated[Reprocess, typer.Option(help="Run again days that have a run: none, failed ones, or completed ones too.")] = Reprocess.none,
    unpause: Annotated[bool, typer.Option("--unpause", help="Unpause the DAG first (a paused DAG's runs wait).")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the runs.")] = 3600,
) -> int:  # fmt: skip
    """Backfill a pipeline's DAG over days on the running Airflow (make up) and follow its runs."""
    if end < start:
        raise typer.BadParameter(f"{end:%Y-%m-%d} is before --start {start:%Y-%m-%d}", param_hint="--end")
    load_pipeline(pipeline)
    af, dag_id = Airflow(), f"{pipeline}_{dag.value}"
    paused = _check_dag(af, dag_id, unpause)
    body = {"dag_id": dag_id, "from_date": f"{start:%Y-%m-%d}T00:00:00Z", "to_date": f"{end:%Y-%m-%d}T00:00:00Z",
            "reprocess_behavior": reprocess.value}  # fmt: skip
    days = [r["logical_date"] for r in af.call("POST", "/backfills/dry_run", body, f"the backfill of {dag_id}")["backfills"]]
    if not days:
        raise CliError(f"nothing to backfill: every day of {dag_id} from {start:%Y-%m-%d} to {end:%Y-%m-%d} has a run",
                       "pass --reprocess completed to run them again")  # fmt: skip
    if paused:  # after the dry run: a refused backfill leaves the DAG as it was
        af.call("PATCH", f"/dags/{dag_id}?update_mask=is_paused", {"is_paused": False}, f"unpausing {dag_id}")
    created = af.call("POST", "/backfills", body, f"the backfill of {dag_id}")
    out().print(f"backfill {created['id']} of {dag_id}: {len(days)} runs, {start:%Y-%m-%d} to {end:%Y-%m-%d} ({af.url}/dags/{dag_id})")
    runs = _follow(af, dag_id, {**created, "from_date": body["from_date"], "to_date": body["to_date"]}, len(days), timeout)
    failed = [r["dag_run_id"] for r in runs if r["state"] != "success"]
    if failed:
        raise CliError(f"{len(failed)} of {len(runs)} {dag_id} runs failed: {', '.join(failed)}",
                       f"their task logs: {af.url}/dags/{dag_id}")  # fmt: skip
    out().print(f"backfill {created['id']} of {dag_id}: {len(runs)} runs succeeded")
    return 0


def _check_dag(af: Airflow, dag_id: str, unpause: bool) -> bool:
    """Whether the DAG is paused (refused unless ``unpause``); :class:`CliError` if Airflow has no such DAG."""
    missing = CliError(f"Airflow has no DAG {dag_id!r} (yet)",
                       "its DAG processor may still be parsing it; check `freestack airflow dags list-import-errors`")  # fmt: skip
    dag = af.call("GET", f"/dags/{dag_id}", what=f"DAG {dag_id}", not_found=missing)
    if dag.get("is_paused") and not unpause:
        raise CliError(f"DAG {dag_id} is paused, so its backfill runs would wait",
                       f"pass --unpause, or unpause it in the UI ({af.url}/dags/{dag_id})")  # fmt: skip
    return bool(dag.get("is_paused"))


def _follow(af: Airflow, dag_id: str, backfill: dict[str, Any], total: int, timeout: float) -> list[dict[str, Any]]:
    """Poll the backfill's runs until ``total`` finished (or the backfill completed); report each one."""
    since, deadline, reported = _ts(backfill["created_at"]), time.monotonic() + timeout, set()
    all_done: float | None = None
    console = out()
    with progress(console=console) as bar:
        task = bar.add_task(f"{dag_id} runs", total=total)
        while True:
            completed = af.call("GET", f"/backfills/{backfill['id']}", what=f"backfill {backfill['id']}").get("completed_at")
            runs = _runs(af, dag_id, backfill["from_date"], backfill["to_date"])  # read after: as fresh as `completed`
            done = [r for r in runs if r["state"] in FINISHED and r.get("end_date") and _ts(r["end_date"]) >= since]
            for r in (r for r in done if r["dag_run_id"] not in reported):
                reported.add(r["dag_run_id"])  # a line per run: above the bar on a terminal, alone otherwise
                console.print(f"{dag_id} {str(r['logical_date'])[:10]}: {r['state']} ({r.get('duration') or 0:.1f} s)")
            bar.update(task, completed=len(done))
            # the scheduler closes the backfill a loop or two after its last run, and refuses another
            # backfill of the DAG until then: wait for that (a little), so the next command may start one
            all_done = all_done or (time.monotonic() if len(done) >= total else None)
            if completed or (all_done and time.monotonic() - all_done > CLOSE_GRACE_S):
                return done
            if time.monotonic() > deadline:
                raise CliError(f"backfill {backfill['id']} of {dag_id}: {len(done)} of {total} runs finished after {timeout:.0f} s",
                               f"it goes on; follow it at {af.url}/dags/{dag_id}")  # fmt: skip
            time.sleep(POLL_SECONDS)


def _runs(af: Airflow, dag_id: str, first: str, last: str) -> list[dict[str, Any]]:
    """The DAG's runs from ``first`` to ``last`` (logical dates), page by page (Airflow caps a page at 100)."""
    runs: list[dict[str, Any]] = []
    while True:
        query = urlencode({"logical_date_gte": first, "logical_date_lte": last, "order_by": "logical_date",
                           "limit": 100, "offset": len(runs)})  # fmt: skip
        page = af.call("GET", f"/dags/{dag_id}/dagRuns?{query}", what=f"the runs of {dag_id}")
        runs += page["dag_runs"]
        if not page["dag_runs"] or len(runs) >= page.get("total_entries", 0):
            return runs


def _ts(text: str) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


__all__ = ["backfill"]
