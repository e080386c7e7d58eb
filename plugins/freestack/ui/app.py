"""The freestack pages of the Airflow UI (mounted by the plugin at ``/freestack/ui``; the UI frames them
under its "freestack" navigation entries):

    /models, /models/<p>, /models/<p>/<version>       the registry: versions, gate, aliases, card, report
    /sweeps, /sweeps/<p>/<sweep>                       trials, the best, Plotly pictures
    /deployments                                       what is served, health, requests, latency
    /data, /data/<p>                                   lake partitions, rows, quarantine reasons
    /monitoring                                        each model's judged intervals, drift over time
    /scores, /scores/<p>                               the scored days: version, rows, quarantine, predictions
    /task?dag_id=&run_id=&task_id=                     a task's matching page (its "freestack" extra link)
    /api/...                                           the same as JSON

Every route needs Airflow's login (:mod:`freestack.ui.auth`); a pipeline's pages need read access to its
DAGs, and promote / rollback need the right to trigger the DAG they run (:mod:`freestack.ui.actions`).
Pages are rendered on the server from :mod:`freestack.ui.catalog` (Jinja2, autoescaped); the only
scripts are ``static/views.js`` (the shell: theme, deep links, tables, the Plotly figures) and
``static/sweep_live.js`` (a running sweep's page, updated as trials finish).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from freestack.ui import actions, extra_pages
from freestack.ui.auth import current_user, may_trigger, request_token, user_name
from freestack.ui.cards import render_card
from freestack.ui.catalog import (
    common,
    deployment_pages,
    lake_pages,
    model_pages,
    monitoring_pages,
    score_pages,
    sweep_pages,
)
from freestack.ui.plots import (
    drift_over_time,
    metric_over_epochs,
    metric_over_versions,
    metric_vs_params,
    predictions_over_days,
    text_signals_over_time,
)
from freestack.ui.shared import (
    HEADERS,
    TEMPLATES,
    URL_PREFIX,
    found,
    model_of,
    off_loop,
    page,
    pipeline_of,
    readable,
    reads_every_dag,
    same_origin,
    unpiped_readable,
    user_of,
)
from freestack.ui.sweep_live import sweep_update
from freestack.ui.tasks import page_of_task
from freestack.ui.vendor import plotly_js, plotly_js_name

HERE = Path(__file__).parent
#: a registered file's own page (the evaluation report inlines its plots): shown sandboxed, scripts off
FILE_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PAGE_SIZE = 100

views_app = FastAPI(
    title="freestack views",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
    dependencies=[Depends(current_user)],
)
STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.suffix in (".css", ".js", ".svg")}


@views_app.get("/static/{name}")
def static(name: str) -> Response:
    """The pages' own style sheet, script and icon (a route, not a mount: a mount skips the login)."""
    if name not in STATIC:
        raise HTTPException(404, f"no static file {name!r}")
    kinds = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
    return Response(
        STATIC[name].read_bytes(),
        media_type=kinds[STATIC[name].suffix],
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@views_app.get("/vendor/{name}")
def vendor(name: str, request: Request) -> Response:
    """plotly.js under its versioned name, gzipped and cached for a year (:mod:`freestack.ui.vendor`); the
    unversioned name of older pages is redirected to it."""
    if name == plotly_js_name():
        return plotly_js(request)
    if name == "plotly.min.js":
        return RedirectResponse(plotly_js_name(), status_code=301)
    raise HTTPException(404, f"no file {name!r} here: the chart pages load {plotly_js_name()}")


@views_app.exception_handler(HTTPException)
async def _refused(request: Request, exc: HTTPException) -> Response:
    """JSON for the API; before the login is known (it failed), the page that says to log in; else an error page."""
    if "/api/" in request.url.path:
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers={"Cache-Control": "no-store"})
    if not hasattr(request.state, "user"):
        return HTMLResponse(
            TEMPLATES.get_template("login.html").render(message=exc.detail), exc.status_code, headers=HEADERS
        )
    return page(
        request, "error.html", status=exc.status_code, title=f"HTTP {exc.status_code}", message=exc.detail
    )


# ---------------------------------------------------------------------------------------------------------
# models: a pipeline's (``/models/<pipeline>``) and each model no pipeline trains (``/models/<model>``)


