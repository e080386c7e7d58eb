"""What the Models pages show: a model's versions, their gate decisions, aliases and their history, the
deployments serving it, and one version's page and files. Each reads a model's registry: a pipeline's
(its spec names the model and the storage root) or, for a model no pipeline trains (a reusable operator's,
a notebook's), the registry itself (:data:`Source`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import BaseModel, Field, computed_field

from freestack.judging.client import table_html
from freestack.registry.card import cost_rows, metrics_summary
from freestack.registry.core import ModelRegistry, redecisions, registry_for
from freestack.registry.names import ALIASES, VERSION_RE
from freestack.serving.records import alias_drift, served_alias, serving_records
from freestack.storage import join, subfolders
from freestack.ui.catalog.common import numbers_in, read_json, read_many
from freestack.version.files import LINEAGE, MARKER, METRICS

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec

    #: what a model's pages read: its pipeline's spec, or the registry of a model no pipeline trains
    Source: TypeAlias = PipelineSpec | ModelRegistry


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
    pipeline: str | None = Field(description="the pipeline that trains it; None: no pipeline does")
    model: str
    root: str
    versions: list[VersionRow]
    aliases: dict[str, str]
    history: list[AliasMove]
    served: list[Served] = []

    def aliases_of(self, version: str) -> list[str]:
        return sorted(a for a, v in self.aliases.items() if v == version)

    @computed_field
    @property
    def latest(self) -> str | None:
        """What ``latest`` names (:meth:`freestack.registry.core.ModelRegistry.latest`): the newest version the
        gate did not block; None when it blocked every one."""
        return next((r.version for r in reversed(self.versions) if r.gate.decision != "blocked"), None)

    @computed_field
    @property
    def key(self) -> str:
        """The name in its pages' addresses (``/models/<key>``): its pipeline's, else its model's."""
        return self.pipeline or self.model


#: (registry folder, version) -> its row: a committed version never changes
_VERSIONS: dict[tuple[str, str], VersionRow] = {}
_LOCK = threading.Lock()


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
    again = redecisions(aliases)
    return [
        r.model_copy(update={"gate": gate_of(again[r.version])}) if r.version in again else r for r in rows
    ]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def trained_on(lineage: dict[str, Any]) -> str:
    """How a version was trained, from its lineage's ``distributed``: "1 process", or e.g. "2 ranks (1 node
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
    marker = files.get(f"{version}/{MARKER}")
    if marker is None:
        return None  # an unfinished registration: not a version
    lineage = files.get(f"{version}/{LINEAGE}") or {}
    metrics = metrics_summary(files.get(f"{version}/{METRICS}") or {})
    window, airflow = lineage.get("window") or {}, lineage.get("airflow") or {}
    return VersionRow(
        version=version,
        created=marker.get("registered_at"),
        window_end=window.get("end_ds"),
        window_days=window.get("days"),
        partitions=len(lineage.get("partitions") or []),
        metrics={k: v for k, v in numbers_in(metrics).items() if k.startswith("test_")},
        gate=gate_of(lineage.get("gate") or {}),
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
    files = read_many(folder, [f"{n}/{f}" for n in missing for f in (MARKER, LINEAGE, METRICS)])
    for name in missing:
        row = _version_row(name, files)
        if row is not None:
            with _LOCK:
                _VERSIONS[(key, name)] = row
    rows = [_VERSIONS[(key, n)] for n in names if (key, n) in _VERSIONS]
    if aliases is None:
        aliases = read_json(join(folder, ALIASES)) or {}
    return decided_again(sorted(rows, key=lambda r: (r.created or "", r.version)), aliases)


def registry_of(source: Source) -> ModelRegistry:
    """The registry a model's pages read: a pipeline's model's under its storage root, or the one given."""
    return source if isinstance(source, ModelRegistry) else registry_for(source)


def aliases(source: Source) -> dict[str, str]:
    """The model's aliases (production, staging, previous...) and the versions they point at."""
    return _named(registry_of(source).aliases())


