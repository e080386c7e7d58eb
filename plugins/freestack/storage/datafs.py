"""``data://`` — an Algorithmia-style Data API namespace as an fsspec filesystem.

``data://<owner>/<collection>/<path>`` maps onto a backing store named by a ``freestack_data``
connection; ``data://.my/<collection>`` means the connection's user. The backing store is either

- **direct**: a local folder or an S3 prefix. Every operation is checked against the collection's
  ACL (freestack.storage.acl) for the connection's user, as the Data API service checks it; or
- **the Data API service** (the connection's root is its ``http(s)://`` URL, its password an API key):
  the filesystem talks HTTP to the service (freestack.storage.httpfs), which checks the ACLs for the
  key's user; ``.my`` is whoever the key belongs to.

The module follows the provider filesystem contract (``schemes`` + ``get_fs``), so
``ObjectStoragePath("data://.my/models/x.json")`` works in every Airflow process.
"""

from __future__ import annotations

import os
from typing import Any

from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from freestack.errors import AccessDenied, FreestackError, UnsafePathError
from freestack.storage.acl import ACL_NAME, READ, WRITE, AclStore, check_access, visible_collections
from freestack.storage.connection import store_config
from freestack.storage.httpfs import DataApiHttpFileSystem
from freestack.storage.objects import write_bytes
from freestack.storage.paths import check_relative
from freestack.storage.schemes import to_path

schemes = ["data"]
MY = ".my"
#: hidden object that makes an empty directory exist on object stores
DIR_MARKER = ".freestack-dir"
_WRITE_MODE = frozenset("wax+")


