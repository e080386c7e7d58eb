"""prefetched: order, the producer's error after its items, and a generator closed when the consumer stops."""

from __future__ import annotations

import threading

import pytest

from freestack.ml.prefetch import prefetched


def test_items_in_order_then_the_producers_error():
    def items():
        yield from range(5)
        raise ValueError("bad row")

    seen = []
    with pytest.raises(ValueError, match="bad row"):
        for item in prefetched(items(), depth=2):
            seen.append(item)
    assert seen == [0, 1, 2, 3, 4]


def test_a_consumer_that_stops_early_closes_the_generator_on_its_thread():
    closed = threading.Event()

    def items():
        try:
            yield from range(1000)
        finally:
            closed.set()

    it = prefetched(items(), depth=1)
    assert next(it) == 0
    it.close()
    assert closed.wait(5)
