"""What the Sweeps pages show: a pipeline's sweeps, a sweep's trials, its status and the parameters'
importance."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, get_args

from pydantic import BaseModel, Field

from freestack.storage import join, storage_root, subfolders
from freestack.sweeps import pareto
from freestack.sweeps.core import SweepError, kept_value, sweep_dir
from freestack.sweeps.report import sweep_metric
from freestack.sweeps.spec import Distribution, SweepSpec, objectives
from freestack.sweeps.values import objective_value
from freestack.ui.catalog.common import parallel, read_json, read_many

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec


class SweepRow(BaseModel):
    sweep_id: str
    method: str
    created: str | None
    metric: str | None = None
    goal: str | None = None
    trials: int = 0
    best_trial: str | None = None
    best_value: float | None = None
    airflow_run: str | None = None
    version_uri: str | None = None


class Trial(BaseModel):
    trial: str
    state: str = Field(description="finished, early-stopped, failed, crashed or running")
    agent: str | None = Field(description="the agent (its map index) that ran the trial last")
    params: dict[str, Any]
    value: float | None
    epochs: int
    history: list[float | None]
    error: str | None = None
    objectives: dict[str, float | None] = Field(
        {}, description="a sweep on several objectives: the trial's value on each"
    )


class Importance(BaseModel):
    """How much one parameter matters to the sweep's metric (W&B's parameter importance panel)."""

    parameter: str
    importance: float = Field(
        description="a random forest's feature importance for the metric (all sum to 1)"
    )
    correlation: float | None = Field(
        description="linear correlation of the value (log10 if log-distributed) with the metric"
    )


class SweepPage(BaseModel):
    pipeline: str
    sweep: SweepRow
    parameters: list[str]
    trials: list[Trial]
    best: Trial | None
    status: str = Field(
        "finished",
        description="running (agents at work), finished (every trial is in), stopped "
        "(no agent at work before the run cap)",
    )
    max_trials: int | None = None
    distributions: dict[str, str] = Field({}, description="parameter -> its distribution in the sweep config")
    importance: list[Importance] = Field(
        [], description="most important first; empty while too few trials finished"
    )
    importance_note: str | None = None
    objectives: list[tuple[str, str]] = Field(
        [], description="a sweep on several objectives: (name, goal) each, in the sweep's order"
    )
    front: list[str] = Field([], description="the trials on the objectives' Pareto front")
    signature: str = Field(
        "", description="changes whenever a trial or the status does (the live view's poll)"
    )


def _sweep_doc(folder: ObjectStoragePath) -> dict[str, Any] | None:
    """The sweep's ``sweep.json`` with its ``best.json`` (empty until ``select_best`` ran) under "best"."""
    doc = read_json(join(folder, "sweep.json"))
    return None if doc is None else {**doc, "best": read_json(join(folder, "best.json")) or {}}


def _sweep_row(doc: dict[str, Any]) -> SweepRow:
    best = doc["best"]
    return SweepRow(
        sweep_id=doc["id"],
        method=(doc.get("config") or {}).get("method", "?"),
        created=doc.get("created_at"),
        metric=best.get("metric") or ((doc.get("config") or {}).get("metric") or {}).get("name"),
        goal=best.get("goal") or ((doc.get("config") or {}).get("metric") or {}).get("goal"),
        trials=int(best.get("trials") or 0),
        best_trial=best.get("best_trial"),
        best_value=best.get("best_value"),
        airflow_run=((doc.get("request") or {}).get("airflow") or {}).get("run_id"),
        version_uri=best.get("version_uri"),
    )


def sweeps(spec: PipelineSpec) -> list[SweepRow]:
    """The pipeline's sweeps, newest first."""
    runs = join(storage_root(spec.storage_root), "runs", spec.name)
    folders = [join(runs, n) for n in subfolders(runs) if n.startswith("sweep-")]
    rows = [_sweep_row(d) for d in parallel(_sweep_doc, folders) if d is not None]
    return sorted(rows, key=lambda r: r.created or "", reverse=True)


