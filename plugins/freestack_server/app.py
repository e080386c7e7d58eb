"""The model server: ``python -m freestack_server``, the one program that serves a freestack model in
every target (the local deploy, ``docker/serving.Dockerfile``, ``docker/mlserver.Dockerfile``, the
SeldonDeployment and KServe manifests). Its configuration is environment variables
(:mod:`freestack_server.core.config`, and freestack's ``FREESTACK_*`` settings for the model itself).

With no command it is a small supervisor that runs ``python -m freestack_server run`` as its child and
restarts it when it dies unexpectedly (a child that cannot load its model exits 3 and is not restarted:
that is a broken version, which the deploy reports; in a pod the kubelet sees the exit). SIGTERM stops
the child gracefully, as PID 1 in a container too. ``FREESTACK_SERVER_RUNTIME`` picks what ``run`` is:

- ``seldon``: seldon-core 1.17.1's REST app under gunicorn with freestack's worker
  (:mod:`freestack_server.seldon`);
- ``mlserver``: MLServer 1.7.1 with freestack's runtime, the Open Inference Protocol and the OpenAI API
  (:mod:`freestack_server.mlserver`).

Both serve through :mod:`freestack_server.core`: the configuration, the stable address, fetching and
verifying the version, the served model and its generation service, the request log. The two runtimes
never import each other, and the core imports neither (an import contract in pyproject.toml); this
module, the program, is the one place that knows both.

A local deployment also has a stable address (``FREESTACK_SERVER_ADDRESS``): a listening socket the
supervisor fetches once from the address holder (``python -m freestack_server hold HOME HOST PORT``,
:mod:`freestack_server.core.address`) and hands to every child. The server answers there once the deploy
created its *gate* file, after its smoke test passed; a stopping server answers what its connections
already sent, then exits, and the socket stays open in the holder and in the other server.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time

from freestack.version.errors import VersionError
from freestack_server.core.address import AddressError, hold, receive
from freestack_server.core.config import ADDRESS_ERROR, BOOT_ERROR, load
from freestack_server.mlserver.server import run as run_mlserver
from freestack_server.seldon.server import run as run_seldon

log = logging.getLogger("freestack.serving")


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
    hold_p = sub.add_parser("hold", help="hold a deployment's address (see freestack_server.core.address)")
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
            run_seldon(cfg, args.address_fd)
    except VersionError:  # logged as CANNOT_SERVE where it was met (freestack_server.core.model.cannot_serve)
        return BOOT_ERROR
    return 0
