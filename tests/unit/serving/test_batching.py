"""The worker's adaptive batching (freestack_server.seldon.batching): jobs of one round park their forwards,
one stacked forward answers them, and each job goes on with its own rows or its own error."""

from __future__ import annotations

import numpy as np
import pytest

from freestack_server.seldon.batching import RequestBatcher


class Net:
    """A forward that doubles its input, remembers each call's row count and refuses NaN."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, x):
        if isinstance(x, dict):
            self.calls.append(-1)
            return np.asarray(x["a"], dtype=np.float32) * 2
        self.calls.append(x.shape[0])
        if np.isnan(x).any():
            raise ValueError("NaN in the rows")
        return x * 2


def rows(n: int, value: float, width: int = 3) -> np.ndarray:
    return np.full((n, width), value, dtype=np.float32)


def run(batcher: RequestBatcher, inputs: list, log: list | None = None) -> list:
    """One round of jobs, each parking ``inputs[i]`` (or raising when it is an exception); their outcomes."""
    out: list = [None] * len(inputs)

    def job(i):
        def go():
            if isinstance(inputs[i], Exception):
                out[i] = inputs[i]
                return
            try:
                got = batcher.park(inputs[i])
                out[i] = got
                if log is not None:  # what runs after the park runs to its end before the next job resumes
                    log.append(("resumed", i))
                    log.append(("done", i))
            except ValueError as exc:
                out[i] = exc

        return go

    batcher.run([job(i) for i in range(len(inputs))])
    return out


def test_a_round_shares_one_forward_and_each_job_gets_its_own_rows():
    net = Net()
    c = RequestBatcher(net, max_rows=100)
    log: list = []
    out = run(c, [rows(1, 1.0), rows(2, 2.0), rows(3, 3.0)], log)
    assert net.calls == [6]
    for got, n, v in zip(out, (1, 2, 3), (1.0, 2.0, 3.0), strict=True):
        np.testing.assert_array_equal(got, rows(n, 2 * v))
    assert log == [("resumed", 0), ("done", 0), ("resumed", 1), ("done", 1), ("resumed", 2), ("done", 2)]
    assert (c.rounds, c.batched) == (1, 3)


def test_outside_a_round_park_leaves_the_forward_to_the_caller():
    c = RequestBatcher(Net(), max_rows=10)
    assert c.park(rows(1, 1.0)) is None
    seen = []
    c.run([lambda: seen.append(c.park(rows(1, 1.0)))])  # a round of one job runs it directly
    assert seen == [None]


def test_groups_break_at_max_rows_and_width_and_other_inputs_run_alone():
    net = Net()
    c = RequestBatcher(net, max_rows=4)
    out = run(c, [rows(3, 1.0), rows(2, 1.0), rows(1, 1.0), rows(1, 1.0, width=5), {"a": [[1.0]]}])
    assert sorted(net.calls) == [-1, 1, 3, 3]  # 3 | 2+1 | the other width | the dict alone
    assert [o.shape for o in out] == [(3, 3), (2, 3), (1, 3), (1, 5), (1, 1)]


def test_a_failing_stacked_forward_runs_each_alone_and_only_the_bad_one_fails():
    net = Net()
    bad = rows(1, np.nan)
    out = run(RequestBatcher(net, max_rows=100), [rows(1, 1.0), bad, rows(2, 3.0)])
    assert net.calls == [4, 1, 1, 2]
    assert isinstance(out[1], ValueError) and "NaN" in str(out[1])
    np.testing.assert_array_equal(out[2], rows(2, 6.0))


def test_jobs_that_finish_before_the_forward_are_not_waited_for():
    net = Net()
    out = run(RequestBatcher(net, max_rows=100), [ValueError("refused"), rows(1, 1.0), rows(1, 2.0)])
    assert isinstance(out[0], ValueError) and net.calls == [2]


def test_a_job_that_parks_twice_is_answered_in_the_next_pass():
    net = Net()
    c = RequestBatcher(net, max_rows=100)
    got = []

    def twice():
        got.append(c.park(rows(1, 1.0)))
        got.append(c.park(rows(1, 5.0)))

    c.run([twice, lambda: got.append(c.park(rows(1, 2.0)))])
    assert net.calls == [2, 1]
    assert [float(g[0, 0]) for g in got] == [2.0, 4.0, 10.0]


@pytest.mark.parametrize("n", [0, 1])
def test_rounds_of_one_or_none_run_without_greenlets(n):
    c = RequestBatcher(Net(), max_rows=10)
    done = []
    c.run([lambda: done.append(1)] * n)
    assert done == [1] * n and c.rounds == 0
