"""The pages users of MLflow, W&B and SageMaker Studio look for, on the ML views' login:

    /compare/<p>?v=A&v=B...                  versions side by side: metrics (best marked, difference to the
                                             first), gate decisions, the training config they recorded, and
                                             what their lineage differs in (partitions, spec hash, code)
    /deployments/<model>/<name>/try          a form with one input per raw feature; the row is sent to the
                                             deployment's own recorded predict URL (local ones), the answer
                                             and its latency shown
    /data/<p>/<ds>/quarantine?page=N         a partition's rejected rows, 100 a page, read with pyarrow
    /scores/<p>/<ds>/quarantine?page=N       the rows of a scored day that were not scored, the same way
    /api/...                                 the same as JSON

An :class:`~fastapi.APIRouter` that :mod:`freestack.ui.app` includes into its ``views_app`` (not mounted: a
mounted app skips the login), handing over its helpers (:func:`routes`): this module imports nothing
from the app, so no import cycle.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from freestack.ui import catalog
from freestack.ui.auth import current_user

router = APIRouter()
QUARANTINE_PAGE = 100
#: the most versions one comparison shows
MAX_COMPARED = 8
#: a config value longer than this (JSON) is shown by its length and hash: a diff, not a dump
LONG_VALUE = 120


async def _user(request: Request, user: Any = Depends(current_user)) -> Any:
    """The logged-in user, kept on the request for the error page (as :func:`freestack.ui.app.user_of`)."""
    request.state.user = user
    return user


@dataclass(frozen=True)
class Helpers:
    """What the pages use of :mod:`freestack.ui.app`: its page renderer, the readable pipeline and its spec,
    storage reads off the event loop, 404 for an unknown version, and the same-origin check of forms."""

    page: Callable[..., HTMLResponse]
    pipeline: Callable[..., tuple[Any, Any]]
    off_loop: Callable[..., Awaitable[Any]]
    found: Callable[..., Any]
    same_origin: Callable[[Request], None]


_helpers: list[Helpers] = []


def routes(**helpers: Any) -> APIRouter:
    """The router, its pages drawn with the app's ``helpers`` (the fields of :class:`Helpers`)."""
    _helpers[:] = [Helpers(**helpers)]
    return router


def _ui() -> Helpers:
    if not _helpers:
        raise RuntimeError("freestack.ui.extra_pages.routes() was not called: the views app includes it")
    return _helpers[0]


# ---------------------------------------------------------------------------------------------------------
# compare versions


class Compared(BaseModel):
    asked: str
    version: str
    aliases: list[str]
    created: str | None
    gate: catalog.Gate


class MetricRow(BaseModel):
    name: str
    values: list[float | None]
    deltas: list[float | None]
    goal: Literal["maximize", "minimize"] | None
    best: list[int]


class DiffRow(BaseModel):
    key: str
    values: list[str | None]
    same: bool


class PartitionDiff(BaseModel):
    ds: str
    sha256: list[str | None]
    changes: list[Literal["", "same", "added", "removed", "changed"]]


class ComparePage(BaseModel):
    pipeline: str
    model: str
    versions: list[Compared]
    metrics: list[MetricRow]
    params: list[DiffRow]
    lineage: list[DiffRow]
    partitions: list[PartitionDiff]
    choices: list[catalog.VersionRow]
    aliases: dict[str, str]


_MAXIMIZE = ("accuracy", "f1", "r2", "auc", "precision", "recall", "exact_match", "rouge")
_MINIMIZE = ("loss", "rmse", "mae", "mse", "error", "seconds", "perplexity")


def goal_of(metric: str) -> Literal["maximize", "minimize"] | None:
    """Whether higher or lower is better for a metric named like ``test_accuracy`` or ``best_val_loss``."""
    name = metric.lower()
    if any(w in name for w in _MINIMIZE):
        return "minimize"
    if any(w in name for w in _MAXIMIZE):
        return "maximize"
    return None


