"""``data://`` — an Algorithmia-style Data API namespace as an fsspec filesystem.

``data://<owner>/<collection>/<path>`` maps onto a backing store (a local folder or an S3 prefix)
named by a ``freestack_data`` connection; ``data://.my/<collection>`` means the connection's owner.
The module follows the provider filesystem contract (``schemes`` + ``get_fs``), so
``ObjectStoragePath("data://.my/models/x.json")`` works in every Airflow process.
"""

from __future__ import annotations

from typing import Any

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from upath.implementations.cloud import CloudPath
from upath.registry import register_implementation as _register_upath

from freestack.errors import UnsafePathError
from freestack.storage.paths import check_relative

schemes = ["data"]
MY = ".my"


class DataFileSystem(DirFileSystem):
    """A DirFileSystem over the backing store that resolves ``.my`` and refuses escaping paths."""

    protocol = "data"
    root_marker = ""
    sep = "/"  # a class attribute: universal-pathlib reads it from the class
    cachable = False

    def __init__(self, path: str, fs: Any, owner: str, **kwargs: Any):
        super().__init__(path=path, fs=fs, **kwargs)
        self.owner = owner

    @classmethod
    def from_config(cls, config) -> DataFileSystem:
        from freestack.storage.objects import to_path

        backing = to_path(config.root)
        return cls(path=backing.path, fs=backing.fs, owner=config.owner)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("data://"):
            path = path[len("data://") :]
        elif path.startswith("data:"):
            path = path[len("data:") :]
        return path.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path):
        """``data://<conn_id>@<owner>/...`` names the connection: plain fsspec picks it up from here."""
        head = DataFileSystem._strip_protocol(path).split("/", 1)[0]
        conn_id, at, _ = head.rpartition("@")
        return {"conn_id": conn_id or None} if at else {}

    def resolve(self, path: str) -> str:
        """``owner/collection/...`` with ``.my`` replaced and every segment checked."""
        path = self._strip_protocol(path)
        head, sep, rest = path.partition("/")
        if "@" in head:  # data://<conn_id>@<owner>/...: the connection was chosen when this fs was built
            path = head.rpartition("@")[2] + sep + rest
        if not path:
            return ""
        rel = check_relative(path, what="data:// path")
        head, _, rest = rel.partition("/")
        if head == MY:
            head = self.owner
        if head.startswith("."):
            raise UnsafePathError(f"data:// owner {head!r} is not valid; use data://.my/... or a user name")
        return f"{head}/{rest}" if rest else head

    def local_path(self, path: str) -> str | None:
        """The OS path behind ``path`` when the backing store is a local folder, else None."""
        return self._join(path) if self.is_local else None

    def _join(self, path):
        if isinstance(path, str):
            return super()._join(self.resolve(path))
        return super()._join(path)

    def __reduce__(self):
        return (_rebuild, (self.path, self.fs, self.owner))

    def __repr__(self) -> str:
        return f"DataFileSystem(owner={self.owner!r}, root={self.fs.unstrip_protocol(self.path)!r})"


def _rebuild(path, fs, owner):
    return DataFileSystem(path=path, fs=fs, owner=owner)


class DataPath(CloudPath):
    """UPath flavour for ``data://owner/collection/key`` (netloc is the owner)."""

    __slots__ = ()


def get_fs(conn_id: str | None, storage_options: dict[str, Any] | None = None) -> DataFileSystem:
    from freestack.hooks.datastore import DataStoreHook

    return DataStoreHook(conn_id).get_conn()


def register() -> None:
    """Make ``data://`` resolve to this filesystem in fsspec and universal-pathlib.

    Both libraries ship an unrelated read-only ``data:`` (RFC 2397 inline data URL) handler;
    freestack's ``data://`` namespace replaces it in the processes that import freestack.storage.
    """
    fsspec.register_implementation("data", _DefaultDataFileSystem, clobber=True)
    _register_upath("data", DataPath, clobber=True)


class _DefaultDataFileSystem(DataFileSystem):
    """What plain ``fsspec.filesystem("data")`` returns: the default connection's store."""

    def __new__(cls, *args, **kwargs):
        return get_fs(kwargs.pop("conn_id", None))


register()
