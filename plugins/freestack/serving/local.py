"""The local deploy target: the model server (``python -m freestack_server --env-file F``, the images'
command with the deploy's variables in F) on 127.0.0.1, switched blue/green behind one stable address.

A deployment's address is ``deploy.local.port`` (P) for its whole life: an *address holder* process
listens there and hands the listening socket to each server (:mod:`freestack_server.core.address`),
so the kernel gives connections straight to the servers' gunicorn workers, with no proxy. Blue and
green are two slots behind it, each server also on its own port (blue P+1, green P+2).

``deploy_local`` starts the new version in the slot the live one does not use, waits for
``/health/status`` on the server's own port, sends real test rows whose answers must equal the
evaluation's in-process predictions, and only then opens the server's gate: it starts accepting on the
deployment's address beside the old one. Once it does, the record ``deployments/<model>/<name>.json``
is replaced (compare-and-swap) and the old server is stopped gracefully: it accepts nothing more,
answers what its connections hold (``Connection: close``) and exits, while connections waiting in the
socket's queue are accepted by the new one: clients see no failed request. If the new version fails
to load or to answer the same, it is stopped before it took any traffic and the old one keeps serving.

The server runs in the serving environment (``.venv-serving``) in its own session, so it outlives the
Airflow task that started it; the record keeps its pid, port, version and log. This module is plain
Python over the registry and storage: the deploy operator and ``freestack serve`` both use it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from freestack.errors import DeployError
from freestack.serving.in_place import promote_in_place
from freestack.serving.processes import (
    free_port,
    holders,
    is_holder,
    port_free,
    port_listener,
    port_owner,
    process_alive,
    stop_holder,
    stop_server,
    supervisors,
)
from freestack.serving.records import Deployments, live_state, now, switched
from freestack.serving.smoke import (
    http_json,
    keyed_post,
    smoke_sample,
    smoke_test,
    smoke_test_v2,
    truncated,
)
from freestack.settings import checkout_dir, settings
from freestack.version import VersionCorrupt, VersionError
from freestack.version import open as open_version
from freestack_server.core.address import socket_name
from freestack_server.core.config import CANNOT_SERVE, ServerConfig, write_env_file
from freestack_server.core.config import PREFIX as SERVER_PREFIX
from freestack_server.core.requestlog import monitoring_uri

#: the model server's OpenAI API key (``ServerConfig.api_key``): in the server's env file, never in a record
API_KEY_VARIABLE = f"{SERVER_PREFIX}API_KEY"

if TYPE_CHECKING:
    from freestack.serving.spec import LocalTarget

log = logging.getLogger(__name__)

COLORS = ("blue", "green")


# ------------------------------------------------------------------------------------------------------
# where things are


def serving_python() -> str:
    """The serving environment's interpreter: the ``serving_python`` setting or ``<checkout>/.venv-serving``."""
    py = settings().serving_python or checkout_dir() / ".venv-serving" / "bin" / "python"
    if not py.exists():
        raise DeployError(
            f"the serving environment is missing ({py}): run `make serving-venv` (seldon-core 1.17.1 needs its "
            "own virtualenv) or set FREESTACK_SERVING_PYTHON to a python that has plugins/freestack_server/requirements-seldon.txt"
        )
    return str(py)


def runtime_python(runtime: str) -> str:
    """The interpreter a runtime's servers run in: Seldon's (:func:`serving_python`), or MLServer's
    (the ``mlserver_python`` setting or ``<checkout>/.venv-mlserver``)."""
    if runtime != "mlserver":
        return serving_python()
    py = settings().mlserver_python or checkout_dir() / ".venv-mlserver" / "bin" / "python"
    if not py.exists():
        raise DeployError(
            f"MLServer's environment is missing ({py}): run `make mlserver-venv` (MLServer 1.7.1 needs "
            "its own virtualenv) or set FREESTACK_MLSERVER_PYTHON to a python that has "
            "plugins/freestack_server/requirements-mlserver.txt"
        )
    return str(py)


