"""The Seldon runtime's server: seldon-core 1.17.1's REST app for a freestack model (the protocol, wrapper
and error format are Seldon's) under gunicorn with freestack's worker (:mod:`.worker`, why it exists is
written there): whole requests only, bounded bodies and heads, slow clients cut, every refusal a 4xx in
Seldon's JSON format (:mod:`.request_checks`), adaptive batching (:mod:`.batching`), plain predictions
answered without Flask (:mod:`.direct_predict`), metrics buffered per worker (:mod:`.metrics`),
``gc.freeze`` after the model loads. ``python -m freestack_server run`` starts it
(:mod:`freestack_server.app`) when ``FREESTACK_SERVER_RUNTIME`` is ``seldon``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

from freestack.settings import settings
from freestack_server.core.address import BACKLOG
from freestack_server.core.config import BOOT_ERROR, ServerConfig
from freestack_server.seldon import request_checks
from freestack_server.seldon.direct_predict import DirectPredict
from freestack_server.seldon.lighter_flask import faster_json, lighter_flask

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

    from freestack_server.seldon.metrics import BufferedSeldonMetrics
    from freestack_server.seldon.model import Model

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
    from freestack_server.seldon.batching import RequestBatcher

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
        from freestack_server.seldon.worker import install

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
        from freestack_server.seldon.worker import gunicorn_class

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
