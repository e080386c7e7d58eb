"""``freestack backfill PIPELINE --start --end``: a backfill of a pipeline's DAG on the running Airflow,
through its public REST API (``POST /api/v2/backfills``, as the UI's Backfill form does), followed until
every run finished: a progress bar on a terminal, one line per finished run otherwise.

First it prints its plan: the DAG, every day Airflow would run, and for the ingest DAG which days have
landing files. A day with none gets no run (it is left out, a line says so; the backfill is split
around it), unless the spec's ``on_missing: wait`` makes its run wait for them.

Airflow 3.3 starts a paused DAG's backfill runs only once the DAG is unpaused (its scheduler skips paused
DAGs' runs, backfills included). On a paused DAG the command creates the runs first, unpauses the DAG
for the backfill and pauses it again at the end (``--unpause`` leaves it unpaused). Unpausing a DAG
with a schedule and ``catchup: false`` also makes the scheduler start its latest interval, unless that
interval has a run: the command says so, and refuses when that interval has no landing files and the
spec's ``on_missing: fail`` would fail its run, unless ``--unpause`` says the schedule may start.

The plan also says what the runs set off: the DAGs scheduled on an asset the backfilled DAG updates
(the lake asset: ``<p>_train``), each with its paused state as Airflow's REST API gives it. An unpaused
one starts its own runs (a training that may promote a new production); ``--no-downstream`` pauses it
for the backfill and unpauses it at the end, so that the backfill only ingests. ``--dry-run`` prints the
plan and stops.

The embedded instance (``make up``) is addressed as its generated admin.
"""

from __future__ import annotations

import functools
import json as _json
import time
import urllib.error
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn
from urllib.parse import urlencode

import typer

from freestack.cli.common import Pipeline, load_pipeline
from freestack.cli.errors import CliError
from freestack.cli.output import out, plural, progress
from freestack.embedded import AirflowAPI, AirflowTimeout, airflow_env, healthy, standalone_files
from freestack.ingest.lake import landing_dir, landing_files
from freestack.spec import spec_file

FINISHED = ("success", "failed")
#: Airflow takes one backfill of a DAG at a time, and its scheduler marks a backfill completed every 30 s:
#: how long a new backfill waits for the previous one, its runs all ended, to be closed
CLOSE_GRACE_S = 60.0
POLL_SECONDS = 2.0
BUSY_RETRIES = (1.0, 2.0, 4.0, 8.0, 15.0)  # seconds between tries while Airflow answers 503 (SQLite locked)
#: how long the health check may take before Airflow counts as not answering: on SQLite it waits while the
#: scheduler writes (seconds, right after a backfill on a busy machine); a stopped one refuses at once
HEALTH_TIMEOUT_S = 60.0


class Dag(StrEnum):
    ingest = "ingest"
    train = "train"
    score = "score"


class Reprocess(StrEnum):
    none = "none"
    failed = "failed"
    completed = "completed"


