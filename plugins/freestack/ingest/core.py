"""Ingest one data interval: landing files -> validated lake partition + quarantine.

Plain Python over object storage; no Airflow import. Streams in batches, so memory stays bounded
whatever the file size. Deterministic: the same landing files give byte-identical outputs.

    landing/<pipeline>/<ds>/*                      (CSV, Parquet or JSON lines; images their rows name)
    landing/<pipeline>/<ds>/<label>/*              (format: imagefolder, a row per image)
    lake/<pipeline>/ds=<ds>/part.parquet                  good rows, typed; its footer holds the manifest
    lake/<pipeline>/ds=<ds>/_quarantine-<sha16>.parquet   rejected rows, raw values and a reason each
    lake/<pipeline>/ds=<ds>/_manifest.json                counts, hashes, sources, spec hash (a copy)

A partition is published with one commit point: the rename (or PUT) of ``part.parquet``. The
quarantine is committed first under a name made of its own hash, so it never replaces the one the
current part refers to; the part's Parquet footer records the manifest (sources, counts, spec hash,
the quarantine's name and sha256); ``_manifest.json`` is written after, as a copy with the part's own
hash. A failure at any step leaves the partition as it was before or as it is after, never a mix:
:func:`read_manifest` trusts ``_manifest.json`` only when it matches the part's footer.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from freestack.errors import LandingDataMissing, QuarantineLimitExceeded, SchemaDriftError
from freestack.ingest.images import check_files, check_images, image_rows, read_image_files
from freestack.ingest.keyset import KeySet, hash_keys
from freestack.ingest.lake import (
    FOOTER_KEY,
    MANIFEST,
    PART,
    has_images,
    lake_partitions,
    landing_dir,
    landing_files,
    partition_dir,
    read_manifest,
)
from freestack.ingest.spec import Column
from freestack.ingest.validate import (
    LINE,
    Validated,
    arrow_schema,
    malformed_rows,
    quarantine_schema,
    rejected_rows,
    validate_batch,
)
from freestack.ml.prefetch import prefetched
from freestack.storage import (
    AtomicWriter,
    abort_all,
    join,
    list_objects,
    remove_temporaries,
    to_path,
    write_json,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

QUARANTINE_PREFIX = "_quarantine"
_FORMAT_BY_SUFFIX = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_HOLD_BYTES = 64 << 20  # image rows are checked a few at a time and written in row groups of about this


# ---------------------------------------------------------------------------------------------------------
# readers: yield (batch of text columns, malformed rows)


class _HashingReader(io.RawIOBase):
    """Wraps a binary file; hashes every byte read (one pass gives both data and sha256)."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        self.sha256.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while chunk := self._f.read(1 << 20):
            self.sha256.update(chunk)
            self.size += len(chunk)


class _Throttled(io.RawIOBase):
    """Bounds how far pyarrow's CSV reader reads ahead of the batches taken from it.

    ``open_csv`` otherwise pulls dozens of blocks ahead, held as Python bytes, whatever the consumer
    does: memory would grow with its read-ahead, not with the work. Here its I/O thread waits while it
    is more than ``ahead`` blocks ahead.
    """

    def __init__(self, raw, block: int, ahead: int = 3):
        self._raw, self._block, self._ahead = raw, block, ahead
        self._cond = threading.Condition()
        self._read = 0
        self._taken = 0
        self._released = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        with self._cond:
            while not self._released and self._read >= (self._taken + self._ahead) * self._block:
                self._cond.wait()
            if self._released:
                return 0
        n = self._raw.readinto(b)
        with self._cond:
            self._read += n
        return n

    def taken(self) -> None:
        with self._cond:
            self._taken += 1
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._released = True
            self._cond.notify_all()


