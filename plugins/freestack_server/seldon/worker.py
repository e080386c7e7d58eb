"""gunicorn's worker for the model server (``worker_class: freestack``). Runs in the serving environment.

One thread per worker, no thread pool: the worker's event loop (epoll) holds every keep-alive
connection it accepted and reads what each sends without blocking; once a request is whole (its
headers and all of its body, found by :func:`freestack_server.seldon.framing.request_end`), it parses
it with gunicorn's own parser from memory and runs the WSGI app (Seldon's Flask app) inline, then goes
back to the loop. That is gunicorn's ``sync`` worker (which closes the connection after every
response) with keep-alive, or ``gthread`` with one thread but without a hand-off to the pool thread
and back for every request.

So a slow client holds up no one: a request is answered 408 (and its connection closed) when it is
not whole ``timeout`` / 2 after its first byte, plus a second for every MIN_RATE bytes it sent (a
client that keeps sending at that rate is never cut off, up to ``max_body_bytes``). A request that
cannot be served is answered as soon as that is known, before its body is read: framing a server must
not guess at, an invalid chunk, a body over ``max_body_bytes`` (413), headers over 64 KiB (431). What
gunicorn's parser refuses (a bad request line, bad headers) is answered in JSON too (:class:`JsonErrors`);
bytes that cannot start an HTTP/1.x request line at all (TLS, HTTP/2, binary) get a 400 as they arrive.

Idle and partial connections are bounded too, so that clients that open connections and send nothing
whole cannot crowd good ones out (docs/benchmarks.md has the figures): a worker
holds at most ``max_idle`` connections without a whole request head (``waiting``: idle keep-alive ones
and those with part of a head in, oldest first); accepting one more lets the oldest go (a 408 if part of
a head is in, else a plain close, as at the end of its keep-alive time), and while over half of
``max_idle`` are held a head must be in within CROWDED_HEAD_S of its first byte. The worker's own
connections stay below ``worker_connections``, so it keeps accepting: a good request waits only for
the connections queued before it.

Why the worker finds where a request ends itself (:func:`freestack_server.seldon.framing.request_end`)
rather than leaving it to gunicorn: gunicorn's parser reads from a blocking socket, so it cannot tell an
event loop whether a request is whole; and the gunicorn that seldon-core 1.17.1 pins (``<20.2``, frozen
with the last Apache-2.0 release) frames bodies laxly: with both ``Content-Length`` and
``Transfer-Encoding`` it reads the body as chunked, and it takes a ``Transfer-Encoding`` it does not
know as none (the request smuggling that gunicorn 22 refuses). gunicorn's limits still apply: its
parser reads every whole request (``limit_request_line``, ``limit_request_fields``,
``limit_request_field_size``, answered 414/431 in JSON), and the read deadline is its ``timeout`` / 2.

gunicorn's own ``sync`` and ``gthread`` workers are used as :class:`SyncWorker` and
:class:`ThreadWorker`: the same refusals in JSON, and the whole body read (under a read deadline of
``timeout`` / 2) before the app runs; they read in the worker or thread that serves the request, so
a slow client holds that one until the deadline.

Keep-alive connections stay with the worker that accepted them, and when several workers race for a
burst of new connections one of them can win them all (with ``gthread`` one worker took all 8 of a
benchmark client's connections while the other idled). So the workers share a small table
(:class:`SharedTable`: pid, open connections, heartbeat per slot) made in the arbiter before the fork,
and a worker only listens for new connections while it holds no more connections than any live
sibling. A sibling whose heartbeat is older than 2 s (booting, stuck in a long request, dead and not
yet reaped) does not hold the others back; the arbiter's ``child_exit`` hook frees a dead worker's
slot. A worker held back while connections wait in the accept queue looks again every HELD_POLL (a
sibling's accept does not wake it, and taking turns a TICK apart drains a queue far too slowly), and with
over FLOOD_QUEUE queued every worker accepts, whatever its siblings hold. The response's status line,
headers and body go out in one ``sendall``.

A plain prediction request is answered by *direct prediction* (:mod:`freestack_server.seldon.direct_predict`,
set by :func:`install`; not with an access log, which needs the WSGI environ): the worker hands
gunicorn's parsed request to ``DirectPredict``, which answers it through Seldon's own ``predict``
without building the WSGI environ or running Flask; every other request, and one it passes on, goes to
the app.

The deployment's stable address (:mod:`freestack_server.core.address`) is a listening socket the
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
import functools
import io
import os
import selectors
import socket
import struct
import time
from datetime import datetime
from multiprocessing import Lock, RawArray
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http.body import ChunkedReader
from gunicorn.http.errors import NoMoreData
from gunicorn.workers import base, gthread, sync

from freestack_server.seldon.framing import (
    Frame,
    Refused,
    RequestTimeout,
    chunks_end,
    decode_chunked,
    framing,
    request_end,
)
from freestack_server.seldon.request_checks import JsonErrors, error_response

STALE_AFTER = 2.0  # seconds without a heartbeat before a sibling stops counting
TICK = 0.25  # seconds between heartbeats, keep-alive expiry, parent and gate checks
RECV_BYTES = 64 * 1024
MIN_RATE = 64 * 1024  # bytes/s a request must keep coming at once its first io_timeout is spent
LINGER = 2.0  # seconds a refused request's connection is read (and dropped) before it is closed
MAX_BODY = 32 * 1024 * 1024  # the max_body_bytes setting's default, until install() sets it
MAX_IDLE = 256  # connections without a whole request head a worker holds (deploy.local.max_idle_connections)
CROWDED_HEAD_S = 2.0  # seconds a request head may take from its first byte while a worker is crowded
FLOOD_QUEUE = 64  # connections in the accept queue above which a worker accepts whatever its siblings hold
HELD_POLL = 0.005  # seconds between looks at the accept queue while held back with connections queued
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
SHED_INFO = (
    "the server holds too many connections that have not sent a whole request head, and this was the "
    "oldest: send each request at once"
)


class LoadBeats:
    """Mixed into every worker class: while the worker boots (Seldon's ``load``: the model fetched and
    loaded, a forward pass run; then ``post_worker_init``), a thread tells the arbiter it is alive, so
    gunicorn's ``timeout`` bounds a request, not the load (a transformers model may take minutes to load
    on a busy machine). How long a load may take is the deploy's ``start_timeout_seconds``."""

    def load_wsgi(self):
        import threading

        failed = threading.Event()
        every = max(0.1, min(self.cfg.timeout / 5, 2.0))

        def beat():  # until the worker runs its own loop, which notifies the arbiter from then on
            while not failed.wait(every):
                self.notify()
                if self.booted:
                    return

        threading.Thread(target=beat, name="boot-heartbeat", daemon=True).start()
        try:
            return super().load_wsgi()
        except BaseException:
            failed.set()
            raise


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
        return not any(
            i != slot and self.pids[i] and self.conns[i] < mine and now - self.beats[i] < STALE_AFTER
            for i in range(self.slots)
        )

    def release(self, slot: int, pid: int) -> None:
        if self.pids[slot] == pid:
            self.pids[slot], self.conns[slot] = 0, 0

    def free(self, pid: int) -> None:
        """In the arbiter, when it reaps a worker (it may have been killed): free the worker's slot."""
        for i in range(self.slots):
            self.release(i, pid)


