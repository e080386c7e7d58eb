"""Removing the temporaries that writers killed mid-write (``kill -9``, a power cut) left behind.

Every atomic write on a local folder streams into a hidden temporary beside its target
(``.<name>.freestack-tmp-<id>``) and renames it into place at the end, so a killed writer never leaves
a partial object, but it does leave its temporary. The service sweeps its backing folder when it starts
and then every ``interval`` seconds. What it removes:

- the temporaries of uploads whose service process died. Each service process lists the temporaries
  its uploads are writing in a journal, ``<root>/.freestack-uploads/<pid>-<id>.journal``, which it
  holds locked (``flock``) as long as it lives. The kernel drops the lock of a process that dies, even
  by ``kill -9``: a journal nobody holds belongs to a dead process, and every temporary it lists is
  removed whatever its age, then the journal;
- any other temporary whose last write is older than ``max_age`` seconds, unless its writer holds it
  locked: every writer (:class:`freestack.storage.AtomicWriter`) holds its temporary locked until it is
  renamed into place, so a pipeline task writing slowly into the same folder keeps its own.

Never removed: a temporary listed in the journal of a live process (this one or a sibling worker
serving the same folder), however quiet its client has gone, nor one a live writer holds locked. A
pipeline task's write sweeps its own folder of killed writers' temporaries the same way
(:func:`freestack.storage.remove_stale_temporaries`); the service, whose uploads are journalled, leaves
its folder to this sweep. A lock and a journal rather than
refreshing the temporaries' mtimes: a live upload needs no timer to stay safe, and the temporaries of a
killed service go at its restart instead of after ``max_age``. The journal directory starts with ``.``,
so no request can name it. Object stores need none of this: an unfinished upload there is never an
object.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

from freestack.storage.objects import is_temporary, remove_if_unlocked

log = logging.getLogger("freestack.dataapi")

JOURNALS = ".freestack-uploads"  # under the backing folder
_SUFFIX = ".journal"
_STARTING = ".new"  # a journal not yet locked by its process
_STARTING_GRACE_S = 60.0  # an unlocked ``.new`` journal younger than this may be about to be locked


def default_interval(max_age: float) -> float:
    """How often to sweep: twice per ``max_age``, so a leftover stays at most 1.5 times that."""
    return max(max_age / 2, 0.1)


class Journal:
    """The temporaries this process's uploads are writing, kept in memory and in a journal file this
    process holds locked for its life: lines ``+<path>`` (started) and ``-<path>`` (committed or aborted)."""

    def __init__(self, root: str):
        folder = os.path.join(root, JOURNALS)
        os.makedirs(folder, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        starting = os.path.join(folder, name + _STARTING)
        self._fh = open(starting, "a+", encoding="utf-8")  # noqa: SIM115  (held open: it holds the lock)
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        self.path = os.path.join(folder, name + _SUFFIX)
        os.rename(starting, self.path)  # only now does a sweep look at it: it is locked
        self._live: dict[str, str] = {}  # temporary's file name -> its path
        self._lock = threading.Lock()

    def add(self, path: str) -> None:
        with self._lock:
            self._live[os.path.basename(path)] = path
            self._append(f"+{path}\n")

    def discard(self, path: str) -> None:
        with self._lock:
            if self._live.pop(os.path.basename(path), None) is None:
                return
            if self._live:
                self._append(f"-{path}\n")
            else:  # nothing in flight: start the file afresh
                self._fh.truncate(0)

    def holds(self, path: str) -> bool:
        with self._lock:
            return os.path.basename(path) in self._live

    def compact(self) -> None:
        """Rewrite the file as the temporaries in flight now (it only grows between compactions)."""
        with self._lock:
            self._fh.truncate(0)
            self._append("".join(f"+{p}\n" for p in self._live.values()))

    def _append(self, text: str) -> None:
        # flushed, not fsynced: a killed process's page cache survives it; after a power cut the
        # temporaries not listed any more are still removed once max_age old
        self._fh.write(text)
        self._fh.flush()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _listed(text: str) -> dict[str, str]:
    """The temporaries a journal's text says are in flight: file name -> path."""
    live: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("+"):
            live[os.path.basename(line[1:])] = line[1:]
        elif line.startswith("-"):
            live.pop(os.path.basename(line[1:]), None)
    return live


