"""A training run's window: the lake partitions it trains on, fixed once per run.

The ``window`` task of ``<p>_train`` fixes it (:func:`fix_window`): the day it ends (the form's
``end_ds``, else the newest landed partition) and, for every partition it may read, the ds, the URI and
the sha256 of the published bytes. Every later reader (``train``, each sweep agent, ``evaluate``) reads
exactly that set (:func:`read_window`), hashing the bytes it actually reads: a partition that changed or
vanished since fails the task and names it, so one run never mixes two states of the lake, and lineage
records the sha256 of what the model saw.

When no version was trained on the same partitions (:func:`already_trained`), an automatic run trains;
otherwise it has nothing new to learn and is skipped (docs/stages/train.md).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError
from freestack.ingest.lake import PART, lake_partitions, partition_dir, read_manifest
from freestack.registry.core import registry_for
from freestack.storage import join, sha256_of, to_path

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)


class WindowError(FreestackError):
    """The window cannot be fixed or read as fixed; the message says which partition and what to do."""


@dataclass(frozen=True)
class Partition:
    ds: str
    uri: str
    sha256: str
    size: int
    #: the lake asset events that published exactly these bytes (id, timestamp, dag_id, run_id)
    events: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Window:
    """The partitions ``(end_ds - bound_days, end_ds]`` as one run fixed them; ``days`` is the run's
    own window (a sweep may try other sizes up to ``bound_days``)."""

    end_ds: str
    days: int
    bound_days: int
    partitions: list[Partition] = field(default_factory=list)
    chosen: str = "form"  # form | newest | interval: where end_ds came from

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Window:
        parts = [
            Partition(**{**p, "events": tuple(p.get("events") or ())}) for p in d.get("partitions") or []
        ]
        return cls(
            d["end_ds"], int(d["days"]), int(d.get("bound_days") or d["days"]), parts, d.get("chosen", "form")
        )

    def of_days(self, days: int) -> list[Partition]:
        """The fixed partitions of a window of ``days`` days ending at ``end_ds``."""
        if days > self.bound_days:
            raise WindowError(
                f"a {days}-day window is wider than the {self.bound_days} days this run fixed; "
                "widen train.window_days (or the sweep's window_days values) and run again"
            )
        start = _minus_days(self.end_ds, days)
        return [p for p in self.partitions if p.ds > start]

    def text(self) -> str:
        days = [p.ds for p in self.of_days(self.days)]
        where = {"newest": "the newest landed partition", "interval": "the run's data interval"}.get(
            self.chosen, "the form"
        )
        span = f"{days[0]} … {days[-1]}" if len(days) > 1 else (days[0] if days else "none")
        text = f"Window: {len(days)} partitions ({span}) up to {self.end_ds}, {self.days} days; end_ds from {where}."
        ids = sorted(e["id"] for p in self.of_days(self.days) for e in p.events)
        if ids:
            shown = ", ".join(map(str, ids)) if len(ids) <= 8 else f"{ids[0]} … {ids[-1]}"
            text += f" Lake events covered: {shown} ({len(ids)})."
        return text

    def with_events(self, events: list[dict[str, Any]]) -> Window:
        """The window with, for each partition, the lake events (an asset event's ``extra`` holds the
        partition's folder, its ds and the part's sha256) that published exactly its bytes there: the events
        this window covers, whichever run Airflow folded them into."""
        import dataclasses

        by_part: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for e in events:
            by_part.setdefault((e["partition"].rstrip("/"), e["ds"], e["part_sha256"]), []).append(
                {k: e[k] for k in ("id", "timestamp", "dag_id", "run_id")}
            )
        parts = [
            dataclasses.replace(p, events=tuple(by_part.get((p.uri.rsplit("/", 1)[0], p.ds, p.sha256), ())))
            for p in self.partitions
        ]
        return dataclasses.replace(self, partitions=parts)


def _minus_days(ds: str, days: int) -> str:
    return (date.fromisoformat(ds) - timedelta(days=days)).isoformat()


def window_interval(end_ds: str, days: int) -> tuple[str, str]:
    """The days a window of ``days`` days ending at ``end_ds`` covers, as an interval in UTC (ISO 8601):
    from the start of its first day to the end of ``end_ds``."""
    from datetime import UTC, datetime

    end = datetime.fromisoformat(end_ds).replace(tzinfo=UTC) + timedelta(days=1)
    return (end - timedelta(days=int(days))).isoformat(), end.isoformat()


def fix_window(spec: PipelineSpec, end_ds: str | None, days: int, *, chosen: str = "form") -> Window:
    """The run's window: ``end_ds`` (None: the newest landed partition) and every partition a training of
    this run may read, with the sha256 the ingest published for it (hashed here when it recorded none)."""
    if end_ds is None:
        landed = lake_partitions(spec)
        if not landed:
            raise WindowError(
                f"the lake of {spec.name!r} has no partitions: run {spec.name}_ingest (or "
                f"`freestack backfill {spec.name} --start … --end …`) first"
            )
        end_ds, chosen = landed[-1], "newest"
    bound = max(days, spec.sweep.widest("window_days") if spec.sweep else 0)  # every window a trial may ask
    start = _minus_days(end_ds, bound)
    parts = []
    for ds in (d for d in lake_partitions(spec, until=end_ds) if d > start):
        path = join(partition_dir(spec, ds), PART)
        published = (read_manifest(spec, ds) or {}).get("part") or {}
        sha = published.get("sha256") or sha256_of(path)
        size = published.get("size") or path.stat().st_size
        parts.append(Partition(ds, str(path), sha, int(size)))
    window = Window(end_ds, days, bound, parts, chosen)
    if not window.of_days(days):
        raise WindowError(
            f"no lake partitions of {spec.name!r} in the {days} days up to {end_ds}: run "
            f"{spec.name}_ingest for those days first (or widen window_days)"
        )
    return window


def read_window(spec: PipelineSpec, window: Window, days: int | None = None):
    """(DataFrame, partitions) of the fixed window, each partition's bytes hashed as they are read and
    checked against the fixed sha256; lineage gets the hash of the bytes read. Under ``unique_key:
    window`` a key's row from the latest partition wins (:func:`superseded`)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, parts = [], []
    for p in window.of_days(days or window.days):
        path = to_path(p.uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise WindowError(changed_message(spec, p, "was removed")) from None
        sha = hashlib.sha256(data).hexdigest()
        if sha != p.sha256:
            raise WindowError(
                changed_message(spec, p, f"was rewritten (sha256 {p.sha256[:12]}… then, {sha[:12]}… now)")
            )
        tables.append(pq.read_table(pa.BufferReader(data)))
        parts.append({"ds": p.ds, "uri": p.uri, "sha256": sha, "bytes": len(data), "events": list(p.events)})
    if not tables:
        raise WindowError(f"the fixed window up to {window.end_ds} holds no partitions of {spec.name!r}")
    keys = [t.column(spec.source.schema_.key) for t in tables] if window_unique(spec) else None
    frames = []
    for table, part, drop in zip(tables, parts, superseded(spec, keys, len(tables)), strict=True):
        frames.append((table.filter(pa.array(~drop)) if drop is not None else table).to_pandas())
        part.update(rows=len(frames[-1]), superseded=int(drop.sum()) if drop is not None else 0)
    return pd.concat(frames, ignore_index=True), parts


def window_unique(spec: PipelineSpec) -> bool:
    """Whether a key's rows on several days of a window are read once (``unique_key: window``)."""
    return bool(spec.source.schema_.key) and spec.source.policy.unique_key == "window"


def superseded(spec: PipelineSpec, keys: list | None, n: int) -> list:
    """For each of the ``n`` partitions' key columns (oldest first), a bool mask of its rows whose key a
    later partition of the window has: those rows are not read, so the latest partition wins. ``keys``
    None (keys are not checked): ``n`` times None. Null keys are never superseded. Logged when it drops rows."""
    if keys is None:
        return [None] * n
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from freestack.ingest.keyset import KeySet, hash_keys  # pyarrow

    seen, masks = KeySet(), []
    for col in reversed(keys):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
        mask = np.zeros(len(col), dtype=bool)
        mask[valid] = seen.add_batch(hash_keys(pc.drop_null(col)))
        masks.append(mask)
    masks.reverse()
    if dropped := sum(int(m.sum()) for m in masks):
        log.info(
            "%d rows of %s's window have a key that a later partition has again: the latest row of each key is "
            "read (source.policy.unique_key: window)",
            dropped,
            spec.name,
        )
    return masks


def changed_message(spec: PipelineSpec, p: Partition, what: str) -> str:
    return (
        f"lake partition ds={p.ds} of {spec.name!r} {what} after this run fixed its window: it was "
        f"re-ingested or deleted while the run trained. Nothing was registered; the lake update starts a "
        f"new run on the new data (or clear this run's `window` task to train on the lake as it is now)"
    )


def lineage_window(lineage: dict[str, Any]) -> Window | None:
    """The window a registered version was trained on, from its lineage (None for versions without hashes)."""
    w, parts = lineage.get("window") or {}, lineage.get("partitions") or []
    if not w.get("end_ds") or not parts or not all(p.get("sha256") for p in parts):
        return None
    fixed = [Partition(p["ds"], p.get("uri", ""), p["sha256"], int(p.get("bytes") or 0)) for p in parts]
    days = int(w.get("days") or 1)
    return Window(w["end_ds"], days, days, fixed, "form")


def already_trained(spec: PipelineSpec, window: Window, *, drift: bool = False) -> tuple[str, str] | None:
    """``(version, why)`` when a registered version makes this window's training pointless: one was
    trained on exactly these partitions (same ds and sha256), or on a window ending later (an automatic
    run never trains an older window after a newer one). A version the gate blocked does only when it was
    trained from this very spec (the same data and spec would train it again), and the reason says it was
    blocked. A run a drift alert started (``drift``) trains even on those partitions, unless the version
    trained on them was trained from the same spec and is production or a candidate still waiting; a
    blocked version never stops it. None: train."""
    wanted = {(p.ds, p.sha256) for p in window.of_days(window.days)}
    reg = registry_for(spec)
    aliases, this_spec = reg.aliases(), spec.normalized_hash()
    newest: tuple[str, str] | None = None
    for v in reversed(reg.versions()):
        name, lineage = v["version"], reg.lineage(v["version"]) or {}
        seen = lineage_window(lineage)
        blocked = reg.gate_of(name, lineage, aliases).get("promote") is False
        same_spec = lineage.get("spec_normalized_hash") == this_spec
        if seen is None or (blocked and (drift or not same_spec)):
            continue
        if {(p.ds, p.sha256) for p in seen.partitions} == wanted:
            if drift and not (same_spec and _production_or_waiting(name, aliases)):
                continue
            why = f"version {name} was trained on these {len(wanted)} partitions, unchanged since"
            if blocked:
                return name, why + (
                    " from this very spec, and the gate blocked it: the same data and spec would train it "
                    "again; change the spec or the data, or trigger with end_ds to train anyway"
                )
            return name, why + (f" ({_standing(name, aliases)}, from this spec)" if drift else "")
        if seen.end_ds > window.end_ds and (newest is None or seen.end_ds > newest[1]):
            newest = (name, seen.end_ds)
    if newest is not None:
        return newest[0], (
            f"version {newest[0]} was trained on a newer window (up to {newest[1]}) than the lake's newest "
            f"partition {window.end_ds}; trigger with end_ds to train an older window on purpose"
        )
    return None


def _production_or_waiting(version: str, aliases: dict) -> bool:
    """Whether ``version`` is production or a candidate never promoted (which retraining on the same data
    and spec could only repeat)."""
    moved = {ev.get("version") for ev in aliases.get("history") or [] if ev.get("alias") == "production"}
    return aliases.get("production") == version or version not in moved


def _standing(version: str, aliases: dict) -> str:
    return "production" if aliases.get("production") == version else "a candidate still waiting"


__all__ = [
    "Partition",
    "Window",
    "WindowError",
    "already_trained",
    "fix_window",
    "changed_message",
    "lineage_window",
    "read_window",
    "superseded",
    "window_interval",
    "window_unique",
]
