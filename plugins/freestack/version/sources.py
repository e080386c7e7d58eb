"""Where a version's files are read from: a local folder, or any storage freestack writes to.

A :class:`Source` reads one file of the version folder by its relative name (FileNotFoundError when
there is none), says whether the folder is on local disk, and reads a file of another folder (the base
an adapter was trained on). The model server brings its own (its plain clients of S3 and the Data API);
everything else reads through :mod:`freestack.storage`, imported only when used, so that this module
loads where fsspec is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from freestack.errors import FreestackError


class Source(Protocol):
    """The files of one version folder."""

    uri: str

    def read(self, name: str) -> bytes:
        """The bytes of ``name`` (a path relative to the folder); FileNotFoundError when absent."""
        ...

    def local_dir(self) -> str | None:
        """The folder on local disk, or None when it is elsewhere (then files are read one by one)."""
        ...

    def read_base(self, uri: str, name: str) -> bytes:
        """One file of another folder (an adapter's base in storage); FileNotFoundError when absent."""
        ...


def local_path_of(uri: str) -> str | None:
    """The local path a ``file://`` URI or a bare path names; None for any other scheme."""
    if uri.startswith("file://"):
        from urllib.parse import unquote

        return unquote(uri[len("file://") :])
    return uri if "://" not in uri else None


class LocalSource:
    """A folder on local disk (a ``file://`` URI or a path)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.folder = local_path_of(self.uri) or self.uri

    def read(self, name: str) -> bytes:
        return (Path(self.folder) / name).read_bytes()

    def local_dir(self) -> str | None:
        return self.folder

    def read_base(self, uri: str, name: str) -> bytes:
        local = local_path_of(uri)
        if local is None:
            return read_storage_file(uri, name)
        return (Path(local) / name).read_bytes()


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


def write_local(path: Path, data: bytes) -> None:
    """``data`` into a local file, which appears whole (written aside, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def source_of(uri: str) -> Source:
    """The source of a version URI: a local folder read directly, anything else through storage."""
    local = local_path_of(uri)
    if local is not None and os.path.isdir(local):
        return LocalSource(uri)
    return StorageSource(uri)


__all__ = [
    "LocalSource",
    "Source",
    "StorageSource",
    "local_path_of",
    "read_storage_file",
    "source_of",
    "write_local",
]
