"""A stand-in W&B host on 127.0.0.1 for tests at the HTTP boundary (no internet here): it answers any
GET (the reachability probe), takes GOODKEY and rejects every other key with HTTP 401, the way a W&B
server answers wandb's credential check (a GraphQL ``viewer`` query with basic auth ``api:<key>``)."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOODKEY, BADKEY = "good" * 10, "bad0" * 10  # wandb checks a key's form first: 40+ word characters


class FakeWandb(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        good = "Basic " + base64.b64encode(f"api:{GOODKEY}".encode()).decode()
        if self.headers.get("Authorization", "") != good:
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"data": {"viewer": {"id": "1", "username": "alice", "entity": "alice"}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def fake_wandb_host() -> Iterator[str]:
    """The host's URL while it serves."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWandb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
