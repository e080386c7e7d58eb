"""Where the training loop's batches come from: tensors in memory, or a stream of chunks.

:class:`InMemory` holds a split as tensors on the device and shuffles it with one permutation per
epoch (the fast path, for windows that fit). :class:`Streamed` reads a split chunk by chunk (a callable
gives the chunks in a seeded order: the train stage reads row groups of a spooled Parquet file), encodes
each on a background thread, and shuffles rows through a buffer of ``buffer_rows`` rows, as
``tf.data``'s ``shuffle`` and WebDataset do: memory holds a few chunks and the buffer, whatever the
window's size.

Both give the loop ``(inputs, target)`` batches: ``epoch(...)`` shuffled for training, ``ordered(...)``
in order for validation and test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from freestack.ml.prefetch import prefetched

Inputs = np.ndarray | dict[str, np.ndarray]
Tensors = torch.Tensor | dict[str, torch.Tensor]
Batch = tuple[Tensors, torch.Tensor]


class BatchSource(Protocol):
    """A split the loop trains or scores on."""

    @property
    def n(self) -> int: ...

    def epoch(self, epoch: int, batch_size: int, seed: int, device: torch.device) -> Iterator[Batch]: ...

    def ordered(self, batch_size: int, device: torch.device) -> Iterator[Batch]: ...


def _each(x: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn`` of every group's array (``x`` a dict of them), or of the one array."""
    return {k: fn(v) for k, v in x.items()} if isinstance(x, dict) else fn(x)


def take(x: Tensors, index) -> Tensors:
    """Rows ``index`` (a slice or an index tensor) of every group."""
    return _each(x, lambda v: v[index])


