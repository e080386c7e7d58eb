"""gunicorn's worker for the model server (``worker_class: freestack``). Runs in the serving environment.

One thread per worker, no thread pool: the worker's event loop (epoll) holds every keep-alive
connection it accepted and, when one is readable, parses the request with gunicorn's own parser and
runs the WSGI app (Seldon's Flask app) inline, then goes back to the loop. That is gunicorn's ``sync``
worker (which closes the connection after every response) with keep-alive, or ``gthread`` with one
thread but without a hand-off to the pool thread and back for every request.

Keep-alive connections stay with the worker that accepted them, and when several workers race for a
burst of new connections one of them can win them all (with ``gthread`` one worker took all 8 of a
benchmark client's connections while the other idled). So the workers share a small table
(:class:`SharedTable`: pid, open connections, heartbeat per slot) made in the arbiter before the fork,
and a worker only listens for new connections while it holds no more connections than any live
sibling. A sibling whose heartbeat is older than 2 s (booting, stuck in a long request, dead and not
yet reaped) does not hold the others back; the arbiter's ``child_exit`` hook frees a dead worker's
slot. The response's status line, headers and body go out in one ``sendall``.

The deployment's stable address (:mod:`freestack.serving.server.address`) is a listening socket the
worker holds from the start but accepts on only once the deploy opened the server's gate (the gate
file exists; checked every TICK): then it writes its pid into that file, which is how the deploy
knows the new server takes connections before it stops the old one.

Stopping (SIGTERM from the arbiter, ``max_requests``, the arbiter gone), the worker *drains*: it
accepts nothing more (connections waiting in the socket's queue go to the other server holding it)
and answers every request its connections hold or send before their keep-alive time is up, each
answer with ``Connection: close``; it exits when no connection is left or the graceful timeout is
near. A keep-alive client is answered and reconnects, to the other server; an idle connection is
closed when its keep-alive time is up, as it would be without the switch, so a client sees nothing
it would not see on any other day (a request sent just as its connection's keep-alive time runs out
races the close, as with any keep-alive server).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import selectors
import socket
import time
from datetime import datetime
from multiprocessing import Lock, RawArray

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers import base

STALE_AFTER = 2.0  # seconds without a heartbeat before a sibling stops counting
TICK = 0.25  # seconds between heartbeats, keep-alive expiry, parent and gate checks
RECV_BYTES, HEAD_LIMIT, SMALL_BODY = 32 * 1024, 64 * 1024, 1024 * 1024
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked", re.IGNORECASE)


class SharedTable:
    """The workers' shared table (made in the arbiter, before the fork): per slot a worker's pid, its
    open connections and its last heartbeat."""

    def __init__(self, slots: int):
        self.slots = slots
        self.pids = RawArray(ctypes.c_int, slots)
        self.conns = RawArray(ctypes.c_int, slots)
        self.beats = RawArray(ctypes.c_double, slots)
        self.lock = Lock()

    def claim(self, pid: int, age: int) -> int:
        """A slot for worker ``pid``: a free one, else the stalest, else by the worker's age."""
        now = time.monotonic()
        got = self.lock.acquire(timeout=2.0)
        try:
            free = [i for i in range(self.slots) if self.pids[i] in (0, pid)]
            free += [i for i in range(self.slots) if now - self.beats[i] > 10 * STALE_AFTER]
            slot = free[0] if free else age % self.slots
            self.pids[slot], self.conns[slot], self.beats[slot] = pid, 0, now
            return slot
        finally:
            if got:
                self.lock.release()

    def may_accept(self, slot: int, mine: int, now: float) -> bool:
        """No live sibling holds fewer connections than ``mine``."""
        for i in range(self.slots):
            if i != slot and self.pids[i] and self.conns[i] < mine and now - self.beats[i] < STALE_AFTER:
                return False
        return True

    def release(self, slot: int, pid: int) -> None:
        if self.pids[slot] == pid:
            self.pids[slot], self.conns[slot] = 0, 0

    def free(self, pid: int) -> None:
        """In the arbiter, when it reaps a worker (it may have been killed): free the worker's slot."""
        for i in range(self.slots):
            self.release(i, pid)


