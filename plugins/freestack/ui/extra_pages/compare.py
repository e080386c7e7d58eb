"""/compare/<p>?v=A&v=B...: versions side by side (metrics, best marked, difference to the first; gate
decisions; the training config they recorded; what their lineage differs in), and its JSON. ``<p>`` is
a pipeline, or a model no pipeline trains, as on the Models pages (:func:`freestack.ui.shared.model_of`)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, computed_field

from freestack.registry.card import cost_figures
from freestack.ui import shared
from freestack.ui.catalog import common, model_pages
from freestack.version.files import CONFIG, PREPROCESSING

router = APIRouter()
#: the most versions one comparison shows
MAX_COMPARED = 8
#: a config value longer than this (JSON) is shown by its length and hash: a diff, not a dump
LONG_VALUE = 120


class Compared(BaseModel):
    asked: str
    version: str
    aliases: list[str]
    created: str | None
    gate: model_pages.Gate


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
    pipeline: str | None = Field(description="the pipeline that trains it; None: no pipeline does")
    model: str
    versions: list[Compared]
    metrics: list[MetricRow]
    params: list[DiffRow]
    lineage: list[DiffRow]
    partitions: list[PartitionDiff]
    choices: list[model_pages.VersionRow]
    aliases: dict[str, str]

    @computed_field
    @property
    def key(self) -> str:
        """The name in its model's page addresses (``/models/<key>``): its pipeline's, else its model's."""
        return self.pipeline or self.model


_MAXIMIZE = ("accuracy", "f1", "r2", "auc", "precision", "recall", "exact_match", "rouge")
_MINIMIZE = ("loss", "rmse", "mae", "mse", "error", "seconds", "perplexity")


def goal_of(metric: str) -> Literal["maximize", "minimize"] | None:
    """Whether higher or lower is better for a metric named like ``test_accuracy`` or ``best_val_loss``
    (a version's costs, ``costs.*``: lower, but for a throughput, ``*_per_s``)."""
    name = metric.lower()
    if name.startswith("costs."):
        return "maximize" if name.endswith("_per_s") else "minimize"
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
            if here and base:
                changes.append("same" if s[ds] == got[0] else "changed")
            else:
                changes.append("added" if here else "removed" if base else "")
        rows.append(PartitionDiff(ds=ds, sha256=got, changes=changes))
    return rows


def training_config(lineage: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
    """What a version recorded about how it was trained: the hyperparameters, overrides, split and features
    (its lineage), the model's config and the preprocessing it fitted (:mod:`freestack.version.files`)."""
    keep = ("hyperparameters", "overrides", "split", "features", "module", "tokenizer", "pretrained")
    return {
        **{k: lineage[k] for k in keep if lineage.get(k) is not None},
        CONFIG: files.get(CONFIG) or {},
        PREPROCESSING: files.get(PREPROCESSING) or {},
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
        "trained_on": model_pages.trained_on(lineage),
    }


def _extra_files(source: Any, version: str) -> dict[str, Any]:
    folder = model_pages.registry_of(source).folder
    return common.read_many(folder, [f"{version}/{CONFIG}", f"{version}/{PREPROCESSING}"])


def compare_page(pipeline: str | None, source: Any, asked: list[str]) -> ComparePage:
    """The versions (or aliases) ``asked``, side by side; none asked, only the versions to choose from
    (``source``: the pipeline's spec, or the registry of a model no pipeline trains)."""
    pages = common.parallel(lambda v: model_pages.version_page(pipeline, source, v), asked)
    extra = common.parallel(lambda p: _extra_files(source, p.row.version), pages)
    files = [{k.split("/", 1)[1]: v for k, v in e.items()} for e in extra]
    versions = [
        Compared(asked=a, version=p.row.version, aliases=p.aliases, created=p.row.created, gate=p.row.gate)
        for a, p in zip(asked, pages, strict=True)
    ]
    reg = model_pages.registry_of(source)
    return ComparePage(
        pipeline=pipeline,
        model=reg.model,
        versions=versions,
        metrics=metric_rows([{**p.metrics, **cost_figures(p.lineage.get("costs") or {})} for p in pages]),
        params=diff_rows([training_config(p.lineage, f) for p, f in zip(pages, files, strict=True)]),
        lineage=diff_rows([lineage_facts(p.lineage) for p in pages]),
        partitions=partition_diff([p.lineage.get("partitions") or [] for p in pages]),
        choices=model_pages.version_rows(reg.folder)[::-1],
        aliases=model_pages.aliases(source),
    )


def _asked(v: list[str]) -> list[str]:
    asked = list(dict.fromkeys(x.strip() for x in v if x.strip()))
    if len(asked) > MAX_COMPARED:
        raise HTTPException(400, f"{len(asked)} versions asked: compare at most {MAX_COMPARED} at once")
    return asked


def _compare(pipeline: str | None, source: Any, asked: list[str]) -> ComparePage:
    return shared.found(compare_page, pipeline, source, asked)


@router.get("/compare/{name}", response_class=HTMLResponse)
async def compare(
    request: Request, name: str, v: list[str] = Query([]), user: Any = Depends(shared.user_of)
) -> HTMLResponse:
    pipeline, source = shared.model_of(name, user)
    asked = _asked(v)
    data = await shared.off_loop(_compare, pipeline, source, asked if len(asked) >= 2 else [])
    title = f"Compare versions of {data.model}"
    return shared.page(request, "compare.html", title=title, tab="models", c=data, asked=asked)


@router.get("/api/compare/{name}")
async def compare_json(
    name: str, v: list[str] = Query([]), user: Any = Depends(shared.user_of)
) -> ComparePage:
    pipeline, source = shared.model_of(name, user)
    asked = _asked(v)
    if len(asked) < 2:
        raise HTTPException(400, "name at least two versions or aliases to compare: ?v=<A>&v=<B>")
    return await shared.off_loop(_compare, pipeline, source, asked)


__all__ = [
    "ComparePage",
    "compare_page",
    "diff_rows",
    "lineage_facts",
    "metric_rows",
    "partition_diff",
    "router",
]