class DataFileSystem(DirFileSystem):
    """A DirFileSystem over the backing store that resolves ``.my``, refuses escaping paths and
    applies the collections' ACLs for its user (``owner``; None: anonymous, as in the Data API)."""

    protocol = "data"
    root_marker = ""
    sep = "/"  # a class attribute: universal-pathlib reads it from the class
    cachable = False

    def __init__(self, path: str, fs: Any, owner: str | None, *, check_acl: bool = True, **kwargs: Any):
        super().__init__(path=path, fs=fs, **kwargs)
        if not path:  # DirFileSystem would read "" as "no path given"; here it means the store's root
            self.path = ""
        self._owner = owner
        #: False when the backing store is the Data API service, which checks ACLs itself
        self.check_acl = check_acl and not self.is_remote_api
        self.acls = AclStore(fs, self.path) if self.check_acl else None

    @classmethod
    def from_config(cls, config) -> DataFileSystem:
        if config.is_remote_api:
            http = DataApiHttpFileSystem(config.root, api_key=config.api_key, expect_user=config.owner)
            return cls(path="", fs=http, owner=None, check_acl=False)

        backing = to_path(config.root)
        return cls(path=backing.path, fs=backing.fs, owner=config.owner)

    @property
    def owner(self) -> str | None:
        """The user: what ``.my`` means and whose rights apply (None: anonymous)."""
        if self._owner is None and self.is_remote_api:
            self._owner = self.fs.whoami()
        return self._owner

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def is_remote_api(self) -> bool:
        """True when the backing store is a Data API service reached over HTTP."""
        return bool(getattr(self.fs, "is_data_api", False))

    @property
    def needs_dir_marker(self) -> bool:
        """Object stores have no empty folders: a hidden marker object makes a created one exist."""
        return not self.is_local and not self.is_remote_api

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
            if head is None:
                raise AccessDenied(
                    "data://.my means the caller, and no user is signed in: sign in with an API key "
                    "(header 'Authorization: Simple <key>') or name the owner (data://<owner>/...)",
                    anonymous=True,
                )
        if head.startswith("."):
            raise UnsafePathError(f"data:// owner {head!r} is not valid; use data://.my/... or a user name")
        if ACL_NAME in rest.split("/"):
            raise UnsafePathError(
                f"data:// path {path!r}: {ACL_NAME!r} is the collection's ACL document; change it with "
                "update_permissions() / PATCH, not as a file"
            )
        return f"{head}/{rest}" if rest else head

    def check(self, rel: str, mode: str = READ) -> None:
        """AccessDenied unless this filesystem's user may ``mode`` the resolved path ``rel``."""
        if self.check_acl:
            check_access(self.owner, rel, mode, self.acls.get)

    def _full(self, path, mode: str = READ):
        """The backing-store path for ``path`` (a string, list or dict of them), after the checks."""
        if isinstance(path, str):
            rel = self.resolve(path)
            self.check(rel, mode)
            return DirFileSystem._join(self, rel)
        if isinstance(path, dict):
            return {self._full(p, mode): v for p, v in path.items()}
        return [self._full(p, mode) for p in path]

    def _join(self, path):
        return self._full(path, READ)

    def _w(self, path):
        return self._full(path, WRITE)

    def local_path(self, path: str, *, write: bool = False) -> str | None:
        """The OS path behind ``path`` when the backing store is a local folder, else None; the ACL is
        checked for reading, or for writing with ``write=True``."""
        return self._full(path, WRITE if write else READ) if self.is_local else None

    # -- ACLs ------------------------------------------------------------------------------------------

    def _collection(self, path: str, *, action: str) -> tuple[str, str]:
        rel = self.resolve(path)
        parts = rel.split("/") if rel else []
        if len(parts) != 2:
            raise FreestackError(
                f"{action} applies to a collection (data://<owner>/<collection>), not {('data://' + rel)!r}: "
                "ACLs are set per collection and hold for everything inside it"
            )
        return parts[0], parts[1]

    def get_acl(self, path: str):
        """The ACL of the collection ``path`` names or lies in (an Acl)."""
        if self.is_remote_api:
            return self.fs.get_acl(self.resolve(path))
        rel = self.resolve(path)
        parts = rel.split("/")
        if len(parts) < 2:
            raise FreestackError(f"data://{rel} is not inside a collection; ACLs belong to collections")
        self.check(rel, READ)
        store = self.acls or AclStore(self.fs, self.path)
        return store.get(parts[0], parts[1])

    def set_acl(self, path: str, acl) -> None:
        """Replace the ACL of the collection ``path`` (owner only; the collection must exist)."""
        owner, collection = self._collection(path, action="set_acl")
        if self.is_remote_api:
            return self.fs.set_acl(f"{owner}/{collection}", acl)
        if self.check_acl and self.owner != owner:
            who = f"user {self.owner!r}" if self.owner else "an anonymous caller (no API key)"
            raise AccessDenied(
                f"{who} cannot change the ACL of data://{owner}/{collection}: only {owner!r} can",
                anonymous=self.owner is None,
            )
        full = DirFileSystem._join(self, f"{owner}/{collection}")
        if not self.fs.isdir(full):
            raise FileNotFoundError(f"data://{owner}/{collection} does not exist; create it first")
        (self.acls or AclStore(self.fs, self.path)).set(owner, collection, acl)

    def create_dir(self, path: str, acl=None) -> None:
        """Create a directory (and missing parents); with ``acl``, set it (collections only)."""
        rel = self.resolve(path)
        if acl is not None:
            self._collection(rel, action="an ACL")
        if self.is_remote_api:
            return self.fs.makedirs(rel, exist_ok=False, acl=acl)
        self.makedirs(rel, exist_ok=True)
        if self.needs_dir_marker:
            write_bytes(_Target(self, f"{rel}/{DIR_MARKER}"), b"")
        if acl is not None:
            self.set_acl(rel, acl)

    # -- reads that list: hide the ACL documents and the collections the user may not read -------------

    def _visible(self, rel: str) -> bool:
        """Whether a listed path (resolved, ``owner/...``) is shown to this filesystem's user."""
        parts = rel.split("/") if rel else []
        if ACL_NAME in parts:
            return False
        if not self.check_acl or len(parts) < 2:
            return True
        try:
            check_access(self.owner, "/".join(parts[:2]), READ, self.acls.get)
        except AccessDenied:
            return False
        return True

    def _filter_owners(self, names: list[str]) -> list[str]:
        """Root listing: the owners that are this user or hold a collection the user may read."""
        if not self.check_acl:
            return names
        out = []
        for name in names:
            owner = name.rstrip("/").rsplit("/", 1)[-1]
            if owner == self.owner:
                out.append(name)
                continue
            try:
                collections = [
                    c.rstrip("/").rsplit("/", 1)[-1]
                    for c in self.fs.ls(DirFileSystem._join(self, owner), detail=False)
                ]
            except (FileNotFoundError, NotADirectoryError):
                continue
            if visible_collections(self.owner, owner, collections, self.acls.get):
                out.append(name)
        return out

    def ls(self, path, detail=True, **kwargs):
        rel = self.resolve(path)
        entries = super().ls(path, detail=detail, **kwargs)  # checks that the user may read rel
        names = [e["name"] if detail else e for e in entries]
        if "/" in rel:  # inside one collection: its ACL, checked above, holds for every entry
            keep = [ACL_NAME not in n.split("/") for n in names]
        else:
            keep = [self._visible(n) for n in names]
        entries = [e for e, k in zip(entries, keep, strict=True) if k]
        if self.check_acl and not rel:
            allowed = set(self._filter_owners([e["name"] if detail else e for e in entries]))
            entries = [e for e in entries if (e["name"] if detail else e) in allowed]
        return entries

    def find(self, path, *args, **kwargs):
        out = super().find(path, *args, **kwargs)
        if isinstance(out, dict):
            return {k: v for k, v in out.items() if self._visible(k)}
        return [p for p in out if self._visible(p)]

    def glob(self, path, **kwargs):
        out = super().glob(path, **kwargs)
        if isinstance(out, dict):
            return {k: v for k, v in out.items() if self._visible(k)}
        return [p for p in out if self._visible(p)]

    def expand_path(self, path, *args, **kwargs):
        return [p for p in super().expand_path(path, *args, **kwargs) if self._visible(p)]

    def walk(self, path, *args, **kwargs):
        for root, dirs, files in super().walk(path, *args, **kwargs):
            if not self._visible(root):
                continue
            prefix = f"{root}/" if root else ""
            if isinstance(dirs, dict):
                for name in [n for n in dirs if not self._visible(prefix + n)]:
                    del dirs[name]
                files = {n: v for n, v in files.items() if self._visible(prefix + n)}
            else:
                dirs[:] = [n for n in dirs if self._visible(prefix + n)]
                files = [n for n in files if self._visible(prefix + n)]
            yield root, dirs, files

    def du(self, path, *args, **kwargs):
        if not kwargs.get("total", True):
            return {k: v for k, v in super().du(path, *args, **kwargs).items() if self._visible(k)}
        return sum(self.du(path, *args, **{**kwargs, "total": False}).values())

    # -- writes: the ACL's write rule ------------------------------------------------------------------

    def rm_file(self, path, **kwargs):
        return self.fs.rm_file(self._w(path), **kwargs)

    def rm(self, path, recursive=False, maxdepth=None):
        if recursive and maxdepth is None and self.is_local and isinstance(path, str):
            full = self._w(path)
            if os.path.isdir(full):  # shutil.rmtree recurses: a deep enough tree would never go
                remove_tree(full)
                return None
        return self.fs.rm(self._w(path), recursive=recursive, maxdepth=maxdepth)

    def delete_tree(self, path: str) -> int:
        """Delete the directory ``path`` and everything in it (the write rule applies); return how many
        visible files (no segment below ``path`` starting with ``.``) went. No depth limit."""
        full = self._w(path)
        if self.is_local:
            return remove_tree(full)
        prefix = full.rstrip("/") + "/"
        files = [
            p for p in self.fs.find(full) if not any(s.startswith(".") for s in p[len(prefix) :].split("/"))
        ]
        self.fs.rm(full, recursive=True)
        return len(files)

    def delete(self, path, recursive=False, maxdepth=None):
        return self.fs.delete(self._w(path), recursive=recursive, maxdepth=maxdepth)

    def cp_file(self, path1, path2, **kwargs):
        return self.fs.cp_file(self._join(path1), self._w(path2), **kwargs)

    def copy(self, path1, path2, *args, **kwargs):
        return self.fs.copy(self._join(path1), self._w(path2), *args, **kwargs)

    def pipe(self, path, *args, **kwargs):
        return self.fs.pipe(self._w(path), *args, **kwargs)

    def pipe_file(self, path, *args, **kwargs):
        return self.fs.pipe_file(self._w(path), *args, **kwargs)

    def write_text(self, path, value, encoding=None, errors=None, newline=None, **kwargs):
        return self.fs.write_text(
            self._w(path), value, encoding=encoding, errors=errors, newline=newline, **kwargs
        )

    def put_file(self, lpath, rpath, **kwargs):
        return self.fs.put_file(lpath, self._w(rpath), **kwargs)

    def put(self, lpath, rpath, *args, **kwargs):
        return self.fs.put(lpath, self._w(rpath), *args, **kwargs)

    def mkdir(self, path, *args, **kwargs):
        return self.fs.mkdir(self._w(path), *args, **kwargs)

    def makedirs(self, path, *args, **kwargs):
        return self.fs.makedirs(self._w(path), *args, **kwargs)

    def rmdir(self, path):
        return self.fs.rmdir(self._w(path))

    def mv(self, path1, path2, **kwargs):
        return self.fs.mv(self._w(path1), self._w(path2), **kwargs)

    def touch(self, path, **kwargs):
        return self.fs.touch(self._w(path), **kwargs)

    def open(self, path, mode="rb", *args, **kwargs):
        target = self._w(path) if _WRITE_MODE & set(mode) else self._join(path)
        return self.fs.open(target, mode, *args, **kwargs)

    async def _rm_file(self, path, **kwargs):
        return await self.fs._rm_file(self._w(path), **kwargs)

    async def _rm(self, path, *args, **kwargs):
        return await self.fs._rm(self._w(path), *args, **kwargs)

    async def _cp_file(self, path1, path2, **kwargs):
        return await self.fs._cp_file(self._join(path1), self._w(path2), **kwargs)

    async def _copy(self, path1, path2, *args, **kwargs):
        return await self.fs._copy(self._join(path1), self._w(path2), *args, **kwargs)

    async def _pipe(self, path, *args, **kwargs):
        return await self.fs._pipe(self._w(path), *args, **kwargs)

    async def _pipe_file(self, path, *args, **kwargs):
        return await self.fs._pipe_file(self._w(path), *args, **kwargs)

    async def _put_file(self, lpath, rpath, **kwargs):
        return await self.fs._put_file(lpath, self._w(rpath), **kwargs)

    async def _put(self, lpath, rpath, *args, **kwargs):
        return await self.fs._put(lpath, self._w(rpath), *args, **kwargs)

    async def _mkdir(self, path, *args, **kwargs):
        return await self.fs._mkdir(self._w(path), *args, **kwargs)

    async def _makedirs(self, path, *args, **kwargs):
        return await self.fs._makedirs(self._w(path), *args, **kwargs)

    async def open_async(self, path, mode="rb", *args, **kwargs):
        target = self._w(path) if _WRITE_MODE & set(mode) else self._join(path)
        return await self.fs.open_async(target, mode, *args, **kwargs)

    def __reduce__(self):
        return (_rebuild, (self.path, self.fs, self._owner, self.check_acl))

    def __repr__(self) -> str:
        where = self.fs.unstrip_protocol(self.path) if self.path or not self.is_remote_api else self.fs.url
        return f"DataFileSystem(owner={self._owner!r}, root={where!r})"