class _Conn:
    __slots__ = ("sock", "addr", "server", "parser", "idle_until")

    def __init__(self, sock, addr, server):
        self.sock, self.addr, self.server = sock, addr, server
        self.parser = None
        self.idle_until = 0.0


class _Buffered:
    """Collects what gunicorn's Response writes (headers, then body) for a single sendall."""

    __slots__ = ("parts",)

    def __init__(self):
        self.parts: list[bytes] = []

    def sendall(self, data) -> None:
        self.parts.append(bytes(data))


def _http_date_cached(http_date):
    memo = [-1, ""]

    def cached(timestamp=None):
        if timestamp is not None:
            return http_date(timestamp)
        now = int(time.time())
        if now != memo[0]:
            memo[0], memo[1] = now, http_date(now)
        return memo[1]

    return cached


class _Settings:
    """gunicorn's settings as plain attributes, for the parser and the WSGI environ of every request (a
    Config attribute is a ``__getattr__`` and a settings lookup each time); Config's computed
    properties (``is_ssl``, ``sendfile``, ...) and anything else fall through to it."""

    def __init__(self, cfg):
        self._cfg = cfg
        computed = {k for k, v in vars(type(cfg)).items() if isinstance(v, property)}
        for name, setting in cfg.settings.items():
            if name not in computed:
                setattr(self, name, setting.get())
        self.is_ssl = cfg.is_ssl
        self.sendfile = cfg.sendfile

    def __getattr__(self, name):
        return getattr(self._cfg, name)


def whole_request(buf) -> bool:
    """Whether the bytes buffered for a connection hold a whole request (headers and a body of
    Content-Length bytes), so gunicorn's parser reads it without waiting on the socket. A body above
    SMALL_BODY, a chunked one, or headers longer than HEAD_LIMIT go to the parser as soon as the
    headers are in: it reads the rest from the socket (each read bounded by io_timeout)."""
    data = buf.getvalue()
    if not data:
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > HEAD_LIMIT  # gunicorn's own limits answer it
    head = data[: end + 2]
    if _CHUNKED.search(head):
        return True
    length = _LENGTH.search(head)
    if length is None:
        return True
    body = int(length.group(1))
    return body > SMALL_BODY or len(data) >= end + 4 + body


def _body_consumed(req) -> bool:
    reader = getattr(req.body, "reader", None)
    if isinstance(reader, LengthReader):
        return reader.length == 0
    return isinstance(reader, ChunkedReader) and reader.parser is None