class Airflow:
    """The embedded Airflow's REST API (at the address the running stack recorded, unless the environment
    names one), with its failures as one-line :class:`CliError`\\ s that name that address. A call it
    leaves unanswered is sent again when that is safe (:class:`~freestack.embedded.AirflowAPI`), each wait
    said on stderr with where to follow the runs meanwhile."""

    def __init__(self) -> None:
        env = airflow_env()
        self.api = AirflowAPI(env)
        self.url = self.api.url
        if not healthy(self.url, timeout=HEALTH_TIMEOUT_S, late=True):
            raise CliError(
                f"Airflow is not reachable at {self.url}", "start it with `make up` (or `freestack up`)"
            )
        if not standalone_files(env)[2].exists():
            raise CliError(
                f"no admin password file {standalone_files(env)[2]}",
                f"is the Airflow at {self.url} the project's own (`make up`)?",
            )

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        what: str = "",
        *,
        not_found: CliError | None = None,
        busy: tuple[int, ...] = (503,),
        safe: bool = False,
    ) -> Any:
        """One API call (``safe``: a POST that changes nothing: sent again if unanswered); :meth:`_busy`."""
        send = functools.partial(self.api.call, method, path, body, safe=safe)
        return self._busy(send, f"{method} {path}", what, not_found, busy)

    def create_backfill(self, body: dict[str, Any], what: str) -> Any:
        """``POST /backfills``, never twice for one backfill however late Airflow answers."""
        send = functools.partial(self.api.create_backfill, body)
        return self._busy(send, "POST /backfills", what, None, (503,))

    def trigger(self, dag_id: str, conf: dict[str, Any], note: str, not_found: CliError) -> dict[str, Any]:
        """A manual run of ``dag_id``, never two however late Airflow answers."""
        send = functools.partial(self.api.trigger, dag_id, conf, note)
        return self._busy(send, f"POST /dags/{dag_id}/dagRuns", f"a run of {dag_id}", not_found, (503,))

    def _busy(
        self, send: Any, request: str, what: str, not_found: CliError | None, busy: tuple[int, ...]
    ) -> Any:
        """``send()``; a 503 (on SQLite the API server refuses a backfill while the scheduler holds the
        database lock, and rolls it back) is tried again, after 1, 2, 4, 8 and 15 s (and so are the other
        ``busy`` codes, and a 500 "Database error": the same lock met inside a request)."""
        for pause in (*BUSY_RETRIES, None):
            try:
                return send()
            except urllib.error.HTTPError as exc:
                detail = _detail(exc)
                locked = exc.code in busy or (exc.code == 500 and "database" in detail.lower())
                if not locked or pause is None:
                    self._refused(exc.code, detail, request, what, not_found)
            except AirflowTimeout:
                raise  # its message says where the runs go on
            except OSError as exc:
                raise CliError(
                    f"Airflow stopped answering at {self.url} ({exc})", "is it still up? `make up` starts it"
                ) from None
            time.sleep(pause)

    def _refused(
        self, code: int, detail: str, request: str, what: str, not_found: CliError | None
    ) -> NoReturn:
        if code == 404 and not_found is not None:
            raise not_found from None
        raise CliError(
            f"Airflow at {self.url} refused {what or request}: HTTP {code} {detail}", _hint(code, self.url)
        ) from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        detail = _json.loads(exc.read() or b"{}").get("detail")
    except ValueError:
        return ""
    return detail if isinstance(detail, str) else _json.dumps(detail)[:300]


def _hint(code: int, url: str) -> str:
    return {
        401: "the admin password file does not match it: if it is another stack, this project's listens "
        "where `make up` started it (AIRFLOW_PORT=PORT names it); if it is this project's, restart "
        "it with `make down` and `make up`",
        409: "one backfill per DAG at a time: wait for the running one, or cancel it in the UI",
        500: f"see the API server's log ({url}); a 'Database error' is SQLite locked: try again, or run on PostgreSQL",
        503: "the scheduler kept the SQLite database locked for half a minute: try again, or run on PostgreSQL",
    }.get(code, f"see {url}")