class _BackgroundWriter:
    """A ParquetWriter whose encoding and compression run in one thread, in submission order
    (so the bytes are the same as writing inline), with at most two tables in flight."""

    def __init__(self, sink, schema: pa.Schema, **kwargs: Any):
        self._writer = pq.ParquetWriter(sink, schema, **kwargs)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="freestack-parquet")
        self._pending: list = []

    def write_table(self, table: pa.Table) -> None:
        while len(self._pending) >= 2:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._writer.write_table, table))

    def close(self, metadata: dict[bytes, bytes] | None = None) -> None:
        """Finish the file; ``metadata`` goes into the Parquet footer's key-value metadata."""
        try:
            for f in self._pending:
                f.result()
            if metadata:
                self._writer.add_key_value_metadata(metadata)
        finally:
            self._pending = []
            self._pool.shutdown(wait=True)
            self._writer.close()


def _read_csv(
    path: ObjectStoragePath, stream, spec: PipelineSpec, declared: list[Column], sink: list
) -> Iterator[pa.RecordBatch]:
    opts = spec.source.csv
    policy = spec.source.policy
    if opts.header:
        with path.open("rb") as f:
            names = opts.header_names(f)
        if not names:
            return
    else:
        names = [c.name for c in declared]
    _check_drift(path, names, declared, spec)
    # one thread: the reader then numbers its rows (row.number, a malformed row's line), and the
    # rows of a batch are numbered in order around them (its LINE column); tasks share the workers' cores
    read_opts, parse_opts, convert_opts = opts.arrow_options(
        names, sink, block_size=policy.block_size_mb << 20, use_threads=False
    )
    throttled = _Throttled(stream, policy.block_size_mb << 20)
    try:
        try:
            reader = pacsv.open_csv(
                throttled, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts
            )
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return
            raise
        first = 2 if opts.header else 1  # the first row's number in the file (the header is line 1)
        for batch in reader:
            numbered = _numbered(batch, first, {r[0] for r in sink if r[0] is not None})
            if numbered.num_rows:
                first = numbered.column(LINE)[-1].as_py() + 1
            yield numbered
            throttled.taken()
    finally:
        throttled.release()


def _numbered(batch: pa.RecordBatch, first: int, malformed: set[int]) -> pa.RecordBatch:
    """The batch with its rows' numbers in the file (:data:`LINE`): from ``first`` on, in order, past the
    numbers of the malformed rows the reader left out."""
    skipped = np.array(sorted(n for n in malformed if n >= first), dtype=np.int64)
    numbers = np.arange(first, first + batch.num_rows + len(skipped), dtype=np.int64)
    kept = numbers[~np.isin(numbers, skipped)][: batch.num_rows]
    return batch.append_column(LINE, pa.array(kept, pa.int64()))


