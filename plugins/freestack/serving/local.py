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

import functools
import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from freestack.errors import DeployError
from freestack.serving.in_place import promote_in_place
from freestack.serving.launch import (
    Address,
    LocalServer,
    ServerLaunch,
    Slot,
    checked_key,
    health_url,
    hold_address,
    log_tail,
    same_key,
    server_config,
    server_home,
    start_server,
)
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
from freestack.version import VersionCorrupt, VersionError
from freestack.version import open as open_version
from freestack_server.core.config import PREFIX as SERVER_PREFIX
from freestack_server.core.requestlog import monitoring_uri

if TYPE_CHECKING:
    from freestack.serving.spec import LocalTarget

log = logging.getLogger(__name__)

COLORS = ("blue", "green")


# ------------------------------------------------------------------------------------------------------
# where things are


# ------------------------------------------------------------------------------------------------------
# the deployment's address


# ------------------------------------------------------------------------------------------------------
# one server


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
    api_key = checked_key(api_key, local)
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
    if live.get("version") != version or live.get("runtime", "seldon") != runtime:
        return False
    if not (_same_place(live, local) and same_key(live, api_key)):
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


def _healthy(url: str, runtime: str = "seldon", model: str = "") -> bool:
    try:
        code, _ = http_json(health_url(url, runtime, model), timeout=5.0)
    except OSError:
        return False
    return code == 200


def _stop_strays(name: str, live: dict[str, Any] | None, local: LocalTarget) -> None:
    """Stop servers left behind by an interrupted deploy of this deployment (never the live one), and
    address holders of this deployment that neither the live server nor this deploy uses."""
    for pid in supervisors(
        str(server_home(name)) + "/"
    ):  # started from this serving dir, by a killed deploy task
        if not (live and pid == live.get("pid")):
            log.warning("stopping a model server left by an interrupted deploy (pid %d)", pid)
            stop_server(pid)
    keep = {(local.host, local.port)} | ({(live.get("host"), live.get("port"))} if live else set())
    for pid, home, host, port in holders(str(server_home(name))):
        if home == str(server_home(name)) and (host, port) not in keep:
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
    (server_home(old["name"]) / f"{old.get('color')}.gate").unlink(missing_ok=True)
    old_holder = old.get("holder_pid")
    if (
        old_holder
        and old_holder != address.holder_pid
        and is_holder(old_holder, str(server_home(old["name"])))
    ):
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
    if holder and is_holder(holder, str(server_home(name))):
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
    "check_files",
    "deploy_local",
    "describe",
    "stop_local",
]
