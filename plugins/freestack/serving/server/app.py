"""The local Seldon server: seldon-core 1.17.1's own REST app and gunicorn application, bound to the
address we choose, under a small supervisor. Runs in the serving environment (``.venv-serving``).

``python -m freestack.serving.server supervise CONFIG.json`` starts the supervisor, which runs
``... run CONFIG.json`` as its child and restarts it when it dies unexpectedly (a worker that fails to
boot, exit code 3, is not restarted: that is a broken model, and the deploy task reports it).
``python -m freestack.serving.server hold HOME HOST PORT`` is a deployment's address holder
(:mod:`freestack.serving.server.address`).

With an ``address`` in the config (what ``deploy`` writes), the server has two listeners: its own
``host:port`` (where the deploy checks it) and the deployment's stable address, a listening socket the
supervisor fetches once from the address holder and hands to every ``run`` it starts. The freestack
worker accepts on the stable address only once the deploy opened the server's *gate* (created the
file ``address.gate``), i.e. after the server passed its smoke test; gunicorn's ``sync`` and ``gthread``
workers cannot wait, so for them the socket is only handed to gunicorn when the gate is open at start.
A stopping server (SIGTERM) answers what its connections already sent, then exits
(:mod:`freestack.serving.server.worker`); the socket stays open in the holder and in the other server.

``run`` is what ``seldon-core-microservice Model --service-type MODEL`` does, with these changes:

- every listener binds ``host`` (127.0.0.1 locally) instead of 0.0.0.0, the REST port and the
  metrics port are ours, and no gRPC server is started (``grpc_port`` enables one, on ``host`` too);
- gunicorn's workers, threads, worker class and timeout come from the pipeline spec;
  ``worker_class: freestack`` is a keep-alive worker with one thread and no thread pool whose workers
  share new connections evenly, ``sync`` and ``gthread`` are gunicorn's (:mod:`freestack.serving.server.worker`);
- every worker class hands the app only whole requests, their body in memory: a client gets at most
  ``timeout`` / 2 to send its request (the freestack worker gives one that keeps sending 64 KiB/s
  more, and serves others meanwhile), bodies are limited to ``max_body_bytes``, and what the server
  refuses, in the worker or in front of the app (:mod:`freestack.serving.server.request_checks`: unknown paths
  and methods, ``Content-Encoding``, malformed messages on every route that takes one), gets a 4xx
  answer in Seldon's JSON error format;
- CORS answers only the origins in config ``cors_origins`` (``deploy.local.cors_origins``; none by
  default, ``*`` for any), instead of flask_cors's answer to every origin;
- Seldon's custom metrics are buffered per worker and published to the shared store once a second
  (:mod:`freestack.serving.server.metrics`);
- each worker freezes the objects it holds after loading the model (``gc.freeze``; config
  ``gc_freeze: false`` turns it off): a full garbage collection no longer walks torch and Flask,
  which stalled the worker each time;
- three Flask/werkzeug per-request costs are remembered or skipped, and Flask's JSON provider is
  backed by orjson with Flask's own as the fallback (:mod:`freestack.serving.server.lighter_flask`); config
  ``lighter_app: false`` turns them off;
- with the freestack worker, a plain prediction request (a JSON message the guard and the model
  accept, no query string, no CORS) is answered by the worker through Seldon's own ``predict``,
  without the WSGI environ and Flask (:mod:`freestack.serving.server.predict_lane`); config
  ``predict_lane: false`` turns it off, and everything else goes through the app as before.
- with the freestack worker, requests that arrive together share one forward pass of the model
  (adaptive batching with no waiting: :mod:`freestack.serving.server.batching`); config
  ``adaptive_batching: false`` turns it off.

The request/response protocol, the wrapper, the error format and the Model class are Seldon's.
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

from freestack.serving.server.address import AddressError, receive

log = logging.getLogger("freestack.serving")

BOOT_ERROR = 3  # gunicorn's exit code when a worker cannot boot (the model failed to load)
ADDRESS_ERROR = 4  # the supervisor could not get the deployment's listening socket from its holder


def _labels_env(cfg: dict[str, Any]) -> None:
    """Seldon reads its metric labels from these variables at import time."""
    os.environ.setdefault("SELDON_DEPLOYMENT_ID", cfg.get("name") or "freestack")
    os.environ.setdefault("PREDICTIVE_UNIT_ID", cfg.get("model") or "model")
    os.environ.setdefault("PREDICTIVE_UNIT_IMAGE", f"freestack/{cfg.get('model') or 'model'}:{cfg.get('version') or 'unknown'}")
    os.environ.setdefault("PREDICTOR_ID", cfg.get("predictor") or "local")
    os.environ.setdefault("PREDICTOR_LABELS", json.dumps({"version": cfg.get("version") or "unknown"}))
    # Seldon copies every custom metric into each response's meta unless told not to; Prometheus has them
    os.environ.setdefault("INCLUDE_METRICS_IN_CLIENT_RESPONSE", "false")


def _post_worker_init(worker, *, seldon_hook, freeze: bool) -> None:
    """Seldon's hook, then (``gc_freeze``, default on) move everything the worker holds once the
    model is loaded (torch, Flask, the model) out of the garbage collector's reach. Requests leave
    few survivors, so full collections are rare, but each one walked all of those objects and stalled
    the worker: a latency spike for every request queued on it. ``gc.freeze`` is what the Python docs suggest for pre-fork servers."""
    seldon_hook(worker)
    if freeze:
        import gc

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
    options = {"bind": f"{host}:{port}", "workers": 1, "timeout": 60, "loglevel": "warning",
               "post_worker_init": post_worker_init, "accesslog": None}  # fmt: skip
    StandaloneApplication(app, options=options).run()


def run(cfg: dict[str, Any], address_fd: int | None = None) -> None:
    """Start Seldon's REST microservice for ``cfg`` (blocks; gunicorn's arbiter exits the process);
    ``address_fd``: the deployment's listening socket, from the supervisor."""
    import multiprocessing as mp

    _labels_env(cfg)
    model_dir = cfg.get("model_dir")
    if model_dir and model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    import importlib

    from seldon_core import wrapper
    from seldon_core.gunicorn_utils import UserModelApplication, post_worker_init, worker_exit

    user_class = getattr(importlib.import_module(cfg.get("interface", "Model")), cfg.get("class", "Model"))
    user_object = user_class(**(cfg.get("parameters") or {}))
    host = cfg.get("host", "127.0.0.1")
    with _kept_from_forks(address_fd):  # Seldon's metrics manager and metrics server need no listener
        seldon_metrics = _metrics(cfg)
        if cfg.get("metrics_port"):
            mp.Process(target=_metrics_server, args=(seldon_metrics, host, int(cfg["metrics_port"]), os.getpid()),
                       daemon=True).start()  # fmt: skip
    app = wrapper.get_rest_microservice(user_object, seldon_metrics)
    from freestack.serving.server import request_checks

    takes_raw = getattr(user_object, "takes_raw_values", None)  # freestack's Model: category/text/image inputs
    raw_values = bool(takes_raw()) if callable(takes_raw) else False
    request_checks.install(app, max_body=_max_body(), cors_origins=cfg.get("cors_origins") or (), raw_values=raw_values)
    if cfg.get("lighter_app", True):
        from freestack.serving.server.lighter_flask import faster_json, lighter_flask

        lighter_flask(app)
        faster_json(app)
    lane = None
    if cfg.get("predict_lane", True) and cfg.get("worker_class") == "freestack":
        from freestack.serving.server.predict_lane import PredictLane

        lane = PredictLane.for_model(user_object, seldon_metrics, app, raw_values=raw_values)
    options = _gunicorn_options(cfg, _binds(cfg, host, address_fd), seldon_metrics, post_worker_init, worker_exit,
                                lane=lane, coalescer=_coalescer(cfg, user_object))  # fmt: skip
    address = cfg.get("address") or {}
    shared = f", and on the deployment's address {host}:{address['port']}" if address_fd is not None else ""
    log.info("serving %s %s on http://%s:%s/%s (metrics on %s)", cfg.get("model"), cfg.get("version"), host,
             cfg["port"], shared, cfg.get("metrics_port"))  # fmt: skip
    UserModelApplication(app, user_object, False, None, "Model", options=options).run()