def backfill(
    pipeline: Pipeline,
    start: Annotated[
        datetime,
        typer.Option(
            "--start", formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="The first day.", show_default=False
        ),
    ],
    end: Annotated[
        datetime,
        typer.Option(
            "--end",
            formats=["%Y-%m-%d"],
            metavar="YYYY-MM-DD",
            help="The last day (inclusive).",
            show_default=False,
        ),
    ],
    dag: Annotated[Dag, typer.Option(help="Which of the pipeline's DAGs.")] = Dag.ingest,
    reprocess: Annotated[
        Reprocess,
        typer.Option(help="Run again days that have a run: none, failed ones, or completed ones too."),
    ] = Reprocess.none,
    unpause: Annotated[
        bool,
        typer.Option(
            "--unpause",
            help="Leave a paused DAG unpaused afterwards: its schedule starts, its latest interval's run too (by default it is unpaused for the backfill only, and pausing it again ends the backfill).",
        ),
    ] = False,
    no_downstream: Annotated[
        bool,
        typer.Option(
            "--no-downstream",
            help="Pause the unpaused DAGs scheduled on what the runs update (the lake asset: the train DAG) for the backfill, and unpause them at the end: the backfill starts no training.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan (the days, what they set off) and stop.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the runs.")] = 3600,
) -> int:
    """Backfill a pipeline's DAG over days on the running Airflow (make up) and follow its runs.

    It prints its plan first: the days, which have landing files, and which DAGs the runs set off (an unpaused train DAG retrains; --no-downstream holds it). A day with no landing files gets no run (unless on_missing: wait). A paused DAG is unpaused for the backfill only."""
    if end < start:
        raise typer.BadParameter(f"{end:%Y-%m-%d} is before --start {start:%Y-%m-%d}", param_hint="--end")
    af, dag_id = Airflow(), f"{pipeline}_{dag.value}"
    body = {
        "dag_id": dag_id,
        "from_date": f"{start:%Y-%m-%d}T00:00:00Z",
        "to_date": f"{end:%Y-%m-%d}T00:00:00Z",
        "reprocess_behavior": reprocess.value,
    }
    plan = _plan(af, load_pipeline(pipeline), dag, body)
    _show(plan, unpause, no_downstream)
    if dry_run:
        out().print("dry run: nothing was created")
        return 0
    runs, created = _run(af, plan, unpause, timeout, no_downstream)
    failed = [r for r in runs if r["state"] != "success"]
    if failed:  # by the ds the plan printed (a run's id is named after its run_after, the day after)
        days = ", ".join(str(r.get("logical_date") or "")[:10] or r["dag_run_id"] for r in failed)
        ids = ", ".join(r["dag_run_id"] for r in failed)
        raise CliError(
            f"{len(failed)} of {plural(len(runs), f'{dag_id} run')} failed: {days} (runs {ids})",
            f"their task logs: {af.url}/dags/{dag_id}",
        )
    done = f"{plural(len(runs), 'run')} succeeded"
    out().print(
        f"backfill of {dag_id}: {done}" if len(plan.bodies) > 1 else f"backfill {created} of {dag_id}: {done}"
    )
    return 0


@dataclass
class _Plan:
    """What a backfill will do: its days, the parts it is sent in, and the paused DAG's due interval."""

    spec: Any
    dag_id: str
    paused: bool
    days: list[_Day]
    chosen: list[_Day]
    due_day: _Day | None
    segments: list[list[_Day]]
    bodies: list[dict[str, Any]]
    span: str  # "from <start> to <end>"
    downstream: list[_Downstream]
    trains: bool  # the backfilled DAG is the train DAG


@dataclass(frozen=True)
class _Downstream:
    """A DAG scheduled on an asset the backfilled DAG's runs update."""

    dag_id: str
    paused: bool
    assets: str  # the assets' names


