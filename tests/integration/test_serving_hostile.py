"""The model server against hostile clients, started exactly as ``docker/serving.Dockerfile`` starts it
(its ``CMD`` and ``ENV``, in .venv-serving: tests/support/images.py), with each worker class the spec
allows set through ``FREESTACK_SERVER_WORKER_CLASS``, as a manifest would:

- a corpus of malformed requests (bad JSON, shapes and types, every route that takes a message,
  GET ``?json=``, chunked framing, protocol errors, Content-Encoding) all get a 4xx answer in Seldon's
  JSON error format, with the status that says what is wrong where one does (404, 405, 413, 415);
- slow clients trickling a large body hold up no one: good requests are all answered, no worker is
  killed (their pids stay, no WORKER TIMEOUT), and the slow clients get a 408;
- CORS answers only the origins listed in the server's config (none by default).
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from pathlib import Path

import psutil
import pytest

from tests.support.images import ImageServer, start_like_image
from tests.support.serving import make_version, needs_serving_env
from tests.support.serving_hostile import (
    PREDICT,
    SlowClients,
    chunked,
    corpus,
    exchange,
    good_requests,
    read_answer,
    request,
    run_corpus,
    seldon_error,
)

N_FEATURES = 8
MAX_ROWS = 50
MAX_BODY = 4 * 1024 * 1024
TIMEOUT_S = 10  # gunicorn's worker timeout: a worker blocked longer is killed (the read deadline is half)
ORIGIN = "https://app.example"
KEEP_MODEL_SERVERS = True  # the module's servers are shared by its tests and stopped by the fixture

pytestmark = needs_serving_env

GOOD = json.dumps({"data": {"ndarray": [[0.5] * N_FEATURES]}}).encode()


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("hostile")
    return make_version((work / "storage").as_uri(), "h", "v1", work, seed=3, n_features=N_FEATURES)


def _start(version_uri: str, worker_class: str, extra: dict, workdir: Path) -> ImageServer:
    env = {
        "FREESTACK_SERVER_WORKER_CLASS": worker_class,
        "FREESTACK_SERVER_THREADS": "4" if worker_class == "gthread" else "1",
        "FREESTACK_SERVER_TIMEOUT": str(TIMEOUT_S),
        "FREESTACK_MAX_BATCH_ROWS": str(MAX_ROWS),
        "FREESTACK_MAX_BODY_BYTES": str(MAX_BODY),
        "FREESTACK_SERVER_WORKERS": "2",
        **{f"FREESTACK_SERVER_{k.upper()}": json.dumps(v) for k, v in extra.items()},
    }
    name = f"hostile-{worker_class}" + ("-cors" if extra else "")
    server = start_like_image("seldon", version_uri, workdir / name, env=env, timeout=90)
    deadline = time.monotonic() + 60  # every worker has loaded the model (deploy waits for one)
    while _log(server).count("INFO serving h v1") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    return server


@pytest.fixture(scope="module")
def servers(version, tmp_path_factory):
    """``servers(worker_class, **config)``: a running server of that class, ``config`` more of its
    ``FREESTACK_SERVER_*`` variables (started once per module)."""
    workdir = tmp_path_factory.mktemp("hostile-servers")
    started: dict[tuple, ImageServer] = {}

    def get(worker_class: str = "freestack", **extra) -> ImageServer:
        key = (worker_class, json.dumps(extra, sort_keys=True))
        if key not in started:
            started[key] = _start(version, worker_class, extra, workdir)
        return started[key]

    yield get
    for server in started.values():
        server.stop()


def _log(server: ImageServer) -> str:
    return Path(server.log_path).read_text(errors="replace")


def _pids(server: ImageServer) -> set[int]:
    return {p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)}


def _port(server: ImageServer) -> int:
    return server.port


@pytest.mark.parametrize("worker_class", ["freestack", "sync", "gthread"])
def test_malformed_requests_get_4xx_json(servers, worker_class):
    server = servers(worker_class)
    result = run_corpus(_port(server), corpus(N_FEATURES, MAX_ROWS, MAX_BODY))
    assert result["cases"] >= 280
    assert not result["failures"], f"{len(result['failures'])} of {result['cases']}:\n" + "\n".join(
        result["failures"]
    )
    # and the server still answers, with the same workers
    assert exchange(_port(server), request("POST", PREDICT, GOOD)).status == 200
    assert "WORKER TIMEOUT" not in _log(server)


@pytest.mark.parametrize("worker_class", ["freestack", "sync"])
def test_refusals_say_what_is_wrong(servers, worker_class):
    port = _port(servers(worker_class))
    for raw, status in (
        (request("POST", "/nope", GOOD), 404),
        (request("GET", "/nope", ctype=None), 404),
        (request("GET", "/", ctype=None), 404),
        (request("GET", PREDICT, ctype=None), 405),
        (request("PUT", PREDICT, GOOD), 405),
        (request("POST", PREDICT, gzip.compress(GOOD), headers={"Content-Encoding": "gzip"}), 415),
        (request("POST", PREDICT, GOOD, "text/plain"), 415),
        (request("POST", PREDICT, GOOD * (MAX_BODY // len(GOOD) + 1)), 413),
        (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**12}\r\n\r\n".encode(), 413),
        (f"GET /{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 414),
        (b"GARBAGE\r\n\r\n", 400),
    ):
        ans = exchange(port, raw)
        assert ans.status == status and seldon_error(ans) is None, (raw[:60], ans)
    ans = exchange(port, request("GET", PREDICT, ctype=None))
    assert "POST" in ans.headers.get("allow", ""), ans
    # values the model would have taken, and should not: NaN (it came back as null), booleans, nesting
    nan = (
        b'{"data": {"ndarray": [[' + b", ".join([b"0.5"] * N_FEATURES) + b']]}, "meta": {"tags": {"x": NaN}}}'
    )
    for body, words in (
        (nan, "NaN or infinite"),
        (json.dumps({"data": {"ndarray": [[True] + [0.5] * (N_FEATURES - 1)]}}).encode(), "true/false"),
        (
            json.dumps(
                {"data": {"tensor": {"shape": [1, N_FEATURES], "values": [[0.5] * N_FEATURES]}}}
            ).encode(),
            "flat list",
        ),
        (b"[" * 20_000 + b"]" * 20_000, "nested too deeply"),
    ):
        ans = exchange(port, request("POST", PREDICT, body))
        assert ans.status == 400 and words in ans.json()["status"]["info"], ans
    # null where the protocol has an object or a list (Seldon's app fails on it: a 500)
    row = [0.5] * N_FEATURES
    for path in (PREDICT, "/predict"):
        for body, words in (
            ({"data": None}, '"data" must be an object holding "ndarray"'),
            ({"data": None, "meta": {}}, '"data" must be an object holding "ndarray"'),
            ({"data": {"names": None, "ndarray": [row]}}, '"data.names" must be a list'),
        ):
            ans = exchange(port, request("POST", path, json.dumps(body).encode()))
            assert ans.status == 400 and words in ans.json()["status"]["info"], ans
    assert exchange(port, request("POST", PREDICT, GOOD)).status == 200


def test_cors_only_for_listed_origins(servers):
    default, listed = servers("freestack"), servers("freestack", cors_origins=[ORIGIN])
    for origin in (ORIGIN, "https://evil.example", "null"):
        ans = exchange(_port(default), request("POST", PREDICT, GOOD, headers={"Origin": origin}))
        assert ans.status == 200 and "access-control-allow-origin" not in ans.headers, (origin, ans.headers)
    ans = exchange(_port(default), request("POST", PREDICT, GOOD))
    assert "access-control-allow-origin" not in ans.headers, ans.headers
    port = _port(listed)
    ans = exchange(port, request("POST", PREDICT, GOOD, headers={"Origin": ORIGIN}))
    assert ans.status == 200 and ans.headers.get("access-control-allow-origin") == ORIGIN, ans.headers
    ans = exchange(port, request("POST", PREDICT, GOOD, headers={"Origin": "https://evil.example"}))
    assert ans.status == 200 and "access-control-allow-origin" not in ans.headers, ans.headers
    ans = exchange(port, request("POST", PREDICT, b"{", headers={"Origin": ORIGIN}))  # errors carry it too
    assert ans.status == 400 and ans.headers.get("access-control-allow-origin") == ORIGIN, ans.headers
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    ans = exchange(port, request("OPTIONS", PREDICT, ctype=None, headers={"Origin": ORIGIN, **preflight}))
    assert ans.status == 204 and ans.headers.get("access-control-allow-origin") == ORIGIN, ans
    assert (
        "POST" in ans.headers["access-control-allow-methods"] and ans.headers["access-control-allow-headers"]
    )
    ans = exchange(
        port, request("OPTIONS", PREDICT, ctype=None, headers={"Origin": "https://evil.example", **preflight})
    )
    assert (
        ans.status == 403 and seldon_error(ans) is None and "access-control-allow-origin" not in ans.headers
    )


@pytest.mark.parametrize("worker_class", ["freestack", "sync", "gthread"])
def test_slow_clients_hold_up_no_one(servers, worker_class):
    """Four clients trickle a 2 MB body (two with a Content-Length, two chunked) for longer than the
    worker timeout; good requests meanwhile are all answered, no worker is killed, and each slow
    client gets a 408 once its read deadline is up."""
    server = servers(worker_class)
    port = _port(server)
    pids, log_before = _pids(server), len(_log(server))
    results = []
    with (
        SlowClients(port, 2, interval=1.0) as by_length,
        SlowClients(port, 2, interval=1.0, chunked=True) as by_chunks,
    ):
        until = time.monotonic() + TIMEOUT_S + 3  # a worker stuck in one read this long would be killed
        while time.monotonic() < until:
            results.append(good_requests(port, GOOD, 20))
    sent, ok = sum(r["sent"] for r in results), sum(r["ok"] for r in results)
    assert ok == sent, [r["errors"] for r in results if r["errors"]]
    assert "WORKER TIMEOUT" not in _log(server)[log_before:]
    assert _pids(server) == pids
    for ans in by_length.answers + by_chunks.answers:
        assert ans is not None and ans.status == 408 and seldon_error(ans) is None, ans


@pytest.mark.parametrize("worker_class", ["freestack", "sync", "gthread"])
def test_large_chunked_and_expect_continue_bodies_are_served(servers, worker_class):
    """What the workers now read whole before the app runs still reaches it whole: a 3 MB body (with a
    Content-Length and chunked), a body sent only after ``100 Continue``, and pipelined requests."""
    port = _port(servers(worker_class))
    padded = GOOD[:-1] + b" " * 3_000_000 + GOOD[-1:]
    assert exchange(port, request("POST", PREDICT, padded)).status == 200
    parts = [padded[i : i + 65536] for i in range(0, len(padded), 65536)]
    ans = exchange(port, chunked(PREDICT, parts, headers={"X-Trace": "1"}))
    assert ans.status == 200 and ans.json()["data"]["ndarray"], ans
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = request("POST", PREDICT, padded, headers={"Expect": "100-continue"})[: -len(padded)]
        sock.sendall(head)
        interim = sock.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        sock.sendall(padded)
        ans, _ = read_answer(sock, interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :])
        assert ans.status == 200, ans
    if worker_class == "freestack":  # sync answers one request per connection; gthread waits for the socket
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                request("POST", PREDICT, GOOD)
                + chunked(PREDICT, [GOOD[:9], GOOD[9:]])
                + request("POST", PREDICT, GOOD)
            )
            buf = b""
            for _ in range(3):
                ans, buf = read_answer(sock, buf)
                assert ans.status == 200, ans


def test_sigterm_stops_the_image_entrypoint_gracefully(version, tmp_path):
    """As PID 1 of its container, the server gets the kubelet's SIGTERM: the supervisor and every process
    under it exit, with code 0 (a stop, not a crash)."""
    server = start_like_image(
        "seldon", version, tmp_path / "sigterm", env={"FREESTACK_MAX_BATCH_ROWS": str(MAX_ROWS)}
    )
    tree = [server.proc.pid, *_pids(server)]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(request("POST", PREDICT, GOOD))
        answer, _ = read_answer(s)
        assert answer.status == 200 and b"ndarray" in answer.body
        server.proc.send_signal(15)
    assert server.proc.wait(timeout=30) == 0
    time.sleep(0.5)
    assert not [
        p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
