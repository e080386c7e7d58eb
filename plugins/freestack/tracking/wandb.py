"""Weights & Biases runs that never make training fail (the ``wandb`` connection is read by
:class:`freestack.hooks.wandb.WandbHook` into :class:`WandbSettings`).

Mode: the connection's ``mode`` wins; else ``WANDB_MODE`` when it says ``disabled`` or ``offline``;
else ``online`` when there is an API key, otherwise ``offline``. Without a connection (a notebook, a
script), :meth:`WandbSettings.from_environment` applies the same rules to ``WANDB_API_KEY``.

Offline runs go under ``run_dir``, else ``$WANDB_DIR``, else ``<project home>/.freestack/wandb``
(wandb adds its own ``wandb/offline-run-...`` folder); the log says which ``wandb sync`` uploads
them. An online run whose server cannot be reached, or whose ``wandb.init`` fails, falls back to
offline with a warning. A server that answers but rejects the API key is an error
(:class:`WandbKeyRejected`): a wrong key does not mend itself, and quietly recording offline would
hide it until someone looks for the runs.

wandb's terminal lines (``wandb: ...``) go to the ``freestack.wandb`` logger at their own level
(:func:`route_console`), not to stderr, which Airflow 3's task supervisor logs at ERROR.

``wandb`` is imported only when a run starts or a connection is tested.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from freestack.errors import FreestackError
from freestack.settings import project_home
from freestack.storage import to_path
from freestack.tracking.offline import sync_command, write_card

log = logging.getLogger(__name__)
#: wandb's own terminal messages, at their level (info, warning, error); see :func:`route_console`
console_log = logging.getLogger("freestack.wandb")

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
    #: where the key came from, for messages: ``connection 'wandb_default'`` or ``WANDB_API_KEY``
    source: str = field(default="WANDB_API_KEY", compare=False)

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
            f"entity={self.entity!r}, project={self.project!r}, source={self.source!r})"
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


class WandbKeyRejected(FreestackError):
    """The W&B server answered and refused the API key; retrying does not help (the message says what
    to change)."""


#: (server, key digest) pairs this process has seen accepted: each is checked with the server once
_ACCEPTED: set[tuple[str, str]] = set()


def _fix_hint(source: str) -> str:
    if source.startswith("connection"):
        return (
            f'fix the API key (password) of {source} or set its mode to offline (extra {{"mode": "offline"}})'
        )
    return f"fix {source} or set WANDB_MODE=offline"


def verify_api_key(settings: WandbSettings) -> str | None:
    """Whether the server takes the key, asked through wandb's public API (``wandb.Api`` checks the
    credentials with the server when it is given a key; nothing is written to ``.netrc``).

    None: accepted, or nothing to check (offline and disabled settings never contact a server, and
    online without a key records offline). A string: why the server could not be asked (unreachable,
    an error of its own); the caller records offline. :class:`WandbKeyRejected` when the server
    answered HTTP 401/403, or the key is not of a W&B key's form."""
    if settings.mode != "online" or not settings.api_key:
        return None
    seen = (settings.base_url, hashlib.sha256(settings.api_key.encode()).hexdigest())
    if seen in _ACCEPTED:
        return None
    problem = probe_server(settings.base_url)
    if problem is not None:
        return problem
    import wandb
    from wandb.errors import AuthenticationError

    try:
        wandb.Api(
            overrides={"base_url": settings.base_url}, api_key=settings.api_key, timeout=int(PROBE_TIMEOUT_S)
        )
    except AuthenticationError as exc:
        if exc.__cause__ is None:  # wandb checks a key's form before it asks the server
            raise WandbKeyRejected(
                f"the W&B API key in {settings.source} is not a W&B API key ({exc}); {_fix_hint(settings.source)}"
            ) from None
        status = getattr(getattr(exc.__cause__, "response", None), "http_status", None)
        if status in (401, 403):
            said = str(exc.__cause__).strip() or "no reason given"
            raise WandbKeyRejected(
                f"the W&B API key in {settings.source} was rejected by {settings.base_url} (HTTP {status}: "
                f"{said}); {_fix_hint(settings.source)}"
            ) from None
        return f"the API key could not be checked: {exc}"
    except Exception as exc:  # the wandb-core service could not start, a malformed answer...
        return f"the API key could not be checked: {type(exc).__name__}: {exc}"
    _ACCEPTED.add(seen)
    return None


