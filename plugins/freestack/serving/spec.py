"""A pipeline spec's ``deploy:`` block: where and how a promoted version is served.

    deploy:
      target: local                 # local (python -m freestack_server, supervised) | kubernetes
      name: digits                  # deployment name; default: the model name
      local:
        port: 9000                  # the deployment's address, for good; its servers: port + 1, + 2
        metrics_port: null          # blue's metrics (green: + 1); null: free ports chosen at deploy
        grpc_port: null             # runtime mlserver: blue's gRPC (green: + 1); null: free ones at deploy
        workers: 2                  # gunicorn workers (one model copy each)
        worker_class: freestack     # freestack (keep-alive, 1 thread) | gthread (threads: N) | sync
        smoke_rows: 32              # test rows sent before switching; answers must equal evaluation's
        timeout_seconds: null       # gunicorn's worker timeout; null: 30 s, 120 s for a huggingface version
        start_timeout_seconds: null # to load the model and answer health; null: 120 s, 600 s for huggingface
        log_sample_rate: 1.0        # fraction of requests in the request log (monitoring/<model>/requests/)
        cors_origins: []            # browser origins allowed to call the server (CORS); none by default
      kubernetes:
        conn_id: kubernetes_default
        namespace: seldon
        image: freestack/serving:0.1.0
        replicas: 2
        resources: {requests: {cpu: 500m, memory: 1Gi}, limits: {cpu: "1", memory: 2Gi}}
        canary: {traffic: 10, replicas: 1}   # a second predictor takes this % of traffic
        env_secret: s3-credentials           # a Secret with AWS_* (or FREESTACK_DATA_API_*) variables
        timeout_minutes: 15
      generation:                   # a text-generation model's request bounds (model.task: text-generation)
        max_new_tokens: 256         # the most new tokens a request may ask for (400 above)
        default_max_new_tokens: 64  # what a request that names none gets
        max_temperature: 2.0        # the highest temperature a request may ask for (400 above)
        max_prompt_tokens: null     # null: the model's max_length
        truncate: left              # a longer prompt keeps its last tokens (left) or is refused (refuse: 413)
        max_stop_strings: 4
        batch_prompts: 8            # prompts of concurrent requests answered by one generate call
        max_prompts_per_request: 16 # the most prompts one request may carry (413 above)
        max_requests: 256           # the most requests generating at once (OpenAI API; 429 above)
        max_running_per_request: 4  # one request's prompts in the running batch at once (the rest wait)
        kv_cache_tokens: 16384      # the continuous batch's KV cache, in tokens (more requests wait)
        max_batch_tokens: 1024      # the most tokens of one forward step
        max_adapters: 8             # LoRA versions of the base loaded at once (model: <model>:<version>)
        canary_alias: null          # an alias answering canary_weight of the requests for <model>
        canary_weight: 0.0
        runtime_adapters: false     # key holders may load unregistered LoRA adapters (a trainer's rollouts)
      api_key:                      # the OpenAI API's (/v1) key: where it comes from, never the key itself
        conn_id: llm_api_key        # target local: the Airflow connection whose password is the key
        secret: llm-api-key         # target kubernetes: the Secret that holds it (in deploy.kubernetes.namespace)
        secret_key: api-key         # the Secret's key holding it
      measure:                      # evaluate measures the candidate's serving costs, served as this block says
        enabled: true
        seconds: 2.0                # each figure's window (latency one request at a time; throughput)
        warmup_seconds: 0.5
        batch_rows: 32              # rows a request for the throughput figure
        concurrency: 4              # requests at once for the throughput figure

No Airflow, no heavy imports: the spec loader validates it when the spec is read (DAG parse time).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from freestack.settings import settings
from freestack.specbase import SpecModel

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: a Secret's name (a DNS-1123 subdomain), a key in a Secret's data, an Airflow connection id
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_CONN_ID = re.compile(r"^[\w.-]+$")
#: each name of ``deploy.api_key`` -> what it matches, and what it is
_API_KEY_NAMES = {
    "conn_id": (_CONN_ID, "an Airflow connection id (letters, digits, '_', '.', '-')"),
    "secret": (_SUBDOMAIN, "a Kubernetes Secret name (lowercase letters, digits, '-' and '.')"),
    "secret_key": (_SECRET_KEY, "a key of a Secret's data (letters, digits, '-', '_' and '.')"),
}
#: CORS origins, as the model server's request checks read them
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
#: the defaults of deploy.local.timeout_seconds and start_timeout_seconds per kind of model version
WORKER_TIMEOUT_S = {"built-in": 30, "huggingface": 120}
START_TIMEOUT_S = {"built-in": 120.0, "huggingface": 600.0}


class GenerationBounds(SpecModel):
    """What a request to a text-generation model (``model.task: text-generation``) may ask for, on every
    target: the server answers a request beyond a bound with a 400 naming it, and a prompt over
    ``max_prompt_tokens`` is cut from the left or refused (413), never a 500. Travels to the server as
    its ``FREESTACK_GENERATION_*`` settings (:meth:`env`)."""

    max_new_tokens: int = Field(
        default=256,
        ge=1,
        le=32_768,
        description="The most new tokens a request may ask for (`max_new_tokens` above it: 400).",
    )
    default_max_new_tokens: int = Field(
        default=64,
        ge=1,
        le=32_768,
        description="The new tokens of a request that "
        "names no `max_new_tokens` (a strData prompt, say); at most `max_new_tokens` (a lower "
        "`max_new_tokens` alone lowers it too).",
    )
    max_temperature: float = Field(
        default=2.0,
        ge=0,
        le=100,
        description="The highest sampling `temperature` a "
        "request may ask for (0, the default, is greedy decoding).",
    )
    max_prompt_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="The most tokens of a prompt, rendered with the model's chat template (the system prompt "
        "included). Default (null): the model's `max_length`. A prompt that leaves no room for its "
        "`max_new_tokens` within the model's context counts as over it too",
    )
    truncate: Literal["left", "refuse"] = Field(
        default="left",
        description="A prompt over `max_prompt_tokens`: `left` keeps its last tokens (the answer "
        "says `truncated: true`); `refuse` answers 413 naming the limit",
    )
    max_stop_strings: int = Field(
        default=4, ge=0, le=64, description="The most `stop` strings a request may carry."
    )
    batch_prompts: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="The most prompts one batched `generate` call answers: concurrent requests with the same "
        "generation parameters share a call (prompts left-padded), up to this many prompts",
    )
    max_prompts_per_request: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="The most prompts (or conversations) one request may carry; a request of more is refused "
        "(413) before any is read, so that one client cannot hold the server for minutes (a text-generation "
        "model's requests are bounded by this, not by `deploy.local.max_batch_rows`)",
    )
    max_requests: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="The most requests generating at once on the OpenAI API (continuous batching); one "
        "more is answered 429 with Retry-After, so a flood of streams cannot exhaust the server",
    )
    max_unbatched_requests: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="The most requests waiting for or running on the path beside the continuous batch "
        "(runtime mlserver: `response_format`, `tool_choice` required, `logprobs`, a seeded sample), which "
        "pauses the batch while it runs; one more is answered 429 with Retry-After",
    )
    max_unbatched_per_client: int = Field(
        default=2,
        ge=1,
        le=1024,
        description="The most of those requests one client (its address) may have waiting or running at once; "
        "one more is answered 429 with Retry-After, so one client's constrained requests cannot hold the "
        "others' back",
    )
    max_running_per_request: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="The most prompts of one request in the continuous batch at once (runtime mlserver); its "
        "other prompts start as those end, so that a request of many prompts cannot slow every other "
        "client's tokens by filling the batch",
    )
    kv_cache_tokens: int = Field(
        default=16384,
        ge=256,
        le=16_777_216,
        description="The tokens the continuous batch's KV cache holds (the OpenAI API's requests); requests "
        "past it wait their turn",
    )
    max_batch_tokens: int = Field(
        default=1024,
        ge=16,
        le=1_048_576,
        description="The most tokens of one forward step of the continuous batch (prompts are read in "
        "steps of at most this many)",
    )
    max_adapters: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="The most LoRA versions of the deployed version's base loaded at once (a request names one "
        "by model: <model>:<version> or <model>@<alias>); the least recently used is unloaded past it",
    )
    canary_alias: str | None = Field(
        default=None,
        description="An alias (another LoRA version of the same base) that answers canary_weight of the "
        "requests for the model's own name; every answer names its version",
    )
    canary_weight: float = Field(
        default=0.0, ge=0, le=1, description="The share of the model's requests the canary alias answers"
    )
    runtime_adapters: bool = Field(
        default=False,
        description="Runtime mlserver: key holders may load a LoRA adapter that is not a registered version "
        "from a folder or URI (vLLM's POST /v1/load_lora_adapter, /v1/unload_lora_adapter; safetensors only), "
        "as a trainer pushes the adapter it is training to sample from it; needs deploy.api_key",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_under_the_cap(cls, data: Any) -> Any:
        """A cap under the default's default lowers it: ``max_new_tokens: 12`` alone means a default of 12."""
        if (
            isinstance(data, dict)
            and "default_max_new_tokens" not in data
            and isinstance(data.get("max_new_tokens"), int)
        ):
            return {**data, "default_max_new_tokens": min(data["max_new_tokens"], 64)}
        return data

    @model_validator(mode="after")
    def _default_within_cap(self) -> GenerationBounds:
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"default_max_new_tokens {self.default_max_new_tokens} is over max_new_tokens "
                f"{self.max_new_tokens}: lower it, or raise max_new_tokens"
            )
        if self.max_prompts_per_request > self.max_requests:  # such a request could never be answered
            raise ValueError(
                f"max_prompts_per_request {self.max_prompts_per_request} is over max_requests "
                f"{self.max_requests}: a request of that many prompts could never be generated for at once; "
                "lower max_prompts_per_request, or raise max_requests"
            )
        return self

    def env(self, *, defaults: bool = True) -> dict[str, str]:
        """The model server's ``FREESTACK_GENERATION_*`` settings for these bounds (:mod:`freestack.settings`);
        ``defaults: False``: only those that differ from the defaults (a manifest's env)."""
        values = self.model_dump(exclude_defaults=not defaults, exclude_none=True)
        return {
            f"FREESTACK_GENERATION_{k.upper()}": f"{v:g}" if isinstance(v, float) else str(v)
            for k, v in values.items()
        }


