"""One local model server started: the serving environment it runs in (``.venv-serving``, MLServer's
``.venv-mlserver``), the deployment's stable address (an *address holder* process that listens on
``deploy.local.port`` and hands the socket to each server, :mod:`freestack_server.core.address`), and the
server's process (``python -m freestack_server --env-file F``, the images' command, with the deploy's
variables in F) in a slot of its own. :mod:`freestack.serving.local` switches deployments blue/green on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from freestack.errors import DeployError
from freestack.serving.processes import (
    free_port,
    holders,
    port_free,
    port_owner,
    stop_holder,
    stop_server,
)
from freestack.serving.records import now
from freestack.serving.smoke import http_json
from freestack.settings import checkout_dir, settings
from freestack_server.core.address import socket_name
from freestack_server.core.config import CANNOT_SERVE, ServerConfig, write_env_file
from freestack_server.core.config import PREFIX as SERVER_PREFIX

if TYPE_CHECKING:
    from freestack.serving.spec import LocalTarget

log = logging.getLogger(__name__)


#: the model server's OpenAI API key (``ServerConfig.api_key``): in the server's env file, never in a record
API_KEY_VARIABLE = f"{SERVER_PREFIX}API_KEY"


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


def server_home(name: str) -> Path:
    return serving_dir() / name


def _server_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a process of the serving environment: ours, its own PYTHONPATH, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", SERVER_PREFIX))}
    env.update(extra)
    env.update({"PYTHONPATH": str(checkout_dir() / "plugins"), "PYTHONUNBUFFERED": "1"})
    return env


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
    home = server_home(name)
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
    gate = str(server_home(name) / f"{slot.color}.gate")
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
            "workdir": str(server_home(name)),
            "serves_file": str(server_home(name) / f"{slot.color}.serves") if mlserver else None,
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
    home = server_home(cfg.name)
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


def checked_key(api_key: SecretStr | None, local: LocalTarget) -> SecretStr | None:
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


def same_key(live: dict[str, Any], api_key: SecretStr | None) -> bool:
    """Whether the live server's env file holds ``api_key`` (a changed key needs a new server)."""
    from dotenv import dotenv_values

    try:
        held = dotenv_values(live["config"]).get(API_KEY_VARIABLE) if live.get("config") else None
    except OSError:
        return False
    return held == (api_key.get_secret_value() if api_key else None)


def health_url(url: str, runtime: str, model: str) -> str:
    """Where a server says it is ready: Seldon's ``/health/status`` (a forward pass), or the model's
    readiness under the Open Inference Protocol."""
    return f"{url}/v2/models/{model}/ready" if runtime == "mlserver" else f"{url}/health/status"
