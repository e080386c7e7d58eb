"""The local deploy target: a supervised ``seldon-core-microservice`` on 127.0.0.1, switched blue/green.

``deploy_local`` starts the new version beside the one serving (blue on ``port``, green on
``port + 1``), waits for ``/health/status``, sends real test rows whose answers must equal the
evaluation's in-process predictions, and only then replaces the deployment record
``deployments/<model>/<name>.json`` (compare-and-swap) and stops the old process. If the new version
fails to load or to answer the same, it is stopped and the old one keeps serving.

The server runs in the serving environment (``.venv-serving``) in its own session, so it outlives the
Airflow task that started it; the record keeps its pid, port, version and log. This module is plain
Python over the registry and storage: the deploy operator and ``freestack serve`` both use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freestack.errors import DeployError
from freestack.serving.processes import port_free, process_alive, stop_process, supervisors
from freestack.serving.records import Deployments
from freestack.serving.smoke import http_json, smoke_sample, smoke_test
from freestack.settings import checkout_dir, settings

if TYPE_CHECKING:
    from freestack.serving.spec import LocalTarget
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

HISTORY = 20
COLORS = ("blue", "green")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------------
# where things are


def serving_python() -> str:
    """The serving environment's interpreter: the ``serving_python`` setting or ``<checkout>/.venv-serving``."""
    configured = settings().serving_python
    py = configured or checkout_dir() / ".venv-serving" / "bin" / "python"
    if not py.exists():
        raise DeployError(
            f"the serving environment is missing ({py}): run `make serving-venv` (seldon-core 1.17.1 needs its "
            "own virtualenv) or set FREESTACK_SERVING_PYTHON to a python that has include/serving/requirements.txt"
        )
    return str(py)


def serving_dir() -> Path:
    """Where local servers keep their config, logs and model cache: the ``serving_dir`` setting, else
    ``<home>/.freestack/serving``."""
    current = settings()
    path = current.serving_dir or current.project_home / ".freestack" / "serving"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir() -> Path:
    """The Seldon model class's folder (``include/serving``: ``Model.py``)."""
    return checkout_dir() / "include" / "serving"