def _trial(doc: dict[str, Any], metric: str, goal: str, several: list[tuple[str, str]]) -> Trial:
    hist = doc.get("history") or []
    state = doc.get("state", "running")
    if state == "finished" and doc.get("stopped"):
        state = "early-stopped"
    slot = str((doc.get("lease") or {}).get("slot") or "")
    return Trial(
        trial=doc["id"],
        state=state,
        agent=f"agent {slot.rsplit('/', 1)[-1]}" if slot else None,
        params=doc.get("params") or {},
        value=kept_value(doc, metric, goal),  # its kept model's, as the results table
        epochs=len(hist),
        history=[r.get(metric) if isinstance(r.get(metric), int | float) else None for r in hist],
        error=doc.get("error"),
        objectives={name: objective_value(doc, name, g) for name, g in several} if len(several) > 1 else {},
    )


def sweep_page(pipeline: str, spec: PipelineSpec, sweep_id: str) -> SweepPage:
    folder = sweep_dir(spec, sweep_id)
    doc = _sweep_doc(folder)
    if doc is None:
        raise SweepError(f"pipeline {pipeline!r} has no sweep {sweep_id!r}")
    row = _sweep_row(doc)
    rels = [f"trials/{n}/trial.json" for n in subfolders(join(folder, "trials")) if n.startswith(("t", "w-"))]
    got = read_many(folder, rels)
    docs = [got[r] for r in rels if got.get(r)]
    config = SweepSpec.stored(doc["config"])
    if row.metric is None or row.goal is None:
        task = next((d["summary"].get("task") for d in docs if (d.get("summary") or {}).get("task")), None)
        row.metric, row.goal = sweep_metric(config, task)
    several = objectives(config)
    trials = [_trial(d, row.metric, row.goal, several) for d in docs]
    row.trials = len(trials)
    dists = distributions(config)
    params = list(dict.fromkeys([*dists, *(k for t in trials for k in t.params)]))
    status = sweep_status(doc, docs)
    signature = _signature(status, row, trials)
    importance, note = _cached_importance((str(folder), signature), trials, params, dists)
    return SweepPage(
        pipeline=pipeline,
        sweep=row,
        parameters=params,
        trials=trials,
        best=next((t for t in trials if t.trial == row.best_trial), None) or _leader(trials, row.goal),
        status=status,
        max_trials=doc.get("max_trials"),
        distributions=dists,
        importance=importance,
        importance_note=note,
        signature=signature,
        **_front(config, several, docs),
    )


def _front(config: SweepSpec, several: list[tuple[str, str]], docs: list[dict[str, Any]]) -> dict[str, Any]:
    """A sweep on several objectives: them and the trials on their Pareto front."""
    if len(several) < 2:
        return {}
    return {"objectives": several, "front": pareto.front(config, docs)}


def _leader(trials: list[Trial], goal: str | None) -> Trial | None:
    """The best of the trials that ended with a metric value (None before one did)."""
    done = [t for t in trials if t.value is not None and t.state in ("finished", "early-stopped")]
    return (max if goal == "maximize" else min)(done, key=lambda t: t.value, default=None)


#: (sweep folder, signature) -> its parameter importance: a sweep's trials unchanged, the forest is not fit again
_IMPORTANCE: dict[tuple[str, str], tuple[list[Importance], str | None]] = {}
_LOCK = threading.Lock()
IMPORTANCE_CACHE_SIZE = 64


def _cached_importance(
    key: tuple[str, str], trials: list[Trial], params: list[str], dists: dict[str, str]
) -> tuple[list[Importance], str | None]:
    got = _IMPORTANCE.get(key)
    if got is None:
        got = parameter_importance(trials, params, dists)
        with _LOCK:
            while len(_IMPORTANCE) >= IMPORTANCE_CACHE_SIZE:
                _IMPORTANCE.pop(next(iter(_IMPORTANCE)))
            _IMPORTANCE[key] = got
    return got


#: W&B's distributions whose values spread over orders of magnitude: drawn on log axes
LOG_DISTRIBUTIONS = frozenset(d for d in get_args(Distribution) if "log" in d)
#: a sweep whose trials (and sweep.json) went this long unchanged, none of them leased, has no agent at work
STALE_SECONDS = 300.0
#: finished trials needed before parameter importance is estimated
MIN_IMPORTANCE_TRIALS = 5


