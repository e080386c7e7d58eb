"""A late-answering HTTP server on 127.0.0.1: it relays every request to a real server and answers with
that server's answer, but holds some answers past the client's timeout, as an API server on a saturated
machine does (the request was done; its answer comes too late)."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_RELAYED = ("authorization", "content-type", "accept")
JSON = "application/json"


class LateProxy:
    """``late[(method, path)] = n``: the first ``n`` answers to ``method path`` (the path without its
    query) come ``seconds`` late; ``calls`` lists every request as ``(method, path)``. A context
    manager: the server runs inside the block."""

    def __init__(self, upstream: str, seconds: float) -> None:
        self.upstream, self.seconds = upstream.rstrip("/"), seconds
        self.late: dict[tuple[str, str], int] = {}
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LateProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _hold(self, method: str, path: str) -> bool:
        with self._lock:
            self.calls.append((method, path))
            left = self.late.get((method, path), 0)
            if left:
                self.late[(method, path)] = left - 1
            return left > 0

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() in _RELAYED}
                req = urllib.request.Request(
                    proxy.upstream + self.path, data=body, method=self.command, headers=headers
                )
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        code, data, kind = r.status, r.read(), r.headers.get("Content-Type", JSON)
                except urllib.error.HTTPError as exc:
                    code, data, kind = exc.code, exc.read(), exc.headers.get("Content-Type", JSON)
                if proxy._hold(self.command, urlparse(self.path).path):
                    time.sleep(proxy.seconds)  # the client gave up meanwhile
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client closed the connection: the answer was too late

            do_GET = do_POST = do_PATCH = _relay  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        return Handler