def _to(x: Tensors, device: torch.device) -> Tensors:
    return _each(x, lambda v: v.to(device, non_blocking=True))


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A CPU tensor the caller owns: the array's memory when it is writable, else a copy (it may be a
    read-only view of a frame)."""
    return torch.from_numpy(a) if a.flags.writeable and a.flags.c_contiguous else torch.tensor(a)


def _cat(parts: list[Tensors]) -> Tensors:
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The epoch's shuffling generator: the same seed and epoch give the same order (a resumed run too)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


@dataclass
class InMemory:
    """A split as tensors on the device: one permutation of all rows per epoch."""

    x: Tensors
    y: torch.Tensor
    rank: int = 0  # a data-parallel rank takes rows rank, rank + world, ... of every global batch
    world: int = 1

    @property
    def n(self) -> int:
        return len(self.y)

    def shard(self, rank: int, world: int) -> InMemory:
        """This split as rank ``rank`` of ``world`` reads it (``DistributedSampler``'s role): every rank draws
        the same permutation, and each takes its share of each global batch of ``batch_size`` rows."""
        return InMemory(self.x, self.y, rank, world)

    def epoch(self, epoch: int, batch_size: int, seed: int, device: torch.device) -> Iterator[Batch]:
        perm = torch.randperm(self.n, generator=epoch_generator(seed, epoch, device), device=device)
        for i in range(0, self.n, batch_size):
            idx = perm[i : i + batch_size]
            if self.world > 1:
                # a last batch too small to give every rank a row: every rank skips it
                if len(idx) < self.world:
                    break
                idx = idx[self.rank :: self.world]
            yield take(self.x, idx), self.y[idx]

    def ordered(self, batch_size: int, device: torch.device) -> Iterator[Batch]:
        for i in range(0, self.n, batch_size):
            yield take(self.x, slice(i, i + batch_size)), self.y[i : i + batch_size]


#: the chunks of a split, as ``(inputs, target)`` arrays; ``order_seed`` None: in storage order
Chunks = Callable[[int | None], Iterator[tuple[Inputs, np.ndarray]]]


@dataclass
class Streamed:
    """A split read chunk by chunk, ``n`` rows in all, shuffled through a ``buffer_rows`` buffer."""

    chunks: Chunks
    n: int
    buffer_rows: int = 65_536
    buffer_bytes: int = 256 << 20
    prefetch: int = 2
    world: int = 1  # a data-parallel rank's share: ``chunks`` gives only its chunks, batches are 1/world

    def shard(self, chunks: Chunks, world: int) -> Streamed:
        """This split as one of ``world`` ranks reads it: ``chunks`` gives that rank's rows only (e.g.
        :meth:`EncodedSpool.chunks` with its ``shard``), in batches of ``batch_size / world`` rows. ``n`` stays
        the split's; the ranks' shares differ by a few rows (the loop stops them together at the first end)."""
        return Streamed(chunks, self.n, self.buffer_rows, self.buffer_bytes, self.prefetch, world)

    def epoch(self, epoch: int, batch_size: int, seed: int, device: torch.device) -> Iterator[Batch]:
        batch_size = max(1, -(-batch_size // self.world))
        gen = epoch_generator(seed, epoch, torch.device("cpu"))
        buffer: ShuffleBuffer | None = None

        def groups() -> Iterator[tuple[Tensors, torch.Tensor]]:
            nonlocal buffer
            for x, y in self._read(seed * 1_000_003 + epoch):
                if buffer is None:  # wide rows (images, long texts): fewer of them in the buffer
                    rows = min(
                        self.buffer_rows, max(batch_size, self.buffer_bytes // max(1, _row_bytes(x, y)))
                    )
                    buffer = ShuffleBuffer(rows, gen)
                yield from buffer.push(x, y)
            if buffer is not None:
                yield buffer.drain()

        return _rebatch(groups(), batch_size, device)

    def ordered(self, batch_size: int, device: torch.device) -> Iterator[Batch]:
        for x, y in self._read(None):
            yield from _batches(x, y, 0, len(y), batch_size, device)

    def _read(self, order_seed: int | None) -> Iterator[tuple[Tensors, torch.Tensor]]:
        """The chunks as CPU tensors, read and encoded ``prefetch`` chunks ahead on a thread (reading
        Parquet, tokenizing and decoding images release the GIL, so this overlaps the training step)."""
        chunks = ((_each(x, _tensor), _tensor(np.asarray(y))) for x, y in self.chunks(order_seed))
        return prefetched(chunks, self.prefetch, name="freestack-batches")


@dataclass
class EncodedSpool:
    """A split encoded once and kept on local disk as raw arrays, one file per group and one for the
    target: a streamed epoch then reads row ranges (a memory copy from the page cache) instead of decoding
    and encoding the same rows again. ``chunks`` gives the ranges in a seeded order."""

    folder: str
    #: group ("" for a numeric-only matrix) -> (dtype, row shape)
    groups: dict[str, tuple[str, tuple[int, ...]]]
    target: tuple[str, tuple[int, ...]]
    n: int
    chunk_rows: int

    @classmethod
    def write(cls, folder: str, chunks: Iterator[tuple[Inputs, np.ndarray]], chunk_rows: int) -> EncodedSpool:
        groups: dict[str, tuple[str, tuple[int, ...]]] = {}
        target: tuple[str, tuple[int, ...]] = ("float32", ())
        files: dict[str, Any] = {}
        n = 0
        try:
            for x, y in chunks:
                parts = {**(x if isinstance(x, dict) else {"": x}), "target": y}
                for name, a in parts.items():
                    if name not in files:
                        files[name] = open(os.path.join(folder, f"{name or 'inputs'}.bin"), "wb")
                        if name == "target":
                            target = (str(a.dtype), a.shape[1:])
                        else:
                            groups[name] = (str(a.dtype), a.shape[1:])
                    files[name].write(np.ascontiguousarray(a).tobytes())
                n += len(y)
        finally:
            for f in files.values():
                f.close()
        return cls(folder, groups, target, n, chunk_rows)

    def _read(self, name: str, dtype: str, shape: tuple[int, ...], start: int, rows: int) -> np.ndarray:
        """Rows ``start..start+rows`` of a file, read into fresh memory (not mapped: the page cache stays
        the kernel's, out of the process's resident memory)."""
        width = int(np.prod(shape, dtype=np.int64))
        offset = start * width * np.dtype(dtype).itemsize
        data = np.fromfile(
            os.path.join(self.folder, f"{name or 'inputs'}.bin"),
            dtype=dtype,
            count=rows * width,
            offset=offset,
        )
        return data.reshape(rows, *shape)

    def chunks(
        self, order_seed: int | None, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[Inputs, np.ndarray]]:
        """The chunks in a seeded order. ``shard`` (rank, world): a rank reads only its part of each chunk,
        one of ``world`` contiguous row ranges, so the ranks together read each row once and their shares
        differ by at most a row a chunk; which part is a rank's turns with the seed (a new share each epoch)."""
        starts = np.arange(0, self.n, self.chunk_rows)
        if order_seed is not None:
            starts = np.random.default_rng(order_seed).permutation(starts)
        rank, world = shard
        part = (rank + (order_seed or 0)) % world
        for chunk_start in starts.tolist():
            chunk = min(self.chunk_rows, self.n - chunk_start)
            start = chunk_start + chunk * part // world
            rows = chunk_start + chunk * (part + 1) // world - start
            if rows == 0:
                continue
            x = {g: self._read(g, dtype, shape, start, rows) for g, (dtype, shape) in self.groups.items()}
            yield (x[""] if "" in x else x), self._read("target", *self.target, start, rows)