def remove_tree(top: str) -> int:
    """Remove the local directory ``top`` and everything below it, without recursion (a tree of any depth
    goes) and without following symbolic links; return how many visible files (no hidden segment below
    ``top``) were removed."""
    removed = 0
    stack: list[tuple[str, bool, bool]] = [(top, False, False)]  # (folder, hidden, its entries done)
    while stack:
        folder, hidden, done = stack.pop()
        if done:
            os.rmdir(folder)
            continue
        stack.append((folder, hidden, True))
        with os.scandir(folder) as entries:
            for entry in entries:
                below_hidden = hidden or entry.name.startswith(".")
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, below_hidden, False))
                    continue
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:  # removed meanwhile
                    continue
                removed += 0 if below_hidden else 1
    return removed


class _Target:
    """What AtomicWriter needs of an ObjectStoragePath: a filesystem and a path on it."""

    def __init__(self, fs: Any, path: str):
        self.fs = fs
        self.path = path

    def __str__(self) -> str:
        return f"data://{self.path}"


def _rebuild(path, fs, owner, check_acl=True):
    return DataFileSystem(path=path, fs=fs, owner=owner, check_acl=check_acl)


def get_fs(conn_id: str | None, storage_options: dict[str, Any] | None = None) -> DataFileSystem:
    """The provider filesystem contract: ``data://`` through connection ``conn_id`` (or the default)."""
    return DataFileSystem.from_config(store_config(conn_id))


class _DefaultDataFileSystem(DataFileSystem):
    """What plain ``fsspec.filesystem("data")`` returns: the default connection's store."""

    def __new__(cls, *args, **kwargs):
        return get_fs(kwargs.pop("conn_id", None))
