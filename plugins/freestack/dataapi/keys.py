"""Users and API keys of the Data API, in one SQLite file.

A key is shown once, when it is created (``freestack keys create alice``), and only its SHA-256 is
stored. Keys are 256-bit random tokens, so a plain hash is enough (no password-style stretching is
needed: nothing can be guessed). A key looks like ``fsk_<id>_<secret>``; the ``id`` (8 hex digits) is
what ``freestack keys list`` shows and what ``freestack keys revoke`` takes. A revoked key is refused
at once by every process that serves the API (each request looks the hash up).

The file is ``FREESTACK_DATA_API_KEYS``, else ``<project>/.freestack/data-api/keys.sqlite``; it is
created with mode 0600 in a 0700 folder. SQLite's WAL mode lets the CLI write while servers read.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from freestack.errors import FreestackError
from freestack.settings import settings
from freestack.storage.acl import check_user

KEY_PREFIX = "fsk_"
MAX_KEY_LENGTH = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name        TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    user        TEXT NOT NULL REFERENCES users(name),
    sha256      TEXT NOT NULL UNIQUE,
    label       TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys(user);
"""


class KeyError_(FreestackError):  # noqa: N801  (KeyError is a builtin)
    """A key operation failed (unknown key id, bad user name...); the message says what to do."""


def default_keys_path() -> Path:
    """The ``data_api_keys`` setting, else ``<home>/.freestack/data-api/keys.sqlite``."""
    current = settings()
    if current.data_api_keys:
        return current.data_api_keys.expanduser().resolve()
    return current.project_home / ".freestack" / "data-api" / "keys.sqlite"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class KeyInfo:
    id: str
    user: str
    label: str | None
    created_at: str
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_dict(self) -> dict:
        return {**asdict(self), "active": self.active}


class KeyStore:
    """The users and keys file. Safe to share between threads and processes."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_keys_path()
        self._local = threading.local()

    # -- connections -------------------------------------------------------------------------------------

    def _create(self) -> None:
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        with suppress(OSError):
            os.chmod(folder, 0o700)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.exists():
                self._create()
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            with suppress(sqlite3.OperationalError):  # a read-only file: readers still work
                conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- users and keys ----------------------------------------------------------------------------------

    def create_key(self, user: str, label: str | None = None) -> tuple[KeyInfo, str]:
        """A new key for ``user`` (created if new): ``(info, key)``. The key is not stored."""
        check_user(user)
        if label is not None and len(label) > 200:
            raise KeyError_("a key label is at most 200 characters")
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = _now()
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO users(name, created_at) VALUES (?, ?)", (user, now))
            conn.execute(
                "INSERT INTO api_keys(id, user, sha256, label, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, user, hash_key(key), label, now),
            )
        return KeyInfo(key_id, user, label, now, None), key

    def list_keys(self, user: str | None = None, *, include_revoked: bool = True) -> list[KeyInfo]:
        sql = "SELECT id, user, label, created_at, revoked_at FROM api_keys"
        args: list[str] = []
        where = []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY user, created_at, rowid"
        return [KeyInfo(*row) for row in self._conn().execute(sql, args)]

    def users(self) -> list[str]:
        return [row[0] for row in self._conn().execute("SELECT name FROM users ORDER BY name")]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key by its id (as ``freestack keys list`` shows it). Revoking twice is harmless."""
        key_id = key_id.strip()
        if key_id.startswith(KEY_PREFIX):  # the whole key was pasted: take its id
            key_id = key_id[len(KEY_PREFIX) :].split("_", 1)[0]
        with self._tx() as conn:
            row = conn.execute(
                "SELECT id, user, label, created_at, revoked_at FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise KeyError_(f"no API key with id {key_id!r}; `freestack keys list` shows the ids")
            if row[4] is None:
                conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (_now(), key_id))
        return self.list_keys_by_id(key_id)

    def list_keys_by_id(self, key_id: str) -> KeyInfo:
        row = (
            self._conn()
            .execute("SELECT id, user, label, created_at, revoked_at FROM api_keys WHERE id = ?", (key_id,))
            .fetchone()
        )
        if row is None:
            raise KeyError_(f"no API key with id {key_id!r}")
        return KeyInfo(*row)

    def authenticate(self, key: str) -> str | None:
        """The user an active ``key`` belongs to, else None (unknown, revoked or malformed)."""
        if not key or len(key) > MAX_KEY_LENGTH or not self.path.exists():
            return None
        row = (
            self._conn()
            .execute("SELECT user FROM api_keys WHERE sha256 = ? AND revoked_at IS NULL", (hash_key(key),))
            .fetchone()
        )
        return row[0] if row else None


__all__ = ["KEY_PREFIX", "KeyError_", "KeyInfo", "KeyStore", "default_keys_path", "hash_key"]