class _Conn:
    """One connection: ``pending`` holds what it sent of a request not yet whole (from ``started``),
    ``frame`` how far that request is known; ``closing``: refused, read and dropped until closed."""

    __slots__ = ("sock", "addr", "server", "parser", "idle_until", "pending", "frame", "started", "closing")

    def __init__(self, sock, addr, server):
        self.sock, self.addr, self.server = sock, addr, server
        self.parser = None
        self.idle_until = self.started = 0.0
        self.pending = bytearray()
        self.frame: Frame | None = None
        self.closing = False


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


class FreestackWorker(LoadBeats, JsonErrors, base.Worker):
    """The keep-alive worker; ``table`` is set in the arbiter by :func:`install` before the fork."""

    table: SharedTable | None = None
    gate: tuple[str, int] | None = None  # (gate file, port of the deployment's address), from install
    max_body = MAX_BODY  # the max_body_bytes setting, from install
    max_idle = MAX_IDLE  # the max_idle_connections setting, from install
    #: direct prediction (freestack_server.seldon.direct_predict), from install; None: the app answers all
    direct_predict: Any = None
    batcher: Any = None  # adaptive batching (freestack_server.seldon.batching), from install; None: off

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
        self.access_log = bool(
            cfg.accesslog
            or cfg.logconfig
            or getattr(cfg, "logconfig_dict", None)
            or (cfg.syslog and not cfg.disable_redirect_access_to_syslog)
        )
        super().init_process()

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self):
        self.settings = _Settings(self.cfg)
        self.worker_connections = self.cfg.worker_connections
        self.conns: dict[socket.socket, _Conn] = {}
        # the connections without a whole request head (idle keep-alive or part of a head in), oldest first
        self.waiting: dict[_Conn, None] = {}
        # below worker_connections, so that shedding waiting connections always leaves room to accept
        self.max_waiting = max(1, min(self.max_idle, self.worker_connections - 1))
        self.full_until = 0.0  # out of file descriptors: accept nothing until then
        self.held_back = False  # a sibling holds fewer connections and some are queued: look again soon
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
            if self.batcher is not None:
                self.log.info(
                    "Worker %s: adaptive batching answered %d requests in %d shared forward passes",
                    self.pid,
                    self.batcher.batched,
                    self.batcher.rounds,
                )
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
            wait = max(0.0, next_tick - now)
            ready = self._ready(min(wait, HELD_POLL) if self.held_back else wait)
            c = self.batcher
            if (
                c is not None
                and c.gather_s
                and 0 < len(ready) < len(self.conns)
                and max(len(ready), c.last_round) > 1
            ):
                # concurrent clients on the other open connections are likely sending too
                time.sleep(c.gather_s)
                ready = self._ready(0.0)
            if c is not None and ready:
                c.last_round = len(ready)
            if c is not None and len(ready) > 1:  # their forwards as one (adaptive batching)
                c.run([functools.partial(self._serve, conn) for conn in ready])
            else:
                for conn in ready:
                    self._serve(conn)

    def _ready(self, wait: float) -> list[_Conn]:
        """The connections with a request in, after up to ``wait`` seconds (new connections accepted)."""
        ready = []
        for key, _ in self.poller.select(wait):
            if isinstance(key.data, _Conn):
                ready.append(key.data)
            else:
                self._accept(key.fileobj, key.data)
        return ready

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
        """Below worker_connections, with descriptors to spare, and no sibling holds fewer connections
        (:class:`SharedTable`), unless over FLOOD_QUEUE are queued; ``held_back``: look again in
        HELD_POLL (see the module's docstring)."""
        mine = len(self.conns)
        self.held_back = False
        if mine >= self.worker_connections or now < self.full_until:
            return False
        if self.table.may_accept(self.slot, mine, now):
            return True
        queued = self._queued()
        self.held_back = queued > 0
        return queued > FLOOD_QUEUE

    def _queued(self) -> int:
        """Connections waiting in the listeners' accept queues: a listening TCP socket's TCP_INFO
        ``tcpi_unacked`` (Linux); 0 where that is not known."""
        n = 0
        for sock, _ in self.listeners:
            try:
                n += struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32), 24)[0]
            except (OSError, AttributeError, struct.error):
                return 0
        return n

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
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # out of descriptors: free one, pause a tick
                self.log.warning(
                    "Worker %s is out of file descriptors with %d connections open (ulimit -n)",
                    self.pid,
                    len(self.conns),
                )
                self.full_until = time.monotonic() + TICK
                if self.waiting:
                    self._shed(next(iter(self.waiting)))
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
        self.waiting[conn] = None
        while len(self.waiting) > self.max_waiting:
            self._shed(next(iter(self.waiting)))

    def _close(self, conn: _Conn) -> None:
        self.waiting.pop(conn, None)
        if self.conns.pop(conn.sock, None) is not None:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            self.table.conns[self.slot] = len(self.conns)
        util.close(conn.sock)

    def _expire(self, now: float) -> None:
        """Close idle keep-alive connections and refused ones whose time is up; answer 408 to a request
        still incomplete io_timeout after its first byte, plus a second per MIN_RATE bytes it sent. While
        the worker is crowded (over half of max_waiting connections without a whole head), a head must be
        in within CROWDED_HEAD_S: a client that holds a connection by sending its head slowly gets less."""
        crowded = len(self.waiting) > self.max_waiting // 2
        head_s = min(CROWDED_HEAD_S, self.io_timeout)
        for conn in list(self.conns.values()):
            if conn.pending and not conn.closing:
                if crowded and conn in self.waiting and now > conn.started + head_s:
                    self._refuse(conn, RequestTimeout(head_s))
                elif now > conn.started + self.io_timeout + len(conn.pending) / MIN_RATE:
                    self._refuse(conn, RequestTimeout(self.io_timeout))
            elif conn.idle_until < now:
                self._close(conn)

    def _shed(self, conn: _Conn) -> None:
        """Let a waiting connection go to make room: an idle one is closed (as when its keep-alive time
        is up), one with part of a head in is answered 408 first. No LINGER here: lingering connections
        would hold the descriptors this frees, and all the client sent is read (a close with nothing
        unread is a FIN, not a reset that could lose the answer)."""
        if conn.pending:
            self.log.debug(
                "Shed a partial request from %s (%d connections waiting)", conn.addr, len(self.waiting)
            )
            try:
                conn.sock.sendall(error_response(408, "REQUEST_TIMEOUT", SHED_INFO))
                conn.sock.setblocking(False)  # with a timeout set, recv waits for data whatever its flags
                for _ in range(4):  # what came in since the last read (a client that streams on gets a reset)
                    if not conn.sock.recv(RECV_BYTES):
                        break
            except OSError:  # BlockingIOError included: nothing more to read
                pass
        self._close(conn)

    def _refuse(self, conn: _Conn, exc: Refused) -> None:
        """Answer a request the worker will not serve and close its connection. Until then (LINGER) what
        the client still sends is read and dropped: closing with unread input would reset the
        connection, and the client could lose the answer."""
        self.log.debug("Refused a request from %s: %s", conn.addr, exc.info)
        try:
            conn.sock.sendall(error_response(exc.status, exc.reason, exc.info))
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.closing, conn.pending, conn.frame = True, bytearray(), None
        conn.idle_until = time.monotonic() + LINGER
        self.waiting.pop(conn, None)

    # -- one readable connection ---------------------------------------------------------------------------
    def _serve(self, conn: _Conn) -> None:
        """:meth:`_read`, then whether ``conn`` is still waiting for a whole request head."""
        served = self.nr
        self._read(conn)
        if conn.closing or conn.sock not in self.conns:
            return
        if conn.pending and conn.frame is not None and conn.frame.head_end >= 0:
            self.waiting.pop(conn, None)  # its head is in: the read deadline bounds the rest
        elif self.nr != served or conn not in self.waiting:  # served: it waits again, as the newest
            self.waiting.pop(conn, None)
            self.waiting[conn] = None

    def _read(self, conn: _Conn) -> None:
        """Read what ``conn`` sent; serve each request once all of it is in (the app never waits on a
        client), answer at once one that cannot be served (framing, size: :func:`request_end`)."""
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
        if conn.closing:
            return
        if not conn.pending:
            conn.started = time.monotonic()
        conn.pending += data
        while conn.pending:
            frame = conn.frame = conn.frame or Frame()
            try:
                end = request_end(conn.pending, frame, self.max_body)
            except Refused as exc:
                self._refuse(conn, exc)
                return
            if end < 0:  # the rest is on its way: serve the other connections meanwhile
                if frame.expect and frame.head_end >= 0 and not frame.continued:
                    frame.continued = True
                    self._send(conn, CONTINUE)
                return
            if conn.parser is None:
                conn.parser = http.RequestParser(self.settings, conn.sock, conn.addr)
            # gunicorn's parser reads this one request from memory, never from the socket
            conn.parser.unreader.unread(bytes(conn.pending[:end]))
            del conn.pending[:end]
            conn.frame = None
            # a response that went out without ``Connection: close`` keeps its connection, even if the
            # worker began stopping meanwhile: the client may send on it at once, and the drain answers that
            if not self._requests(conn):
                self._close(conn)
                return
            conn.started = conn.idle_until = time.monotonic()
            conn.idle_until += self.cfg.keepalive

    def _send(self, conn: _Conn, data: bytes) -> None:
        try:
            conn.sock.sendall(data)
        except OSError:
            self._close(conn)

    def _requests(self, conn: _Conn) -> bool:
        """Handle the request just buffered for ``conn``; whether to keep the connection."""
        keepalive, req = False, None
        try:
            req = next(conn.parser)
            if req:
                # the parser left the body, all of it, in its buffer: hand the app a copy it can read at
                # once (gunicorn's readers copy what is left of the buffer at each 1 KiB they read)
                unreader = conn.parser.unreader
                body, unreader.buf = unreader.buf.getvalue(), io.BytesIO()
                req.body = io.BytesIO(
                    decode_chunked(body) if isinstance(req.body.reader, ChunkedReader) else body
                )
                keepalive = self._handle_request(req, conn)
        except http.errors.NoMoreData as exc:
            self.log.debug("Ignored premature client disconnection. %s", exc)
        except StopIteration as exc:
            self.log.debug("Closing connection. %s", exc)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as exc:
            self.handle_error(req, conn.sock, conn.addr, exc)
        return keepalive

    def _handle_request(self, req, conn: _Conn) -> bool:
        environ: dict = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now() if self.access_log else None
            if any(name == "EXPECT" for name, _ in req.headers):  # the body is here: no 100 Continue now
                req.headers = [h for h in req.headers if h[0] != "EXPECT"]
            if self.direct_predict is not None and request_start is None:
                resp = self._predict_directly(req, conn)
                if resp is not None:
                    return not resp.should_close()
            resp, environ = wsgi.create(req, conn.sock, conn.addr, conn.server, self.settings)
            environ["wsgi.multithread"] = False
            self._count_request(resp)
            respiter = self.wsgi(environ, resp.start_response)
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

    def _predict_directly(self, req, conn: _Conn):
        """Answer ``req`` by direct prediction, if it takes it: gunicorn's response (its status line and
        headers, keep-alive as for the app's answers), or None when the app is to answer."""
        answer = self.direct_predict.answer(req)
        if answer is None:
            return None
        status, headers, body = answer
        resp = wsgi.Response(req, conn.sock, self.settings)
        self._count_request(resp)
        resp.start_response(status, headers)
        self._respond(resp, [body], _NO_FILES, conn)
        return resp

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


