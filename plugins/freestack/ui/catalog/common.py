"""What every page family of the catalog reads with: the storage reads (one JSON file, many side by
side, a folder's subfolders), the pipelines the pages show, and the storage roots and registered models
they show whoever made them (a pipeline, a reusable operator, a notebook)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from freestack.errors import SpecError
from freestack.registry.core import ModelRegistry, registered_models
from freestack.settings import default_storage_root
from freestack.spec import discover_specs

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec

#: storage reads in flight at once for one page
READERS = 16
T = TypeVar("T")
R = TypeVar("R")


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, :data:`READERS` at a time (storage reads wait on I/O, not the CPU)."""
    items = list(items)
    if len(items) < 4:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(READERS, len(items)), thread_name_prefix="freestack-ui") as pool:
        return list(pool.map(fn, items))


def read_json(path: ObjectStoragePath) -> Any:
    """The JSON file's content; None when it is missing."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def _cat(fs: Any, path: str) -> bytes | None:
    try:
        return fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def read_many(folder: ObjectStoragePath, rels: list[str]) -> dict[str, Any]:
    """The JSON files ``rels`` under ``folder``, fetched together: one batched call on an async filesystem
    (S3: fsspec's ``cat`` of many paths, requests in flight at once; what it did not return is asked
    again file by file, as ``data://`` needs), in threads on the others, one after the other on local
    disk. A missing or unreadable file is left out."""
    fs, base = folder.fs, folder.path.rstrip("/")
    paths = [f"{base}/{rel}" for rel in rels]
    if not paths:
        return {}
    if getattr(fs, "async_impl", False):
        got = fs.cat(paths, on_error="omit")
        data = [got.get(p) for p in paths]
        again = [k for k, raw in enumerate(data) if raw is None]
        for k, raw in zip(again, parallel(lambda k: _cat(fs, paths[k]), again), strict=True):
            data[k] = raw
    elif "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        data = [_cat(fs, p) for p in paths]
    else:
        data = parallel(lambda p: _cat(fs, p), paths)
    out = {}
    for rel, raw in zip(rels, data, strict=True):
        try:
            out[rel] = json.loads(raw) if raw is not None else None
        except ValueError:
            continue
    return {k: v for k, v in out.items() if v is not None}


def numbers_in(d: dict[str, Any] | None) -> dict[str, float]:
    return {
        k: float(v) for k, v in (d or {}).items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


class Pipeline(BaseModel):
    name: str
    model: str
    root: str
    description: str = ""
    train_dag: str
    ingest_dag: str
    trains: bool


def pipelines() -> list[tuple[Pipeline, PipelineSpec]]:
    """Every valid pipeline spec (an invalid one is the spec-errors DAG file's import error)."""
    return [
        (
            Pipeline(
                name=name,
                model=spec.model_name,
                root=str(spec.root),
                description=spec.description or "",
                train_dag=f"{name}_train",
                ingest_dag=f"{name}_ingest",
                trains=spec.source.schema_.target is not None,
            ),
            spec,
        )
        for name, spec in discover_specs().items()
        if not isinstance(spec, SpecError)
    ]


def storage_roots(found: list[tuple[Pipeline, PipelineSpec]]) -> list[str]:
    """The storage roots the pages read, each once: the storage_root setting's (where the reusable
    operators and ``freestack serve`` read and write unless told otherwise) and every pipeline's of ``found``."""
    return list(dict.fromkeys(r.rstrip("/") for r in [default_storage_root(), *(p.root for p, _ in found)]))


def unpiped_models(found: list[tuple[Pipeline, PipelineSpec]]) -> list[ModelRegistry]:
    """The registry of every model registered under :func:`storage_roots` that no training pipeline of
    ``found`` trains there: a reusable operator's, a notebook's (the pages show what the registry holds)."""
    piped = {(p.root.rstrip("/"), p.model) for p, _ in found if p.trains}
    return [
        ModelRegistry(root, name)
        for root in storage_roots(found)
        for name in registered_models(root)
        if (root, name) not in piped
    ]


__all__ = [
    "Pipeline",
    "READERS",
    "numbers_in",
    "parallel",
    "pipelines",
    "read_json",
    "read_many",
    "storage_roots",
    "unpiped_models",
]
