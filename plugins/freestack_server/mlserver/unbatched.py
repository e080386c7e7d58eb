"""The bound on requests the continuous batch cannot answer as asked (a grammar, log-probabilities, a seeded
sample: :func:`freestack.ml.lm.engine.needs_apart`). Each runs beside the batch, one at a time, with the batch
paused meanwhile, so their queue is bounded: per deployment (``deploy.generation.max_unbatched_requests``)
and per client address (``max_unbatched_per_client``). Past either, a 429 with ``Retry-After`` says which
bound, before anything is generated; a request holds its place until its answer (or stream) ends.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from freestack_server.mlserver.protocol import OpenAIError


@dataclass
class UnbatchedBound:
    """The requests waiting for or running on the path beside the batch, in all and by client."""

    most: int
    per_client: int
    held: Counter[str] = field(default_factory=Counter)

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """A place for one request of ``client``; OpenAIError 429 naming the bound it would pass."""
        if sum(self.held.values()) >= self.most:
            raise self._busy(
                f"{self.most} such requests are waiting or running on this deployment, its bound "
                "(deploy.generation.max_unbatched_requests)"
            )
        if self.held[client] >= self.per_client:
            raise self._busy(
                f"this client has {self.per_client} such requests waiting or running, its bound "
                "(deploy.generation.max_unbatched_per_client)"
            )
        self.held[client] += 1
        try:
            yield
        finally:
            self.held[client] -= 1
            if not self.held[client]:
                del self.held[client]

    @staticmethod
    def _busy(why: str) -> OpenAIError:
        return OpenAIError(
            429,
            "requests with response_format, tool_choice required, logprobs or a seeded sample run one at a time "
            f"beside the batch, and {why}: try again shortly",
            None,
            "rate_limit_exceeded",
        )


__all__ = ["UnbatchedBound"]