def _plan(af: Airflow, spec: Any, dag: Dag, body: dict[str, Any]) -> _Plan:
    """Airflow's dry run of ``body``, each day with its landing files, cut where a paused DAG's due
    interval falls (CliError when nothing is to run)."""
    dag_id = body["dag_id"]
    span = f"from {body['from_date'][:10]} to {body['to_date'][:10]}"
    info = _dag(af, dag_id)
    paused = bool(info.get("is_paused"))
    dry_run = af.call("POST", "/backfills/dry_run", body, f"the backfill of {dag_id}", safe=True)
    dates = [str(r["logical_date"]) for r in dry_run["backfills"]]
    if not dates:
        raise CliError(
            f"nothing to backfill: every day of {dag_id} {span} has a run",
            _reprocess_advice(_runs(af, dag_id, body["from_date"], body["to_date"]), body),
        )
    days = [_day(spec, dag, d) for d in dates]
    chosen = [d for d in days if d.runs]
    due = _due_run(af, dag_id, info, {_ts(d.logical_date) for d in chosen}) if paused else None
    segments = _segments(days, info.get("next_dagrun_logical_date") if paused else None)
    if len(segments) == 1 and len(segments[0]) == len(days):
        bodies = [body]  # the days asked for, as asked
    else:
        bodies = [
            {**body, "from_date": _iso(seg[0].logical_date), "to_date": _iso(seg[-1].logical_date)}
            for seg in segments
        ]
    return _Plan(
        spec,
        dag_id,
        paused,
        days,
        chosen,
        _day(spec, dag, due) if due else None,
        segments,
        bodies,
        span,
        _downstream(af, dag_id),
        dag is Dag.train,
    )


def _downstream(af: Airflow, dag_id: str) -> list[_Downstream]:
    """The DAGs scheduled on the assets ``dag_id``'s tasks update (``GET /assets``), with their paused state."""
    query = urlencode({"dag_ids": dag_id, "limit": 100})
    assets = af.call("GET", f"/assets?{query}", what=f"the assets of {dag_id}").get("assets", [])
    consumers: dict[str, list[str]] = {}
    for asset in assets:
        if any(t.get("dag_id") == dag_id for t in asset.get("producing_tasks", ())):
            for ref in asset.get("scheduled_dags", ()):
                if ref["dag_id"] != dag_id:
                    consumers.setdefault(ref["dag_id"], []).append(asset.get("name") or asset["uri"])
    return [
        _Downstream(d, bool(_dag(af, d).get("is_paused")), ", ".join(names))
        for d, names in sorted(consumers.items())
    ]


def _what_train_does(spec: Any) -> str:
    """What one run of the train DAG does, from the spec: the training, and the promotion it may make."""
    sweep = spec.sweep
    if sweep is None:
        how = "one training"
    else:
        how = (
            f"a {sweep.method} sweep of {plural(sweep.run_cap, 'trial')}"
            if sweep.run_cap
            else f"a {sweep.method} sweep"
        )
    approve = ", after a human approves it" if spec.gate.approval == "required" else ""
    return f"{how}, then the gate, which may promote a new production model and redeploy it{approve}"


def _downstream_lines(plan: _Plan, no_downstream: bool) -> list[str]:
    """What the runs set off: per downstream DAG, whether it runs and what that does, and how to change it."""
    lines = []
    if plan.trains:
        lines.append(f"each {plan.dag_id} run trains {plan.spec.name}: {_what_train_does(plan.spec)}")
    runs = plural(len(plan.chosen), "run")
    for d in plan.downstream:
        does = (
            _what_train_does(plan.spec) if d.dag_id == f"{plan.spec.name}_train" else "whatever its tasks do"
        )
        head = f"the {runs} update {d.assets}, on which {d.dag_id} is scheduled"
        if d.paused:
            lines.append(
                f"{head} (paused): they start no {d.dag_id} run; to act on the new data, unpause it "
                f"(`freestack airflow dags unpause {d.dag_id}`) and trigger a run "
                f"(`freestack airflow dags trigger {d.dag_id}`): {does}"
            )
        elif no_downstream:
            lines.append(
                f"{head} (unpaused): --no-downstream pauses it for the backfill and unpauses it at the "
                f"end, so they start no {d.dag_id} run; trigger one afterwards to act on the new data "
                f"(`freestack airflow dags trigger {d.dag_id}`)"
            )
        else:
            lines.append(
                f"{head} (unpaused): each update it sees starts a {d.dag_id} run (up to {len(plan.chosen)}): "
                f"{does}; to backfill without that, pass --no-downstream (it pauses {d.dag_id} for the "
                f"backfill only), or pause it (`freestack airflow dags pause {d.dag_id}`)"
            )
    return lines


