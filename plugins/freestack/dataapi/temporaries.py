"""Removing the temporaries that writers killed mid-write (``kill -9``, a power cut) left behind.

Every atomic write on a local folder streams into a hidden temporary beside its target
(``.<name>.freestack-tmp-<id>``) and renames it into place at the end, so a killed writer never leaves
a partial object, but it does leave its temporary. The service removes such temporaries when it starts
and then every ``interval`` seconds, throughout its backing folder. Only temporaries whose last write
is older than ``max_age`` seconds are removed, and never one that an upload of this process is still
writing, however quiet its client has gone: a temporary that old belongs to no write in flight (other
processes writing into the same folder, such as pipeline tasks, write their temporaries continuously).
Object stores need none of this: an unfinished upload there is never an object.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from freestack.storage.objects import TMP_MARK

log = logging.getLogger("freestack.dataapi")

#: temporaries not written to for this long belong to no write in flight
DEFAULT_MAX_AGE_S = 3600.0
#: how often the backing folder is swept while the service runs
DEFAULT_INTERVAL_S = 600.0


def is_temporary(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


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
                        stack.append(entry.path)
                        continue
                    if not is_temporary(entry.name):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_mtime > cutoff or keep(entry.path):
                        continue
                    os.unlink(entry.path)
                except FileNotFoundError:  # committed or aborted meanwhile
                    continue
                except OSError as exc:
                    log.warning("could not remove the stale temporary %s: %s", entry.path, exc)
                    continue
                removed += 1
                freed += st.st_size
    return removed, freed


class Sweeper:
    """Sweeps ``root`` at once (in a background thread) and then every ``interval`` seconds."""

    def __init__(self, root: str, *, max_age: float = DEFAULT_MAX_AGE_S, interval: float = DEFAULT_INTERVAL_S,
                 keep: Callable[[str], bool] = lambda _: False):
        self.root = root
        self.max_age = max_age
        self.interval = interval
        self.keep = keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freestack-data-api-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                removed, freed = sweep(self.root, max_age=self.max_age, keep=self.keep)
                if removed:
                    log.warning("removed %d stale temporaries (%.1f MiB) left by interrupted writers under %s",
                                removed, freed / 2**20, self.root)
            except Exception:  # a failed sweep must not end the sweeping
                log.exception("sweeping %s for stale temporaries failed", self.root)
            self._stop.wait(self.interval)


__all__ = ["DEFAULT_INTERVAL_S", "DEFAULT_MAX_AGE_S", "Sweeper", "is_temporary", "sweep"]
