"""A day's rows as a writer goes through them: read from one input (:class:`Piece`), counted
(:class:`Counts`: what the manifest and the error-fraction check read), and those not scored
(:class:`Quarantine`: ingest's quarantine layout, each row with its reason)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

    from freestack.ingest.spec import Column
    from freestack.score.model import ScoringModel
    from freestack.spec import PipelineSpec


@dataclass
class Piece:
    """Rows read from one input: ``batch`` the rows to score (typed as the lake types them) and their
    ``keys``; ``rejected`` the rows the schema refused (in the quarantine's layout); ``texts`` the
    batch's rows as text as they came (a folder's), for the rows the version's preprocessing refuses."""

    batch: pa.RecordBatch | None
    keys: pa.Array | None
    source: str | pa.Array
    rows_in: int
    rejected: pa.Table | None = None
    texts: pa.Table | None = None

    def refused(self, bad: dict[int, str]) -> pa.Table:
        """The rows of ``batch`` at the positions of ``bad``, with their reasons, as quarantined rows."""
        import pyarrow as pa

        at = sorted(bad)
        rows, n = pa.array(at, pa.int64()), len(at)
        shown = self.texts.take(rows) if self.texts is not None else _as_text(self.batch.take(rows))
        one = isinstance(self.source, str)
        meta = {
            "_source": pa.array([self.source] * n, pa.string()) if one else self.source.take(rows),
            "_line": pa.nulls(n, pa.int64()),
            "_reason": pa.array([bad[i] for i in at], pa.string()),
            "_raw": pa.nulls(n, pa.string()),
        }
        return pa.table({**meta, **{c: shown.column(c) for c in shown.column_names if c not in meta}})


def _as_text(rows: pa.RecordBatch) -> pa.Table:
    """Typed rows as text (an image's bytes as their size), as a quarantine shows them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = {}
    for name in rows.schema.names:
        col = rows.column(name)
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            cols[name] = pa.array([None if v is None else f"<{len(v)} bytes>" for v in col.to_pylist()])
            continue
        try:
            cols[name] = pc.cast(col, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            cols[name] = pa.array([None if v is None else str(v) for v in col.to_pylist()], pa.string())
    return pa.table(cols)


class Counts:
    """What a day's writer counts as it goes: rows in, scored and quarantined, the rows of each input,
    the predictions' distribution, the monitor's sample and the commonest reasons rows were refused
    (the manifest and :func:`score`'s error-fraction check read them)."""

    def __init__(self) -> None:
        self.rows_in = self.rows_scored = self.rows_quarantined = 0
        self.per_input: list[dict[str, Any]] = []
        self.class_rows: np.ndarray | None = None  # rows predicted per class
        self.values = {"count": 0, "sum": 0.0, "min": float("inf"), "max": float("-inf")}  # a regression's
        self.sample: list[tuple[datetime, str, Any, np.ndarray]] = []  # for the monitor: a few rows a batch
        self.reasons: Counter[str] = Counter()  # why rows were not scored (the commonest, for a failed day)

    def predictions(self, model: ScoringModel) -> dict[str, float]:
        """The day's distribution of predictions: rows per class, or a regression's count, sum, min, max."""
        if not model.classification:
            return self.values if self.values["count"] else {}
        rows = self.class_rows if self.class_rows is not None else []
        return {str(c): int(k) for c, k in zip(model.pre.classes, rows, strict=False) if k}


def row_numbers(start: int, n: int):
    import pyarrow as pa

    return pa.array(np.arange(start, start + n))


class Quarantine:
    """The day's rows not scored, written as they come in ingest's quarantine layout (``_source``,
    ``_line``, ``_reason``, ``_raw`` and the schema's columns but the target, as text), each counted."""

    #: the most distinct reasons counted (a reason holds the value at fault: a bad day may have many)
    REASONS = 1000

    def __init__(self, sink, spec: PipelineSpec, counts: Counts):
        from freestack.ingest.validate import quarantine_schema

        self.sink, self.counts, self.writer = sink, counts, None
        self.schema = quarantine_schema(checked_columns(spec, None))

    def write(self, rows: pa.Table | None) -> None:
        """Append quarantined rows (the schema's columns a table lacks are null) and count their reasons."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if rows is None or not rows.num_rows:
            return
        n = rows.num_rows
        have = set(rows.column_names)
        table = pa.table(
            [
                rows.column(f.name).cast(f.type) if f.name in have else pa.nulls(n, f.type)
                for f in self.schema
            ],
            schema=self.schema,
        )
        self.writer = self.writer or pq.ParquetWriter(self.sink, self.schema, compression="zstd")
        self.writer.write_table(table)
        self.counts.rows_quarantined += n
        for c in pc.value_counts(table.column("_reason")).to_pylist():
            if c["values"] in self.counts.reasons or len(self.counts.reasons) < self.REASONS:
                self.counts.reasons[c["values"]] += c["counts"]

    def close(self) -> None:
        """Close the Parquet writer, if any row was written (an empty day's quarantine has no file)."""
        if self.writer is not None:
            self.writer.close()


def checked_columns(spec: PipelineSpec, names: list[str] | None) -> list[Column]:
    """The schema's columns a folder file is checked against: those it has (``names``; None: all), the
    target left out (a file to score need not hold it)."""
    schema = spec.source.schema_
    return [c for c in schema.fields if c.name != schema.target and (names is None or c.name in names)]
