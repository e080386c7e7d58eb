"""The model server's configuration: one set of environment variables, read here and nowhere else.

Every target starts the server the same way, ``python -m freestack_server``, and configures it through
these variables: the images set them with ``ENV``, the SeldonDeployment and KServe manifests in the
container's ``env`` (Seldon's operator adds ``PREDICTIVE_UNIT_*_SERVICE_PORT``), and the local deploy
writes them to a file it names with ``--env-file`` (values in the environment win over the file's).
What the model is and how requests are checked and logged are freestack's ``FREESTACK_*`` settings
(:mod:`freestack.settings`: ``FREESTACK_MODEL_URI``, ``FREESTACK_MAX_BATCH_ROWS``, the request log);
this class holds what the process itself needs. The settings reference in the docs lists both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from freestack.settings import settings
from freestack_server.core.fetch import model_name_of

PREFIX = "FREESTACK_SERVER_"
#: the exit code of a server that could not load its model: a broken version, which no restart mends
BOOT_ERROR = 3
#: how the server's log line starts that says why it cannot serve its version (a file changed or missing
#: since registration): the deploy quotes it in the first line of its error
CANNOT_SERVE = "cannot serve this version: "
#: the exit code of a supervisor that could not get the deployment's listening socket from its holder
ADDRESS_ERROR = 4


class Address(BaseModel):
    """A local deployment's stable address: the holder process keeps its listening socket (``socket``),
    and this server answers there once the deploy creates the ``gate`` file."""

    host: str
    port: int
    socket: str
    gate: str


def _model_of_uri() -> str:
    """The model's name when none is set: the one its ``FREESTACK_MODEL_URI`` names."""
    uri = settings().model_uri
    return (model_name_of(uri) if uri else None) or "model"


def _env(name: str, *seldon: str) -> AliasChoices:
    """The variable ``FREESTACK_SERVER_<NAME>``, or Seldon's operator's names for the same thing."""
    return AliasChoices(PREFIX + name.upper(), *seldon)


def _port(name: str, default: int, unit: str, what: str, lowest: int = 1) -> Any:
    """A port (``lowest`` to 65535): ``FREESTACK_SERVER_<NAME>``, or ``PREDICTIVE_UNIT_<UNIT>_SERVICE_PORT``
    (the name Seldon's operator sets), which the description ``Model server<what>`` names."""
    seldon = f"PREDICTIVE_UNIT_{unit}_SERVICE_PORT"
    description = f"Model server{what} (`{seldon}` too)."
    return Field(default, ge=lowest, le=65535, validation_alias=_env(name, seldon), description=description)