def log_tail(path: str | os.PathLike, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    keep = [ln for ln in text if "pkg_resources" not in ln]
    return "\n".join(keep[-lines:])


def _strays(name: str) -> list[int]:
    """Supervisors started for deployment ``name`` from this serving dir (left by a killed deploy task)."""
    return supervisors(str(serving_dir() / name) + "/")


# ------------------------------------------------------------------------------------------------------
# one server


class LocalServer:
    """One started model server (not yet switched to)."""

    def __init__(self, proc: subprocess.Popen, cfg: dict[str, Any], config_path: Path, log_path: Path):
        self.proc, self.cfg, self.config_path, self.log_path = proc, cfg, config_path, log_path

    @property
    def url(self) -> str:
        return f"http://{self.cfg['host']}:{self.cfg['port']}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise DeployError(
                    f"the model server for {self.cfg['model']} {self.cfg['version']} exited with code {rc} "
                    f"before it was healthy; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                code, body = http_json(f"{self.url}/health/status", timeout=2.0)
                if code == 200:
                    return
                last = f"HTTP {code}: {str(body)[:300]}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise DeployError(
            f"the model server for {self.cfg['model']} {self.cfg['version']} was not healthy within {timeout:.0f} s "
            f"({last}); last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        stop_process(self.proc.pid, grace_seconds=10.0)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=1)


@dataclass(frozen=True)
class Slot:
    """Where a new server goes: its color and ports."""

    color: str
    port: int
    metrics_port: int


def server_config(name: str, model: str, version: str, slot: Slot, local: LocalTarget, *, model_uri: str,
                  request_log_uri: str | None) -> dict[str, Any]:  # fmt: skip
    """The supervisor's config file for one server (``freestack.serving.server.app``)."""
    return {
        "name": name, "model": model, "version": version, "predictor": slot.color, "model_dir": str(model_dir()),
        "host": local.host, "port": slot.port, "metrics_port": slot.metrics_port, "workers": local.workers,
        "threads": local.threads, "worker_class": local.worker_class, "timeout": local.timeout_seconds,
        "parameters": {
            "model_uri": model_uri,
            "max_batch_rows": local.max_batch_rows,
            "request_log_uri": request_log_uri or "",
            "request_log_rate": local.log_sample_rate if request_log_uri else 0.0,
        },
    }  # fmt: skip


def start_server(cfg: dict[str, Any], *, model_env: dict[str, str]) -> LocalServer:
    """Start the supervised server for ``cfg`` (returns at once; call ``wait_ready``). ``model_env``: what
    the server needs to read its model URI (credentials; :func:`freestack.hooks.credentials.model_source`)."""
    home = serving_dir() / cfg["name"]
    home.mkdir(parents=True, exist_ok=True)
    cache = home / f"{cfg['predictor']}-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    config_path = home / f"{cfg['predictor']}.json"
    config_path.write_text(json.dumps(cfg, indent=2))
    log_path = home / f"{cfg['predictor']}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(model_env)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(checkout_dir() / "plugins"), str(model_dir())]),
        "FREESTACK_SERVING_CACHE": str(cache),
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    with open(log_path, "ab") as out:
        out.write(f"\n=== {_now()} starting {cfg['model']} {cfg['version']} on {cfg['host']}:{cfg['port']} "
                  f"({cfg['predictor']}) ===\n".encode())  # fmt: skip
        proc = subprocess.Popen(
            [serving_python(), "-m", "freestack.serving.server", "supervise", str(config_path)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(home), env=env,
            start_new_session=True,
        )  # fmt: skip
    return LocalServer(proc, cfg, config_path, log_path)


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
    spec: PipelineSpec | None = None,
    reason: str | None = None,
    source: tuple[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Serve ``version`` as deployment ``name``: start, check, switch the record, stop the old server.

    ``source`` is the URI the server reads the version from and the environment it needs for it
    (default: ``version_uri`` as it is). Idempotent: if the record already serves this version from a
    live, healthy server, nothing changes."""
    deployments = Deployments(root_uri, model)
    current, token = deployments.read(name)
    live = process_alive(current)
    if live and current.get("version") == version and _healthy(current["url"]):
        log.info("%s/%s already serves %s at %s", model, name, version, current["url"])
        return {**current, "unchanged": True}
    _stop_strays(name, current if live else None)
    slot = _free_slot(model, name, local, current if live else None)
    request_log = str(deployments.folder / name / "requests") if local.log_sample_rate else None
    sample = smoke_sample(version_uri, local.smoke_rows, spec)
    model_uri, model_env = source or (version_uri, {})
    cfg = server_config(name, model, version, slot, local, model_uri=model_uri, request_log_uri=request_log)
    server = start_server(cfg, model_env=model_env)
    try:
        server.wait_ready(local.start_timeout_seconds)
        checked = smoke_test(server.url, sample)
        log.info("smoke test of %s %s at %s: %d rows equal the evaluation's (max |diff| %.1e)", model, version,
                 server.url, checked["rows"], checked["max_abs_diff"])  # fmt: skip
        record = _record(current if live else None, server, slot, local, version_uri, checked, reason)
        deployments.write(name, record, token)
    except BaseException:
        server.stop()
        raise
    if live:
        _retire(current)
    return record


def _healthy(url: str) -> bool:
    try:
        code, _ = http_json(f"{url}/health/status", timeout=5.0)
    except OSError:
        return False
    return code == 200


def _stop_strays(name: str, live: dict[str, Any] | None) -> None:
    """Stop servers left behind by an interrupted deploy of this deployment (never the live one)."""
    for pid in _strays(name):
        if not (live and pid == live.get("pid")):
            log.warning("stopping a model server left by an interrupted deploy (pid %d)", pid)
            stop_process(pid)


def _free_slot(model: str, name: str, local: LocalTarget, live: dict[str, Any] | None) -> Slot:
    """The color the live server does not use, with its ports checked free."""
    color = "green" if live and live.get("color") == "blue" else "blue"
    offset = COLORS.index(color)
    port = local.port + offset
    if not port_free(local.host, port):
        raise DeployError(
            f"port {local.host}:{port} for the {color} server of {model}/{name} is taken by another program; "
            f"free it or set deploy.local.port in the pipeline spec (blue uses port, green port + 1)"
        )
    metrics_port = (local.metrics_port or local.port + 100) + offset
    if not port_free(local.host, metrics_port):
        raise DeployError(f"metrics port {local.host}:{metrics_port} is taken; set deploy.local.metrics_port")
    return Slot(color, port, metrics_port)


def _record(live: dict[str, Any] | None, server: LocalServer, slot: Slot, local: LocalTarget, version_uri: str,
            checked: dict[str, Any], reason: str | None) -> dict[str, Any]:  # fmt: skip
    """The deployment record once ``server`` serves: where, what, since when, and the switch history."""
    cfg = server.cfg
    history = [*(live or {}).get("history", []), {"version": cfg["version"], "at": _now(), "color": slot.color,
                                                  "reason": reason}]  # fmt: skip
    previous = None
    if live:
        previous = {k: live.get(k) for k in ("version", "version_uri", "url", "pid", "color", "deployed_at")}
    return {
        "name": cfg["name"], "model": cfg["model"], "target": "local", "state": "serving",
        "version": cfg["version"], "version_uri": version_uri, "url": server.url,
        "predict_url": f"{server.url}/api/v1.0/predictions",
        "metrics_url": f"http://{local.host}:{slot.metrics_port}/metrics",
        "host": local.host, "port": slot.port, "color": slot.color, "pid": server.proc.pid,
        "hostname": socket.gethostname(), "config": str(server.config_path), "log": str(server.log_path),
        "request_log_uri": cfg["parameters"]["request_log_uri"] or None, "workers": local.workers,
        "threads": local.threads, "deployed_at": _now(),
        "smoke": {"rows": checked["rows"], "max_abs_diff": checked["max_abs_diff"]},
        "previous": previous, "history": history[-HISTORY:],
    }  # fmt: skip


def _retire(old: dict[str, Any]) -> None:
    """Stop the server that served before the switch, once requests already sent to it are answered."""
    time.sleep(1.0)
    stop_process(int(old["pid"]))
    log.info("stopped the %s server of %s %s (pid %s)", old.get("color"), old.get("model"), old.get("version"),
             old.get("pid"))  # fmt: skip


def stop_local(root_uri: str, model: str, name: str) -> dict[str, Any]:
    """Stop deployment ``name``'s server and mark its record stopped."""
    deployments = Deployments(root_uri, model)
    record, token = deployments.read(name)
    if record is None:
        raise DeployError(f"there is no deployment {model}/{name}; see `freestack serve status`")
    if record.get("target", "local") != "local":
        raise DeployError(f"{model}/{name} runs on Kubernetes; delete the SeldonDeployment there")
    if process_alive(record):
        stop_process(int(record["pid"]))
    elif record.get("hostname") not in (None, socket.gethostname()):
        raise DeployError(f"{model}/{name} is served from host {record['hostname']}; stop it there")
    record = {**record, "state": "stopped", "stopped_at": _now()}
    deployments.write(name, record, token)
    return record


def describe(record: dict[str, Any]) -> dict[str, Any]:
    """The record with what is true now: process alive, health answer."""
    out = dict(record)
    if record.get("target", "local") == "local":
        alive = process_alive(record)
        out["alive"] = alive
        health = None
        if alive:
            try:
                code, _ = http_json(f"{record['url']}/health/status", timeout=3.0)
                health = "ok" if code == 200 else f"HTTP {code}"
            except OSError as exc:
                health = f"unreachable ({exc})"
        out["health"] = health
    return out


__all__ = [
    "LocalServer", "Slot", "deploy_local", "describe", "log_tail", "model_dir", "serving_dir", "serving_python",
    "server_config", "start_server", "stop_local",
]  # fmt: skip