def _show(plan: _Plan, unpause: bool, no_downstream: bool = False) -> None:
    """Print the plan; CliError when no day has data, or when unpausing would start a run that fails."""
    console, dag_id, due_day = out(), plan.dag_id, plan.due_day
    state = (
        "unpaused"
        if not plan.paused
        else "paused: unpaused for the backfill" + ("" if unpause else ", paused again after")
    )
    console.print(
        f"{dag_id} ({state}): {plural(len(plan.days), 'day')} {plan.span}, {len(plan.chosen)} to run"
    )
    for d in plan.days:
        console.print(f"  {d.ds}  {d.note}")
    if due_day is not None:
        console.print(
            f"  unpausing lets the scheduler start its latest interval {due_day.ds} too (catchup: false): "
            f"{due_day.due_note}"
        )
    if not plan.chosen and dag_id.endswith("_score"):
        raise CliError(
            f"no input for any day of {dag_id} {plan.span} ({plan.spec.score.input}), so no run",
            "ingest those days first, or pick days that have input",
        )
    if not plan.chosen:
        raise CliError(
            f"no landing files for any day of {dag_id} {plan.span}, so no run",
            f"land them first (source.landing of the spec: {plan.spec.source.landing}), or pick days that have them",
        )
    for line in _downstream_lines(plan, no_downstream):
        console.print(line)
    ingest_fails = dag_id.endswith("_ingest") and plan.spec.source.policy.on_missing == "fail"
    if due_day is not None and not due_day.has_data and not unpause and ingest_fails:
        _refuse_due(plan, due_day)


def _refuse_due(plan: _Plan, due: _Day) -> NoReturn:
    """Unpausing would make the scheduler start the latest interval, which has no files and would fail."""
    raise CliError(
        f"{plan.dag_id} is paused, and Airflow starts a paused DAG's backfill runs only once it is unpaused, which "
        f"also makes the scheduler start the run of {due.ds} (its latest interval, catchup: false): it has no landing "
        f"files in {due.folder}, so that run would {due.missing}",
        f"any of these: land {due.ds}'s files first (and backfill up to it: --end {due.ds}); or set "
        f"source.policy.on_missing to skip (a day without files is skipped) or wait (its run waits for them) in "
        f"{spec_file(plan.spec.name)}; or pass --unpause to start the schedule anyway (the DAG stays unpaused; that "
        f"run fails); or unpause the DAG yourself once the files have landed, then backfill",
    )


def _run(
    af: Airflow, plan: _Plan, unpause: bool, timeout: float, no_downstream: bool = False
) -> tuple[list[dict[str, Any]], str]:
    """Send the plan's parts one after the other and follow their runs; a paused DAG is unpaused after
    the first part's runs exist and, without ``--unpause``, paused again at the end; with
    ``no_downstream`` the unpaused downstream DAGs are paused meanwhile. (runs, last backfill id)"""
    console, dag_id = out(), plan.dag_id
    runs: list[dict[str, Any]] = []
    unpaused, created, held = False, "", []
    try:
        for d in (d for d in plan.downstream if no_downstream and not d.paused):
            _set_paused(af, d.dag_id, True, f"pausing {d.dag_id}")
            held.append(d.dag_id)
            console.print(f"paused {d.dag_id} for the backfill (--no-downstream)")
        for seg, part in zip(plan.segments, plan.bodies, strict=True):
            _wait_closed(af, dag_id)  # the previous part's, or an earlier command's
            backfill = af.create_backfill(part, f"the backfill of {dag_id}")
            created, af.api.follow = backfill["id"], f"{af.url}/dags/{dag_id}"
            # after the first backfill's runs exist: the latest interval may be one
            if plan.paused and not unpaused:
                _set_paused(af, dag_id, False, f"unpausing {dag_id}")
                unpaused = True
                console.print(
                    f"unpaused {dag_id} for the backfill"
                    + (" (--unpause: it stays unpaused)" if unpause else "")
                )
            console.print(
                f"backfill {created} of {dag_id}: {plural(len(seg), 'run')}, {seg[0].ds} to {seg[-1].ds} ({af.url}/dags/{dag_id})"
            )
            runs += _follow(
                af,
                dag_id,
                {**backfill, "from_date": part["from_date"], "to_date": part["to_date"]},
                len(seg),
                timeout,
                repause=plan.paused and not unpause,
            )
    finally:
        if unpaused and not unpause:
            _set_paused(af, dag_id, True, f"pausing {dag_id} again")
            console.print(f"paused {dag_id} again, as it was")
        for held_id in held:  # after the runs: their asset events found it paused and queued nothing
            _set_paused(af, held_id, False, f"unpausing {held_id} again")
            console.print(f"unpaused {held_id} again, as it was")
    return runs, created


