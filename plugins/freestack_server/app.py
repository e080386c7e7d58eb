"""The model server: ``python -m freestack_server``, the one program that serves a freestack model in
every target (the local deploy, ``docker/serving.Dockerfile``, ``docker/mlserver.Dockerfile``, the
SeldonDeployment and KServe manifests). Its configuration is environment variables
(:mod:`freestack_server.config`, and freestack's ``FREESTACK_*`` settings for the model itself).

With no command it is a small supervisor that runs ``python -m freestack_server run`` as its child and
restarts it when it dies unexpectedly (a child that cannot load its model exits 3 and is not restarted:
that is a broken version, which the deploy reports; in a pod the kubelet sees the exit). SIGTERM stops
the child gracefully, as PID 1 in a container too. ``FREESTACK_SERVER_RUNTIME`` picks what ``run`` is:

- ``seldon``: seldon-core 1.17.1's REST app (the protocol, wrapper and error format are Seldon's) under
  gunicorn with freestack's worker (:mod:`freestack_server.worker`, why it exists is written there):
  whole requests only, bounded bodies and heads, slow clients cut, every refusal a 4xx in Seldon's JSON
  format (:mod:`freestack_server.request_checks`), adaptive batching (:mod:`freestack_server.batching`),
  plain predictions answered without Flask (:mod:`freestack_server.direct_predict`), metrics buffered
  per worker (:mod:`freestack_server.metrics`), ``gc.freeze`` after the model loads;
- ``mlserver``: MLServer 1.7.1 with freestack's runtime (:mod:`freestack_server.oip_server`).

A local deployment also has a stable address (``FREESTACK_SERVER_ADDRESS``): a listening socket the
supervisor fetches once from the address holder (``python -m freestack_server hold HOME HOST PORT``,
:mod:`freestack_server.address`) and hands to every child. The server answers there once the deploy
created its *gate* file, after its smoke test passed; a stopping server answers what its connections
already sent, then exits, and the socket stays open in the holder and in the other server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from freestack.settings import settings
from freestack.version.errors import VersionError
from freestack_server import request_checks
from freestack_server.address import BACKLOG, AddressError, hold, receive
from freestack_server.config import ADDRESS_ERROR, BOOT_ERROR, ServerConfig, load
from freestack_server.direct_predict import DirectPredict
from freestack_server.lighter_flask import faster_json, lighter_flask
from freestack_server.oip_server import run as run_mlserver

log = logging.getLogger("freestack.serving")


def _labels_env(cfg: ServerConfig) -> None:
    """Seldon reads its metric labels from these variables at import time (its operator sets them in a
    cluster; these are the same values for a server it did not start)."""
    os.environ.setdefault("SELDON_DEPLOYMENT_ID", cfg.name)
    os.environ.setdefault("PREDICTIVE_UNIT_ID", cfg.model)
    os.environ.setdefault("PREDICTIVE_UNIT_IMAGE", f"freestack/{cfg.model}:{cfg.version}")
    os.environ.setdefault("PREDICTOR_ID", cfg.predictor)
    os.environ.setdefault("PREDICTOR_LABELS", json.dumps({"version": cfg.version}))
    # Seldon copies every custom metric into each response's meta unless told not to; Prometheus has them
    os.environ.setdefault("INCLUDE_METRICS_IN_CLIENT_RESPONSE", "false")


def _post_worker_init(worker, *, seldon_hook) -> None:
    """Seldon's hook, then move everything the worker holds once the
    model is loaded (torch, Flask, the model) out of the garbage collector's reach. Requests leave
    few survivors, so full collections are rare, but each one walked all of those objects and stalled
    the worker: a latency spike for every request queued on it. ``gc.freeze`` is what the Python docs suggest for pre-fork servers."""
    import gc

    seldon_hook(worker)
    gc.collect()
    gc.freeze()


def _watch_parent(parent: int) -> None:
    """Exit when the process that started us is gone (no orphaned metrics server holding a port)."""

    def loop():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=loop, daemon=True).start()


def _metrics_server(seldon_metrics, host: str, port: int, parent: int) -> None:
    from seldon_core import wrapper
    from seldon_core.gunicorn_utils import StandaloneApplication, post_worker_init

    _watch_parent(parent)
    app = wrapper.get_metrics_microservice(seldon_metrics)
    options = {
        "bind": f"{host}:{port}",
        "workers": 1,
        "timeout": 60,
        "loglevel": "warning",
        "post_worker_init": post_worker_init,
        "accesslog": None,
    }
    StandaloneApplication(app, options=options).run()


def run(cfg: ServerConfig, address_fd: int | None = None) -> None:
    """Start Seldon's REST microservice for ``cfg`` (blocks; gunicorn's arbiter exits the process);
    ``address_fd``: the deployment's listening socket, from the supervisor."""
    import multiprocessing as mp

    _labels_env(cfg)
    from seldon_core import wrapper
    from seldon_core.gunicorn_utils import UserModelApplication, post_worker_init, worker_exit

    from freestack_server.metrics import BufferedSeldonMetrics
    from freestack_server.seldon_model import Model

    user_object = Model(deployment=cfg.name)  # the model URI and its limits: freestack's FREESTACK_* settings
    with _kept_from_forks(address_fd):  # Seldon's metrics manager and metrics server need no listener
        seldon_metrics = BufferedSeldonMetrics(worker_id_func=os.getpid)
        if cfg.metrics_port:
            mp.Process(
                target=_metrics_server,
                args=(seldon_metrics, cfg.host, cfg.metrics_port, os.getpid()),
                daemon=True,
            ).start()
    app = wrapper.get_rest_microservice(user_object, seldon_metrics)
    inputs = user_object.inputs()  # what the model takes besides rows of numbers
    request_checks.install(app, max_body=_max_body(), cors_origins=cfg.cors_origins, inputs=inputs)
    lighter_flask(app)
    faster_json(app)
    direct = None
    if cfg.worker_class == "freestack":
        direct = DirectPredict(user_object, seldon_metrics, inputs=inputs, json_dumps=app.json.dumps)
    options = _gunicorn_options(
        cfg,
        _binds(cfg, address_fd),
        seldon_metrics,
        post_worker_init,
        worker_exit,
        direct_predict=direct,
        batcher=_batcher(cfg, user_object),
    )
    shared = (
        f", and on the deployment's address {cfg.host}:{cfg.address.port}"
        if address_fd is not None and cfg.address
        else ""
    )
    log.info(
        "serving %s %s on http://%s:%s/%s (metrics on %s)",
        cfg.model,
        cfg.version,
        cfg.host,
        cfg.port,
        shared,
        cfg.metrics_port or "no port",
    )
    UserModelApplication(app, user_object, False, None, "Model", options=options).run()