_NO_FILES = {"wsgi.file_wrapper": wsgi.FileWrapper}  # what _respond needs of an environ for a direct answer


# ---------------------------------------------------------------------------------------------------------
# gunicorn's sync and gthread workers, with the same refusals


class _Deadline:
    """A connection's socket whose reads fail with :class:`RequestTimeout` once ``seconds`` have passed
    since it was wrapped; everything else goes to the socket."""

    __slots__ = ("sock", "seconds", "deadline")

    def __init__(self, sock, seconds: float):
        self.sock, self.seconds = sock, seconds
        self.deadline = time.monotonic() + seconds

    def recv(self, size: int, *flags):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout(self.seconds)
        self.sock.settimeout(left)
        try:
            return self.sock.recv(size, *flags)
        except TimeoutError:
            raise RequestTimeout(self.seconds) from None
        finally:
            self.sock.settimeout(None)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def buffer_body(req, sock, max_body: int) -> None:
    """Read ``req``'s whole body before the app runs (bounded by ``max_body`` and, through the socket,
    by the read deadline) and give the request that copy: a refusal is answered by the worker, never
    half-way through the app. A chunked body is checked as the freestack worker checks it
    (:func:`chunks_end`: strict chunk sizes). ``Expect: 100-continue`` is answered here."""
    kind, length = framing(req.headers, max_body)
    if kind == "none":
        return
    if any(name == "EXPECT" and value.lower() == "100-continue" for name, value in req.headers):
        sock.sendall(CONTINUE)
        req.headers = [h for h in req.headers if h[0] != "EXPECT"]
    raw, frame = bytearray(), Frame()
    frame.head_end = 0
    while (end := length if kind == "length" else chunks_end(raw, frame, max_body)) < 0 or len(raw) < end:
        more = req.unreader.read()  # what the parser buffered, else one read of the socket
        if not more:
            raise NoMoreData(bytes(raw[-20:]))
        raw += more
    req.unreader.unread(bytes(raw[end:]))  # the start of a pipelined request
    body = bytes(raw[:end])
    req.body = io.BytesIO(decode_chunked(body) if kind == "chunked" else body)