class ApiKeySource(SpecModel):
    """Where the model server's key comes from, never the key itself: an Airflow connection for the local
    target, a Kubernetes Secret for the Kubernetes target. The server (``runtime: mlserver``) then answers
    every route but its health probes only with ``Authorization: Bearer <key>`` or ``api-key: <key>`` (401
    without it): the OpenAI API, V2 inference and metadata (REST and gRPC), the API docs
    (:mod:`freestack_server.mlserver.keys`)."""

    conn_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=250,
        description="target local: the Airflow connection whose password is the key (e.g. `airflow connections "
        "add llm_api_key --conn-type generic --conn-password <key>`), read by the deploy task when it runs, "
        "never at DAG parse time; it reaches the server in its env file (mode 0600), never a deployment record",
    )
    secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="target kubernetes: the Secret, in deploy.kubernetes.namespace, that holds the key "
        "(`kubectl create secret generic <secret> --from-literal=api-key=<key>`); the serving container reads "
        "it as FREESTACK_SERVER_API_KEY (valueFrom.secretKeyRef), so the key is in no manifest",
    )
    secret_key: str = Field(
        default="api-key",
        min_length=1,
        max_length=253,
        description="The key in that Secret whose value is the API key.",
    )

    @model_validator(mode="before")
    @classmethod
    def _a_source_not_a_key(cls, data: Any) -> Any:
        """``api_key: sk-...`` is a key written in the spec: refused without repeating it."""
        if not isinstance(data, dict):
            raise ValueError(
                "deploy.api_key says where the key comes from, never the key itself: {conn_id: <an Airflow "
                "connection whose password is the key>} for target local, {secret: <a Kubernetes Secret>} "
                "for target kubernetes"
            )
        return data

    @field_validator("conn_id", "secret", "secret_key")
    @classmethod
    def _a_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        pattern, what = _API_KEY_NAMES[info.field_name]
        if v is not None and not pattern.match(v):
            raise ValueError(f"{info.field_name} {v!r} is not {what}")
        return v

    @model_validator(mode="after")
    def _names_a_source(self) -> ApiKeySource:
        if self.conn_id is None and self.secret is None:
            raise ValueError(
                "deploy.api_key names no source: set conn_id (target local: an Airflow connection whose "
                "password is the key) or secret (target kubernetes: a Secret holding it), or drop api_key "
                "for an OpenAI API without a key"
            )
        return self