def scan_journals(root: str, own: str | None = None) -> tuple[int, int, set[str]]:
    """Remove what the journals of dead service processes list, and those journals; return ``(files
    removed, bytes freed, file names of the temporaries live processes other than ``own`` are writing)``."""
    folder = os.path.join(root, JOURNALS)
    removed = freed = 0
    live: set[str] = set()
    try:
        entries = list(os.scandir(folder))
    except OSError:  # no service process has journalled here
        return 0, 0, live
    for entry in entries:
        if entry.path == own or not entry.name.endswith((_SUFFIX, _STARTING)):
            continue
        try:
            if entry.name.endswith(_STARTING) and time.time() - entry.stat().st_mtime < _STARTING_GRACE_S:
                continue
            with open(entry.path, encoding="utf-8", errors="replace") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its process lives: what it lists is in flight
                    live.update(_listed(fh.read()))
                    continue
                r, f = _remove_listed(root, _listed(fh.read()).values())
                removed, freed = removed + r, freed + f
                os.unlink(entry.path)  # still locked: no other sweep reads it half-handled
        except FileNotFoundError:  # another process's sweep handled it meanwhile
            continue
        except OSError as exc:
            log.warning("could not read the upload journal %s: %s", entry.path, exc)
    return removed, freed, live


def _remove_listed(root: str, paths) -> tuple[int, int]:
    """Remove the temporaries a dead process listed (only temporaries, only under ``root``)."""
    removed = freed = 0
    top = os.path.join(os.path.realpath(root), "")
    for path in paths:
        if not is_temporary(os.path.basename(path)) or not os.path.realpath(path).startswith(top):
            continue
        try:
            size = os.lstat(path).st_size
            os.unlink(path)
        except FileNotFoundError:  # committed or aborted before its process died
            continue
        except OSError as exc:
            log.warning("could not remove the temporary %s of a dead upload: %s", path, exc)
            continue
        removed, freed = removed + 1, freed + size
    return removed, freed


def sweep(root: str, *, max_age: float, keep: Callable[[str], bool] = lambda _: False) -> tuple[int, int]:
    """Remove the temporaries under ``root`` last written more than ``max_age`` seconds ago, except those
    ``keep`` names; return ``(files removed, bytes freed)``. Walks without recursion (any depth) and without
    following symbolic links."""
    cutoff = time.time() - max_age
    removed = freed = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:  # removed meanwhile, or unreadable: nothing of ours to clean there
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name != JOURNALS:
                            stack.append(entry.path)
                        continue
                    if not is_temporary(entry.name):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_mtime > cutoff or keep(entry.path) or not remove_if_unlocked(entry.path):
                        continue
                except FileNotFoundError:  # committed or aborted meanwhile
                    continue
                except OSError as exc:
                    log.warning("could not remove the stale temporary %s: %s", entry.path, exc)
                    continue
                removed += 1
                freed += st.st_size
    return removed, freed


class Sweeper:
    """Sweeps ``root`` at once (in a background thread) and then every ``interval`` seconds, sparing what
    ``journal`` (this process's uploads) and the journals of live sibling processes list."""

    def __init__(self, root: str, journal: Journal, *, max_age: float, interval: float | None = None):
        self.root = root
        self.journal = journal
        self.max_age = max_age
        self.interval = interval if interval is not None else default_interval(max_age)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freestack-data-api-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def sweep_once(self) -> tuple[int, int]:
        """One sweep: dead processes' uploads first, then whatever is older than ``max_age``."""
        self.journal.compact()
        dead, dead_bytes, others = scan_journals(self.root, own=self.journal.path)
        old, old_bytes = sweep(
            self.root,
            max_age=self.max_age,
            keep=lambda p: self.journal.holds(p) or os.path.basename(p) in others,
        )
        if dead or old:
            log.warning(
                "removed %d temporaries (%.1f MiB) of uploads whose service process died and %d older than "
                "%.0f s (%.1f MiB) under %s",
                dead,
                dead_bytes / 2**20,
                old,
                self.max_age,
                old_bytes / 2**20,
                self.root,
            )
        return dead + old, dead_bytes + old_bytes

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep_once()
            except Exception:  # a failed sweep must not end the sweeping
                log.exception("sweeping %s for stale temporaries failed", self.root)
            self._stop.wait(self.interval)


__all__ = ["JOURNALS", "Journal", "Sweeper", "default_interval", "is_temporary", "scan_journals", "sweep"]