def metric_rows(metrics: list[dict[str, float]]) -> list[MetricRow]:
    """One row per metric any version has: the values, each one's difference to the first version's, and
    the best (the highest or lowest, where the name says which is better)."""
    rows = []
    for name in sorted({k for m in metrics for k in m}):
        values = [m.get(name) for m in metrics]
        first = values[0]
        deltas = [None if v is None or first is None or k == 0 else v - first for k, v in enumerate(values)]
        goal = goal_of(name)
        known = [v for v in values if v is not None and not math.isnan(v)]
        top = (max(known) if goal == "maximize" else min(known)) if goal and len(known) > 1 else None
        best = [k for k, v in enumerate(values) if top is not None and v == top]
        rows.append(MetricRow(name=name, values=values, deltas=deltas, goal=goal, best=best))
    return rows


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are values."""
    if not isinstance(doc, dict):
        return {prefix: doc} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in doc.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def shown(value: Any) -> str | None:
    """A config value as text; a long one by its size and hash (two differ exactly when their hashes do)."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) <= LONG_VALUE:
        return text
    size = f"{len(value)} items" if isinstance(value, list | dict) else f"{len(text)} characters"
    return f"{size}, sha256 {hashlib.sha256(text.encode()).hexdigest()[:12]}"


def diff_rows(docs: list[dict[str, Any]]) -> list[DiffRow]:
    """One row per flattened key some document has a value for: its value in each, and whether they are
    all the same; the rows that differ first."""
    flat = [flatten(d) for d in docs]
    rows = []
    for key in sorted({k for f in flat for k in f}):
        values = [shown(f.get(key)) for f in flat]
        if all(v is None for v in values):
            continue  # recorded by none (a custom module's hash, for a built-in net)
        rows.append(DiffRow(key=key, values=values, same=len(set(values)) == 1))
    return sorted(rows, key=lambda r: r.same)


def partition_diff(lists: list[list[dict[str, Any]]]) -> list[PartitionDiff]:
    """Each partition (ds) any version was trained on, its sha256 in each version, and per version how it
    differs from the first's: same, added (the first had no such partition), removed, or changed bytes."""
    shas = [{str(p.get("ds")): p.get("sha256") for p in parts if isinstance(p, dict)} for parts in lists]
    rows = []
    for ds in sorted({d for s in shas for d in s}):
        got = [s.get(ds) for s in shas]
        base = ds in shas[0]
        changes: list[Any] = [""]
        for s in shas[1:]:
            here = ds in s
            changes.append(
                "same"
                if here and base and s[ds] == got[0]
                else "changed"
                if here and base
                else "added"
                if here
                else "removed"
                if base
                else ""
            )
        rows.append(PartitionDiff(ds=ds, sha256=got, changes=changes))
    return rows