def _set_paused(af: Airflow, dag_id: str, paused: bool, what: str) -> None:
    af.call("PATCH", f"/dags/{dag_id}?update_mask=is_paused", {"is_paused": paused}, what)


@dataclass(frozen=True)
class _Day:
    """One interval of the backfill: whether it gets a run, and why."""

    logical_date: str
    ds: str
    runs: bool
    has_data: bool
    note: str  # its plan line
    folder: str = ""
    missing: str = ""  # what its run does without landing files (on_missing)

    @property
    def due_note(self) -> str:
        return (
            "it has data"
            if self.has_data
            else f"it has none in {self.folder}, so that run would {self.missing}"
        )


def _day(spec: Any, dag: Dag, logical_date: str) -> _Day:
    """Interval ``logical_date``: for the ingest DAG, with its landing files (``freestack.ingest.core``)."""
    ds = str(logical_date)[:10]
    if dag is Dag.score:
        return _score_day(spec, logical_date, ds)
    if dag is not Dag.ingest:
        return _Day(logical_date, ds, True, True, "run")

    files, policy = len(landing_files(spec, ds)), spec.source.policy
    folder = str(landing_dir(spec, ds))
    missing = {
        "fail": "fail (on_missing: fail)",
        "skip": "be skipped (on_missing: skip)",
        "wait": f"wait up to {policy.wait_timeout_minutes:g} min for them (on_missing: wait)",
    }[policy.on_missing]
    waits = policy.on_missing == "wait"
    if files:
        note = f"run: {plural(files, 'landing file')}"
    elif waits:
        note = (
            f"run: no landing files yet, it waits up to {policy.wait_timeout_minutes:g} min "
            f"for them in {folder} (on_missing: wait)"
        )
    else:
        note = f"left out: no landing files in {folder}"
    return _Day(logical_date, ds, bool(files) or waits, bool(files), note, folder, missing)


def _score_day(spec: Any, logical_date: str, ds: str) -> _Day:
    """A day of the score DAG: run when its input (a lake partition, or the input folder's files) is
    there, else left out: a day without input is never an empty success that looks like data."""
    from freestack.score.day import input_files

    if spec.score is None:
        raise CliError(
            f"pipeline {spec.name!r} has no score: block, so it has no {spec.name}_score DAG",
            "add a score: block to its spec (docs/stages/score.md)",
        )
    files = input_files(spec, ds)
    where = (
        spec.score.input
        if spec.score.lake_pipeline is None
        else f"the lake of {spec.score.lake_pipeline or spec.name}"
    )
    if files:
        return _Day(logical_date, ds, True, True, f"run: {plural(len(files), 'input file')} ({where})", where)
    skipped = "be skipped, its plan task saying there was nothing to score"
    return _Day(logical_date, ds, False, False, f"left out: no input for {ds} ({where})", where, skipped)