def _read_parquet(
    path: ObjectStoragePath, stream, spec: PipelineSpec, declared: list[Column], sink: list
) -> Iterator[pa.RecordBatch]:
    rows = image_rows(spec.source.images) if has_images(spec) else 65_536  # inline images: a few at a time
    with path.open("rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        _check_drift(path, names, declared, spec)
        wanted = [c.name for c in declared if c.name in names]
        first = 1  # a Parquet file's "line" is its row's number
        for batch in pf.iter_batches(batch_size=rows, columns=wanted):
            cols = {LINE: pa.array(np.arange(first, first + batch.num_rows, dtype=np.int64))}
            first += batch.num_rows
            for name in batch.schema.names:
                col = batch.column(name)
                if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
                    cols[name] = pa.compute.cast(col, pa.string())
                elif pa.types.is_large_binary(col.type) or pa.types.is_fixed_size_binary(col.type):
                    cols[name] = pa.compute.cast(col, pa.binary())  # bytes (inline images) stay bytes
                elif not (pa.types.is_string(col.type) or pa.types.is_binary(col.type)):
                    cols[name] = pa.compute.cast(col, pa.string())
                else:
                    cols[name] = col
            yield pa.RecordBatch.from_pydict(cols)


def _json_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _read_jsonl(
    path: ObjectStoragePath, stream, spec: PipelineSpec, declared: list[Column], sink: list
) -> Iterator[pa.RecordBatch]:
    names = [c.name for c in declared]
    batch_rows = 50_000
    seen_keys: set[str] = set()
    checked = False
    buf: dict[str, list] = {n: [] for n in [*names, LINE]}
    with io.BufferedReader(stream, buffer_size=1 << 20) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                problem = None if isinstance(obj, dict) else "a JSON object is expected"
            except UnicodeDecodeError:
                problem = "not valid UTF-8 text"
            except json.JSONDecodeError as exc:
                problem = f"invalid JSON ({exc.msg})"
            if problem:
                sink.append((lineno, f"malformed row: {problem}", line.decode("utf-8", "replace")))
                continue
            if not checked:
                seen_keys.update(obj)
            for n in names:
                buf[n].append(_json_text(obj.get(n)))
            buf[LINE].append(lineno)
            if len(buf[LINE]) >= batch_rows:
                if not checked:
                    _check_drift(path, sorted(seen_keys), declared, spec)
                    checked = True
                yield _json_batch(buf, names)
                buf = {n: [] for n in [*names, LINE]}
    if not checked and seen_keys:
        _check_drift(path, sorted(seen_keys), declared, spec)
    if buf[LINE]:
        yield _json_batch(buf, names)


def _json_batch(buf: dict[str, list], names: list[str]) -> pa.RecordBatch:
    """The buffered rows as text columns, with each row's line in the file (:data:`LINE`)."""
    cols = {n: pa.array(buf[n], pa.string()) for n in names}
    return pa.RecordBatch.from_pydict({**cols, LINE: pa.array(buf[LINE], pa.int64())})


_READERS = {"csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}


def _check_drift(
    path: ObjectStoragePath, names: list[str], declared: list[Column], spec: PipelineSpec
) -> None:
    policy = spec.source.policy
    declared_names = [c.name for c in declared]
    missing = [n for n in declared_names if n not in names]
    extra = [n for n in names if n not in declared_names]
    if missing and policy.missing_columns == "fail":
        raise SchemaDriftError(
            f"{path}: missing column(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} declared in "
            f"the schema of pipeline {spec.name!r}. Fix the file, or set source.policy.missing_columns: null "
            "to load them as nulls."
        )
    if extra:
        if policy.extra_columns == "fail":
            raise SchemaDriftError(
                f"{path}: column(s) {extra[:10]} are not in the schema of pipeline {spec.name!r}. Add them "
                "to source.schema.columns, or set source.policy.extra_columns: drop."
            )
        log.warning("%s: dropping column(s) not in the schema: %s", path, extra)
    if missing:
        log.warning("%s: missing column(s) loaded as null: %s", path, missing)


# ---------------------------------------------------------------------------------------------------------
# ingest


@dataclass
class IngestResult:
    pipeline: str
    ds: str
    partition: str
    rows_in: int = 0
    rows_good: int = 0
    rows_quarantined: int = 0
    sources: list[dict[str, Any]] = field(default_factory=list)
    part: dict[str, Any] | None = None
    quarantine: dict[str, Any] | None = None
    spec_hash: str = ""
    seconds: float = 0.0
    footer: bytes = b""  # the manifest as recorded in the part's Parquet footer

    def footer_record(self, quarantine: tuple[str, int] | None) -> bytes:
        """The deterministic part of the manifest (no timings, no URIs), for the part's footer: the
        same landing files give the same bytes. ``quarantine`` is the rejected rows' (sha256, size)."""
        q = (
            None
            if quarantine is None
            else {"name": quarantine_name(quarantine[0]), "sha256": quarantine[0], "size": quarantine[1]}
        )
        kept = ("pipeline", "ds", "rows_in", "rows_good", "rows_quarantined", "sources", "spec_hash")
        record = {**{k: getattr(self, k) for k in kept}, "quarantine": q}
        self.footer = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        return self.footer

    @property
    def quarantine_fraction(self) -> float:
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "ds": self.ds,
            "partition": self.partition,
            "rows_in": self.rows_in,
            "rows_good": self.rows_good,
            "rows_quarantined": self.rows_quarantined,
            "quarantine_fraction": round(self.quarantine_fraction, 6),
            "sources": self.sources,
            "part": self.part,
            "quarantine": self.quarantine,
            "spec_hash": self.spec_hash,
            "footer_sha256": hashlib.sha256(self.footer).hexdigest(),
        }


def ingest_partition(
    spec: PipelineSpec, ds: str, *, files: list[ObjectStoragePath] | None = None
) -> IngestResult:
    """Validate the landing files of interval ``ds`` and publish the lake partition.

    Raises LandingDataMissing (no files), SchemaDriftError (columns beyond policy) or
    QuarantineLimitExceeded (too many bad rows; the quarantine is still written so it can be read,
    and the previous partition, if any, is left as it was).
    """
    started = time.monotonic()
    files = landing_files(spec, ds) if files is None else files
    if not files:
        raise LandingDataMissing(
            f"no landing data for pipeline {spec.name!r} interval {ds}: {landing_dir(spec, ds)} is missing or empty. "
            "Drop the files there and clear the task, or set source.policy.on_missing to skip or wait."
        )
    out_dir = partition_dir(spec, ds)
    result = IngestResult(pipeline=spec.name, ds=ds, partition=str(out_dir), spec_hash=spec.spec_hash())
    part_w = AtomicWriter(join(out_dir, PART))
    quar_w = None
    try:
        quar_w = AtomicWriter(join(out_dir, f"{QUARANTINE_PREFIX}.staging-{uuid.uuid4().hex[:12]}.parquet"))
        _write_partition(spec, files, part_w, quar_w, result)
        _publish(spec, ds, out_dir, part_w, quar_w, result)
    except BaseException:
        # both temporaries go, whatever aborting the first raises (reverse order of creation, so the
        # first can remove the folders it made); a committed writer's abort does nothing
        abort_all(quar_w, part_w)
        raise
    result.seconds = time.monotonic() - started
    write_json(join(out_dir, MANIFEST), result.as_dict())
    _remove_other_quarantines(out_dir, keep=(result.quarantine or {}).get("uri"))
    return result


class _Sink:
    """Where validated rows go: good rows to the part, rejected ones to the quarantine, both counted in
    ``result``. With ``hold_bytes``, good rows are held until about that many bytes and written as one
    row group (image rows are checked a few at a time; one row group each would be many small ones)."""

    def __init__(
        self, part: _BackgroundWriter, quar: _BackgroundWriter, result: IngestResult, hold_bytes: int = 0
    ):
        self.part, self.quar, self.result, self.hold_bytes = part, quar, result, hold_bytes
        self._held: list[pa.Table] = []
        self._size = 0

    def take(self, v: Validated) -> None:
        self.reject(v.rejected)
        self.result.rows_good += v.good.num_rows
        if not v.good.num_rows:
            return
        if not self.hold_bytes:
            self.part.write_table(v.good)
            return
        self._held.append(v.good)
        self._size += v.good.nbytes
        if self._size >= self.hold_bytes:
            self.flush()

    def reject(self, rows: pa.Table) -> None:
        if rows.num_rows:
            self.quar.write_table(rows)
            self.result.rows_quarantined += rows.num_rows

    def flush(self) -> None:
        if self._held:
            self.part.write_table(pa.concat_tables(self._held))
            self._held, self._size = [], 0


def _write_partition(
    spec: PipelineSpec,
    files: list[ObjectStoragePath],
    part_w: AtomicWriter,
    quar_w: AtomicWriter,
    result: IngestResult,
) -> None:
    """Stream every file through validation into the partition's and the quarantine's temporaries; on
    any error the Parquet writers are closed and the error raised (the caller throws both away)."""
    declared = spec.source.schema_.fields
    writers: list[_BackgroundWriter] = []
    try:
        part_pq = _BackgroundWriter(part_w, arrow_schema(declared), compression="zstd")
        writers.append(part_pq)
        quar_pq = _BackgroundWriter(quar_w, quarantine_schema(declared), compression="zstd")
        writers.append(quar_pq)
        sink = _Sink(part_pq, quar_pq, result, hold_bytes=_HOLD_BYTES if has_images(spec) else 0)
        keys = KeySet() if (spec.source.schema_.key and spec.source.policy.unique_key != "off") else None
        landing = landing_dir(spec, result.ds)
        if spec.source.format == "imagefolder":
            for label, name, group in _label_groups(files, landing):
                result.sources.append(_ingest_images(spec, label, name, group, landing, sink, keys))
        else:
            for path in files:
                result.sources.append(_ingest_file(spec, path, landing, sink, keys))
        _require_rows(spec, result)
        sink.flush()
        quar_pq.close()  # first: the part's footer records the quarantine's hash
        held = quar_w.digest() if result.rows_quarantined else None
        part_pq.close(metadata={FOOTER_KEY: result.footer_record(held)})
    except BaseException:
        for w in writers:  # stop their threads; the temporaries are thrown away by the caller
            with contextlib.suppress(Exception):
                w.close()
        raise


def _require_rows(spec: PipelineSpec, result: IngestResult) -> None:
    """An interval whose files hold no rows (every file empty or a header alone; in an image folder, every
    image 0 bytes, which a label folder's record shows as rows with size 0) is missing data, not an
    empty partition: LandingDataMissing, so ``source.policy.on_missing`` decides."""
    if any(s["rows"] and s.get("size") != 0 and not s.get("empty") for s in result.sources):
        return
    what = "; ".join(
        f"{s['name']}: {'0 bytes' if s.get('empty') or s.get('size') == 0 else 'no rows'}"
        for s in result.sources
    )
    raise LandingDataMissing(
        f"no landing data for pipeline {spec.name!r} interval {result.ds}: its files hold no rows ({what}). "
        "Write the rows into the files (or remove them) and clear the task, or set source.policy.on_missing to skip."
    )


def _empty_file(spec: PipelineSpec, path: ObjectStoragePath, sink: _Sink) -> dict[str, Any] | None:
    """A 0-byte landing file is quarantined as one entry (a header, or a row, was expected), never read
    as an empty table; None for a file with bytes."""
    if path.stat().st_size:
        return None
    expected = (
        "a header line" if spec.source.format == "csv" and spec.source.csv.header else "at least one row"
    )
    reason = f"empty file: {path.name} is 0 bytes, {expected} was expected; write its rows or remove it"
    sink.reject(malformed_rows([(None, reason, "")], spec.source.schema_.fields, path.name))
    sink.result.rows_in += 1
    return {
        "name": path.name,
        "format": spec.source.format,
        "rows": 0,
        "empty": True,
        "size": 0,
        "sha256": hashlib.sha256(b"").hexdigest(),
    }


def _duplicates(batch: pa.RecordBatch, key: str | None, keys: KeySet | None) -> pa.Array | None:
    """The rows whose key an earlier row of the interval has (None: keys are not checked)."""
    if keys is None or key not in batch.schema.names:
        return None
    kcol = batch.column(key)
    present = pa.compute.is_valid(kcol)
    mask = keys.add_batch(hash_keys(pa.compute.fill_null(kcol, b"" if pa.types.is_binary(kcol.type) else "")))
    return pa.compute.and_(pa.array(mask), present)


def _pieces(batch: pa.RecordBatch, dup: pa.Array | None, rows: int | None) -> Iterator[tuple]:
    """The batch (and its duplicate mask) whole, or in slices of ``rows`` (image columns: the images of a
    slice are held in memory at once)."""
    if rows is None or batch.num_rows <= rows:
        yield batch, dup
        return
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows), None if dup is None else dup.slice(start, rows)


