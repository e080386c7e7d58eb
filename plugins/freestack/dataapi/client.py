"""An Algorithmia-style Data API client over freestack's ``data://`` storage.

For code ported from the official Algorithmia Python client (``algorithmia==2.0.5``)::

    # before                                   # after
    import Algorithmia                         from freestack.storage import client as data
    c = Algorithmia.client(API_KEY)            c = data.client()          # or DataClient("my_conn")
    c.file("data://.my/coll/x.json").getJson() c.file("data://.my/coll/x.json").getJson()
    c.dir("data://.my/coll").files()           c.dir("data://.my/coll").files()

The names follow Algorithmia (``getBytes``, ``putJson``, ``files()``...). The storage behind them is
the ``freestack_data`` connection (or the embedded default, see freestack.hooks.datastore), and:

- every write is atomic (freestack.storage.objects): a reader sees the old content or the new one,
  never a partial file, even if the writer is killed;
- paths are checked before anything is touched: ``..``/``.`` segments, absolute paths and their
  percent-encoded forms raise :class:`~freestack.errors.UnsafePathError`;
- names starting with ``.`` are reserved for freestack's hidden temporaries: they are never listed,
  and this client refuses to address them;
- a missing file or directory raises :class:`DataApiError`, whose message names the path and what to do.

Differences from Algorithmia worth knowing when porting:

- only ``data://`` is served (Algorithmia connectors such as ``s3://`` or ``dropbox://`` are not);
  use :func:`freestack.storage.to_path` for ``file://`` and ``s3://`` URIs;
- ACLs: ``DataDirectory.create(acl=...)``, ``get_permissions()`` and ``update_permissions()`` work on
  collections as in Algorithmia (``Algorithmia.acl.ReadAcl`` objects, freestack's
  ``freestack.storage.acl.Acl`` or a plain ``{"read": [...]}``), and every call is checked against
  them for the connection's user: another owner's private collection raises :class:`DataApiError`
  (also a ``PermissionError``). See freestack.storage.acl for private / public / team;
- ``DataDirectory.create()`` also creates missing parents, and ``put*`` creates missing directories;
- ``DataFile.sha256`` (an extra) holds the content hash after a ``put*``, for lineage.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from enum import Enum
from typing import Any

from freestack.dataapi.listing import modified_at
from freestack.errors import FreestackError, UnsafePathError
from freestack.storage import to_path
from freestack.storage.acl import Acl, AclError
from freestack.storage.objects import atomic_write, write_bytes
from freestack.storage.paths import check_relative

__all__ = [
    "DataAccessDenied",
    "DataApiError",
    "DataClient",
    "DataDirectory",
    "DataFile",
    "DataObject",
    "DataObjectType",
    "client",
]

SCHEME = "data://"
MY = ".my"
API_PREFIX = "/v1/data/"  # what Algorithmia's ``.url`` holds; the path a Data API service will serve
CHUNK = 8 * 1024 * 1024


class DataApiError(FreestackError):
    """A Data API call failed: missing file or directory, wrong kind of object, non-empty delete...

    Same name as ``Algorithmia.errors.DataApiError`` so ported ``except DataApiError`` blocks keep working.
    """


class DataAccessDenied(DataApiError, PermissionError):
    """The collection's ACL does not allow this call for the connection's user."""


class DataObjectType(Enum):
    file = "file"
    directory = "directory"


def _normalize(data_url: Any, *, what: str) -> str:
    """``owner/collection/...`` from ``data://owner/...``, ``owner/...`` or ``/owner/...``, checked."""
    if isinstance(data_url, os.PathLike):
        data_url = os.fspath(data_url)
    if not isinstance(data_url, str):
        raise TypeError(
            f"{what} must be a string like 'data://.my/collection/name', got {type(data_url).__name__}"
        )
    text = data_url
    if text.startswith(SCHEME):
        text = text[len(SCHEME) :]
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise DataApiError(
            f"{data_url!r}: this client serves data:// only, not {scheme}://. Use 'data://.my/<collection>/...'"
            ", or freestack.storage.to_path() for file:// and s3:// URIs"
        )
    elif text.startswith("/"):  # Algorithmia accepts '/owner/collection/...'
        text = text[1:]
    rel = check_relative(text, what=what)
    if not rel:
        raise DataApiError(
            f"{what} {data_url!r} is empty; give 'data://.my/<collection>/...' or 'data://<owner>/...'"
        )
    owner, *rest = rel.split("/")
    if owner != MY and owner.startswith("."):
        raise UnsafePathError(
            f"{what} {data_url!r}: owner {owner!r} is not valid; use data://.my/... or a user name"
        )
    if ":" in owner or "@" in owner:
        raise DataApiError(
            f"{what} {data_url!r}: owner {owner!r} is not valid; write 'data://.my/...' or 'data://<user>/...'"
            + (", and pass the connection as DataClient(conn_id=...)" if "@" in owner else "")
        )
    for segment in rest:
        if segment.startswith("."):
            raise DataApiError(
                f"{what} {data_url!r}: {segment!r} starts with '.', which is reserved for freestack's hidden "
                "temporaries (never listed); rename it without the leading dot"
            )
    return rel


