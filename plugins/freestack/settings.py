"""freestack's settings: every ``FREESTACK_*`` environment variable, read and checked in one place.

Every process reads the same typed object: the Airflow components and their task processes, the
``freestack`` CLI, the tests, and the model server (which runs in its own environment, so this module
needs nothing but pydantic-settings). Each field is documented once, here; the settings reference in
the docs is generated from these fields.

A value that does not parse (``FREESTACK_SERVE_PORT=abc``) raises :class:`SettingsError` naming the
variable. :func:`settings` reads the environment again whenever a ``FREESTACK_*`` variable changed, so a
test or a notebook can change one and see it at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from freestack.errors import FreestackError

PREFIX = "FREESTACK_"


class SettingsError(FreestackError):
    """A ``FREESTACK_*`` variable holds a value that does not parse; the message names it."""


class Settings(BaseSettings):
    """The ``FREESTACK_*`` environment variables, grouped by the part of freestack that reads them."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # -- where things are ------------------------------------------------------------------------------
    home: Path | None = Field(
        default=None,
        description="The folder that holds the embedded defaults (`.freestack/storage`, `.freestack/data`, "
        "`.freestack/serving`, `.freestack/wandb`). Default: the project checkout.",
    )
    storage_root: str | None = Field(
        default=None,
        description="The storage root: `file:///...`, `s3://<conn_id>@bucket/prefix` or `data://<owner>/<collection>`. "
        "A spec's `storage_root` wins for its pipeline. Default: `file://<home>/.freestack/storage`.",
    )
    pipelines_dir: Path | None = Field(
        default=None, description="Where the pipeline specs are. Default: `<checkout>/include/pipelines`."
    )

    # -- data:// and the Data API --------------------------------------------------------------------------
    data_root: str | None = Field(
        default=None,
        description="The store behind `data://` when there is no `freestack_data_default` connection. "
        "Default: `file://<home>/.freestack/data`.",
    )
    data_owner: str = Field(
        default="freestack",
        description="The user `data://.my` means when there is no `freestack_data_default` connection.",
    )
    data_acl_ttl: float = Field(
        default=2.0, ge=0, description="Seconds a collection's ACL is cached by a `data://` filesystem."
    )
    data_api_root: str | None = Field(
        default=None,
        description="What the Data API service serves (`file:///...` or `s3://conn@bucket/prefix`). Default: the "
        "`freestack_data_default` connection's store, else `data_root`.",
    )
    data_api_keys: Path | None = Field(
        default=None,
        description="The Data API's key database (SQLite, mode 0600, hashes only). "
        "Default: `<home>/.freestack/data-api/keys.sqlite`.",
    )
    data_api_page_size: int | None = Field(
        default=None, ge=1, description="Entries per page of a Data API directory listing. Default: 1000."
    )
    data_api_stale_tmp_age: float = Field(
        default=600.0,
        gt=0,
        description="Seconds after its last write that a hidden upload temporary (`.<name>.freestack-tmp-<id>`) "
        "under the Data API's local backing folder counts as left by a killed writer and is removed. Temporaries "
        "of uploads the service itself (any of its processes) is still receiving are never removed, and those "
        "listed by a service process that died are removed at once; this age is for the rest (e.g. a pipeline "
        "task's write). The folder is swept at start-up and every half of this age.",
    )

    # -- training -----------------------------------------------------------------------------------------
    task_threads: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="torch's CPU threads in each task that computes with torch (train, evaluate, score); "
        "a distributed training's ranks share them out (`train.distributed.threads_per_process` wins). "
        "Default: the worker's cores divided by the tasks it runs at once (CeleryExecutor: `[celery] "
        "worker_concurrency`; KubernetesExecutor: 1, a pod per task; otherwise `[core] parallelism`), at "
        "least 1, so that tasks side by side never hold more threads than there are cores. A worker that "
        "trains alone: its cores.",
    )
    keep_checkpoints: bool = Field(
        default=False,
        description="Keep a training's checkpoint (`runs/<pipeline>/.../checkpoint.safetensors`) once its model is "
        "written. Default: it is removed then; a killed training keeps it, so its retry resumes.",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Where a streamed training window is spooled (train.data.mode: stream): a local folder with room "
        "for the window's columns. Default: the system's temporary folder.",
    )
    checkpoint_retention_days: float = Field(
        default=7.0,
        ge=0,
        description="Checkpoints of trainings that never finished (killed and not retried) older than this are "
        "removed when the pipeline trains next.",
    )

    # -- sweeps -------------------------------------------------------------------------------------------
    agent_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads per sweep agent. Default: the cores shared out among the agents.",
    )
    sweep_lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Seconds without a heartbeat after which another sweep agent takes a trial over (its "
        "holder renews the lease every third of this, however long an epoch takes; a retry of the same agent task takes "
        "its trial over at once).",
    )

    # -- serving: the deploy side ---------------------------------------------------------------------------
    serve_port: int = Field(
        default=9000,
        ge=1024,
        le=65533,
        description="`deploy.local.port` when a spec gives none (the deployment's address; its blue and green servers: port + 1, port + 2).",
    )
    serving_dir: Path | None = Field(
        default=None,
        description="Where local model servers keep their config, logs and model cache. Default: `<home>/.freestack/serving`.",
    )
    measure_serving: bool = Field(
        default=True,
        description="Evaluate measures what serving each candidate costs on this machine (the spec's `deploy.measure`: "
        "the candidate started as the deploy serves it, latency, throughput, memory). false: on a worker that should "
        "not start model servers during evaluate (one without the serving environment, a shared runner), nothing "
        "is measured, as with `deploy.measure.enabled: false`, and a gate rule on serving figures blocks, saying so.",
    )
    serving_python: Path | None = Field(
        default=None,
        description="The interpreter of the serving environment (seldon-core 1.17.1). Default: `<checkout>/.venv-serving/bin/python`.",
    )
    mlserver_python: Path | None = Field(
        default=None,
        description="The interpreter of MLServer's environment (the Open Inference Protocol runtime). Default: `<checkout>/.venv-mlserver/bin/python`.",
    )
    seldon_crd: Path | None = Field(
        default=None,
        description="The SeldonDeployment CRD that manifests are validated against. Default: the copy in "
        "`include/serving/` (or `../shared/seldon/`).",
    )

    # -- serving: the model server (its Seldon parameters win over these) ------------------------------------------
    model_uri: str | None = Field(
        default=None,
        description="Model server: the registry version (or `<root>/registry/<model>@<alias>`) it serves.",
    )
    max_batch_rows: int = Field(
        default=10_000, ge=1, description="Model server: the most rows one request may carry (413 above)."
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1,
        description="Model server: the largest request body accepted (413 above).",
    )
    request_log_uri: str | None = Field(
        default=None,
        description="Model server: the model's monitoring folder (`<root>/monitoring/<model>`), where sampled requests and predictions and the feedback's labels are written.",
    )
    request_log_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Model server: the fraction of requests written to `request_log_uri`.",
    )
    request_log_flush_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Model server: how often each worker writes its buffered request log (one Parquet object per hour it holds).",
    )
    request_log_max_rows: int = Field(
        default=256,
        ge=1,
        description="Model server: the most rows of one request that the request log keeps.",
    )
    torch_threads: int = Field(
        default=1, ge=1, description="Model server: intra-op torch threads per worker."
    )
    # a text-generation model's request bounds (the deploy spec's `deploy.generation`, freestack.serving.spec)
    generation_max_new_tokens: int = Field(
        default=256,
        ge=1,
        description="Model server, text generation: the most new tokens a request may ask for (400 above).",
    )
    generation_default_max_new_tokens: int = Field(
        default=64,
        ge=1,
        description="Model server, text generation: the new tokens of a request that names none.",
    )
    generation_max_temperature: float = Field(
        default=2.0,
        ge=0,
        description="Model server, text generation: the highest sampling temperature a request may ask for (400 above).",
    )
    generation_max_prompt_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Model server, text generation: the most prompt tokens (after the chat template); default: the model's `max_length`.",
    )
    generation_truncate: Literal["left", "refuse"] = Field(
        default="left",
        description="Model server, text generation: a longer prompt keeps its last tokens (`left`) or is refused (`refuse`, 413).",
    )
    generation_max_stop_strings: int = Field(
        default=4,
        ge=0,
        description="Model server, text generation: the most stop strings a request may carry (400 above).",
    )
    generation_batch_prompts: int = Field(
        default=8,
        ge=1,
        description="Model server, text generation: the most prompts of one batched `generate` call.",
    )
    generation_max_prompts_per_request: int = Field(
        default=16,
        ge=1,
        description="Model server, text generation: the most prompts one request may carry (413 above).",
    )
    generation_max_unbatched_requests: int = Field(
        default=8,
        ge=1,
        description="Model server, text generation: the most requests waiting for or running beside the "
        "continuous batch (constrained, logprobs, seeded); 429 above.",
    )
    generation_max_unbatched_per_client: int = Field(
        default=2,
        ge=1,
        description="Model server, text generation: the most of those requests of one client address; 429 above.",
    )
    generation_max_running_per_request: int = Field(
        default=4,
        ge=1,
        description="Model server, text generation: the most prompts of one request in the continuous batch at "
        "once (the rest start as those end).",
    )
    generation_kv_cache_tokens: int = Field(
        default=16384,
        ge=256,
        description="Model server, text generation: the tokens the continuous batch's KV cache holds "
        "(requests past it wait their turn).",
    )
    generation_max_batch_tokens: int = Field(
        default=1024,
        ge=16,
        description="Model server, text generation: the most tokens of one forward step of the continuous batch.",
    )
    generation_max_adapters: int = Field(
        default=8,
        ge=1,
        description="Model server, text generation: the most LoRA versions of one base loaded at once "
        "(least recently used unloaded past it).",
    )
    generation_canary_alias: str | None = Field(
        default=None,
        description="Model server, text generation: the alias that answers a share of the requests for the "
        "model's own name (a canary of another LoRA version of the base), with generation_canary_weight.",
    )
    generation_canary_weight: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Model server, text generation: the share of the model's requests the canary alias answers.",
    )
    generation_runtime_adapters: bool = Field(
        default=False,
        description="Model server, text generation: key holders may load LoRA adapters that are not registered "
        "versions (POST /v1/load_lora_adapter; safetensors only).",
    )
    generation_max_requests: int = Field(
        default=256,
        ge=1,
        description="Model server, text generation: the most requests generating at once on the OpenAI API "
        "(429 above).",
    )
    serving_cache: Path | None = Field(
        default=None, description="Model server: the folder the version's files are copied to."
    )
    data_api_url: str | None = Field(
        default=None,
        description="Model server: the Data API service that `data://` model URIs are read through.",
    )
    data_api_key: str | None = Field(
        default=None, repr=False, description="Model server: the API key for `data_api_url`."
    )

    # -- the runtime wing: speed-ups that reach into Airflow's internals -----------------------------------------------
    speedups: bool = Field(
        default=False,
        description="Turn on the runtime wing's speed-ups (preloading, the scheduler wake-up, fractional SQLite "
        "`now()`, the shared W&B service). On by default only in the embedded stack (`freestack up`, `make demo`).",
    )
    preload: str = Field(
        default="1",
        description="With `speedups`: `0` turns preloading off; `a,b` names the modules the scheduler preloads instead of the defaults.",
    )
    scheduler_wake: bool = Field(
        default=True, description="With `speedups`: the scheduler's idle sleep ends when there is work."
    )
    shared_wandb_service: bool = Field(
        default=True,
        description="With `speedups` and preloading: the scheduler starts one wandb-core service for all tasks.",
    )
    task_timings: Path | None = Field(
        default=None,
        description="A JSON-lines file each task appends its start and end to (`bench/orchestration`).",
    )
    component_restarts: int = Field(
        default=5,
        ge=0,
        description="How often `airflow standalone`'s components are restarted after an unasked exit "
        "(`include/bin/airflow`; 0: never).",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        """`` 1 `` is ``1``: surrounding spaces in a variable never change its meaning."""
        return value.strip() if isinstance(value, str) else value

    # -- derived ------------------------------------------------------------------------------------------
    @property
    def project_home(self) -> Path:
        return self.home.expanduser().resolve() if self.home else checkout_dir()

    @property
    def default_storage_root(self) -> str:
        if self.storage_root:
            return self.storage_root.rstrip("/")
        return (self.project_home / ".freestack" / "storage").as_uri()

    @property
    def pipelines_folder(self) -> Path:
        if self.pipelines_dir:
            return self.pipelines_dir.expanduser().resolve()
        return checkout_dir() / "include" / "pipelines"


_cache: tuple[tuple[tuple[str, str], ...], Settings] | None = None


def settings() -> Settings:
    """The settings as the environment says now (read again only when a ``FREESTACK_*`` variable changed)."""
    global _cache
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(PREFIX)))
    if _cache is not None and _cache[0] == key:
        return _cache[1]
    try:
        current = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{PREFIX}{str(e['loc'][0]).upper()}={os.environ.get(PREFIX + str(e['loc'][0]).upper())!r}: {e['msg']}"
            for e in exc.errors()
        )
        raise SettingsError(f"invalid setting: {problems}") from None
    _cache = (key, current)
    return current


def checkout_dir() -> Path:
    """The project checkout this package lives in (``plugins/freestack``), else the current directory."""
    here = Path(__file__).resolve()
    if here.parents[1].name == "plugins":
        return here.parents[2]
    return Path.cwd()


def project_home() -> Path:
    """``home``: the folder of the embedded defaults."""
    return settings().project_home


def default_storage_root() -> str:
    """``storage_root``, else ``file://<home>/.freestack/storage``."""
    return settings().default_storage_root


def pipelines_dir() -> Path:
    """``pipelines_dir``, else ``<checkout>/include/pipelines``."""
    return settings().pipelines_folder


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` while the block runs (for the processes it starts), then as it was."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


__all__ = [
    "environment",
    "PREFIX",
    "Settings",
    "SettingsError",
    "checkout_dir",
    "default_storage_root",
    "pipelines_dir",
    "project_home",
    "settings",
]
