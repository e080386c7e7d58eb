"""URIs as paths: :func:`to_path` makes an ``ObjectStoragePath`` (Airflow's, over fsspec) of any storage URI,
and :func:`register` makes ``data://`` one of fsspec's and universal-pathlib's schemes.

Both libraries ship an unrelated read-only ``data:`` (RFC 2397 inline data URL) handler; freestack's
``data://`` namespace replaces it in the processes that import :mod:`freestack.storage`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fsspec
from upath.implementations.cloud import CloudPath
from upath.registry import register_implementation as _register_upath

from freestack.errors import FreestackError
from freestack.settings import default_storage_root

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

DATA_FS = "freestack.storage.datafs._DefaultDataFileSystem"


class DataPath(CloudPath):
    """UPath flavour for ``data://owner/collection/key`` (netloc is the owner)."""

    __slots__ = ()


def register() -> None:
    """Make ``data://`` resolve to freestack's filesystem in fsspec and universal-pathlib."""
    fsspec.register_implementation("data", DATA_FS, clobber=True)
    # import the class now (fsspec imports it by name): universal-pathlib takes a protocol's separator from
    # the class fsspec has loaded, else from the RFC 2397 handler's, which has none
    fsspec.get_filesystem_class("data")
    _register_upath("data", DataPath, clobber=True)


def to_path(uri: Any, *, conn_id: str | None = None) -> ObjectStoragePath:
    """An ObjectStoragePath for a URI (``file://``, ``s3://[conn@]bucket/key``, ``data://...``); ``conn_id``
    names the connection when the URI does not."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(uri, ObjectStoragePath):
        return uri
    text = str(uri)
    if "://" not in text:
        raise FreestackError(
            f"{text!r} is not a storage URI; use file:///abs/path, s3://conn@bucket/prefix or data://owner/coll"
        )
    return ObjectStoragePath(text, conn_id=conn_id) if conn_id else ObjectStoragePath(text)


def storage_root(override: str | None = None) -> ObjectStoragePath:
    """The storage root as an ObjectStoragePath: the override (a spec's ``storage_root``), else the
    ``storage_root`` setting, else ``file://<home>/.freestack/storage``."""
    return to_path(override or default_storage_root())


register()

__all__ = ["DataPath", "register", "storage_root", "to_path"]