def _coalescer(cfg: dict[str, Any], user_object):
    """Adaptive batching for a freestack model served by the freestack worker (None when off): the model
    parks its forward passes with it, and the worker runs the requests that arrived together as one round."""
    from freestack.serving.server.core import ServedModel

    if not (cfg.get("adaptive_batching", True) and cfg.get("worker_class") == "freestack"
            and isinstance(user_object, ServedModel)):  # fmt: skip
        return None
    from freestack.serving.server.batching import Coalescer

    user_object.coalescer = Coalescer(user_object.forward_now, user_object.max_batch_rows)
    return user_object.coalescer


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
    from freestack.settings import settings

    return int(settings().max_body_bytes)


def _metrics(cfg: dict[str, Any]):
    """Seldon's metrics store for the workers: buffered per worker unless ``buffered_metrics: false``."""
    if cfg.get("buffered_metrics", True):
        from freestack.serving.server.metrics import BufferedSeldonMetrics as metrics_cls
    else:
        from seldon_core.metrics import SeldonMetrics as metrics_cls  # noqa: N813
    return metrics_cls(worker_id_func=os.getpid)


def _binds(cfg: dict[str, Any], host: str, address_fd: int | None) -> list[str]:
    """gunicorn's ``bind``: ``host:port``, and with an address socket both as ``fd://`` listeners
    (gunicorn 20.1 takes either addresses or descriptors, so this process binds ``host:port`` itself)."""
    port = int(cfg["port"])
    if address_fd is None:
        return [f"{host}:{port}"]
    try:
        own = socket.create_server((host, port), backlog=int(cfg.get("backlog", 2048)))
    except OSError as exc:
        log.error("cannot listen on %s:%d (%s): another program holds the port; free it or change "
                  "deploy.local.port", host, port, exc.strerror or exc)  # fmt: skip
        sys.exit(BOOT_ERROR)
    binds = [f"fd://{own.detach()}"]  # gunicorn owns (and closes) the descriptor from here
    gate = (cfg.get("address") or {}).get("gate")
    if cfg.get("worker_class") == "freestack" or (gate and os.path.exists(gate)):
        binds.append(f"fd://{address_fd}")
    else:
        os.close(address_fd)
    return binds