def _named(raw: dict[str, Any]) -> dict[str, str]:
    """``aliases.json`` without its history: alias -> version."""
    return {k: v for k, v in raw.items() if k != "history" and isinstance(v, str)}


def model_page(pipeline: str | None, source: Source) -> ModelPage:
    """A model's versions, aliases and their history, and the deployments serving it (``pipeline``: the
    pipeline that trains it, None for a model no pipeline trains)."""
    reg = registry_of(source)
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
        model=reg.model,
        root=str(reg.root),
        versions=version_rows(reg.folder, aliases),
        aliases=_named(aliases),
        history=history[::-1],
        served=served_by(str(reg.root), reg.model, aliases),
    )


def served_by(root: str, model: str, aliases: dict[str, Any]) -> list[Served]:
    """The model's serving deployments, each flagged when its version is not what its alias says."""
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
    pipeline: str | None = Field(description="the pipeline that trains it; None: no pipeline does")
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
    judge: str | None = Field(None, description="the LLM judge's worst prompts, as the report's table (HTML)")
    notebook_lines: list[str] = Field(
        [], description="the Python lines that load this version in a notebook (notebook_lines)"
    )
    costs: list[tuple[str, str]] = Field(
        [], description="what its training took and cost, and its size (freestack.registry.card.cost_rows)"
    )

    @computed_field
    @property
    def key(self) -> str:
        """The name in its pages' addresses (``/models/<key>/<version>``): its pipeline's, else its model's."""
        return self.pipeline or self.model


def notebook_lines(root: str, model: str, version: str) -> list[str]:
    """The three lines that load ``version`` in a notebook (``make notebook``): the registry of ``model``
    under the storage root the page read (``root``), and the version's model, verified against its
    registration as every stage loads it."""
    return [
        "from freestack.registry.core import ModelRegistry",
        f"registry = ModelRegistry({root!r}, {model!r})",
        f"model = registry.load({version!r}).model",
    ]


def version_page(pipeline: str | None, source: Source, version: str) -> VersionPage:
    """One committed version: its card, metrics, lineage, files and the evaluation's report and plots."""
    reg = registry_of(source)
    info = reg.get(version)
    name = info["version"]
    row = _VERSIONS.get((str(reg.folder), name)) or _version_row(
        name,
        {  # what get() read already
            f"{name}/{MARKER}": {"registered_at": info["created"]},
            f"{name}/{LINEAGE}": info["lineage"],
            f"{name}/{METRICS}": info["metrics_full"],
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
        model=reg.model,
        row=row,
        aliases=info["aliases"],
        uri=info["uri"],
        card=info["card"],
        metrics=numbers_in(info["metrics_full"]),
        lineage=lineage,
        partitions=parts,
        files=files,
        plots=[f for f in files if f.startswith("evaluation/") and f.endswith(".png")],
        report="evaluation/report.html" if "evaluation/report.html" in files else None,
        judge=judge_table(reg.version_path(name)) if JUDGED in files else None,
        notebook_lines=notebook_lines(str(reg.root), reg.model, name),
        costs=cost_rows(lineage.get("costs") or {}),
    )


#: the LLM judge's verdicts in a version (``gate.judge``): every prompt's scores, rationales, raw answers
JUDGED = "evaluation/judge.json"


def judge_table(folder: ObjectStoragePath) -> str | None:
    """The judge's 10 worst prompts with their scores and rationales (the evaluation report's table)."""
    record = read_json(join(folder, *JUDGED.split("/"))) or {}
    return table_html(record.get("items") or []) or None


def version_file_chunks(source: Source, version: str, rel: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A registered file of a committed version (``rel`` as its manifest names it), in pieces."""
    with join(registry_of(source).version_path(version), *rel.split("/")).open("rb") as f:
        while piece := f.read(chunk):
            yield piece


__all__ = [
    "AliasMove",
    "Gate",
    "LakeEvent",
    "ModelPage",
    "Partition",
    "Served",
    "VersionPage",
    "VersionRow",
    "aliases",
    "decided_again",
    "gate_of",
    "model_page",
    "registry_of",
    "served_by",
    "trained_on",
    "version_file_chunks",
    "version_page",
    "version_rows",
]
