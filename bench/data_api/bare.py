"""The Data API benchmark's HTTP ceiling: a bare file server on 127.0.0.1 over the same backing folder.

    python -m bench.data_api.bare --root FOLDER --port PORT

``GET /<name>`` answers the file with ``os.sendfile`` (no copy through Python); ``PUT /<name>`` writes the
body as the service does (a temporary file, fsync, rename). No authentication, no ACL, no listing: what
HTTP on this machine costs, read and written by the same client as the service, so the report can say
how much of the distance to a direct read is HTTP's and how much the service's.
"""

from __future__ import annotations

import argparse
import os
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BLOCK = 8 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path

    def _path(self) -> Path:
        return self.root / Path(self.path.split("?", 1)[0]).name

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self._path()
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            self.send_error(404)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            offset = 0
            while offset < size:
                offset += os.sendfile(self.connection.fileno(), f.fileno(), offset, size - offset)

    def do_PUT(self) -> None:  # noqa: N802
        path, left = self._path(), int(self.headers.get("Content-Length") or 0)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as out:
            while left:
                block = self.rfile.read(min(left, BLOCK))
                if not block:
                    break
                out.write(block)
                left -= len(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.data_api.bare")
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    Handler.root = Path(args.root)
    Handler.root.mkdir(parents=True, exist_ok=True)
    socketserver.TCPServer.allow_reuse_address = True
    with ThreadingHTTPServer(("127.0.0.1", args.port), Handler) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