def _to_datetime(info: dict[str, Any]) -> datetime | None:
    """Last-modified time as a naive UTC datetime, like Algorithmia's ``last_modified``."""
    modified = modified_at(info)
    return modified.replace(tzinfo=None) if modified else None


@contextmanager
def _as_api_error(prefix: str = "") -> Iterator[None]:
    """A FreestackError of the store becomes a DataApiError (its message after ``prefix``), as
    Algorithmia's API errors were; a DataApiError passes unchanged."""
    try:
        yield
    except DataApiError:
        raise
    except FreestackError as exc:
        raise DataApiError(f"{prefix}{exc}") from exc


def _acl(acl: Any):
    """A freestack Acl from what Algorithmia code passes: an ``Algorithmia.acl.Acl`` (``to_api_param()``),
    a freestack Acl, a ``{"read": [...]}`` dict, or None."""
    if acl is None or isinstance(acl, Acl):
        return acl
    if hasattr(acl, "to_api_param"):
        acl = acl.to_api_param()
    try:
        return Acl.parse(acl, where="acl")
    except AclError as exc:
        raise DataApiError(str(exc)) from exc


class DataClient:
    """Entry point, like ``Algorithmia.client()``: ``client.file(uri)`` and ``client.dir(uri)``.

    ``conn_id`` names a ``freestack_data`` connection; None means ``freestack_data_default``
    (or, when that does not exist, the embedded default store).
    """

    def __init__(self, conn_id: str | None = None):
        self.conn_id = conn_id

    def file(self, dataUrl: str) -> DataFile:  # noqa: N803  (Algorithmia's parameter name)
        return DataFile(self, dataUrl)

    def dir(self, dataUrl: str) -> DataDirectory:  # noqa: N803
        return DataDirectory(self, dataUrl)

    def _path(self, rel: str):
        return to_path(SCHEME + rel, conn_id=self.conn_id)

    @property
    def fs(self):
        """The DataFileSystem behind this client."""
        return self._path(MY).fs

    @property
    def owner(self) -> str:
        """Who ``data://.my`` means for this client's connection."""
        return self.fs.owner

    def __repr__(self) -> str:
        return f"DataClient(conn_id={self.conn_id!r})"


def client(conn_id: str | None = None) -> DataClient:
    """``freestack.dataapi.client.client()`` in place of ``Algorithmia.client()``."""
    return DataClient(conn_id)