def serving_dir() -> Path:
    """Where local servers keep their config, logs and model cache: the ``serving_dir`` setting, else
    ``<home>/.freestack/serving``."""
    current = settings()
    path = current.serving_dir or current.project_home / ".freestack" / "serving"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cannot_serve(path: str | os.PathLike) -> str | None:
    """Why the server could not serve its version, as its log says (the last :data:`CANNOT_SERVE` line)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    found = [ln.split(CANNOT_SERVE, 1)[1].strip() for ln in text.splitlines() if CANNOT_SERVE in ln]
    return found[-1] if found else None


def log_tail(path: str | os.PathLike, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    keep = [ln for ln in text if "pkg_resources" not in ln]
    return "\n".join(keep[-lines:])


def _home(name: str) -> Path:
    return serving_dir() / name


def _server_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a process of the serving environment: ours, its own PYTHONPATH, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", SERVER_PREFIX))}
    env.update(extra)
    env.update({"PYTHONPATH": str(checkout_dir() / "plugins"), "PYTHONUNBUFFERED": "1"})
    return env


# ------------------------------------------------------------------------------------------------------
# the deployment's address


@dataclass(frozen=True)
class Address:
    """A deployment's stable address and the holder process that keeps its listening socket."""

    host: str
    port: int
    holder_pid: int
    started: bool = False  # by this deploy (so no server uses it yet)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def hold_address(model: str, name: str, local: LocalTarget, live: dict[str, Any] | None) -> Address:
    """The deployment's address holder on ``local.host:local.port``: the running one, else a new one.
    Raises DeployError when the port is taken (by another program, or by our server whose holder is gone)."""
    home = _home(name)
    for pid, h_home, host, port in holders(str(home)):
        if (h_home, host, port) == (str(home), local.host, local.port):
            return Address(local.host, local.port, pid)
    if not port_free(local.host, local.port, wait=2.0):
        where = f"{local.host}:{local.port}"
        if live and live.get("port") == local.port:
            raise DeployError(
                f"the address holder of {model}/{name} is gone, but its server (pid {live.get('pid')}) still "
                f"serves {where}, so a new holder cannot listen there: stop the deployment (`freestack serve "
                f"stop {name}`) and deploy again (clients see the address down in between)"
            )
        raise DeployError(
            f"{where}, the address of {model}/{name} (deploy.local.port), is taken by another program"
            f"{port_owner(local.host, local.port)}; stop it, or set deploy.local.port to a free port (the "
            "deployment also uses port + 1 and port + 2 for its blue and green servers)"
        )
    return Address(local.host, local.port, _start_holder(home, local.host, local.port), started=True)


def _start_holder(home: Path, host: str, port: int, timeout: float = 15.0) -> int:
    """Start an address holder in its own session; return its pid once it answers."""
    home.mkdir(parents=True, exist_ok=True)
    ready = home / socket_name(port)
    ready.unlink(missing_ok=True)  # left by a holder that was killed
    log_path = home / "address.log"
    argv = [serving_python(), "-m", "freestack_server", "hold", str(home), host, str(port)]
    proc = _spawn(argv, home, log_path, f"holding {host}:{port}", _server_env({}))
    deadline = time.monotonic() + timeout
    while not ready.exists():
        rc = proc.poll()
        if rc is not None or time.monotonic() > deadline:
            if rc is None:
                stop_holder(proc.pid)
            raise DeployError(
                f"the address holder for {host}:{port} did not start (exit {rc}); last lines of "
                f"{log_path}:\n{log_tail(log_path, 5)}"
            )
        time.sleep(0.02)
    log.info("address holder for %s:%d started (pid %d)", host, port, proc.pid)
    return proc.pid


# ------------------------------------------------------------------------------------------------------
# one server


