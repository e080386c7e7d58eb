"""Where ingest's data lies, and what a published partition says of itself: the landing folder of an
interval, its files, the lake's partitions and a partition's manifest.

Without pyarrow at import (it is loaded when a manifest is read from a part's footer), so that the
landing sensor and trigger, which the DAG file and the triggerer load, and the CLI name these places at
the top; :mod:`freestack.ingest.core` writes what they point to.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

from freestack.ingest.images import IMAGE_SUFFIXES
from freestack.storage import join, list_objects, sha256_of, storage_root, subfolders, to_path

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

PART = "part.parquet"
FOOTER_KEY = b"freestack.manifest"
MANIFEST = "_manifest.json"

#: with image columns, the only files of the landing folder read as tables (the rest: images, read through rows)
TABLE_SUFFIXES = frozenset((".csv", ".tsv", ".txt", ".parquet", ".jsonl", ".ndjson", ".json"))


def template_vars(spec: PipelineSpec, ds: str) -> dict[str, str]:
    y, m, d = ds.split("-")
    return {"pipeline": spec.name, "ds": ds, "ds_nodash": f"{y}{m}{d}", "yyyy": y, "mm": m, "dd": d}


def landing_dir(spec: PipelineSpec, ds: str) -> ObjectStoragePath:
    rel = spec.source.landing.format(**template_vars(spec, ds))
    if "://" in rel:
        return to_path(rel.rstrip("/"))
    return join(storage_root(spec.storage_root), rel)


def lake_dir(spec: PipelineSpec) -> ObjectStoragePath:
    return join(storage_root(spec.storage_root), "lake", spec.name)


def partition_dir(spec: PipelineSpec, ds: str) -> ObjectStoragePath:
    return join(lake_dir(spec), f"ds={ds}")


def has_images(spec: PipelineSpec) -> bool:
    """Whether the schema has an image column (image work is done only then)."""
    return any(c.type == "image" for c in spec.source.schema_.fields)


def landing_files(spec: PipelineSpec, ds: str) -> list[ObjectStoragePath]:
    """The interval's table files: the files directly in its landing folder, never an image file, and
    with image columns only files with a table suffix (TABLE_SUFFIXES; the images beside them are read
    through their rows). For an image folder: its images (see :func:`image_folder_files`)."""
    folder = landing_dir(spec, ds)
    if spec.source.format == "imagefolder":
        return image_folder_files(folder)
    files = [p for p in list_objects(folder) if not p.name.startswith("_")]
    if has_images(spec):
        return [p for p in files if p.suffix.lower() in TABLE_SUFFIXES]
    return [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]


def image_folder_files(folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """An image folder's files, by path: those of each label folder (``<label>/<file>``), and those at its
    top (to be quarantined: an image needs a label folder). Names starting with ``_`` or ``.`` are left
    out, and so are deeper folders."""
    folder.fs.invalidate_cache(folder.path)
    if not folder.exists():
        return []
    out: list[ObjectStoragePath] = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file():
            out.append(entry)
        else:
            out.extend(p for p in list_objects(entry) if not p.name.startswith("_"))
    return out


def read_manifest(spec: PipelineSpec, ds: str) -> dict[str, Any] | None:
    """The published partition's manifest (None when there is none). The part's footer is the record:
    ``_manifest.json`` is trusted when it copies that footer; when it does not (a publish stopped
    between its commit point and the copy) the manifest is rebuilt from the footer and the part's bytes."""
    folder = partition_dir(spec, ds)
    copy_path, part = join(folder, MANIFEST), join(folder, PART)
    copy = json.loads(copy_path.read_text()) if copy_path.exists() else None
    footer = _footer(part)
    if footer is None:
        return copy  # a partition from before footers
    digest = hashlib.sha256(footer).hexdigest()
    if copy and copy.get("footer_sha256") == digest:
        return copy
    log.warning(
        "%s does not match %s (a publish stopped before its copy); reading the part's footer", copy_path, part
    )
    record = json.loads(footer)
    q = record.pop("quarantine")
    record.update(
        partition=str(folder),
        footer_sha256=digest,
        part={"uri": str(part), "sha256": sha256_of(part), "size": part.stat().st_size},
        quarantine=None
        if q is None
        else {"uri": str(join(folder, q["name"])), "sha256": q["sha256"], "size": q["size"]},
    )
    return record


def _footer(part: ObjectStoragePath) -> bytes | None:
    """The manifest recorded in the part's Parquet footer; None without a part or a record."""
    import pyarrow.parquet as pq  # the module stays free of pyarrow until a footer is read

    try:
        with part.open("rb") as f:
            meta = pq.read_metadata(f).metadata or {}
    except FileNotFoundError:
        return None
    return meta.get(FOOTER_KEY)


def lake_partitions(spec: PipelineSpec, *, until: str | None = None) -> list[str]:
    """The ds values of published partitions, sorted; with ``until``, only ds <= until."""
    folder = lake_dir(spec)
    out = []
    for name in subfolders(folder):
        if name.startswith("ds=") and join(folder, name, PART).exists():
            ds = name[3:]
            if until is None or ds <= until:
                out.append(ds)
    return sorted(out)
