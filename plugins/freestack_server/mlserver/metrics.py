"""The ``mlserver`` runtime's own Prometheus metrics, served on MLServer's metrics port beside MLServer's:
each answered request by the version that answered it (an adapter version, an in-place promotion) and the
protocol it came by (``v2``, ``openai``), under the names the Seldon runtime uses
(``freestack_model_predict_seconds``, ``freestack_prediction_rows_total``), so the Deployments page reads
both runtimes alike; and for a text-generation version, histograms of its streams' time to first token and
time between tokens, of each answer's time in the queue and of its prompt and generated tokens
(``freestack_llm_*``, per version).
Created when first used (MLServer sets up Prometheus before)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from freestack.ml.lm.answers import Completion

#: the buckets of the latency histograms, in seconds (vLLM's for time to first token and between tokens)
TOKEN_SECONDS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: the buckets of the token-count histograms
TOKENS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


@cache
def _llm():
    """What an LLM operator watches first, per version, under names like vLLM's."""
    from prometheus_client import Histogram

    def histogram(name: str, text: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(f"freestack_llm_{name}", text, ["version"], buckets=buckets)

    return {
        "ttft": histogram("time_to_first_token_seconds", "Seconds to a stream's first token", TOKEN_SECONDS),
        "itl": histogram("inter_token_latency_seconds", "Seconds between a stream's tokens", TOKEN_SECONDS),
        "queue": histogram(
            "queue_time_seconds",
            "Seconds from a request's arrival to the model starting on it",
            TOKEN_SECONDS,
        ),
        "prompt": histogram("prompt_tokens", "Prompt tokens of each answer", TOKENS),
        "generated": histogram("generation_tokens", "Tokens generated for each answer", TOKENS),
    }


def first_token(version: str, seconds: float) -> None:
    _llm()["ttft"].labels(version=version).observe(seconds)


def between_tokens(version: str, seconds: float) -> None:
    _llm()["itl"].labels(version=version).observe(seconds)


def answered(version: str, answers: Iterable[Completion]) -> None:
    """Each answer's prompt and generated tokens, and its time in the queue (an answer served by the
    generation engine knows it)."""
    llm = _llm()
    for a in answers:
        llm["prompt"].labels(version=version).observe(a.prompt_tokens)
        llm["generated"].labels(version=version).observe(a.completion_tokens)
        if a.queued is not None:
            llm["queue"].labels(version=version).observe(a.queued)


@cache
def _metrics():
    from prometheus_client import Counter, Histogram

    labels = ["version", "protocol"]
    seconds = Histogram(
        "freestack_model_predict_seconds", "Seconds to answer a request, by version and protocol", labels
    )
    rows = Counter("freestack_prediction_rows", "Rows (or prompts) answered, by version and protocol", labels)
    return seconds, rows


def record(version: str | None, protocol: str, seconds: float, rows: int) -> None:
    """One answered request of ``rows`` rows (or prompts), ``seconds`` long."""
    timer, counter = _metrics()
    timer.labels(version=version or "unknown", protocol=protocol).observe(seconds)
    counter.labels(version=version or "unknown", protocol=protocol).inc(rows)


__all__ = ["answered", "between_tokens", "first_token", "record"]