def _models_overview(user: Any) -> list[model_pages.ModelPage]:
    """Every model the registry holds that the user may read: each training pipeline's, then the others."""
    piped = [model_pages.model_page(p.name, s) for p, s in readable(user) if p.trains]
    return piped + [model_pages.model_page(None, reg) for reg in unpiped_readable(user)]


@views_app.get("/", response_class=HTMLResponse)
@views_app.get("/models", response_class=HTMLResponse)
async def models(request: Request, user: Any = Depends(user_of)) -> HTMLResponse:
    return page(
        request, "models.html", title="Models", tab="models", models=await off_loop(_models_overview, user)
    )


@views_app.get("/api/models")
async def models_json(request: Request, user: Any = Depends(user_of)) -> list[model_pages.ModelPage]:
    return await off_loop(_models_overview, user)


@views_app.get("/models/{name}", response_class=HTMLResponse)
async def model(
    request: Request, name: str, pg: int = Query(1, ge=1), user: Any = Depends(user_of)
) -> HTMLResponse:
    pipeline, source = model_of(name, user)
    data = await off_loop(model_pages.model_page, pipeline, source)
    newest = data.versions[::-1]
    pages = max(1, -(-len(newest) // PAGE_SIZE))
    shown = newest[(pg - 1) * PAGE_SIZE : pg * PAGE_SIZE]
    metric = _plotted_metric(source.gate.metric if pipeline else None, newest)
    figure = metric_over_versions(data.versions, metric) if metric and len(data.versions) > 1 else None
    columns = list(dict.fromkeys(k for r in shown for k in r.metrics))  # a sortable column per test metric
    return page(
        request,
        "model.html",
        title=f"{data.model} versions",
        tab="models",
        m=data,
        shown=shown,
        pg=pg,
        pages=pages,
        metric_columns=columns,
        figures=[figure] if figure else [],
        may_promote=bool(pipeline) and may_trigger(user, f"{pipeline}_promote"),
        may_rollback=bool(pipeline) and may_trigger(user, f"{pipeline}_rollback"),
    )


def _plotted_metric(gate_metric: str | None, newest: list[model_pages.VersionRow]) -> str | None:
    """The test metric the gate decides on (the pipeline's, else the one the newest gated version
    recorded), else the newest version's first test metric."""
    gated = gate_metric or next((v.gate.metric for v in newest if v.gate.metric), None)
    if gated and any(f"test_{gated}" in v.metrics for v in newest):
        return f"test_{gated}"
    return next(iter(newest[0].metrics), None) if newest else None


@views_app.get("/api/models/{name}")
async def model_json(name: str, user: Any = Depends(user_of)) -> model_pages.ModelPage:
    return await off_loop(model_pages.model_page, *model_of(name, user))


def _version(pipeline: str | None, source: Any, version: str) -> model_pages.VersionPage:
    return found(model_pages.version_page, pipeline, source, version)


@views_app.get("/models/{name}/{version}", response_class=HTMLResponse)
async def version(request: Request, name: str, version: str, user: Any = Depends(user_of)) -> HTMLResponse:
    pipeline, source = model_of(name, user)
    v = await off_loop(_version, pipeline, source, version)
    af = v.lineage.get("airflow") or {}
    return page(
        request,
        "version.html",
        title=f"{v.model} {v.row.version}",
        tab="models",
        v=v,
        card=render_card(v.card),
        trained_on=model_pages.trained_on(v.lineage),
        run_link=(
            actions.run_url(af["dag_id"], af["run_id"]) if af.get("dag_id") and af.get("run_id") else None
        ),
        may_promote=bool(pipeline) and may_trigger(user, f"{pipeline}_promote"),
    )


@views_app.get("/api/models/{name}/{version}")
async def version_json(name: str, version: str, user: Any = Depends(user_of)) -> model_pages.VersionPage:
    return await off_loop(_version, *model_of(name, user), version)


@views_app.get("/models/{name}/{version}/files/{rel:path}")
async def version_file(name: str, version: str, rel: str, user: Any = Depends(user_of)) -> Response:
    """A registered file of the version (the evaluation report, its plots, the card...), read through the
    storage layer; only files the registration's manifest lists."""
    pipeline, source = model_of(name, user)
    v = await off_loop(_version, pipeline, source, version)
    if rel not in v.files:
        raise HTTPException(404, f"{v.model} {v.row.version} has no registered file {rel!r}")
    kinds = {
        ".html": "text/html",
        ".png": "image/png",
        ".json": "application/json",
        ".md": "text/plain",
        ".csv": "text/csv",
        ".txt": "text/plain",
    }
    kind = kinds.get(Path(rel).suffix.lower())
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": FILE_CSP,
        "Cache-Control": "private, max-age=3600",
    }
    if kind is None:
        kind, headers["Content-Disposition"] = (
            "application/octet-stream",
            f'attachment; filename="{Path(rel).name}"',
        )
    return StreamingResponse(
        model_pages.version_file_chunks(source, v.row.version, rel), media_type=kind, headers=headers
    )


# ---------------------------------------------------------------------------------------------------------
# actions: each runs a DAG through Airflow, as the user, after a confirmation page


def _action(
    pipeline: str, kind: str, version: str, alias: str | None, to: str | None, expect: str | None
) -> dict[str, Any]:
    """What a promote or rollback would run: the DAG, its form, and a sentence saying what it does. The
    form names the version the button showed (``to`` for a rollback) and what the alias is as the user
    asks (``expect``): the run moves it only while it still is."""
    if kind == "rollback":
        return {
            "dag_id": f"{pipeline}_rollback",
            "conf": {"version": to, "expect_production": expect},
            "alias": "production",
            "title": "roll back production",
            "expect": expect,
            "what": f"production goes back from {expect} to {to}, which is redeployed",
        }
    if alias not in ("production", "staging"):
        raise HTTPException(400, f"alias {alias!r} cannot be set here: use production or staging")
    what = f"{alias} points at {version}" + (" and it is redeployed" if alias == "production" else "")
    title = "promote to production" if alias == "production" else f"set {alias}"
    return {
        "dag_id": f"{pipeline}_promote",
        "conf": {"version": version, "alias": alias, "expect": expect},
        "alias": alias,
        "expect": expect,
        "what": what,
        "title": title,
    }


def _override(version: str, reason: str) -> str:
    """Why a version the gate blocked is promoted anyway: the form's reason, which must say it."""
    if not reason.strip():
        raise HTTPException(
            400,
            f"the gate blocked {version}: promoting it overrides that decision, and takes a reason saying why "
            "(kept in the aliases' history and the run's note with the gate's reasons)",
        )
    return reason


def _check(kind: str) -> None:
    if kind not in ("promote", "rollback"):
        raise HTTPException(404, f"no action {kind!r}: promote or rollback")


def _moved_by_pipeline(name: str, user: Any) -> Any:
    """The spec of the pipeline ``name``, whose ``<name>_promote`` and ``<name>_rollback`` DAGs the buttons
    run; 409 for a model no pipeline trains: no DAG the views know of moves its aliases."""
    pipeline, source = model_of(name, user)
    if pipeline is None:
        raise HTTPException(
            409,
            f"no pipeline trains {name!r}, so there is no {name}_promote or {name}_rollback DAG to run: move "
            "its aliases in a DAG of your own (FreestackPromoteOperator, FreestackRollbackOperator)",
        )
    return source


@views_app.get("/models/{pipeline}/{version}/{kind}", response_class=HTMLResponse)
async def confirm(
    request: Request,
    pipeline: str,
    version: str,
    kind: str,
    alias: str = "production",
    to: str = Query("", max_length=128),
    user: Any = Depends(user_of),
) -> HTMLResponse:
    """The confirmation page. A rollback's button names the production it showed (``version``) and the
    version it goes back to (``to``, else previous as it is now); a promotion's form keeps what the alias
    is now. The gate's decision on a version to promote is shown with its reasons."""
    _check(kind)
    spec = _moved_by_pipeline(pipeline, user)
    v = await off_loop(_version, pipeline, spec, version)
    current = await off_loop(model_pages.aliases, spec)
    if kind == "rollback":
        to = (
            await off_loop(_version, pipeline, spec, to or current.get("previous") or "previous")
        ).row.version
    act = _action(
        pipeline, kind, v.row.version, alias, to, v.row.version if kind == "rollback" else current.get(alias)
    )
    moved = kind == "rollback" and current.get("production") != v.row.version
    allowed = may_trigger(user, act["dag_id"])
    training = (
        await actions.runs_in_flight(f"{pipeline}_train", request_token(request) or "")
        if act["alias"] == "production"
        else []
    )
    return page(
        request,
        "confirm.html",
        title=f"Confirm: {act['title']}",
        tab="models",
        v=v,
        kind=kind,
        alias=alias,
        act=act,
        allowed=allowed,
        current=current,
        training=training,
        moved=moved,
        status=200 if allowed else 403,
    )


@views_app.post("/models/{pipeline}/{version}/{kind}", response_class=HTMLResponse)
async def act(
    request: Request,
    pipeline: str,
    version: str,
    kind: str,
    alias: str = Form("production"),
    reason: str = Form("", max_length=500),
    to: str = Form("", max_length=128),
    expect: str = Form("", max_length=128),
    user: Any = Depends(user_of),
) -> HTMLResponse:
    """Start the run the confirmation page showed: its form names the version that page named and what the
    alias was then (``expect``), so the run moves nothing if another move landed first. Promoting a version
    the gate blocked overrides the gate: the reason is required, and is the run's ``allow_blocked``."""
    same_origin(request)
    _check(kind)
    spec = _moved_by_pipeline(pipeline, user)
    v = await off_loop(_version, pipeline, spec, version)
    if kind == "rollback" and not (to and expect):
        raise HTTPException(
            400,
            "the form does not name the version to roll back to and the production it "
            "replaces: open the rollback from the Models page again",
        )
    if kind == "rollback":
        to = (await off_loop(_version, pipeline, spec, to)).row.version
    action = _action(pipeline, kind, v.row.version, alias, to, expect or None)
    if not may_trigger(user, action["dag_id"]):
        raise HTTPException(403, f"you may not trigger {action['dag_id']}, so not {kind} {v.model}")
    conf = {**action["conf"], **({"reason": reason} if kind == "promote" and reason else {})}
    if kind == "promote" and v.row.gate.decision == "blocked":
        conf["allow_blocked"] = _override(v.row.version, reason)
    note = f"{kind} from the freestack Models page by {user_name(user)}: {action['what']}" + (
        f" ({reason})" if reason else ""
    )
    try:
        run = await actions.trigger(action["dag_id"], conf, request_token(request) or "", note)
    except actions.ActionError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return page(request, "triggered.html", title=f"{kind}: started", tab="models", v=v, run=run, act=action)


# ---------------------------------------------------------------------------------------------------------
# sweeps


def _sweeps_overview(user: Any) -> list[tuple[str, list[sweep_pages.SweepRow]]]:
    return [(p.name, sweep_pages.sweeps(s)) for p, s in readable(user) if p.trains]


@views_app.get("/sweeps", response_class=HTMLResponse)
async def sweeps(request: Request, user: Any = Depends(user_of)) -> HTMLResponse:
    return page(
        request, "sweeps.html", title="Sweeps", tab="sweeps", groups=await off_loop(_sweeps_overview, user)
    )


def _sweep(pipeline: str, spec: Any, sweep_id: str) -> sweep_pages.SweepPage:
    return found(sweep_pages.sweep_page, pipeline, spec, sweep_id)


@views_app.get("/sweeps/{pipeline}/{sweep_id}", response_class=HTMLResponse)
async def sweep(request: Request, pipeline: str, sweep_id: str, user: Any = Depends(user_of)) -> HTMLResponse:
    s = await off_loop(_sweep, pipeline, pipeline_of(pipeline, user)[1], sweep_id)
    figures = [metric_vs_params(s), metric_over_epochs(s)] if s.trials else []
    counts = {
        state: sum(t.state == state for t in s.trials) for state in dict.fromkeys(t.state for t in s.trials)
    }
    return page(
        request, "sweep.html", title=f"Sweep {sweep_id}", tab="sweeps", s=s, figures=figures, counts=counts
    )


@views_app.get("/api/sweeps/{pipeline}")
async def sweeps_json(pipeline: str, user: Any = Depends(user_of)) -> list[sweep_pages.SweepRow]:
    return await off_loop(sweep_pages.sweeps, pipeline_of(pipeline, user)[1])


@views_app.get("/api/sweeps/{pipeline}/{sweep_id}")
async def sweep_json(pipeline: str, sweep_id: str, user: Any = Depends(user_of)) -> sweep_pages.SweepPage:
    return await off_loop(_sweep, pipeline, pipeline_of(pipeline, user)[1], sweep_id)


@views_app.get("/api/sweeps/{pipeline}/{sweep_id}/live")
async def sweep_live(
    pipeline: str, sweep_id: str, known: str = Query("", max_length=64), user: Any = Depends(user_of)
) -> Any:
    """What the sweep page redraws while the sweep runs (``static/sweep_live.js`` polls it): only the
    status when nothing changed since the signature ``known`` the page has (:mod:`freestack.ui.sweep_live`)."""
    s = await off_loop(_sweep, pipeline, pipeline_of(pipeline, user)[1], sweep_id)
    return await off_loop(sweep_update, s, known, TEMPLATES)


# ---------------------------------------------------------------------------------------------------------
# deployments and data


def _deployments(user: Any) -> list[deployment_pages.DeploymentRow]:
    """Every deployment record the user may read: a pipeline's model's with read access to its
    ``<p>_train``, any other (a reusable operator's, ``freestack serve deploy``'s) with read access to
    every DAG."""
    names = {p.name for p, _ in readable(user)}
    every = reads_every_dag(user)
    rows = deployment_pages.deployments(common.pipelines())
    return [d for d in rows if d.pipeline in names or (d.pipeline is None and every)]


@views_app.get("/deployments", response_class=HTMLResponse)
async def deployments(request: Request, user: Any = Depends(user_of)) -> HTMLResponse:
    return page(
        request,
        "deployments.html",
        title="Deployments",
        tab="deployments",
        rows=await off_loop(_deployments, user),
    )


@views_app.get("/api/deployments")
async def deployments_json(user: Any = Depends(user_of)) -> list[deployment_pages.DeploymentRow]:
    return await off_loop(_deployments, user)


@views_app.get("/data", response_class=HTMLResponse)
async def data(request: Request, user: Any = Depends(user_of)) -> HTMLResponse:
    lakes = await off_loop(lambda: [lake_pages.lake_page(p.name, s) for p, s in readable(user, "ingest")])
    return page(request, "data.html", title="Data", tab="data", lakes=lakes)


@views_app.get("/data/{pipeline}", response_class=HTMLResponse)
async def data_one(request: Request, pipeline: str, user: Any = Depends(user_of)) -> HTMLResponse:
    lake = await off_loop(lake_pages.lake_page, pipeline, pipeline_of(pipeline, user, "ingest")[1])
    return page(request, "data.html", title=f"Data: {pipeline}", tab="data", lakes=[lake])


@views_app.get("/api/data/{pipeline}")
async def data_json(pipeline: str, user: Any = Depends(user_of)) -> lake_pages.LakePage:
    return await off_loop(lake_pages.lake_page, pipeline, pipeline_of(pipeline, user, "ingest")[1])


# ---------------------------------------------------------------------------------------------------------
# monitoring


def _monitoring(user: Any, figures: bool = False) -> list[monitoring_pages.MonitoringPage]:
    """Each readable model's judged intervals; with ``figures``, its drift-over-time chart too (the page's)."""
    pages = [monitoring_pages.monitoring_page(p.name, s) for p, s in readable(user) if p.trains]
    for m in pages if figures else ():
        m.figure, m.text_figure = drift_over_time(m), text_signals_over_time(m)
    return pages


@views_app.get("/monitoring", response_class=HTMLResponse)
async def monitoring(request: Request, user: Any = Depends(user_of)) -> HTMLResponse:
    return page(
        request,
        "monitoring.html",
        title="Monitoring",
        tab="monitoring",
        pages=await off_loop(_monitoring, user, True),
    )


@views_app.get("/api/monitoring")
async def monitoring_json(user: Any = Depends(user_of)) -> list[monitoring_pages.MonitoringPage]:
    return await off_loop(_monitoring, user)


@views_app.get("/monitoring/{pipeline}/{interval}/report")
async def monitoring_report(pipeline: str, interval: str, user: Any = Depends(user_of)) -> Response:
    """An interval's report (HTML, plots inline), sandboxed like a version's files."""
    _, spec = pipeline_of(pipeline, user)
    if "/" in interval or interval.startswith("."):
        raise HTTPException(404, f"no interval {interval!r}")
    data = await off_loop(monitoring_pages.monitoring_report, spec, interval)
    if data is None:
        raise HTTPException(404, f"{pipeline} has no monitoring report for {interval}")
    return Response(
        data,
        media_type="text/html",
        headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": FILE_CSP},
    )


# ---------------------------------------------------------------------------------------------------------
# scores


def _scoring(name: str, user: Any) -> Any:
    """The spec of pipeline ``name``, when it has a ``score:`` block and the user may read its ``<name>_score`` DAG."""
    spec = next((s for p, s in common.pipelines() if p.name == name), None)
    if spec is not None and spec.score is None:
        raise HTTPException(
            404,
            f"pipeline {name!r} has no score: block, so no {name}_score DAG and no scores: add "
            "one to its spec to score its lake day by day",
        )
    return pipeline_of(name, user, "score")[1]


def _scores(user: Any, figures: bool = False) -> list[score_pages.ScoresPage]:
    """The newest scored days of each readable pipeline with a ``score:`` block; with ``figures``, the page's charts."""
    specs = [(p, s) for p, s in readable(user, "score") if s.score is not None]
    return [
        _with_figure(score_pages.scores_page(p.name, s, 1, score_pages.SCORES_OVERVIEW), figures)
        for p, s in specs
    ]


def _with_figure(data: score_pages.ScoresPage, figure: bool = True) -> score_pages.ScoresPage:
    data.figure = predictions_over_days(data) if figure else None
    return data


def _scores_of(pipeline: str, spec: Any, pg: int, figure: bool = False) -> score_pages.ScoresPage:
    data = score_pages.scores_page(pipeline, spec, pg)
    if pg > data.pages:
        raise HTTPException(404, f"{pipeline} has {data.total} scored days: pages 1 to {data.pages}")
    return _with_figure(data, figure)


@views_app.get("/scores", response_class=HTMLResponse)
async def scores(request: Request, user: Any = Depends(user_of)) -> HTMLResponse:
    return page(
        request,
        "scores.html",
        title="Scores",
        tab="scores",
        pages=await off_loop(_scores, user, True),
        single=False,
    )


@views_app.get("/scores/{pipeline}", response_class=HTMLResponse)
async def scores_one(
    request: Request,
    pipeline: str,
    pg: int = Query(1, ge=1),
    run: str = Query("", max_length=250),
    user: Any = Depends(user_of),
) -> HTMLResponse:
    data = await off_loop(_scores_of, pipeline, _scoring(pipeline, user), pg, True)
    return page(
        request, "scores.html", title=f"Scores: {pipeline}", tab="scores", pages=[data], single=True, run=run
    )


@views_app.get("/api/scores")
async def scores_json(user: Any = Depends(user_of)) -> list[score_pages.ScoresPage]:
    return await off_loop(_scores, user)


@views_app.get("/api/scores/{pipeline}")
async def scores_one_json(
    pipeline: str, pg: int = Query(1, ge=1), user: Any = Depends(user_of)
) -> score_pages.ScoresPage:
    return await off_loop(_scores_of, pipeline, _scoring(pipeline, user), pg)


# ---------------------------------------------------------------------------------------------------------
# a task's page


@views_app.get("/task")
async def task_page(
    request: Request,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int = -1,
    user: Any = Depends(user_of),
) -> RedirectResponse:
    """Where a pipeline task's "freestack" extra link goes: the version its run made, its sweep, the
    deployment, the aliases, the lake, or the days its run scored."""
    pipeline, _, kind = dag_id.rpartition("_")
    _, spec = pipeline_of(pipeline, user, kind if kind in ("ingest", "score") else "train")
    target = await off_loop(page_of_task, pipeline, spec, kind, run_id, task_id)
    return RedirectResponse(f"{URL_PREFIX}{target}", status_code=303)


views_app.include_router(extra_pages.router)  # compare, try a deployment, quarantined rows: on this login

__all__ = ["URL_PREFIX", "views_app"]
