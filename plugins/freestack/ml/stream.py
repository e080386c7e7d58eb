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

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

Inputs = np.ndarray | dict[str, np.ndarray]
Tensors = torch.Tensor | dict[str, torch.Tensor]
Batch = tuple[Tensors, torch.Tensor]


class BatchSource(Protocol):
    """A split the loop trains or scores on."""

    @property
    def n(self) -> int: ...

    def epoch(self, epoch: int, batch_size: int, seed: int, device: torch.device) -> Iterator[Batch]: ...

    def ordered(self, batch_size: int, device: torch.device) -> Iterator[Batch]: ...


def _rows(x: Tensors) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _take(x: Tensors, index) -> Tensors:
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def _to(x: Tensors, device: torch.device) -> Tensors:
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def _tensors(x: Inputs) -> Tensors:
    """CPU tensors the caller owns (the arrays may be read-only views)."""
    if isinstance(x, dict):
        return {k: torch.tensor(v) for k, v in x.items()}
    return torch.tensor(x)


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

    @property
    def n(self) -> int:
        return len(self.y)

    def epoch(self, epoch: int, batch_size: int, seed: int, device: torch.device) -> Iterator[Batch]:
        perm = torch.randperm(self.n, generator=epoch_generator(seed, epoch, device), device=device)
        for i in range(0, self.n, batch_size):
            idx = perm[i : i + batch_size]
            yield _take(self.x, idx), self.y[idx]

    def ordered(self, batch_size: int, device: torch.device) -> Iterator[Batch]:
        for i in range(0, self.n, batch_size):
            yield _take(self.x, slice(i, i + batch_size)), self.y[i : i + batch_size]


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

    def epoch(self, epoch: int, batch_size: int, seed: int, device: torch.device) -> Iterator[Batch]:
        gen = epoch_generator(seed, epoch, torch.device("cpu"))
        held: list[tuple[Tensors, torch.Tensor]] = []
        rows, buffer_rows = 0, self.buffer_rows
        for x, y in self._read(seed * 1_000_003 + epoch):
            if not held:  # wide rows (images, long texts): fewer of them in the buffer
                buffer_rows = min(self.buffer_rows, max(batch_size, self.buffer_bytes // max(1, _row_bytes(x, y))))
            held.append((x, y))
            rows += len(y)
            if rows >= buffer_rows + batch_size:
                x_all, y_all = _shuffled(held, gen)
                out = (rows - buffer_rows) // batch_size * batch_size
                yield from _batches(x_all, y_all, 0, out, batch_size, device)
                held, rows = [(_take(x_all, slice(out, None)), y_all[out:])], rows - out
        if rows:
            x_all, y_all = _shuffled(held, gen)
            yield from _batches(x_all, y_all, 0, rows, batch_size, device)

    def ordered(self, batch_size: int, device: torch.device) -> Iterator[Batch]:
        for x, y in self._read(None):
            yield from _batches(x, y, 0, len(y), batch_size, device)

    def _read(self, order_seed: int | None) -> Iterator[tuple[Tensors, torch.Tensor]]:
        """The chunks as CPU tensors, read and encoded ``prefetch`` chunks ahead on a thread (reading
        Parquet, tokenizing and decoding images release the GIL, so this overlaps the training step)."""
        return _prefetched(((_tensors(x), torch.tensor(y)) for x, y in self.chunks(order_seed)), self.prefetch)


def _row_bytes(x: Tensors, y: torch.Tensor) -> int:
    tensors = [*x.values(), y] if isinstance(x, dict) else [x, y]
    return sum(t.element_size() * t[0].numel() for t in tensors) if len(y) else 0


def _shuffled(held: list[tuple[Tensors, torch.Tensor]], gen: torch.Generator) -> tuple[Tensors, torch.Tensor]:
    x_all = _cat([x for x, _ in held]) if len(held) > 1 else held[0][0]
    y_all = torch.cat([y for _, y in held]) if len(held) > 1 else held[0][1]
    perm = torch.randperm(len(y_all), generator=gen)
    return _take(x_all, perm), y_all[perm]


def _batches(x: Tensors, y: torch.Tensor, start: int, stop: int, batch_size: int, device: torch.device) -> Iterator[Batch]:
    for i in range(start, stop, batch_size):
        j = min(i + batch_size, stop)
        yield _to(_take(x, slice(i, j)), device), y[i:j].to(device, non_blocking=True)


_DONE = object()


def _prefetched(items: Iterator, depth: int) -> Iterator:
    """``items``, produced on a daemon thread at most ``depth`` ahead; its exception is raised here. A
    consumer that stops early (early stopping, an error) lets the thread finish its current item and end."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            q.put(exc)

    thread = threading.Thread(target=produce, name="freestack-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


__all__ = ["BatchSource", "Chunks", "InMemory", "Streamed", "epoch_generator"]