def route_console() -> None:
    """wandb's terminal messages to :data:`console_log`, each at its own level, instead of stderr.

    wandb prints ``wandb: ...`` lines to stderr, and Airflow 3's task supervisor logs a task's stderr
    at ERROR: every healthy run looked like a failure. ``wandb.termsetup(settings, logger)`` (public,
    exported by ``wandb``) with ``silent`` makes ``termlog``/``termwarn``/``termerror`` call the
    logger's ``info``/``warning``/``error`` instead; a run whose own settings are not silent still
    composes them (``WANDB_SILENT=true`` drops them altogether). wandb applies its own terminal setup
    when it loads its settings in a process, so this runs after ``wandb.setup()``, before each run."""
    import wandb

    wandb.setup()
    wandb.termsetup(wandb.Settings(silent=True), console_log)


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
    conn_id, _, netloc = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), conn_id or None


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
        return sync_command(self.run_dir)

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
    run_id: str | None = None,
) -> Any:
    import wandb

    shared_service_or_own()
    if mode != "disabled":  # a disabled run prints nothing (and wandb.setup would start a service)
        route_console()
    extra: dict[str, Any] = {}
    if mode == "online":
        extra = {"api_key": settings.api_key, "base_url": settings.base_url, "init_timeout": INIT_TIMEOUT_S}
    ws = wandb.Settings(
        mode=mode,
        console="wrap",
        quiet=True,  # no history sparklines at the end: the run's page has them; our log names the run
        x_stats_sampling_interval=STATS_SAMPLING_INTERVAL_S,
        **extra,
    )
    kwargs = dict(
        project=project,
        entity=settings.entity,
        name=name,
        config=dict(config or {}),
        tags=list(tags) if tags else None,
        group=group,
        job_type=job_type,
        dir=str(root) if root is not None else None,
        mode=mode,
        id=run_id,
        resume="allow" if run_id else None,
        reinit="create_new",
        settings=ws,
    )
    folders = _run_folders(root, run_id)
    try:
        return wandb.init(**kwargs)
    except Exception as exc:
        if not (run_id and "in use" in str(exc) and os.environ.get("WANDB_SERVICE")):
            raise
    # the shared service still holds the run: the attempt that started it was killed, and a killed
    # client's run stays open there. This attempt records into the same run id through its own service.
    log.warning(
        "the shared W&B service still holds run %s of a killed attempt; this attempt uses its own service",
        run_id,
    )
    os.environ.pop("WANDB_SERVICE", None)
    wandb.teardown()
    for refused in _run_folders(root, run_id) - folders:  # the refused init's folder: logs, no record
        if not (refused / f"run-{run_id}.wandb").exists():
            shutil.rmtree(refused, ignore_errors=True)  # (gone first: the next init's takes its name)
    return wandb.init(**kwargs)


def _run_folders(root: Path | None, run_id: str | None) -> set[Path]:
    """The folders W&B made for run ``run_id`` under ``root`` (one an attempt; the refused ``wandb.init`` of
    a killed attempt's retry makes one too, which the retry removes)."""
    if root is None or run_id is None:
        return set()
    return {p.resolve() for p in (Path(root) / "wandb").glob(f"*-{run_id}*")}


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
    run_id: str | None = None,
) -> TrackingRun:
    """Start a run. Online trouble (unreachable server, failing init) means offline, never an error;
    a server that rejects the API key is one (:class:`WandbKeyRejected`).

    ``run_id``: the run's id, to resume it when a run of that id exists (a retried task records into
    the run its killed attempt started; offline, each attempt's folder carries the id and
    ``wandb sync`` puts them together).

    ``existing``: a run already started (by ``wandb.agent`` for a server sweep's trial) to record into.
    """
    project = project or settings.project
    if existing is not None:
        try:
            existing.config.update(dict(config or {}), allow_val_change=True)
        except Exception as exc:
            log.warning(
                "W&B could not add the training config to run %s: %s", getattr(existing, "id", None), exc
            )
        return TrackingRun(existing, mode=settings.mode, project=project, entity=settings.entity)
    kwargs = dict(
        project=project, name=name, config=config, tags=tags, group=group, job_type=job_type, run_id=run_id
    )
    if settings.mode == "disabled":
        run = _init("disabled", settings, None, **kwargs)
        return TrackingRun(run, mode="disabled", project=project, entity=settings.entity)

    root = Path(run_dir).expanduser().resolve() if run_dir else wandb_root()
    root.mkdir(parents=True, exist_ok=True)

    if settings.mode == "online":
        problem = verify_api_key(settings) if settings.api_key else "no API key"
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
    if tracking.run_dir:  # for the list of offline runs (freestack.ui.wandb_pages)
        from datetime import UTC, datetime

        card = {k: v for k, v in kwargs.items() if k not in ("config", "run_id")}
        card.update(
            id=tracking.id, project=tracking.project, started=datetime.now(UTC).isoformat(timespec="seconds")
        )
        write_card(tracking.run_dir, card)
    log.info(
        "W&B offline run %s is written to %s; upload it later with: %s",
        tracking.id,
        tracking.run_dir,
        tracking.sync_command,
    )
    return tracking
