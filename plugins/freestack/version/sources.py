"""Where a version's files are read from.

A :class:`Source` reads one file of the version folder by its relative name (FileNotFoundError when
there is none), says whether the folder is on local disk, and reads a file of another folder (the base
an adapter was trained on). :class:`LocalSource` reads a local folder; :mod:`freestack.version.stored`
reads any storage freestack writes to; the model server brings its own (its plain clients of S3 and the
Data API). This module imports neither storage nor Airflow: the model server imports it.
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
            raise FreestackError(
                f"{uri}: {name} is not on local disk; open the version with a source that reads "
                "object storage (freestack.version.stored.source_of)"
            )
        return (Path(local) / name).read_bytes()


def write_local(path: Path, data: bytes) -> None:
    """``data`` into a local file, which appears whole (written aside, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


__all__ = ["LocalSource", "Source", "local_path_of", "write_local"]
