"""The local Seldon server: seldon-core 1.17.1's own REST app and gunicorn application, bound to the
address we choose, under a small supervisor. Runs in the serving environment (``.venv-serving``).

``python -m freestack.serving.server supervise CONFIG.json`` starts the supervisor, which runs
``... run CONFIG.json`` as its child and restarts it when it dies unexpectedly (a worker that fails to
boot, exit code 3, is not restarted: that is a broken model, and the deploy task reports it).

``run`` is what ``seldon-core-microservice Model --service-type MODEL`` does, with these changes:

- every listener binds ``host`` (127.0.0.1 locally) instead of 0.0.0.0, the REST port and the
  metrics port are ours, and no gRPC server is started (``grpc_port`` enables one, on ``host`` too);
- gunicorn's workers, threads, worker class and timeout come from the pipeline spec; besides
  gunicorn's own classes, ``worker_class: freestack`` is a keep-alive worker with one thread and no
  thread pool whose workers share new connections evenly (:func:`freestack_worker_class`);
- Seldon's custom metrics are buffered per worker and published to the shared store once a second
  (:class:`BufferedSeldonMetrics`). Stock ``SeldonMetrics.update`` takes a ``multiprocessing.Manager``
  lock and round-trips the worker's whole metrics dict to the manager process twice per request, and
  all workers queue on that one process: it was the largest single cost of a prediction. A timer's
  bucket is found by bisection instead of ``np.histogram`` (about 15% of the app's CPU per request);
- each worker freezes the objects it holds after loading the model (``gc.freeze``; config
  ``gc_freeze: false`` turns it off): a full garbage collection no longer walks torch and Flask
  (a 130-170 ms stall of the worker each time);
- flask_cors's after-request hook answers the common case (no ``Origin`` header, not a preflight)
  directly, with the same header (:func:`lighter_cors`), and three Flask/werkzeug per-request costs
  are remembered or skipped (:func:`lighter_flask`), and Flask's JSON provider is backed by orjson
  with Flask's own as the fallback (:func:`faster_json`); config ``lighter_app: false`` turns them off.

The request/response protocol, the wrapper, the error format and the Model class are Seldon's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

log = logging.getLogger("freestack.serving")

BOOT_ERROR = 3  # gunicorn's exit code when a worker cannot boot (the model failed to load)


def _labels_env(cfg: dict[str, Any]) -> None:
    """Seldon reads its metric labels from these variables at import time."""
    os.environ.setdefault("SELDON_DEPLOYMENT_ID", cfg.get("name") or "freestack")
    os.environ.setdefault("PREDICTIVE_UNIT_ID", cfg.get("model") or "model")
    os.environ.setdefault("PREDICTIVE_UNIT_IMAGE", f"freestack/{cfg.get('model') or 'model'}:{cfg.get('version') or 'unknown'}")
    os.environ.setdefault("PREDICTOR_ID", cfg.get("predictor") or "local")
    os.environ.setdefault("PREDICTOR_LABELS", json.dumps({"version": cfg.get("version") or "unknown"}))
    # Seldon copies every custom metric into each response's meta unless told not to; Prometheus has them
    os.environ.setdefault("INCLUDE_METRICS_IN_CLIENT_RESPONSE", "false")


def buffered_metrics_class():
    import bisect

    from seldon_core.metrics import BINS, SeldonMetrics

    N_BUCKETS = len(BINS) - 1  # noqa: N806

    class BufferedSeldonMetrics(SeldonMetrics):
        """SeldonMetrics whose updates stay in the worker and reach the shared store every
        ``flush_seconds``: the metrics endpoint lags by at most that, and a request pays no IPC."""

        def __init__(self, flush_seconds: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self._flush_seconds = flush_seconds
            self._mutex = threading.Lock()
            self._pid: int | None = None
            self._local: dict = {}
            self._keys: dict = {}
            self._dirty = False

        def _ensure_worker(self) -> None:
            if self._pid != os.getpid():  # first update in a freshly forked worker
                self._pid = os.getpid()
                self._local = {}
                self._dirty = False
                threading.Thread(target=self._flusher, name="seldon-metrics-flush", daemon=True).start()

        def update(self, custom_metrics, method):
            # what SeldonMetrics.update records, with the key of each (metric, tags, method) computed
            # once, and a TIMER's bucket found by bisection rather than np.histogram per request
            if not custom_metrics:
                return
            with self._mutex:
                if self._pid != os.getpid():
                    self._ensure_worker()
                data, keys = self._local, self._keys
                for m in custom_metrics:
                    mtype = m.get("type", "COUNTER")
                    raw = m.get("tags")
                    memo = (mtype, m["key"], method, tuple(raw.items()) if raw else ())
                    hit = keys.get(memo)
                    if hit is None:
                        tags = dict(raw or {})
                        tags["method"] = method
                        hit = ((mtype, m["key"], SeldonMetrics._generate_tags_key(tags)), tags)
                        if len(keys) < 10_000:
                            keys[memo] = hit
                    key, tags = hit
                    entry = data.get(key)
                    if mtype == "COUNTER":
                        data[key] = {"value": (entry["value"] if entry else 0) + m["value"], "tags": tags}
                    elif mtype == "TIMER":
                        seconds = m["value"] / 1000.0
                        if entry is None:
                            entry = data[key] = {"value": ([0.0] * N_BUCKETS, 0.0), "tags": tags}
                        counts, total = entry["value"]
                        # np.histogram's bucket: BINS[i] <= s < BINS[i + 1], the last one closed
                        i = N_BUCKETS - 1 if seconds == BINS[-1] else bisect.bisect_right(BINS, seconds) - 1
                        if 0 <= i < N_BUCKETS:
                            counts[i] += 1
                        entry["value"] = (counts, total + seconds)
                    elif mtype == "GAUGE":
                        data[key] = {"value": m["value"], "tags": tags}
                self._dirty = True

        def flush(self) -> None:
            with self._mutex:
                if not self._dirty:
                    return
                snapshot = {
                    k: {"value": (list(v["value"][0]), v["value"][1]) if k[0] == "TIMER" else v["value"],
                        "tags": v["tags"]}
                    for k, v in self._local.items()
                }  # fmt: skip
                self._dirty = False
            with self._lock:
                self.data[self.worker_id_func()] = snapshot

        def _flusher(self) -> None:
            while True:
                time.sleep(self._flush_seconds)
                try:
                    self.flush()
                except Exception:  # the manager is gone: the server is stopping
                    return

    return BufferedSeldonMetrics


WORKER_MODULE = "_freestack_serving_worker"


def freestack_worker_class(slots: int):
    """gunicorn's worker for the model server: ``(worker class, child_exit hook)``.

    One thread per worker, no thread pool: the worker's event loop (epoll) holds every keep-alive
    connection it accepted and, when one is readable, parses the request with gunicorn's own parser
    and runs the WSGI app (Seldon's Flask app) inline, then goes back to the loop. That is gunicorn's
    ``sync`` worker (which closes the connection after every response) with keep-alive, or ``gthread``
    with one thread but without a hand-off to the pool thread and back for every request.

    Keep-alive connections stay with the worker that accepted them, and when several workers race
    for a burst of new connections one of them can win them all (with ``gthread`` one worker took all
    8 of a benchmark client's connections while the other idled). So the workers share a small table
    (``slots`` entries: pid, open connections, heartbeat) made in the arbiter before the fork, and a
    worker only listens for new connections while it holds no more connections than any live sibling.
    A sibling whose heartbeat is older than 2 s (booting, stuck in a long request, dead and not yet
    reaped) does not hold the others back; the arbiter's ``child_exit`` hook frees a dead worker's slot.
    The response's status line, headers and body go out in one ``sendall``.
    """
    import ctypes
    import errno
    import re
    import selectors
    import socket
    from datetime import datetime
    from multiprocessing import Lock, RawArray

    from gunicorn import http, util
    from gunicorn.http import wsgi
    from gunicorn.http.body import ChunkedReader, LengthReader
    from gunicorn.workers import base

    pids = RawArray(ctypes.c_int, slots)
    conns = RawArray(ctypes.c_int, slots)
    beats = RawArray(ctypes.c_double, slots)
    lock = Lock()
    stale_after = 2.0  # seconds without a heartbeat before a sibling stops counting
    RECV_BYTES, HEAD_LIMIT, SMALL_BODY = 32 * 1024, 64 * 1024, 1024 * 1024  # noqa: N806
    _LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)  # noqa: N806
    _CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked", re.IGNORECASE)  # noqa: N806
    tick = 0.25  # seconds between heartbeats, keep-alive expiry and parent checks

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
        """gunicorn's settings as plain attributes, for the parser and the WSGI environ of every
        request (a Config attribute is a ``__getattr__`` and a settings lookup each time); Config's
        computed properties (``is_ssl``, ``sendfile``, ...) and anything else fall through to it."""

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

    def _whole_request(buf) -> bool:
        """Whether the bytes buffered for a connection hold a whole request (headers and a body of
        Content-Length bytes), so gunicorn's parser reads it without waiting on the socket. A body
        above SMALL_BODY, a chunked one, or headers longer than HEAD_LIMIT go to the parser as soon as
        the headers are in: it reads the rest from the socket (each read bounded by io_timeout)."""
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
        @classmethod
        def check_config(cls, cfg, log):
            if cfg.is_ssl:
                raise RuntimeError("the freestack worker does not terminate TLS: use worker_class gthread")
            if cfg.threads > 1:
                log.warning("the freestack worker runs one thread per worker; threads=%d is ignored", cfg.threads)

        # -- the shared table ---------------------------------------------------------------------------
        def _claim(self) -> int:
            now = time.monotonic()
            got = lock.acquire(timeout=2.0)
            try:
                free = [i for i in range(slots) if pids[i] in (0, self.pid)]
                free += [i for i in range(slots) if now - beats[i] > 10 * stale_after]
                slot = free[0] if free else self.age % slots
                pids[slot], conns[slot], beats[slot] = self.pid, 0, now
                return slot
            finally:
                if got:
                    lock.release()

        def _may_accept(self, now: float) -> bool:
            mine = len(self.conns)
            if mine >= self.worker_connections:
                return False
            me = self.slot
            for i in range(slots):
                if i != me and pids[i] and conns[i] < mine and now - beats[i] < stale_after:
                    return False
            return True

        def init_process(self):
            # the Date header is formatted once a second instead of once a response (same text)
            util.http_date = _http_date_cached(util.http_date)
            cfg = self.cfg
            # what gunicorn's Logger.access checks before it logs anything
            self.access_log = bool(cfg.accesslog or cfg.logconfig or getattr(cfg, "logconfig_dict", None)
                                   or (cfg.syslog and not cfg.disable_redirect_access_to_syslog))  # fmt: skip
            super().init_process()

        # -- the loop -----------------------------------------------------------------------------------
        def run(self):
            self.settings = _Settings(self.cfg)
            self.worker_connections = self.cfg.worker_connections
            self.conns: dict[socket.socket, _Conn] = {}
            self.io_timeout = max(1.0, (self.cfg.timeout or 30) / 2)
            self.slot = self._claim()
            self.poller = selectors.DefaultSelector()
            self.listeners = []
            for sock in self.sockets:
                sock.setblocking(False)
                self.listeners.append((sock, sock.getsockname()))
            accepting = False
            next_tick = 0.0
            try:
                while self.alive:
                    now = time.monotonic()
                    if now >= next_tick:
                        self.notify()
                        beats[self.slot] = now
                        next_tick = now + tick
                        if self.ppid != os.getppid():
                            self.log.info("Parent changed, shutting down: %s", self)
                            break
                        self._expire(now)
                    want = self._may_accept(now)
                    if want != accepting:
                        for sock, server in self.listeners:
                            if want:
                                self.poller.register(sock, selectors.EVENT_READ, server)
                            else:
                                self.poller.unregister(sock)
                        accepting = want
                    for key, _ in self.poller.select(max(0.0, next_tick - now)):
                        if isinstance(key.data, _Conn):
                            self._serve(key.data)
                        else:
                            self._accept(key.fileobj, key.data)
            finally:
                for conn in list(self.conns.values()):
                    self._close(conn)
                if pids[self.slot] == self.pid:
                    pids[self.slot], conns[self.slot] = 0, 0
                self.poller.close()

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
            conns[self.slot] = len(self.conns)
            self.poller.register(sock, selectors.EVENT_READ, conn)

        def _close(self, conn: _Conn) -> None:
            if self.conns.pop(conn.sock, None) is not None:
                try:
                    self.poller.unregister(conn.sock)
                except (KeyError, ValueError, OSError):
                    pass
                conns[self.slot] = len(self.conns)
            util.close(conn.sock)

        def _expire(self, now: float) -> None:
            for conn in [c for c in self.conns.values() if c.idle_until < now]:
                self._close(conn)

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
            if not _whole_request(unreader.buf):
                # the rest of the request is on its way: serve the other connections meanwhile, and
                # give this one io_timeout from its first byte (a trickle does not extend it)
                if not waiting:
                    conn.idle_until = time.monotonic() + self.io_timeout
                return
            keepalive, req = False, None
            try:
                while True:
                    req = next(conn.parser)
                    if not req:
                        break
                    keepalive = self._handle_request(req, conn)
                    # a pipelined request read along with this one: epoll will not announce it
                    if not keepalive or not self.alive or not _whole_request(unreader.buf):
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
            if keepalive and self.alive:
                partial = unreader.buf.seek(0, os.SEEK_END)
                conn.idle_until = time.monotonic() + (self.io_timeout if partial else self.cfg.keepalive)
            else:
                self._close(conn)

        def _handle_request(self, req, conn: _Conn) -> bool:
            environ: dict = {}
            resp = None
            try:
                self.cfg.pre_request(self, req)
                request_start = datetime.now() if self.access_log else None
                resp, environ = wsgi.create(req, conn.sock, conn.addr, conn.server, self.settings)
                environ["wsgi.multithread"] = False
                self.nr += 1
                if self.nr >= self.max_requests:
                    if self.alive:
                        self.log.info("Autorestarting worker after current request.")
                        self.alive = False
                    resp.force_close()
                if not self.alive or not self.cfg.keepalive:
                    resp.force_close()
                respiter = self.wsgi(environ, resp.start_response)
                if not _body_consumed(req):
                    # answered before reading the whole body (a 413): the rest may never come, and
                    # waiting for it would hold up every other connection of this worker
                    resp.force_close()
                try:
                    if isinstance(respiter, environ["wsgi.file_wrapper"]):
                        resp.write_file(respiter)
                    else:
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

    def child_exit(server, worker) -> None:
        """In the arbiter, when it reaps a worker: free the worker's slot (it may have been killed)."""
        for i in range(slots):
            if pids[i] == worker.pid:
                pids[i], conns[i] = 0, 0

    return FreestackWorker, child_exit


def lighter_cors(app) -> bool:
    """Let flask_cors's after-request hook skip its general path where the answer is known.

    Seldon's app runs ``CORS(app)`` with the default options, whose hook matches every response's
    path against its resources and evaluates the origin rules; for a request without an ``Origin``
    header that is not a preflight (``OPTIONS``), all that adds ``Access-Control-Allow-Origin: *`` and
    nothing else. That case now adds the header directly; every other request (an ``Origin`` header,
    ``OPTIONS``, a response that already carries the header) goes to flask_cors's hook as before.
    Returns False, changing nothing, if the app's CORS options are not the defaults.
    """
    from flask import request
    from flask_cors.core import ACL_ORIGIN, FLASK_CORS_EVALUATED, try_match

    funcs = app.after_request_funcs.get(None, [])
    found = [i for i, f in enumerate(funcs)
             if getattr(f, "__name__", "") == "cors_after_request" and f.__module__ == "flask_cors.extension"]  # fmt: skip
    if len(found) != 1:
        return False
    index = found[0]
    hook = funcs[index]
    closure = dict(zip(hook.__code__.co_freevars, (c.cell_contents for c in hook.__closure__ or ()), strict=True))
    resources = closure.get("resources")
    if not isinstance(resources, list) or len(resources) != 1:
        return False
    pattern, opts = resources[0]
    defaults = (opts.get("origins") == [r".*"] and opts.get("always_send") and not opts.get("supports_credentials")
                and not opts.get("expose_headers"))  # fmt: skip
    if not defaults or pattern != "/*" or not try_match("/any/path", pattern):
        return False

    def cors_after_request(resp):
        environ = request.environ
        headers = resp.headers
        if (environ.get("HTTP_ORIGIN") or environ.get("REQUEST_METHOD", "GET").upper() == "OPTIONS"
                or headers is None or hasattr(resp, FLASK_CORS_EVALUATED)):  # fmt: skip
            return hook(resp)
        if not headers.get(ACL_ORIGIN):
            headers.add(ACL_ORIGIN, "*")
        return resp

    funcs[index] = cors_after_request
    return True


def lighter_flask(app) -> None:
    """Three per-request costs of Flask and werkzeug that Seldon's app pays for nothing, through their
    documented extension points; what any request gets back does not change.

    - ``Flask.ensure_sync`` ("override this method to change how the app runs async views") inspects
      every view, before-request and after-request function on every request to see whether it is a
      coroutine function; the answer for a given function is remembered instead.
    - Seldon's ``get_request`` reads ``request.form`` on every request, which builds a form parser
      just to find out that a JSON body has no form fields; the request class says so up front
      (``want_form_data_parsed``), and ``form`` and ``files`` are the same empty dicts as before.
    - Without a secret key (Seldon sets none) the session is an empty, read-only ``NullSession`` that
      is never saved; one is shared instead of one built per request (``session_interface``).
    """
    ensure_sync = app.ensure_sync
    known: dict = {}

    def remembered(func):
        try:
            return known[func]
        except KeyError:
            done = ensure_sync(func)
            if len(known) < 1000:
                known[func] = done
            return done
        except TypeError:  # not hashable
            return ensure_sync(func)

    app.ensure_sync = remembered

    class Request(app.request_class):
        @property
        def want_form_data_parsed(self) -> bool:
            if self.mimetype == "application/json":
                return False
            return super().want_form_data_parsed

    app.request_class = Request

    from flask.sessions import SecureCookieSessionInterface

    if type(app.session_interface) is SecureCookieSessionInterface:

        class Sessions(SecureCookieSessionInterface):
            # without a secret key (Seldon sets none) every request gets a fresh, empty, read-only
            # NullSession that is never saved: hand out one instead of building one per request
            null = SecureCookieSessionInterface.null_session_class()

            def open_session(self, app_, request_):
                return super().open_session(app_, request_) if app_.secret_key else None

            def make_null_session(self, app_):
                return self.null

        app.session_interface = Sessions()


def faster_json(app) -> bool:
    """Flask's JSON provider (``app.json``, Flask's documented extension point) backed by orjson, for
    the request bodies Seldon's ``get_request`` parses and the answers its ``jsonify`` writes.

    Anything orjson refuses falls back to Flask's own provider, so what a request gets back keeps its
    meaning: a body with ``NaN`` or integers beyond 64 bits still parses (and our checks then answer
    it with their own message), a value orjson cannot write is written by ``json.dumps``. Keys are
    no longer sorted and the answer has no trailing newline. Returns False, changing nothing, when
    orjson is not installed or the app pretty-prints (debug)."""
    try:
        import orjson
    except ImportError:
        return False
    from flask.json.provider import DefaultJSONProvider

    if type(app.json) is not DefaultJSONProvider or app.debug or app.json.compact is False:
        return False
    fallback = app.json

    class OrjsonProvider(DefaultJSONProvider):
        def dumps(self, obj, **kwargs):
            if not kwargs or kwargs == {"separators": (",", ":")}:
                try:
                    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()
                except TypeError:  # orjson.JSONEncodeError is a TypeError
                    pass
            return fallback.dumps(obj, **kwargs)

        def loads(self, s, **kwargs):
            if not kwargs:
                try:
                    return orjson.loads(s)
                except orjson.JSONDecodeError:
                    pass  # NaN, Infinity, huge integers, ...: Python's json decides
            return fallback.loads(s, **kwargs)

        def response(self, *args, **kwargs):
            obj = self._prepare_response_obj(args, kwargs)
            try:
                body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
            except TypeError:
                return fallback.response(*args, **kwargs)
            return self._app.response_class(body, mimetype=self.mimetype)

    app.json = OrjsonProvider(app)
    return True


def _post_worker_init(worker, *, seldon_hook, freeze: bool) -> None:
    """Seldon's hook, then (``gc_freeze``, default on) move everything the worker holds once the
    model is loaded (torch, Flask, the model: some 230,000 objects) out of the garbage collector's
    reach. Requests leave few survivors, so full collections are rare, but each one walked all of
    those objects and stalled the worker for 130-170 ms (measured here): a latency spike for every
    request queued on it. ``gc.freeze`` is what the Python docs suggest for pre-fork servers."""
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


def run(cfg: dict[str, Any]) -> None:
    """Start Seldon's REST microservice for ``cfg`` (blocks; gunicorn's arbiter exits the process)."""
    import multiprocessing as mp
    from functools import partial

    _labels_env(cfg)
    model_dir = cfg.get("model_dir")
    if model_dir and model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    import importlib

    from seldon_core import wrapper
    from seldon_core.gunicorn_utils import UserModelApplication, post_worker_init, worker_exit

    user_class = getattr(importlib.import_module(cfg.get("interface", "Model")), cfg.get("class", "Model"))
    user_object = user_class(**(cfg.get("parameters") or {}))
    metrics_cls = buffered_metrics_class() if cfg.get("buffered_metrics", True) else None
    if metrics_cls is None:
        from seldon_core.metrics import SeldonMetrics as metrics_cls  # noqa: N813
    seldon_metrics = metrics_cls(worker_id_func=os.getpid)
    app = wrapper.get_rest_microservice(user_object, seldon_metrics)
    if cfg.get("lighter_app", True):
        lighter_cors(app)
        lighter_flask(app)
        faster_json(app)
    host = cfg.get("host", "127.0.0.1")
    if cfg.get("metrics_port"):
        mp.Process(target=_metrics_server, args=(seldon_metrics, host, int(cfg["metrics_port"]), os.getpid()),
                   daemon=True).start()  # fmt: skip
    workers = int(cfg.get("workers", 1))
    worker_class: Any = cfg.get("worker_class", "sync")
    extra: dict[str, Any] = {}
    if worker_class == "freestack":
        # gunicorn 20.1 takes a worker class only as an import path: publish it under one
        import types

        cls, extra["child_exit"] = freestack_worker_class(slots=2 * workers + 2)
        module = types.ModuleType(WORKER_MODULE)
        module.FreestackWorker = cls
        sys.modules[WORKER_MODULE] = module
        worker_class = f"{WORKER_MODULE}.FreestackWorker"
    options = {
        "bind": f"{host}:{int(cfg['port'])}",
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
    log.info("serving %s %s on http://%s/ (metrics on %s)", cfg.get("model"), cfg.get("version"), options["bind"],
             cfg.get("metrics_port"))  # fmt: skip
    UserModelApplication(app, user_object, False, None, "Model", options=options).run()


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
    restarts: list[float] = []
    while True:
        child = subprocess.Popen([sys.executable, "-m", "freestack.serving.server", "run", config_path],
                                 preexec_fn=_die_with_parent)  # fmt: skip
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    if len(argv) != 2 or argv[0] not in ("run", "supervise"):
        print("usage: python -m freestack.serving.server run|supervise CONFIG.json", file=sys.stderr)
        return 2
    if argv[0] == "supervise":
        return supervise(argv[1])
    with open(argv[1]) as f:
        run(json.load(f))
    return 0


if __name__ == "__main__":
    sys.exit(main())
