"""What the freestack pages show, read from the storage root (local, ``s3://``, ``data://``) through the
storage layer: models and their versions, sweeps and their trials, deployments, lake partitions.

Every reader returns a typed model (the JSON endpoints return the same models). Committed versions are
immutable, so their rows are kept for the life of the process (:data:`_VERSIONS`): a page with 1,000
versions reads only the folder listing and ``aliases.json`` once warm; the first read fetches the
versions' small files side by side (:data:`READERS` threads), which matters on S3.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field

from freestack.registry.names import ALIASES, VERSION_RE
from freestack.version.files import MARKER

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec

#: storage reads in flight at once for one page
READERS = 16
T = TypeVar("T")
R = TypeVar("R")


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, :data:`READERS` at a time (storage reads wait on I/O, not the CPU)."""
    items = list(items)
    if len(items) < 4:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(READERS, len(items)), thread_name_prefix="freestack-ui") as pool:
        return list(pool.map(fn, items))


def read_json(path: ObjectStoragePath) -> Any:
    """The JSON file's content; None when it is missing."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def _cat(fs: Any, path: str) -> bytes | None:
    try:
        return fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def read_many(folder: ObjectStoragePath, rels: list[str]) -> dict[str, Any]:
    """The JSON files ``rels`` under ``folder``, fetched together: one batched call on an async filesystem
    (S3: fsspec's ``cat`` of many paths, requests in flight at once; what it did not return is asked
    again file by file, as ``data://`` needs), in threads on the others, one after the other on local
    disk. A missing or unreadable file is left out."""
    fs, base = folder.fs, folder.path.rstrip("/")
    paths = [f"{base}/{rel}" for rel in rels]
    if not paths:
        return {}
    if getattr(fs, "async_impl", False):
        got = fs.cat(paths, on_error="omit")
        data = [got.get(p) for p in paths]
        again = [k for k, raw in enumerate(data) if raw is None]
        for k, raw in zip(again, parallel(lambda k: _cat(fs, paths[k]), again), strict=True):
            data[k] = raw
    elif "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        data = [_cat(fs, p) for p in paths]
    else:
        data = parallel(lambda p: _cat(fs, p), paths)
    out = {}
    for rel, raw in zip(rels, data, strict=True):
        try:
            out[rel] = json.loads(raw) if raw is not None else None
        except ValueError:
            continue
    return {k: v for k, v in out.items() if v is not None}


def subfolders(folder: ObjectStoragePath) -> list[str]:
    """The names of the folders directly in ``folder`` (one listing call, also on object stores)."""
    folder.fs.invalidate_cache(folder.path)
    try:
        entries = folder.fs.ls(folder.path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")


def _numbers(d: dict[str, Any] | None) -> dict[str, float]:
    return {
        k: float(v) for k, v in (d or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


# ---------------------------------------------------------------------------------------------------------
# pipelines


class Pipeline(BaseModel):
    name: str
    model: str
    root: str
    description: str = ""
    train_dag: str
    ingest_dag: str
    trains: bool


def pipelines() -> list[tuple[Pipeline, PipelineSpec]]:
    """Every valid pipeline spec (an invalid one is the spec-errors DAG file's import error)."""
    from freestack.errors import SpecError
    from freestack.spec import discover_specs

    out = []
    for name, spec in discover_specs().items():
        if isinstance(spec, SpecError):
            continue
        out.append(
            (
                Pipeline(
                    name=name,
                    model=spec.model_name,
                    root=str(spec.root),
                    description=spec.description or "",
                    train_dag=f"{name}_train",
                    ingest_dag=f"{name}_ingest",
                    trains=spec.source.schema_.target is not None,
                ),
                spec,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# models


class Gate(BaseModel):
    decision: str = Field(description="promoted, blocked, or none (registered without a gate)")
    reasons: list[str] = []
    metric: str | None = None
    approval: str | None = None
    decided_again: bool = Field(
        False, description="decided again by `promote` (production had moved); this holds"
    )
    against: str | None = Field(None, description="the production version it was judged against")


class VersionRow(BaseModel):
    version: str
    created: str | None
    window_end: str | None = None
    window_days: int | None = None
    partitions: int = 0
    metrics: dict[str, float] = {}
    gate: Gate
    airflow_run: str | None = None
    airflow_dag: str | None = None
    sweep: str | None = None


class AliasMove(BaseModel):
    at: str | None
    action: str
    alias: str
    version: str | None
    previous: str | None = None
    reason: str | None = None
    by: str | None = None


class Served(BaseModel):
    """A deployment serving the model: its version, the alias it serves, and what is wrong if they differ."""

    name: str
    version: str | None
    alias: str | None
    mismatch: str | None = None


class ModelPage(BaseModel):
    pipeline: str
    model: str
    root: str
    versions: list[VersionRow]
    aliases: dict[str, str]
    history: list[AliasMove]
    served: list[Served] = []

    def aliases_of(self, version: str) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)


#: (registry folder, version) -> its row: a committed version never changes
_VERSIONS: dict[tuple[str, str], VersionRow] = {}
_LOCK = threading.Lock()


def _gate(lineage: dict[str, Any]) -> Gate:
    return gate_of(lineage.get("gate") or {})


def gate_of(g: dict[str, Any]) -> Gate:
    """A gate decision (the registered one, or one recorded when ``promote`` decided again) as shown."""
    if not g:
        return Gate(decision="none")
    promoted = g.get("promote", g.get("decision") == "promote")
    return Gate(
        decision="promoted" if promoted else "blocked",
        reasons=[str(r) for r in g.get("reasons") or []],
        metric=g.get("metric"),
        approval=g.get("approval"),
        decided_again=bool(g.get("decided_again")),
        against=g.get("champion_version"),
    )


def decided_again(rows: list[VersionRow], aliases: dict[str, Any]) -> list[VersionRow]:
    """The rows with the decision that holds: a version blocked when ``promote`` decided it again (the
    aliases' history records it) reads blocked, with those reasons, not the gate's first decision."""
    from freestack.registry.core import redecisions

    again = redecisions(aliases)
    return [
        r.model_copy(update={"gate": gate_of(again[r.version])}) if r.version in again else r for r in rows
    ]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def trained_on(lineage: dict[str, Any]) -> str:
    """How a version was trained, from lineage.json's ``distributed``: "1 process", or e.g. "2 ranks (1 node
    × 2 processes), gloo, DDP, local launcher". A version written before distributed training has no such
    key: it ran in one process."""
    d = lineage.get("distributed")
    d = d if isinstance(d, dict) else {}
    ranks = d.get("world_size")
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks <= 1:
        return "1 process"
    text = _count(ranks, "rank", "ranks")
    nodes, per_node = d.get("nodes"), d.get("processes_per_node")
    if isinstance(nodes, int) and isinstance(per_node, int):
        text += f" ({_count(nodes, 'node', 'nodes')} × {_count(per_node, 'process', 'processes')})"
    strategy = d.get("strategy")
    extra = [
        str(d["backend"]) if d.get("backend") else None,
        (str(strategy).upper() if str(strategy).lower() in ("ddp", "fsdp") else str(strategy))
        if strategy
        else None,
        f"{d['launcher']} launcher" if d.get("launcher") else None,
    ]
    return ", ".join([text, *(e for e in extra if e)])


def _version_row(version: str, files: dict[str, Any]) -> VersionRow | None:
    """A version's row from its files (``{name: JSON}``), None when it is not committed."""
    from freestack.registry.card import metrics_summary

    marker = files.get(f"{version}/{MARKER}")
    if marker is None:
        return None  # an unfinished registration: not a version
    lineage = files.get(f"{version}/lineage.json") or {}
    metrics = metrics_summary(files.get(f"{version}/metrics.json") or {})
    window, airflow = lineage.get("window") or {}, lineage.get("airflow") or {}
    return VersionRow(
        version=version,
        created=marker.get("registered_at"),
        window_end=window.get("end_ds"),
        window_days=window.get("days"),
        partitions=len(lineage.get("partitions") or []),
        metrics={k: v for k, v in _numbers(metrics).items() if k.startswith("test_")},
        gate=_gate(lineage),
        airflow_run=airflow.get("run_id"),
        airflow_dag=airflow.get("dag_id"),
        sweep=(lineage.get("sweep") or {}).get("id"),
    )


def version_rows(folder: ObjectStoragePath, aliases: dict[str, Any] | None = None) -> list[VersionRow]:
    """The committed versions under a model's registry folder, oldest first, each with the gate decision
    that holds (:func:`decided_again`; ``aliases``: the model's ``aliases.json``, read when not given)."""
    names = [n for n in subfolders(folder) if VERSION_RE.match(n)]
    key = str(folder)
    missing = [n for n in names if (key, n) not in _VERSIONS]
    files = read_many(folder, [f"{n}/{f}" for n in missing for f in (MARKER, "lineage.json", "metrics.json")])
    for name in missing:
        row = _version_row(name, files)
        if row is not None:
            with _LOCK:
                _VERSIONS[(key, name)] = row
    rows = [_VERSIONS[(key, n)] for n in names if (key, n) in _VERSIONS]
    if aliases is None:
        aliases = _aliases_in(folder)
    return decided_again(sorted(rows, key=lambda r: (r.created or "", r.version)), aliases)


def _aliases_in(folder: ObjectStoragePath) -> dict[str, Any]:
    """A model's ``aliases.json`` from its registry folder ({} when it has none)."""
    from freestack.storage import join

    try:
        return json.loads(join(folder, ALIASES).read_text())
    except FileNotFoundError:
        return {}


def aliases(spec: PipelineSpec) -> dict[str, str]:
    """The model's aliases (production, staging, previous...) and the versions they point at."""
    from freestack.registry.core import registry_for

    return _named(registry_for(spec).aliases())


def _named(raw: dict[str, Any]) -> dict[str, str]:
    """``aliases.json`` without its history: alias -> version."""
    return {k: v for k, v in raw.items() if k != "history" and isinstance(v, str)}


def model_page(pipeline: str, spec: PipelineSpec) -> ModelPage:
    from freestack.registry.core import registry_for

    reg = registry_for(spec)
    aliases = reg.aliases()
    history = [
        AliasMove(
            at=e.get("at"),
            action=e.get("action", "?"),
            alias=e.get("alias", "?"),
            version=e.get("version"),
            previous=e.get("from"),
            reason=e.get("reason"),
            by=e.get("by"),
        )
        for e in aliases.get("history") or []
    ]
    return ModelPage(
        pipeline=pipeline,
        model=spec.model_name,
        root=str(reg.root),
        versions=version_rows(reg.folder, aliases),
        aliases=_named(aliases),
        history=history[::-1],
        served=served_by(str(reg.root), spec.model_name, aliases),
    )


def served_by(root: str, model: str, aliases: dict[str, Any]) -> list[Served]:
    """The model's serving deployments, each flagged when its version is not what its alias says."""
    from freestack.serving.records import alias_drift, served_alias, serving_records

    return [
        Served(
            name=r["name"],
            version=r.get("version"),
            alias=served_alias(r),
            mismatch=alias_drift(root, r, aliases),
        )
        for r in serving_records(root, model)
    ]


class LakeEvent(BaseModel):
    id: int
    timestamp: str | None = None
    dag_id: str | None = None
    run_id: str | None = None


class Partition(BaseModel):
    ds: str
    sha256: str | None = None
    rows: int | None = None
    superseded: int = 0
    events: list[LakeEvent] = []


class VersionPage(BaseModel):
    pipeline: str
    model: str
    row: VersionRow
    aliases: list[str]
    uri: str
    card: str | None
    metrics: dict[str, float]
    lineage: dict[str, Any]
    partitions: list[Partition]
    files: dict[str, int]
    plots: list[str]
    report: str | None


def version_page(pipeline: str, spec: PipelineSpec, version: str) -> VersionPage:
    """One committed version: its card, metrics, lineage, files and the evaluation's report and plots."""
    from freestack.registry.core import registry_for

    reg = registry_for(spec)
    info = reg.get(version)
    name = info["version"]
    row = _VERSIONS.get((str(reg.folder), name)) or _version_row(
        name,
        {  # what get() read already
            f"{name}/{MARKER}": {"registered_at": info["created"]},
            f"{name}/lineage.json": info["lineage"],
            f"{name}/metrics.json": info["metrics_full"],
        },
    )
    assert row is not None
    [row] = decided_again([row], reg.aliases())
    files = {rel: int((meta or {}).get("size", 0)) for rel, meta in sorted(info["files"].items())}
    lineage = info["lineage"]
    parts = [
        Partition(
            ds=str(p.get("ds")),
            sha256=p.get("sha256"),
            rows=p.get("rows"),
            superseded=p.get("superseded") or 0,
            events=p.get("events") or [],
        )
        for p in lineage.get("partitions") or []
        if isinstance(p, dict)
    ]
    return VersionPage(
        pipeline=pipeline,
        model=spec.model_name,
        row=row,
        aliases=info["aliases"],
        uri=info["uri"],
        card=info["card"],
        metrics=_numbers(info["metrics_full"]),
        lineage=lineage,
        partitions=parts,
        files=files,
        plots=[f for f in files if f.startswith("evaluation/") and f.endswith(".png")],
        report="evaluation/report.html" if "evaluation/report.html" in files else None,
    )


def version_file_chunks(spec: PipelineSpec, version: str, rel: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A registered file of a committed version (``rel`` as its manifest names it), in pieces."""
    from freestack.registry.core import registry_for
    from freestack.storage import join

    with join(registry_for(spec).version_path(version), *rel.split("/")).open("rb") as f:
        while piece := f.read(chunk):
            yield piece


# ---------------------------------------------------------------------------------------------------------
# sweeps


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
    signature: str = Field(
        "", description="changes whenever a trial or the status does (the live view's poll)"
    )


def _runs_folder(spec: PipelineSpec):
    from freestack.storage import join, storage_root

    return join(storage_root(spec.storage_root), "runs", spec.name)


def _sweep_doc(folder: ObjectStoragePath) -> dict[str, Any] | None:
    """The sweep's ``sweep.json`` with its ``best.json`` (empty until ``select_best`` ran) under "best"."""
    from freestack.storage import join

    doc = read_json(join(folder, "sweep.json"))
    return None if doc is None else {**doc, "best": read_json(join(folder, "best.json")) or {}}


def _sweep_row(doc: dict[str, Any]) -> SweepRow:
    best = doc["best"]
    metric = best.get("metric") or ((doc.get("config") or {}).get("metric") or {}).get("name")
    return SweepRow(
        sweep_id=doc["id"],
        method=(doc.get("config") or {}).get("method", "?"),
        created=doc.get("created_at"),
        metric=metric,
        goal=best.get("goal") or ((doc.get("config") or {}).get("metric") or {}).get("goal"),
        trials=int(best.get("trials") or 0),
        best_trial=best.get("best_trial"),
        best_value=best.get("best_value"),
        airflow_run=((doc.get("request") or {}).get("airflow") or {}).get("run_id"),
        version_uri=best.get("version_uri"),
    )


def sweeps(spec: PipelineSpec) -> list[SweepRow]:
    """The pipeline's sweeps, newest first."""
    from freestack.storage import join

    runs = _runs_folder(spec)
    folders = [join(runs, n) for n in subfolders(runs) if n.startswith("sweep-")]
    rows = [_sweep_row(d) for d in parallel(_sweep_doc, folders) if d is not None]
    return sorted(rows, key=lambda r: r.created or "", reverse=True)


def _trial(doc: dict[str, Any], metric: str, goal: str) -> Trial:
    from freestack.sweeps.core import best_of

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
        value=best_of(hist, metric, goal),
        epochs=len(hist),
        history=[r.get(metric) if isinstance(r.get(metric), int | float) else None for r in hist],
        error=doc.get("error"),
    )


def sweep_page(pipeline: str, spec: PipelineSpec, sweep_id: str) -> SweepPage:
    from freestack.storage import join
    from freestack.sweeps.core import SweepError, sweep_dir
    from freestack.sweeps.report import sweep_metric

    folder = sweep_dir(spec, sweep_id)
    doc = _sweep_doc(folder)
    if doc is None:
        raise SweepError(f"pipeline {pipeline!r} has no sweep {sweep_id!r}")
    row = _sweep_row(doc)
    trials_dir = join(folder, "trials")
    names = [n for n in subfolders(trials_dir) if n.startswith(("t", "w-"))]
    got = read_many(trials_dir, [f"{n}/trial.json" for n in names])
    docs = [got[f"{n}/trial.json"] for n in names if got.get(f"{n}/trial.json")]
    if row.metric is None or row.goal is None:
        task = next((d["summary"].get("task") for d in docs if (d.get("summary") or {}).get("task")), None)
        row.metric, row.goal = sweep_metric(doc.get("config") or {}, task)
    trials = [_trial(d, row.metric, row.goal) for d in docs]
    row.trials = len(trials)
    scored = [t for t in trials if t.value is not None and t.state in ("finished", "early-stopped")]
    best = next((t for t in trials if t.trial == row.best_trial), None) or (
        (max if row.goal == "maximize" else min)(scored, key=lambda t: t.value) if scored else None
    )
    dists = distributions(doc.get("config") or {})
    params = list(dict.fromkeys([*dists, *(k for t in trials for k in t.params)]))
    status = sweep_status(doc, docs)
    signature = _signature(status, row, trials)
    importance, note = _cached_importance((str(folder), signature), trials, params, dists)
    return SweepPage(
        pipeline=pipeline,
        sweep=row,
        parameters=params,
        trials=trials,
        best=best,
        status=status,
        max_trials=doc.get("max_trials"),
        distributions=dists,
        importance=importance,
        importance_note=note,
        signature=signature,
    )


#: (sweep folder, signature) -> its parameter importance: a sweep's trials unchanged, the forest is not fit again
_IMPORTANCE: dict[tuple[str, str], tuple[list[Importance], str | None]] = {}
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
LOG_DISTRIBUTIONS = frozenset(
    {
        "log_uniform",
        "log_uniform_values",
        "q_log_uniform",
        "q_log_uniform_values",
        "inv_log_uniform",
        "inv_log_uniform_values",
        "log_normal",
        "q_log_normal",
    }
)
#: a sweep whose trials (and sweep.json) went this long unchanged, none of them leased, has no agent at work
STALE_SECONDS = 300.0
#: finished trials needed before parameter importance is estimated
MIN_IMPORTANCE_TRIALS = 5


def distributions(config: dict[str, Any]) -> dict[str, str]:
    """Each searched parameter's distribution, by its name in the trials' params (``model.dropout``), as W&B
    infers it: ``values`` -> categorical, ``value`` -> constant, bare min/max -> (int_)uniform."""
    from freestack.sweeps.spec import leaf_parameters

    out = {}
    for name, p in leaf_parameters(config.get("parameters") or {}).items():
        if not isinstance(p, dict):
            continue
        ints = isinstance(p.get("min"), int) and isinstance(p.get("max"), int)
        inferred = (
            "categorical"
            if "values" in p
            else "constant"
            if "value" in p
            else "int_uniform"
            if ints
            else "uniform"
        )
        out[name] = p.get("distribution") or inferred
    return out


def _seconds(iso: Any) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return 0.0


def sweep_status(doc: dict[str, Any], trials: list[dict[str, Any]], now: float | None = None) -> str:
    """running, finished or stopped, from what storage holds: ``best.json`` (select_best ran) or every trial
    in and ended -> finished; a trial whose lease is alive, or anything written in the last
    :data:`STALE_SECONDS` (agents starting, between trials) -> running; else stopped (the agents are gone)."""
    import time

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
    import hashlib

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
    import math

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


# ---------------------------------------------------------------------------------------------------------
# deployments


class Serving(BaseModel):
    """What the model server's Prometheus metrics say since it started (its workers summed)."""

    requests: float | None = None
    rows: float | None = None
    mean_latency_ms: float | None = None
    p95_latency_ms: float | None = None


class DeploymentRow(BaseModel):
    pipeline: str | None
    model: str
    name: str
    target: str
    state: str
    version: str | None
    address: str | None
    since: str | None
    health: str | None
    smoke: dict[str, Any] | None
    serving: Serving
    traffic: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    alias: str | None = None
    mismatch: str | None = None


def traffic_split(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A Kubernetes deployment's predictors as its last rollout left them: main and, with a canary, its share."""
    if record.get("target") != "kubernetes":
        return []
    canary = int(record.get("canary_traffic") or 0) if record.get("canary_version") else 0
    split = [{"name": "main", "version": record.get("version"), "traffic": 100 - canary}]
    if canary:
        split.append({"name": "canary", "version": record.get("canary_version"), "traffic": canary})
    return split


def _deployment(record: dict[str, Any], pipeline: str | None, root: str) -> DeploymentRow:
    from freestack.serving.local import describe
    from freestack.serving.records import alias_drift, served_alias

    serving = record.get("state") == "serving"
    kubernetes = record.get("target") == "kubernetes"
    if kubernetes:
        address, health = (
            f"SeldonDeployment {record.get('namespace')}/{record.get('name')}",
            record.get("message"),
        )
    else:
        address, health = (
            record.get("predict_url") or record.get("url"),
            describe(record).get("health") if serving else None,
        )
    return DeploymentRow(
        pipeline=pipeline,
        model=record.get("model", "?"),
        name=record.get("name", "?"),
        target=record.get("target", "local"),
        state=record.get("state", "?"),
        version=record.get("version"),
        address=address,
        health=health,
        since=record.get("deployed_at") or (record.get("history") or [{}])[-1].get("at"),
        smoke=record.get("smoke"),
        serving=serving_stats(record.get("metrics_url")) if serving else Serving(),
        traffic=traffic_split(record),
        history=list(record.get("history") or [])[-10:][::-1],
        alias=served_alias(record),
        mismatch=alias_drift(root, record),
    )


def serving_stats(metrics_url: str | None, timeout: float = 2.0) -> Serving:
    """Predictions, rows and model latency (mean, 95th percentile) so far, from the model server's
    Prometheus metrics (``freestack_model_predict_seconds``, ``freestack_prediction_rows_total``)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    if not metrics_url:
        return Serving()
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return Serving()
    sums: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "freestack_model_predict_seconds_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            else:
                sums[s.name] = sums.get(s.name, 0.0) + s.value
    count = sums.get("freestack_model_predict_seconds_count", 0.0)
    mean = 1000 * sums.get("freestack_model_predict_seconds_sum", 0.0) / count if count else None
    p95 = next((1000 * le for le, n in sorted(buckets.items()) if count and n >= 0.95 * count), None)
    return Serving(
        requests=count,
        rows=sums.get("freestack_prediction_rows_total"),
        mean_latency_ms=mean,
        p95_latency_ms=p95 if p95 is None or p95 != float("inf") else None,
    )


def deployments() -> list[DeploymentRow]:
    """Every deployment record under every pipeline's storage root, with what is true now."""
    from freestack.serving.records import all_deployments

    by_root: dict[str, dict[str, str]] = {}
    for p, spec in pipelines():
        by_root.setdefault(p.root, {})[spec.model_name] = p.name
    out = []
    for root, models in by_root.items():
        for rec in all_deployments(root):
            out.append((rec, models.get(rec.get("model", "")), root))
    return parallel(lambda args: _deployment(*args), out)


# ---------------------------------------------------------------------------------------------------------
# data


class PartitionRow(BaseModel):
    ds: str
    rows: int | None
    quarantined: int
    sha256: str | None
    reasons: dict[str, int]


class LakePage(BaseModel):
    pipeline: str
    root: str
    partitions: list[PartitionRow]
    missing: list[str] = Field(
        default_factory=list, description="days between the first and last partition without one"
    )


def lake_page(pipeline: str, spec: PipelineSpec) -> LakePage:
    from datetime import date, timedelta

    from freestack.ingest.core import lake_summary

    rows = [PartitionRow(**p) for p in lake_summary(spec)]
    missing: list[str] = []
    if rows:
        have = {r.ds for r in rows}
        day, last = date.fromisoformat(rows[0].ds), date.fromisoformat(rows[-1].ds)
        while day <= last:
            if day.isoformat() not in have:
                missing.append(day.isoformat())
            day += timedelta(days=1)
    return LakePage(pipeline=pipeline, root=str(spec.root), partitions=rows, missing=missing)


class IntervalRow(BaseModel):
    name: str = Field(description="the interval's folder under monitoring/<model>/reports/")
    start: str
    end: str
    status: str = Field(description="ok, drift or no_data")
    rows: int
    labels: int
    versions: list[str]
    alerts: list[str] = Field(
        description="one line per drifted column or metric: feature, statistic, threshold, report"
    )
    notes: list[str]
    top: list[tuple[str, float]] = Field(description="the largest PSI values of the interval (column, PSI)")
    drift: dict[str, tuple[float, float | None]] = Field(
        {},
        description="every monitored series: (PSI, its test's p-value), the largest PSI of the versions served",
    )


class MonitoringPage(BaseModel):
    pipeline: str
    model: str
    thresholds: dict[str, float]
    actions: list[str]
    intervals: list[IntervalRow] = Field(description="newest first")
    figure: str | None = Field(
        None, exclude=True, description="drift over time (Plotly JSON) for the page; not in the API"
    )


def monitoring_page(pipeline: str, spec: PipelineSpec, limit: int = 60) -> MonitoringPage:
    """The model's judged intervals, newest first (freestack.monitor's summaries)."""
    from datetime import datetime

    from freestack.monitor.core import interval_name, recent_summaries

    rows = []
    for s in recent_summaries(spec, limit):
        start, end = s["interval"]["start"], s["interval"]["end"]
        series = sorted((x for v in s["versions"] for x in v.get("series", [])), key=lambda x: -x["psi"])
        rows.append(
            IntervalRow(
                name=interval_name(datetime.fromisoformat(start), datetime.fromisoformat(end)),
                start=start,
                end=end,
                status=s["status"],
                rows=s["rows"],
                labels=s["labels"],
                versions=[v["version"] for v in s["versions"]],
                alerts=[a["message"] for a in s["alerts"]],
                notes=s["notes"] + s["problems"],
                top=[(x["name"], round(x["psi"], 3)) for x in series[:3]],
                drift=_drift_of(series),
            )
        )
    m = spec.monitor
    return MonitoringPage(
        pipeline=pipeline,
        model=spec.model_name,
        thresholds=m.thresholds.model_dump(),
        actions=list(m.actions),
        intervals=rows,
    )


def _drift_of(series: list[dict[str, Any]]) -> dict[str, tuple[float, float | None]]:
    """``{name: (PSI, p-value)}`` of an interval's series, largest PSI first (a name judged for two versions
    keeps its larger PSI)."""
    out: dict[str, tuple[float, float | None]] = {}
    for x in series:
        p = x.get("p_value")
        out.setdefault(
            x["name"], (round(float(x["psi"]), 4), float(p) if isinstance(p, int | float) else None)
        )
    return out


def monitoring_report(spec: PipelineSpec, interval: str) -> bytes | None:
    """An interval's HTML report, read through the storage layer."""
    from freestack.storage import join, to_path
    from freestack_server.requestlog import monitoring_uri

    path = join(to_path(monitoring_uri(spec.root, spec.model_name)), "reports", interval, "report.html")
    return path.read_bytes() if path.exists() else None


# ---------------------------------------------------------------------------------------------------------
# scores

#: days a scores page lists (the overview lists :data:`SCORES_OVERVIEW` per pipeline, linking to the rest)
SCORES_PAGE, SCORES_OVERVIEW = 100, 30
#: the most predicted classes a day's row draws (the JSON has every class)
SHOWN_CLASSES = 12


class ClassCount(BaseModel):
    label: str
    rows: int
    share: float = Field(description="of the day's scored rows")


class ValueStats(BaseModel):
    """A regression's predicted values over one day."""

    count: int
    min: float | None
    mean: float | None
    max: float | None


class ScoreFailure(BaseModel):
    error: str = Field(description="why the day's last run failed, as its task said")
    task: str | None = Field(None, description="plan or score")
    failed_at: str | None = None
    dag_id: str | None = None
    run_id: str | None = None


class ScoredDay(BaseModel):
    ds: str
    folder: str = Field(description="the day's folder: part.parquet, _manifest.json, _quarantine.parquet")
    version: str | None = None
    version_uri: str | None = None
    task: str | None = Field(None, description="classification or regression")
    rows_in: int | None = None
    rows_scored: int | None = None
    rows_quarantined: int = 0
    classes: list[ClassCount] = Field([], description="classification: rows per predicted class, by label")
    values: ValueStats | None = Field(None, description="regression: the predicted values' min, mean and max")
    inputs: list[dict[str, Any]] = Field([], description="the files scored: uri, sha256, size, rows")
    scored_at: str | None = None
    dag_id: str | None = None
    run_id: str | None = None
    problem: str | None = Field(
        None, description="why the day cannot be read (then only ds and folder are known)"
    )
    failed: ScoreFailure | None = Field(
        None, description="the day's last run failed (after the scores shown, if any)"
    )

    def shown_classes(self) -> list[ClassCount]:
        """The :data:`SHOWN_CLASSES` most predicted classes, in label order."""
        top = sorted(self.classes, key=lambda c: -c.rows)[:SHOWN_CLASSES]
        return [c for c in self.classes if c in top]


class ScoresPage(BaseModel):
    pipeline: str
    model: str
    folder: str = Field(description="where the days' folders are")
    version: str = Field(
        description="what score.version asks for: an alias (resolved by each run) or a version"
    )
    schedule: str
    total: int = Field(description="days scored (folders found)")
    page: int
    pages: int
    days: list[ScoredDay] = Field(description="this page's days, newest first")
    figure: str | None = Field(
        None, exclude=True, description="predictions over the days (Plotly JSON); not in the API"
    )


def score_days(spec: PipelineSpec) -> list[str]:
    """The days (ds) with a folder under the spec's score output, newest first (:mod:`freestack.score.core`)."""
    from freestack.score.core import score_days as days

    return days(spec)


def _label_order(label: str) -> tuple[int, float, str]:
    """Numbers in their order ("2" before "10"), then the other labels as text."""
    try:
        return 0, float(label), label
    except ValueError:
        return 1, 0.0, label


def _classes(predictions: dict[str, Any]) -> list[ClassCount]:
    counts = {str(k): int(v) for k, v in predictions.items()}
    total = sum(counts.values()) or 1
    return [
        ClassCount(label=k, rows=counts[k], share=round(counts[k] / total, 4))
        for k in sorted(counts, key=_label_order)
    ]


def _values(p: dict[str, Any]) -> ValueStats:
    n = int(p.get("count") or 0)
    return ValueStats(
        count=n,
        min=p.get("min") if n else None,
        mean=p["sum"] / n if n else None,
        max=p.get("max") if n else None,
    )


def _day_of(ds: str, folder: str, m: dict[str, Any]) -> ScoredDay:
    """A day's row from its manifest (KeyError, TypeError... when it is not a scores manifest)."""
    missing = [k for k in ("version", "rows_scored") if m.get(k) is None]
    if missing:
        from freestack.score.core import UnreadableScores

        raise UnreadableScores(f"the manifest in the footer has no {' and no '.join(missing)}")
    run, preds, regression = m.get("run") or {}, m.get("predictions") or {}, m.get("task") == "regression"
    return ScoredDay(
        ds=ds,
        folder=folder,
        version=m["version"],
        version_uri=m.get("version_uri"),
        task=m.get("task"),
        rows_in=m.get("rows_in"),
        rows_scored=m["rows_scored"],
        rows_quarantined=m.get("rows_quarantined") or 0,
        classes=[] if regression else _classes(preds),
        values=_values(preds) if regression and preds else None,
        inputs=m.get("inputs") or [],
        scored_at=m.get("scored_at"),
        dag_id=run.get("dag_id"),
        run_id=run.get("run_id"),
    )


def scored_day(spec: PipelineSpec, ds: str) -> ScoredDay:
    """One scored day from the footer of its part; a day that cannot be read says why (``problem``) and
    how to repair it, instead of failing the page."""
    from freestack.score.core import UnreadableScores, output_dir, read_failure, read_scores_manifest

    folder = output_dir(spec, ds)
    failed = _failure(read_failure(folder))
    try:
        return _day_of(ds, folder, read_scores_manifest(folder)).model_copy(update={"failed": failed})
    except UnreadableScores as exc:
        problem = str(exc)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        problem = (
            f"the manifest in the footer is not a scores manifest ({type(exc).__name__}: {str(exc)[:200]})"
        )
    fix = f"Rescore the day: clear its score task, or `freestack backfill {spec.name} --dag score --reprocess completed` over it"
    return ScoredDay(ds=ds, folder=folder, problem=f"{problem}. {fix}", failed=failed)


def _failure(record: dict[str, Any] | None) -> ScoreFailure | None:
    if record is None:
        return None
    run = record.get("run") if isinstance(record.get("run"), dict) else {}
    return ScoreFailure(
        error=str(record["error"]),
        task=record.get("task"),
        failed_at=record.get("failed_at"),
        dag_id=run.get("dag_id"),
        run_id=run.get("run_id"),
    )


def scores_page(pipeline: str, spec: PipelineSpec, page: int = 1, size: int = SCORES_PAGE) -> ScoresPage:
    """Page ``page`` of the pipeline's scored days, newest first: only that page's footers are read."""
    from freestack.score.core import scores_parent

    days = score_days(spec)
    shown = parallel(lambda ds: scored_day(spec, ds), days[(page - 1) * size : page * size])
    sc = spec.score
    return ScoresPage(
        pipeline=pipeline,
        model=spec.model_name,
        folder=str(scores_parent(spec)[0]),
        version=sc.version,
        schedule=sc.schedule,
        total=len(days),
        page=page,
        pages=max(1, -(-len(days) // size)),
        days=shown,
    )


__all__ = [
    "DeploymentRow",
    "Importance",
    "IntervalRow",
    "LakePage",
    "distributions",
    "parameter_importance",
    "sweep_status",
    "MonitoringPage",
    "monitoring_page",
    "monitoring_report",
    "aliases",
    "ModelPage",
    "Pipeline",
    "SweepPage",
    "SweepRow",
    "Trial",
    "VersionPage",
    "VersionRow",
    "deployments",
    "lake_page",
    "model_page",
    "pipelines",
    "serving_stats",
    "sweep_page",
    "sweeps",
    "ClassCount",
    "ScoreFailure",
    "ScoredDay",
    "ScoresPage",
    "ValueStats",
    "score_days",
    "scored_day",
    "scores_page",
    "trained_on",
    "version_file_chunks",
    "version_page",
    "version_rows",
    "decided_again",
    "gate_of",
]
