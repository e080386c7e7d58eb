"""What a generation asks (:class:`GenerationSettings`, immutable) and what it answers
(:class:`Completion`, with each token's :class:`TokenLogprob` when asked for): shared by batched
``generate`` (:mod:`~freestack.ml.lm.sampling`) and the server's engine (:mod:`~freestack.ml.lm.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated: greedy when ``temperature`` is 0; ``stop`` strings end an answer early;
    a prompt over ``max_prompt_tokens`` is cut from the left (``truncate: left``) or refused."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    max_prompt_tokens: int = 1024
    truncate: str = "left"  # left | refuse
    seed: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and the most likely tokens at its step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop (end of turn or a stop string) | length
    truncated: bool = False  # the prompt was cut from the left
    logprobs: list[TokenLogprob] | None = None  # each answer token's, when asked for
    queued: float | None = None  # seconds from its request's arrival to the model starting on it (served)
    token_ids: list[int] | None = None  # the answer's tokens, its end of turn included (the engine's)


__all__ = [
    "Completion",
    "GenerationSettings",
    "TokenLogprob",
]
