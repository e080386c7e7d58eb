"""Object storage for freestack: one root (file://, s3://, data://), safe paths, atomic writes.

Importing this package registers the ``data://`` scheme with fsspec and universal-pathlib.
"""

from __future__ import annotations

from freestack.storage.objects import (
    AtomicWriter,
    WrittenObject,
    abort_all,
    atomic_write,
    list_objects,
    remove_stale_temporaries,
    remove_temporaries,
    sha256_of,
    subfolders,
    write_bytes,
    write_json,
)
from freestack.storage.paths import check_relative, join, uri_of
from freestack.storage.schemes import storage_root, to_path  # registers data:// with fsspec and upath

__all__ = [
    "AtomicWriter",
    "WrittenObject",
    "abort_all",
    "atomic_write",
    "check_relative",
    "join",
    "list_objects",
    "remove_stale_temporaries",
    "remove_temporaries",
    "sha256_of",
    "storage_root",
    "subfolders",
    "to_path",
    "uri_of",
    "write_bytes",
    "write_json",
]
