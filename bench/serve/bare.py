"""The bare baseline of the serving benchmark: uvicorn + starlette serving the same FreestackNet.

    BENCH_SERVE_MODEL_DIR=<registered version folder> python -m bench.serve.bare --port P [--workers 2]

One POST route, ``/api/v1.0/predictions``, that does the least a JSON model server must: read the
body, ``json.loads`` it, take ``data.ndarray`` as a float32 matrix (a 400 if it is not one of the
model's width), one forward pass with softmax under ``torch.inference_mode`` (1 intra-op thread),
and answer ``{"data": {"names": [...], "ndarray": [[...]]}, "meta": {}}`` with ``json.dumps``. No
metrics, no logging, no request validation beyond that. uvicorn with its defaults (httptools and
uvloop when installed, access log off), ``--workers`` processes (default 2, like the tuned Seldon
server), each with its own ``SO_REUSEPORT`` socket on the port, so the kernel spreads connections
over them: ``uvicorn --workers 2`` shares one socket, and one process can win every connection of a
burst (seen at concurrency 32: one core idle). Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROUTE = "/api/v1.0/predictions"


def create_app():
    import numpy as np
    import torch
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from freestack.ml.models import FreestackNet

    torch.set_num_threads(1)
    folder = Path(os.environ["BENCH_SERVE_MODEL_DIR"])
    net = FreestackNet.from_pretrained(str(folder))
    net.eval()
    pre = json.loads((folder / "preprocessing.json").read_text())
    names = [str(c) for c in pre.get("classes") or net.classes]
    width = int(net.mean.shape[0])

    async def predict(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            x = np.asarray(body["data"]["ndarray"], dtype=np.float32)
            if x.ndim == 1:
                x = x.reshape(1, -1)
            if x.ndim != 2 or x.shape[1] != width or x.shape[0] == 0:
                raise ValueError(f"expected [rows, {width}] features, got {list(x.shape)}")
        except (ValueError, KeyError, TypeError) as exc:
            return Response(json.dumps({"error": str(exc)}), status_code=400, media_type="application/json")
        with torch.inference_mode():
            out = torch.softmax(net(torch.from_numpy(x)), dim=-1).numpy()
        payload = {"data": {"names": names, "ndarray": out.tolist()}, "meta": {}}
        return Response(json.dumps(payload), media_type="application/json")

    async def ping(request: Request) -> Response:
        return Response("pong", media_type="text/plain")

    return Starlette(routes=[Route(ROUTE, predict, methods=["POST"]), Route("/health/ping", ping)])


def serve_one(port: int) -> None:
    """One uvicorn process on its own SO_REUSEPORT socket (the kernel spreads connections over them)."""
    import uvicorn

    app = create_app()  # the model loads before the socket joins the port's group
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serve.bare")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if "BENCH_SERVE_MODEL_DIR" not in os.environ:
        ap.error("set BENCH_SERVE_MODEL_DIR to the model version folder")
    if args.one or args.workers == 1:
        serve_one(args.port)
        return 0
    children = [
        subprocess.Popen([sys.executable, "-m", "bench.serve.bare", "--port", str(args.port), "--one"])
        for _ in range(args.workers)
    ]

    def stop(signum, _frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return max(c.wait() for c in children)


if __name__ == "__main__":
    sys.exit(main())