def _ingest_file(
    spec: PipelineSpec, path: ObjectStoragePath, landing: ObjectStoragePath, sink: _Sink, keys: KeySet | None
) -> dict[str, Any]:
    """One landing file, batch by batch: good rows to the partition, rejected ones (and malformed lines)
    to the quarantine, each with its reason. Returns the file's source record (rows, size, sha256)."""
    if (empty := _empty_file(spec, path, sink)) is not None:
        return empty
    schema = spec.source.schema_
    declared = schema.fields
    fmt = _FORMAT_BY_SUFFIX.get(path.suffix.lower(), spec.source.format)
    source = {"name": path.name, "format": fmt, "rows": 0}
    images = _image_checker(spec, landing, inline=fmt == "parquet")
    rows = image_rows(spec.source.images) if images else None
    malformed: list = []
    raw = path.open("rb")
    hashed = _HashingReader(raw)
    # CSV and JSON lines stream through ``hashed``: one read gives rows and sha256.
    # Parquet needs random access, so its bytes are hashed by the drain() below.
    for batch in prefetched(
        _READERS[fmt](path, hashed, spec, declared, malformed), name="freestack-ingest-read"
    ):
        for piece, dup in _pieces(batch, _duplicates(batch, schema.key, keys), rows):
            sink.take(
                validate_batch(
                    piece, declared, source=path.name, duplicate=dup, key=schema.key, images=images
                )
            )
        sink.result.rows_in += batch.num_rows
        source["rows"] += batch.num_rows
    if malformed:
        malformed.sort(key=lambda r: (r[0] is None, r[0] or 0, r[2]))
        sink.reject(malformed_rows(malformed, declared, path.name))
        sink.result.rows_in += len(malformed)
        source["rows"] += len(malformed)
    hashed.drain()
    raw.close()
    source.update(size=hashed.size, sha256=hashed.sha256.hexdigest())
    log.info("%s: %d rows read (%d malformed)", path, source["rows"], len(malformed))
    return source


