"""Collections and their ACLs: who may read and write what under ``data://``.

The namespace is ``data://<owner>/<collection>/<path...>``. A *collection* (the second level) is the
unit of sharing, as on Algorithmia. Its ACL is a small JSON document stored beside the data, in the
collection folder of the backing store (``<owner>/<collection>/.freestack-acl.json``), so it travels
with the data (a local folder or an S3 prefix) and the Data API service and every task's ``data://``
filesystem apply the same rules to the same document:

- **private** (``{"read": []}``, the default when there is no ACL document): the owner only;
- **public** (``{"read": ["user://*"]}``): anyone may read, without an API key;
- **team** (``{"read": ["user://bob", "user://carol"], "write": ["user://bob"]}``): the named users may
  read; those also named under ``write`` may write files inside the collection (a freestack extension:
  Algorithmia's ACLs only had ``read``).

``algo://.my/*`` (Algorithmia's "my algorithms") is accepted and kept, so the official client can
round-trip it, and grants nothing beyond private: freestack has no algorithms.

The owner can always do everything in their namespace. Only the owner creates or deletes a
collection or changes its ACL. Anyone may list an owner's namespace or the root, and sees only the
collections they may read.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from freestack.errors import AccessDenied, FreestackError
from freestack.settings import settings
from freestack.storage.objects import write_bytes

ACL_NAME = ".freestack-acl.json"
PUBLIC = "user://*"
MY_ALGOS = "algo://.my/*"
USER_PREFIX = "user://"
READ = "read"
WRITE = "write"

#: user names: what Algorithmia allowed, minus anything that could be a path or a URI
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class AclError(FreestackError, ValueError):
    """An ACL document or a user name is not valid; the message says which entry and what is allowed."""


def check_user(name: Any, *, what: str = "user name") -> str:
    """``name`` if it is a valid user name, else AclError saying what a user name may be."""
    if not isinstance(name, str) or not USER_RE.match(name):
        raise AclError(
            f"{what} {name!r} is not valid: use 1-64 letters, digits, '_' or '-', starting with a letter "
            "or digit (e.g. 'alice')"
        )
    return name


@dataclass(frozen=True)
class Acl:
    """One collection's ACL. ``read`` and ``write`` hold ``user://<name>`` entries (and, in ``read``,
    ``user://*`` for public or ``algo://.my/*``)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: Any, *, where: str = "acl") -> Acl:
        """Validate an ACL as sent by a client (``{"read": [...], "write": [...]}``)."""
        if data is None:
            return PRIVATE
        if not isinstance(data, dict):
            raise AclError(
                f'{where} must be an object like {{"read": ["user://*"]}}, got {type(data).__name__}'
            )
        unknown = set(data) - {"read", "write"}
        if unknown:
            raise AclError(
                f"{where} has unknown keys {sorted(unknown)}; only 'read' and 'write' lists are supported"
            )
        read = _entries(data.get("read", []), where=f"{where}.read", allow_public=True)
        write = _entries(data.get("write", []), where=f"{where}.write", allow_public=False)
        return cls(read=read, write=write)

    def to_json(self) -> dict[str, list[str]]:
        return {"read": list(self.read), "write": list(self.write)}

    @property
    def kind(self) -> str:
        """``public``, ``team``, ``my_algos`` or ``private``."""
        if PUBLIC in self.read:
            return "public"
        if any(e.startswith(USER_PREFIX) for e in (*self.read, *self.write)):
            return "team"
        if MY_ALGOS in self.read:
            return "my_algos"
        return "private"

    def readers(self) -> list[str]:
        return [e[len(USER_PREFIX) :] for e in self.read if e.startswith(USER_PREFIX) and e != PUBLIC]

    def writers(self) -> list[str]:
        return [e[len(USER_PREFIX) :] for e in self.write]

    def allows(self, user: str | None, mode: str) -> bool:
        """Whether ``user`` (None: anonymous) may ``mode`` (READ or WRITE) inside the collection.
        The owner is not asked here: owners may always do everything."""
        if mode == READ and PUBLIC in self.read:
            return True
        if user is None:
            return False
        entry = USER_PREFIX + user
        if mode == WRITE:
            return entry in self.write
        return entry in self.read or entry in self.write  # writers can read what they write

    def describe(self) -> str:
        if self.kind == "public":
            return "public (anyone may read)"
        if self.kind == "team":
            readers, writers = self.readers() + self.writers(), self.writers()
            return f"team: readers {', '.join(readers) or 'none'}; writers {', '.join(writers) or 'none'}"
        return "private (the owner only)"


PRIVATE = Acl()


def _entries(value: Any, *, where: str, allow_public: bool) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise AclError(f"{where} must be a list of strings like 'user://alice', got {type(value).__name__}")
    out: list[str] = []
    for entry in value:
        if not isinstance(entry, str):
            raise AclError(f"{where}: {entry!r} is not a string; use 'user://<name>'")
        if entry == PUBLIC:
            if not allow_public:
                raise AclError(
                    f"{where}: 'user://*' (everyone) may read a collection but never write to it; "
                    "name the writers as 'user://<name>'"
                )
        elif entry == MY_ALGOS:
            if not allow_public:
                raise AclError(f"{where}: {entry!r} is only meaningful for reading")
        elif entry.startswith(USER_PREFIX):
            check_user(entry[len(USER_PREFIX) :], what=f"{where}: user in {entry!r}")
        else:
            raise AclError(
                f"{where}: {entry!r} is not an ACL entry; use 'user://*' (public), 'user://<name>' "
                "(a team member) or an empty list (private)"
            )
        if entry not in out:
            out.append(entry)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------
# where ACL documents live, and a cache that never serves a stale one on local disk