def _batcher(cfg: ServerConfig, user_object):
    """Adaptive batching for a freestack model served by the freestack worker (None when off): the model
    parks its forward passes with it, and the worker runs the requests that arrived together as one round."""
    if not (cfg.adaptive_batching and cfg.worker_class == "freestack"):
        return None
    from freestack_server.batching import RequestBatcher

    # small JSON files only: no torch before the fork
    generation = user_object.describe().get("task") == "generation"
    user_object.batcher = RequestBatcher(
        user_object.forward_now, user_object.max_batch_rows, 0.005 if generation else 0.0
    )
    return user_object.batcher


@contextlib.contextmanager
def _kept_from_forks(fd: int | None):
    """Processes forked inside the block close ``fd`` at once: a helper process that does not serve
    must not keep the deployment's address open (and bound) if it outlives the server."""
    hidden = [] if fd is None else [fd]
    if hidden:
        os.register_at_fork(after_in_child=lambda: [_close(f) for f in hidden])
    try:
        yield
    finally:
        hidden.clear()  # gunicorn's workers, forked later, accept on it


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _max_body() -> int:
    """The largest request body the server takes (the ``max_body_bytes`` setting, 413 above)."""
    return int(settings().max_body_bytes)


def _binds(cfg: ServerConfig, address_fd: int | None) -> list[str]:
    """gunicorn's ``bind``: ``host:port``, and with an address socket both as ``fd://`` listeners
    (gunicorn 20.1 takes either addresses or descriptors, so this process binds ``host:port`` itself)."""
    host, port = cfg.host, cfg.port
    if address_fd is None:
        return [f"{host}:{port}"]
    try:
        own = socket.create_server((host, port), backlog=BACKLOG)
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d (%s): another program holds the port; free it or change "
            "deploy.local.port",
            host,
            port,
            exc.strerror or exc,
        )
        sys.exit(BOOT_ERROR)
    binds = [f"fd://{own.detach()}"]  # gunicorn owns (and closes) the descriptor from here
    gate = cfg.address.gate if cfg.address else None
    if cfg.worker_class == "freestack" or (gate and os.path.exists(gate)):
        binds.append(f"fd://{address_fd}")
    else:
        os.close(address_fd)
    return binds