def _gunicorn_options(cfg: dict[str, Any], binds: list[str], seldon_metrics, post_worker_init,
                      worker_exit, lane=None, coalescer=None) -> dict[str, Any]:  # fmt: skip
    """gunicorn's options from the server config (the pipeline spec's ``deploy.local`` block)."""
    from functools import partial

    workers = int(cfg.get("workers", 1))
    worker_class: Any = cfg.get("worker_class", "sync")
    extra: dict[str, Any] = {}
    if worker_class == "freestack":
        from freestack.serving.server.worker import MAX_IDLE, install

        address = cfg.get("address") or {}
        gate = (address["gate"], int(address["port"])) if address.get("gate") else None
        worker_class, extra["child_exit"] = install(slots=2 * workers + 2, gate=gate, max_body=_max_body(), lane=lane,
                                                    coalescer=coalescer,
                                                    max_idle=int(cfg.get("max_idle_connections", MAX_IDLE)))  # fmt: skip
    elif worker_class in ("sync", "gthread"):
        from freestack.serving.server.worker import gunicorn_class

        worker_class = gunicorn_class(worker_class, max_body=_max_body())
    return {
        "bind": binds,
        "workers": workers,
        "threads": int(cfg.get("threads", 1)),
        "worker_class": worker_class,
        "timeout": int(cfg.get("timeout", 30)),
        "graceful_timeout": int(cfg.get("graceful_timeout", 10)),
        "keepalive": int(cfg.get("keepalive", 5)),
        "backlog": int(cfg.get("backlog", 2048)),
        "loglevel": cfg.get("log_level", "info"),
        "accesslog": "-" if cfg.get("access_log") else None,
        "post_worker_init": partial(_post_worker_init, seldon_hook=post_worker_init,
                                    freeze=bool(cfg.get("gc_freeze", True))),  # fmt: skip
        "worker_exit": partial(worker_exit, seldon_metrics=seldon_metrics),
        "max_requests": int(cfg.get("max_requests", 0)),
        "proc_name": f"freestack-serve-{cfg.get('name', 'model')}",
        **extra,
    }


