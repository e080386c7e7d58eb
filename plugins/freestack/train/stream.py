"""A window too large for memory, streamed: spooled to local disk split by split, read back in row groups.

``train.data.mode`` picks how a run reads its fixed window (:func:`choose_mode`): ``memory`` loads it
into one DataFrame (the fast path), ``stream`` spools it (:func:`spool_window`), ``auto`` streams when
the window's estimated in-memory size (3x its uncompressed Parquet size, from the partitions' footers)
is over ``train.data.memory_limit_mb`` (default: a quarter of the machine's memory, or of the
container's limit).

Spooling reads each partition once: its bytes are copied to a local folder in 8 MiB pieces while
hashed (the sha256 the run fixed must match, as in :func:`freestack.train.window.read_window`), then
read in record batches; each row goes to the ``train``, ``val`` or ``test`` file by the hash of its key
(:func:`freestack.ml.prep.split_of_keys`), written in row groups of at most ``chunk_rows`` rows and
64 MiB. The trainer reads those row groups in a seeded order each epoch (:class:`SpoolRows`), so memory
holds a few row groups and the shuffle buffer however many days the window has; disk holds one copy of
the columns the model reads. The folder is removed when the run ends.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from freestack.ml.prep import split_of_keys
from freestack.settings import settings
from freestack.storage import to_path
from freestack.train.window import WindowError, changed_message, superseded, window_unique

if TYPE_CHECKING:
    import pandas as pd

    from freestack.spec import PipelineSpec
    from freestack.train.window import Partition, Window

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PIECE = 8 << 20
GROUP_BYTES = 64 << 20
#: the in-memory path holds the window about three times: the frame, its split frames, the arrays
MEMORY_FACTOR = 3


@dataclass
class FrameRows:
    """A split held in memory, as one frame."""

    frame: pd.DataFrame

    @property
    def rows(self) -> int:
        return len(self.frame)

    def chunks(self, order_seed: int | None = None) -> Iterator[pd.DataFrame]:
        yield self.frame

    def values(self, column: str) -> pd.Series:
        return self.frame[column]

    def where_in(self, column: str, values: list[Any]) -> FrameRows:
        return FrameRows(self.frame[self.frame[column].isin(values)])


@dataclass
class SpoolRows:
    """A split spooled to a local Parquet file, read a row group at a time (only rows whose ``column``
    is in ``values_in``, when given)."""

    path: str
    column: str | None = None
    values_in: list[Any] | None = None
    _rows: int | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        if self._rows is None:
            import pyarrow.parquet as pq

            self._rows = (
                len(self.values(self.column)) if self.column else pq.read_metadata(self.path).num_rows
            )
        return self._rows

    def values(self, column: str) -> pd.Series:
        """One column of the split's rows (only that column, and the filter's, is read)."""
        import pyarrow.parquet as pq

        wanted = list(dict.fromkeys([column, *([self.column] if self.column else [])]))
        frame = pq.read_table(self.path, columns=wanted).to_pandas()
        if self.column is not None:
            frame = frame[frame[self.column].isin(self.values_in or [])]
        return frame[column]

    def chunks(self, order_seed: int | None = None) -> Iterator[pd.DataFrame]:
        import numpy as np
        import pyarrow.parquet as pq

        with pq.ParquetFile(self.path) as f:
            order = np.arange(f.num_row_groups)
            if order_seed is not None:
                order = np.random.default_rng(order_seed).permutation(order)
            for i in order.tolist():
                frame = f.read_row_group(i).to_pandas()
                if self.column is not None:
                    frame = frame[frame[self.column].isin(self.values_in or [])]
                if len(frame):
                    yield frame

    def where_in(self, column: str, values: list[Any]) -> SpoolRows:
        return SpoolRows(self.path, column, list(values))


@dataclass
class SpooledWindow:
    """A fixed window spooled to ``folder``: one Parquet file per split, the partitions as read."""

    folder: tempfile.TemporaryDirectory
    splits: dict[str, SpoolRows]
    partitions: list[dict[str, Any]]
    fractions: tuple[float, float]

    def close(self) -> None:
        self.folder.cleanup()


@dataclass
class WindowData:
    """A run's window as loaded: in memory (``frame``) or spooled (``spool``), and why."""

    partitions: list[dict[str, Any]]
    mode: str
    reason: str
    frame: pd.DataFrame | None = None
    spool: SpooledWindow | None = None

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason}


