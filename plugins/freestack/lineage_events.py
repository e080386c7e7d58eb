"""OpenLineage for freestack's operators: dataset names by OpenLineage's naming conventions, freestack's
run facets, and the :class:`OperatorLineage` the operators' ``get_openlineage_facets_on_complete`` return.

The OpenLineage provider (``apache-airflow-providers-openlineage``) calls those methods only when it is
enabled (a transport configured, ``[openlineage] disabled`` false), after the task succeeded; the operators
import this module inside them, so DAG parsing and tasks never load OpenLineage otherwise.

Dataset names (https://openlineage.io/docs/spec/naming):

- ``file:///abs/path``: namespace ``file``, name ``/abs/path``;
- ``s3://[conn@]bucket/key``: namespace ``s3://bucket``, name ``key`` (the connection id is how the
  workers reach the bucket, not part of the data's name);
- ``data://[conn@]owner/collection/key``: namespace ``data://owner``, name ``collection/key`` (one namespace
  per collection owner, as a bucket is one for S3); ``.my`` is resolved to the connection's user;
- any other ``scheme://host/path``: namespace ``scheme://host``, name ``path``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import attr
from airflow.providers.openlineage.extractors import OperatorLineage
from openlineage.client.event_v2 import InputDataset, OutputDataset
from openlineage.client.facet_v2 import RunFacet, dataset_version_dataset, output_statistics_output_dataset

from freestack import __version__
from freestack.storage import to_path
from freestack.storage.datafs import MY
from freestack.version import read_storage_file
from freestack.version.files import MARKER

#: the namespace of local files (OpenLineage's "Local file system")
FILE_NAMESPACE = "file"
#: the keys freestack's run facets have in an event's ``run.facets``
MODEL_VERSION_FACET = "freestack_modelVersion"
GATE_FACET = "freestack_gate"
METRICS_FACET = "freestack_metrics"
CACHE_FACET = "freestack_cache"
ALIAS_FACET = "freestack_alias"


def dataset_name(uri: str) -> tuple[str, str]:
    """``(namespace, name)`` of a storage URI or a local path, by the conventions in the module's doc."""
    text = str(uri).rstrip("/") or "/"
    if "://" not in text:
        return FILE_NAMESPACE, os.path.abspath(text)
    scheme, rest = text.split("://", 1)
    host, _, path = rest.partition("/")
    if scheme == "file":
        return (f"file://{host}" if host else FILE_NAMESPACE), unquote(f"/{path}")
    host = host.rsplit("@", 1)[-1]  # s3://conn@bucket: the bucket alone
    if scheme == "data" and host == MY:
        host = _data_owner(text)
    return f"{scheme}://{host}", path


def _data_owner(uri: str) -> str:
    """Whom ``data://.my/...`` means: the user of the connection it is read through (``.my`` when that
    cannot be told: lineage never fails a task)."""
    try:
        return to_path(uri).fs.owner or MY
    except Exception:
        return MY


def input_dataset(uri: str, *, sha256: str | None = None) -> InputDataset:
    """An input dataset; ``sha256`` (the bytes read) as its ``version`` facet."""
    namespace, name = dataset_name(uri)
    return InputDataset(namespace=namespace, name=name, facets=_version(sha256))


def output_dataset(
    uri: str, *, sha256: str | None = None, rows: int | None = None, size: int | None = None
) -> OutputDataset:
    """An output dataset; ``sha256`` as its ``version`` facet, ``rows`` and ``size`` (bytes) as its
    ``outputStatistics``."""
    namespace, name = dataset_name(uri)
    stats = {}
    if rows is not None or size is not None:
        stats["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
            rowCount=rows, size=size
        )
    return OutputDataset(namespace=namespace, name=name, facets=_version(sha256), outputFacets=stats)


