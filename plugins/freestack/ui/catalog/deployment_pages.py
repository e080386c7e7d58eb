"""What the Deployments page shows: every deployment record under the storage roots the pages read
(:func:`freestack.ui.catalog.common.storage_roots`), whoever made it (a pipeline's ``deploy``, a reusable
operator, ``freestack serve deploy``), read as ``freestack serve status`` reads them
(:func:`freestack.serving.records.all_deployments`), its traffic split and what its server answers now."""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, computed_field

from freestack.serving.records import alias_drift, all_deployments, served_alias
from freestack.storage import to_path
from freestack.ui.catalog.common import Pipeline, parallel, read_many, storage_roots
from freestack.version.files import PREPROCESSING

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec


class Serving(BaseModel):
    """What the model server's Prometheus metrics say since it started (its workers summed)."""

    requests: float | None = None
    rows: float | None = None
    mean_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    #: a text-generation version's (``mlserver``): its streams' time to first token and between tokens and
    #: its answers' time in the queue (the bucket bounds of the 50th and 95th percentiles), and the mean
    #: prompt and generated tokens of an answer
    ttft_ms: tuple[float | None, float | None] | None = None
    itl_ms: tuple[float | None, float | None] | None = None
    queue_ms: tuple[float | None, float | None] | None = None
    prompt_tokens: float | None = None
    generated_tokens: float | None = None


class DeploymentRow(BaseModel):
    pipeline: str | None = Field(description="the pipeline that trains its model; None: no pipeline does")
    model: str
    name: str
    target: str
    state: str  # a local deployment's as `freestack serve status` tells it: serving, or DOWN
    hint: str | None = None  # why it is DOWN, and what to do
    version: str | None
    address: str | None
    since: str | None
    health: str | None
    smoke: dict[str, Any] | None
    serving: Serving
    traffic: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    alias: str | None = None
    mismatch: str | None = None
    #: a text-generation version served on ``mlserver``: its OpenAI API's base URL, and a client's first call
    openai_url: str | None = None
    openai_snippet: str | None = None

    @computed_field
    @property
    def key(self) -> str:
        """The name in its model's page addresses (``/models/<key>``): its pipeline's, else its model's."""
        return self.pipeline or self.model