def _image_checker(spec: PipelineSpec, landing: ObjectStoragePath, *, inline: bool):
    """Reads an image column's paths under ``landing`` (with ``inline``, a Parquet file's binary values
    are the images) and checks each image; None without image columns."""
    if not has_images(spec):
        return None
    return lambda column, values: check_images(column, values, landing, spec.source.images, inline=inline)


def _label_groups(files: list[ObjectStoragePath], landing: ObjectStoragePath) -> list[tuple]:
    """An image folder's files as (label, source name, files): a label folder's together; a file at the
    top of the interval folder alone, with no label."""
    top = landing.path.rstrip("/")
    groups: dict[tuple[str | None, str], list[ObjectStoragePath]] = {}
    for p in files:
        label = None if p.parent.path.rstrip("/") == top else p.parent.name
        groups.setdefault((label, p.name if label is None else label), []).append(p)
    return [(label, name, group) for (label, name), group in groups.items()]


def _ingest_images(
    spec: PipelineSpec,
    label: str | None,
    name: str,
    files: list[ObjectStoragePath],
    landing: ObjectStoragePath,
    sink: _Sink,
    keys: KeySet | None,
) -> dict[str, Any]:
    """One label folder of an image folder, a few images at a time: a row each (key ``label/file``,
    target the label, image the file's bytes, checked). A file with no label (at the top of the interval
    folder) is quarantined. The source record's sha256 is over the sorted ``path<TAB>sha256`` lines."""
    opts = spec.source.images
    lines: list[str] = []
    size = 0
    before = sink.result.rows_quarantined
    for start in range(0, len(files), image_rows(opts)):
        piece = files[start : start + image_rows(opts)]
        rels = [p.name if label is None else f"{label}/{p.name}" for p in piece]
        read = read_image_files(piece, opts.max_bytes)
        if label is None:
            _unlabelled(spec, rels, sink, name)
        else:
            _labelled(spec, label, rels, read, landing, sink, keys, name)
        sink.result.rows_in += len(rels)
        lines += [f"{rel}\t{f.sha256 or '-'}\n" for rel, f in zip(rels, read, strict=True)]
        size += sum(f.size for f in read)
    log.info("%s: %d images (%d quarantined)", name, len(files), sink.result.rows_quarantined - before)
    digest = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    return {"name": name, "format": "imagefolder", "rows": len(files), "size": size, "sha256": digest}