# -- choosing ------------------------------------------------------------------------------------------


def memory_limit_bytes(spec: PipelineSpec) -> int:
    """``train.data.memory_limit_mb``, else a quarter of the machine's memory (the container's limit
    when it is lower)."""
    import psutil

    if spec.train.data.memory_limit_mb is not None:
        return spec.train.data.memory_limit_mb << 20
    return min(psutil.virtual_memory().total, _cgroup_limit() or 1 << 62) // 4


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def uncompressed_bytes(partitions: list[Partition]) -> int:
    """The window's size decoded, from each partition's Parquet footer (a small read per partition)."""
    import pyarrow.parquet as pq

    total = 0
    for p in partitions:
        with to_path(p.uri).open("rb") as f:
            meta = pq.ParquetFile(f).metadata
            total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total


def choose_mode(spec: PipelineSpec, partitions: list[Partition]) -> tuple[str, str]:
    """("memory" | "stream", why) for reading ``partitions`` under the spec's ``train.data``."""
    mode = spec.train.data.mode
    if mode != "auto":
        return mode, f"train.data.mode is {mode}"
    if spec.model.generative:
        return (
            "memory",
            "a text-generation window is read into memory (its conversations are tokenized whole)",
        )
    try:
        need = MEMORY_FACTOR * uncompressed_bytes(partitions)
    except FileNotFoundError:
        return "memory", "a partition is missing (reading it names it)"
    limit = memory_limit_bytes(spec)
    size = f"{need / 2**20:,.0f} MiB in memory ({MEMORY_FACTOR}x its uncompressed size)"
    if need > limit:
        return "stream", f"the window needs about {size}, over the {limit / 2**20:,.0f} MiB limit"
    return "memory", f"the window needs about {size}, within the {limit / 2**20:,.0f} MiB limit"


# -- spooling ------------------------------------------------------------------------------------------


def spool_window(
    spec: PipelineSpec, window: Window, days: int, columns: list[str], splits: tuple[str, ...] = SPLITS
) -> SpooledWindow:
    """The window's ``columns`` split into local Parquet files (``splits`` of them), each partition's
    bytes checked against the fixed sha256 as they are copied (WindowError when one changed)."""
    t = spec.train
    folder = tempfile.TemporaryDirectory(prefix=f"freestack-{spec.name}-window-", dir=settings().spool_dir)
    try:
        writer = _SplitWriter(folder.name, splits, t.data.chunk_rows)
        partitions = window.of_days(days)
        keys = [_keys(spec, p) for p in partitions] if window_unique(spec) else None
        parts = []
        for p, drop in zip(partitions, superseded(spec, keys, len(partitions)), strict=True):
            parts.append(_spool_partition(spec, p, folder.name, columns, writer, drop))
        writer.close()
        if not parts:
            raise WindowError(f"the fixed window up to {window.end_ds} holds no partitions of {spec.name!r}")
    except OSError as exc:
        folder.cleanup()
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise WindowError(
            f"spooling the window of {spec.name!r} to {folder.name} failed ({exc}); free space there "
            "or set FREESTACK_SPOOL_DIR to a local folder with room for the window"
        ) from None
    except BaseException:
        folder.cleanup()
        raise
    rows = {s: SpoolRows(writer.path(s), _rows=writer.rows[s]) for s in splits}
    log.info(
        "window spooled to %s: %s rows (%s)",
        folder.name,
        f"{sum(writer.rows.values()):,}",
        ", ".join(f"{s} {n:,}" for s, n in writer.rows.items()),
    )
    return SpooledWindow(folder, rows, parts, (t.val_fraction, t.test_fraction))