def acl_stamp(path: str) -> tuple[int, int, int] | None:
    """What identifies the version of a local ACL document (its mtime in ns, size and inode: a write
    replaces it, so each version has its own); None when there is none (the collection is private)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class AclStore:
    """Reads and writes ACL documents on the backing filesystem ``fs`` under ``root``.

    On a local disk a cached ACL is revalidated with one ``stat`` per lookup (a change made by any
    process is seen at once). On object stores a cached ACL is kept ``ttl`` seconds
    (``FREESTACK_DATA_ACL_TTL``, default 2); changes made in this process are seen at once.
    """

    _cache: dict[tuple[Any, str], tuple[Any, float, Acl]] = {}
    _lock = threading.Lock()

    def __init__(self, fs: Any, root: str, *, ttl: float | None = None):
        from fsspec.implementations.local import LocalFileSystem

        self.fs = fs
        self.root = root.rstrip("/")
        self.local = isinstance(fs, LocalFileSystem)
        self.ttl = settings().data_acl_ttl if ttl is None else ttl
        self._token = getattr(fs, "_fs_token", None) or id(fs)

    def path(self, owner: str, collection: str) -> str:
        rel = f"{owner}/{collection}/{ACL_NAME}"
        return f"{self.root}/{rel}" if self.root else rel

    def get(self, owner: str, collection: str) -> Acl:
        path = self.path(owner, collection)
        key = (self._token, path)
        if self.local:
            stamp: Any = acl_stamp(self.fs._strip_protocol(path))
            if stamp is None:
                return PRIVATE
            cached = self._cache.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[2]
        else:
            stamp = None
            cached = self._cache.get(key)
            if cached is not None and time.monotonic() - cached[1] < self.ttl:
                return cached[2]
        acl = self._load(path)
        with self._lock:
            self._cache[key] = (stamp, time.monotonic(), acl)
        return acl

    def _load(self, path: str) -> Acl:
        try:
            raw = self.fs.cat_file(path)
        except FileNotFoundError:
            return PRIVATE
        try:
            return Acl.parse(json.loads(raw), where=path)
        except (ValueError, AclError):
            # a damaged ACL document must not open anything up: treat it as private
            return PRIVATE

    def set(self, owner: str, collection: str, acl: Acl) -> None:
        path = self.path(owner, collection)
        data = (json.dumps(acl.to_json(), indent=2, sort_keys=True) + "\n").encode()
        write_bytes(_Target(self.fs, path), data)
        with self._lock:
            self._cache.pop((self._token, path), None)


@dataclass(frozen=True)
class _Target:
    """The minimal ObjectStoragePath-like object AtomicWriter needs: a filesystem and a path on it."""

    fs: Any
    path: str

    def __str__(self) -> str:
        return self.path


# ---------------------------------------------------------------------------------------------------------
# the rules

#: what an anonymous caller is told to do
SIGN_IN = "sign in with an API key (header 'Authorization: Simple <key>'; create one with `freestack keys create <user>`)"


def check_access(user: str | None, rel: str, mode: str, acl_of: Callable[[str, str], Acl]) -> None:
    """Raise AccessDenied unless ``user`` (None: anonymous) may ``mode`` the resolved path ``rel``
    (``owner/collection/...``; ``.my`` already replaced). ``acl_of(owner, collection)`` gives an ACL."""
    parts = rel.split("/") if rel else []
    anonymous = user is None
    who = f"user {user!r}" if user else "an anonymous caller (no API key)"
    hint = f"; {SIGN_IN}" if anonymous else ""
    if not parts:
        if mode == READ:
            return
        raise AccessDenied(
            "nothing can be written at the data:// root; write inside data://<owner>/<collection>/",
            anonymous=anonymous,
        )
    owner = parts[0]
    if user is not None and user == owner:
        return
    if len(parts) == 1:
        if mode == READ:  # listing someone's namespace shows only the collections the caller may read
            return
        raise AccessDenied(
            f"{who} cannot create or delete collections in data://{owner}: only {owner!r} can{hint}",
            anonymous=anonymous,
        )
    collection = parts[1]
    where = f"data://{owner}/{collection}"
    if mode == WRITE and len(parts) == 2:
        raise AccessDenied(
            f"{who} cannot create, delete or change the collection {where} itself: only {owner!r} can{hint}",
            anonymous=anonymous,
        )
    if acl_of(owner, collection).allows(user, mode):
        return
    if anonymous and mode == WRITE:  # whether or not the collection is public: writing needs a user
        raise AccessDenied(f"{who} may not write to {where}: {SIGN_IN}", anonymous=True)
    if anonymous:
        raise AccessDenied(f"{where} is not public: {SIGN_IN}", anonymous=True)
    if mode == WRITE:
        raise AccessDenied(
            f"{who} may not write to {where}: ask {owner!r} to add 'user://{user}' to its write ACL"
        )
    raise AccessDenied(
        f"{who} may not read {where}: it is not shared with them; ask {owner!r} to add 'user://{user}' "
        "to its read ACL (or to make it public)"
    )


def visible_collections(
    user: str | None, owner: str, collections: Iterable[str], acl_of: Callable[[str, str], Acl]
) -> list[str]:
    """The collections of ``owner`` that ``user`` may read."""
    if user is not None and user == owner:
        return list(collections)
    return [c for c in collections if acl_of(owner, c).allows(user, READ)]


__all__ = [
    "ACL_NAME",
    "acl_stamp",
    "MY_ALGOS",
    "PRIVATE",
    "PUBLIC",
    "READ",
    "USER_RE",
    "WRITE",
    "Acl",
    "AclError",
    "AclStore",
    "check_access",
    "check_user",
    "visible_collections",
]
