"""The serving benchmark's load generator: closed-loop HTTP/1.1 POSTs over persistent connections.

    python -m bench.serve.load --port P --path /api/v1.0/predictions --body-file BODY.json \
        --concurrency 8 --warmup 2 --duration 8

One process, one thread, an asyncio event loop (uvloop when installed) with ``--concurrency``
connections, each a raw ``asyncio.Protocol``: the request bytes (request line, headers and body) are
encoded once, and each connection sends them, waits for the whole answer (status line, headers,
``Content-Length`` bytes of body), records the latency and sends again at once. A server that
answers ``Connection: close`` (gunicorn's sync worker does, after every response) gets a new
connection for the next request, and the connect time counts in that request's latency, as it would
for any client of that server. Nothing is parsed beyond the status code and the body length.

Requests that complete in the first ``--warmup`` seconds are not counted; the window is the next
``--duration`` seconds. The generator prints ``W`` when the window opens and ``E`` when it closes
(the caller samples the server's CPU time there), then one JSON line: requests, errors (non-200
answers, lost connections), requests/s, latency percentiles, per-second completions, a latency
histogram (microseconds rounded to 3 significant digits) and the generator's own CPU seconds inside
the window (``resource.getrusage``), i.e. what the load itself costs the shared cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import socket
import sys
import time
from collections import Counter

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)


def round3(us: int) -> int:
    """Microseconds to 3 significant digits (the histogram's resolution: < 1%)."""
    if us < 1000:
        return us
    scale = 10 ** (len(str(us)) - 3)
    return (us + scale // 2) // scale * scale


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The q-th percentile (0-100, nearest rank) of a {value: count} histogram."""
    total = sum(hist.values())
    if not total:
        return None
    rank = max(1, int(round(q / 100.0 * total + 0.5 - 1e-9)))
    seen = 0
    for v in sorted(hist):
        seen += hist[v]
        if seen >= rank:
            return v
    return max(hist)


def summarize_hist(hist: dict[int, int]) -> dict[str, float | None]:
    n = sum(hist.values())
    ms = lambda v: None if v is None else round(v / 1000.0, 3)  # noqa: E731
    return {
        "p50_ms": ms(percentile(hist, 50)),
        "p90_ms": ms(percentile(hist, 90)),
        "p99_ms": ms(percentile(hist, 99)),
        "p999_ms": ms(percentile(hist, 99.9)),
        "max_ms": ms(max(hist) if hist else None),
        "mean_ms": round(sum(k * v for k, v in hist.items()) / n / 1000.0, 3) if n else None,
    }


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Conn(asyncio.Protocol):
    """One keep-alive connection: ``request()`` returns a future of (status, close)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1  # total bytes of the answer once the headers are in
        self.fut: asyncio.Future | None = None
        self.lost = False
        self.status = 0
        self.close = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, data: bytes) -> asyncio.Future:
        self.buf.clear()
        self.need = -1
        self.fut = self.loop.create_future()
        self.transport.write(data)
        return self.fut

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[: end + 2])
            m = _STATUS.match(head)
            length = _LENGTH.search(head)
            self.status = int(m.group(1)) if m else 0
            self.close = _CLOSE.search(head) is not None
            self.need = end + 4 + (int(length.group(1)) if length else 0)
        if len(buf) >= self.need and self.fut is not None and not self.fut.done():
            self.fut.set_result((self.status, self.close))

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_result((0, True))


async def run(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    warmup: float,
    duration: float,
    connect_timeout: float = 10.0,
) -> dict:
    loop = asyncio.get_running_loop()
    hist: Counter = Counter()
    per_second = [0] * max(1, int(duration + 0.999))
    state = {"errors": 0, "error_samples": [], "connects": 0, "ok": 0}
    t_start = time.perf_counter()
    t_warm = t_start + warmup
    t_end = t_warm + duration
    marks: dict[str, float] = {}

    async def connect() -> _Conn:
        state["connects"] += 1
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Conn(loop), host, port), connect_timeout
        )
        return conn

    async def client() -> None:
        conn: _Conn | None = None
        perf = time.perf_counter
        while True:
            t0 = perf()
            if t0 >= t_end:
                break
            try:
                if conn is None or conn.lost:
                    conn = await connect()
                status, close = await conn.request(request)
            except OSError as exc:  # TimeoutError included
                status, close = 0, True
                if len(state["error_samples"]) < 5:
                    state["error_samples"].append(repr(exc))
            t1 = perf()
            if t_warm <= t1 < t_end:
                if status == 200:
                    hist[round3(int((t1 - t0) * 1e6))] += 1
                    per_second[min(int(t1 - t_warm), len(per_second) - 1)] += 1
                else:
                    state["errors"] += 1
                    if len(state["error_samples"]) < 5:
                        state["error_samples"].append(f"status {status}" if status else "connection lost")
            if close or status == 0:
                if conn is not None and conn.transport is not None:
                    conn.transport.close()
                conn = None
        if conn is not None and conn.transport is not None:
            conn.transport.close()

    async def marker() -> None:
        await asyncio.sleep(max(0.0, t_warm - time.perf_counter()))
        marks["cpu_warm"] = _cpu()
        marks["warm"] = time.perf_counter()
        sys.stdout.write("W\n")
        sys.stdout.flush()
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        marks["cpu_end"] = _cpu()
        marks["end"] = time.perf_counter()
        sys.stdout.write("E\n")
        sys.stdout.flush()

    tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    await marker()
    # clients finish their request in flight (not counted) and stop; a stuck one is not waited for
    _, pending = await asyncio.wait(tasks, timeout=max(5.0, warmup + duration))
    for t in pending:
        t.cancel()
    window = marks["end"] - marks["warm"]
    n = sum(hist.values())
    cpu = marks["cpu_end"] - marks["cpu_warm"]
    return {
        "concurrency": concurrency,
        "warmup_s": warmup,
        "duration_s": round(window, 4),
        "requests": n,
        "errors": state["errors"],
        "error_samples": state["error_samples"],
        "connections_opened": state["connects"],
        "rps": round(n / window, 2) if window > 0 else 0.0,
        **summarize_hist(hist),
        "per_second": per_second,
        "latency_us_hist": {str(k): v for k, v in sorted(hist.items())},
        "generator_cpu_s": round(cpu, 4),
        "generator_cpu_fraction": round(cpu / window, 4) if window > 0 else None,
        "generator_cpu_us_per_request": round(cpu / n * 1e6, 2) if n else None,
        "stuck_clients": len(pending),
    }


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serve.load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/api/v1.0/predictions")
    ap.add_argument("--body-file", required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    with open(args.body_file, "rb") as f:
        body = f.read()
    request = build_request(args.host, args.port, args.path, body)
    loop_name, factory = "asyncio", None
    if not args.no_uvloop:
        try:
            import uvloop

            loop_name, factory = f"uvloop {uvloop.__version__}", uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(run(args.host, args.port, request, args.concurrency, args.warmup, args.duration))
    result["event_loop"] = loop_name
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