def _labelled(
    spec: PipelineSpec,
    label: str,
    rels: list[str],
    read: list,
    landing: ObjectStoragePath,
    sink: _Sink,
    keys: KeySet | None,
    source: str,
) -> None:
    """Rows of a label folder's images (already read): key, target and image, validated like any row."""
    schema = spec.source.schema_
    image = next(c.name for c in schema.fields if c.type == "image")
    checked = check_files(image, rels, read, spec.source.images, landing)
    batch = pa.RecordBatch.from_pydict(
        {
            schema.key: pa.array(rels, pa.string()),
            schema.target: pa.array([label] * len(rels), pa.string()),
            image: pa.array(rels, pa.string()),
        }
    )
    dup = _duplicates(batch, schema.key, keys)
    sink.take(
        validate_batch(
            batch,
            schema.fields,
            source=source,
            duplicate=dup,
            key=schema.key,
            images=lambda column, values: checked,
        )
    )


def _unlabelled(spec: PipelineSpec, rels: list[str], sink: _Sink, source: str) -> None:
    """Images at the top of the interval folder: no label, so each row is quarantined saying where to move it."""
    schema = spec.source.schema_
    image = next(c.name for c in schema.fields if c.type == "image")
    why = (
        f"{image}: {{}} is not in a label folder; an image folder holds one sub-folder per label "
        "(label/file.png): move the file into its label's folder"
    )
    texts = {schema.key: rels, image: rels}
    sink.reject(rejected_rows(texts, [why.format(r) for r in rels], schema.fields, source))


