"""What serving a version costs, measured as it will be served: the version started in its serving
runtime exactly as a deploy starts it (``python -m freestack_server --env-file F`` from the spec's
``deploy`` block: runtime, workers, worker class, threads, bounds), on this machine, on a free port of
127.0.0.1, asked over HTTP with the evaluation's own test rows, then stopped. No Airflow here.

- ``start_s``: spawn to healthy (loading the model included).
- ``latency_p50_ms``, ``latency_p99_ms``: one row a request, one request at a time, over a kept-alive
  connection, for ``deploy.measure.seconds`` after ``warmup_seconds``: what the
  serving benchmark's concurrency-1 cell measures (``bench/serve``).
- ``rows_per_s``: ``concurrency`` clients at once, each request ``batch_rows`` rows.
- ``peak_memory_mb``: the server's processes (supervisor and workers) together, their resident memory
  sampled every 250 ms from spawn to stop (psutil), the highest sum.
- ``cpu_ms_per_request``: the server's CPU time (all its processes) per one-row request, and
  ``cost_per_1k_requests`` at the spec's ``prices.cpu_hour``.
- A text-generation version on ``runtime: mlserver`` is asked through its OpenAI API, streaming
  (``openai``'s client): ``ttft_p50_ms`` / ``ttft_p99_ms`` (request to the first token), ``itl_ms`` (the
  mean gap between tokens), ``latency_*`` over whole answers, and ``tokens_per_s`` generated with
  ``concurrency`` requests at once. On Seldon's runtime (no streaming) only whole answers are timed.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from freestack.errors import DeployError
from freestack.registry.core import ModelRegistry, RegistryError
from freestack.serving.launch import LocalServer, Slot, server_config, serving_dir, start_server
from freestack.serving.local import is_pretrained
from freestack.serving.processes import free_port
from freestack.serving.smoke import generation_request, seldon_request, v2_request
from freestack.serving.spec import DeploySpec, MeasureSpec
from freestack.storage import join, to_path
from freestack.version.files import MARKER
from freestack_server.core.requestlog import SMOKE_ID

log = logging.getLogger(__name__)


class ServingCosts(BaseModel):
    """What serving a version costs, as ``costs.serving`` records it."""

    model_config = ConfigDict(extra="forbid")

    runtime: str
    workers: int = Field(description="server processes answering (gunicorn workers; 1 for MLServer)")
    start_s: float = Field(description="spawn to healthy, loading the model included")
    requests: int = Field(description="requests timed one at a time")
    errors: int = Field(description="requests not answered 200 (all phases)")
    latency_p50_ms: float
    latency_p99_ms: float
    batch_rows: int = Field(description="rows a request for the throughput figure (1 for text generation)")
    concurrency: int = Field(description="requests at once for the throughput figure")
    rows_per_s: float = Field(description="rows (or answers) a second at that concurrency")
    peak_memory_mb: float = Field(description="the server's processes together, highest sampled sum")
    cpu_ms_per_request: float = Field(description="the server's CPU time per request timed one at a time")
    cost_per_1k_requests: float = Field(description="that CPU time at prices.cpu_hour, per 1,000 requests")
    currency: str
    ttft_p50_ms: float | None = Field(default=None, description="text generation: time to first token")
    ttft_p99_ms: float | None = None
    itl_ms: float | None = Field(default=None, description="text generation: mean gap between tokens")
    tokens_per_s: float | None = Field(default=None, description="text generation: tokens at concurrency")


@dataclass
class Timings:
    """One phase's outcomes: each request's seconds, errors, and generation's per-request figures."""

    seconds: list[float] = field(default_factory=list)
    errors: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tokens: int = 0