def _segments(days: list[_Day], due: str | None) -> list[list[_Day]]:
    """The runs of consecutive days that get a run, one backfill each (a backfill covers a range); the
    one holding the interval the scheduler would start on unpause first, so that it has its run by then."""
    segments: list[list[_Day]] = [[]]
    for d in days:
        if d.runs:
            segments[-1].append(d)
        elif segments[-1]:
            segments.append([])
    segments = [s for s in segments if s]
    if due is not None:
        segments.sort(key=lambda s: not any(_ts(d.logical_date) == _ts(due) for d in s))
    return segments


def _dag(af: Airflow, dag_id: str) -> dict[str, Any]:
    """The DAG as the API shows it; :class:`CliError` if Airflow has no such DAG."""
    missing = CliError(
        f"Airflow has no DAG {dag_id!r} (yet)",
        "its DAG processor may still be parsing it; check `freestack airflow dags list-import-errors`",
    )
    return af.call("GET", f"/dags/{dag_id}", what=f"DAG {dag_id}", not_found=missing)


def _due_run(af: Airflow, dag_id: str, info: dict[str, Any], covered: set[float]) -> str | None:
    """The logical date of the run the scheduler creates as soon as the DAG is unpaused (its next
    scheduled interval, when that is due and has no run yet, nor one from this backfill), or None."""
    when, after = info.get("next_dagrun_logical_date"), info.get("next_dagrun_run_after")
    if not when or not after or _ts(after) > time.time() or _ts(when) in covered:
        return None
    query = urlencode({"logical_date_gte": when, "logical_date_lte": when, "limit": 1})
    existing = af.call("GET", f"/dags/{dag_id}/dagRuns?{query}", what=f"the runs of {dag_id}")
    return None if existing.get("total_entries") or existing.get("dag_runs") else str(when)


def _iso(logical_date: str) -> str:
    return datetime.fromisoformat(str(logical_date).replace("Z", "+00:00")).strftime("%Y-%m-%dT%H:%M:%SZ")


def _follow(
    af: Airflow, dag_id: str, backfill: dict[str, Any], total: int, timeout: float, *, repause: bool = False
) -> list[dict[str, Any]]:
    """Poll the backfill's runs until ``total`` finished (or the backfill completed); report each one."""
    since, deadline, reported = backfill["created_at"], time.monotonic() + timeout, set()
    console = out()
    with progress(console=console) as bar:
        task = bar.add_task(f"{dag_id} runs", total=total)
        while True:
            completed = af.call("GET", f"/backfills/{backfill['id']}", what=f"backfill {backfill['id']}").get(
                "completed_at"
            )
            # read after: as fresh as `completed`
            done = ended_since(_runs(af, dag_id, backfill["from_date"], backfill["to_date"]), since)
            for r in (r for r in done if r["dag_run_id"] not in reported):
                reported.add(r["dag_run_id"])  # a line per run: above the bar on a terminal, alone otherwise
                console.print(
                    f"{dag_id} {str(r['logical_date'])[:10]}: {r['state']} ({r.get('duration') or 0:.1f} s)"
                )
            bar.update(task, completed=len(done))
            # done once its runs ended: the scheduler closes the backfill itself later (_wait_closed)
            if completed or len(done) >= total:
                return done
            if time.monotonic() > deadline:
                rest = (
                    f"the DAG is paused again, as it was, so its other runs wait: unpause it ({af.url}/dags/{dag_id}) "
                    "to let them finish"
                    if repause
                    else f"it goes on; follow it at {af.url}/dags/{dag_id}"
                )
                raise CliError(
                    f"backfill {backfill['id']} of {dag_id}: {len(done)} of {plural(total, 'run')} finished after {timeout:.0f} s",
                    rest,
                )
            time.sleep(POLL_SECONDS)


def ended_since(runs: list[dict[str, Any]], created_at: str) -> list[dict[str, Any]]:
    """The runs that finished (succeeded or failed) since ``created_at`` (a backfill's, say)."""
    since = _ts(created_at)
    return [r for r in runs if r["state"] in FINISHED and r.get("end_date") and _ts(r["end_date"]) >= since]