def distributions(config: SweepSpec) -> dict[str, str]:
    """Each searched parameter's distribution, by its name in the trials' params (``model.dropout``), as W&B
    infers it: ``values`` -> categorical, ``value`` -> constant, bare min/max -> (int_)uniform."""
    out = {}
    for name, p in config.leaves().items():
        ints = isinstance(p.min, int) and isinstance(p.max, int)
        listed = "categorical" if p.values is not None else "constant" if p.value is not None else None
        out[name] = p.distribution or listed or ("int_uniform" if ints else "uniform")
    return out


def _seconds(iso: Any) -> float:
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return 0.0


def sweep_status(doc: dict[str, Any], trials: list[dict[str, Any]], now: float | None = None) -> str:
    """running, finished or stopped, from what storage holds: ``best.json`` (select_best ran) or every trial
    in and ended -> finished; a trial whose lease is alive, or anything written in the last
    :data:`STALE_SECONDS` (agents starting, between trials) -> running; else stopped (the agents are gone)."""
    now = time.time() if now is None else now
    running = [d for d in trials if d.get("state") == "running"]
    cap = doc.get("max_trials")
    if doc.get("best") or (cap is not None and len(trials) >= int(cap) and not running):
        return "finished"
    if any(float((d.get("lease") or {}).get("expires_at") or 0) > now for d in running):
        return "running"
    last = max([_seconds(doc.get("created_at")), *(_seconds(d.get("updated_at")) for d in trials)])
    return "running" if now - last < STALE_SECONDS else "stopped"


def _signature(status: str, row: SweepRow, trials: list[Trial]) -> str:
    seen = [
        status,
        row.best_trial,
        row.version_uri,
        *((t.trial, t.state, t.epochs, t.value, t.error) for t in trials),
    ]
    return hashlib.sha256(json.dumps(seen, default=str).encode()).hexdigest()[:16]


def _encoded(values: list[Any], distribution: str | None) -> tuple[list[float], bool] | None:
    """A parameter's values as numbers for the forest, and whether they are numbers (not category codes):
    log10 for a log-distributed one. None when a trial lacks it."""
    if any(v is None for v in values):
        return None
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        log = distribution in LOG_DISTRIBUTIONS and all(v > 0 for v in values)
        return [math.log10(v) if log else float(v) for v in values], True
    labels = [json.dumps(v, sort_keys=True) for v in values]
    codes = {label: k for k, label in enumerate(sorted(set(labels)))}
    return [float(codes[label]) for label in labels], False


def parameter_importance(
    trials: list[Trial], params: list[str], dists: dict[str, str]
) -> tuple[list[Importance], str | None]:
    """W&B's parameter importance: a random forest fit on the finished trials (parameters -> metric) gives
    each parameter's importance, and each numeric one's correlation with the metric; with a note instead
    while fewer than :data:`MIN_IMPORTANCE_TRIALS` trials finished."""
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor

    done = [t for t in trials if t.state in ("finished", "early-stopped") and t.value is not None]
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return (
            [],
            f"{len(done)} finished trials: too few to estimate parameter importance (it needs {MIN_IMPORTANCE_TRIALS})",
        )
    y = np.asarray([t.value for t in done], np.float64)
    cols = {
        p: c
        for p in params
        if (c := _encoded([t.params.get(p) for t in done], dists.get(p))) and np.ptp(c[0]) > 0
    }
    if not cols or np.ptp(y) == 0:
        return [], "no parameter or no metric value varies across the finished trials: nothing to compare"
    x = np.column_stack([c for c, _ in cols.values()])
    forest = RandomForestRegressor(n_estimators=100, random_state=0).fit(x, y)
    out = [
        Importance(
            parameter=p,
            importance=round(float(w), 4),
            correlation=round(float(np.corrcoef(c, y)[0, 1]), 4) if numeric else None,
        )
        for (p, (c, numeric)), w in zip(cols.items(), forest.feature_importances_, strict=True)
    ]
    return sorted(out, key=lambda i: -i.importance), None


__all__ = [
    "IMPORTANCE_CACHE_SIZE",
    "Importance",
    "LOG_DISTRIBUTIONS",
    "MIN_IMPORTANCE_TRIALS",
    "STALE_SECONDS",
    "SweepPage",
    "SweepRow",
    "Trial",
    "distributions",
    "parameter_importance",
    "sweep_page",
    "sweep_status",
    "sweeps",
]
