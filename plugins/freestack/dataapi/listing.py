"""Directory listings on a local backing folder, a page at a time, at a cost that does not grow with the
directory.

A directory's visible names (``os.scandir``: no ``stat`` per entry) are sorted once into listing keys
and kept while the directory's mtime stays the same; a page is a bisect from the marker plus a ``stat`` of
the page's own files (so sizes and times are always current). Adding, removing or renaming an entry
changes the directory's mtime, so the next request reads the directory again. A directory changed less
than ``RACY_NS`` before it was read is not trusted on the next request either: a change within the same
timestamp tick would leave its mtime as it was.

Only collections' insides are listed this way: an owner's namespace and the root show each caller only
the collections they may read, which the ``data://`` filesystem works out per entry.
"""

from __future__ import annotations

import bisect
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: a listing read this soon after the directory's last change is used once, then read again
RACY_NS = 2_000_000_000
#: directories whose sorted names are kept (the least recently listed go first)
MAX_DIRS = 64

Key = tuple[int, int, str]  # (0 folder / 1 file, 1, name): the order of a listing, and its marker


@dataclass(frozen=True)
class _Index:
    mtime_ns: int
    trusted: bool
    keys: list[Key]


class DirectoryIndex:
    """Sorted listing keys of local directories, cached by the directory's mtime."""

    def __init__(self, max_dirs: int = MAX_DIRS):
        self.max_dirs = max_dirs
        self._cache: OrderedDict[str, _Index] = OrderedDict()
        self._lock = threading.Lock()

    def keys(self, folder: str) -> list[Key]:
        """The listing keys of ``folder``, sorted. FileNotFoundError / NotADirectoryError as os.stat."""
        st = os.stat(folder)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(folder)
        with self._lock:
            cached = self._cache.get(folder)
            if cached is not None and cached.trusted and cached.mtime_ns == st.st_mtime_ns:
                self._cache.move_to_end(folder)
                return cached.keys
        started = time.time_ns()
        keys = scan(folder)
        index = _Index(st.st_mtime_ns, started - st.st_mtime_ns >= RACY_NS, keys)
        with self._lock:
            self._cache[folder] = index
            self._cache.move_to_end(folder)
            while len(self._cache) > self.max_dirs:
                self._cache.popitem(last=False)
        return keys


def scan(folder: str) -> list[Key]:
    """Listing keys of the visible entries of ``folder`` (names not starting with ``.``), sorted."""
    keys: list[Key] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            keys.append((0 if is_dir else 1, 1, entry.name))
    keys.sort()
    return keys


def page(
    folder: str, keys: list[Key], after: Key | None, size: int
) -> tuple[list[tuple[Key, dict | None]], bool]:
    """Up to ``size`` entries following ``after``: ``(key, {"size", "mtime"} for a file / None for a folder)``,
    and whether more follow. Files removed since the directory was read are skipped."""
    i = bisect.bisect_right(keys, after) if after is not None else 0
    out: list[tuple[Key, dict | None]] = []
    while len(out) < size and i < len(keys):
        key = keys[i]
        i += 1
        if key[0] == 0:
            out.append((key, None))
            continue
        try:
            st = os.stat(os.path.join(folder, key[2]))
        except (FileNotFoundError, NotADirectoryError):
            continue
        # replaced by a folder meanwhile: the next read of the directory shows it
        if stat.S_ISDIR(st.st_mode):
            continue
        out.append((key, {"size": st.st_size, "mtime": st.st_mtime}))
    return out, i < len(keys)


def modified_at(info: dict[str, Any]) -> datetime | None:
    """An fsspec info dict's modification time (``mtime``, S3's ``LastModified`` or ``last_modified``) in
    UTC; a time without a zone is UTC. None when it has none, or none that reads as a time."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


__all__ = ["DirectoryIndex", "Key", "modified_at", "page", "scan"]