def _publish(
    spec: PipelineSpec,
    ds: str,
    out_dir: ObjectStoragePath,
    part_w: AtomicWriter,
    quar_w: AtomicWriter,
    result: IngestResult,
) -> None:
    """Commit the quarantine (if any rows were rejected) under its hash's name, where it replaces
    nothing, then the part: the partition's one commit point. Over the quarantine limit the part is
    not committed and the partition stays as it was (the new quarantine is left for reading)."""
    limit = spec.source.policy.max_quarantine_fraction
    if result.rows_quarantined:
        result.quarantine = quar_w.commit_as(join(out_dir, quarantine_name(quar_w.digest()[0]))).as_dict()
    else:
        quar_w.abort()
    if result.quarantine_fraction > limit:
        part_w.abort()
        raise QuarantineLimitExceeded(
            f"pipeline {spec.name!r} interval {ds}: {result.rows_quarantined} of {result.rows_in} rows "
            f"({result.quarantine_fraction:.1%}) were rejected, over the limit of {limit:.1%} "
            f"(source.policy.max_quarantine_fraction). The partition was not published; read the "
            f"reasons in {result.quarantine['uri']}, fix the landing files and clear the task."
        )
    result.part = part_w.commit().as_dict()


def quarantine_name(sha256: str) -> str:
    return f"{QUARANTINE_PREFIX}-{sha256[:16]}.parquet"


def _remove_other_quarantines(out_dir: ObjectStoragePath, keep: str | None) -> None:
    """After a publish: quarantines the part does not refer to (the previous one, a rejected attempt's,
    a staging copy a crash left) are removed, and so are the temporaries of attempts that were killed
    (a partition has one writer at a time, its ingest task, and this one's are committed)."""
    for p in list_objects(out_dir):
        if p.name.startswith(QUARANTINE_PREFIX) and str(p) != keep:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    remove_temporaries(out_dir)


def lake_summary(spec: PipelineSpec) -> list[dict[str, Any]]:
    """Per published partition, oldest first: ds, good rows, quarantined rows, the part's sha256 and the
    quarantine reasons with their counts (most frequent first)."""
    import pyarrow.compute as pc

    def one(ds: str) -> dict[str, Any]:
        m = read_manifest(spec, ds) or {}
        reasons: dict[str, int] = {}
        if m.get("quarantine"):
            with to_path(m["quarantine"]["uri"]).open("rb") as f:
                q = pq.read_table(f, columns=["_reason"])
            counts = pc.value_counts(q.column("_reason")).to_pylist()
            reasons = {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}
        return {
            "ds": ds,
            "rows": m.get("rows_good"),
            "quarantined": m.get("rows_quarantined", 0),
            "sha256": (m.get("part") or {}).get("sha256"),
            "reasons": reasons,
        }

    days = lake_partitions(spec)
    if len(days) < 4:
        return [one(ds) for ds in days]
    with ThreadPoolExecutor(min(16, len(days)), thread_name_prefix="lake-summary") as pool:
        return list(pool.map(one, days))
