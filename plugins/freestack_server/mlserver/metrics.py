"""The ``mlserver`` runtime's own Prometheus metrics, served on MLServer's metrics port beside MLServer's:
each answered request by the version that answered it (an adapter version, an in-place promotion) and the
protocol it came by (``v2``, ``openai``), under the names the Seldon runtime uses
(``freestack_model_predict_seconds``, ``freestack_prediction_rows_total``), so the Deployments page reads
both runtimes alike. Created when first used (MLServer sets up Prometheus before)."""

from __future__ import annotations

from functools import cache


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


__all__ = ["record"]
