"""One day as both writers go through it (a predicting version's, :mod:`freestack.score.predictions_writer`,
and a text-generation version's, :mod:`freestack.score.answers_writer`): its input files, by input kind
(:mod:`freestack.score.lake_input`, :mod:`freestack.score.folder_input`), their rows read piece by piece
(:func:`read_day`), the key's type, the manifest, and the monitor's sample of the day."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freestack.errors import ScoreError
from freestack.monitor.core import feature_kinds
from freestack.score.folder_input import checked_pieces, csv_names, folder_files, image_piece
from freestack.score.lake_input import lake_files, lake_pieces
from freestack.score.published import QUARANTINE
from freestack.storage import AtomicWriter, join, sha256_of, to_path
from freestack.version.files import LINEAGE
from freestack_server.core.requestlog import RequestLog, hour_folder, monitoring_uri

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    import pyarrow as pa
    from airflow.sdk import ObjectStoragePath

    from freestack.score.model import ScoringModel
    from freestack.score.rows import Counts, Piece, Quarantine
    from freestack.spec import PipelineSpec

#: rows of each batch kept for the monitor (the request log keeps as many of one request)
SAMPLE_ROWS = 256


def input_files(spec: PipelineSpec, ds: str) -> list[dict[str, Any]]:
    """``ds``'s input files, ``{"uri", "sha256", "size"}`` each ([] when there is none): the lake
    partition's part (the sha256 its manifest recorded), or the files of the input folder."""
    return folder_files(spec, ds) if spec.score.lake_pipeline is None else lake_files(spec, ds)


def input_names(spec: PipelineSpec, item: dict[str, Any]) -> list[str] | None:
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
        return csv_names(spec, f)


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


def _units(inputs: list[dict[str, Any]], batch_rows: int) -> list[list[dict[str, Any]]]:
    """The job's inputs as they are read: each table file alone, image files ``batch_rows`` at a time."""
    images = [i for i in inputs if i.get("kind") == "image"]
    tables = [[i] for i in inputs if i.get("kind") != "image"]
    return tables + [images[k : k + batch_rows] for k in range(0, len(images), batch_rows)]


def _pieces(spec: PipelineSpec, unit: list[dict[str, Any]]):
    """The :class:`~freestack.score.rows.Piece` s of a unit of input (:func:`_units`); the files' bytes must
    be the ones planned (each sha256 is checked first). A lake partition's rows are as ingest checked them;
    a folder's table files are checked by ingest's validator; image files are one row each of the model's
    one image column, their path in the folder the key."""
    for item in unit:
        if sha256_of(to_path(item["uri"])) != item["sha256"]:
            raise ScoreError(
                f"{item['uri']} changed after this run planned it (sha256 {item['sha256'][:12]}...): it "
                "was re-ingested or rewritten; clear this run's plan task to score it as it is now"
            )
    if unit[0].get("kind") == "image":
        yield image_piece(spec, unit)
    elif "folder" in unit[0]:
        yield from checked_pieces(spec, unit[0])
    else:
        yield from lake_pieces(spec, unit[0])


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
    folder: ObjectStoragePath,
) -> dict[str, Any]:
    """The day's manifest (the record in the part's footer, copied to ``_manifest.json``): the
    :func:`day_record`, the version's lineage and the partitions it was trained on, and the predictions;
    a writer may add its own keys."""
    return {
        **day_record(spec, job, counts, at, run, folder),
        "lineage": str(join(to_path(job["version_uri"]), LINEAGE)),
        "trained_on": [
            {"ds": p.get("ds"), "sha256": p.get("sha256")} for p in model.lineage.get("partitions", [])
        ],
        "predictions": counts.predictions(model),
        "columns": list(spec.score.columns),
        "task": model.pre.task,
    }


def day_record(
    spec: PipelineSpec,
    job: dict[str, Any],
    counts: Counts,
    at: datetime,
    run: dict[str, str] | None,
    folder: ObjectStoragePath,
) -> dict[str, Any]:
    """What every day's manifest holds, whoever answered it (a version, a teacher): what answered, the
    inputs, the counts (the quarantine's place in the day's ``folder``, when rows were not scored), when
    and the run."""
    return {
        "pipeline": spec.name,
        "model": spec.model_name,
        "ds": job["ds"],
        "version": job["version"],
        "version_uri": job["version_uri"],
        "inputs": counts.per_input,
        "rows_in": counts.rows_in,
        "rows_scored": counts.rows_scored,
        "rows_quarantined": counts.rows_quarantined,
        "quarantine": str(join(folder, QUARANTINE)) if counts.rows_quarantined else None,
        "empty": job.get("empty", []),
        "scored_at": at.isoformat(timespec="seconds"),
        "run": run or {},
        **({"cache": job["cache"]} if job.get("cache") else {}),
    }
