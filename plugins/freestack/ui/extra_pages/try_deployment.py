"""/deployments/<model>/<name>/try: a form with one input per raw feature; the row is sent to the
deployment's own recorded predict URL (local ones), the answer and its latency shown; and its JSON."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from freestack.serving.records import Deployments
from freestack.storage import to_path
from freestack.ui import shared
from freestack.ui.catalog import common
from freestack.version.files import LINEAGE, PREPROCESSING, SMOKE

router = APIRouter()


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
    pipeline: str | None
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
    sample = sample or {}
    first = dict(zip(sample.get("features") or [], (sample.get("rows") or [[]])[0], strict=False))
    order = [*sample.get("features", []), *(pre.get("features") or []), *kinds]  # the model's order first
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


def _roots(model: str, user: Any) -> tuple[str | None, list[str]]:
    """The pipeline that trains ``model`` and its storage root, when the user may read it; for a model no
    pipeline trains, None and every storage root the pages read, when the user may read every DAG."""
    found = common.pipelines()
    piped = [p.name for p, s in found if s.model_name == model]
    if piped:
        return piped[0], [shared.pipeline_of(piped[0], user)[1].root]
    if not shared.reads_every_dag(user):
        raise HTTPException(
            403, f"no pipeline trains {model!r}: its deployments need read access to every DAG"
        )
    return None, common.storage_roots(found)


def _record(model: str, name: str, user: Any) -> tuple[str | None, dict[str, Any]]:
    """The pipeline that trains ``model`` (None: none does) and the deployment's record, when the user
    may read it."""
    pipeline, roots = _roots(model, user)
    record = next((r for root in roots if (r := Deployments(root, model).get(name)) is not None), None)
    if record is None:
        names = ", ".join(n for root in roots for n in Deployments(root, model).names()) or "none"
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
    if record.get("api_key_conn_id"):  # the page holds no key, and sends none
        raise HTTPException(
            409,
            f"{model}/{name} asks for a key (the password of connection {record['api_key_conn_id']!r}): try "
            f"it with `freestack serve predict {name} --model {model}`, which reads the key from the connection",
        )
    return pipeline, record


def try_page(model: str, name: str, user: Any) -> TryPage:
    pipeline, record = _record(model, name, user)
    folder = to_path(record["version_uri"]) if record.get("version_uri") else None
    got = common.read_many(folder, [LINEAGE, PREPROCESSING, SMOKE]) if folder else {}
    return TryPage(
        pipeline=pipeline,
        model=model,
        name=name,
        version=record.get("version"),
        runtime=record.get("runtime", "seldon"),
        predict_url=record["predict_url"],
        features=feature_inputs(
            got.get(LINEAGE) or {},
            got.get(PREPROCESSING) or {},
            got.get(SMOKE),
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
    from freestack_server.core.requestlog import SMOKE_ID

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


@router.get("/deployments/{model}/{name}/try", response_class=HTMLResponse)
async def try_form(
    request: Request, model: str, name: str, user: Any = Depends(shared.user_of)
) -> HTMLResponse:
    data = await shared.off_loop(try_page, model, name, user)
    return shared.page(request, "try.html", title=f"Try {model} / {name}", tab="deployments", t=data)


@router.post("/deployments/{model}/{name}/try", response_class=HTMLResponse)
async def try_send(
    request: Request, model: str, name: str, user: Any = Depends(shared.user_of)
) -> HTMLResponse:
    shared.same_origin(request)
    data = await shared.off_loop(try_page, model, name, user)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    for f in data.features:
        f.value = str(form.get(f.name, f.value))
    data.answer = await shared.off_loop(send_row, data, parsed_row(data.features, form))
    return shared.page(request, "try.html", title=f"Try {model} / {name}", tab="deployments", t=data)


@router.get("/api/deployments/{model}/{name}/try")
async def try_json(model: str, name: str, user: Any = Depends(shared.user_of)) -> TryPage:
    return await shared.off_loop(try_page, model, name, user)


@router.post("/api/deployments/{model}/{name}/try")
async def try_send_json(
    request: Request, model: str, name: str, user: Any = Depends(shared.user_of)
) -> TryAnswer:
    """Body: ``{"<feature>": value, ...}`` (raw values, as the form sends them)."""
    shared.same_origin(request)
    data = await shared.off_loop(try_page, model, name, user)
    try:
        given = await request.json()
    except ValueError:
        raise HTTPException(400, 'the body is not JSON: send {"<feature>": value, ...}') from None
    if not isinstance(given, dict):
        raise HTTPException(400, 'send one row as a JSON object: {"<feature>": value, ...}')
    form = {k: "" if v is None else str(v) for k, v in given.items()}
    return await shared.off_loop(send_row, data, parsed_row(data.features, form))


__all__ = [
    "TryAnswer",
    "TryPage",
    "feature_inputs",
    "parsed_row",
    "read_answer",
    "request_body",
    "router",
    "try_page",
]
