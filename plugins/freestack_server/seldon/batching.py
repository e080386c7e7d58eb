"""Adaptive batching in the freestack worker: requests that arrived together share one forward pass.
Runs in the serving environment.

When one pass of the worker's event loop finds several connections with a request in, it serves each
in its own greenlet (:class:`RequestBatcher.run`). A request's code runs as it always does (direct
prediction or Seldon's app, Seldon's ``predict``, the model's checks, metrics and request log) up to the
model's forward pass (:meth:`freestack_server.core.model.ServedModel.forward`), where it parks with
its rows (:meth:`RequestBatcher.park`). Once every request of the round has parked or finished, one forward
over their rows stacked answers them all, and each request resumes with its own rows of the result
and goes on to its answer. Nothing waits for more requests to come (MLServer's ``max_batch_time`` of
0): a request alone in its round is served as before, with no greenlet.

The worker is one thread and greenlets switch only at :meth:`park`, so the model's per-request state
(what it keeps between ``predict`` and Seldon's ``metrics()``/``tags()``) is never interleaved. A batch
holds at most ``max_rows`` rows (the model's ``max_batch_rows``); inputs that are not one float32
matrix of the same width (a model of raw category/text/image inputs, encoded per column) are run one
by one. If the stacked forward fails, each request's rows are run alone, so each request gets the
answer or the error it would have got alone. A row's probabilities can differ from its answer alone
in the last float32 digit (a different matrix-multiply blocking), as with any batching server;
config ``adaptive_batching: false`` turns it off.

A text-generation model parks its checked prompts instead (:class:`freestack_server.core.generation.Prompts`):
those of a round with the same generation parameters (``batch_key``) share one ``generate`` call of at
most ``batch_limit`` prompts (``deploy.generation.batch_prompts``), left-padded, and each request gets its
own prompts' completions back. Its requests take long enough that the worker waits ``gather_s`` (5 ms)
for the rest of a round when requests are concurrent (several in this round or the last) and other open
connections have none in yet: clients answered together send again together, and keep sharing one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from greenlet import getcurrent, greenlet


class RequestBatcher:
    """Runs a round of jobs, one greenlet each, and their parked forwards as few stacked forwards."""

    def __init__(self, forward: Callable[[Any], np.ndarray], max_rows: int, gather_s: float = 0.0):
        self.forward = forward  # the model's own forward over a float32 matrix (or its other inputs)
        self.max_rows = max(1, int(max_rows))
        #: how long the worker waits for more requests on its other open connections (a
        #: generation model's clients send again at once when a shared call answers them: without it a
        #: straggler splits their next round); 0 for models whose forward is shorter than the wait
        self.gather_s = gather_s
        self.last_round = 1  # requests of the worker's last round
        self._hub: Any = None  # the greenlet running the round, while one runs
        self.rounds = self.batched = 0  # rounds with a stacked forward, and the requests they answered

    def run(self, jobs: Sequence[Callable[[], Any]]) -> None:
        """Run ``jobs`` (each catches its own errors, as the worker's request handling does) to the end."""
        if len(jobs) < 2:
            for job in jobs:
                job()
            return
        self._hub = getcurrent()
        try:
            parked = self._start([greenlet(job) for job in jobs])
            while parked:
                parked = self._answer(parked)
        finally:
            self._hub = None

    def park(self, x: Any) -> np.ndarray | None:
        """Inside a round's job: wait with ``x`` for the round's stacked forward, and return this job's
        rows of it. None outside a round: the caller runs its forward itself."""
        hub = self._hub
        if hub is None or getcurrent() is hub:
            return None
        return hub.switch(x)

    def _start(self, glets: list[greenlet]) -> list[tuple[greenlet, Any]]:
        parked = []
        for g in glets:
            x = g.switch()
            if not g.dead:
                parked.append((g, x))
        return parked

    def _answer(self, parked: list[tuple[greenlet, Any]]) -> list[tuple[greenlet, Any]]:
        """Answer every parked job (its forward's result, or the error it raised alone); the jobs parked again."""
        results = [r for group in self._groups(parked) for r in self._forward_group(group)]
        again = []
        for g, out, err in results:
            x = g.throw(err) if err is not None else g.switch(out)
            if not g.dead:
                again.append((g, x))
        return again

    def _groups(self, parked: list[tuple[greenlet, Any]]) -> list[list[tuple[greenlet, Any]]]:
        """Runs of float32 matrices of one width and at most ``max_rows`` rows together; prompts of one
        ``batch_key`` together, at most ``batch_limit`` of them a group; anything else alone."""
        groups: list[list[tuple[greenlet, Any]]] = []
        current: list[tuple[greenlet, Any]] = []
        keyed: dict[Any, list[list[tuple[greenlet, Any]]]] = {}
        rows = 0
        for g, x in parked:
            key = getattr(x, "batch_key", None)
            if key is not None:
                runs = keyed.setdefault(key, [[]])
                if runs[-1] and sum(len(y) for _, y in runs[-1]) + len(x) > x.batch_limit:
                    runs.append([])
                runs[-1].append((g, x))
                continue
            if not _stackable(x):
                groups.append([(g, x)])
                continue
            if current and (x.shape[1] != current[0][1].shape[1] or rows + x.shape[0] > self.max_rows):
                groups.append(current)
                current, rows = [], 0
            current.append((g, x))
            rows += x.shape[0]
        if current:
            groups.append(current)
        return groups + [run for runs in keyed.values() for run in runs]

    def _forward_group(
        self, group: list[tuple[greenlet, Any]]
    ) -> list[tuple[greenlet, Any, BaseException | None]]:
        if len(group) > 1:
            xs = [x for _, x in group]
            try:
                out = self.forward(
                    type(xs[0]).join(xs) if hasattr(xs[0], "batch_key") else np.concatenate(xs)
                )
            except Exception:  # noqa: BLE001 - each request is run alone, and gets its own error
                pass
            else:
                self.rounds += 1
                self.batched += len(group)
                ends = np.cumsum([len(x) for x in xs]).tolist()
                parts = [out[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
                return [(g, part, None) for (g, _), part in zip(group, parts, strict=True)]
        results = []
        for g, x in group:
            try:
                results.append((g, self.forward(x), None))
            except Exception as exc:  # noqa: BLE001 - raised in the request's own greenlet
                results.append((g, None, exc))
        return results


def _stackable(x: Any) -> bool:
    return isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype == np.float32


__all__ = ["RequestBatcher"]
