"""A predicting version's day (classification, regression): every piece of rows encoded with the version's
preprocessing, predicted, and written as they come into the part's temporary (``key, ds, prediction,
probabilities`` or the value, ``version, scored_at``), the rows it refuses into the quarantine's; the
predictions tallied for the manifest, a sample of each batch kept for the monitor."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from freestack.score.day import SAMPLE_ROWS, key_type, manifest_of, read_day
from freestack.score.published import FOOTER_KEY
from freestack.score.rows import Counts, Quarantine

if TYPE_CHECKING:
    import pyarrow as pa

    from freestack.score.model import ScoringModel
    from freestack.score.rows import Piece
    from freestack.spec import PipelineSpec


def write_predictions(
    spec: PipelineSpec, job: dict[str, Any], model: ScoringModel, part_w, quar_w, run: dict[str, str] | None
) -> tuple[Counts, dict[str, Any]]:
    """Score every input batch into the part's and the quarantine's temporaries (their Parquet writers
    closed, the part's footer holding the manifest)."""
    import pyarrow.parquet as pq

    counts, at = Counts(), datetime.now(UTC)
    quar = Quarantine(quar_w, spec, counts)
    schema = _output_schema(spec, model, key_type(spec, job))
    writer = pq.ParquetWriter(part_w, schema, compression="zstd")

    def score_piece(piece: Piece) -> None:
        """Encode, predict and write one piece's rows; the rows the version's preprocessing refuses go to
        the quarantine."""
        batch = piece.batch
        inputs, good, bad = model.encode(batch)
        if bad:
            quar.write(piece.refused(bad))
        if not len(good):
            return
        out = model.forward(inputs)
        top = out.argmax(axis=1) if model.classification else None
        keys = piece.keys.take(good) if bad else piece.keys
        writer.write_batch(_scores(model, out, top, keys, job["ds"], job["version"], at, writer.schema))
        counts.rows_scored += len(good)
        _tally(counts, model, out, top)
        if spec.score.monitor:
            _keep_sample(counts, model, batch.take(good) if bad else batch, inputs, out, job["ds"])

    try:
        read_day(spec, job, counts, quar, score_piece)
        manifest = manifest_of(spec, job, counts, model, at, run, part_w.path.parent)
        writer.add_key_value_metadata({FOOTER_KEY: json.dumps(manifest).encode()})
    finally:
        writer.close()
        quar.close()
    return counts, manifest


def _output_schema(spec: PipelineSpec, model: ScoringModel, key_arrow: pa.DataType) -> pa.Schema:
    import pyarrow as pa

    key = spec.source.schema_.key or "row"
    fields = [pa.field(key, key_arrow), pa.field("ds", pa.string())]
    wanted, meta = spec.score.columns, None
    if model.classification:
        classes = pa.array(model.pre.classes)
        meta = {b"freestack.classes": json.dumps(model.pre.classes, default=str).encode()}
        if "prediction" in wanted:
            fields.append(pa.field("prediction", classes.type))
        if "probabilities" in wanted:
            fields.append(pa.field("probabilities", pa.list_(pa.float32(), len(model.pre.classes))))
    else:
        fields.append(pa.field("prediction", pa.float64()))
    fields += [pa.field("version", pa.string()), pa.field("scored_at", pa.timestamp("us", tz="UTC"))]
    return pa.schema(fields, metadata=meta)


def _scores(
    model: ScoringModel,
    out: np.ndarray,
    top: np.ndarray | None,
    keys: pa.Array,
    ds: str,
    version: str,
    at: datetime,
    schema: pa.Schema,
) -> pa.RecordBatch:
    """The output batch; ``top``: each row's most probable class (classification)."""
    import pyarrow as pa

    n = len(keys)
    cols: dict[str, Any] = {schema.names[0]: keys, "ds": pa.repeat(ds, n)}
    if model.classification:
        if "prediction" in schema.names:
            cols["prediction"] = model.classes.take(pa.array(top))
        if "probabilities" in schema.names:
            cols["probabilities"] = pa.FixedSizeListArray.from_arrays(
                pa.array(out.astype(np.float32).reshape(-1)), out.shape[1]
            )
    else:
        cols["prediction"] = pa.array(out.astype(np.float64).reshape(-1))
    cols["version"] = pa.repeat(version, n)
    cols["scored_at"] = pa.repeat(pa.scalar(at, pa.timestamp("us", tz="UTC")), n)
    return pa.RecordBatch.from_pydict(cols, schema=schema)


def _tally(counts: Counts, model: ScoringModel, out: np.ndarray, top: np.ndarray | None) -> None:
    if model.classification:
        rows = np.bincount(top, minlength=out.shape[1])
        counts.class_rows = rows if counts.class_rows is None else counts.class_rows + rows
        return
    values, v = out.astype(np.float64).reshape(-1), counts.values
    counts.values = {
        "count": v["count"] + len(values),
        "sum": v["sum"] + float(values.sum()),
        "min": min(v["min"], float(values.min())),
        "max": max(v["max"], float(values.max())),
    }


def _keep_sample(
    counts: Counts, model: ScoringModel, batch: pa.RecordBatch, inputs: Any, out: np.ndarray, ds: str
) -> None:
    """Up to SAMPLE_ROWS evenly spaced scored rows of a batch and their outputs, as the model server logs
    a request (numbers as float32 in feature order, or each feature's raw values), stamped with the day."""
    import pyarrow as pa

    rows = np.linspace(0, len(out) - 1, min(len(out), SAMPLE_ROWS)).astype(int)
    if model.pre.encoder is None:
        sample = inputs[rows]
    else:
        taken = batch.take(pa.array(rows))
        sample = {f: taken.column(f).to_pylist() for f in model.pre.features}
    at = datetime.fromisoformat(ds).replace(tzinfo=UTC) + timedelta(seconds=len(counts.sample))
    counts.sample.append((at, f"score-{ds}-{len(counts.sample)}", sample, out[rows]))