class DataObject:
    """What DataFile and DataDirectory share: ``path``, ``url``, ``uri``, ``getName()``, the type."""

    _kind = "object"

    def __init__(self, client: DataClient, dataUrl: str, data_object_type: DataObjectType):  # noqa: N803
        self.client = client
        self.data_object_type = data_object_type
        #: ``owner/collection/...`` exactly as given (``.my`` kept), without ``data://``, like Algorithmia
        self.path = _normalize(dataUrl, what=f"data:// {self._kind} path")
        #: the Data API URL path, like Algorithmia (``/v1/data/.my/collection/name``)
        self.url = API_PREFIX + self.path
        self._opath = None

    # Algorithmia's DataObject API
    def is_file(self) -> bool:
        return self.data_object_type is DataObjectType.file

    def is_dir(self) -> bool:
        return self.data_object_type is DataObjectType.directory

    def get_type(self) -> DataObjectType:
        return self.data_object_type

    def getName(self) -> str:  # noqa: N802
        return self.path.rsplit("/", 1)[-1]

    @property
    def uri(self) -> str:
        """The ObjectStoragePath URI (``data://[conn@].my/...``) other freestack tasks accept."""
        return str(self.storage_path)

    @property
    def storage_path(self):
        """This object as an ObjectStoragePath."""
        if self._opath is None:
            self._opath = self.client._path(self.path)
        return self._opath

    @property
    def _fs(self):
        return self.storage_path.fs

    def _info(self) -> dict[str, Any] | None:
        try:
            return self._fs.info(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as exc:
            raise DataAccessDenied(f"{self._where()}: {exc}") from exc

    def _where(self) -> str:
        """``data://.my/c/x`` plus where ``.my`` points, for error messages."""
        text = SCHEME + self.path
        if self.path.split("/", 1)[0] == MY:
            with suppress(Exception):  # the connection itself is broken: the message still names the path
                text += f" (owner {self._fs.owner!r})"
        return text

    @contextmanager
    def _storage_errors(self, action: str) -> Iterator[None]:
        """OSErrors from the backing store become DataApiError, as Algorithmia's API errors were."""
        try:
            yield
        except FileNotFoundError as exc:
            raise DataApiError(f"unable to {action} {self._where()}: it does not exist ({exc})") from exc
        except PermissionError as exc:
            raise DataAccessDenied(f"unable to {action} {self._where()}: {exc}") from exc
        except OSError as exc:
            raise DataApiError(f"unable to {action} {self._where()}: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DataObject):
            return NotImplemented
        return (type(self), self.path, self.client.conn_id) == (type(other), other.path, other.client.conn_id)

    def __hash__(self) -> int:
        return hash((type(self), self.path, self.client.conn_id))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({SCHEME + self.path!r})"


class DataFile(DataObject):
    """A file: ``data://<owner>/<collection>/<name>`` (Algorithmia's DataFile)."""

    _kind = "file"

    def __init__(self, client: DataClient, dataUrl: str):  # noqa: N803
        super().__init__(client, dataUrl, DataObjectType.file)
        if self.path.count("/") < 2:
            raise DataApiError(
                f"{SCHEME + self.path!r} is not a file path: files live in a collection, "
                f"e.g. 'data://.my/<collection>/{self.getName()}'"
            )
        #: set by exists(), the get* calls, put* and directory listings (None until then)
        self.size: int | None = None
        self.last_modified: datetime | None = None
        #: sha256 of the content written by the last put* (a freestack extra, for lineage)
        self.sha256: str | None = None

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        """Record ``size`` and ``last_modified`` from an fsspec info dict."""
        size = attributes.get("size")
        self.size = int(size) if size is not None else None
        self.last_modified = _to_datetime(attributes)

    # -- reads -----------------------------------------------------------------------------------------

    def existsWithError(self) -> tuple[bool, str | None]:  # noqa: N802
        """``(exists, why not)``, like Algorithmia's."""
        info = self._info()
        if info is None:
            return False, f"{self._where()} does not exist"
        if info.get("type") != "file":
            return False, f"{self._where()} is a directory, not a file"
        self.set_attributes(info)
        return True, None

    def exists(self) -> bool:
        return self.existsWithError()[0]

    def _require(self) -> None:
        info = self._info()
        if info is None:
            parent = SCHEME + self.path.rsplit("/", 1)[0]
            raise DataApiError(
                f"unable to get file {self._where()}: it does not exist. Check the name "
                f"(list the folder with client.dir({parent!r}).files()) or write it first with "
                f"client.file({SCHEME + self.path!r}).put(...) / putFile(...) / putJson(...)"
            )
        if info.get("type") != "file":
            raise DataApiError(
                f"unable to get file {self._where()}: it is a directory; "
                f"use client.dir({SCHEME + self.path!r}) to list it"
            )
        self.set_attributes(info)

    def getBytes(self) -> bytes:  # noqa: N802
        self._require()
        with self._storage_errors("get file"), self.storage_path.open("rb") as f:
            return f.read()

    def getString(self) -> str:  # noqa: N802
        """The content decoded as UTF-8."""
        return self.getBytes().decode("utf-8")

    def getJson(self) -> Any:  # noqa: N802
        data = self.getBytes()
        try:
            return json.loads(data)
        except ValueError as exc:
            raise DataApiError(
                f"{self._where()} is not valid JSON ({exc}); read it with getString() or getBytes()"
            ) from exc

    def getFile(self, as_path: bool = False):  # noqa: N802
        """Download to a local temporary file and return it opened for reading (text, UTF-8),
        or its path with ``as_path=True``, like Algorithmia. The file is not deleted for you.

        For binary content use ``getFile().name`` (or ``as_path=True``) and open it in ``"rb"``.
        """
        self._require()
        suffix = os.path.splitext(self.getName())[1]
        tmp = tempfile.NamedTemporaryFile(prefix="freestack-data-", suffix=suffix, delete=False)  # noqa: SIM115
        try:
            with tmp, self._storage_errors("get file"), self.storage_path.open("rb") as src:
                shutil.copyfileobj(src, tmp, CHUNK)
        except BaseException:
            os.unlink(tmp.name)
            raise
        if as_path:
            return tmp.name
        return open(tmp.name, encoding="utf-8")  # noqa: SIM115  (the caller owns it, as in Algorithmia)

    # -- writes (atomic, via freestack.storage.objects) -----------------------------------------------------

    def _before_write(self) -> None:
        info = self._info()
        if info is not None and info.get("type") != "file":
            raise DataApiError(
                f"unable to write {self._where()}: a directory has that name; "
                "delete it with client.dir(...).delete(force=True) or choose another name"
            )

    def _after_write(self, result) -> DataFile:
        self.sha256 = result.sha256
        self.size = result.size
        info = self._info()
        self.last_modified = _to_datetime(info) if info else None
        return self

    def put(self, data: str | bytes | bytearray | memoryview) -> DataFile:
        """Write a string (as UTF-8) or bytes, atomically. Returns self."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif isinstance(data, bytearray | memoryview):
            data = bytes(data)
        elif not isinstance(data, bytes):
            raise TypeError(
                f"Must put strings or binary data, not {type(data).__name__}. Use putJson instead"
            )
        self._before_write()
        with self._storage_errors("write"):
            result = write_bytes(self.storage_path, data)
        return self._after_write(result)

    def putJson(self, data: Any) -> DataFile:  # noqa: N802
        """Write ``json.dumps(data)``, atomically. Returns self."""
        return self.put(json.dumps(data))

    def putFile(self, path: str | os.PathLike) -> DataFile:  # noqa: N802
        """Upload a local file (streamed), atomically. Returns self."""
        with open(path, "rb") as src:  # a missing local file raises FileNotFoundError, as in Algorithmia
            self._before_write()
            with self._storage_errors("write"), atomic_write(self.storage_path) as writer:
                shutil.copyfileobj(src, writer, CHUNK)
        return self._after_write(writer.result)

    def delete(self) -> bool:
        info = self._info()
        if info is None:
            raise DataApiError(f"unable to delete {self._where()}: it does not exist; check the name")
        if info.get("type") != "file":
            raise DataApiError(
                f"unable to delete {self._where()}: it is a directory; use client.dir(...).delete()"
            )
        with self._storage_errors("delete"):
            self._fs.rm(self.path)
        self.size = self.last_modified = None
        return True


class DataDirectory(DataObject):
    """A directory: ``data://<owner>`` or ``data://<owner>/<collection>[/...]`` (Algorithmia's DataDirectory)."""

    _kind = "directory"

    def __init__(self, client: DataClient, dataUrl: str):  # noqa: N803
        super().__init__(client, dataUrl, DataObjectType.directory)

    def set_attributes(self, attributes: dict[str, Any]) -> None:
        """Nothing to record for a directory (as in Algorithmia)."""

    def exists(self) -> bool:
        info = self._info()
        return info is not None and info.get("type") == "directory"

    def create(self, acl: Any = None) -> DataDirectory:
        """Create the directory (and missing parents). Fails if it already exists.

        ``acl`` (collections only: ``data://<owner>/<collection>``) sets who may read it:
        ``Algorithmia.acl.ReadAcl.public`` / ``.private``, a freestack ``Acl``, or
        ``{"read": ["user://*"]}``. Without it a new collection is private.
        """
        parsed = _acl(acl)
        info = self._info()
        if info is not None:
            kind = "directory" if info.get("type") == "directory" else "file"
            raise DataApiError(
                f"unable to create {self._where()}: a {kind} with that name already exists"
                + ("; check dir.exists() before create()" if kind == "directory" else "")
            )
        with self._storage_errors("create"), _as_api_error(f"unable to create {self._where()}: "):
            self._fs.create_dir(self.path, acl=parsed)
        return self

    def get_permissions(self):
        """The collection's ACL (a freestack ``Acl``: ``.read``, ``.write``, ``.kind``)."""
        with self._storage_errors("read the ACL of"), _as_api_error():
            return self._fs.get_acl(self.path)

    def update_permissions(self, acl: Any) -> bool:
        """Replace the collection's ACL (the owner only), like Algorithmia's ``update_permissions``."""
        parsed = _acl(acl)
        if parsed is None:
            raise DataApiError("update_permissions needs an ACL, e.g. ReadAcl.public or {'read': []}")
        with self._storage_errors("change the ACL of"), _as_api_error():
            self._fs.set_acl(self.path, parsed)
        return True

    def delete(self, force: bool = False) -> bool:
        """Delete the directory; a non-empty one only with ``force=True`` (everything under it goes).

        Only listed entries count: a directory holding nothing but hidden leftovers (temporaries of
        killed writers) is empty, and goes with them.
        """
        if "/" not in self.path:
            raise DataApiError(
                f"refusing to delete {self._where()}: it is an owner's whole namespace; "
                "delete its collections one by one"
            )
        info = self._info()
        if info is None:
            raise DataApiError(
                f"unable to delete directory {self._where()}: it does not exist; check the name"
            )
        if info.get("type") != "directory":
            raise DataApiError(
                f"unable to delete directory {self._where()}: it is a file; use client.file(...).delete()"
            )
        if not force:
            visible = [name for name, _ in self._entries()]
            if visible:
                shown = ", ".join(visible[:5]) + (", ..." if len(visible) > 5 else "")
                raise DataApiError(
                    f"unable to delete directory {self._where()}: it is not empty ({len(visible)} entries: "
                    f"{shown}); delete them first or call delete(force=True)"
                )
        with self._storage_errors("delete"):
            self._fs.rm(self.path, recursive=True)
        return True

    def file(self, name: str) -> DataFile:
        return DataFile(self.client, f"{self.path}/{self._child(name)}")

    def dir(self, name: str) -> DataDirectory:
        return DataDirectory(self.client, f"{self.path}/{self._child(name)}")

    def files(self) -> Iterator[DataFile]:
        """The files directly in this directory, by name (hidden temporaries never appear)."""
        return self._iterate(DataObjectType.file)

    def dirs(self) -> Iterator[DataDirectory]:
        """The sub-directories directly in this directory, by name."""
        return self._iterate(DataObjectType.directory)

    def list(self) -> Iterator[DataFile | DataDirectory]:
        """Directories then files, as Algorithmia lists them."""
        return self._iterate(None)

    # -- helpers --------------------------------------------------------------------------------------------

    @staticmethod
    def _child(name: str) -> str:
        if not isinstance(name, str) or "://" in name:
            raise DataApiError(
                f"{name!r} is not a name inside a directory; give e.g. 'model.json' or 'sub/x.csv'"
            )
        rel = check_relative(name, what="data:// name")
        if not rel:
            raise DataApiError("an empty name does not identify anything inside a directory")
        return rel

    def _entries(self) -> list[tuple[str, dict[str, Any]]]:
        """``(name, info)`` for each visible entry, sorted by name; DataApiError if not a directory."""
        info = self._info()
        if info is None or info.get("type") != "directory":
            what = "does not exist" if info is None else "is a file"
            raise DataApiError(
                f"unable to list {self._where()}: it {what}; create it with client.dir({SCHEME + self.path!r})"
                ".create() or check the path"
            )
        fs = self._fs
        own = fs.resolve(self.path)
        with self._storage_errors("list"):
            listing = fs.ls(self.path, detail=True)
        out = []
        for entry in listing:
            full = entry["name"].rstrip("/")
            name = full.rsplit("/", 1)[-1]
            if not name or full == own or name.startswith("."):
                continue
            out.append((name, entry))
        return sorted(out, key=lambda item: item[0])

    def _iterate(self, only: DataObjectType | None) -> Iterator[DataFile | DataDirectory]:
        entries = self._entries()
        dirs: list[DataDirectory] = []
        files: list[DataFile] = []
        for name, entry in entries:
            try:
                if entry.get("type") == "directory":
                    dirs.append(DataDirectory(self.client, f"{self.path}/{name}"))
                else:
                    f = DataFile(self.client, f"{self.path}/{name}")
                    f.set_attributes(entry)
                    files.append(f)
            except FreestackError:  # a name this client cannot address (e.g. '%2e%2e'): not listed
                continue
        if only is not DataObjectType.file:
            yield from dirs
        if only is not DataObjectType.directory:
            yield from files