class ServerConfig(BaseSettings):
    """The ``FREESTACK_SERVER_*`` variables (and the ``PREDICTIVE_UNIT_*`` ports Seldon's operator sets)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True, populate_by_name=True)

    runtime: Literal["seldon", "mlserver"] = Field(
        default="seldon",
        description="Model server: `seldon` (Seldon's protocol, the freestack gunicorn worker) or "
        "`mlserver` (the Open Inference Protocol, V2, on MLServer).",
    )
    model: str = Field(
        default_factory=_model_of_uri,
        validation_alias=_env("model", "FREESTACK_MODEL_NAME"),
        description="Model server: the model's name (MLServer serves it under it, at "
        "`/v2/models/<name>`; metric labels; `FREESTACK_MODEL_NAME` too). Default: the model "
        "`FREESTACK_MODEL_URI` names (`.../registry/<model>/<version>`, "
        "`.../registry/<model>@<alias>`), else `model`.",
    )
    version: str = Field(
        default="unknown",
        validation_alias=_env("version", "FREESTACK_MODEL_VERSION"),
        description="Model server: the version served, for logs and metric labels (`FREESTACK_MODEL_VERSION` too).",
    )
    deployment: str = Field(
        default="",
        validation_alias=_env("deployment", "SELDON_DEPLOYMENT_ID"),
        description="Model server: the deployment's name, in the request log and metric labels "
        "(`SELDON_DEPLOYMENT_ID` too; default: the model's name).",
    )
    predictor: str = Field(
        default="main",
        validation_alias=_env("predictor", "PREDICTOR_ID"),
        description="Model server: the predictor (a local server's color), in metric labels (`PREDICTOR_ID` too).",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Model server: the interface every listener binds (`0.0.0.0` in the images).",
    )
    port: int = _port("port", 9000, "HTTP", ": the REST port")
    grpc_port: int = _port("grpc_port", 9500, "GRPC", ", `mlserver`: the gRPC port")
    metrics_port: int = _port("metrics_port", 6000, "METRICS", ": the Prometheus metrics port, 0 for none", 0)
    workers: int = Field(
        default=2, ge=1, le=64, description="Model server, `seldon`: gunicorn workers (one model copy each)."
    )
    threads: int = Field(
        default=1, ge=1, le=64, description="Model server, `seldon`: threads per worker (`gthread` only)."
    )
    worker_class: Literal["freestack", "gthread", "sync"] = Field(
        default="freestack",
        description="Model server, `seldon`: `freestack` (keep-alive event loop, adaptive batching, "
        "slow-client limits), or gunicorn's `gthread` or `sync`.",
    )
    timeout: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="Model server, `seldon`: gunicorn's worker timeout (s); "
        "a request must arrive whole within half of it.",
    )
    max_idle_connections: int = Field(
        default=256,
        ge=8,
        le=900,
        description="Model server, `freestack` worker: the most "
        "connections a worker holds that have not sent a whole request head.",
    )
    adaptive_batching: bool = Field(
        default=True, description="Model server: requests that arrive together share one forward pass."
    )
    batch_rows: int = Field(
        default=32, ge=1, description="Model server, `mlserver`: the most rows of one batched forward pass."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Model server: the origins CORS answers (JSON list; `["*"]` for any).',
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Model server, `mlserver`: the key every route but the health probes asks for (the "
        "OpenAI API, V2 inference and metadata over REST and gRPC, the API docs), as `Authorization: Bearer "
        "<key>` or `api-key: <key>` (401 without it); unset: no key. From a Kubernetes Secret or the "
        "deploy's connection, never written in a spec.",
    )
    address: Address | None = Field(
        default=None,
        description="Model server, local deploys: the deployment's stable "
        "address (JSON: host, port, socket, gate), held by the address holder.",
    )
    serves_file: Path | None = Field(
        default=None,
        description="Model server, text generation, local deploys: a file naming the version the model's "
        "own name answers with, another adapter version of the same base (written by a deploy that "
        "promotes it in place, after its smoke test); unset or absent: the version the server started with.",
    )
    workdir: Path | None = Field(
        default=None,
        description="Model server, `mlserver`: the folder MLServer's settings are "
        "written to (default: the working directory).",
    )

    @property
    def name(self) -> str:
        """The deployment's name (the model's when none is set)."""
        return self.deployment or self.model

    def env(self, include: set[str] | None = None) -> dict[str, str]:
        """The ``FREESTACK_SERVER_*`` variables that give this configuration (of the fields ``include`` names)."""
        out = {}
        for key, value in self.model_dump(mode="json", exclude_none=True, include=include).items():
            out[f"{PREFIX}{key.upper()}"] = (
                value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            )
        return out


def write_env_file(path: str | Path, variables: dict[str, str]) -> None:
    """``NAME='value'`` lines, as ``--env-file`` reads them (a dotenv file: single quotes keep JSON whole)."""
    for name, value in variables.items():
        if "'" in value or "\n" in value:
            raise ValueError(f"{name} cannot hold a quote or a line break: {value!r}")
    Path(path).write_text("".join(f"{name}='{value}'\n" for name, value in variables.items()))


def read_env_file(path: str | Path) -> ServerConfig:
    """The configuration an env file gives, without this process's environment (to describe a server)."""
    from dotenv import dotenv_values

    values: dict[str, object] = {}
    for key, value in dotenv_values(path).items():
        if key.startswith(PREFIX) and value is not None:
            values[key.removeprefix(PREFIX).lower()] = json.loads(value) if value[:1] in "[{" else value
    return ServerConfig.model_validate(values)


def load(env_file: str | None = None) -> ServerConfig:
    """The configuration from the environment, after setting the variables of ``env_file`` that the
    environment does not set (so that freestack's own ``FREESTACK_*`` settings see them too)."""
    if env_file:
        from dotenv import load_dotenv

        if not load_dotenv(env_file, override=False) and not Path(env_file).is_file():
            raise FileNotFoundError(f"the server's env file {env_file} does not exist")
    return ServerConfig()


__all__ = [
    "ADDRESS_ERROR",
    "BOOT_ERROR",
    "CANNOT_SERVE",
    "PREFIX",
    "Address",
    "ServerConfig",
    "load",
    "read_env_file",
    "write_env_file",
]
