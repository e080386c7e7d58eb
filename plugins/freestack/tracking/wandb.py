"""Weights & Biases runs that never make training fail (the ``wandb`` connection is read by
:class:`freestack.hooks.wandb.WandbHook` into :class:`WandbSettings`).

Mode: the connection's ``mode`` wins; else ``WANDB_MODE`` when it says ``disabled`` or ``offline``;
else ``online`` when there is an API key, otherwise ``offline``. Without a connection (a notebook, a
script), :meth:`WandbSettings.from_environment` applies the same rules to ``WANDB_API_KEY``.

Offline runs go under ``run_dir``, else ``$WANDB_DIR``, else ``<project home>/.freestack/wandb``
(wandb adds its own ``wandb/offline-run-...`` folder); the log says which ``wandb sync`` uploads
them. An online run whose server cannot be reached, or whose ``wandb.init`` fails, falls back to
offline with a warning.

``wandb`` is imported only when a run starts or a connection is tested.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from freestack.errors import FreestackError
from freestack.settings import project_home

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.wandb.ai"
MODES = ("online", "offline", "disabled")
Mode = Literal["online", "offline", "disabled"]

#: Seconds ``wandb.init`` may take before an online run falls back to offline.
INIT_TIMEOUT_S = 15.0
#: Seconds a reachability probe of the server may take.
PROBE_TIMEOUT_S = 5.0
#: Seconds between system-metrics samples (wandb's default is 15 s).
STATS_SAMPLING_INTERVAL_S = 30.0


def wandb_root() -> Path:
    """Where offline runs go by default: ``$WANDB_DIR``, else ``<project home>/.freestack/wandb``."""
    env = os.environ.get("WANDB_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (project_home() / ".freestack" / "wandb").resolve()


@dataclass(frozen=True)
class WandbSettings:
    mode: Mode
    api_key: str | None = None
    base_url: str = DEFAULT_BASE_URL
    entity: str | None = None
    project: str | None = None

    @classmethod
    def from_environment(cls) -> WandbSettings:
        """Settings without an Airflow connection (a notebook, a script): ``WANDB_API_KEY``,
        ``WANDB_BASE_URL``, ``WANDB_ENTITY``, ``WANDB_PROJECT``, and the mode by the rules above."""
        api_key = (os.environ.get("WANDB_API_KEY") or "").strip() or None
        return cls(
            mode=resolve_mode(None, api_key),
            api_key=api_key,
            base_url=normalize_base_url(os.environ.get("WANDB_BASE_URL")),
            entity=os.environ.get("WANDB_ENTITY") or None,
            project=os.environ.get("WANDB_PROJECT") or None,
        )

    def __repr__(self) -> str:  # never print the key
        key = "***" if self.api_key else None
        return (
            f"WandbSettings(mode={self.mode!r}, api_key={key!r}, base_url={self.base_url!r}, "
            f"entity={self.entity!r}, project={self.project!r})"
        )


def resolve_mode(explicit: str | None, api_key: str | None) -> Mode:
    """The connection's mode, else ``WANDB_MODE`` (disabled/offline), else online with a key."""
    if explicit:
        mode = str(explicit).strip().lower()
        if mode == "dryrun":
            mode = "offline"
        if mode not in MODES:
            raise FreestackError(f"W&B mode {explicit!r} is not one of {', '.join(MODES)}")
        return mode  # type: ignore[return-value]
    env = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if env == "disabled":
        return "disabled"
    if env in ("offline", "dryrun"):
        return "offline"
    return "online" if api_key else "offline"


