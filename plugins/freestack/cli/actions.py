"""Alias moves from the command line as the UI makes them: a run of the pipeline's ``<p>_rollback`` or
``<p>_promote`` DAG through Airflow's public REST API, followed to its end. The move is then audited as
that run (its triggering user, its note), serialised with every other alias move and deploy of the model
(its pool of one slot, one at a time but not in the order asked), and ``production`` is redeployed by the
run's own ``deploy`` task. Each form names what the alias is as the user asks (``expect_production``,
``expect``): if another move lands first, the run fails naming it and changes nothing.

    freestack models rollback PIPELINE           <p>_rollback {version: previous as it is now, expect_production}
    freestack models promote PIPELINE VERSION    <p>_promote  {version, alias: production, reason, expect}
    freestack models alias PIPELINE ALIAS V      <p>_promote  {version, alias, reason, expect}
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

from freestack.cli.backfill import FINISHED, Airflow
from freestack.cli.errors import CliError
from freestack.cli.output import out

POLL_SECONDS = 1.0


def run_and_follow(dag_id: str, conf: dict[str, Any], note: str, timeout: float) -> int:
    """Trigger ``dag_id`` with ``conf``, print each task's end, and return 0 when the run succeeded, 1
    when it failed (with the failed task's error lines)."""
    af = Airflow()
    no_dag = CliError(f"Airflow has no DAG {dag_id}", "is the pipeline's spec valid? `freestack validate`")
    run = af.trigger(dag_id, conf, note[:1000], no_dag)
    run_id = run["dag_run_id"]
    console = out()
    af.api.follow = f"{af.url}/dags/{dag_id}/runs/{quote(run_id, safe='')}"
    console.print(f"started {dag_id} run {run_id} ({af.api.follow})")
    path = f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
    deadline, shown = time.monotonic() + timeout, set()
    while True:
        state = af.call("GET", path, what=f"run {run_id}")["state"]
        tis = af.call("GET", f"{path}/taskInstances", what=f"the tasks of {run_id}")["task_instances"]
        for ti in tis:
            if (
                ti["state"] in ("success", "failed", "skipped", "upstream_failed")
                and ti["task_id"] not in shown
            ):
                shown.add(ti["task_id"])
                console.print(f"  {ti['task_id']}: {ti['state']}")
                if ti["state"] == "failed":
                    for line in failure_lines(af, path, ti):
                        console.print(f"    {line}", markup=False)
        if state in FINISHED:
            console.print(f"{dag_id} run {run_id}: {state}")
            return 0 if state == "success" else 1
        if time.monotonic() > deadline:
            raise CliError(
                f"{dag_id} run {run_id} is still {state} after {timeout:.0f} s",
                f"it goes on; follow it at {af.url}/dags/{dag_id}",
            )
        time.sleep(POLL_SECONDS)


def failure_lines(af: Any, path: str, ti: dict[str, Any], limit: int = 3) -> list[str]:
    """The last error lines of a failed task's log (what it said went wrong)."""
    try:
        text = task_log(af.api, path, ti)
    except OSError:
        return []
    errors = [ln.strip() for ln in text.splitlines() if "ERROR" in ln or "Exception:" in ln or "Error:" in ln]
    return errors[-limit:]


def task_log(api: Any, run_path: str, ti: dict[str, Any]) -> str:
    """A task instance's log as lines of text, from Airflow's log endpoint (``run_path``: the run's API
    path), which answers JSON (it refuses ``text/plain``): each event's level and text, and for a
    failure the exception's type and message."""
    got = api.call(
        "GET",
        f"{run_path}/taskInstances/{quote(ti['task_id'], safe='')}/logs/{ti.get('try_number') or 1}"
        "?full_content=true",
    )
    lines = []
    for entry in got.get("content") or []:
        if not isinstance(entry, dict):
            lines.append(str(entry))
            continue
        lines.append(f"{str(entry.get('level') or '').upper()} {entry.get('event') or ''}".strip())
        lines += [
            f"ERROR {d.get('exc_type')}: {d.get('exc_value')}"
            for d in entry.get("error_detail") or []
            if isinstance(d, dict)
        ]
    return "\n".join(lines)


__all__ = ["run_and_follow", "task_log"]