class _ServesGeneration(SpecModel):
    """A target's copy of ``deploy.generation`` and ``deploy.api_key`` (set by :class:`DeploySpec`), for
    the code that starts its servers."""

    _generation: GenerationBounds | None = PrivateAttr(default=None)
    _api_key: ApiKeySource | None = PrivateAttr(default=None)

    @property
    def generation(self) -> GenerationBounds:
        return self._generation or GenerationBounds()

    @property
    def api_key(self) -> ApiKeySource | None:
        """Where the server's OpenAI API key comes from; None: the OpenAI API asks for no key."""
        return self._api_key


class LocalTarget(_ServesGeneration):
    host: str = Field(default="127.0.0.1", description="bind address; loopback unless you mean to expose it")
    port: int = Field(
        default_factory=lambda: settings().serve_port,
        ge=1024,
        le=65533,
        description="the deployment's address, the same across redeploys and rollbacks (the blue and green "
        "servers behind it also listen on port + 1 and port + 2); default: the serve_port setting (9000)",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1024,
        le=65534,
        description="the blue server's Prometheus metrics port; the green one's is metrics_port + 1; default "
        "(null): free ports chosen at each deploy and written in the deployment record (metrics_port, "
        "metrics_url). Set it for a fixed scrape target",
    )
    grpc_port: int | None = Field(
        default=None,
        ge=1024,
        le=65534,
        description="runtime mlserver: the blue server's gRPC port (the Open Inference Protocol over gRPC); "
        "the green one's is grpc_port + 1. gRPC is answered on the serving server's own port, not on the "
        "deployment's address, so it moves between the two at each deploy (`freestack serve status` and the "
        "deployment record name the live one: grpc_port, grpc_address). Default (null): free ports chosen at "
        "each deploy",
    )
    workers: int = Field(default=2, ge=1, le=64, description="gunicorn workers (one model copy each).")
    threads: int = Field(default=1, ge=1, le=64, description="Threads per worker (gthread only).")
    worker_class: Literal["freestack", "gthread", "sync"] = Field(
        default="freestack",
        description="freestack: keep-alive event-loop worker, one thread, connections balanced across "
        "workers (the fastest here, see bench/serve); gthread: gunicorn's threaded worker (threads > 1); "
        "sync: gunicorn's default, a new connection per request",
    )
    timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=3600,
        description="gunicorn's worker timeout: a worker silent longer (stuck in one request) is killed and "
        "replaced; a request must also arrive whole within half of it. Loading the model is not bound by it. "
        "Default (null): 30 s, 120 s for a model.type: huggingface version (a transformer's forward pass over a "
        "batch is slow on CPU)",
    )
    start_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="How long a new server may take to load the model and become healthy. Default (null): 120 s, "
        "600 s for a model.type: huggingface version (loading transformers and the weights takes minutes on a "
        "busy machine)",
    )
    smoke_rows: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="Test rows sent before switching; the answers must equal the evaluation's.",
    )
    log_sample_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="The fraction of requests whose inputs and predictions go to the request log "
        "(`monitoring/<model>/requests/`, Parquet) for the monitor; 0 turns the log (and /send-feedback) off",
    )
    max_batch_rows: int = Field(
        default=10_000, ge=1, le=1_000_000, description="The most rows one request may carry."
    )
    adaptive_batching: bool = Field(
        default=True,
        description="freestack worker: requests that arrive together share one forward pass of the model (no "
        "waiting for more; each request keeps its own answer, errors, metrics and request log rows). A row's "
        "probabilities may then differ from its answer alone in the last float32 digit; false: one forward per request",
    )
    max_idle_connections: int = Field(
        default=256,
        ge=8,
        le=900,
        description="freestack worker: the most connections each worker holds that have not sent a whole request "
        "head (idle keep-alive ones, and those still sending their head). Over it the oldest is let go (answered "
        "408 if part of a head is in, else closed), and while a worker holds over half of it a head must arrive "
        "within 2 s, so that clients that open connections and send nothing whole cannot keep good requests "
        "waiting. At most 900: a worker holds at most 1,000 connections in all",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="browser origins (scheme://host[:port], e.g. https://app.example.com; * for any) whose pages "
        "may call the model server: only these get an Access-Control-Allow-Origin header, and a CORS preflight "
        "from any other is refused (403). Default: none (no page on another origin can read an answer)",
    )

    def for_version(self, pretrained: bool) -> LocalTarget:
        """These settings with the timeouts left at their defaults (null) set for the served version's
        kind: ``pretrained``, a fine-tuned transformers model (``model.type: huggingface``)."""
        kind = "huggingface" if pretrained else "built-in"
        return self.model_copy(
            update={
                "timeout_seconds": self.timeout_seconds or WORKER_TIMEOUT_S[kind],
                "start_timeout_seconds": self.start_timeout_seconds or START_TIMEOUT_S[kind],
            }
        )

    @property
    def worker_timeout(self) -> int:
        """``timeout_seconds``, or its default for a built-in model when left null."""
        return self.timeout_seconds or WORKER_TIMEOUT_S["built-in"]

    @property
    def start_timeout(self) -> float:
        """``start_timeout_seconds``, or its default for a built-in model when left null."""
        return self.start_timeout_seconds or START_TIMEOUT_S["built-in"]

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = [o.strip().rstrip("/") for o in v]
        bad = [o for o in out if o != "*" and not _ORIGIN.match(o)]
        if bad:
            raise ValueError(
                f"cors_origins {bad} must each be scheme://host[:port] (no path), e.g. "
                "https://app.example.com, or * for any origin"
            )
        return out

    @model_validator(mode="after")
    def _threads_need_gthread(self) -> LocalTarget:
        if self.threads > 1 and self.worker_class != "gthread":
            raise ValueError(
                f"threads: {self.threads} needs worker_class: gthread (the {self.worker_class} worker runs "
                "one thread per worker); or keep threads: 1 and raise workers"
            )
        return self


