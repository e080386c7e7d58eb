"""Batch scoring: a registered version scores one interval's input rows into one Parquet file.

    <output>/part.parquet          key, ds, prediction, probabilities (or the value), version, scored_at;
                                   its footer holds the manifest (the record)
    <output>/_manifest.json        a copy of the manifest: version, its lineage, the inputs' sha256, counts
    <output>/_quarantine.parquet   rows not scored, with the reason for each (when there are any), laid out
                                   as ingest's quarantine: _source, _line, _reason, _raw, the columns as text
    <output>/_failed.json          why the day's last run failed (removed when a run publishes the day)
    <output>/_failed_quarantine.parquet   the rows a day over score.max_error_fraction could not score

:func:`plan` resolves the version (an alias is resolved once, when the run starts), checks that it loads
and that every input file has its feature columns, and lists the interval's input partitions (0-byte
files left out, by name); :func:`score` scores one day of them. Rows are read in record batches of
``score.batch_rows`` (memory stays bounded whatever a partition's size); a folder's rows are checked by
ingest's validator against the spec's schema (the lake's rows were, when they were ingested); rows are
encoded with the version's own preprocessing (what training, evaluation and the model server use),
predicted, and written as they come into a temporary that is published in one step: a rerun replaces
the interval whole, and a reader never sees a half-written file. A text-generation version's day is
answered by :mod:`freestack.score.generation` (its own columns) and published here the same way.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from freestack import cache, version
from freestack.errors import FreestackError, SpecError
from freestack.ingest.images import IMAGE_SUFFIXES, check_images
from freestack.ingest.lake import read_manifest
from freestack.monitor.core import feature_kinds
from freestack.registry.core import RegistryError, registry_for
from freestack.spec import PipelineSpec, load_spec, spec_file
from freestack.storage import (
    AtomicWriter,
    abort_all,
    join,
    list_objects,
    remove_temporaries,
    sha256_of,
    storage_root,
    to_path,
    write_json,
)
from freestack.version.files import LINEAGE
from freestack_server.requestlog import RequestLog, hour_folder, monitoring_uri

if TYPE_CHECKING:
    from collections.abc import Callable

    import pyarrow as pa
    from airflow.sdk import ObjectStoragePath

    from freestack.ingest.spec import Column

log = logging.getLogger(__name__)
PART, MANIFEST, QUARANTINE = "part.parquet", "_manifest.json", "_quarantine.parquet"
FAILED, FAILED_QUARANTINE = "_failed.json", "_failed_quarantine.parquet"
#: the quarantine's name until the day is published (as QUARANTINE) or fails (as FAILED_QUARANTINE)
STAGING = "_quarantine-staging.parquet"
FOOTER_KEY = b"freestack.scores"


class ScoreError(FreestackError):
    """The interval cannot be scored; the message names what is wrong and what to do. ``ds``: the day at
    fault, when it is one day's."""

    def __init__(self, message: str, *, ds: str | None = None):
        super().__init__(message)
        self.ds = ds


# ---------------------------------------------------------------------------------------------------------
# what a run scores


def days_of(start: datetime, end: datetime) -> list[str]:
    """The days (ds) of the data interval ``[start, end)``; a zero-length interval is its start day."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date() if end > start else start.date()
    return [(first + timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


def output_dir(spec: PipelineSpec, ds: str) -> str:
    """Where ``ds``'s scores go (a URI)."""
    rel = spec.score.output.format(pipeline=spec.name, ds=ds, model=spec.model_name)
    return rel if "://" in rel else str(join(storage_root(spec.storage_root), rel))


def input_files(spec: PipelineSpec, ds: str) -> list[dict[str, Any]]:
    """``ds``'s input files, ``{"uri", "sha256", "size"}`` each ([] when there is none): the lake
    partition's part (the sha256 its manifest recorded), or the Parquet files of the input folder."""
    lake = spec.score.lake_pipeline
    if lake is None:
        folder = to_path(spec.score.input.format(ds=ds, pipeline=spec.name))
        files = [p for p in list_objects(folder) if _kind_of(p.name)] if folder.exists() else []
        if not files or all(_kind_of(p.name) == "image" for p in files):
            files = _images_under(folder)  # an image folder: images at any depth (label folders)
        else:  # images beside tables are the tables' image files
            files = [p for p in files if _kind_of(p.name) != "image"]
        return [
            {
                "uri": str(p),
                "sha256": sha256_of(p),
                "size": p.stat().st_size,
                "kind": _kind_of(p.name),
                "folder": str(folder),
            }
            for p in files
        ]
    manifest = read_manifest(lake_spec(spec), ds)
    if not manifest or not manifest.get("part"):
        return []
    part = manifest["part"]
    return [{"uri": part["uri"], "sha256": part["sha256"], "size": part.get("size", 0)}]


