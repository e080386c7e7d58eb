"""The content hash of each object, recorded when the service writes it: what ``If-Match`` compares.

A conditional replace (``PUT`` with ``If-Match: "<sha256>"``) must know the sha256 of the object it
replaces. Reading the object to hash it would cost a read of the whole object per request; instead the
service records, for every object it writes, its sha256 together with a *stamp* naming that exact
version of the stored object:

- local folders: ``<inode>:<size>:<mtime ns>`` of the file, taken from the temporary before it is
  renamed into place (a rename keeps inode and mtime; any later replacement, by anyone, changes them);
- object stores: the ETag, recorded only when it is the MD5 of the bytes written (a single-part PUT),
  so a racing writer's version is never credited with this write's hash.

A record whose stamp no longer matches the object (written beside the service, or replaced meanwhile) is
not trusted: the object is then hashed once, streamed (memory stays flat), and the result
recorded. The records live in a small SQLite file beside the keys file (``versions.sqlite``), keyed by
the backing store's root and the object's path, so they never appear among the data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("freestack.dataapi")

BLOCK = 1024 * 1024  # hashing an object without a usable record: an object store is read this much at a time

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    root    TEXT NOT NULL,
    path    TEXT NOT NULL,
    sha256  TEXT NOT NULL,
    size    INTEGER NOT NULL,
    stamp   TEXT NOT NULL,
    PRIMARY KEY (root, path)
);
"""


def local_stamp(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


class VersionStore:
    """The records, in one SQLite file (WAL: several service processes may share it). If the file cannot
    be opened, nothing is recorded and every comparison hashes the object (logged once)."""

    def __init__(self, path: Path, root: str):
        self.path = Path(path)
        self.root = root
        self._local = threading.local()
        self._broken = False

    def _conn(self) -> sqlite3.Connection | None:
        if self._broken:
            return None
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout = 30000")
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")  # a lost record only costs one hashing
                conn.executescript(_SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                log.warning(
                    "cannot keep content hashes in %s (%s): If-Match will hash objects", self.path, exc
                )
                self._broken = True
                return None
            self._local.conn = conn
        return conn

    def get(self, rel: str) -> tuple[str, str] | None:
        """``(sha256, stamp)`` recorded for ``rel``, if any."""
        conn = self._conn()
        if conn is None:
            return None
        row = conn.execute(
            "SELECT sha256, stamp FROM versions WHERE root = ? AND path = ?", (self.root, rel)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def put(self, rel: str, sha256: str, size: int, stamp: str) -> None:
        conn = self._conn()
        if conn is None:
            return
        try:
            conn.execute(
                "INSERT OR REPLACE INTO versions(root, path, sha256, size, stamp) VALUES (?, ?, ?, ?, ?)",
                (self.root, rel, sha256, size, stamp),
            )
        except sqlite3.Error as exc:  # a record is an optimisation: never fail a write over it
            log.warning("could not record the hash of %s: %s", rel, exc)

    def forget(self, rel: str, *, tree: bool = False) -> None:
        """Drop the record of ``rel`` (and with ``tree``, of everything below it)."""
        conn = self._conn()
        if conn is None:
            return
        try:
            if tree:  # '0' is the character after '/': the range is exactly the paths under rel/
                conn.execute(
                    "DELETE FROM versions WHERE root = ? AND (path = ? OR (path >= ? AND path < ?))",
                    (self.root, rel, rel + "/", rel + "0"),
                )
            else:
                conn.execute("DELETE FROM versions WHERE root = ? AND path = ?", (self.root, rel))
        except sqlite3.Error as exc:
            log.warning("could not drop the hash record of %s: %s", rel, exc)


class Versions:
    """The current sha256 of objects in the backing store ``fs`` (under ``base``), from the records."""

    def __init__(self, store: VersionStore, fs: Any, base: str, local: bool):
        self.store = store
        self.fs = fs
        self.base = base.rstrip("/")
        self.local = local

    def full(self, rel: str) -> str:
        return f"{self.base}/{rel}" if self.base else rel

    def current(self, rel: str) -> str | None:
        """The sha256 of the object at ``rel`` (resolved, access already checked); None if there is none.
        IsADirectoryError for a directory."""
        return self._current_local(rel) if self.local else self._current_remote(rel)

    def _current_local(self, rel: str) -> str | None:
        path = self.fs._strip_protocol(self.full(rel))
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(rel)
        record = self.store.get(rel)
        if record is not None and record[1] == local_stamp(st):
            return record[0]
        try:
            f = open(path, "rb")  # noqa: SIM115  (closed below)
        except FileNotFoundError:
            return None
        with f:
            opened = os.fstat(f.fileno())  # the version read: a rename meanwhile does not change it
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        self.store.put(rel, sha, opened.st_size, local_stamp(opened))
        return sha

    def _current_remote(self, rel: str) -> str | None:
        full = self.full(rel)
        try:
            info = self.fs.info(full)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            raise IsADirectoryError(rel)
        etag = _etag(info)
        record = self.store.get(rel)
        if record is not None and etag and record[1] == etag:
            return record[0]
        with self.fs.open(full, "rb", block_size=BLOCK) as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        try:
            still = _etag(self.fs.info(full))
        except FileNotFoundError:
            still = None
        if etag and still == etag:  # nobody replaced it while it was read: the hash is this version's
            self.store.put(rel, sha, int(info.get("size") or 0), etag)
        return sha

    def writer(self, writer: Any, rel: str, *, on_done: Callable[[], None] | None = None) -> RecordingWriter:
        return RecordingWriter(writer, self, rel, on_done=on_done)


def _etag(info: dict[str, Any]) -> str | None:
    value = info.get("ETag") or info.get("etag")
    return str(value).strip('"') if value else None


class RecordingWriter:
    """Wraps an AtomicWriter: on commit, records the sha256 of what was written with the stamp of the
    version it published."""

    def __init__(
        self, writer: Any, versions: Versions, rel: str, *, on_done: Callable[[], None] | None = None
    ):
        self.writer = writer
        self.versions = versions
        self.rel = rel
        self.on_done = on_done  # called once the write is committed or aborted
        self._md5 = None if versions.local else hashlib.md5(usedforsecurity=False)

    @property
    def temporary(self) -> str | None:
        """The local temporary file the bytes go to (None on object stores)."""
        return getattr(self.writer, "_tmp", None)

    def write(self, data) -> int:
        if self._md5 is not None:
            self._md5.update(data)
        return self.writer.write(data)

    def commit(self):
        stamp = None
        tmp = self.temporary
        try:
            if self.versions.local and tmp:
                self.writer.flush()  # the mtime of the last write: committing (fsync, rename) keeps it
                stamp = local_stamp(os.stat(tmp))
            result = self.writer.commit()
        finally:
            self._done()
        if self._md5 is not None:
            try:
                etag = _etag(self.versions.fs.info(self.versions.full(self.rel)))
            except FileNotFoundError:
                etag = None
            stamp = etag if etag == self._md5.hexdigest() else None
        if stamp is not None:
            self.versions.store.put(self.rel, result.sha256, result.size, stamp)
        return result

    def abort(self) -> None:
        try:
            self.writer.abort()
        finally:
            self._done()

    def _done(self) -> None:
        if self.on_done is not None:
            self.on_done()
            self.on_done = None


__all__ = ["RecordingWriter", "VersionStore", "Versions", "local_stamp"]