class SyncWorker(LoadBeats, JsonErrors, sync.SyncWorker):
    """gunicorn's ``sync`` worker (``worker_class: sync``): a request that takes longer than the read
    deadline (``timeout`` / 2) to arrive gets a 408, and what the worker refuses is a JSON answer."""

    max_body = MAX_BODY

    def handle(self, listener, client, addr):
        if self.cfg.is_ssl:
            return super().handle(listener, client, addr)
        return super().handle(listener, _Deadline(client, max(1.0, self.cfg.timeout / 2)), addr)

    def handle_request(self, listener, req, client, addr):
        buffer_body(req, client, self.max_body)
        return super().handle_request(listener, req, client, addr)


class ThreadWorker(LoadBeats, JsonErrors, gthread.ThreadWorker):
    """gunicorn's ``gthread`` worker (``worker_class: gthread``), with the read deadline of
    :class:`SyncWorker` on every request of a keep-alive connection."""

    max_body = MAX_BODY

    def handle(self, conn):
        unreader = conn.parser.unreader
        raw = unreader.sock
        unreader.sock = _Deadline(raw, max(1.0, self.cfg.timeout / 2))
        try:
            return super().handle(conn)
        finally:
            unreader.sock = raw

    def handle_request(self, req, conn):
        buffer_body(req, conn.sock, self.max_body)
        return super().handle_request(req, conn)


