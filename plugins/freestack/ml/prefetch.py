"""An iterator produced on a thread ahead of its consumer, so that reading overlaps the work on what
was read (ingest parses the next Arrow batch while the last is validated; training builds the next
batches while the model steps). Plain Python: ingest imports it without PyTorch."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

_DONE = object()


def prefetched(items: Iterator, depth: int = 1, *, name: str = "freestack-prefetch") -> Iterator:
    """``items``, produced on a daemon thread at most ``depth`` ahead; the producer's exception is raised
    here, after the items it produced. A consumer that stops early (early stopping, an error) lets the
    thread finish its current item, then ``items`` is closed there, so a generator's cleanup runs."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    error: list[BaseException] = []

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
                    break
        except BaseException as exc:  # handed to the consumer, which raises it
            error.append(exc)
        finally:
            close = getattr(items, "close", None)
            if stop.is_set() and close is not None:
                close()
            q.put(_DONE)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)
        thread.join()
    if error:
        raise error[0]