def _die_with_parent() -> None:
    """In the child: receive SIGTERM if the supervisor dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def supervise(config_path: str, *, max_restarts: int = 5, window_seconds: float = 60.0) -> int:
    """Run the server as a child and restart it when it dies; SIGTERM/SIGINT stop it gracefully."""
    stopping = threading.Event()
    child: subprocess.Popen | None = None

    def on_signal(signum, _frame):
        stopping.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        address_fd = _address_fd(config_path)
    except AddressError as exc:
        log.error("%s", exc)
        return ADDRESS_ERROR
    with open(config_path) as f:  # the runtime's own server: Seldon's (here) or MLServer's (oip_server)
        runtime = json.load(f).get("runtime", "seldon")
    module = "freestack.serving.server.oip_server" if runtime == "mlserver" else "freestack.serving.server"
    cmd = [sys.executable, "-m", module, "run", config_path]
    if address_fd is not None:
        cmd += ["--address-fd", str(address_fd)]
    restarts: list[float] = []
    while True:
        child = subprocess.Popen(cmd, preexec_fn=_die_with_parent, pass_fds=() if address_fd is None else (address_fd,))
        rc = child.wait()
        if stopping.is_set():
            return 0
        if rc == BOOT_ERROR:
            log.error("the model server could not boot (exit %d): not restarting; see the log above", rc)
            return rc
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < window_seconds] + [now]
        if len(restarts) > max_restarts:
            log.error("the model server died %d times in %.0f s (last exit %s): giving up", len(restarts),
                      window_seconds, rc)  # fmt: skip
            return rc or 1
        log.warning("the model server exited with %s; restarting (%d/%d)", rc, len(restarts), max_restarts)
        time.sleep(min(2.0 ** (len(restarts) - 1), 10.0))


def _address_fd(config_path: str) -> int | None:
    """The deployment's listening socket from its holder, once for every ``run`` this supervisor starts
    (a restart does not need the holder); None when the config has no ``address``."""
    with open(config_path) as f:
        address = json.load(f).get("address")
    if not address:
        return None
    return receive(address["socket"], address["host"], int(address["port"]))


def main(argv: list[str] | None = None) -> int:
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    ap = argparse.ArgumentParser(prog="python -m freestack.serving.server")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("supervise", help="run the server and restart it when it dies").add_argument("config")
    run_p = sub.add_parser("run", help="the server itself (gunicorn's arbiter)")
    run_p.add_argument("config")
    run_p.add_argument("--address-fd", type=int, default=None, help="the deployment's listening socket")
    hold_p = sub.add_parser("hold", help="hold a deployment's address (see freestack.serving.server.address)")
    for name in ("home", "host"):
        hold_p.add_argument(name)
    hold_p.add_argument("port", type=int)
    args = ap.parse_args(argv)
    if args.command == "supervise":
        return supervise(args.config)
    if args.command == "hold":
        from freestack.serving.server.address import hold

        return hold(args.home, args.host, args.port)
    with open(args.config) as f:
        run(json.load(f), args.address_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
