"""A checkpoint store in memory (what :class:`freestack.ml.checkpoint.CheckpointStore` asks), for the tests
that kill a training and resume it: the blobs saved by name, and how many saves there were."""

from __future__ import annotations


class MemoryCheckpoints:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.saves = 0

    def save(self, name: str, data: bytes) -> None:
        self.blobs[name] = data
        self.saves += 1

    def load(self, name: str) -> bytes | None:
        return self.blobs.get(name)


__all__ = ["MemoryCheckpoints"]
