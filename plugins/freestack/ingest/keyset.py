"""A memory-lean set of row keys, for duplicate detection while streaming.

Keys are hashed to 64 bits and kept in a numpy open-addressing table (about 16 bytes per key at
the maximum load of one half), so a day of tens of millions of rows fits in a few hundred MiB,
where a Python set of the strings would need gigabytes. Two different keys colliding on 64 bits
is astronomically unlikely (about n²/2⁶⁵); the cost of one would be a row quarantined as a
duplicate, never a lost or silently merged row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_EMPTY = np.uint64(0)


def hash_keys(keys: pa.Array) -> np.ndarray:
    """64-bit hashes of a string/binary/integer key column (never 0, the empty-slot marker)."""
    import pandas as pd

    values = keys.to_numpy(zero_copy_only=False)
    h = pd.util.hash_array(values, categorize=False).astype(np.uint64, copy=False)
    h[h == _EMPTY] = np.uint64(1)
    return h


class KeySet:
    def __init__(self, capacity: int = 1 << 16):
        size = 1
        while size < capacity:
            size <<= 1
        self._table = np.zeros(size, dtype=np.uint64)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._table.nbytes

    def add_batch(self, hashes: np.ndarray) -> np.ndarray:
        """Insert ``hashes``; return a bool mask of those already present (earlier or in this batch)."""
        n = len(hashes)
        dup = np.zeros(n, dtype=bool)
        if n == 0:
            return dup
        # duplicates inside the batch: every occurrence after the first
        _, first = np.unique(hashes, return_index=True)
        later = np.ones(n, dtype=bool)
        later[first] = False
        dup |= later
        self._grow(self._count + n)
        idx = np.flatnonzero(~later)
        todo = hashes[idx]
        mask = np.uint64(len(self._table) - 1)
        slots = (todo & mask).astype(np.int64)
        while len(idx):
            cur = self._table[slots]
            found = cur == todo
            dup[idx[found]] = True
            empty = cur == _EMPTY
            # several keys may race for one empty slot: the first of each slot wins this round
            cand = np.flatnonzero(empty)
            won = np.zeros(len(idx), dtype=bool)
            if len(cand):
                _, first_c = np.unique(slots[cand], return_index=True)
                winners = cand[first_c]
                self._table[slots[winners]] = todo[winners]
                won[winners] = True
                self._count += len(winners)
            keep = ~(found | won)
            idx, todo = idx[keep], todo[keep]
            # losers of a race re-check the same slot (it may now hold their own key); others move on
            lost_race = empty[keep]
            slots = np.where(lost_race, slots[keep], (slots[keep] + 1) & np.int64(mask))
        return dup

    def _grow(self, needed: int) -> None:
        if needed * 2 <= len(self._table):
            return
        size = len(self._table)
        while needed * 2 > size:
            size <<= 1
        old = self._table[self._table != _EMPTY]
        self._table = None  # free the old table before allocating the new one
        self._table = np.zeros(size, dtype=np.uint64)
        self._count = 0
        for i in range(0, len(old), 1 << 18):  # in slices: bounded temporaries
            self.add_batch(old[i : i + (1 << 18)])