def training_config(lineage: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """What a version recorded about how it was trained: the hyperparameters, overrides, split and features
    (lineage.json), the model's config.json and the preprocessing it fitted (preprocessing.json)."""
    keep = ("hyperparameters", "overrides", "split", "features", "module", "tokenizer", "pretrained")
    return {
        **{k: lineage[k] for k in keep if lineage.get(k) is not None},
        "config.json": files.get("config.json") or {},
        "preprocessing.json": files.get("preprocessing.json") or {},
    }


def lineage_facts(lineage: dict[str, Any]) -> dict[str, Any]:
    """The lineage that says where a version came from, beyond its partitions."""
    window, af = lineage.get("window") or {}, lineage.get("airflow") or {}
    return {
        "spec_hash": lineage.get("spec_hash"),
        "spec_normalized_hash": lineage.get("spec_normalized_hash"),
        "code_version": lineage.get("code_version"),
        "module.sha256": (lineage.get("module") or {}).get("sha256"),
        "window.end_ds": window.get("end_ds"),
        "window.days": window.get("days"),
        "sweep": (lineage.get("sweep") or {}).get("id"),
        "airflow.run_id": af.get("run_id"),
        "data.rows": (lineage.get("data") or {}).get("rows"),
        "trained_on": catalog.trained_on(lineage),
    }


def _extra_files(spec: Any, version: str) -> dict[str, Any]:
    from freestack.registry.core import registry_for

    return catalog.read_many(
        registry_for(spec).folder, [f"{version}/config.json", f"{version}/preprocessing.json"]
    )


def compare_page(pipeline: str, spec: Any, asked: list[str]) -> ComparePage:
    """The versions (or aliases) ``asked``, side by side."""
    from freestack.registry.core import registry_for

    pages = catalog.parallel(lambda v: catalog.version_page(pipeline, spec, v), asked)
    extra = catalog.parallel(lambda p: _extra_files(spec, p.row.version), pages)
    files = [{k.split("/", 1)[1]: v for k, v in e.items()} for e in extra]
    versions = [
        Compared(asked=a, version=p.row.version, aliases=p.aliases, created=p.row.created, gate=p.row.gate)
        for a, p in zip(asked, pages, strict=True)
    ]
    reg = registry_for(spec)
    return ComparePage(
        pipeline=pipeline,
        model=spec.model_name,
        versions=versions,
        metrics=metric_rows([p.metrics for p in pages]),
        params=diff_rows([training_config(p.lineage, f) for p, f in zip(pages, files, strict=True)]),
        lineage=diff_rows([lineage_facts(p.lineage) for p in pages]),
        partitions=partition_diff([p.lineage.get("partitions") or [] for p in pages]),
        choices=catalog.version_rows(reg.folder)[::-1],
        aliases=catalog.aliases(spec),
    )


def _asked(v: list[str]) -> list[str]:
    asked = list(dict.fromkeys(x.strip() for x in v if x.strip()))
    if len(asked) > MAX_COMPARED:
        raise HTTPException(400, f"{len(asked)} versions asked: compare at most {MAX_COMPARED} at once")
    return asked


def _compare(pipeline: str, spec: Any, asked: list[str]) -> ComparePage:
    return _ui().found(compare_page, pipeline, spec, asked)


def _choices_only(pipeline: str, spec: Any) -> ComparePage:
    from freestack.registry.core import registry_for

    return ComparePage(
        pipeline=pipeline,
        model=spec.model_name,
        versions=[],
        metrics=[],
        params=[],
        lineage=[],
        partitions=[],
        choices=catalog.version_rows(registry_for(spec).folder)[::-1],
        aliases=catalog.aliases(spec),
    )


@router.get("/compare/{pipeline}", response_class=HTMLResponse)
async def compare(
    request: Request, pipeline: str, v: list[str] = Query([]), user: Any = Depends(_user)
) -> HTMLResponse:
    ui = _ui()
    _, spec = ui.pipeline(pipeline, user)
    asked = _asked(v)
    if len(asked) >= 2:
        data = await ui.off_loop(_compare, pipeline, spec, asked)
    else:
        data = await ui.off_loop(_choices_only, pipeline, spec)
    title = f"Compare versions of {data.model}"
    return ui.page(request, "compare.html", title=title, tab="models", c=data, asked=asked)


@router.get("/api/compare/{pipeline}")
async def compare_json(pipeline: str, v: list[str] = Query([]), user: Any = Depends(_user)) -> ComparePage:
    ui = _ui()
    _, spec = ui.pipeline(pipeline, user)
    asked = _asked(v)
    if len(asked) < 2:
        raise HTTPException(400, "name at least two versions or aliases to compare: ?v=<A>&v=<B>")
    return await ui.off_loop(_compare, pipeline, spec, asked)


# ---------------------------------------------------------------------------------------------------------
# try a deployment


class FeatureInput(BaseModel):
    name: str
    kind: str
    input: Literal["number", "text", "category", "textarea"]
    options: list[str] = []
    value: str = ""


class TryAnswer(BaseModel):
    status: int | None
    latency_ms: float
    predicted: str | None = None
    outputs: dict[str, float] = {}
    body: str


class TryPage(BaseModel):
    pipeline: str
    model: str
    name: str
    version: str | None
    runtime: str
    predict_url: str
    features: list[FeatureInput]
    answer: TryAnswer | None = None


def _input_of(kind: str, categories: list[str]) -> Literal["number", "text", "category", "textarea"]:
    if kind in ("float", "int", "integer", "double", "number"):
        return "number"
    if categories or kind == "bool":
        return "category"
    return "textarea" if kind == "text" else "text"


def feature_inputs(
    lineage: dict[str, Any], pre: dict[str, Any], sample: dict[str, Any] | None
) -> list[FeatureInput]:
    """One input per raw feature the version was trained on (lineage's feature kinds, else the
    preprocessing's feature list), categories from the fitted encoder, prefilled from the evaluation's
    first test row when there is one."""
    kinds = lineage.get("features") or {f: "float" for f in pre.get("features") or []}
    categories = ((pre.get("encoder") or {}).get("category")) or {}
    first = (
        dict(zip(sample.get("features") or [], (sample.get("rows") or [[]])[0], strict=False))
        if sample
        else {}
    )
    order = [
        *(sample or {}).get("features", []),
        *(pre.get("features") or []),
        *kinds,
    ]  # the model's order first
    out = []
    for name in [n for n in dict.fromkeys(order) if n in kinds]:
        kind = kinds[name]
        options = [str(c) for c in categories.get(name) or []] or (
            ["true", "false"] if kind == "bool" else []
        )
        value = first.get(name)
        out.append(
            FeatureInput(
                name=name,
                kind=str(kind),
                input=_input_of(str(kind), options),
                options=options,
                value="" if value is None else str(value),
            )
        )
    return out


def _record(model: str, name: str, user: Any) -> tuple[str, Any, dict[str, Any]]:
    """The pipeline serving ``model``, its spec and the deployment's record, when the user may read it."""
    from freestack.serving.records import Deployments

    specs = [(p, s) for p, s in catalog.pipelines() if s.model_name == model]
    if not specs:
        raise HTTPException(404, f"no pipeline trains a model {model!r}")
    p, spec = _ui().pipeline(specs[0][0].name, user)
    record = Deployments(spec.root, model).get(name)
    if record is None:
        names = ", ".join(Deployments(spec.root, model).names()) or "none"
        raise HTTPException(404, f"model {model!r} has no deployment {name!r} (deployments: {names})")
    if (
        record.get("target", "local") != "local"
        or record.get("state") != "serving"
        or not record.get("predict_url")
    ):
        raise HTTPException(
            409,
            f"{model}/{name} is {record.get('state')} on {record.get('target', 'local')}: "
            "only a serving local deployment can be tried here",
        )
    return p.name, spec, record


def try_page(model: str, name: str, user: Any) -> TryPage:
    from freestack.storage import to_path

    pipeline, _, record = _record(model, name, user)
    folder = to_path(record["version_uri"]) if record.get("version_uri") else None
    got = (
        catalog.read_many(folder, ["lineage.json", "preprocessing.json", "evaluation/smoke.json"])
        if folder
        else {}
    )
    return TryPage(
        pipeline=pipeline,
        model=model,
        name=name,
        version=record.get("version"),
        runtime=record.get("runtime", "seldon"),
        predict_url=record["predict_url"],
        features=feature_inputs(
            got.get("lineage.json") or {},
            got.get("preprocessing.json") or {},
            got.get("evaluation/smoke.json"),
        ),
    )


def parsed_row(features: list[FeatureInput], form: dict[str, str]) -> list[Any]:
    """The form's values in the features' order: numbers as numbers, an empty field as null."""
    row: list[Any] = []
    for f in features:
        raw = (form.get(f.name) or "").strip()
        if raw == "" or f.input != "number":
            row.append(None if raw == "" else raw)
            continue
        try:
            number = float(raw)
        except ValueError:
            raise HTTPException(400, f"{f.name}: {raw!r} is not a number") from None
        row.append(int(number) if f.kind in ("int", "integer") and number.is_integer() else number)
    return row


def request_body(runtime: str, names: list[str], row: list[Any]) -> dict[str, Any]:
    """One row as the deployment's protocol wants it, marked as not traffic (the request log skips it)."""
    from freestack.serving.smoke import seldon_request, v2_request
    from freestack_server.requestlog import SMOKE_ID

    tag, sample = f"{SMOKE_ID}-try-{time.time_ns()}", {"features": names, "rows": [row]}
    if runtime == "mlserver":
        return {**v2_request(sample), "id": tag}
    return {**seldon_request(sample), "meta": {"puid": tag}}


def read_answer(body: Any) -> tuple[str | None, dict[str, float]]:
    """The predicted class (or value) and the named outputs of a Seldon or Open Inference answer."""
    if not isinstance(body, dict):
        return None, {}
    if isinstance(body.get("data"), dict):
        names, rows = body["data"].get("names") or [], body["data"].get("ndarray") or [[]]
        values = rows[0] if rows and isinstance(rows[0], list) else rows
    else:
        out = {o.get("name"): o for o in body.get("outputs") or [] if isinstance(o, dict)}
        probs = out.get("probabilities") or out.get("prediction") or {}
        values = probs.get("data") or []
        names = ((probs.get("parameters") or {}).get("names")) or [
            f"{probs.get('name', 'output')}_{k}" for k in range(len(values))
        ]
    outputs = {str(n): float(v) for n, v in zip(names, values, strict=False) if isinstance(v, int | float)}
    if not outputs:
        return None, {}
    predicted = (
        max(outputs, key=outputs.__getitem__) if len(outputs) > 1 else f"{next(iter(outputs.values())):.6g}"
    )
    return predicted, outputs


def send_row(page: TryPage, row: list[Any]) -> TryAnswer:
    """POST the row to the deployment's recorded predict URL (never another), timed."""
    from freestack.serving.smoke import http_json

    t0 = time.perf_counter()
    try:
        status, body = http_json(
            page.predict_url, request_body(page.runtime, [f.name for f in page.features], row), timeout=30.0
        )
    except OSError as exc:
        return TryAnswer(
            status=None, latency_ms=1000 * (time.perf_counter() - t0), body=f"unreachable: {exc}"
        )
    latency = 1000 * (time.perf_counter() - t0)
    predicted, outputs = read_answer(body) if status == 200 else (None, {})
    text = body if isinstance(body, str) else json.dumps(body, indent=1)
    return TryAnswer(
        status=status, latency_ms=latency, predicted=predicted, outputs=outputs, body=text[:20_000]
    )


def _filled(page: TryPage, form: dict[str, str]) -> TryPage:
    for f in page.features:
        f.value = str(form.get(f.name, f.value))
    return page


@router.get("/deployments/{model}/{name}/try", response_class=HTMLResponse)
async def try_form(request: Request, model: str, name: str, user: Any = Depends(_user)) -> HTMLResponse:
    ui = _ui()
    data = await ui.off_loop(try_page, model, name, user)
    return ui.page(request, "try.html", title=f"Try {model} / {name}", tab="deployments", t=data)


@router.post("/deployments/{model}/{name}/try", response_class=HTMLResponse)
async def try_send(request: Request, model: str, name: str, user: Any = Depends(_user)) -> HTMLResponse:
    ui = _ui()
    ui.same_origin(request)
    data = await ui.off_loop(try_page, model, name, user)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    data = _filled(data, form)
    data.answer = await ui.off_loop(send_row, data, parsed_row(data.features, form))
    return ui.page(request, "try.html", title=f"Try {model} / {name}", tab="deployments", t=data)


@router.get("/api/deployments/{model}/{name}/try")
async def try_json(model: str, name: str, user: Any = Depends(_user)) -> TryPage:
    return await _ui().off_loop(try_page, model, name, user)


@router.post("/api/deployments/{model}/{name}/try")
async def try_send_json(request: Request, model: str, name: str, user: Any = Depends(_user)) -> TryAnswer:
    """Body: ``{"<feature>": value, ...}`` (raw values, as the form sends them)."""
    ui = _ui()
    ui.same_origin(request)
    data = await ui.off_loop(try_page, model, name, user)
    try:
        given = await request.json()
    except ValueError:
        raise HTTPException(400, 'the body is not JSON: send {"<feature>": value, ...}') from None
    if not isinstance(given, dict):
        raise HTTPException(400, 'send one row as a JSON object: {"<feature>": value, ...}')
    form = {k: "" if v is None else str(v) for k, v in given.items()}
    return await ui.off_loop(send_row, data, parsed_row(data.features, form))


# ---------------------------------------------------------------------------------------------------------
# quarantined rows: of a lake partition (ingest), of a scored day (score)


class QuarantinePage(BaseModel):
    pipeline: str
    ds: str
    file: str | None
    total: int
    page: int
    pages: int
    size: int
    columns: list[str]
    rows: list[dict[str, Any]]


def _partition(spec: Any, ds: str) -> None:
    from freestack.ingest.core import lake_partitions

    have = lake_partitions(spec)
    if ds not in have:
        shown_days = ", ".join(have[-10:]) or "none"
        raise HTTPException(
            404,
            f"{spec.name} has no published partition {ds!r} (partitions: {shown_days}"
            f"{f', and {len(have) - 10} older' if len(have) > 10 else ''})",
        )


def read_rows(f: Any, start: int, n: int) -> tuple[int, list[str], list[dict[str, Any]]]:
    """Rows ``[start, start + n)`` of a Parquet file: only the row groups that hold them are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    meta, groups, first, offset = pf.metadata, [], None, 0
    for g in range(meta.num_row_groups):
        size = meta.row_group(g).num_rows
        if offset + size > start and offset < start + n:
            groups.append(g)
            first = offset if first is None else first
        offset += size
    columns = pf.schema_arrow.names
    if not groups:
        return meta.num_rows, columns, []
    table: pa.Table = pf.read_row_groups(groups)
    return meta.num_rows, columns, table.slice(start - (first or 0), n).to_pylist()


def quarantine_page(
    pipeline: str, spec: Any, ds: str, page: int, size: int = QUARANTINE_PAGE
) -> QuarantinePage:
    """Page ``page`` (``size`` rows) of the partition's quarantined rows, read from its quarantine file."""
    from freestack.ingest.core import read_manifest
    from freestack.storage import to_path

    _partition(spec, ds)
    q = (read_manifest(spec, ds) or {}).get("quarantine")
    if not q:
        return QuarantinePage(
            pipeline=pipeline, ds=ds, file=None, total=0, page=1, pages=1, size=size, columns=[], rows=[]
        )
    return _rows_page(pipeline, ds, to_path(q["uri"]), page, size)


def _rows_page(pipeline: str, ds: str, path: Any, page: int, size: int) -> QuarantinePage:
    """Page ``page`` (``size`` rows) of the quarantine file at ``path``."""
    with path.open("rb") as f:
        total, columns, rows = read_rows(f, (page - 1) * size, size)
    pages = max(1, -(-total // size))
    if page > pages:
        raise HTTPException(404, f"{pipeline} {ds} has {total} quarantined rows: pages 1 to {pages}")
    return QuarantinePage(
        pipeline=pipeline,
        ds=ds,
        file=str(path),
        total=total,
        page=page,
        pages=pages,
        size=size,
        columns=columns,
        rows=[{k: _cell(v) for k, v in r.items()} for r in rows],
    )


def score_quarantine_page(
    pipeline: str, spec: Any, ds: str, page: int, size: int = QUARANTINE_PAGE
) -> QuarantinePage:
    """Page ``page`` of the rows of a scored day that were not scored, read from the day's ``_quarantine.parquet``."""
    from freestack.score.core import QUARANTINE
    from freestack.storage import join, to_path

    have = catalog.score_days(spec)
    if ds not in have:
        raise HTTPException(
            404,
            f"{pipeline} has no scored day {ds!r} (days: {', '.join(have[:10]) or 'none'}"
            f"{f', and {len(have) - 10} older' if len(have) > 10 else ''})",
        )
    day = catalog.scored_day(spec, ds)
    if day.problem:
        raise HTTPException(404, f"{pipeline} {ds} cannot be read: {day.problem}")
    if not day.rows_quarantined:
        return QuarantinePage(
            pipeline=pipeline, ds=ds, file=None, total=0, page=1, pages=1, size=size, columns=[], rows=[]
        )
    path = join(to_path(day.folder), QUARANTINE)
    if not path.exists():
        raise HTTPException(
            404,
            f"{pipeline} {ds}: its manifest counts {day.rows_quarantined} quarantined rows, but "
            f"{path} is gone; rescore the day to write it again",
        )
    return _rows_page(pipeline, ds, path, page, size)


def _cell(v: Any) -> Any:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    return v if v is None or isinstance(v, int | float | str | bool) else str(v)


@router.get("/data/{pipeline}/{ds}/quarantine", response_class=HTMLResponse)
async def quarantine(
    request: Request,
    pipeline: str,
    ds: str,
    page: int = Query(1, ge=1),
    size: int = Query(QUARANTINE_PAGE, ge=1, le=1000),
    user: Any = Depends(_user),
) -> HTMLResponse:
    ui = _ui()
    data = await ui.off_loop(
        quarantine_page, pipeline, ui.pipeline(pipeline, user, "ingest")[1], ds, page, size
    )
    return ui.page(request, "quarantine.html", title=f"Quarantined rows: {pipeline} {ds}", tab="data", q=data)


@router.get("/api/data/{pipeline}/{ds}/quarantine")
async def quarantine_json(
    pipeline: str,
    ds: str,
    page: int = Query(1, ge=1),
    size: int = Query(QUARANTINE_PAGE, ge=1, le=1000),
    user: Any = Depends(_user),
) -> QuarantinePage:
    ui = _ui()
    return await ui.off_loop(
        quarantine_page, pipeline, ui.pipeline(pipeline, user, "ingest")[1], ds, page, size
    )


def _score_spec(pipeline: str, user: Any) -> Any:
    _, spec = _ui().pipeline(pipeline, user, "score")
    if spec.score is None:
        raise HTTPException(404, f"pipeline {pipeline!r} has no score: block, so no scores")
    return spec


@router.get("/scores/{pipeline}/{ds}/quarantine", response_class=HTMLResponse)
async def score_quarantine(
    request: Request,
    pipeline: str,
    ds: str,
    page: int = Query(1, ge=1),
    size: int = Query(QUARANTINE_PAGE, ge=1, le=1000),
    user: Any = Depends(_user),
) -> HTMLResponse:
    ui = _ui()
    data = await ui.off_loop(score_quarantine_page, pipeline, _score_spec(pipeline, user), ds, page, size)
    return ui.page(
        request,
        "quarantine.html",
        title=f"Rows not scored: {pipeline} {ds}",
        tab="scores",
        q=data,
        back=(f"/scores/{pipeline}#ds-{ds}", f"the {pipeline} scores"),
        what="day",
        about="Each kept its source file, its values as text and the reason it was not scored.",
    )


@router.get("/api/scores/{pipeline}/{ds}/quarantine")
async def score_quarantine_json(
    pipeline: str,
    ds: str,
    page: int = Query(1, ge=1),
    size: int = Query(QUARANTINE_PAGE, ge=1, le=1000),
    user: Any = Depends(_user),
) -> QuarantinePage:
    return await _ui().off_loop(score_quarantine_page, pipeline, _score_spec(pipeline, user), ds, page, size)


__all__ = [
    "ComparePage",
    "QuarantinePage",
    "TryAnswer",
    "TryPage",
    "compare_page",
    "diff_rows",
    "feature_inputs",
    "metric_rows",
    "parsed_row",
    "partition_diff",
    "quarantine_page",
    "read_answer",
    "read_rows",
    "request_body",
    "router",
    "score_quarantine_page",
    "try_page",
]