def normalize_base_url(host: str | None, port: int | None = None) -> str:
    """``host`` as a server URL: ``https://`` when it names no scheme; the default when empty."""
    if not host or not host.strip():
        return DEFAULT_BASE_URL
    host = host.strip()
    if "://" not in host:
        host = "https://" + host
    parts = urlsplit(host)
    netloc = parts.netloc
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def probe_server(base_url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``base_url`` answers HTTP at all (any status), else why it does not."""
    import requests

    try:
        requests.get(base_url.rstrip("/") + "/healthz", timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_api_key(base_url: str, api_key: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Ask the server's GraphQL API who the key belongs to."""
    import requests

    try:
        resp = requests.post(
            base_url.rstrip("/") + "/graphql",
            json={"query": "query Viewer { viewer { id username entity } }"},
            auth=("api", api_key),
            timeout=timeout,
        )
    except requests.RequestException as exc:
        return False, f"W&B server {base_url} is not reachable: {type(exc).__name__}: {exc}"
    if resp.status_code in (401, 403):
        return False, f"W&B server {base_url} rejected the API key (HTTP {resp.status_code})"
    if resp.status_code >= 400:
        return False, f"W&B server {base_url} answered HTTP {resp.status_code}"
    try:
        viewer = (resp.json().get("data") or {}).get("viewer")
    except ValueError:
        return False, f"W&B server {base_url} did not answer GraphQL (not JSON)"
    if not viewer:
        return False, f"W&B server {base_url} does not accept the API key"
    who = viewer.get("username") or viewer.get("entity") or viewer.get("id")
    return True, f"W&B server {base_url} reachable; API key accepted (user {who})"


# ---------------------------------------------------------------------------------------------------------
# runs

_ARTIFACT_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def _artifact_name(name: str) -> str:
    clean = _ARTIFACT_NAME_RE.sub("-", name).strip("-.") or "artifact"
    return clean[:128]


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _s3_reference(uri: str) -> tuple[str, str | None]:
    """``s3://conn@bucket/key`` (freestack's form) as ``s3://bucket/key`` and the connection id."""
    parts = urlsplit(uri)
    conn_id = None
    netloc = parts.netloc
    if "@" in netloc:
        conn_id, netloc = netloc.rsplit("@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), conn_id


class TrackingRun:
    """A wandb run (online, offline or disabled) behind a small, failure-tolerant API."""

    def __init__(self, run: Any, *, mode: Mode, project: str | None, entity: str | None) -> None:
        self._run = run
        self._mode: Mode = mode
        self._project = project
        self._entity = entity
        self._finished = False

    # properties ------------------------------------------------------------------------------------------
    @property
    def wandb_run(self) -> Any:
        """The underlying ``wandb`` run object."""
        return self._run

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def id(self) -> str | None:
        return getattr(self._run, "id", None)

    @property
    def url(self) -> str | None:
        if self._mode != "online":
            return None
        try:
            return self._run.url
        except Exception:
            return None

    @property
    def run_dir(self) -> str | None:
        if self._mode == "disabled":
            return None
        try:
            return str(self._run.sync_dir)
        except Exception:
            try:
                return str(self._run.settings.sync_dir)
            except Exception:
                return None

    @property
    def sync_command(self) -> str | None:
        if self._mode != "offline" or not self.run_dir:
            return None
        return f"wandb sync {shlex.quote(self.run_dir)}"

    @property
    def project(self) -> str | None:
        try:
            return self._run.project or self._project
        except Exception:  # wandb asserts a project is set
            return self._project

    @property
    def entity(self) -> str | None:
        return self._entity

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "id": self.id,
            "url": self.url,
            "run_dir": self.run_dir,
            "sync_command": self.sync_command,
            "project": self.project,
            "entity": self.entity,
        }

    # recording ---------------------------------------------------------------------------------------------
    def _tolerate(self, what: str, exc: Exception) -> None:
        log.warning(
            "W&B could not %s for run %s (%s: %s); training goes on", what, self.id, type(exc).__name__, exc
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record metrics at ``step``. Tracking trouble is logged, never raised."""
        try:
            self._run.log(dict(metrics), step=int(step))
        except Exception as exc:
            self._tolerate(f"log step {step}", exc)

    def summary_update(self, values: dict[str, Any]) -> None:
        try:
            self._run.summary.update(dict(values))
        except Exception as exc:
            self._tolerate("update the summary", exc)

    def log_table(self, key: str, columns: list[str], data: list[list[Any]]) -> None:
        """Log a table (a ``wandb.Table``) under ``key``."""
        if self._mode == "disabled":
            return
        try:
            import wandb

            self._run.log({key: wandb.Table(columns=list(columns), data=_json_safe(data))})
        except Exception as exc:
            self._tolerate(f"log table {key!r}", exc)

    def log_image(self, key: str, uri: str) -> None:
        """Log the PNG at ``uri`` (any storage URI) as an image under ``key``."""
        if self._mode == "disabled":
            return
        try:
            import wandb

            from freestack.storage import to_path

            local = Path(self.run_dir or ".") / "freestack" / f"{_artifact_name(key)}.png"
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(to_path(uri).read_bytes())
            self._run.log({key: wandb.Image(str(local))})
        except Exception as exc:
            self._tolerate(f"log image {key!r}", exc)

    def log_artifact_reference(
        self, name: str, type: str, uri: str, metadata: dict[str, Any] | None = None
    ) -> Any:
        """Record an artifact that *references* ``uri`` (nothing is uploaded).

        ``file://`` and ``s3://`` become wandb references (no checksums); any other scheme
        (``data://``...) becomes a small ``reference.json`` holding the URI. The URI is always in
        the artifact's metadata under ``uri``. Returns the wandb artifact (None when disabled).
        """
        if self._mode == "disabled":
            return None
        try:
            return self._log_reference(name, type, uri, metadata)
        except Exception as exc:
            self._tolerate(f"record artifact {name!r} ({uri})", exc)
            return None

    def _log_reference(self, name: str, type: str, uri: str, metadata: dict[str, Any] | None) -> Any:
        import wandb

        meta = _json_safe({**(metadata or {}), "uri": uri})
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        ref = uri
        if scheme == "s3":
            ref, conn_id = _s3_reference(uri)
            if conn_id:
                meta["aws_conn_id"] = conn_id
        artifact = wandb.Artifact(_artifact_name(name), type=type, metadata=meta)
        referenced = False
        if scheme in ("file", "s3"):
            try:
                artifact.add_reference(ref, checksum=False)
                referenced = True
            except Exception as exc:
                log.info("W&B could not reference %s (%s); recording the URI in reference.json", uri, exc)
                artifact = wandb.Artifact(_artifact_name(name), type=type, metadata=meta)
        if not referenced:
            # kept inside the run folder (not wandb's staging area) so the offline run stays whole
            ref_file = Path(self.run_dir or ".") / "freestack" / f"{artifact.name}.reference.json"
            ref_file.parent.mkdir(parents=True, exist_ok=True)
            ref_file.write_text(json.dumps({"uri": uri, "metadata": meta}, indent=2, sort_keys=True))
            artifact.add_file(str(ref_file), name="reference.json", policy="immutable")
        self._run.log_artifact(artifact)
        return artifact

    def finish(self, exit_code: int = 0) -> None:
        if self._finished:
            return
        self._finished = True
        try:
            self._run.finish(exit_code=exit_code)
        except Exception as exc:
            self._tolerate("finish", exc)
            return
        if self._mode == "offline" and self.run_dir:
            log.info(
                "W&B offline run %s is in %s; upload it with: %s", self.id, self.run_dir, self.sync_command
            )

    def __enter__(self) -> TrackingRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exit_code=1 if exc_type is not None else 0)

    def __repr__(self) -> str:
        return f"TrackingRun(mode={self.mode!r}, id={self.id!r}, run_dir={self.run_dir!r}, url={self.url!r})"


def shared_service_or_own() -> bool:
    """Whether this process will use a shared wandb-core service (``WANDB_SERVICE``, set by the
    scheduler's preload for every task it forks). If the variable names a service that no longer
    answers (its scheduler is gone, or it crashed), it is dropped: ``wandb.init`` then starts this
    process's own service, as it would without the preload, instead of failing the task."""
    import socket

    token = os.environ.get("WANDB_SERVICE")
    if not token:
        return False
    parts = token.split("-")
    try:
        if "tcp" in parts:
            with socket.create_connection((parts[-2], int(parts[-1])), timeout=1):
                return True
        elif "unix" in parts:
            path = token.split("-unix-", 1)[1]
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                s.connect(path)
                return True
    except (OSError, ValueError, IndexError):
        pass
    log.warning("the shared W&B service (WANDB_SERVICE=%s) does not answer; starting this task's own", token)
    os.environ.pop("WANDB_SERVICE", None)
    return False


def _init(
    mode: Mode,
    settings: WandbSettings,
    root: Path | None,
    *,
    project: str | None,
    name: str | None,
    config: dict[str, Any] | None,
    tags: list[str] | None,
    group: str | None,
    job_type: str | None,
) -> Any:
    import wandb

    shared_service_or_own()
    extra: dict[str, Any] = {}
    if mode == "online":
        extra = {"api_key": settings.api_key, "base_url": settings.base_url, "init_timeout": INIT_TIMEOUT_S}
    ws = wandb.Settings(
        mode=mode,
        console="wrap",
        x_stats_sampling_interval=STATS_SAMPLING_INTERVAL_S,
        **extra,
    )
    return wandb.init(
        project=project,
        entity=settings.entity,
        name=name,
        config=dict(config or {}),
        tags=list(tags) if tags else None,
        group=group,
        job_type=job_type,
        dir=str(root) if root is not None else None,
        mode=mode,
        reinit="create_new",
        settings=ws,
    )


def start_run(
    settings: WandbSettings,
    *,
    project: str | None,
    name: str | None,
    config: dict[str, Any] | None,
    tags: list[str] | None,
    group: str | None = None,
    job_type: str | None = "train",
    run_dir: str | os.PathLike | None = None,
    existing: Any = None,
) -> TrackingRun:
    """Start a run. Online trouble (unreachable server, failing init) means offline, never an error.

    ``existing``: a run already started (by ``wandb.agent`` for a server sweep's trial) to record into.
    """
    project = project or settings.project
    if existing is not None:
        try:
            existing.config.update(dict(config or {}), allow_val_change=True)
        except Exception as exc:
            log.warning("W&B could not add the training config to run %s: %s", getattr(existing, "id", None), exc)
        return TrackingRun(existing, mode=settings.mode, project=project, entity=settings.entity)
    kwargs = dict(project=project, name=name, config=config, tags=tags, group=group, job_type=job_type)
    mode: Mode = settings.mode

    if mode == "disabled":
        run = _init("disabled", settings, None, **kwargs)
        return TrackingRun(run, mode="disabled", project=project, entity=settings.entity)

    root = Path(run_dir).expanduser().resolve() if run_dir else wandb_root()
    root.mkdir(parents=True, exist_ok=True)

    if mode == "online":
        problem = None if settings.api_key else "no API key"
        if problem is None:
            problem = probe_server(settings.base_url)
        if problem is None:
            try:
                run = _init("online", settings, root, **kwargs)
                tracking = TrackingRun(run, mode="online", project=project, entity=settings.entity)
                log.info("W&B run %s: %s", tracking.id, tracking.url)
                return tracking
            except Exception as exc:
                problem = f"wandb.init failed: {type(exc).__name__}: {exc}"
        log.warning(
            "W&B server %s cannot be used (%s); this run is recorded offline instead",
            settings.base_url,
            problem,
        )

    run = _init("offline", settings, root, **kwargs)
    tracking = TrackingRun(run, mode="offline", project=project, entity=settings.entity)
    log.info(
        "W&B offline run %s is written to %s; upload it later with: %s",
        tracking.id,
        tracking.run_dir,
        tracking.sync_command,
    )
    return tracking