def measure_serving(
    version_uri: str,
    *,
    model: str,
    version: str,
    deploy: DeploySpec,
    sample: dict[str, Any],
    cpu_hour: float = 0.0,
    currency: str = "USD",
    source: tuple[str, dict[str, str]] | None = None,
) -> ServingCosts:
    """Start ``version_uri`` as ``deploy`` serves it, measure it with the smoke ``sample``'s rows (or
    conversations), stop it. ``source``: the URI the server reads a registered version from and the
    environment it needs for it. DeployError when it cannot be started or answers nothing (its log kept)."""
    home = serving_dir() / f"costs-{model}-{version}"
    shutil.rmtree(home, ignore_errors=True)
    model_uri, model_env = _readable(version_uri, model, version, home, source)
    key = SecretStr(secrets.token_urlsafe(24)) if deploy.runtime == "mlserver" else None
    server = _start(model_uri, model_env, home.name, model, version, deploy, key)
    local = deploy.local.for_version(is_pretrained(model_uri))
    with _sampled(server.proc.pid) as memory:
        try:
            t0 = time.monotonic()
            server.wait_ready(local.start_timeout)
            started = time.monotonic() - t0
            client = _client(server, sample, key, deploy.measure.batch_rows)
            one, many, cpu = _phases(server, client, deploy.measure)
        finally:
            server.stop()
    if not one.seconds:
        raise DeployError(
            f"{model} {version}: the measuring server answered no request ({one.errors} errors)"
        )
    shutil.rmtree(home, ignore_errors=True)
    per_request = cpu / len(one.seconds)
    return ServingCosts(
        runtime=deploy.runtime,
        workers=server.cfg.workers,
        start_s=round(started, 3),
        requests=len(one.seconds),
        errors=one.errors + many.errors,
        latency_p50_ms=_ms(_quantile(one.seconds, 0.5)),
        latency_p99_ms=_ms(_quantile(one.seconds, 0.99)),
        batch_rows=client.rows,
        concurrency=deploy.measure.concurrency,
        rows_per_s=round(len(many.seconds) * client.rows / deploy.measure.seconds, 1),
        peak_memory_mb=round(max(memory, default=0) / 2**20, 1),
        cpu_ms_per_request=round(per_request * 1000, 3),
        cost_per_1k_requests=round(per_request * 1000 / 3600 * cpu_hour, 6),
        currency=currency,
        **_generation_figures(one, many, deploy.measure.seconds),
    )


def _readable(
    version_uri: str, model: str, version: str, home: Path, source: tuple[str, dict[str, str]] | None
) -> tuple[str, dict[str, str]]:
    """Where the server reads the version from, and the environment it needs for it: a registered version
    from ``source`` (or where it is); a candidate (evaluated before the gate registers it) from a commit of
    it in a scratch registry in the measurement's folder, since the model server serves committed
    versions only (their files checked against the commit's digests)."""
    if join(to_path(version_uri), MARKER).exists():
        return source or (version_uri, {})
    scratch = ModelRegistry((home / "scratch").as_uri(), model)
    try:
        return scratch.register(version_uri, version), {}
    except RegistryError as exc:
        raise DeployError(f"{version_uri} cannot be served to measure it: {exc}") from None


def _phases(server: LocalServer, client: _Rows | _Chats, m: MeasureSpec) -> tuple[Timings, Timings, float]:
    """One request at a time, then ``concurrency`` at once; and the server's CPU seconds in the first."""
    cpu0 = _cpu(server.proc.pid)
    one = _closed_loop(client.one, 1, m.warmup_seconds, m.seconds)
    cpu = _cpu(server.proc.pid) - cpu0
    return one, _closed_loop(client.many, m.concurrency, m.warmup_seconds, m.seconds), cpu


def _start(
    model_uri: str,
    model_env: dict[str, str],
    name: str,
    model: str,
    version: str,
    deploy: DeploySpec,
    key: SecretStr | None,
) -> LocalServer:
    """The server of the measurement, on free ports of the deploy's host, no address, no request log."""
    local = deploy.local
    port = free_port(local.host)
    slot = Slot("measure", port, free_port(local.host, exclude=(port,)))
    launch = server_config(
        name,
        model,
        version,
        slot,
        local,
        model_uri=model_uri,
        request_log_uri=None,
        runtime=deploy.runtime,
        api_key=key,
    )
    return start_server(launch, model_env=model_env)


