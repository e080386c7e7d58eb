"""A deployment's stable address: one listening socket, opened once and handed to every model server
that serves the deployment. Standard library only; runs in the serving environment.

``python -m freestack_server hold HOME HOST PORT`` is the *address holder*: it listens on
``HOST:PORT`` (the spec's ``deploy.local.port``) for the deployment's whole life, and in its folder
``HOME`` it answers on the Unix socket ``address-PORT.sock``: each connection gets the listening
socket's file descriptor (``SCM_RIGHTS``, :func:`socket.send_fds`; Linux and macOS) and is closed.
The holder itself never accepts a connection on ``HOST:PORT``.

A model server's supervisor fetches that descriptor once (:func:`receive`) and passes it to its
gunicorn, which accepts on it like on a socket it had bound itself (``bind = fd://N``): the kernel
hands each connection straight to a gunicorn worker, with no proxy in between. Two servers holding
the same socket both accept from its one queue, which is what makes the blue/green switch seamless:
a connection that waits in the queue when the old server stops is accepted by the new one, never
reset. The socket stays open as long as any process holds it, so a server keeps serving if the
holder dies; the holder only has to be there when a server starts.

The Unix socket is created with mode 0600 (only the deployment's user may ask for the descriptor)
and named relative to ``HOME``: holder and servers run there, which keeps the name within the Unix
socket path limit (104 bytes on macOS) however deep the serving folder is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys

#: what every holder's command line holds (``python -m freestack_server hold HOME HOST PORT``)
HOLDER = "freestack_server hold"
BACKLOG = 2048  # gunicorn's default; each server's gunicorn sets its own ``backlog`` on the shared socket
TAKEN = 2  # the holder's exit code when HOST:PORT cannot be bound


def socket_name(port: int) -> str:
    """The Unix socket a holder answers on, relative to the deployment's folder."""
    return f"address-{int(port)}.sock"


def hold(home: str, host: str, port: int) -> int:
    """Listen on ``host:port`` and hand the listening socket to whoever asks on the Unix socket in
    ``home``, until SIGTERM/SIGINT (exit 0). Exits ``TAKEN`` when the address cannot be bound."""
    os.chdir(home)
    try:
        tcp = socket.create_server((host, port), backlog=BACKLOG)  # SO_REUSEADDR on POSIX
    except OSError as exc:
        print(
            f"address holder: cannot listen on {host}:{port} ({exc.strerror or exc}); another program holds "
            f"the port: stop it or choose another deploy.local.port",
            file=sys.stderr,
            flush=True,
        )
        return TAKEN
    name = socket_name(port)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"{name}.new")  # left by a holder that was killed
    mask = os.umask(0o177)
    try:
        unix.bind(f"{name}.new")
    finally:
        os.umask(mask)
    unix.listen(64)
    os.replace(f"{name}.new", name)  # the name appears once it answers (what the deploy waits for)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    print(
        f"address holder: listening on {host}:{port}; servers get the socket from {home}/{name}", flush=True
    )
    try:
        _answer(unix, tcp, f"{host}:{port}".encode())
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
    return 0


def _answer(unix: socket.socket, tcp: socket.socket, label: bytes) -> None:
    while True:
        conn, _ = unix.accept()
        with conn:
            conn.settimeout(5.0)
            try:
                socket.send_fds(conn, [label], [tcp.fileno()])
            except OSError as exc:  # the asker went away: nothing to do
                print(f"address holder: could not hand the socket over ({exc})", file=sys.stderr, flush=True)


class AddressError(RuntimeError):
    """The deployment's listening socket could not be fetched from its holder."""


def receive(name: str, host: str, port: int, *, timeout: float = 10.0) -> int:
    """The listening socket's descriptor from the holder answering on ``name`` (a path, relative to the
    current folder), checked to listen on ``host:port``. Raises AddressError saying what to do."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(name)
            _msg, fds, _flags, _addr = socket.recv_fds(s, 256, 1)
    except OSError as exc:
        raise AddressError(
            f"the address holder for {host}:{port} does not answer on {os.path.abspath(name)} ({exc}); it is "
            "started by the deploy: deploy again (e.g. `freestack serve deploy PIPELINE`)"
        ) from None
    if not fds:
        raise AddressError(f"the address holder on {os.path.abspath(name)} sent no socket; deploy again")
    fd = fds[0]
    with socket.socket(fileno=os.dup(fd)) as probe:
        got = probe.getsockname()[:2]
    if (got[0], got[1]) != (host, int(port)):
        os.close(fd)
        raise AddressError(
            f"the address holder on {name} holds {got[0]}:{got[1]}, not {host}:{port}; "
            "stop the deployment and deploy again"
        )
    return fd


__all__ = ["BACKLOG", "HOLDER", "TAKEN", "AddressError", "hold", "receive", "socket_name"]