class Canary(SpecModel):
    traffic: int = Field(default=10, ge=1, le=99, description="percent of requests to the canary predictor")
    replicas: int = Field(default=1, ge=1, le=100, description="Pods of the predictor.")


class KubernetesTarget(_ServesGeneration):
    conn_id: str = Field(default="kubernetes_default", description="The Airflow kubernetes connection.")
    namespace: str = Field(default="default", description="The namespace of the SeldonDeployment.")
    image: str = Field(default="freestack/serving:0.1.0", description="The serving image (runtime: seldon).")
    mlserver_image: str = Field(
        default="freestack/mlserver:0.1.0",
        description="The serving image for runtime: mlserver (docker/mlserver.Dockerfile).",
    )
    replicas: int = Field(default=1, ge=1, le=1000, description="Pods of the predictor.")
    resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    )
    canary: Canary | None = Field(
        default=None, description="A second predictor for a new version, with this share of the traffic."
    )
    env_secret: str | None = Field(default=None, description="Secret whose keys become the container's env")
    service_account: str | None = Field(default=None, description="The pods' service account.")
    workers: int = Field(default=2, ge=1, le=64, description="gunicorn workers (one model copy each).")
    threads: int = Field(default=1, ge=1, le=64, description="Threads per worker (gthread only).")
    log_sample_rate: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="The fraction of requests the servers write to the request log (0: off).",
    )
    timeout_minutes: float = Field(
        default=15, gt=0, le=24 * 60, description="How long to wait for Available."
    )
    poll_seconds: float = Field(default=10, gt=0, le=600, description="How often to look while waiting.")

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not _DNS1123.match(v) or len(v) > 63:
            raise ValueError(
                f"namespace {v!r} is not a valid Kubernetes name (lowercase letters, digits, '-')"
            )
        return v

    @field_validator("resources")
    @classmethod
    def _res(cls, v: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        bad = [k for k in v if k not in ("requests", "limits")]
        if bad:
            raise ValueError(f"resources may hold 'requests' and 'limits', not {bad}")
        return {k: {r: str(q) for r, q in d.items()} for k, d in v.items()}


class MeasureSpec(SpecModel):
    """How evaluate measures what serving a candidate costs (``deploy.measure``): the candidate started as
    this block serves it, on this machine, asked with its test rows (:mod:`freestack.serving.costs`)."""

    enabled: bool = Field(
        default=True,
        description="Measure the candidate's serving latency, throughput and memory during evaluate; false: "
        "none is recorded (a gate rule on them then blocks, saying so)",
    )
    seconds: float = Field(default=2.0, gt=0, le=600, description="How long each figure is measured.")
    warmup_seconds: float = Field(
        default=0.5, ge=0, le=600, description="Requests before each figure's window, not counted."
    )
    batch_rows: int = Field(
        default=32, ge=1, le=1_000_000, description="Rows a request for the throughput figure (rows_per_s)."
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Requests at once for the throughput figure (rows or tokens a second).",
    )


class DeploySpec(SpecModel):
    target: Literal["local", "kubernetes"] = Field(
        default="local",
        description="local: a supervised model server on this machine; kubernetes: a SeldonDeployment.",
    )
    runtime: Literal["seldon", "mlserver"] = Field(
        default="seldon",
        description="seldon: Seldon Core 1.17.1's protocol (/api/v1.0/predictions); mlserver: MLServer 1.7.1 and the Open "
        "Inference Protocol (V2: /v2/models/<model>/infer, REST and gRPC).",
    )
    name: str | None = Field(default=None, description="deployment name; default: the model name")
    alias: str = Field(default="production", description="the registry alias that is served")
    local: LocalTarget = Field(default_factory=LocalTarget, description="The local target's settings.")
    kubernetes: KubernetesTarget = Field(
        default_factory=KubernetesTarget, description="The Kubernetes target's settings."
    )
    generation: GenerationBounds = Field(
        default_factory=GenerationBounds,
        description="A text-generation model's request bounds, on either target: max_new_tokens, "
        "default_max_new_tokens, max_temperature, max_prompt_tokens, truncate, max_stop_strings, batch_prompts, "
        "max_prompts_per_request, max_requests, max_unbatched_requests, max_unbatched_per_client, "
        "max_running_per_request, kv_cache_tokens, max_batch_tokens, max_adapters, canary_alias, "
        "canary_weight, runtime_adapters",
    )
    measure: MeasureSpec = Field(
        default_factory=MeasureSpec,
        description="How evaluate measures the candidate's serving costs: enabled, seconds, warmup_seconds, "
        "batch_rows, concurrency",
    )
    api_key: ApiKeySource | None = Field(
        default=None,
        description="Where the model server's key comes from (conn_id: an Airflow connection, target local; "
        "secret and secret_key: a Kubernetes Secret, target kubernetes), never the key itself. Runtime mlserver: "
        "every route but the health probes asks for it (the OpenAI API, V2 inference and metadata over REST "
        "and gRPC, the API docs). Default (null): no key",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (not _DNS1123.match(v) or len(v) > 50):
            raise ValueError(
                f"deploy.name {v!r} must be a Kubernetes name: lowercase letters, digits and '-', at most 50"
            )
        return v

    @model_validator(mode="after")
    def _targets_serve_generation(self) -> DeploySpec:
        # the targets start the servers: each carries the bounds to them (local.generation, kubernetes.generation)
        self.local._generation = self.generation
        self.kubernetes._generation = self.generation
        self.local._api_key = self.kubernetes._api_key = self.api_key
        return self

    @model_validator(mode="after")
    def _api_key_for_the_target(self) -> DeploySpec:
        key = self.api_key
        if key is not None and self.runtime != "mlserver":
            raise ValueError(
                "deploy.api_key needs runtime: mlserver, whose server asks for the key on every route but its "
                "health probes; Seldon's runtime takes no key: set runtime: mlserver or drop api_key"
            )
        if self.generation.runtime_adapters and (key is None or self.runtime != "mlserver"):
            raise ValueError(
                "deploy.generation.runtime_adapters loads adapters from paths a client names: it needs runtime: "
                "mlserver and deploy.api_key, so that only the key's holders can"
            )
        if key is not None and self.target == "local" and key.conn_id is None:
            raise ValueError(
                "deploy.api_key.conn_id is needed for target local: the Airflow connection whose password is "
                "the key (secret names a Kubernetes Secret, which only target kubernetes reads)"
            )
        if key is not None and self.target == "kubernetes" and key.secret is None:
            raise ValueError(
                "deploy.api_key.secret is needed for target kubernetes: the Secret that holds the key, in "
                f"namespace {self.kubernetes.namespace} (conn_id names an Airflow connection, which only "
                "target local reads)"
            )
        return self

    @model_validator(mode="after")
    def _ports(self) -> DeploySpec:
        port, mp, gp = self.local.port, self.local.metrics_port, self.local.grpc_port
        for field, value, what in (("metrics_port", mp, "metrics"), ("grpc_port", gp, "gRPC")):
            if value is not None and port - 1 <= value <= port + 2:
                raise ValueError(
                    f"deploy.local.{field} {value} collides with the serving ports (port, port + 1, port + 2) "
                    f"or the green {what} port ({field} + 1): choose one outside port - 1 .. port + 2"
                )
        if gp is not None and mp is not None and abs(gp - mp) <= 1:
            raise ValueError(
                f"deploy.local.grpc_port {gp} and metrics_port {mp} overlap (blue uses each, green each "
                "+ 1): keep them at least 2 apart"
            )
        return self


#: the Airflow pool of one slot per model that every alias move and deploy of that model runs in
DEPLOY_POOL_PREFIX = "freestack_deploy_"
#: deploy outranks alias moves in that pool: once a run moved its alias, its deploy goes next
DEPLOY_PRIORITY, MOVE_PRIORITY = 20, 10


def deploy_pool(model_name: str) -> str:
    """``freestack_deploy_<model>``: one alias move + deploy of the model at a time, in the order asked."""
    return f"{DEPLOY_POOL_PREFIX}{model_name}"


def deploy_name(spec_deploy: DeploySpec, model_name: str) -> str:
    """The deployment's name: ``deploy.name``, else the model name made a valid Kubernetes name."""
    if spec_deploy.name:
        return spec_deploy.name
    return re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:50] or "model"


__all__ = [
    "ApiKeySource",
    "DEPLOY_POOL_PREFIX",
    "DEPLOY_PRIORITY",
    "MOVE_PRIORITY",
    "START_TIMEOUT_S",
    "deploy_pool",
    "WORKER_TIMEOUT_S",
    "Canary",
    "DeploySpec",
    "GenerationBounds",
    "KubernetesTarget",
    "LocalTarget",
    "MeasureSpec",
    "deploy_name",
]