def _wait_closed(af: Airflow, dag_id: str) -> None:
    """Return once ``dag_id`` has no open backfill. One whose runs all ended is waited for (the scheduler
    closes it within half a minute, and Airflow refuses another backfill of the DAG until then); one with
    runs still queued or running is a :class:`CliError` at once."""
    deadline, said = time.monotonic() + CLOSE_GRACE_S, False
    while (open_ := _open_backfill(af, dag_id)) is not None:
        query = urlencode({"run_type": "backfill", "state": ["queued", "running"], "limit": 1}, doseq=True)
        left = af.call("GET", f"/dags/{dag_id}/dagRuns?{query}", what=f"the runs of {dag_id}")
        if left.get("total_entries"):
            raise CliError(
                f"backfill {open_['id']} of {dag_id} is still running ({plural(left['total_entries'], 'run')} to go)",
                f"one backfill per DAG at a time: wait for it ({af.url}/dags/{dag_id}), or cancel it in the UI",
            )
        if time.monotonic() > deadline:
            raise CliError(
                f"backfill {open_['id']} of {dag_id}: its runs ended, and Airflow did not close it in {CLOSE_GRACE_S:.0f} s",
                "is its scheduler running? `freestack up` starts the stack",
            )
        if not said:
            out().print(f"waiting for Airflow to close backfill {open_['id']} of {dag_id} (its runs ended)")
            said = True
        time.sleep(POLL_SECONDS)


def _open_backfill(af: Airflow, dag_id: str) -> dict[str, Any] | None:
    query = urlencode({"dag_id": dag_id, "order_by": "-id", "limit": 10})
    found = af.call("GET", f"/backfills?{query}", what=f"the backfills of {dag_id}").get("backfills", [])
    return next((b for b in found if not b.get("completed_at")), None)


def _runs(af: Airflow, dag_id: str, first: str, last: str) -> list[dict[str, Any]]:
    """The DAG's runs from ``first`` to ``last`` (logical dates), page by page (Airflow caps a page at 100)."""
    runs: list[dict[str, Any]] = []
    while True:
        query = urlencode(
            {
                "logical_date_gte": first,
                "logical_date_lte": last,
                "order_by": "logical_date",
                "limit": 100,
                "offset": len(runs),
            }
        )
        page = af.call("GET", f"/dags/{dag_id}/dagRuns?{query}", what=f"the runs of {dag_id}")
        runs += page["dag_runs"]
        if not page["dag_runs"] or len(runs) >= page.get("total_entries", 0):
            return runs


def _reprocess_advice(runs: list[dict[str, Any]], body: dict[str, Any]) -> str:
    """What to pass to run again the days the dry run left out, by their runs' states: ``failed`` for
    failed runs only, ``completed`` for succeeded ones too; a queued or running run is never run again."""
    states = [str(r.get("state")) for r in runs]
    if not states:  # none listed: the dry run left the days out for another reason
        return "pass --reprocess failed (failed runs) or --reprocess completed (every finished run) to run them again"
    failed, done = states.count("failed"), states.count("success")
    busy = len(states) - failed - done
    asked = body.get("reprocess_behavior", Reprocess.none.value)
    ways = []
    if failed and asked == Reprocess.none.value:
        ways.append(f"pass --reprocess failed to run the {plural(failed, 'failed run')} again")
    if done:
        ways.append(f"--reprocess completed to run the {plural(done, 'succeeded run')} again too")
    if not ways:
        return f"{plural(busy, 'run')} still queued or running: wait for them, then backfill again"
    advice = ", or ".join(ways)
    advice = advice if advice.startswith("pass") else f"pass {advice.removesuffix(' too')}"
    return advice + (f" (not the {plural(busy, 'run')} still queued or running)" if busy else "")


def _ts(text: str) -> float:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


__all__ = ["backfill"]
