"""Hostile clients for the model server: a corpus of malformed requests (raw bytes, so that protocol
errors can be sent too), one raw HTTP/1.1 exchange, slow clients that trickle a large body, and a
check that an answer is a 4xx in Seldon's JSON error format.

Used by ``tests/integration/test_serving_hostile.py`` and ``bench/serve/slow_clients.py``; standard
library only, so the benchmark can import it as well.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field

PREDICT = "/api/v1.0/predictions"
J = "application/json"
#: the start of a TLS 1.2 ClientHello: what a client that speaks HTTPS sends to a plain-HTTP port
TLS_HELLO = (
    bytes.fromhex("16030100a5010000a10303")
    + bytes(range(32))
    + bytes.fromhex("000020c02bc02fc02cc030cca9cca8")
)


# ---------------------------------------------------------------------------------------------------------
# one exchange


@dataclass
class Answer:
    """What the server sent back: status 0 when it closed the connection without answering."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names; the last value of each
    body: bytes = b""
    error: str = ""

    def json(self):
        return json.loads(self.body)


def request(
    method: str, path: str, body: bytes = b"", ctype: str | None = J, headers: dict | None = None
) -> bytes:
    """A request with a Content-Length (when there is a body or the method sends one)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(
    path: str, chunks: list[bytes], *, tail: bytes = b"0\r\n\r\n", headers: dict | None = None
) -> bytes:
    """A POST with a chunked JSON body: ``chunks`` are sent as they are (each ``size\\r\\ndata\\r\\n``
    already framed, or framed here when it does not end in CRLF)."""
    head = request("POST", path, b"", J, {"Transfer-Encoding": "chunked", **(headers or {})})
    head = head.replace(b"Content-Length: 0\r\n", b"")
    body = b"".join(c if c.endswith(b"\r\n") else f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
    return head + body + tail


def read_answer(sock: socket.socket, buf: bytes = b"") -> tuple[Answer, bytes]:
    """One response off ``sock`` (1xx interim answers skipped): the answer and the bytes after it."""
    while True:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return Answer(0, error=f"closed without an answer (got {buf[:80]!r})"), b""
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            continue
        break
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(buf) < length:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
        return Answer(status, headers, buf[:length]), buf[length:]
    while data := sock.recv(65536):  # no length: the body ends when the server closes
        buf += data
    return Answer(status, headers, buf), b""


def exchange(port: int, raw: bytes, *, host: str = "127.0.0.1", timeout: float = 30.0) -> Answer:
    """Send ``raw`` on a new connection and read one answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            try:
                sock.sendall(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (and closed) before taking it all: read what it said
            return read_answer(sock)[0]
    except OSError as exc:
        return Answer(0, error=f"{type(exc).__name__}: {exc}")


def seldon_error(ans: Answer) -> str | None:
    """What is wrong with ``ans`` as a 4xx answer in Seldon's JSON error format, or None."""
    if not 400 <= ans.status < 500:
        return f"HTTP {ans.status} {ans.error}".strip()
    if "json" not in ans.headers.get("content-type", ""):
        return f"HTTP {ans.status} with Content-Type {ans.headers.get('content-type')!r}: {ans.body[:120]!r}"
    try:
        status = ans.json()["status"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {ans.status}, not Seldon's error format: {ans.body[:120]!r}"
    if status.get("status") != 1 or not isinstance(status.get("info"), str) or not status["info"]:
        return f"HTTP {ans.status}, no status/info: {ans.body[:120]!r}"
    if not isinstance(status.get("reason"), str) or "code" not in status:
        return f"HTTP {ans.status}, no reason/code: {ans.body[:120]!r}"
    return None


# ---------------------------------------------------------------------------------------------------------
# the corpus


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _deep(depth: int, leaf: str = "1", open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + leaf + close * depth).encode()


def _payloads(n: int, max_rows: int) -> list[tuple[str, bytes, str | None]]:
    """Bodies that are wrong in themselves (sent to every route that takes a Seldon message)."""
    row = [0.5] * n
    out: list[tuple[str, bytes, str | None]] = [
        ("text/plain", _j({"data": {"ndarray": [row]}}), "text/plain"),
        ("xml", b"<data/>", "application/xml"),
        ("no content type", _j({"data": {"ndarray": [row]}}), None),
        ("octet-stream", _j({"data": {"ndarray": [row]}}), "application/octet-stream"),
        ("form without json", b"a=1", "application/x-www-form-urlencoded"),
        ("form with bad json", b"json=%7B", "application/x-www-form-urlencoded"),
        (
            "form with ragged json",
            b"json=" + urllib.parse.quote(_j({"data": {"ndarray": [[1.0], [1.0, 2.0]]}})).encode(),
            "application/x-www-form-urlencoded",
        ),
        (
            "multipart",
            b'--b\r\nContent-Disposition: form-data; name="data"\r\n\r\n{bad\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
        ("empty body", b"", J),
        ("whitespace body", b"   ", J),
    ]
    for bad in (
        b"{",
        b'{"data":',
        b"nul",
        b"[1,2",
        b"{'a': 1}",
        b"\xff\xfe\x00",
        b'{"data": {"ndarray": [[1,2,]]}}',
        b"{}}",
        b'{"a" 1}',
        b"NaNx",
        b'"\\ud800"',
    ):
        out.append((f"invalid json {bad[:12]!r}", bad, J))
    for depth in (600, 1100, 10_000, 100_000):
        out.append((f"arrays nested {depth} deep", _deep(depth), J))
        out.append(
            (f"ndarray nested {depth} deep", b'{"data": {"ndarray": ' + _deep(depth, "0.5") + b"}}", J)
        )
    out.append(("objects nested 10000 deep", _deep(10_000, "1", '{"a":', "}"), J))
    out.append(
        (
            "meta.tags nested 10000 deep",
            b'{"data": {"ndarray": [' + _j(row) + b']}, "meta": {"tags": {"x": ' + _deep(10_000) + b"}}}",
            J,
        )
    )
    out.append(("jsonData nested 10000 deep", b'{"jsonData": ' + _deep(10_000, "1", '{"a":', "}") + b"}", J))
    out.append(("unclosed 100000 deep", b"[" * 100_000, J))
    for body in ([], 1, "str", None, True, 2.5):
        out.append((f"not an object {body!r}", _j(body), J))
    for body in (
        {},
        {"meta": {}},
        {"foo": 1},
        {"data": {"ndarray": [row]}, "jsonData": {}},
        {"strData": "hello"},
        {"binData": "aGVsbG8="},
        {"strData": "\ud800"},
        {"strData": ""},
        {"binData": ""},
        {"data": []},
        {"data": 1},
        {"data": "x"},
        {"data": {}},
        {"data": {"names": []}},
        {"data": {"tftensor": {}}},
        {"data": {"ndarray": [row]}, "meta": []},
        *_nulls(row),
    ):
        out.append((f"envelope {json.dumps(body)[:40]}", _j(body), J))
    return out + _value_payloads(n, max_rows)


def _nulls(row: list[float]) -> list[dict]:
    """Messages with a null where Seldon's protocol has an object, a list or a string."""
    return [
        {"data": None},
        {"data": None, "meta": {}},
        {"data": {"ndarray": None}},
        {"data": {"tensor": None}},
        {"data": {"names": None, "ndarray": [row]}},
        {"data": {"ndarray": [row], "tensor": None}},
        {"strData": None},
        {"jsonData": None},
        {"binData": None},
        {"data": {"ndarray": [row]}, "meta": None},
        {"data": None, "jsonData": None},
    ]


def _value_payloads(n: int, max_rows: int) -> list[tuple[str, bytes, str | None]]:
    """Messages whose meta, tensor, ndarray, names, jsonData or numbers are wrong."""
    row = [0.5] * n
    out: list[tuple[str, bytes, str | None]] = []
    for meta in (
        {"tags": "x"},
        {"tags": []},
        {"tags": 1},
        {"tags": None},
        {"puid": 1},
        {"puid": {}},
        {"routing": "x"},
        {"routing": {"a": "b"}},
        {"requestPath": 1},
        {"requestPath": {"a": 1}},
        {"metrics": "x"},
        {"metrics": [1]},
        {"metrics": [{"key": 1, "type": "COUNTER", "value": 1}]},
        {"metrics": [{"key": "k", "type": "NOPE", "value": 1}]},
        {"unknown": 1},
        "x",
    ):
        out.append((f"meta {json.dumps(meta)[:40]}", _j({"data": {"ndarray": [row]}, "meta": meta}), J))
    for t in (
        1,
        [],
        {"values": [1.0] * n},
        {"shape": [1, n]},
        {"shape": "1x8", "values": row},
        {"shape": [1, -n], "values": row},
        {"shape": [1.5, n], "values": row},
        {"shape": [1, n], "values": "x"},
        {"shape": [2, n], "values": row},
        {"shape": [], "values": []},
        {"shape": [1, n + 1], "values": [0.0] * (n + 1)},
        {"shape": [1, n], "values": [row]},
        {"shape": [1, n], "values": [[0.5]] * n},
        {"shape": [1, n], "values": [True] * n},
        {"shape": [1, n], "values": [*row[:-1], True]},
        {"shape": [1, n], "values": [None] * n},
        {"shape": [1, n], "values": ["1"] * n},
        {"shape": [1, n], "values": [{"v": 1}] * n},
        {"shape": [True, n], "values": row},
    ):
        out.append((f"tensor {json.dumps(t)[:48]}", _j({"data": {"tensor": t}}), J))
    for arr in (
        1,
        "x",
        {},
        [[1.0, 2.0], [3.0]],
        [row, [1.0]],
        [row, "row"],
        [[[0.0] * n]],
        [],
        [[]],
        [[None] * n],
        [["a"] * n],
        [[*row[:-1], "1"]],
        [[True] * n],
        [[*row[:-1], True]],
        [[False, *row[1:]]],
        [row, [*row[:-1], True]],
        [1.0, [1.0]],
        [0.5, row],
        [row, 0.5],
        [[row, row[:-1]]],
        [[*row[:-1], [0.5]]],
        [[*row[:-1], {}]],
        [[{"a": 1}] * n],
        [{"a": 1}],
        [True, 1.0],
        [row] * (max_rows + 1),
        [[1e39] * n],
        [["\ud800"] * n],
        [[*row[:-1], "40"]],
    ):
        out.append((f"ndarray {json.dumps(arr)[:48]}", _j({"data": {"ndarray": arr}}), J))
    for width in [w for w in range(0, n + 21) if w != n]:
        out.append((f"width {width}", _j({"data": {"ndarray": [[0.1] * width]}}), J))
    for names in (["f0"], [f"g{i}" for i in range(n)], [1] * n, "f0", [None] * n, ["\ud800"] * n):
        out.append((f"names {json.dumps(names)[:30]}", _j({"data": {"names": names, "ndarray": [row]}}), J))
    rec = {f"f{i}": 0.5 for i in range(n)}
    for jd in (
        [],
        {"instances": 1},
        {"instances": []},
        {"instances": [1]},
        {"instances": [{"f0": 1.0}]},
        {"instances": [{**rec, "f0": "1"}]},
        {"instances": [{**rec, "f0": None}]},
        {"instances": [{**rec, "f0": True}]},
        {"instances": [{**rec, "f0": [1.0]}]},
        {"instances": [{**rec, "f0": "\ud800"}]},
        {"instances": [{**rec, "f0": "40"}]},
        {"instances": [rec] * (max_rows + 1)},
        "x",
    ):
        out.append((f"jsonData {json.dumps(jd)[:40]}", _j({"jsonData": jd}), J))
    nums = ", ".join(["0.5"] * (n - 1))
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"):
        out.append(
            (
                f"{token.decode()} in ndarray",
                b'{"data": {"ndarray": [[' + token + b", " + nums.encode() + b"]]}}",
                J,
            )
        )
    for where, body in (
        ("meta.tags", b'{"data": {"ndarray": [' + _j(row) + b']}, "meta": {"tags": {"x": NaN}}}'),
        (
            "tensor",
            b'{"data": {"tensor": {"shape": [1, %d], "values": [Infinity, %s]}}}' % (n, nums.encode()),
        ),
        ("jsonData", b'{"jsonData": {"instances": [{"f0": NaN}]}}'),
        ("meta.tags 1e999", b'{"data": {"ndarray": [' + _j(row) + b']}, "meta": {"tags": {"x": 1e999}}}'),
    ):
        out.append((f"NaN in {where}", body, J))
    return out


def _message_routes(n: int) -> list[tuple[str, bytes]]:
    """Messages that are wrong whatever the route: for the other routes that take one, and GET ?json=."""
    row = [0.5] * n
    return [
        ("ragged", _j({"data": {"ndarray": [row, [1.0]]}})),
        ("meta.tags a string", _j({"data": {"ndarray": [row]}, "meta": {"tags": "x"}})),
        ("nested 10000 deep", _deep(10_000)),
        ("NaN", b'{"data": {"ndarray": [[NaN]]}}'),
        ("booleans", _j({"data": {"ndarray": [[True, *row[1:]]]}})),
        ("nested tensor values", _j({"data": {"tensor": {"shape": [1, n], "values": [row]}}})),
        ("not an object", b"[1]"),
        ("invalid json", b"{"),
        ("data null", _j({"data": None})),
    ]


def _routes(n: int) -> list[tuple[str, bytes]]:
    row = [0.5] * n
    good = _j({"data": {"ndarray": [row]}})
    cases: list[tuple[str, bytes]] = []
    for path in (
        "/transform-input",
        "/transform-output",
        "/route",
        "/aggregate",
        "/send-feedback",
        "/api/v1.0/feedback",
        "/api/v0.1/feedback",
    ):
        for what, body in _message_routes(n)[:5]:
            cases.append((f"POST {path} {what}", request("POST", path, body)))
    for path in ("/predict", "/api/v0.1/predictions", "/transform-input", "/transform-output", "/route"):
        cases.append((f"POST {path} data null", request("POST", path, _j({"data": None, "meta": {}}))))
    for path in ("/predict", "/transform-input", "/send-feedback", "/route"):
        for what, body in _message_routes(n):
            q = urllib.parse.quote(body.decode())
            cases.append((f"GET {path}?json= {what}", request("GET", f"{path}?json={q}", ctype=None)))
    cases.append(("GET /predict without a message", request("GET", "/predict", ctype=None)))
    ragged = urllib.parse.quote(_j({"data": {"ndarray": [[1.0], [1.0, 2.0]]}}).decode())
    cases.append(
        (
            "GET /predict?j%73on= (json, percent-encoded)",
            request("GET", f"/predict?j%73on={ragged}", ctype=None),
        )
    )
    cases.append(("POST a good body with a ragged ?json=", request("POST", f"{PREDICT}?json={ragged}", good)))
    part = b'--b\r\nContent-Disposition: form-data; name="data"\r\n\r\n{bad\r\n--b--\r\n'
    cases.append(
        (
            "POST multipart with a good ?json=",
            request(
                "POST",
                f"{PREDICT}?json={urllib.parse.quote(good.decode())}",
                part,
                "multipart/form-data; boundary=b",
            ),
        )
    )
    cases.append(
        ("aggregate of bad messages", request("POST", "/aggregate", _j({"seldonMessages": [{"data": 1}]})))
    )
    cases.append(
        (
            "feedback with a bad reward",
            request(
                "POST", "/api/v1.0/feedback", _j({"request": {"data": {"ndarray": [row]}}, "reward": "x"})
            ),
        )
    )
    for method, path in (
        ("POST", "/nope"),
        ("GET", "/nope"),
        ("GET", "/"),
        ("POST", "/"),
        ("POST", PREDICT + "X"),
        ("GET", "/static/../../etc/passwd"),
        ("GET", "/seldon.jsonx"),
        ("PUT", PREDICT),
        ("DELETE", PREDICT),
        ("PATCH", PREDICT),
        ("GET", PREDICT),
        ("POST", "/health/status"),
        ("POST", "/api/v1.0/metadata"),
        ("DELETE", "/health/ping"),
    ):
        cases.append((f"{method} {path}", request(method, path, good if method != "GET" else b"")))
    cases.append(
        (
            "CORS preflight from an origin not allowed",
            request(
                "OPTIONS",
                PREDICT,
                ctype=None,
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            ),
        )
    )
    return cases


def _framing(n: int, max_body: int) -> list[tuple[str, bytes]]:
    row = [0.5] * n
    good = _j({"data": {"ndarray": [row]}})
    half = len(good) // 2
    bad_json = b'{"data": {"ndarray": [[1,2,]]}}'
    head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    big = _j({"data": {"ndarray": [row] * (max_body // (6 * n) + 10)}})
    cases: list[tuple[str, bytes]] = [
        ("chunk size zz", chunked(PREDICT, [b"zz\r\n" + good + b"\r\n"])),
        ("chunk size -5", chunked(PREDICT, [b"-5\r\n" + good[:5] + b"\r\n", good[5:]])),
        ("chunk size 0x10", chunked(PREDICT, [b"0x10\r\n" + good[:16] + b"\r\n", good[16:]])),
        ("chunk size 2^64", chunked(PREDICT, [b"ffffffffffffffff\r\n" + good + b"\r\n"])),
        ("chunk size empty", chunked(PREDICT, [b"\r\n" + good + b"\r\n"])),
        (
            "chunk without its CRLF",
            chunked(PREDICT, [f"{half:x}\r\n".encode() + good[:half] + b"XX", good[half:]]),
        ),
        ("chunked invalid json", chunked(PREDICT, [bad_json[:10], bad_json[10:]])),
        (
            "chunked over the size limit",
            chunked(PREDICT, [big[i : i + 65536] for i in range(0, len(big), 65536)]),
        ),
        ("chunked and Content-Length", chunked(PREDICT, [good], headers={"Content-Length": str(len(good))})),
        (
            "Transfer-Encoding gzip, chunked",
            chunked(PREDICT, [gzip.compress(good)]).replace(b"chunked", b"gzip, chunked"),
        ),
        (
            "Transfer-Encoding identity",
            (head + f"Transfer-Encoding: identity\r\nContent-Length: {len(good)}\r\n\r\n").encode() + good,
        ),
        (
            "two Transfer-Encoding headers",
            chunked(PREDICT, [good], headers={"X-Second": "1"}).replace(
                b"X-Second: 1", b"Transfer-Encoding: chunked"
            ),
        ),
        ("body over the size limit", request("POST", PREDICT, big)),
        ("Content-Length of a terabyte", (head + "Content-Length: 1000000000000\r\n\r\n").encode() + good),
        ("Content-Length abc", (head + "Content-Length: abc\r\n\r\n").encode() + good),
        ("Content-Length -1", (head + "Content-Length: -1\r\n\r\n").encode() + good),
        ("Content-Length 1, 2", (head + "Content-Length: 1, 2\r\n\r\n").encode() + good),
        ("Content-Length +5", (head + "Content-Length: +5\r\n\r\n").encode() + good),
        (
            "two different Content-Lengths",
            (head + f"Content-Length: {len(good)}\r\nContent-Length: {len(good) - 1}\r\n\r\n").encode()
            + good,
        ),
        (
            "two equal Content-Lengths",
            (head + f"Content-Length: {len(good)}\r\nContent-Length: {len(good)}\r\n\r\n").encode() + good,
        ),
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        ("request line without version", f"POST {PREDICT}\r\nHost: x\r\n\r\n".encode()),
        ("HTTP/9.9", f"POST {PREDICT} HTTP/9.9\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()),
        ("protocol FOO/1.1", f"POST {PREDICT} FOO/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()),
        ("method G@T", f"G@T {PREDICT} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
        ("request line of 9000 bytes", f"GET /{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
        (
            "header of 9000 bytes",
            (head + f"X-Big: {'a' * 9000}\r\nContent-Length: {len(good)}\r\n\r\n").encode() + good,
        ),
        (
            "150 headers",
            (
                head + "".join(f"X-H{i}: 1\r\n" for i in range(150)) + f"Content-Length: {len(good)}\r\n\r\n"
            ).encode()
            + good,
        ),
        (
            "70 KiB of headers",
            (head + "".join(f"X-H{i}: {'b' * 7000}\r\n" for i in range(10)) + "\r\n").encode(),
        ),
        (
            "header without a colon",
            (head + f"NoColon\r\nContent-Length: {len(good)}\r\n\r\n").encode() + good,
        ),
        (
            "header name with a space",
            (head + f"Bad Name: 1\r\nContent-Length: {len(good)}\r\n\r\n").encode() + good,
        ),
        (
            "header name with a (",
            (head + f"Bad(Name: 1\r\nContent-Length: {len(good)}\r\n\r\n").encode() + good,
        ),
        ("NUL in a header", (head + f"X-A: a\x00b\r\nContent-Length: {len(good)}\r\n\r\n").encode() + good),
        (
            "bare LF in a header",
            (head + f"X-A: a\nContent-Length: 5\r\nContent-Length: {len(good)}\r\n\r\n").encode() + good,
        ),
        ("bare CR in a header", (head + f"X-A: a\rb\r\nContent-Length: {len(good)}\r\n\r\n").encode() + good),
    ]
    for enc, body in (
        ("gzip", gzip.compress(good)),
        ("deflate", zlib.compress(good)),
        ("br", good),
        ("gzip, identity", gzip.compress(good)),
        ("x-unknown", good),
    ):
        cases.append(
            (f"Content-Encoding {enc}", request("POST", PREDICT, body, J, {"Content-Encoding": enc}))
        )
    return cases


def corpus(n_features: int, max_rows: int, max_body: int) -> list[tuple[str, bytes]]:
    """Malformed requests (name, raw bytes) for a model of ``n_features`` features served with
    ``max_batch_rows`` = ``max_rows`` and a body limit of ``max_body`` bytes; each must get a 4xx
    answer in Seldon's JSON error format."""
    cases = [
        (f"POST {what}", request("POST", PREDICT, body, ctype))
        for what, body, ctype in _payloads(n_features, max_rows)
    ]
    cases.append(
        (
            "over the size limit",
            request(
                "POST",
                PREDICT,
                _j({"data": {"ndarray": [[0.5] * n_features] * (max_body // (6 * n_features) + 10)}}),
            ),
        )
    )
    return cases + _routes(n_features) + _framing(n_features, max_body)


def run_corpus(port: int, cases: list[tuple[str, bytes]], *, timeout: float = 30.0) -> dict:
    """Send every case on its own connection; which answers were 4xx Seldon JSON errors and which not."""
    failures = []
    for what, raw in cases:
        problem = seldon_error(exchange(port, raw, timeout=timeout))
        if problem:
            failures.append(f"{what}: {problem}")
    return {"cases": len(cases), "json_4xx": len(cases) - len(failures), "failures": failures}


# ---------------------------------------------------------------------------------------------------------
# slow clients


class SlowClients:
    """``n`` connections that each send the head of a POST with a ``body_bytes`` body (a Content-Length,
    or chunked with ``chunked=True``) and then one byte every ``interval`` seconds, until stopped or
    until the server answers or closes. ``answers`` keeps the last answer each got (None: nothing);
    with ``reopen``, a client whose connection was answered opens a new one (so ``n`` stay open), and
    ``statuses`` counts every answer."""

    def __init__(
        self,
        port: int,
        n: int = 4,
        *,
        body_bytes: int = 2_000_000,
        interval: float = 5.0,
        chunked: bool = False,
        reopen: bool = False,
        host: str = "127.0.0.1",
    ):
        self.port, self.host, self.n, self.body_bytes = port, host, n, body_bytes
        self.interval, self.chunked, self.reopen = interval, chunked, reopen
        self.stopping = threading.Event()
        self.answers: list[Answer | None] = [None] * n
        self.statuses: list[int] = []
        self.opened = threading.Barrier(n + 1)
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def __enter__(self) -> SlowClients:
        for t in self._threads:
            t.start()
        self.opened.wait(timeout=30)  # every head is sent
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self, i: int) -> None:
        first = True
        while True:
            try:
                ans = self._trickle(first)
            except (OSError, threading.BrokenBarrierError) as exc:
                ans = Answer(0, error=f"{type(exc).__name__}: {exc}")
                if first:
                    self.opened.abort()  # the caller learns at once that not all of them are open
                self.stopping.wait(self.interval)
            first = False
            self.answers[i] = ans
            self.statuses.append(ans.status if ans is not None else 0)
            if not self.reopen or self.stopping.is_set():
                return

    def _trickle(self, first: bool) -> Answer | None:
        framing = "Transfer-Encoding: chunked" if self.chunked else f"Content-Length: {self.body_bytes}"
        head = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
        with socket.create_connection((self.host, self.port), timeout=60) as sock:
            sock.sendall(
                head.encode() + (f"{self.body_bytes:x}\r\n".encode() if self.chunked else b"") + b"{"
            )
            if first:
                self.opened.wait(timeout=30)
            sock.settimeout(0.05)
            while not self.stopping.wait(self.interval):
                try:
                    sock.recv(1, socket.MSG_PEEK)  # an answer (or the close) is in
                    break
                except TimeoutError:
                    pass
                try:
                    sock.sendall(b" ")
                except OSError:
                    break
            sock.settimeout(5)
            try:
                return read_answer(sock)[0]
            except OSError:
                return None


def good_requests(port: int, body: bytes, n: int, *, host: str = "127.0.0.1", timeout: float = 30.0) -> dict:
    """``n`` predictions one after another on one keep-alive connection (reconnecting after a failure):
    how many got a 200, the errors, and the requests per second."""
    ok, errors = 0, []
    raw = request("POST", PREDICT, body)
    t0 = time.monotonic()
    sock, buf = None, b""
    for _ in range(n):
        try:
            if sock is None:
                sock, buf = socket.create_connection((host, port), timeout=timeout), b""
            sock.sendall(raw)
            ans, buf = read_answer(sock, buf)
            if ans.status == 200:
                ok += 1
                if ans.headers.get("connection", "").lower() == "close":  # gunicorn's sync worker
                    sock.close()
                    sock = None
            else:
                errors.append(f"HTTP {ans.status} {ans.error} {ans.body[:100]!r}")
                sock.close()
                sock = None
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()
    took = time.monotonic() - t0
    return {"sent": n, "ok": ok, "errors": errors[:5], "seconds": round(took, 3), "rps": round(n / took, 1)}
