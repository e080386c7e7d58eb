"""The lake as a day's input (``score.input: lake`` or ``lake:<pipeline>``): the day's partition's part, its
rows as ingest checked them when they were ingested, read in record batches of ``score.batch_rows``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freestack.errors import ScoreError, SpecError
from freestack.ingest.lake import read_manifest
from freestack.score.rows import Piece, row_numbers
from freestack.spec import load_spec, spec_file
from freestack.storage import to_path

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec


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


def lake_files(spec: PipelineSpec, ds: str) -> list[dict[str, Any]]:
    """``ds``'s input: the lake partition's part, ``{"uri", "sha256", "size"}`` (the sha256 its manifest
    recorded); [] when the day has no partition."""
    manifest = read_manifest(lake_spec(spec), ds)
    if not manifest or not manifest.get("part"):
        return []
    part = manifest["part"]
    return [{"uri": part["uri"], "sha256": part["sha256"], "size": part.get("size", 0)}]


def lake_pieces(spec: PipelineSpec, item: dict[str, Any]):
    """The part's rows as :class:`~freestack.score.rows.Piece` s, batch by batch, keyed by the schema's key
    (else their row numbers)."""
    import pyarrow.parquet as pq

    offset, key = 0, spec.source.schema_.key
    with to_path(item["uri"]).open("rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=spec.score.batch_rows):
            keyed = key and key in batch.schema.names
            keys = batch.column(key) if keyed else row_numbers(offset, batch.num_rows)
            offset += batch.num_rows
            yield Piece(batch, keys, item["uri"], batch.num_rows)
