"""Versions in freestack's storage: :class:`StorageSource` reads a version folder on any backend
(``file://``, ``s3://``, ``data://``) through :mod:`freestack.storage`, and :func:`source_of` picks the
source of a URI (a local folder read directly). The model server does not read through this module: it reads
versions with its own clients (:class:`freestack_server.core.fetch.FetchSource`). :mod:`freestack.storage` is
imported inside the functions that read: the package imports this module, and the serving images, which
import the package, have no universal-pathlib (storage's paths).
"""

from __future__ import annotations

import os

from freestack.errors import FreestackError
from freestack.version.sources import LocalSource, Source, local_path_of


class StorageSource:
    """A folder in freestack's storage (``s3://``, ``data://``, or a local root through fsspec)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    def read(self, name: str) -> bytes:
        return read_storage_file(self.uri, name)

    def local_dir(self) -> str | None:
        from freestack.storage import to_path
        from freestack.storage.objects import local_os_path

        return local_os_path(to_path(self.uri))

    def read_base(self, uri: str, name: str) -> bytes:
        return read_storage_file(uri, name)


def read_storage_file(uri: str, name: str) -> bytes:
    """One file of a folder in storage (a :data:`~freestack.ml.pretrained.BaseReader`): FileNotFoundError
    when it has none of that name, FreestackError when storage cannot be read."""
    from freestack.storage import join, to_path

    try:
        path = join(to_path(uri), name)
        if not path.exists():
            raise FileNotFoundError(f"{uri}/{name}")
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FreestackError(f"{uri}: {name} cannot be read from storage ({exc})") from None


class LocalStorageSource(LocalSource):
    """A local version folder whose adapter's base may be in object storage."""

    def read_base(self, uri: str, name: str) -> bytes:
        return read_storage_file(uri, name)


def source_of(uri: str) -> Source:
    """The source of a version URI: a local folder read directly, anything else through storage."""
    local = local_path_of(uri)
    if local is not None and os.path.isdir(local):
        return LocalStorageSource(uri)
    return StorageSource(uri)


__all__ = ["LocalStorageSource", "StorageSource", "read_storage_file", "source_of"]
