"""A folder as a day's input (``score.input``: a path with ``{ds}``): its table files (Parquet, CSV), their
rows checked by ingest's validator against the spec's schema as they are read (the rows it refuses
quarantined with the reason), or a folder of images, one row each, for a model of one image column."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freestack.errors import ScoreError
from freestack.ingest.images import IMAGE_SUFFIXES, check_images
from freestack.score.rows import Piece, checked_columns, row_numbers
from freestack.storage import join, list_objects, sha256_of, to_path

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec

#: what a folder input's files are: tables (Parquet, CSV) or images (one row each, for a model of one image)
FOLDER_KINDS = {".parquet": "parquet", ".csv": "csv"}


def kind_of(name: str) -> str | None:
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
        if kind_of(r) == "image" and not any(x.startswith(".") for x in r.split("/"))
    ]


def folder_files(spec: PipelineSpec, ds: str) -> list[dict[str, Any]]:
    """``ds``'s files in the input folder, ``{"uri", "sha256", "size", "kind", "folder"}`` each ([] when
    there is none): its tables, or, in a folder of images only, the images at any depth (label folders)."""
    folder = to_path(spec.score.input.format(ds=ds, pipeline=spec.name))
    files = [p for p in list_objects(folder) if kind_of(p.name)] if folder.exists() else []
    if not files or all(kind_of(p.name) == "image" for p in files):
        files = _images_under(folder)  # an image folder: images at any depth (label folders)
    else:  # images beside tables are the tables' image files
        files = [p for p in files if kind_of(p.name) != "image"]
    return [file_item(p, folder) for p in files]


def file_item(path: ObjectStoragePath, folder: ObjectStoragePath) -> dict[str, Any]:
    """An input file as a day's job lists it."""
    return {
        "uri": str(path),
        "sha256": sha256_of(path),
        "size": path.stat().st_size,
        "kind": kind_of(path.name),
        "folder": str(folder),
    }


def csv_names(spec: PipelineSpec, f) -> list[str] | None:
    """A CSV's column names: its header's (None when it has none), or the schema's without a header."""
    if not spec.source.csv.header:
        return [c.name for c in spec.source.schema_.fields]
    names = spec.source.csv.header_names(f)
    return names if any(names) else None


def checked_pieces(spec: PipelineSpec, item: dict[str, Any]):
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
        columns = checked_columns(spec, text.schema.names)
        checked = validate_batch(text, columns, source=name, key=key, images=images)
        good = checked.good.combine_chunks().to_batches()
        batch = good[0] if good else None
        kept = checked.kept
        keys = batch.column(key) if key and batch else row_numbers(offset, text.num_rows).filter(kept)
        offset += text.num_rows
        yield Piece(batch, keys, name, text.num_rows, checked.rejected, checked.texts.filter(kept))
    if malformed:
        rows = malformed_rows(sorted(malformed, key=lambda r: r[0] or 0), checked_columns(spec, None), name)
        yield Piece(None, None, name, len(malformed), rows)


def _parquet_text(spec: PipelineSpec, path, malformed: list):
    """A folder's Parquet file in record batches of the schema's columns, each value as text (bytes stay
    bytes: an image column's values are the images), as ingest reads one."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with path.open("rb") as f:
        pf = pq.ParquetFile(f)
        wanted = [c.name for c in checked_columns(spec, pf.schema_arrow.names)]
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

    with path.open("rb") as f:
        names = csv_names(spec, f)
    if not names:
        return
    read, parse, convert = spec.source.csv.arrow_options(names, malformed, block_size=1 << 22)
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


def image_piece(spec: PipelineSpec, unit: list[dict[str, Any]]) -> Piece:
    """Image files as one piece of rows: the model's image column, and each file's path in the folder as
    the key."""
    import pyarrow as pa

    images = [f for f, t in spec.feature_kinds.items() if t == "image"]
    if len(images) != 1 or len(spec.model_features) != 1:
        raise ScoreError(
            f"{unit[0]['uri']} is an image, but {spec.name}'s model takes {spec.model_features}: an "
            "input folder of images is for a model of one image column; put tables (Parquet, CSV) there"
        )
    rels = [i["uri"][len(i.get("folder", "").rstrip("/")) + 1 :] for i in unit]
    key = spec.source.schema_.key or "row"
    batch = pa.RecordBatch.from_pydict({key: rels, images[0]: [to_path(i["uri"]).read_bytes() for i in unit]})
    return Piece(batch, batch.column(0), batch.column(0), batch.num_rows)