def _version(sha256: str | None) -> dict[str, Any]:
    if not sha256:
        return {}
    return {"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=sha256)}


#: who made freestack's run facets (each facet's ``_producer``): freestack and its version, not the provider
PRODUCER = f"urn:freestack:{__version__}"


@attr.define
class FreestackRunFacet(RunFacet):
    """A run facet of freestack's own: its ``_producer`` is :data:`PRODUCER` (OpenLineage's default is the
    client's, which the Airflow provider sets to its own)."""

    def __attrs_post_init__(self) -> None:
        if not self._producer:
            self._producer = PRODUCER
        super().__attrs_post_init__()


@attr.define
class ModelVersionRunFacet(FreestackRunFacet):
    """The model version a run wrote or read: the model's name, the version, and the sha256 of its
    registration manifest (``_REGISTERED.json``, which lists every file's sha256: one digest pins the
    whole version); None for a candidate the gate has not registered yet."""

    name: str
    version: str
    sha256: str | None = attr.field(default=None)


@attr.define
class GateRunFacet(FreestackRunFacet):
    """The gate's decision on a candidate: promote or not, the route taken, the metric it compared and the
    reasons, against which production version."""

    promote: bool
    route: str
    metric: str | None = attr.field(default=None)
    reasons: list[str] = attr.field(factory=list)
    champion_version: str | None = attr.field(default=None)


@attr.define
class MetricsRunFacet(FreestackRunFacet):
    """A model's metrics from this run (training's validation metrics, or the evaluation's on the test
    split), and the production model's on the same rows when there was one."""

    metrics: dict[str, float]
    champion: dict[str, float] | None = attr.field(default=None)


@attr.define
class CacheRunFacet(FreestackRunFacet):
    """The step cache (:mod:`freestack.step_cache`): the key of the run's inputs, and whether its outputs were
    reused from an earlier run (``from_run``) or made, and why (``miss``)."""

    key: str
    hit: bool
    from_run: str | None = attr.field(default=None)
    miss: str | None = attr.field(default=None)


@attr.define
class AliasRunFacet(FreestackRunFacet):
    """An alias move (a promotion or a rollback): which alias of which model, the version it points at
    now and the one it pointed at before (None: the alias is new), and the reason and the mover recorded
    in the aliases' history. An alias is no dataset: the move is a fact about the run."""

    model: str
    alias: str
    version: str
    from_version: str | None = attr.field(default=None)
    reason: str | None = attr.field(default=None)
    by: str | None = attr.field(default=None)


def alias_facet(model: str, move: Mapping[str, Any] | None) -> dict:
    """The ``freestack_alias`` run facet of an alias ``move`` (``alias``, ``version``, ``from``,
    ``reason``, ``by``); none when the alias points at no version."""
    if not move or not move.get("version"):
        return {}
    facet = AliasRunFacet(
        model=model,
        alias=str(move["alias"]),
        version=str(move["version"]),
        from_version=move.get("from"),
        reason=move.get("reason") or None,
        by=move.get("by") or None,
    )
    return {ALIAS_FACET: facet}


def cache_facet(record: Mapping[str, Any] | None) -> dict:
    """The ``freestack_cache`` run facet of a step's cache record; none when the step was not cached."""
    if not record or not record.get("key"):
        return {}
    facet = CacheRunFacet(
        key=str(record["key"]),
        hit=bool(record.get("hit")),
        from_run=record.get("from_run"),
        miss=record.get("miss"),
    )
    return {CACHE_FACET: facet}


def numbers(values: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric entries of a metrics mapping (booleans and nested records left out)."""
    return {
        k: float(v)
        for k, v in (values or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def registered_sha256(version_uri: str) -> str | None:
    """The sha256 of a version's registration manifest; None when it is not registered (or unreadable:
    lineage never fails a task)."""
    try:
        return hashlib.sha256(read_storage_file(version_uri, MARKER)).hexdigest()
    except Exception:
        return None


def model_version_facet(model: str, version: str, version_uri: str | None) -> dict[str, RunFacet]:
    """The ``freestack_modelVersion`` run facet of ``version`` of ``model``."""
    sha = registered_sha256(version_uri) if version_uri else None
    return {MODEL_VERSION_FACET: ModelVersionRunFacet(name=model, version=version, sha256=sha)}


def metrics_facet(metrics: Mapping[str, Any] | None, champion: Mapping[str, Any] | None = None) -> dict:
    """The ``freestack_metrics`` run facet: the numeric entries of ``metrics`` (and ``champion``'s)."""
    return {METRICS_FACET: MetricsRunFacet(metrics=numbers(metrics), champion=numbers(champion) or None)}


def gate_facet(decision: Mapping[str, Any], route: str) -> dict:
    """The ``freestack_gate`` run facet of the gate's ``decision`` (:func:`freestack.evaluate.gate.decide`)
    and the ``route`` it took."""
    facet = GateRunFacet(
        promote=bool(decision.get("promote")),
        route=route,
        metric=decision.get("metric"),
        reasons=[str(r) for r in decision.get("reasons") or []],
        champion_version=decision.get("champion_version"),
    )
    return {GATE_FACET: facet}


def lineage(
    inputs: Iterable[InputDataset] = (),
    outputs: Iterable[OutputDataset] = (),
    run_facets: Mapping[str, RunFacet] | None = None,
) -> OperatorLineage:
    """What an operator's ``get_openlineage_facets_on_complete`` returns."""
    return OperatorLineage(inputs=list(inputs), outputs=list(outputs), run_facets=dict(run_facets or {}))


__all__ = [
    "ALIAS_FACET",
    "FILE_NAMESPACE",
    "CACHE_FACET",
    "GATE_FACET",
    "METRICS_FACET",
    "MODEL_VERSION_FACET",
    "AliasRunFacet",
    "CacheRunFacet",
    "GateRunFacet",
    "MetricsRunFacet",
    "ModelVersionRunFacet",
    "alias_facet",
    "cache_facet",
    "dataset_name",
    "gate_facet",
    "input_dataset",
    "lineage",
    "metrics_facet",
    "model_version_facet",
    "numbers",
    "output_dataset",
    "registered_sha256",
]
