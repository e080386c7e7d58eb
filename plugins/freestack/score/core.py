"""Batch scoring: a registered version scores one interval's input rows into one Parquet file.

    <output>/part.parquet          key, ds, prediction, probabilities (or the value), version, scored_at;
                                   its footer holds the manifest (the record)
    <output>/_manifest.json        a copy of the manifest: version, its lineage, the inputs' sha256, counts
    <output>/_quarantine.parquet   rows that did not encode, with the reason for each (when there are any)

:func:`plan` resolves the version (an alias is resolved once, when the run starts), checks that it loads
and that the input has its feature columns, and lists the interval's input partitions; :func:`score`
scores one day of them. Rows are read in record batches of ``score.batch_rows`` (memory stays bounded
whatever a partition's size), encoded with the version's own preprocessing (what training, evaluation
and the model server use), predicted, and written as they come into a temporary that is published in
one step: a rerun replaces the interval whole, and a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from freestack.errors import FreestackError

if TYPE_CHECKING:
    import pyarrow as pa
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)
PART, MANIFEST, QUARANTINE = "part.parquet", "_manifest.json", "_quarantine.parquet"
FOOTER_KEY = b"freestack.scores"


class ScoreError(FreestackError):
    """The interval cannot be scored; the message names what is wrong and what to do."""


# ---------------------------------------------------------------------------------------------------------
# what a run scores


def days_of(start: datetime, end: datetime) -> list[str]:
    """The days (ds) of the data interval ``[start, end)``; a zero-length interval is its start day."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date() if end > start else start.date()
    return [(first + timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


def output_dir(spec: PipelineSpec, ds: str) -> str:
    """Where ``ds``'s scores go (a URI)."""
    from freestack.storage import join, storage_root

    rel = spec.score.output.format(pipeline=spec.name, ds=ds, model=spec.model_name)
    return rel if "://" in rel else str(join(storage_root(spec.storage_root), rel))


def input_files(spec: PipelineSpec, ds: str) -> list[dict[str, Any]]:
    """``ds``'s input files, ``{"uri", "sha256", "size"}`` each ([] when there is none): the lake
    partition's part (the sha256 its manifest recorded), or the Parquet files of the input folder."""
    from freestack.storage import list_objects, sha256_of, to_path

    lake = spec.score.lake_pipeline
    if lake is None:
        folder = to_path(spec.score.input.format(ds=ds, pipeline=spec.name))
        files = [p for p in list_objects(folder) if _kind_of(p.name)] if folder.exists() else []
        if not files or all(_kind_of(p.name) == "image" for p in files):
            files = _images_under(folder)  # an image folder: images at any depth (label folders)
        else:  # images beside tables are the tables' image files
            files = [p for p in files if _kind_of(p.name) != "image"]
        return [{"uri": str(p), "sha256": sha256_of(p), "size": p.stat().st_size, "kind": _kind_of(p.name),
                 "folder": str(folder)} for p in files]  # fmt: skip
    from freestack.ingest.core import read_manifest

    manifest = read_manifest(lake_spec(spec), ds)
    if not manifest or not manifest.get("part"):
        return []
    part = manifest["part"]
    return [{"uri": part["uri"], "sha256": part["sha256"], "size": part.get("size", 0)}]


#: what a folder input's files are: tables (Parquet, CSV) or images (one row each, for a model of one image)
FOLDER_KINDS = {".parquet": "parquet", ".csv": "csv"}


def _kind_of(name: str) -> str | None:
    from freestack.ingest.images import IMAGE_SUFFIXES

    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return FOLDER_KINDS.get(suffix) or ("image" if suffix in IMAGE_SUFFIXES else None)


def _images_under(folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """The image files at any depth under ``folder``, sorted by path (dot-files and temporaries left out)."""
    from freestack.storage import join

    if not folder.exists():
        return []
    folder.fs.invalidate_cache(folder.path)
    base = folder.path.rstrip("/")
    rels = [f[len(base) + 1 :] for f in folder.fs.find(folder.path)]
    return [join(folder, r) for r in sorted(rels) if _kind_of(r) == "image" and not any(x.startswith(".") for x in r.split("/"))]


def lake_spec(spec: PipelineSpec) -> PipelineSpec:
    """The spec whose lake ``score.input`` names (this one, or ``lake:<pipeline>``'s)."""
    from freestack.errors import SpecError
    from freestack.spec import load_spec, spec_file

    name = spec.score.lake_pipeline
    if not name or name == spec.name:
        return spec
    try:
        return load_spec(spec_file(name))
    except SpecError as exc:
        raise ScoreError(f"score.input {spec.score.input!r}: pipeline {name!r} cannot be read ({exc}); "
                         "name a pipeline of the pipelines folder") from None  # fmt: skip


def resolve_version(spec: PipelineSpec) -> dict[str, str]:
    """``{"version", "uri", "asked"}``: the registered version ``score.version`` names now."""
    from freestack.registry.core import RegistryError, registry_for

    reg, asked = registry_for(spec), spec.score.version
    try:
        version = reg.resolve(asked)
    except RegistryError as exc:
        raise ScoreError(f"score.version {asked!r}: {exc}. Train and register a version first "
                         f"({spec.name}_train), or name one in the spec") from None  # fmt: skip
    return {"version": version, "uri": reg.version_uri(version), "asked": asked}


def plan(spec: PipelineSpec, start: datetime, end: datetime) -> dict[str, Any]:
    """The run's version (checked: it loads, and the input has its columns) and one job per day of
    ``[start, end)`` that has input; ``skipped`` names the days without."""
    resolved = resolve_version(spec)
    model = load_version(resolved["uri"], "cpu")  # only to check it loads and what it takes
    jobs, skipped = [], []
    for ds in days_of(start, end):
        files = input_files(spec, ds)
        if not files:
            skipped.append(ds)
            continue
        check_columns(spec, model, files[0], resolved["version"])
        jobs.append({"ds": ds, "version": resolved["version"], "version_uri": resolved["uri"], "inputs": files,
                     "output": output_dir(spec, ds)})  # fmt: skip
    return {**resolved, "jobs": jobs, "skipped": skipped}


# ---------------------------------------------------------------------------------------------------------
# the version


class LoadedVersion:
    """A registered version ready to predict: its model, preprocessing and lineage."""

    def __init__(self, uri: str, device: str = "auto"):
        from freestack.evaluate.core import EvaluationError, load_model_folder
        from freestack.ml.loop import resolve_device

        try:
            self.model, self.pre, _, self.lineage, _ = load_model_folder(uri)
        except (EvaluationError, OSError, ValueError, KeyError) as exc:
            raise ScoreError(f"version {uri} cannot be loaded: {exc}. Name another version in score.version, or "
                             "retrain") from None  # fmt: skip
        import pyarrow as pa

        self.uri = uri
        self.device = resolve_device(device)  # a GPU worker (score.queue) scores on its GPU, as training does
        self.model.to(self.device).eval()
        self.classes = pa.array(self.pre.classes) if self.classification else None

    @property
    def classification(self) -> bool:
        return self.pre.task == "classification"

    def encode(self, batch: pa.RecordBatch) -> tuple[Any, np.ndarray, dict[int, str]]:
        """(the model's inputs for the rows of ``batch`` that encode, those rows' positions, the other
        rows' reasons), each row encoded once: a numbers-only version's float32 matrix straight from the
        Arrow columns; a version with an encoder (category, text, image) through its preprocessing, a
        batch it refuses tried row by row to find the rows at fault."""
        if self.pre.encoder is None:
            try:
                return _without_gaps(_matrix(batch, self.pre.numeric), self.pre.numeric)
            except (TypeError, ValueError):  # not numbers (a text in a number column): tried row by row below
                pass
        bad = _missing_numbers(self.pre.numeric, batch)
        good = np.setdiff1d(np.arange(batch.num_rows), np.fromiter(bad, int, len(bad))) if bad else np.arange(batch.num_rows)
        frame = (batch.take(good) if bad else batch).to_pandas()
        try:
            return self.pre.inputs(frame), good, bad
        except (ValueError, TypeError, KeyError):
            pass
        refused = {}
        for k, i in enumerate(good.tolist()):
            try:
                self.pre.inputs(frame.iloc[k : k + 1])
            except (ValueError, TypeError, KeyError) as exc:
                refused[i] = str(exc)[:500]
        kept = np.array([k for k, i in enumerate(good.tolist()) if i not in refused], dtype=int)
        inputs = self.pre.inputs(frame.iloc[kept]) if len(kept) else None
        return inputs, good[kept], {**bad, **refused}

    def forward(self, inputs: Any) -> np.ndarray:
        """Class probabilities ``[rows, classes]`` or values ``[rows]`` of encoded rows."""
        import torch

        from freestack.ml.loop import to_tensors

        with torch.no_grad():  # the float32 matrix encode() built is this batch's own: no copy of it
            own = isinstance(inputs, np.ndarray) and inputs.flags.writeable and self.device.type == "cpu"
            x = torch.from_numpy(inputs) if own else to_tensors(inputs, self.device)
            out = self.model.predict_proba(x) if self.classification else self.model.predict(x)
        return out.cpu().numpy()


def _missing_numbers(numeric: list[str], batch: pa.RecordBatch) -> dict[int, str]:
    """Rows (by position) with no value (null, NaN) in a numeric feature, and which."""
    import pyarrow.compute as pc

    cols = [c for c in numeric if c in batch.schema.names]
    if not cols or not any(batch.column(c).null_count or _is_float(batch.column(c)) for c in cols):
        return {}
    missing = np.column_stack([pc.is_null(batch.column(c), nan_is_null=True).to_numpy(zero_copy_only=False) for c in cols])
    return {int(i): f"no value in {[c for c, m in zip(cols, missing[i], strict=True) if m][:5]}"
            for i in np.flatnonzero(missing.any(axis=1))}  # fmt: skip


def _is_float(column: pa.Array) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(column.type)


def _without_gaps(x: np.ndarray, columns: list[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """:meth:`LoadedVersion.encode` of a numbers matrix: the rows with no value (NaN, a null) set apart."""
    gaps = np.isnan(x)
    missing = np.flatnonzero(gaps.any(axis=1))
    if not len(missing):
        return x, np.arange(len(x)), {}
    bad = {int(i): f"no value in {[c for c, m in zip(columns, gaps[i], strict=True) if m][:5]}" for i in missing}
    good = np.setdiff1d(np.arange(len(x)), missing)
    return x[good], good, bad


def _matrix(batch: pa.RecordBatch, columns: list[str]) -> np.ndarray:
    """The numeric feature columns as one float32 matrix (what ``Preprocessing.inputs`` gives)."""
    x = np.empty((batch.num_rows, len(columns)), np.float32)
    for j, c in enumerate(columns):
        x[:, j] = batch.column(c).to_numpy(zero_copy_only=False)
    return x


def load_version(uri: str, device: str = "auto") -> LoadedVersion:
    return LoadedVersion(uri, device)


def check_columns(spec: PipelineSpec, model: LoadedVersion, item: dict[str, Any], version: str) -> None:
    """The input file must hold every feature column the version was trained on (and the key)."""
    names = _input_names(spec, item)
    uri, key = item["uri"], spec.source.schema_.key
    missing = [c for c in [*model.pre.features, *([key] if key else [])] if c not in names]
    if missing:
        raise ScoreError(f"{uri} has no column(s) {missing}, which version {version} of {spec.model_name} takes: "
                         f"score an input with the columns it was trained on ({', '.join(model.pre.features[:8])}"
                         f"{'...' if len(model.pre.features) > 8 else ''}), or train a version on these")  # fmt: skip


def _input_names(spec: PipelineSpec, item: dict[str, Any]) -> set[str]:
    """The column names an input file gives (an image file: the key and the model's image column)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from freestack.storage import to_path

    kind = item.get("kind", "parquet")
    if kind == "image":
        return {spec.source.schema_.key or "row", *spec.model_features}
    with to_path(item["uri"]).open("rb") as f:
        if kind == "parquet":
            return set(pq.read_schema(f).names)
        return set(pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=1 << 16)).schema.names)


# ---------------------------------------------------------------------------------------------------------
# one day


def _output_schema(spec: PipelineSpec, model: LoadedVersion, key_type: pa.DataType) -> pa.Schema:
    import pyarrow as pa

    key = spec.source.schema_.key or "row"
    fields = [pa.field(key, key_type), pa.field("ds", pa.string())]
    wanted = spec.score.columns
    if model.classification:
        classes = pa.array(model.pre.classes)
        if "prediction" in wanted:
            fields.append(pa.field("prediction", classes.type))
        if "probabilities" in wanted:
            fields.append(pa.field("probabilities", pa.list_(pa.float32(), len(model.pre.classes))))
    else:
        fields.append(pa.field("prediction", pa.float64()))
    fields += [pa.field("version", pa.string()), pa.field("scored_at", pa.timestamp("us", tz="UTC"))]
    meta = {b"freestack.classes": json.dumps(model.pre.classes, default=str).encode()} if model.classification else None
    return pa.schema(fields, metadata=meta)


def _scores(model: LoadedVersion, out: np.ndarray, top: np.ndarray | None, keys: pa.Array, ds: str, version: str,
            at: datetime, schema: pa.Schema) -> pa.RecordBatch:  # fmt: skip
    """The output batch; ``top``: each row's most probable class (classification)."""
    import pyarrow as pa

    n = len(keys)
    cols: dict[str, Any] = {schema.names[0]: keys, "ds": pa.repeat(ds, n)}
    if model.classification:
        if "prediction" in schema.names:
            cols["prediction"] = model.classes.take(pa.array(top))
        if "probabilities" in schema.names:
            cols["probabilities"] = pa.FixedSizeListArray.from_arrays(pa.array(out.astype(np.float32).reshape(-1)), out.shape[1])
    else:
        cols["prediction"] = pa.array(out.astype(np.float64).reshape(-1))
    cols["version"] = pa.repeat(version, n)
    cols["scored_at"] = pa.repeat(pa.scalar(at, pa.timestamp("us", tz="UTC")), n)
    return pa.RecordBatch.from_pydict(cols, schema=schema)


class _Counts:
    def __init__(self) -> None:
        self.rows_in = self.rows_scored = self.rows_quarantined = 0
        self.per_input: list[dict[str, Any]] = []
        self.class_rows: np.ndarray | None = None  # rows predicted per class
        self.values = {"count": 0, "sum": 0.0, "min": float("inf"), "max": float("-inf")}  # a regression's
        self.sample: list[tuple[datetime, str, Any, np.ndarray]] = []  # for the monitor: a few rows a batch

    def predictions(self, model: LoadedVersion) -> dict[str, float]:
        """The day's distribution of predictions: rows per class, or a regression's count, sum, min, max."""
        if not model.classification:
            return self.values if self.values["count"] else {}
        rows = self.class_rows if self.class_rows is not None else []
        return {str(c): int(k) for c, k in zip(model.pre.classes, rows, strict=False) if k}


def score(spec: PipelineSpec, job: dict[str, Any], run: dict[str, str] | None = None,
          model: LoadedVersion | None = None) -> dict[str, Any]:  # fmt: skip
    """Score ``job``'s day (from :func:`plan`) and publish it; returns the manifest. The quarantine is
    published first, the part last: the part is the one commit point."""
    from freestack.storage import AtomicWriter, join, remove_temporaries, to_path, write_json

    model = model or load_version(job["version_uri"], spec.train.device)
    out_dir = to_path(job["output"])
    part_w, quar_w = AtomicWriter(join(out_dir, PART)), AtomicWriter(join(out_dir, QUARANTINE))
    try:
        counts, manifest = _write(spec, job, model, part_w, quar_w, run)
    except BaseException:
        quar_w.abort()
        part_w.abort()
        raise
    if counts.rows_quarantined:
        quar_w.commit()
    else:
        quar_w.abort()
    part_w.commit()
    if not counts.rows_quarantined:  # an earlier run's quarantine belongs to the scores just replaced
        join(out_dir, QUARANTINE).unlink(missing_ok=True)
    write_json(join(out_dir, MANIFEST), manifest)
    remove_temporaries(out_dir)
    if counts.sample:
        log_sample(spec, job, model, counts.sample)
    log.info("%s: %d rows scored with %s, %d quarantined -> %s", job["ds"], counts.rows_scored, job["version"],
             counts.rows_quarantined, join(out_dir, PART))  # fmt: skip
    return manifest


def _write(spec: PipelineSpec, job: dict[str, Any], model: LoadedVersion, part_w, quar_w,
           run: dict[str, str] | None) -> tuple[_Counts, dict[str, Any]]:  # fmt: skip
    """Score every input batch into the part's and the quarantine's temporaries (their Parquet writers
    closed, the part's footer holding the manifest)."""
    import pyarrow.parquet as pq

    from freestack.storage import join

    counts, at, writer, quar = _Counts(), datetime.now(UTC), None, None
    try:
        for unit in _units(job["inputs"], spec.score.batch_rows):
            before = counts.rows_in
            for batch, keys in _batches(spec, unit):
                if writer is None:
                    schema = _output_schema(spec, model, keys.type)
                    writer = pq.ParquetWriter(part_w, schema, compression="zstd")
                inputs, good, bad = model.encode(batch)
                if bad:
                    quar = quar or pq.ParquetWriter(quar_w, _quarantine_schema(batch.schema), compression="zstd")
                    quar.write_table(_quarantined(batch, bad))
                counts.rows_in += batch.num_rows
                counts.rows_quarantined += len(bad)
                if len(good):
                    out = model.forward(inputs)
                    top = out.argmax(axis=1) if model.classification else None
                    writer.write_batch(_scores(model, out, top, keys.take(good) if bad else keys, job["ds"],
                                               job["version"], at, schema))  # fmt: skip
                    counts.rows_scored += len(good)
                    _tally(counts, model, out, top)
                    if spec.score.monitor:
                        _keep_sample(counts, model, batch.take(good) if bad else batch, inputs, out, job["ds"])
            rows = counts.rows_in - before
            counts.per_input += [{**i, "rows": rows if len(unit) == 1 else 1} for i in unit]
        _check_errors(spec, job, counts)
        if writer is None:
            raise ScoreError(f"{job['ds']}: the input files hold no rows ({[i['uri'] for i in job['inputs']]})")
        quarantine = str(join(part_w.path.parent, QUARANTINE)) if quar else None
        manifest = _manifest(spec, job, counts, model, at, run, quarantine)
        writer.add_key_value_metadata({FOOTER_KEY: json.dumps(manifest).encode()})
    finally:
        for w in (writer, quar):
            if w is not None:
                w.close()
    return counts, manifest


def _units(inputs: list[dict[str, Any]], batch_rows: int) -> list[list[dict[str, Any]]]:
    """The job's inputs as they are read: each table file alone, image files ``batch_rows`` at a time."""
    images = [i for i in inputs if i.get("kind") == "image"]
    tables = [[i] for i in inputs if i.get("kind") != "image"]
    return tables + [images[k : k + batch_rows] for k in range(0, len(images), batch_rows)]


def _batches(spec: PipelineSpec, unit: list[dict[str, Any]]):
    """(batch, keys) per record batch of a unit of input (:func:`_units`); the files' bytes must be the
    ones planned (each sha256 is checked first). A CSV's columns are read as the spec declares them, and
    an image column holding paths gets the files' bytes (relative to the input folder); image files are
    one row each of the model's one image column, their path in the folder the key."""
    from freestack.storage import sha256_of, to_path

    for item in unit:
        if sha256_of(to_path(item["uri"])) != item["sha256"]:
            raise ScoreError(f"{item['uri']} changed after this run planned it (sha256 {item['sha256'][:12]}...): it "
                             "was re-ingested or rewritten; clear this run's plan task to score it as it is now")  # fmt: skip
    kind, item = unit[0].get("kind", "parquet"), unit[0]
    if kind == "image":
        batch = _image_batch(spec, unit)
        yield batch, batch.column(0)
        return
    offset = 0
    for batch in (_parquet_batches if kind == "parquet" else _csv_batches)(spec, to_path(item["uri"]), item):
        batch = _with_image_bytes(spec, batch, item.get("folder")) if kind == "csv" else batch
        key = spec.source.schema_.key
        keys = batch.column(key) if key and key in batch.schema.names else _row_numbers(offset, batch.num_rows)
        offset += batch.num_rows
        yield batch, keys


def _row_numbers(start: int, n: int):
    import pyarrow as pa

    return pa.array(np.arange(start, start + n))


def _parquet_batches(spec: PipelineSpec, path, item: dict[str, Any]):
    import pyarrow.parquet as pq

    with path.open("rb") as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=spec.score.batch_rows)


def _csv_batches(spec: PipelineSpec, path, item: dict[str, Any]):
    """A CSV in record batches, each declared column read as its declared type (the target may be absent)."""
    import pyarrow.csv as pcsv

    from freestack.ingest.validate import arrow_schema

    declared = arrow_schema(spec.source.schema_.fields)
    types = {f.name: f.type for f in declared if not f.type.equals("binary")}  # image paths are text here
    with path.open("rb") as f:
        reader = pcsv.open_csv(f, convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
                               read_options=pcsv.ReadOptions(block_size=1 << 22))  # fmt: skip
        for batch in reader:
            for start in range(0, batch.num_rows, spec.score.batch_rows):
                yield batch.slice(start, spec.score.batch_rows)


def _image_batch(spec: PipelineSpec, unit: list[dict[str, Any]]):
    """Image files as rows: the model's image column, and each file's path in the folder as the key."""
    import pyarrow as pa

    from freestack.storage import to_path

    images = [f for f, t in spec.feature_kinds.items() if t == "image"]
    if len(images) != 1 or len(spec.model_features) != 1:
        raise ScoreError(f"{unit[0]['uri']} is an image, but {spec.name}'s model takes {spec.model_features}: an "
                         "input folder of images is for a model of one image column; put tables (Parquet, CSV) there")  # fmt: skip
    rels = [i["uri"][len(i.get("folder", "").rstrip("/")) + 1 :] for i in unit]
    key = spec.source.schema_.key or "row"
    return pa.RecordBatch.from_pydict({key: rels, images[0]: [to_path(i["uri"]).read_bytes() for i in unit]})


def _with_image_bytes(spec: PipelineSpec, batch, folder: str | None):
    """A CSV batch whose image columns hold paths, with the files' bytes instead (None where a file is
    missing: the row is quarantined with the encoder's reason)."""
    import pyarrow as pa

    from freestack.storage import join, to_path

    for name in [f for f, t in spec.feature_kinds.items() if t == "image" and f in batch.schema.names]:
        paths = batch.column(name).to_pylist()
        data = []
        for rel in paths:
            try:
                data.append(join(to_path(folder), rel).read_bytes() if rel and folder else None)
            except (FileNotFoundError, IsADirectoryError, ValueError):
                data.append(None)
        batch = batch.set_column(batch.schema.get_field_index(name), name, pa.array(data, pa.binary()))
    return batch


def _quarantine_schema(input_schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([*input_schema, pa.field("reason", pa.string())])


def _quarantined(batch: pa.RecordBatch, bad: dict[int, str]) -> pa.Table:
    import pyarrow as pa

    rows = sorted(bad)
    table = pa.Table.from_batches([batch.take(pa.array(rows))])
    return table.append_column("reason", pa.array([bad[i] for i in rows], pa.string()))


def _tally(counts: _Counts, model: LoadedVersion, out: np.ndarray, top: np.ndarray | None) -> None:
    if model.classification:
        rows = np.bincount(top, minlength=out.shape[1])
        counts.class_rows = rows if counts.class_rows is None else counts.class_rows + rows
        return
    values, v = out.astype(np.float64).reshape(-1), counts.values
    counts.values = {"count": v["count"] + len(values), "sum": v["sum"] + float(values.sum()),
                     "min": min(v["min"], float(values.min())), "max": max(v["max"], float(values.max()))}  # fmt: skip


#: rows of each batch kept for the monitor (the request log keeps as many of one request)
SAMPLE_ROWS = 256


def _keep_sample(counts: _Counts, model: LoadedVersion, batch: pa.RecordBatch, inputs: Any, out: np.ndarray,
                 ds: str) -> None:  # fmt: skip
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


def log_sample(spec: PipelineSpec, job: dict[str, Any], model: LoadedVersion, sample: list) -> str:
    """Write the day's sample into the model's request log (``monitoring/<model>/requests/``) under one
    name per pipeline and day, so that ``<p>_monitor`` judges batch-scored days as it judges served
    traffic, and a rescore replaces its sample. Returns its URI."""
    import pyarrow.parquet as pq

    from freestack.monitor.core import feature_kinds
    from freestack.storage import AtomicWriter, join, to_path
    from freestack_server.requestlog import RequestLog, hour_folder, monitoring_uri

    kinds = feature_kinds(spec)
    request_log = RequestLog(monitoring_uri(spec.root, spec.model_name), rate=1.0, model=spec.model_name,
                             version=job["version"], deployment=f"{spec.name}_score",
                             columns=[(f, kinds.get(f, "numeric")) for f in model.pre.features],
                             classes=[str(c) for c in model.pre.classes])  # fmt: skip
    path = join(to_path(request_log.uri), "requests", hour_folder(sample[0][0]), f"score-{spec.name}.parquet")
    with AtomicWriter(path) as f:
        pq.write_table(request_log.table(sample), f, compression="zstd")
    return str(path)


def _check_errors(spec: PipelineSpec, job: dict[str, Any], counts: _Counts) -> None:
    limit = spec.score.max_error_fraction
    if limit is not None and counts.rows_in and counts.rows_quarantined / counts.rows_in > limit:
        raise ScoreError(f"{job['ds']}: {counts.rows_quarantined} of {counts.rows_in} rows did not encode "
                         f"({counts.rows_quarantined / counts.rows_in:.1%}), over score.max_error_fraction {limit:.1%}: "
                         "nothing was published; fix the input (the reasons are in the task log) or raise the limit")  # fmt: skip


def _manifest(spec: PipelineSpec, job: dict[str, Any], counts: _Counts, model: LoadedVersion, at: datetime,
              run: dict[str, str] | None, quarantine: str | None) -> dict[str, Any]:  # fmt: skip
    from freestack.storage import join, to_path

    return {
        "pipeline": spec.name, "model": spec.model_name, "ds": job["ds"], "version": job["version"],
        "version_uri": job["version_uri"], "lineage": str(join(to_path(job["version_uri"]), "lineage.json")),
        "trained_on": [{"ds": p.get("ds"), "sha256": p.get("sha256")} for p in model.lineage.get("partitions", [])],
        "inputs": counts.per_input, "rows_in": counts.rows_in, "rows_scored": counts.rows_scored,
        "rows_quarantined": counts.rows_quarantined, "quarantine": quarantine,
        "predictions": counts.predictions(model), "columns": list(spec.score.columns),
        "task": model.pre.task, "scored_at": at.isoformat(timespec="seconds"), "run": run or {},
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# reading scores back (the CLI's `freestack scores` and the views' Scores page)

_DS = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class UnreadableScores(ScoreError):
    """A scored day whose record cannot be read; the message says what is wrong."""


def scores_parent(spec: PipelineSpec) -> tuple[ObjectStoragePath, str, str]:
    """The folder holding the days' folders, and what a day folder's name has before and after its ds."""
    from freestack.storage import join, storage_root, to_path

    before, after = spec.score.output.split("{ds}", 1)
    parent, _, prefix = before.format(pipeline=spec.name, model=spec.model_name).rpartition("/")
    root = to_path(parent) if "://" in parent else join(storage_root(spec.storage_root), *([parent] if parent else []))
    return root, prefix, after.split("/", 1)[0]


def score_days(spec: PipelineSpec) -> list[str]:
    """The days (ds) with a folder under the spec's score output, newest first (one listing, nothing read)."""
    parent, prefix, suffix = scores_parent(spec)
    parent.fs.invalidate_cache(parent.path)
    try:
        entries = parent.fs.ls(parent.path, detail=True)
    except FileNotFoundError:
        return []
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]
    names = [n for n in names if n.startswith(prefix) and n.endswith(suffix)]
    days = [n[len(prefix) : len(n) - len(suffix)] for n in names if len(n) > len(prefix) + len(suffix)]
    return sorted((d for d in days if _DS.match(d)), reverse=True)


def read_scores_manifest(folder: str) -> dict[str, Any]:
    """The manifest in the footer of a scored day's part (the record); :class:`UnreadableScores` says why not."""
    import pyarrow.parquet as pq

    from freestack.storage import join, to_path

    try:
        with join(to_path(folder), PART).open("rb") as f:
            raw = (pq.read_metadata(f).metadata or {}).get(FOOTER_KEY)
    except FileNotFoundError:
        raise UnreadableScores(f"no {PART}: the day was never published (its score task failed, or is running)") from None
    except (OSError, ValueError) as exc:
        raise UnreadableScores(f"{PART} cannot be read as Parquet ({str(exc)[:200]})") from None
    if not raw:
        raise UnreadableScores(f"{PART} has no scores manifest in its footer (key {FOOTER_KEY.decode()}): "
                               "it was not written by the score task")  # fmt: skip
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise UnreadableScores(f"the manifest in the footer of {PART} is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise UnreadableScores(f"the manifest in the footer of {PART} is not a JSON object")
    return manifest


def scored_days(spec: PipelineSpec) -> list[dict[str, Any]]:
    """The manifests of the scored days, newest first; a day that cannot be read is ``{"ds", "problem"}``."""
    out = []
    for ds in score_days(spec):
        try:
            out.append(read_scores_manifest(output_dir(spec, ds)))
        except UnreadableScores as exc:
            out.append({"ds": ds, "problem": str(exc)})
    return out


__all__ = ["ScoreError", "UnreadableScores", "days_of", "input_files", "plan", "read_scores_manifest", "resolve_version",
           "score", "score_days", "scored_days", "scores_parent"]