@contextmanager
def _sampled(pid: int, every: float = 0.25) -> Iterator[list[int]]:
    """The summed resident memory of ``pid`` and its descendants, sampled until the block ends."""
    seen: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen.append(sum(_rss(p) for p in _group(pid)))
            done.wait(every)

    thread = threading.Thread(target=sample, name="serving-memory", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def _group(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def _cpu(pid: int) -> float:
    total = 0.0
    for proc in _group(pid):
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank, as the serving benchmark reads its histogram)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def _closed_loop(ask: Callable[[Timings], None], clients: int, warmup: float, seconds: float) -> Timings:
    """``clients`` loops asking one request after another: ``warmup`` seconds not counted, then
    ``seconds`` counted (a request counts when it ends inside the window)."""
    out = Timings()
    start = time.monotonic()
    window = (start + warmup, start + warmup + seconds)

    def loop() -> None:
        while time.monotonic() < window[1]:
            got = Timings()
            ask(got)
            if window[0] <= time.monotonic() <= window[1]:
                _merge(out, got)

    with ThreadPoolExecutor(clients, thread_name_prefix="serving-load") as pool:
        for f in [pool.submit(loop) for _ in range(clients)]:
            f.result()
    return out


_merging = threading.Lock()


def _merge(into: Timings, got: Timings) -> None:
    with _merging:
        into.seconds += got.seconds
        into.errors += got.errors
        into.ttft += got.ttft
        into.itl += got.itl
        into.tokens += got.tokens


def _generation_figures(one: Timings, many: Timings, seconds: float) -> dict[str, Any]:
    """Streamed answers: time to first token and between tokens; any answers: tokens a second (``many``'s,
    over its ``seconds``)."""
    out: dict[str, Any] = {"tokens_per_s": round(many.tokens / seconds, 1)} if many.tokens else {}
    if one.ttft:
        out.update(ttft_p50_ms=_ms(_quantile(one.ttft, 0.5)), ttft_p99_ms=_ms(_quantile(one.ttft, 0.99)))
    if one.itl:
        out["itl_ms"] = _ms(statistics.fmean(one.itl))
    return out


# ------------------------------------------------------------------------------------------------------
# the clients: what one request is, in the runtime's protocol


class _Rows:
    """Rows of the smoke sample over Seldon's protocol or the Open Inference Protocol (all-numeric rows as
    one FP32 tensor, as clients of a numeric model send them; else a tensor per column): one row a request
    (:meth:`one`) or ``batch_rows`` (:meth:`many`); or, a text-generation version on Seldon's runtime,
    the sample's first conversation, its whole answer (``completion_tokens`` counted). Each request's
    bytes are encoded once; a kept-alive connection per client thread (:class:`_Connection`)."""

    def __init__(self, server: LocalServer, sample: dict[str, Any], key: SecretStr | None, batch_rows: int):
        cfg = server.cfg
        self.address, self.rows = (cfg.host, cfg.port), batch_rows
        mlserver = cfg.runtime == "mlserver"
        path = f"/v2/models/{cfg.model}/infer" if mlserver else "/api/v1.0/predictions"
        auth = f"Authorization: Bearer {key.get_secret_value()}\r\n" if key is not None else ""
        self.answers = sample.get("task") == "generation"  # Seldon's text generation: whole answers
        if self.answers:
            self.rows = batch_rows = 1
            chat, n = sample["chats"][0], int(sample.get("max_new_tokens") or 64)
            parts = [(1, generation_request(chat, n, f"{SMOKE_ID}-costs"))]
        else:
            rows = sample["rows"]
            cycled = [rows[i % len(rows)] for i in range(batch_rows)]
            parts = [
                (n, _v2(sample, part) if mlserver else seldon_request({**sample, "rows": part}))
                for n, part in ((1, rows[:1]), (batch_rows, cycled))
            ]
        self.requests = {}
        for n, message in parts:
            body = json.dumps(message).encode()
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {cfg.host}:{cfg.port}\r\nContent-Type: application/json\r\n"
                f"{auth}Content-Length: {len(body)}\r\n\r\n"
            )
            self.requests[n] = head.encode() + body
        self.local = threading.local()

    def one(self, into: Timings) -> None:
        self._post(self.requests[1], into)

    def many(self, into: Timings) -> None:
        self._post(self.requests[self.rows], into)

    def _post(self, request: bytes, into: Timings) -> None:
        conn = getattr(self.local, "conn", None) or _Connection(self.address)
        self.local.conn = conn
        t0 = time.perf_counter()
        try:
            status, body = conn.ask(request)
        except OSError:
            conn.close()
            self.local.conn = None
            into.errors += 1
            return
        if status != 200:
            into.errors += 1
            return
        into.seconds.append(time.perf_counter() - t0)
        if self.answers:
            into.tokens += sum(
                c.get("completion_tokens", 0) for c in json.loads(body)["jsonData"]["completions"]
            )