class FreestackWorker(base.Worker):
    """The keep-alive worker; ``table`` is set in the arbiter by :func:`install` before the fork."""

    table: SharedTable | None = None
    gate: tuple[str, int] | None = None  # (gate file, port of the deployment's address), from install

    @classmethod
    def check_config(cls, cfg, log):
        if cfg.is_ssl:
            raise RuntimeError("the freestack worker does not terminate TLS: use worker_class gthread")
        if cfg.threads > 1:
            log.warning("the freestack worker runs one thread per worker; threads=%d is ignored", cfg.threads)

    def init_process(self):
        # the Date header is formatted once a second instead of once a response (same text)
        util.http_date = _http_date_cached(util.http_date)
        cfg = self.cfg
        # what gunicorn's Logger.access checks before it logs anything
        self.access_log = bool(cfg.accesslog or cfg.logconfig or getattr(cfg, "logconfig_dict", None)
                               or (cfg.syslog and not cfg.disable_redirect_access_to_syslog))  # fmt: skip
        super().init_process()

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self):
        self.settings = _Settings(self.cfg)
        self.worker_connections = self.cfg.worker_connections
        self.conns: dict[socket.socket, _Conn] = {}
        self.io_timeout = max(1.0, (self.cfg.timeout or 30) / 2)
        self.slot = self.table.claim(self.pid, self.age)
        self.poller = selectors.DefaultSelector()
        self.listeners, self.held = [], []  # held: the deployment's address, until the gate opens
        for sock in self.sockets:
            sock.setblocking(False)
            name = sock.getsockname()
            shared = self.gate is not None and name[1] == self.gate[1]
            (self.held if shared else self.listeners).append((sock, name))
        self.accepting = False
        try:
            self._loop()
            self._drain()
        finally:
            for conn in list(self.conns.values()):
                self._close(conn)
            self.table.release(self.slot, self.pid)
            self.poller.close()

    def _loop(self) -> None:
        next_tick = 0.0
        while self.alive:
            now = time.monotonic()
            if now >= next_tick:
                if not self._tick(now):
                    break
                next_tick = now + TICK
            self._listen(self._may_accept(now))
            for key, _ in self.poller.select(max(0.0, next_tick - now)):
                if isinstance(key.data, _Conn):
                    self._serve(key.data)
                else:
                    self._accept(key.fileobj, key.data)

    def _tick(self, now: float) -> bool:
        """Heartbeat, keep-alive expiry and the parent check; False when the arbiter is gone."""
        self.notify()
        self.table.beats[self.slot] = now
        if self.ppid != os.getppid():
            self.log.info("Parent changed, shutting down: %s", self)
            return False
        self._expire(now)
        if self.held and os.path.exists(self.gate[0]):
            self._join()
        return True

    def _join(self) -> None:
        """The gate is open: accept on the deployment's address too, and say so in the gate file."""
        joined, self.held = self.held, []
        self.listeners.extend(joined)
        if self.accepting:
            for sock, server in joined:
                self.poller.register(sock, selectors.EVENT_READ, server)
        with open(self.gate[0], "a") as f:
            f.write(f"{self.pid}\n")
        self.log.info("Worker %s accepts on the deployment's address %s", self.pid, joined[0][1])

    def _drain(self) -> None:
        """Stopping: accept nothing more; answer what the connections hold or send before their keep-alive
        time is up (``Connection: close``, as ``self.alive`` is false), until none is left or the
        graceful timeout is near."""
        self.alive = False
        self._listen(False)
        now = time.monotonic()
        deadline = now + max(1.0, self.cfg.graceful_timeout - 1.0)
        while self.conns and now < deadline:
            self.notify()
            self._expire(now)
            for key, _ in self.poller.select(TICK):
                self._serve(key.data)
            now = time.monotonic()

    def _may_accept(self, now: float) -> bool:
        mine = len(self.conns)
        return mine < self.worker_connections and self.table.may_accept(self.slot, mine, now)

    def _listen(self, want: bool) -> None:
        if want == self.accepting:
            return
        for sock, server in self.listeners:
            if want:
                self.poller.register(sock, selectors.EVENT_READ, server)
            else:
                self.poller.unregister(sock)
        self.accepting = want

    def _accept(self, listener, server) -> None:
        try:
            sock, addr = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        util.close_on_exec(sock)
        sock.settimeout(self.io_timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, addr, server)
        conn.idle_until = time.monotonic() + max(self.cfg.keepalive, 1)
        self.conns[sock] = conn
        self.table.conns[self.slot] = len(self.conns)
        self.poller.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: _Conn) -> None:
        if self.conns.pop(conn.sock, None) is not None:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            self.table.conns[self.slot] = len(self.conns)
        util.close(conn.sock)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self.conns.values() if c.idle_until < now]:
            self._close(conn)

    # -- one readable connection ---------------------------------------------------------------------------
    def _serve(self, conn: _Conn) -> None:
        if conn.parser is None:
            conn.parser = http.RequestParser(self.settings, conn.sock, conn.addr)
        unreader = conn.parser.unreader
        waiting = unreader.buf.seek(0, os.SEEK_END)  # bytes of an incomplete request already here
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # the client closed the connection
            self._close(conn)
            return
        unreader.unread(data)
        if not whole_request(unreader.buf):
            # the rest of the request is on its way: serve the other connections meanwhile, and give
            # this one io_timeout from its first byte (a trickle does not extend it)
            if not waiting:
                conn.idle_until = time.monotonic() + self.io_timeout
            return
        # a response that went out without ``Connection: close`` keeps its connection, even if the worker
        # began stopping meanwhile: the client may send on it at once, and the drain answers that
        keepalive = self._requests(conn)
        if keepalive:
            partial = unreader.buf.seek(0, os.SEEK_END)
            conn.idle_until = time.monotonic() + (self.io_timeout if partial else self.cfg.keepalive)
        else:
            self._close(conn)

    def _requests(self, conn: _Conn) -> bool:
        """Handle the whole requests buffered for ``conn`` (pipelined ones too); whether to keep it."""
        keepalive, req = False, None
        try:
            while True:
                req = next(conn.parser)
                if not req:
                    break
                keepalive = self._handle_request(req, conn)
                # a pipelined request read along with this one: epoll will not announce it (stopping,
                # it is answered too, with ``Connection: close``)
                if not keepalive or not whole_request(conn.parser.unreader.buf):
                    break
        except http.errors.NoMoreData as exc:
            self.log.debug("Ignored premature client disconnection. %s", exc)
            keepalive = False
        except StopIteration as exc:
            self.log.debug("Closing connection. %s", exc)
            keepalive = False
        except OSError as exc:
            keepalive = False
            if isinstance(exc, socket.timeout):
                self.log.debug("Closing a connection that stalled mid-request")
            elif exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as exc:
            keepalive = False
            self.handle_error(req, conn.sock, conn.addr, exc)
        return keepalive

    def _handle_request(self, req, conn: _Conn) -> bool:
        environ: dict = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now() if self.access_log else None
            resp, environ = wsgi.create(req, conn.sock, conn.addr, conn.server, self.settings)
            environ["wsgi.multithread"] = False
            self._count_request(resp)
            respiter = self.wsgi(environ, resp.start_response)
            if not _body_consumed(req):
                # answered before reading the whole body (a 413): the rest may never come, and waiting
                # for it would hold up every other connection of this worker
                resp.force_close()
            try:
                self._respond(resp, respiter, environ, conn)
                if request_start is not None:
                    self.log.access(resp, req, environ, datetime.now() - request_start)
            finally:
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                return False
        except OSError:
            raise
        except Exception:
            if resp and resp.headers_sent:
                # the status line is out: closing the connection is the only way to tell the client
                self.log.exception("Error handling request")
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        return True

    def _count_request(self, resp) -> None:
        """gunicorn's max_requests restart, and closing when the worker stops or keep-alive is off."""
        self.nr += 1
        if self.nr >= self.max_requests:
            if self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            resp.force_close()
        if not self.alive or not self.cfg.keepalive:
            resp.force_close()

    @staticmethod
    def _respond(resp, respiter, environ, conn: _Conn) -> None:
        """Write the response: a file by gunicorn's sendfile path, anything else in one ``sendall``."""
        if isinstance(respiter, environ["wsgi.file_wrapper"]):
            resp.write_file(respiter)
            return
        buffered = _Buffered()
        resp.sock = buffered
        try:
            for item in respiter:
                resp.write(item)
            resp.close()
        finally:
            resp.sock = conn.sock
            if buffered.parts:
                conn.sock.sendall(b"".join(buffered.parts))


def install(slots: int, gate: tuple[str, int] | None = None):
    """In the arbiter, before the fork: give the worker class its shared table and, for a server behind
    a deployment's address, its gate (the gate file and the address's port). Returns gunicorn's
    ``worker_class`` (an import path) and its ``child_exit`` hook."""
    table = SharedTable(slots)
    FreestackWorker.table = table
    FreestackWorker.gate = gate

    def child_exit(server, worker) -> None:
        table.free(worker.pid)

    return f"{__name__}.FreestackWorker", child_exit


__all__ = ["FreestackWorker", "SharedTable", "install", "whole_request"]