CLASSES = {"sync": SyncWorker, "gthread": ThreadWorker}


def install(
    slots: int,
    gate: tuple[str, int] | None = None,
    *,
    max_body: int = MAX_BODY,
    direct_predict: Any = None,
    batcher: Any = None,
    max_idle: int = MAX_IDLE,
):
    """In the arbiter, before the fork: give the worker class its shared table, the body limit, the
    direct prediction and adaptive batching (None: off), the most connections without a whole request head
    a worker holds and, for a server behind a deployment's address, its gate (the gate file and the
    address's port). Returns gunicorn's ``worker_class`` (an import path) and its ``child_exit`` hook."""
    table = SharedTable(slots)
    FreestackWorker.table = table
    FreestackWorker.gate = gate
    FreestackWorker.max_body = max_body
    FreestackWorker.max_idle = max_idle
    FreestackWorker.direct_predict = direct_predict
    FreestackWorker.batcher = batcher

    def child_exit(server, worker) -> None:
        table.free(worker.pid)

    return f"{__name__}.FreestackWorker", child_exit


def gunicorn_class(name: str, *, max_body: int = MAX_BODY) -> str:
    """gunicorn's ``worker_class`` for its own ``sync`` or ``gthread`` worker: ours, which differ only in
    what they refuse and how (an import path; ``max_body`` set before the fork)."""
    cls = CLASSES[name]
    cls.max_body = max_body
    return f"{__name__}.{cls.__name__}"


__all__ = [
    "CLASSES",
    "FreestackWorker",
    "LoadBeats",
    "SharedTable",
    "SyncWorker",
    "ThreadWorker",
    "buffer_body",
    "gunicorn_class",
    "install",
]