def traffic_split(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A Kubernetes deployment's predictors as its last rollout left them: main and, with a canary, its share."""
    if record.get("target") != "kubernetes":
        return []
    canary = int(record.get("canary_traffic") or 0) if record.get("canary_version") else 0
    split = [{"name": "main", "version": record.get("version"), "traffic": 100 - canary}]
    if canary:
        split.append({"name": "canary", "version": record.get("canary_version"), "traffic": canary})
    return split


def _deployment(record: dict[str, Any], pipeline: str | None, root: str) -> DeploymentRow:
    from freestack.serving.local import describe

    state, hint = record.get("state", "?"), None
    if record.get("target") == "kubernetes":
        address = f"SeldonDeployment {record.get('namespace')}/{record.get('name')}"
        health = record.get("message")
    else:  # what `freestack serve status` says: serving only while its process lives and its model answers
        address = record.get("predict_url") or record.get("url")
        now = describe(record) if state == "serving" else {}
        state, hint = now.get("live_state", state), now.get("hint")
        health = now.get("health")
    serving = state == "serving"
    return DeploymentRow(
        pipeline=pipeline,
        model=record.get("model", "?"),
        name=record.get("name", "?"),
        target=record.get("target", "local"),
        state=state,
        hint=hint,
        version=record.get("version"),
        address=address,
        health=health,
        since=record.get("deployed_at") or (record.get("history") or [{}])[-1].get("at"),
        smoke=record.get("smoke"),
        serving=serving_stats(record.get("metrics_url")) if serving else Serving(),
        traffic=traffic_split(record),
        history=list(record.get("history") or [])[-10:][::-1],
        alias=served_alias(record),
        mismatch=alias_drift(root, record),
        **_openai(record),
    )


def _openai(record: dict[str, Any]) -> dict[str, str]:
    """Where a local ``mlserver`` deployment of a text-generation version speaks the OpenAI API, and the
    ``openai`` client's first call to it (the key named by its connection, never shown). The call names
    the registered model the record holds, as the server does (its ``model`` answers; the deployment's
    name, ``arith-tiny`` for ``arith_tiny``, would be a 404)."""
    if (
        record.get("target", "local") != "local"
        or record.get("runtime") != "mlserver"
        or not record.get("url")
        or not record.get("version_uri")
    ):
        return {}
    pre = read_many(to_path(record["version_uri"]), [PREPROCESSING]).get(PREPROCESSING) or {}
    if pre.get("task") != "generation":
        return {}
    url = f"{record['url']}/v1"
    conn = record.get("api_key_conn_id")
    key = f'"<the password of connection {conn}>"' if conn else '"none"  # the deployment asks for no key'
    snippet = (
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{url}", api_key={key})\n'
        "answer = client.chat.completions.create(\n"
        f'    model="{record.get("model")}", messages=[{{"role": "user", "content": "Hello"}}], max_tokens=32\n'
        ")\n"
        "print(answer.choices[0].message.content)"
    )
    return {"openai_url": url, "openai_snippet": snippet}


def serving_stats(metrics_url: str | None, timeout: float = 2.0) -> Serving:
    """Predictions, rows and model latency (mean, 95th percentile) so far, from the model server's
    Prometheus metrics (``freestack_model_predict_seconds``, ``freestack_prediction_rows_total``)."""
    from prometheus_client.parser import text_string_to_metric_families

    if not metrics_url:
        return Serving()
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return Serving()
    sums: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_bucket"):
                le, of = float(s.labels["le"]), buckets.setdefault(s.name.removesuffix("_bucket"), {})
                of[le] = of.get(le, 0.0) + s.value
            else:
                sums[s.name] = sums.get(s.name, 0.0) + s.value
    count = sums.get("freestack_model_predict_seconds_count", 0.0)
    mean = 1000 * sums.get("freestack_model_predict_seconds_sum", 0.0) / count if count else None
    return Serving(
        requests=count,
        rows=sums.get("freestack_prediction_rows_total"),
        mean_latency_ms=mean,
        p95_latency_ms=_bound(buckets.get("freestack_model_predict_seconds", {}), 0.95, 1000),
        ttft_ms=_bounds(buckets, "freestack_llm_time_to_first_token_seconds"),
        itl_ms=_bounds(buckets, "freestack_llm_inter_token_latency_seconds"),
        queue_ms=_bounds(buckets, "freestack_llm_queue_time_seconds"),
        prompt_tokens=_mean(sums, "freestack_llm_prompt_tokens"),
        generated_tokens=_mean(sums, "freestack_llm_generation_tokens"),
    )


def _bound(cumulative: dict[float, float], q: float, scale: float = 1.0) -> float | None:
    """The upper bound of the histogram bucket the ``q`` quantile falls in (None: no count, or past the
    last finite bound)."""
    count = cumulative.get(float("inf"), 0.0)
    le = next((le for le, n in sorted(cumulative.items()) if count and n >= q * count), None)
    return None if le is None or le == float("inf") else scale * le


def _bounds(buckets: dict[str, dict[float, float]], name: str) -> tuple[float | None, float | None] | None:
    """A latency histogram's 50th and 95th percentile bounds in ms; None when the server has none."""
    if name not in buckets:
        return None
    return _bound(buckets[name], 0.5, 1000), _bound(buckets[name], 0.95, 1000)


def _mean(sums: dict[str, float], name: str) -> float | None:
    count = sums.get(f"{name}_count", 0.0)
    return sums.get(f"{name}_sum", 0.0) / count if count else None


def deployments(found: list[tuple[Pipeline, PipelineSpec]]) -> list[DeploymentRow]:
    """Every deployment record under the storage roots of ``found`` and the storage_root setting's, with
    what is true now; each names the pipeline of ``found`` that trains its model there, if one does."""
    trained_by = {(p.root.rstrip("/"), spec.model_name): p.name for p, spec in found}
    out = [
        (rec, trained_by.get((root, rec.get("model", ""))), root)
        for root in storage_roots(found)
        for rec in all_deployments(root)
    ]
    return parallel(lambda args: _deployment(*args), out)


__all__ = [
    "DeploymentRow",
    "Serving",
    "deployments",
    "serving_stats",
    "traffic_split",
]