def _v2(sample: dict[str, Any], rows: list[list[Any]]) -> dict[str, Any]:
    if all(isinstance(v, int | float) and not isinstance(v, bool) for row in rows for v in row):
        flat = [float(v) for row in rows for v in row]
        return {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": flat}
            ]
        }
    return v2_request({**sample, "rows": rows})


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class _Connection:
    """One kept-alive HTTP/1.1 connection sending pre-encoded requests and reading each whole answer by
    its Content-Length (both runtimes send one). Written here rather than through ``http.client``, whose
    per-request header building and parsing adds some 90 us: half of a small model's 0.2 ms answer, which
    the figure must report as the serving benchmark's client sees it (``bench/serve/load.py`` reads
    answers the same way)."""

    def __init__(self, address: tuple[str, int]):
        self.sock = socket.create_connection(address, timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ask(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``; the answer's status and body once all of it is in (OSError: the connection
        failed)."""
        self.sock.sendall(request)
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self._recv()
        status, length = _STATUS.match(data), _LENGTH.search(data, 0, end + 2)
        if status is None or length is None:
            raise OSError(f"not an HTTP answer with a Content-Length: {data[:200]!r}")
        need = end + 4 + int(length.group(1))
        while len(data) < need:
            data += self._recv()
        return int(status.group(1)), data[end + 4 : need]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


class _Chats:
    """The smoke sample's conversations through the server's OpenAI API, streamed (``openai``'s client):
    greedy, the sample's ``max_new_tokens``; one a request."""

    def __init__(self, server: LocalServer, sample: dict[str, Any], key: SecretStr | None):
        from openai import OpenAI

        self.client = OpenAI(
            base_url=f"{server.url}/v1", api_key=key.get_secret_value() if key else "none", max_retries=0
        )
        self.model, self.chats = server.cfg.model, sample["chats"]
        self.max_tokens, self.rows, self.turn = int(sample.get("max_new_tokens") or 64), 1, 0

    def one(self, into: Timings) -> None:
        self.turn += 1
        chat = self.chats[self.turn % len(self.chats)]
        t0 = time.perf_counter()
        stamps: list[float] = []
        tokens = 0
        try:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=chat,
                max_tokens=self.max_tokens,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    stamps.append(time.perf_counter())
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
        except Exception:  # noqa: BLE001 (openai's errors, a lost connection: counted, not raised)
            into.errors += 1
            return
        into.seconds.append(time.perf_counter() - t0)
        into.tokens += tokens
        if stamps:
            into.ttft.append(stamps[0] - t0)
        if tokens > 1 and stamps:
            into.itl.append((stamps[-1] - stamps[0]) / (tokens - 1))

    many = one


def _client(server: LocalServer, sample: dict[str, Any], key: SecretStr | None, rows: int) -> _Rows | _Chats:
    """Text generation on MLServer: its OpenAI API, streamed; anything else: the runtime's own protocol."""
    if sample.get("task") == "generation" and server.cfg.runtime == "mlserver":
        return _Chats(server, sample, key)
    return _Rows(server, sample, key, rows)