#: what a folder input's files are: tables (Parquet, CSV) or images (one row each, for a model of one image)
FOLDER_KINDS = {".parquet": "parquet", ".csv": "csv"}


def _kind_of(name: str) -> str | None:
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return FOLDER_KINDS.get(suffix) or ("image" if suffix in IMAGE_SUFFIXES else None)


def _images_under(folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """The image files at any depth under ``folder``, sorted by path (dot-files and temporaries left out)."""
    if not folder.exists():
        return []
    folder.fs.invalidate_cache(folder.path)
    base = folder.path.rstrip("/")
    rels = [f[len(base) + 1 :] for f in folder.fs.find(folder.path)]
    return [
        join(folder, r)
        for r in sorted(rels)
        if _kind_of(r) == "image" and not any(x.startswith(".") for x in r.split("/"))
    ]


def lake_spec(spec: PipelineSpec) -> PipelineSpec:
    """The spec whose lake ``score.input`` names (this one, or ``lake:<pipeline>``'s)."""
    name = spec.score.lake_pipeline
    if not name or name == spec.name:
        return spec
    try:
        return load_spec(spec_file(name))
    except SpecError as exc:
        raise ScoreError(
            f"score.input {spec.score.input!r}: pipeline {name!r} cannot be read ({exc}); "
            "name a pipeline of the pipelines folder"
        ) from None


def resolve_version(spec: PipelineSpec) -> dict[str, str]:
    """``{"version", "uri", "asked"}``: the registered version ``score.version`` names now."""
    reg, asked = registry_for(spec), spec.score.version
    try:
        version = reg.resolve(asked)
    except RegistryError as exc:
        raise ScoreError(
            f"score.version {asked!r}: {exc}. Train and register a version first "
            f"({spec.name}_train), or name one in the spec"
        ) from None
    return {"version": version, "uri": reg.version_uri(version), "asked": asked}


def plan(spec: PipelineSpec, start: datetime, end: datetime) -> dict[str, Any]:
    """The run's version (checked: it loads, and every input file has its columns) and one job per day
    of ``[start, end)`` that has input; ``skipped`` names the days without. An empty file (0 bytes, or no
    header) is left out of its day with a line naming it (``job["empty"]``)."""
    resolved = resolve_version(spec)
    model = ScoringModel(resolved["uri"], "cpu")  # only to check it loads and what it takes
    jobs, skipped = [], []
    for ds in days_of(start, end):
        files, empty = [], []
        for item in input_files(spec, ds):
            try:
                names = _input_names(spec, item)
            except (OSError, ValueError) as exc:
                kind = item.get("kind", "parquet")
                raise ScoreError(
                    f"{item['uri']} cannot be read as {kind} ({str(exc)[:300]}): replace or "
                    "remove the file, then clear this task",
                    ds=ds,
                ) from None
            if names is None:
                log.warning(
                    "%s: %s is empty (%d bytes): not scored; write its rows or remove it",
                    ds,
                    item["uri"],
                    item["size"],
                )
                empty.append(item["uri"])
                continue
            if item.get("kind") != "image" or not files:  # image files all give the same columns
                check_columns(spec, model, item, resolved["version"], names, ds)
            files.append(item)
        if not files:
            skipped.append(ds)
            continue
        jobs.append(
            {
                "ds": ds,
                "version": resolved["version"],
                "version_uri": resolved["uri"],
                "inputs": files,
                "output": output_dir(spec, ds),
                "empty": empty,
            }
        )
    return {**resolved, "jobs": jobs, "skipped": skipped}


# ---------------------------------------------------------------------------------------------------------
# the version


class ScoringModel:
    """A registered version ready to score: its model on the scoring device, its preprocessing and
    lineage (:meth:`freestack.version.ModelVersion.load`, which refuses a version whose files changed
    since registration)."""

    def __init__(self, uri: str, device: str = "auto"):
        from freestack.ml.loop import resolve_device

        try:
            loaded = version.open(uri).load()
            self.pre = loaded.preprocessor
        except (version.VersionError, OSError, ValueError, KeyError) as exc:
            raise ScoreError(
                f"version {uri} cannot be loaded: {exc}. Name another version in score.version, or retrain"
            ) from None
        import pyarrow as pa

        self.uri = uri
        self.model, self.lineage = loaded.model, loaded.lineage.as_dict()
        #: a text-generation version's tokenizer (with its chat template) and generation config
        self.tokenizer, self.generation_config = loaded.tokenizer, loaded.generation_config
        self.device = resolve_device(device)  # a GPU worker (score.queue) scores on its GPU, as training does
        self.model.to(self.device).eval()
        self.classes = pa.array(self.pre.classes) if self.classification else None

    @property
    def classification(self) -> bool:
        return self.pre.task == "classification"

    @property
    def generative(self) -> bool:
        """A text-generation version: it answers prompt rows (:mod:`freestack.score.generation`)."""
        return self.pre.task == "generation"

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
        good = np.setdiff1d(np.arange(batch.num_rows), np.fromiter(bad, int, len(bad)))
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
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = [c for c in numeric if c in batch.schema.names]
    if not cols or not any(
        batch.column(c).null_count or pa.types.is_floating(batch.column(c).type) for c in cols
    ):
        return {}
    missing = np.column_stack(
        [pc.is_null(batch.column(c), nan_is_null=True).to_numpy(zero_copy_only=False) for c in cols]
    )
    return {
        int(i): f"no value in {[c for c, m in zip(cols, missing[i], strict=True) if m][:5]}"
        for i in np.flatnonzero(missing.any(axis=1))
    }


def _without_gaps(x: np.ndarray, columns: list[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """:meth:`ScoringModel.encode` of a numbers matrix: the rows with no value (NaN, a null) set apart."""
    gaps = np.isnan(x)
    missing = np.flatnonzero(gaps.any(axis=1))
    if not len(missing):
        return x, np.arange(len(x)), {}
    bad = {
        int(i): f"no value in {[c for c, m in zip(columns, gaps[i], strict=True) if m][:5]}" for i in missing
    }
    good = np.setdiff1d(np.arange(len(x)), missing)
    return x[good], good, bad


def _matrix(batch: pa.RecordBatch, columns: list[str]) -> np.ndarray:
    """The numeric feature columns as one float32 matrix (what ``Preprocessing.inputs`` gives)."""
    x = np.empty((batch.num_rows, len(columns)), np.float32)
    for j, c in enumerate(columns):
        x[:, j] = batch.column(c).to_numpy(zero_copy_only=False)
    return x


def check_columns(
    spec: PipelineSpec,
    model: ScoringModel,
    item: dict[str, Any],
    version: str,
    names: list[str] | None = None,
    ds: str | None = None,
) -> None:
    """The input file must hold every feature column the version was trained on (and the key)."""
    names = _input_names(spec, item) if names is None else names
    uri, key = item["uri"], spec.source.schema_.key
    missing = [c for c in [*model.pre.features, *([key] if key else [])] if c not in (names or [])]
    if missing:
        raise ScoreError(
            f"{uri} has no column(s) {missing}, which version {version} of {spec.model_name} takes: "
            f"score an input with the columns it was trained on ({', '.join(model.pre.features[:8])}"
            f"{'...' if len(model.pre.features) > 8 else ''}), or train a version on these",
            ds=ds,
        )


def _input_names(spec: PipelineSpec, item: dict[str, Any]) -> list[str] | None:
    """The column names an input file gives (an image file: the key and the model's image column); None
    for an empty file (0 bytes, or a CSV without even a header)."""
    import pyarrow.parquet as pq

    kind = item.get("kind", "parquet")
    if kind == "image":
        return [spec.source.schema_.key or "row", *spec.model_features]
    if not item.get("size", 1):
        return None
    with to_path(item["uri"]).open("rb") as f:
        if kind == "parquet":
            return pq.read_schema(f).names
        return _csv_names(spec, f)


def _csv_names(spec: PipelineSpec, f) -> list[str] | None:
    """A CSV's column names: its header's (None when it has none), or the schema's without a header."""
    import csv

    opts = spec.source.csv
    if not opts.header:
        return [c.name for c in spec.source.schema_.fields]
    first = f.readline().decode(opts.encoding, errors="replace").lstrip("\ufeff")
    row = next(csv.reader([first], delimiter=opts.delimiter, quotechar=opts.quote_char), [])
    names = [c.strip() for c in row]
    return names if any(names) else None


# ---------------------------------------------------------------------------------------------------------
# one day


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


def score(
    spec: PipelineSpec,
    job: dict[str, Any],
    run: dict[str, str] | None = None,
    model: ScoringModel | None = None,
    *,
    write: Callable[..., tuple[Counts, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Score ``job``'s day (from :func:`plan`) and publish it; returns the manifest. The quarantine is
    published first, the part last: the part is the one commit point. Over ``score.max_error_fraction``
    nothing is published and the rows not scored are kept as ``_failed_quarantine.parquet``. ``write``
    fills the temporaries (a text-generation version's: :func:`freestack.score.generation.write_answers`).
    With ``score.cache``, a day published from the same inputs is returned as it is (:func:`cached`)."""
    found = cached(spec, job)
    if found is not None and found.hit and (reused := _reused(job, found)) is not None:
        return reused
    job = {**job, "cache": found.record()} if found is not None else job  # the manifest records it
    model = model or ScoringModel(job["version_uri"], spec.train.device)
    if model.generative and write is None:
        raise ScoreError(
            f"{job['version']} is a text-generation version: its days are answered by "
            "freestack.score.generation.score, not scored"
        )
    out_dir = to_path(job["output"])
    part_w, quar_w = AtomicWriter(join(out_dir, PART)), AtomicWriter(join(out_dir, STAGING))
    try:
        counts, manifest = (write or _write)(spec, job, model, part_w, quar_w, run)
    except BaseException:
        abort_all(quar_w, part_w)  # both temporaries go, whatever aborting the first raises
        raise
    limit = spec.score.max_error_fraction
    if limit is not None and counts.rows_quarantined / counts.rows_in > limit:
        part_w.abort()  # the day's published scores, if any, stay as they were, with their quarantine
        kept = quar_w.commit_as(join(out_dir, FAILED_QUARANTINE))
        join(out_dir, STAGING).unlink(missing_ok=True)
        raise ScoreError(_over_limit(job["ds"], counts, limit, kept.uri), ds=job["ds"])
    if counts.rows_quarantined:
        quar_w.commit_as(join(out_dir, QUARANTINE))
    else:
        quar_w.abort()
    part_w.commit()
    if not counts.rows_quarantined:  # an earlier run's quarantine belongs to the scores just replaced
        join(out_dir, QUARANTINE).unlink(missing_ok=True)
    for name in (FAILED, FAILED_QUARANTINE, STAGING):  # an earlier failure of the day is answered
        join(out_dir, name).unlink(missing_ok=True)
    write_json(join(out_dir, MANIFEST), manifest)
    remove_temporaries(out_dir)
    if found is not None:
        cache.save(found, run, [PART, MANIFEST, *([QUARANTINE] if counts.rows_quarantined else [])])
    if counts.sample:
        log_sample(spec, job, model, counts.sample)
    for uri in job.get("empty", []):
        log.warning("%s: %s is empty: not scored", job["ds"], uri)
    log.info(
        "%s: %d rows scored with %s, %d quarantined -> %s",
        job["ds"],
        counts.rows_scored,
        job["version"],
        counts.rows_quarantined,
        join(out_dir, PART),
    )
    return manifest


def cached(spec: PipelineSpec, job: dict[str, Any]) -> cache.Lookup | None:
    """The day's scores cache (:mod:`freestack.cache`), keyed on the bytes of the day's input files (read
    now), the version's files and its Hub base's commit, and the spec blocks scoring reads (not
    ``score.version``: the version it resolved to is keyed); None with ``score.cache`` off. The version's
    name, each input file's sha256 and each block's digest are kept in words: a miss says what changed in
    them, and a hit is checked against the published manifest (:func:`_reused`). A miss removes the old
    entry before the day is scored again."""
    if not spec.score.cache:
        return None
    files = [[i["uri"], cache.file_digest(i["uri"])] for i in job["inputs"]]
    blocks = {"name": spec.name, "source": spec.source, "model": spec.model, "score": spec.score}
    leave_out = {"score": {"cache", "schedule", "queue", "version"}}
    found = cache.lookup(
        "score",
        job["output"],
        {
            "inputs": cache.digest(files),
            "empty": cache.digest(job.get("empty") or []),
            "version": job["version"],
            "version_files": cache.version_digest(job["version_uri"]),
            "base": cache.base_commit(job["version_uri"]),
            "spec": cache.spec_digest(blocks, leave_out),
        },
        shown={
            "inputs": _input_shown(job["inputs"], [sha for _, sha in files]),
            "version": cache.Shown(value=job["version"]),
            "spec": cache.spec_shown(blocks, leave_out),
        },
    )
    if not found.hit:
        log.info("%s: %s", job["ds"], found.line(""))
        cache.forget(found)
    return found


def _input_shown(inputs: list[dict[str, Any]], digests: list[str]) -> cache.Shown:
    """A day's input files in words, each with its sha256: a folder's files by their path under it, a
    lake partition's part by its last two (``ds=2026-11-02/part.parquet``)."""

    def name(item: dict[str, Any]) -> str:
        folder, uri = str(item.get("folder") or "").rstrip("/") + "/", str(item.get("uri") or "")
        if folder != "/" and uri.startswith(folder):
            return uri[len(folder) :]
        return "/".join(uri.split("/")[-2:])

    return cache.Shown(items={name(i): sha for i, sha in zip(inputs, digests, strict=True)})


def _reused(job: dict[str, Any], found: cache.Lookup) -> dict[str, Any] | None:
    """The day's published manifest (its scores kept as they are), with this run's cache record; an
    earlier failure's files and killed runs' temporaries are removed, as a publishing run removes them.
    None, the hit turned into a miss and its entry removed, when the part's manifest cannot be read, or
    is not of these inputs: it names another version or other input files (sha256), or was written under
    another key (the entry edited, or the day scored since uncached)."""
    out_dir = to_path(job["output"])
    try:
        manifest = read_scores_manifest(job["output"])
    except UnreadableScores as exc:
        found.miss = f"the published scores cannot be read ({str(exc)[:100]})"
    else:
        items = [i for i in manifest.get("inputs") or [] if isinstance(i, dict)]
        recorded = {
            "inputs": _input_shown(items, [str(i.get("sha256") or "") for i in items]),
            "version": cache.Shown(value=str(manifest.get("version"))),
        }
        key = (manifest.get("cache") or {}).get("key")
        found.miss = cache.not_of(found, recorded, key, f"the manifest of {PART}")
    if found.miss is not None:
        log.warning("%s: %s", job["ds"], found.line(""))
        cache.forget(found)
        return None
    for name in (FAILED, FAILED_QUARANTINE, STAGING):
        join(out_dir, name).unlink(missing_ok=True)
    remove_temporaries(out_dir)
    log.info("%s: %s", job["ds"], found.line(f"the scores of {job['ds']}"))
    return {**manifest, "cache": found.record()}


def _over_limit(ds: str, counts: Counts, limit: float, kept: str) -> str:
    common = "; ".join(f"{why} ({n} row{'s' * (n > 1)})" for why, n in counts.reasons.most_common(3))
    share = counts.rows_quarantined / counts.rows_in
    return (
        f"{ds}: {counts.rows_quarantined} of {counts.rows_in} rows were not scored ({share:.1%}), over "
        f"score.max_error_fraction {limit:.1%}: nothing was published. Each of those rows and its reason "
        f"is in {kept}; the commonest: {common}. Fix the input and clear this task, or raise the limit"
    )


def read_day(
    spec: PipelineSpec,
    job: dict[str, Any],
    counts: Counts,
    quar: Quarantine,
    score_piece: Callable[[Piece], None],
    check_rows: Callable[[int], None] | None = None,
) -> None:
    """Every input batch of the day: its rows counted (``check_rows`` sees the count so far first), the
    rows the schema refused quarantined, the others handed to ``score_piece``; the rows of each input; a
    ScoreError for a day of no rows. The day loop of both writers (scores, and answers of a
    text-generation version)."""
    for unit in _units(job["inputs"], spec.score.batch_rows):
        before = counts.rows_in
        for piece in _pieces(spec, unit):
            counts.rows_in += piece.rows_in
            if check_rows is not None:
                check_rows(counts.rows_in)
            quar.write(piece.rejected)
            if piece.batch is not None and piece.batch.num_rows:
                score_piece(piece)
        rows = counts.rows_in - before
        counts.per_input += [{**i, "rows": rows if len(unit) == 1 else 1} for i in unit]
    if not counts.rows_in:
        files = [i["uri"] for i in job["inputs"]]
        raise ScoreError(
            f"{job['ds']}: the input files hold no rows ({files}): write their rows, or remove them",
            ds=job["ds"],
        )


def _write(
    spec: PipelineSpec, job: dict[str, Any], model: ScoringModel, part_w, quar_w, run: dict[str, str] | None
) -> tuple[Counts, dict[str, Any]]:
    """Score every input batch into the part's and the quarantine's temporaries (their Parquet writers
    closed, the part's footer holding the manifest)."""
    import pyarrow.parquet as pq

    counts, at = Counts(), datetime.now(UTC)
    quar = Quarantine(quar_w, spec, counts)
    schema = _output_schema(spec, model, key_type(spec, job))
    writer = pq.ParquetWriter(part_w, schema, compression="zstd")
    try:
        read_day(
            spec,
            job,
            counts,
            quar,
            lambda piece: _score_piece(spec, job, model, piece, writer, quar, counts, at),
        )
        quarantine = str(join(part_w.path.parent, QUARANTINE)) if counts.rows_quarantined else None
        manifest = manifest_of(spec, job, counts, model, at, run, quarantine)
        writer.add_key_value_metadata({FOOTER_KEY: json.dumps(manifest).encode()})
    finally:
        writer.close()
        quar.close()
    return counts, manifest


def _score_piece(
    spec: PipelineSpec,
    job: dict[str, Any],
    model: ScoringModel,
    piece: Piece,
    writer,
    quar: Quarantine,
    counts: Counts,
    at: datetime,
) -> None:
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


def key_type(spec: PipelineSpec, job: dict[str, Any]) -> pa.DataType:
    """The key's type in the scores: an image file's path, the declared key's, or a row number."""
    import pyarrow as pa

    from freestack.ingest.validate import ARROW_TYPES

    key = spec.source.schema_.key
    if any(i.get("kind") == "image" for i in job["inputs"]):
        return pa.string()
    if key is None:
        return pa.int64()
    return ARROW_TYPES[next(c.type for c in spec.source.schema_.fields if c.name == key)]


def _units(inputs: list[dict[str, Any]], batch_rows: int) -> list[list[dict[str, Any]]]:
    """The job's inputs as they are read: each table file alone, image files ``batch_rows`` at a time."""
    images = [i for i in inputs if i.get("kind") == "image"]
    tables = [[i] for i in inputs if i.get("kind") != "image"]
    return tables + [images[k : k + batch_rows] for k in range(0, len(images), batch_rows)]


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


class Quarantine:
    """The day's rows not scored, written as they come in ingest's quarantine layout (``_source``,
    ``_line``, ``_reason``, ``_raw`` and the schema's columns but the target, as text), each counted."""

    #: the most distinct reasons counted (a reason holds the value at fault: a bad day may have many)
    REASONS = 1000

    def __init__(self, sink, spec: PipelineSpec, counts: Counts):
        from freestack.ingest.validate import quarantine_schema

        self.sink, self.counts, self.writer = sink, counts, None
        self.schema = quarantine_schema(_checked_columns(spec, None))

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


def _checked_columns(spec: PipelineSpec, names: list[str] | None) -> list[Column]:
    """The schema's columns a folder file is checked against: those it has (``names``; None: all), the
    target left out (a file to score need not hold it)."""
    schema = spec.source.schema_
    return [c for c in schema.fields if c.name != schema.target and (names is None or c.name in names)]


def _pieces(spec: PipelineSpec, unit: list[dict[str, Any]]):
    """The :class:`Piece` s of a unit of input (:func:`_units`); the files' bytes must be the ones planned
    (each sha256 is checked first). A lake partition's rows are as ingest checked them; a folder's table
    files are checked here by ingest's validator (:func:`_checked_pieces`); image files are one row each
    of the model's one image column, their path in the folder the key."""
    for item in unit:
        if sha256_of(to_path(item["uri"])) != item["sha256"]:
            raise ScoreError(
                f"{item['uri']} changed after this run planned it (sha256 {item['sha256'][:12]}...): it "
                "was re-ingested or rewritten; clear this run's plan task to score it as it is now"
            )
    kind, item = unit[0].get("kind", "parquet"), unit[0]
    if kind == "image":
        batch = _image_batch(spec, unit)
        yield Piece(batch, batch.column(0), batch.column(0), batch.num_rows)
        return
    if "folder" in item:
        yield from _checked_pieces(spec, item)
        return
    offset, key = 0, spec.source.schema_.key
    for batch in _parquet_batches(spec, to_path(item["uri"])):
        keys = (
            batch.column(key) if key and key in batch.schema.names else _row_numbers(offset, batch.num_rows)
        )
        offset += batch.num_rows
        yield Piece(batch, keys, item["uri"], batch.num_rows)


def _checked_pieces(spec: PipelineSpec, item: dict[str, Any]):
    """A folder's table file, batch by batch, its values read as text and checked against the schema by
    ingest's validator, with ingest's rules: a value that does not parse as its column's type, a null key
    or a null in a column that is not nullable, a value outside ``allowed``, ``min`` or ``max``, an image
    that cannot be read (an image column holds paths under the folder, or a Parquet file's bytes); a line
    with too many or too few fields. Those rows are quarantined with the reason; the others are scored."""
    from freestack.ingest.validate import malformed_rows, validate_batch

    path, name, kind = to_path(item["uri"]), item["uri"].rsplit("/", 1)[-1], item["kind"]
    folder, opts = to_path(item["folder"]), spec.source.images

    def images(column: str, values: list):  # paths under the folder (a CSV's), or a Parquet file's images
        return check_images(column, values, folder, opts, inline=kind == "parquet")

    key, offset, malformed = spec.source.schema_.key, 0, []
    for text in (_csv_text if kind == "csv" else _parquet_text)(spec, path, malformed):
        columns = _checked_columns(spec, text.schema.names)
        checked = validate_batch(text, columns, source=name, key=key, images=images)
        good = checked.good.combine_chunks().to_batches()
        batch = good[0] if good else None
        kept = checked.kept
        keys = batch.column(key) if key and batch else _row_numbers(offset, text.num_rows).filter(kept)
        offset += text.num_rows
        yield Piece(batch, keys, name, text.num_rows, checked.rejected, checked.texts.filter(kept))
    if malformed:
        rows = malformed_rows(sorted(malformed, key=lambda r: r[0] or 0), _checked_columns(spec, None), name)
        yield Piece(None, None, name, len(malformed), rows)


def _row_numbers(start: int, n: int):
    import pyarrow as pa

    return pa.array(np.arange(start, start + n))


def _parquet_batches(spec: PipelineSpec, path):
    import pyarrow.parquet as pq

    with path.open("rb") as f:
        yield from pq.ParquetFile(f).iter_batches(batch_size=spec.score.batch_rows)


def _parquet_text(spec: PipelineSpec, path, malformed: list):
    """A folder's Parquet file in record batches of the schema's columns, each value as text (bytes stay
    bytes: an image column's values are the images), as ingest reads one."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with path.open("rb") as f:
        pf = pq.ParquetFile(f)
        wanted = [c.name for c in _checked_columns(spec, pf.schema_arrow.names)]
        for batch in pf.iter_batches(batch_size=spec.score.batch_rows, columns=wanted):
            cols = {}
            for name, col in zip(batch.schema.names, batch.columns, strict=True):
                t = col.type
                if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
                    cols[name] = pc.cast(col, pa.binary())
                else:
                    cols[name] = col if pa.types.is_string(t) else pc.cast(col, pa.string())
            yield pa.RecordBatch.from_pydict(cols)


def _csv_text(spec: PipelineSpec, path, malformed: list):
    """A folder's CSV in record batches, every value as text (bytes) as ingest reads one (the spec's
    ``source.csv`` options; a line with too many or too few fields goes to ``malformed``)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    opts = spec.source.csv
    with path.open("rb") as f:
        names = _csv_names(spec, f)
    if not names:
        return

    def on_invalid(row) -> str:
        why = f"malformed row: expected {row.expected_columns} fields, found {row.actual_columns}"
        malformed.append((row.number, why, row.text))
        return "skip"

    encoding = "utf8" if opts.encoding.lower().replace("-", "") == "utf8" else opts.encoding
    read = pcsv.ReadOptions(
        block_size=1 << 22, column_names=names, skip_rows=1 if opts.header else 0, encoding=encoding
    )
    parse = pcsv.ParseOptions(
        delimiter=opts.delimiter, quote_char=opts.quote_char, invalid_row_handler=on_invalid
    )
    convert = pcsv.ConvertOptions(
        column_types={n: pa.binary() for n in names},
        null_values=opts.null_values,
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    with path.open("rb") as f:
        try:
            reader = pcsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):  # a header alone
                return
            raise
        for batch in reader:
            for start in range(0, batch.num_rows, spec.score.batch_rows):
                yield batch.slice(start, spec.score.batch_rows)


def _image_batch(spec: PipelineSpec, unit: list[dict[str, Any]]):
    """Image files as rows: the model's image column, and each file's path in the folder as the key."""
    import pyarrow as pa

    images = [f for f, t in spec.feature_kinds.items() if t == "image"]
    if len(images) != 1 or len(spec.model_features) != 1:
        raise ScoreError(
            f"{unit[0]['uri']} is an image, but {spec.name}'s model takes {spec.model_features}: an "
            "input folder of images is for a model of one image column; put tables (Parquet, CSV) there"
        )
    rels = [i["uri"][len(i.get("folder", "").rstrip("/")) + 1 :] for i in unit]
    key = spec.source.schema_.key or "row"
    return pa.RecordBatch.from_pydict({key: rels, images[0]: [to_path(i["uri"]).read_bytes() for i in unit]})


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


#: rows of each batch kept for the monitor (the request log keeps as many of one request)
SAMPLE_ROWS = 256


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


def log_sample(spec: PipelineSpec, job: dict[str, Any], model: ScoringModel, sample: list) -> str:
    """Write the day's sample into the model's request log (``monitoring/<model>/requests/``) under one
    name per pipeline and day, so that ``<p>_monitor`` judges batch-scored days as it judges served
    traffic, and a rescore replaces its sample. Returns its URI."""
    import pyarrow.parquet as pq

    kinds = feature_kinds(spec)
    if model.generative:  # the prompt (a chat: its JSON) is one text column, as the model server logs it
        columns = [(model.model.columns.input_column, "text")]
    else:
        columns = [(f, kinds.get(f, "numeric")) for f in model.pre.features]
    request_log = RequestLog(
        monitoring_uri(spec.root, spec.model_name),
        rate=1.0,
        model=spec.model_name,
        version=job["version"],
        deployment=f"{spec.name}_score",
        columns=columns,
        classes=[] if model.generative else [str(c) for c in model.pre.classes],
    )
    table = request_log.generation_table(sample) if model.generative else request_log.table(sample)
    path = join(to_path(request_log.uri), "requests", hour_folder(sample[0][0]), f"score-{spec.name}.parquet")
    with AtomicWriter(path) as f:
        pq.write_table(table, f, compression="zstd")
    return str(path)


def manifest_of(
    spec: PipelineSpec,
    job: dict[str, Any],
    counts: Counts,
    model: ScoringModel,
    at: datetime,
    run: dict[str, str] | None,
    quarantine: str | None,
) -> dict[str, Any]:
    """The day's manifest (the record in the part's footer, copied to ``_manifest.json``): the version
    and its lineage, the inputs, the counts and the run; a writer may add its own keys."""
    return {
        "pipeline": spec.name,
        "model": spec.model_name,
        "ds": job["ds"],
        "version": job["version"],
        "version_uri": job["version_uri"],
        "lineage": str(join(to_path(job["version_uri"]), LINEAGE)),
        "trained_on": [
            {"ds": p.get("ds"), "sha256": p.get("sha256")} for p in model.lineage.get("partitions", [])
        ],
        "inputs": counts.per_input,
        "rows_in": counts.rows_in,
        "rows_scored": counts.rows_scored,
        "rows_quarantined": counts.rows_quarantined,
        "quarantine": quarantine,
        "empty": job.get("empty", []),
        "predictions": counts.predictions(model),
        "columns": list(spec.score.columns),
        "task": model.pre.task,
        "scored_at": at.isoformat(timespec="seconds"),
        "run": run or {},
        **({"cache": job["cache"]} if job.get("cache") else {}),
    }


# ---------------------------------------------------------------------------------------------------------
# reading scores back (the CLI's `freestack scores` and the views' Scores page)

_DS = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class UnreadableScores(ScoreError):
    """A scored day whose record cannot be read; the message says what is wrong."""


def scores_parent(spec: PipelineSpec) -> tuple[ObjectStoragePath, str, str]:
    """The folder holding the days' folders, and what a day folder's name has before and after its ds."""
    before, after = spec.score.output.split("{ds}", 1)
    parent, _, prefix = before.format(pipeline=spec.name, model=spec.model_name).rpartition("/")
    root = (
        to_path(parent)
        if "://" in parent
        else join(storage_root(spec.storage_root), *([parent] if parent else []))
    )
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

    try:
        with join(to_path(folder), PART).open("rb") as f:
            raw = (pq.read_metadata(f).metadata or {}).get(FOOTER_KEY)
    except FileNotFoundError:
        raise UnreadableScores(
            f"no {PART}: the day was never published (its score task failed, or is running)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UnreadableScores(f"{PART} cannot be read as Parquet ({str(exc)[:200]})") from None
    if not raw:
        raise UnreadableScores(
            f"{PART} has no scores manifest in its footer (key {FOOTER_KEY.decode()}): "
            "it was not written by the score task"
        )
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise UnreadableScores(f"the manifest in the footer of {PART} is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise UnreadableScores(f"the manifest in the footer of {PART} is not a JSON object")
    return manifest


def scored_days(spec: PipelineSpec) -> list[dict[str, Any]]:
    """The manifests of the scored days, newest first; a day that cannot be read is ``{"ds", "problem"}``;
    a day whose last run failed has ``failed`` (:func:`read_failure`), published scores or not."""
    out = []
    for ds in score_days(spec):
        folder = output_dir(spec, ds)
        try:
            day = read_scores_manifest(folder)
        except UnreadableScores as exc:
            day = {"ds": ds, "problem": str(exc)}
        if (failed := read_failure(folder)) is not None:
            day["failed"] = failed
        out.append(day)
    return out


def record_failure(
    spec: PipelineSpec, ds: str, error: str, *, task: str, run: dict[str, Any] | None = None
) -> None:
    """Write why ``ds``'s run failed into the day's folder (``_failed.json``), where the Scores page and
    ``freestack scores`` read it; the next run that publishes the day removes it. A record that cannot be
    written is logged, never raised over the error it records."""
    record = {
        "ds": ds,
        "error": error,
        "task": task,
        "run": run or {},
        "failed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        write_json(join(to_path(output_dir(spec, ds)), FAILED), record)
    except (OSError, FreestackError) as exc:
        log.warning("%s: the failure could not be recorded in %s (%s)", ds, output_dir(spec, ds), exc)


def read_failure(folder: str) -> dict[str, Any] | None:
    """The day's last failure (``error``, ``task``, ``run``, ``failed_at``); None when its last run
    published it."""
    try:
        record = json.loads(join(to_path(folder), FAILED).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"error": f"{FAILED} cannot be read ({str(exc)[:200]})"}
    if not isinstance(record, dict) or not record.get("error"):
        return {"error": f"{FAILED} holds no error"}
    return record


__all__ = [
    "SAMPLE_ROWS",
    "FOOTER_KEY",
    "QUARANTINE",
    "Counts",
    "Piece",
    "Quarantine",
    "ScoreError",
    "ScoringModel",
    "UnreadableScores",
    "days_of",
    "input_files",
    "key_type",
    "manifest_of",
    "plan",
    "read_day",
    "read_failure",
    "read_scores_manifest",
    "record_failure",
    "resolve_version",
    "score",
    "score_days",
    "scored_days",
    "scores_parent",
]