def _gunicorn_options(
    cfg: ServerConfig,
    binds: list[str],
    seldon_metrics,
    post_worker_init,
    worker_exit,
    direct_predict=None,
    batcher=None,
) -> dict[str, Any]:
    """gunicorn's options from the server's configuration."""
    from functools import partial

    worker_class: Any = cfg.worker_class
    extra: dict[str, Any] = {}
    if worker_class == "freestack":
        from freestack_server.worker import install

        gate = (cfg.address.gate, cfg.address.port) if cfg.address else None
        worker_class, extra["child_exit"] = install(
            slots=2 * cfg.workers + 2,
            gate=gate,
            max_body=_max_body(),
            direct_predict=direct_predict,
            batcher=batcher,
            max_idle=cfg.max_idle_connections,
        )
    else:
        from freestack_server.worker import gunicorn_class

        worker_class = gunicorn_class(worker_class, max_body=_max_body())
    return {
        "bind": binds,
        "workers": cfg.workers,
        "threads": cfg.threads,
        "worker_class": worker_class,
        "timeout": cfg.timeout,
        "graceful_timeout": 10,
        "keepalive": 5,
        "backlog": BACKLOG,
        "loglevel": "info",
        "accesslog": None,
        "post_worker_init": partial(_post_worker_init, seldon_hook=post_worker_init),
        "worker_exit": partial(worker_exit, seldon_metrics=seldon_metrics),
        "proc_name": f"freestack-serve-{cfg.name}",
        **extra,
    }


def _die_with_parent() -> None:
    """In the child: receive SIGTERM if the supervisor dies, even by SIGKILL (Linux prctl)."""
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def supervise(env_file: str | None, *, max_restarts: int = 5, window_seconds: float = 60.0) -> int:
    """Run the server as a child and restart it when it dies; SIGTERM/SIGINT stop it gracefully."""
    stopping = threading.Event()
    child: subprocess.Popen | None = None

    def on_signal(signum, _frame):
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cfg = load(env_file)
    try:  # once for every child: a restart does not need the holder. The lease is held while this lives
        handed = receive(cfg.address.socket, cfg.address.host, cfg.address.port) if cfg.address else None
    except AddressError as exc:
        log.error("%s", exc)
        return ADDRESS_ERROR
    address_fd = handed.fd if handed is not None else None
    cmd = [sys.executable, "-m", "freestack_server", "run", *(["--env-file", env_file] if env_file else [])]
    if address_fd is not None:
        cmd += ["--address-fd", str(address_fd)]
    restarts: list[float] = []
    while True:
        child = subprocess.Popen(
            cmd, preexec_fn=_die_with_parent, pass_fds=() if address_fd is None else (address_fd,)
        )
        rc = child.wait()
        if stopping.is_set():
            return 0
        if rc == BOOT_ERROR:
            log.error("the model server could not boot (exit %d): not restarting; see the log above", rc)
            return rc
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < window_seconds] + [now]
        if len(restarts) > max_restarts:
            log.error(
                "the model server died %d times in %.0f s (last exit %s): giving up",
                len(restarts),
                window_seconds,
                rc,
            )
            return rc or 1
        log.warning("the model server exited with %s; restarting (%d/%d)", rc, len(restarts), max_restarts)
        time.sleep(min(2.0 ** (len(restarts) - 1), 10.0))


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    ap = argparse.ArgumentParser(
        prog="python -m freestack_server",
        description=(
            "The model server, configured by FREESTACK_SERVER_* and FREESTACK_* variables (docs: settings "
            "reference). With no command: the server under a supervisor that restarts it if it dies."
        ),
    )
    ap.add_argument(
        "--env-file", default=None, help="variables to set first (NAME='value' lines); the environment wins"
    )
    sub = ap.add_subparsers(dest="command")
    run_p = sub.add_parser("run", help="the server itself, unsupervised (what the supervisor starts)")
    run_p.add_argument("--env-file", default=None, dest="run_env_file")
    run_p.add_argument("--address-fd", type=int, default=None, help="the deployment's listening socket")
    hold_p = sub.add_parser("hold", help="hold a deployment's address (see freestack_server.address)")
    for name in ("home", "host"):
        hold_p.add_argument(name)
    hold_p.add_argument("port", type=int)
    args = ap.parse_args(argv)
    if args.command is None:
        return supervise(args.env_file)
    if args.command == "hold":
        return hold(args.home, args.host, args.port)
    cfg = load(args.run_env_file or args.env_file)
    try:
        if cfg.runtime == "mlserver":
            import asyncio

            asyncio.run(run_mlserver(cfg, args.address_fd))
        else:
            run(cfg, args.address_fd)
    except VersionError:  # logged as CANNOT_SERVE where it was met (freestack_server.core.cannot_serve)
        return BOOT_ERROR
    return 0
