"""torch's CPU thread pool of a process that shares its machine with others.

torch sizes its intra-op pool to the machine's cores. Two such processes on the same cores (a training
beside another task of the worker) each keep every core busy, and their threads, which wait for each other
at every operation, then wait on cores the other process holds: a training ran ~10x slower that way than
with a pool of one thread. A task therefore sizes its pool to its share of the cores (:func:`share`) with
:func:`size_pool`, once, before it computes.
"""

from __future__ import annotations

import contextlib
import os


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset sets it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def share(total: int, among: int) -> int:
    """``total`` threads shared out among ``among`` takers: at least 1 each."""
    return max(1, total // max(1, among))


def size_pool(threads: int) -> int:
    """torch's intra-op pool of this process sized to ``threads``, and its inter-op pool too where torch
    still allows it (only before the pool has run work, so not in a process that computed already).
    Returns the pool's size as torch reports it."""
    import torch

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        # the inter-op pool may have started already (RuntimeError); it then sits idle in a training's loop
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)
    return torch.get_num_threads()


__all__ = ["cores", "share", "size_pool"]