def _keys(spec: PipelineSpec, p: Partition):
    """A partition's key column, read alone (the copy that follows checks the bytes' sha256)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with to_path(p.uri).open("rb") as f:
            return pq.read_table(f, columns=[spec.source.schema_.key]).column(0)
    except FileNotFoundError:
        raise WindowError(changed_message(spec, p, "was removed")) from None
    except pa.ArrowInvalid as exc:  # published partitions read as Parquet: this one's bytes changed
        raise WindowError(
            changed_message(spec, p, f"was rewritten (it no longer reads as Parquet: {exc})")
        ) from None


def _spool_partition(
    spec: PipelineSpec, p: Partition, folder: str, columns: list[str], writer: _SplitWriter, drop=None
) -> dict[str, Any]:
    """One partition copied (hashed on the way), split row by row into ``writer`` (but the rows ``drop``
    marks: a later partition has their key), its copy removed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = os.path.join(folder, "partition.parquet")
    sha, size = _copy_hashed(spec, p, copy)
    if sha != p.sha256:
        raise WindowError(
            changed_message(spec, p, f"was rewritten (sha256 {p.sha256[:12]}… then, {sha[:12]}… now)")
        )
    t, key, rows, start = spec.train, spec.source.schema_.key, 0, 0
    with pq.ParquetFile(copy) as f:
        missing = [c for c in columns if c not in f.schema_arrow.names]
        if missing:
            raise WindowError(
                f"lake partition ds={p.ds} of {spec.name!r} has no column(s) {missing}, which the model "
                "reads: it was ingested under an older spec; re-ingest that day, or leave it out of "
                "the window (window_days)"
            )
        for batch in f.iter_batches(batch_size=4096, columns=columns):
            start += batch.num_rows
            if drop is not None:
                batch = batch.filter(pa.array(~drop[start - batch.num_rows : start]))
            frame_keys = batch.column(key).to_pandas()
            split = split_of_keys(frame_keys, t.val_fraction, t.test_fraction, salt=spec.model_name)
            writer.add(batch, split, p.ds)
            rows += batch.num_rows
    os.remove(copy)
    dropped = int(drop.sum()) if drop is not None else 0
    return {
        "ds": p.ds,
        "uri": p.uri,
        "sha256": sha,
        "bytes": size,
        "rows": rows,
        "superseded": dropped,
        "events": list(p.events),
    }


def _copy_hashed(spec: PipelineSpec, p: Partition, dest: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    try:
        with to_path(p.uri).open("rb") as src, open(dest, "wb") as out:
            while piece := src.read(PIECE):
                digest.update(piece)
                out.write(piece)
                size += len(piece)
    except FileNotFoundError:
        raise WindowError(changed_message(spec, p, "was removed")) from None
    return digest.hexdigest(), size


class _SplitWriter:
    """Rows routed to one Parquet file per split, buffered into row groups of at most ``chunk_rows``
    rows and ``GROUP_BYTES`` bytes."""

    def __init__(self, folder: str, splits: tuple[str, ...], chunk_rows: int):
        self.folder, self.splits, self.chunk_rows = folder, splits, chunk_rows
        self.rows = {s: 0 for s in splits}
        self._held: dict[str, list] = {s: [] for s in splits}
        self._writers: dict[str, Any] = {}
        self._schema = None

    def path(self, split: str) -> str:
        return os.path.join(self.folder, f"{split}.parquet")

    def add(self, batch, split, ds: str) -> None:
        import numpy as np
        import pyarrow as pa

        if self._schema is None:
            self._schema = batch.schema
        elif batch.schema != self._schema:
            try:
                batch = pa.Table.from_batches([batch]).cast(self._schema).combine_chunks().to_batches()[0]
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, IndexError) as exc:
                raise WindowError(
                    f"lake partition ds={ds} has columns {batch.schema} unlike the earlier "
                    f"partitions' {self._schema} ({exc}); re-ingest it with the current spec"
                ) from None
        for s in self.splits:
            rows = batch.filter(pa.array(np.asarray(split == s)))
            if rows.num_rows:
                self._held[s].append(rows)
                self.rows[s] += rows.num_rows
                held = self._held[s]
                if (
                    sum(b.num_rows for b in held) >= self.chunk_rows
                    or sum(b.nbytes for b in held) >= GROUP_BYTES
                ):
                    self._flush(s)

    def _flush(self, split: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._held[split]:
            return
        if split not in self._writers:
            self._writers[split] = pq.ParquetWriter(self.path(split), self._schema, compression="lz4")
        table = pa.Table.from_batches(self._held[split], schema=self._schema)
        self._writers[split].write_table(table, row_group_size=table.num_rows)
        self._held[split] = []

    def close(self) -> None:
        import pyarrow.parquet as pq

        for s in self.splits:
            self._flush(s)
            if s in self._writers:
                self._writers[s].close()
            else:  # an empty split is an empty file, so reading it gives no rows
                import pyarrow as pa

                pq.write_table(pa.Table.from_batches([], schema=self._schema or pa.schema([])), self.path(s))


__all__ = [
    "FrameRows",
    "SpoolRows",
    "SpooledWindow",
    "WindowData",
    "choose_mode",
    "memory_limit_bytes",
    "spool_window",
    "uncompressed_bytes",
]
