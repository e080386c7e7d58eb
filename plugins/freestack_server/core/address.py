"""A deployment's stable address: one listening socket, opened once and handed to every model server
that serves the deployment. Standard library only; runs in the serving environment.

``python -m freestack_server hold HOME HOST PORT`` is the *address holder*: it listens on
``HOST:PORT`` (the spec's ``deploy.local.port``) for the deployment's whole life, and in its folder
``HOME`` it answers on the Unix socket ``address-PORT.sock``: each connection gets the listening
socket's file descriptor (``SCM_RIGHTS``, :func:`socket.send_fds`; Linux and macOS) and is closed.
The holder itself accepts a connection on ``HOST:PORT`` only when no server holds the socket (below).

A model server's supervisor fetches that descriptor once (:func:`receive`) and passes it to its
gunicorn, which accepts on it like on a socket it had bound itself (``bind = fd://N``): the kernel
hands each connection straight to a gunicorn worker, with no proxy in between. Two servers holding
the same socket both accept from its one queue, which is what makes the blue/green switch seamless:
a connection that waits in the queue when the old server stops is accepted by the new one, never
reset. The socket stays open as long as any process holds it, so a server keeps serving if the
holder dies; the holder only has to be there when a server starts.

A process that fetched the socket keeps its Unix connection to the holder open as long as it lives (its
*lease*; :class:`Handed`): while no process holds a lease, no server accepts on the address, and the holder
accepts each connection itself and answers it ``503`` with ``Retry-After`` (:data:`RETRY_AFTER_S`), saying
that no server serves there now, instead of leaving the client to wait for its own timeout. That is the
case after the deployment's supervisor stopped, was killed or gave up restarting its server. While a
supervisor restarts its server, it keeps its lease: connections wait in the queue for the new server, as
they do while a deploy switches servers.

The Unix socket is created with mode 0600 (only the deployment's user may ask for the descriptor)
and named relative to ``HOME``: holder and servers run there, which keeps the name within the Unix
socket path limit (104 bytes on macOS) however deep the serving folder is.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import sys
from typing import NamedTuple

#: what every holder's command line holds (``python -m freestack_server hold HOME HOST PORT``)
HOLDER = "freestack_server hold"
BACKLOG = 2048  # gunicorn's default; each server's gunicorn sets its own ``backlog`` on the shared socket
TAKEN = 2  # the holder's exit code when HOST:PORT cannot be bound
RETRY_AFTER_S = 5  # what a 503 of the holder's (no server holds the socket) says to wait


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
    """Hand the socket to each asker and keep its connection (its lease) until it closes; while no lease is
    held, answer each connection on the address 503 (:func:`_no_server`)."""
    tcp.setblocking(False)  # servers set it so too: a connection one of them took first is no wait here
    sel = selectors.DefaultSelector()
    sel.register(unix, selectors.EVENT_READ, "ask")
    leases: set[socket.socket] = set()
    while True:
        watching = tcp.fileno() in {k.fd for k in sel.get_map().values()}
        if not leases and not watching:
            sel.register(tcp, selectors.EVENT_READ, "client")
        elif leases and watching:
            sel.unregister(tcp)
        for key, _ in sel.select():
            if key.data == "ask":
                lease = _hand_over(unix, tcp, label)
                if lease is not None:
                    leases.add(lease)
                    sel.register(lease, selectors.EVENT_READ, "lease")
            elif key.data == "lease":  # the holder of the lease closed it, or died: it sends nothing else
                sel.unregister(key.fileobj)
                leases.discard(key.fileobj)
                key.fileobj.close()
            elif not leases:
                _no_server(tcp, label.decode())


def _hand_over(unix: socket.socket, tcp: socket.socket, label: bytes) -> socket.socket | None:
    conn, _ = unix.accept()
    conn.settimeout(5.0)
    try:
        socket.send_fds(conn, [label], [tcp.fileno()])
    except OSError as exc:  # the asker went away: nothing to do
        print(f"address holder: could not hand the socket over ({exc})", file=sys.stderr, flush=True)
        conn.close()
        return None
    return conn


def _no_server(tcp: socket.socket, where: str) -> None:
    """Accept one connection and answer it 503 (no server holds the socket), in the OpenAI API's error
    format on ``/v1/...`` and as ``{"error": ...}`` elsewhere."""
    try:
        conn, _ = tcp.accept()
    except OSError:  # taken by a server after all, or gone
        return
    with conn:
        conn.settimeout(0.5)
        with contextlib.suppress(OSError):
            head = conn.recv(65536)
            path = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[1]
            conn.sendall(_unavailable(where, path.startswith(b"/v1/")))
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):  # read what the client still sends: a close with unread data resets
                pass


def _unavailable(where: str, openai: bool) -> bytes:
    message = (
        f"no model server serves {where} now: the deployment's server was stopped or gave up restarting "
        f"(`freestack serve status` says which, `freestack serve logs` why); retry in {RETRY_AFTER_S} s, or "
        "deploy it again"
    )
    error = {"message": message, "type": "server_error", "param": None, "code": None} if openai else message
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        f"\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class AddressError(RuntimeError):
    """The deployment's listening socket could not be fetched from its holder."""


class Handed(NamedTuple):
    """The deployment's listening socket (``fd``) and the lease on it (``lease``, the Unix connection to the
    holder): keep the lease open as long as a server may accept on the socket; once every lease is closed,
    the holder answers the address's connections 503 itself."""

    fd: int
    lease: socket.socket


def receive(name: str, host: str, port: int, *, timeout: float = 10.0) -> Handed:
    """The listening socket's descriptor from the holder answering on ``name`` (a path, relative to the
    current folder), checked to listen on ``host:port``, and its lease. Raises AddressError saying what to do."""
    lease = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lease.settimeout(timeout)
        lease.connect(name)
        _msg, fds, _flags, _addr = socket.recv_fds(lease, 256, 1)
    except OSError as exc:
        lease.close()
        raise AddressError(
            f"the address holder for {host}:{port} does not answer on {os.path.abspath(name)} ({exc}); it is "
            "started by the deploy: deploy again (e.g. `freestack serve deploy PIPELINE`)"
        ) from None
    if not fds:
        lease.close()
        raise AddressError(f"the address holder on {os.path.abspath(name)} sent no socket; deploy again")
    fd = fds[0]
    with socket.socket(fileno=os.dup(fd)) as probe:
        got = probe.getsockname()[:2]
    if (got[0], got[1]) != (host, int(port)):
        os.close(fd)
        lease.close()
        raise AddressError(
            f"the address holder on {name} holds {got[0]}:{got[1]}, not {host}:{port}; "
            "stop the deployment and deploy again"
        )
    return Handed(fd, lease)


__all__ = [
    "BACKLOG",
    "HOLDER",
    "RETRY_AFTER_S",
    "TAKEN",
    "AddressError",
    "Handed",
    "hold",
    "receive",
    "socket_name",
]