class LocalServer:
    """One started model server (not yet switched to)."""

    def __init__(self, proc: subprocess.Popen, launch: ServerLaunch, env_file: Path, log_path: Path):
        self.proc, self.launch, self.env_file, self.log_path = proc, launch, env_file, log_path
        self.cfg = launch.config

    @property
    def url(self) -> str:
        """The server's own address (not the deployment's)."""
        return f"http://{self.cfg.host}:{self.cfg.port}"

    @property
    def gate(self) -> Path:
        assert self.cfg.address is not None, "a server without a deployment's address has no gate"
        return Path(self.cfg.address.gate)

    def _exited(self, what: str) -> DeployError | None:
        rc = self.proc.poll()
        if rc is None:
            return None
        why = f": {reason}" if (reason := _cannot_serve(self.log_path)) else ""
        return DeployError(
            f"the model server for {self.cfg.model} {self.cfg.version} exited with code {rc} "
            f"{what}{why}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def wait_ready(self, timeout: float) -> None:
        """Wait until the server answers its health check (``timeout``: deploy.local.start_timeout_seconds)."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if exited := self._exited("before it was healthy"):
                raise exited
            try:
                code, body = http_json(health_url(self.url, self.cfg.runtime, self.cfg.model), timeout=2.0)
                if code == 200:
                    return
                last = f"HTTP {code}: {str(body)[:300]}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise DeployError(
            f"the model server for {self.cfg.model} {self.cfg.version} was not healthy within {timeout:.0f} s "
            f"({last}){self._slow_hint(timeout)}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def _slow_hint(self, timeout: float) -> str:
        """What to change when a server is not healthy in time: the setting its log points to."""
        try:
            killed = "WORKER TIMEOUT" in Path(self.log_path).read_text(errors="replace")
        except OSError:
            killed = False
        if killed:
            return (
                f": gunicorn killed workers that were silent for over deploy.local.timeout_seconds "
                f"({self.cfg.timeout} s, see WORKER TIMEOUT in the log); raise it in the spec's deploy.local "
                "block"
            )
        return (
            f": if the model needs longer to load, raise deploy.local.start_timeout_seconds (now {timeout:.0f} s) "
            "in the spec's deploy.local block"
        )

    def joined(self) -> set[int]:
        """Pids of the workers that accept on the deployment's address (they write them into the gate)."""
        try:
            return {int(x) for x in self.gate.read_text().split()}
        except (OSError, ValueError):
            return set()

    def wait_joined(self, timeout: float) -> None:
        """Wait until every worker accepts on the deployment's address (at least one within ``timeout``)."""
        want, deadline = 1 if self.cfg.runtime == "mlserver" else self.cfg.workers, time.monotonic() + timeout
        while len(got := self.joined()) < want:
            if exited := self._exited("while joining the deployment's address"):
                raise exited
            if time.monotonic() > deadline:
                if got:
                    log.warning(
                        "%d of %d workers accept on the deployment's address; going on", len(got), want
                    )
                    return
                raise DeployError(
                    f"the model server for {self.cfg.model} {self.cfg.version} did not start accepting on "
                    f"the deployment's address within {timeout:.0f} s; last lines of {self.log_path}:\n"
                    f"{log_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        stop_server(self.proc.pid, grace_seconds=15.0)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=1)


@dataclass(frozen=True)
class Slot:
    """Where a new server goes: its color, its own port, its metrics port and (runtime mlserver) its gRPC
    port (None: chosen free when its configuration is written)."""

    color: str
    port: int
    metrics_port: int
    grpc_port: int | None = None


@dataclass(frozen=True)
class ServerLaunch:
    """One server to start with ``python -m freestack_server --env-file F``: the server's configuration
    and its model's ``FREESTACK_*`` settings, all written to F (the images set the same variables), and
    the OpenAI API's key (``deploy.api_key``), written to F too but shown nowhere (a SecretStr)."""

    config: ServerConfig
    model: dict[str, str]
    api_key: SecretStr | None = None

    def variables(self) -> dict[str, str]:
        """The file's variables, the key's value among them: for the 0600 env file only."""
        key = {API_KEY_VARIABLE: self.api_key.get_secret_value()} if self.api_key else {}
        return {**self.model, **self.config.env(), **key}


def server_config(
    name: str,
    model: str,
    version: str,
    slot: Slot,
    local: LocalTarget,
    *,
    model_uri: str,
    request_log_uri: str | None,
    address: Address | None = None,
    runtime: str = "seldon",
    api_key: SecretStr | None = None,
) -> ServerLaunch:
    """What one server of deployment ``name`` runs with: on the slot's port; with ``address``, it also
    serves the deployment's address once its gate is open. ``runtime: mlserver``: MLServer, one process,
    gRPC on the slot's gRPC port (a free one when the slot has none). ``api_key``: the key its OpenAI API
    asks for."""
    mlserver = runtime == "mlserver"
    gate = str(_home(name) / f"{slot.color}.gate")
    cfg = ServerConfig.model_validate(
        {  # the variables alone: nothing of this process's environment
            "runtime": runtime,
            "model": model,
            "version": version,
            "deployment": name,
            "predictor": slot.color,
            "host": local.host,
            "port": slot.port,
            "metrics_port": slot.metrics_port,
            "workers": 1 if mlserver else local.workers,
            "threads": local.threads,
            "worker_class": local.worker_class,
            "timeout": local.worker_timeout,
            "cors_origins": list(local.cors_origins),
            "adaptive_batching": local.adaptive_batching,
            "max_idle_connections": local.max_idle_connections,
            "workdir": str(_home(name)),
            "serves_file": str(_home(name) / f"{slot.color}.serves") if mlserver else None,
            "grpc_port": (slot.grpc_port or free_port(local.host, exclude=(slot.port, slot.metrics_port)))
            if mlserver
            else 9500,
            "address": None
            if address is None
            else {
                "host": address.host,
                "port": address.port,
                "socket": socket_name(address.port),
                "gate": gate,
            },
        }
    )
    rate = local.log_sample_rate if request_log_uri else 0.0
    settings_env = {
        "FREESTACK_MODEL_URI": model_uri,
        "FREESTACK_MAX_BATCH_ROWS": str(local.max_batch_rows),
        "FREESTACK_REQUEST_LOG_URI": request_log_uri or "",
        "FREESTACK_REQUEST_LOG_RATE": str(rate),
        **local.generation.env(),
    }
    return ServerLaunch(cfg, settings_env, api_key)


def start_server(launch: ServerLaunch, *, model_env: dict[str, str], gate_open: bool = False) -> LocalServer:
    """Start the supervised server (returns at once; call ``wait_ready``). ``model_env``: what the server
    needs to read its model URI (credentials, kept out of the file;
    :func:`freestack.hooks.credentials.model_source`). Its gate starts closed unless ``gate_open``."""
    cfg = launch.config
    home = _home(cfg.name)
    home.mkdir(parents=True, exist_ok=True)
    cache = home / f"{cfg.predictor}-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    env_file = home / f"{cfg.predictor}.env"
    variables = {**launch.variables(), "FREESTACK_SERVING_CACHE": str(cache)}
    _write_private(env_file, variables)
    env = {k: v for k, v in _server_env(model_env).items() if k not in variables}  # the file's values hold
    if cfg.address and not gate_open:
        Path(cfg.address.gate).unlink(missing_ok=True)
    if cfg.serves_file:  # left by the slot's last server: this one serves the version it starts with
        cfg.serves_file.unlink(missing_ok=True)
    log_path = home / f"{cfg.predictor}.log"
    argv = [runtime_python(cfg.runtime), "-m", "freestack_server", "--env-file", str(env_file)]
    what = f"starting {cfg.model} {cfg.version} on {cfg.host}:{cfg.port} ({cfg.predictor})"
    return LocalServer(_spawn(argv, home, log_path, what, env), launch, env_file, log_path)


def _spawn(argv: list[str], home: Path, log_path: Path, what: str, env: dict[str, str]) -> subprocess.Popen:
    """Start ``argv`` in ``home`` and in its own session (it outlives the task that starts it), its output
    appended to ``log_path`` after a line saying ``what``."""
    with open(log_path, "ab") as out:
        out.write(f"\n=== {now()} {what} ===\n".encode())
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(home),
            env=env,
            start_new_session=True,
        )


def _write_private(path: Path, variables: dict[str, str]) -> None:
    """The server's env file, readable by its owner alone (mode 0600): it may hold the OpenAI API's key.
    The file is created with that mode before anything is written to it."""
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    write_env_file(path, variables)


def _checked_key(api_key: SecretStr | None, local: LocalTarget) -> SecretStr | None:
    """The OpenAI API's key for the server, checked against ``deploy.api_key`` (the caller reads it from
    the connection :attr:`LocalTarget.api_key` names): a spec that names a connection gets its key, and a
    key the env file cannot hold is refused without showing it."""
    source = local.api_key.conn_id if local.api_key else None
    if source and api_key is None:
        raise DeployError(
            f"deploy.api_key.conn_id names connection {source!r}, but this deploy was given no key: read it "
            "with freestack.hooks.credentials.server_api_key and pass it as api_key"
        )
    if api_key is not None:
        value = api_key.get_secret_value()
        if not value or "'" in value or "\n" in value or "\r" in value:
            raise DeployError(
                f"the OpenAI API key (the password of connection {source or '?'}) is empty or holds a quote "
                "or a line break, which the server's env file cannot carry: choose a key without them"
            )
    return api_key


def _same_key(live: dict[str, Any], api_key: SecretStr | None) -> bool:
    """Whether the live server's env file holds ``api_key`` (a changed key needs a new server)."""
    from dotenv import dotenv_values

    try:
        held = dotenv_values(live["config"]).get(API_KEY_VARIABLE) if live.get("config") else None
    except OSError:
        return False
    return held == (api_key.get_secret_value() if api_key else None)


# ------------------------------------------------------------------------------------------------------
# deploy / stop


def deploy_local(
    *,
    root_uri: str,
    model: str,
    name: str,
    version: str,
    version_uri: str,
    local: LocalTarget,
    reason: str | None = None,
    source: tuple[str, dict[str, str]] | None = None,
    runtime: str = "seldon",
    alias: str | None = None,
    api_key: SecretStr | None = None,
    sample: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Serve ``version`` as deployment ``name`` at its address: start, check, switch, stop the old server
    (``runtime``: ``seldon`` or ``mlserver``, the Open Inference Protocol).

    ``source`` is the URI the server reads the version from and the environment it needs for it
    (default: ``version_uri`` as it is). Idempotent: if the record already serves this version at this
    address from a live server that still answers its smoke test, nothing changes (one that does not is
    replaced by a new server), once the version's files are checked as every load checks them
    (:func:`check_files`: a version changed since registration fails the deploy, the server left as it is;
    a new server's load checks them itself). ``alias`` (what the version was chosen by, e.g.
    production) is kept in the record, so a status can flag a deployment whose alias moved on.
    ``api_key``: the key the OpenAI API (``/v1``) asks for, read from the connection ``deploy.api_key``
    names (:func:`freestack.hooks.credentials.server_api_key`); in the server's env file, never the record.
    ``sample``: the smoke test's rows and outputs for a version with no evaluation (default: the
    evaluation's, :func:`~freestack.serving.smoke.smoke_sample`)."""
    api_key = _checked_key(api_key, local)
    deployments = Deployments(root_uri, model)
    current, token = deployments.read(name)
    live = current if process_alive(current) else None
    sample = (
        smoke_sample(version_uri, local.smoke_rows) if sample is None else truncated(sample, local.smoke_rows)
    )
    if live and _still_serves(live, version, local, runtime, api_key, sample):
        # the running server is current only while its version's files are those registered
        check_files(model, version, version_uri)
        log.info("%s/%s already serves %s at %s", model, name, version, live["url"])
        return {**live, "unchanged": True}
    request_log = monitoring_uri(root_uri, model) if local.log_sample_rate else None
    local = local.for_version(is_pretrained(version_uri))
    model_uri, model_env = source or (version_uri, {})
    configured = functools.partial(  # a server of this deploy, in a slot, at an address
        server_config,
        name,
        model,
        version,
        local=local,
        model_uri=model_uri,
        request_log_uri=request_log,
        runtime=runtime,
        api_key=api_key,
    )
    if (
        live
        and runtime == live.get("runtime") == "mlserver"
        and live.get("server_port")
        and live.get("metrics_port")
    ):
        same = configured(
            Slot(live["color"], live["server_port"], live["metrics_port"], live.get("grpc_port")),
            address=Address(live["host"], live["port"], live["holder_pid"]),
        )
        if serves_file := _serves_in_place(live, same, version_uri, local):
            record = promote_in_place(
                live, serves_file, version, version_uri, sample, api_key=api_key, reason=reason
            )
            deployments.write(name, {**record, "alias": alias}, token)
            return {**record, "alias": alias}
    _stop_strays(name, live, local)
    prior, live = live, _without_address(live)
    slot = _free_slot(model, name, local, live, runtime=runtime)
    address = hold_address(model, name, local, live)
    launch = configured(slot, address=address)
    server = None
    try:
        server, checked, timings = _start_checked(launch, local, sample, model_env)
        t0 = time.monotonic()
        server = _join(server, local, sample, model_env)
        timings["join_s"] = round(time.monotonic() - t0, 3)
        record = _record(prior, server, slot, local, address, version_uri, checked, reason, timings)
        record["alias"] = alias
        record["api_key_conn_id"] = local.api_key.conn_id if api_key and local.api_key else None
        deployments.write(name, record, token)
    except BaseException:
        if server is not None:
            server.stop()
        _release(address)
        raise
    if live:
        _retire(live, address)
    return record


def check_files(model: str, version: str, version_uri: str) -> None:
    """The version's files against its registration manifest, as every load checks them
    (:meth:`freestack.version.ModelVersion.verify`): a file changed or removed since registration is
    :class:`~freestack.version.VersionCorrupt` naming it and what to do. Nothing is started or stopped."""
    try:
        open_version(version_uri).verify()
    except VersionError as exc:
        raise VersionCorrupt(
            f"{model} {version} was not deployed: {exc}. The running server was left as it is; roll back "
            f"(`freestack models rollback {model}`) or deploy another version "
            "(`freestack serve deploy PIPELINE --version V`)"
        ) from None


def _serves_in_place(
    live: dict[str, Any], same: ServerLaunch, version_uri: str, local: LocalTarget
) -> Path | None:
    """The live server's serves file when it can serve ``version_uri`` itself
    (:mod:`freestack.serving.in_place`): it answers at ``local``'s address, it would be started exactly as
    ``same`` but for its version, and both versions are LoRA adapters of one base. None: start a new one."""
    from dotenv import dotenv_values

    try:
        held = dotenv_values(live["config"]) if live.get("config") else {}
    except OSError:
        return None
    ignored = {"FREESTACK_MODEL_URI", f"{SERVER_PREFIX}VERSION", "FREESTACK_SERVING_CACHE"}
    wanted = {k: v for k, v in same.variables().items() if k not in ignored}
    if not held.get(f"{SERVER_PREFIX}SERVES_FILE") or {k: held.get(k) for k in wanted} != wanted:
        return None
    try:
        base = open_version(live["version_uri"]).adapter_base
        if base is None or open_version(version_uri).adapter_base != base:
            return None
    except (OSError, ValueError, VersionError, KeyError):
        return None
    return Path(held[f"{SERVER_PREFIX}SERVES_FILE"]) if _same_place(live, local) else None


def is_pretrained(version_uri: str) -> bool:
    """Whether the version is a fine-tuned transformers model (its timeouts default longer)."""
    try:
        return open_version(version_uri).config.pretrained
    except (OSError, ValueError, VersionError):
        return False  # the server's load reports what is wrong with the version


def _release(address: Address) -> None:
    """A failed deploy stops the holder it started: no server uses it, and a held address with no
    server behind it would keep clients waiting instead of refusing them."""
    if address.started:
        stop_holder(address.holder_pid)


def _unchanged(live: dict[str, Any], version: str, local: LocalTarget) -> bool:
    """The live server serves ``version`` at ``local``'s address, and answers."""
    return live.get("version") == version and _same_place(live, local)


def _same_place(live: dict[str, Any], local: LocalTarget) -> bool:
    """The live server is at ``local``'s address and ports, and answers."""
    same = live.get("port") == local.port and live.get("host") == local.host
    if local.metrics_port is not None and live.get("color") in COLORS:
        same = same and _metrics_port(live) == local.metrics_port + COLORS.index(live["color"])
    if local.grpc_port is not None and live.get("runtime") == "mlserver" and live.get("color") in COLORS:
        same = same and live.get("grpc_port") == local.grpc_port + COLORS.index(live["color"])
    return (
        same
        and bool(live.get("holder_pid"))
        and _healthy(live["url"], live.get("runtime", "seldon"), live.get("model", ""))
    )


def _start_checked(
    launch: ServerLaunch,
    local: LocalTarget,
    sample: dict[str, Any],
    model_env: dict[str, str],
    *,
    gate_open: bool = False,
):
    """Start the server on its own port, wait for health and require the evaluation's answers; returns
    (server, what the smoke test compared, timings). A server that fails is stopped."""
    t0 = time.monotonic()
    server = start_server(launch, model_env=model_env, gate_open=gate_open)
    try:
        server.wait_ready(local.start_timeout)
        _check_metrics(server, local)
        t1 = time.monotonic()
        checked = _smoke(server, sample)
    except BaseException:
        server.stop()
        raise
    log.info(
        "smoke test of %s %s at %s: %d rows equal the evaluation's (max |diff| %.1e)",
        server.cfg.model,
        server.cfg.version,
        server.url,
        checked["rows"],
        checked["max_abs_diff"],
    )
    return server, checked, {"ready_s": round(t1 - t0, 3), "smoke_s": round(time.monotonic() - t1, 3)}


def _join(
    server: LocalServer, local: LocalTarget, sample: dict[str, Any], model_env: dict[str, str]
) -> LocalServer:
    """Open the checked server's gate and wait until it accepts on the deployment's address. The freestack
    worker and MLServer (:class:`freestack_server.mlserver.server.AddressServer`) join in place; gunicorn's sync and gthread workers cannot wait for a gate, so that server is
    started again with the gate open (same version and config) and checked again on its own port."""
    server.gate.write_text("")
    if server.cfg.worker_class == "freestack" or server.cfg.runtime == "mlserver":
        server.wait_joined(local.start_timeout)
        return server
    server.stop()
    return _start_checked(server.launch, local, sample, model_env, gate_open=True)[0]


def _still_serves(
    live: dict[str, Any],
    version: str,
    local: LocalTarget,
    runtime: str,
    api_key: SecretStr | None,
    sample: dict[str, Any],
) -> bool:
    """The live server is the deploy asked for (version, place, runtime, key) and still answers the
    version's smoke test at the deployment's address (a live process whose model cannot answer any more
    is deployed again, saying why)."""
    if not (_unchanged(live, version, local) and live.get("runtime", "seldon") == runtime):
        return False
    if not _same_key(live, api_key):
        return False
    try:
        _smoke_at(live["url"], runtime, live["model"], sample, api_key)
    except (DeployError, OSError) as exc:  # a wrong answer, or none (refused, timed out)
        log.warning(
            "%s serves %s but fails its smoke test (%s): deploying it again", live["url"], version, exc
        )
        return False
    return True


def _smoke(server: LocalServer, sample: dict[str, Any]) -> dict[str, Any]:
    return _smoke_at(server.url, server.cfg.runtime, server.cfg.model, sample, server.launch.api_key)


def _smoke_at(
    url: str, runtime: str, model: str, sample: dict[str, Any], api_key: SecretStr | None = None
) -> dict[str, Any]:
    """The smoke test at ``url`` in the runtime's protocol, with the deployment's key when it has one."""
    if runtime == "mlserver":
        return smoke_test_v2(url, model, sample, post=keyed_post(api_key))
    return smoke_test(url, sample)


def health_url(url: str, runtime: str, model: str) -> str:
    """Where a server says it is ready: Seldon's ``/health/status`` (a forward pass), or the model's
    readiness under the Open Inference Protocol."""
    return f"{url}/v2/models/{model}/ready" if runtime == "mlserver" else f"{url}/health/status"


def _healthy(url: str, runtime: str = "seldon", model: str = "") -> bool:
    try:
        code, _ = http_json(health_url(url, runtime, model), timeout=5.0)
    except OSError:
        return False
    return code == 200


def _stop_strays(name: str, live: dict[str, Any] | None, local: LocalTarget) -> None:
    """Stop servers left behind by an interrupted deploy of this deployment (never the live one), and
    address holders of this deployment that neither the live server nor this deploy uses."""
    for pid in supervisors(str(_home(name)) + "/"):  # started from this serving dir, by a killed deploy task
        if not (live and pid == live.get("pid")):
            log.warning("stopping a model server left by an interrupted deploy (pid %d)", pid)
            stop_server(pid)
    keep = {(local.host, local.port)} | ({(live.get("host"), live.get("port"))} if live else set())
    for pid, home, host, port in holders(str(_home(name))):
        if home == str(_home(name)) and (host, port) not in keep:
            log.warning(
                "stopping the address holder of %s:%d, which no server uses (pid %d)", host, port, pid
            )
            stop_holder(pid)


def _without_address(live: dict[str, Any] | None) -> dict[str, Any] | None:
    """A live server from before deployments had a stable address listens on the address itself: it
    is stopped first, once (clients see the address down until the new server is up)."""
    if live and not live.get("holder_pid"):
        log.warning(
            "%s/%s is served without an address holder (deployed by an older freestack): stopping it "
            "first, so that its address can be held from now on",
            live.get("model"),
            live.get("name"),
        )
        stop_server(int(live["pid"]))
        return None
    return live


def _free_slot(
    model: str, name: str, local: LocalTarget, live: dict[str, Any] | None, *, runtime: str = "seldon"
) -> Slot:
    """The color the live server does not use, with its own port and its metrics port checked free. The
    metrics port is ``deploy.local.metrics_port`` (blue; green: + 1) when set, else a free port chosen
    now (it goes into the deployment record: ``metrics_port``, ``metrics_url``); so is the gRPC port of
    ``runtime: mlserver`` (``deploy.local.grpc_port``; the record's ``grpc_port``, ``grpc_address``)."""
    color = "green" if live and live.get("color") == "blue" else "blue"
    offset = COLORS.index(color)
    port = local.port + 1 + offset
    if not port_free(local.host, port, wait=5.0):  # a server killed just now may still hold its socket
        raise DeployError(
            f"port {local.host}:{port} for the {color} server of {model}/{name} is taken by another program"
            f"{port_owner(local.host, port)}; free it or set deploy.local.port in the pipeline spec (the address "
            "is port; the blue server uses port + 1, the green one port + 2)"
        )
    serving = range(local.port, local.port + 3)
    metrics_port = _own_port(model, name, local, color, "metrics_port", local.metrics_port, serving)
    grpc_port = None
    if runtime == "mlserver":
        taken = [*serving, metrics_port]
        grpc_port = _own_port(model, name, local, color, "grpc_port", local.grpc_port, taken)
    return Slot(color, port, metrics_port, grpc_port)


def _own_port(
    model: str,
    name: str,
    local: LocalTarget,
    color: str,
    setting: str,
    base: int | None,
    exclude: list[int] | range,
) -> int:
    """A server's metrics or gRPC port: ``base`` (blue; green: + 1) checked free, else a free one."""
    if base is None:
        return free_port(local.host, exclude=exclude)
    port = base + COLORS.index(color)
    if not port_free(local.host, port):
        what = setting.removesuffix("_port")
        raise DeployError(
            f"{what} port {local.host}:{port} for the {color} server of {model}/{name} is taken"
            f"{port_owner(local.host, port) or ' by another program'}; free it, set "
            f"deploy.local.{setting} to another port (blue uses {setting}, green {setting} + 1), or "
            f"leave it unset (null) to have free {what} ports chosen at each deploy"
        )
    return port


def _metrics_port(record: dict[str, Any]) -> int | None:
    """The metrics port a deployment record names (older records only have ``metrics_url``)."""
    if record.get("metrics_port"):
        return int(record["metrics_port"])
    tail = str(record.get("metrics_url") or "").rsplit(":", 1)[-1].split("/", 1)[0]
    return int(tail) if tail.isdigit() else None


def _check_metrics(server: LocalServer, local: LocalTarget, timeout: float = 15.0) -> None:
    """The server's metrics endpoint answers, from the server's own process group: a metrics port taken
    between the check and the server's start (by another program) fails the deploy, naming it."""
    port = server.cfg.metrics_port
    url, deadline, last = f"http://{local.host}:{port}/metrics", time.monotonic() + timeout, "no answer yet"
    while True:
        pid = port_listener(local.host, port)
        if pid is not None and not _in_group(pid, server.proc.pid):
            raise DeployError(
                f"metrics port {local.host}:{port} of {server.cfg.model} {server.cfg.version} was taken by "
                f"another program{port_owner(local.host, port)} before the server could listen there; set "
                "deploy.local.metrics_port to a free port, or leave it unset to have one chosen at deploy"
            )
        if exited := server._exited("before its metrics answered"):
            raise exited
        try:
            code, _ = http_json(url, timeout=2.0)
            if code == 200:
                return
            last = f"HTTP {code}"
        except OSError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise DeployError(
                f"the metrics of {server.cfg.model} {server.cfg.version} did not answer on {url} within "
                f"{timeout:.0f} s ({last}); last lines of {server.log_path}:\n{log_tail(server.log_path)}"
            )
        time.sleep(0.1)


def _in_group(pid: int, leader: int) -> bool:
    try:
        return os.getpgid(pid) == leader
    except OSError:
        return False


def _record(
    prior: dict[str, Any] | None,
    server: LocalServer,
    slot: Slot,
    local: LocalTarget,
    address: Address,
    version_uri: str,
    checked: dict[str, Any],
    reason: str | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The deployment record once ``server`` serves: where, what, since when, and the switch history."""
    cfg = server.cfg
    entry = {"version": cfg.version, "at": now(), "color": slot.color, "reason": reason}
    return {
        "name": cfg.name,
        "model": cfg.model,
        "target": "local",
        "state": "serving",
        "version": cfg.version,
        "version_uri": version_uri,
        "url": address.url,
        "runtime": cfg.runtime,
        "predict_url": f"{address.url}/v2/models/{cfg.model}/infer"
        if cfg.runtime == "mlserver"
        else f"{address.url}/api/v1.0/predictions",
        "metrics_url": f"http://{local.host}:{slot.metrics_port}/metrics",
        "metrics_port": slot.metrics_port,
        **(
            {"grpc_port": cfg.grpc_port, "grpc_address": f"{local.host}:{cfg.grpc_port}"}
            if cfg.runtime == "mlserver"
            else {}
        ),
        "host": local.host,
        "port": address.port,
        "holder_pid": address.holder_pid,
        "color": slot.color,
        "server_url": server.url,
        "server_port": slot.port,
        "pid": server.proc.pid,
        "hostname": socket.gethostname(),
        "config": str(server.env_file),
        "log": str(server.log_path),
        "request_log_uri": server.launch.model["FREESTACK_REQUEST_LOG_URI"] or None,
        "workers": cfg.workers,
        "threads": local.threads,
        "deployed_at": now(),
        "timings": timings,
        "smoke": {
            "rows": checked["rows"],
            "max_abs_diff": checked["max_abs_diff"],
            "tolerance": checked.get("tolerance"),
        },
        **switched(prior, entry),
    }


def _retire(old: dict[str, Any], address: Address) -> None:
    """Stop the server that served before the switch: it accepts nothing more, answers what its
    connections hold and exits (connections still queued go to the new server). A holder of another
    address (the spec's port changed) is stopped after it."""
    t0 = time.monotonic()
    stop_server(int(old["pid"]))
    (_home(old["name"]) / f"{old.get('color')}.gate").unlink(missing_ok=True)
    old_holder = old.get("holder_pid")
    if old_holder and old_holder != address.holder_pid and is_holder(old_holder, str(_home(old["name"]))):
        stop_holder(int(old_holder))
    log.info(
        "stopped the %s server of %s %s (pid %s) in %.1f s",
        old.get("color"),
        old.get("model"),
        old.get("version"),
        old.get("pid"),
        time.monotonic() - t0,
    )


def stop_local(root_uri: str, model: str, name: str) -> dict[str, Any]:
    """Stop deployment ``name``: its server, then its address holder; mark its record stopped."""
    deployments = Deployments(root_uri, model)
    record, token = deployments.read(name)
    if record is None:
        raise DeployError(f"there is no deployment {model}/{name}; see `freestack serve status`")
    if record.get("target", "local") != "local":
        raise DeployError(f"{model}/{name} runs on Kubernetes; delete the SeldonDeployment there")
    if process_alive(record):
        stop_server(int(record["pid"]))
    elif record.get("hostname") not in (None, socket.gethostname()):
        raise DeployError(f"{model}/{name} is served from host {record['hostname']}; stop it there")
    holder = record.get("holder_pid")
    if holder and is_holder(holder, str(_home(name))):
        stop_holder(int(holder))
    record = {**record, "state": "stopped", "stopped_at": now()}
    deployments.write(name, record, token)
    return record


def describe(record: dict[str, Any]) -> dict[str, Any]:
    """The record with what is true now: process alive, address holder alive, health answer, and what that
    makes it (``live_state``: serving or DOWN, with a ``hint`` saying why and what to do)."""
    out = dict(record)
    if record.get("target", "local") == "local":
        alive = process_alive(record)
        out["alive"] = alive
        out["holder_alive"] = bool(record.get("holder_pid")) and is_holder(record["holder_pid"])
        health = None
        if alive:
            try:
                code, _ = http_json(
                    health_url(record["url"], record.get("runtime", "seldon"), record.get("model", "")),
                    timeout=3.0,
                )
                health = "ok" if code == 200 else f"HTTP {code}"
            except OSError as exc:
                health = f"unreachable ({exc})"
        out["health"] = health
        out["live_state"], out["hint"] = live_state(out)
    return out


__all__ = [
    "Address",
    "LocalServer",
    "Slot",
    "check_files",
    "deploy_local",
    "describe",
    "hold_address",
    "log_tail",
    "ServerLaunch",
    "serving_dir",
    "serving_python",
    "server_config",
    "start_server",
    "stop_local",
]