def _row_bytes(x: Tensors, y: torch.Tensor) -> int:
    tensors = [*x.values(), y] if isinstance(x, dict) else [x, y]
    return sum(t.element_size() * t[0].numel() for t in tensors) if len(y) else 0


class ShuffleBuffer:
    """``tf.data``'s shuffle buffer, a chunk at a time: once ``capacity`` rows are held, each incoming row
    takes the place of one drawn at random (without replacement within a chunk), and the drawn rows go
    out in the order drawn. Each row is copied twice (in, out), with no re-concatenation of the buffer."""

    def __init__(self, capacity: int, gen: torch.Generator):
        self.capacity, self.gen = capacity, gen
        self.x: Tensors | None = None
        self.y: torch.Tensor | None = None
        self.filled = 0

    def push(self, x: Tensors, y: torch.Tensor) -> Iterator[tuple[Tensors, torch.Tensor]]:
        if self.x is None or self.y is None:
            self.x, self.y = (_each(t, lambda v: v.new_empty((self.capacity, *v.shape[1:]))) for t in (x, y))
        start = min(self.capacity - self.filled, len(y))
        if start:
            self._put(slice(self.filled, self.filled + start), x, y, slice(0, start))
            self.filled += start
        while start < len(y):
            c = min(self.capacity, len(y) - start)
            pos = torch.randperm(self.capacity, generator=self.gen)[:c]
            out = take(self.x, pos), self.y[pos]
            self._put(pos, x, y, slice(start, start + c))
            start += c
            yield out

    def drain(self) -> tuple[Tensors, torch.Tensor]:
        """What the buffer holds, shuffled (the end of the epoch)."""
        assert self.x is not None and self.y is not None
        perm = torch.randperm(self.filled, generator=self.gen)
        return take(self.x, perm), self.y[perm]

    def _put(self, where, x: Tensors, y: torch.Tensor, rows: slice) -> None:
        assert self.x is not None and self.y is not None
        if isinstance(x, dict):
            for k, v in x.items():
                self.x[k][where] = v[rows]
        else:
            self.x[where] = x[rows]
        self.y[where] = y[rows]


def _rebatch(
    groups: Iterator[tuple[Tensors, torch.Tensor]], batch_size: int, device: torch.device
) -> Iterator[Batch]:
    """Batches of ``batch_size`` rows (the last one shorter) across groups of any size; full batches
    inside a group are views of it."""
    carry: tuple[Tensors, torch.Tensor] | None = None
    for x, y in groups:
        start = 0
        if carry is not None:
            need = batch_size - len(carry[1])
            if len(y) < need:
                carry = _cat([carry[0], x]), torch.cat([carry[1], y])
                continue
            head = _cat([carry[0], take(x, slice(0, need))]), torch.cat([carry[1], y[:need]])
            yield _to(head[0], device), head[1].to(device, non_blocking=True)
            start, carry = need, None
        stop = start + (len(y) - start) // batch_size * batch_size
        yield from _batches(x, y, start, stop, batch_size, device)
        if stop < len(y):
            carry = take(x, slice(stop, None)), y[stop:]
    if carry is not None and len(carry[1]):
        yield _to(carry[0], device), carry[1].to(device, non_blocking=True)


def _batches(
    x: Tensors, y: torch.Tensor, start: int, stop: int, batch_size: int, device: torch.device
) -> Iterator[Batch]:
    for i in range(start, stop, batch_size):
        j = min(i + batch_size, stop)
        yield _to(take(x, slice(i, j)), device), y[i:j].to(device, non_blocking=True)


__all__ = [
    "BatchSource",
    "Chunks",
    "EncodedSpool",
    "InMemory",
    "ShuffleBuffer",
    "Streamed",
    "epoch_generator",
    "take",
]
