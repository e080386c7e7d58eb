"""The binary tensor data extension of the Open Inference Protocol (KServe, Triton) for MLServer's REST app.

**Why.** MLServer 1.7 reads V2 requests as JSON only, but Triton's official client (``tritonclient.http``)
sends binary tensors by default: ``InferInput.set_data_from_numpy`` puts each input's bytes after the
JSON header (``binary_data=True``), and ``InferRequestedOutput`` (or ``binary_data_output`` when it names
no outputs) asks for binary outputs. Its default ``infer`` was answered 400 "not valid JSON".

**What.** :class:`BinaryTensors` (ASGI middleware) turns such a request into the JSON request MLServer
understands, and when asked, MLServer's JSON answer into the binary form:

- request: header ``Inference-Header-Content-Length: N``; the body's first N bytes are the JSON header,
  then each input with ``parameters.binary_data_size`` has that many raw bytes, in input order;
- numbers are little-endian in their datatype; ``BYTES`` elements are each a 4-byte little-endian length
  and that many bytes (given to the model as text when they are UTF-8, else as base64: JSON carries no
  raw bytes, and freestack's image columns take base64);
- answer: an output is binary when its request entry has ``parameters.binary_data: true``, or, without
  one, when the request has ``parameters.binary_data_output: true``; its ``data`` leaves the JSON, which
  gains ``parameters.binary_data_size``, and its bytes follow the JSON header, sent as
  ``application/octet-stream`` with ``Inference-Header-Content-Length``.

A request that breaks the extension (sizes that do not add up, a truncated body, a datatype with no
binary form) is refused 400 ``{"error": "..."}`` naming the input. gRPC needs none of this: MLServer
reads ``raw_input_contents`` itself.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from freestack_server.mlserver.keys import respond

HEADER = b"inference-header-content-length"
#: little-endian numpy dtypes of the V2 numeric datatypes
DTYPES = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


class BinaryError(ValueError):
    """A request that does not follow the binary tensor extension: answered 400."""


# -- bytes <-> values -------------------------------------------------------------------------------------
def decode_tensor(name: str, datatype: Any, shape: Any, raw: bytes) -> list:
    """An input's raw bytes as the JSON ``data`` of its datatype, checked against its shape."""
    if datatype == "BYTES":
        values: list = [_text(v) for v in split_bytes(name, raw)]
    elif datatype in DTYPES:
        size = np.dtype(DTYPES[datatype]).itemsize
        if len(raw) % size:
            raise BinaryError(
                f"input {name!r}: binary_data_size {len(raw)} is not a whole number of {datatype} "
                f"values ({size} bytes each)"
            )
        array = np.frombuffer(raw, dtype=DTYPES[datatype])
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BinaryError(f"input {name!r} holds NaN or infinite values: send finite numbers")
        values = array.tolist()
    else:
        raise BinaryError(
            f"input {name!r}: datatype {datatype!r} has no binary form; use one of "
            f"{', '.join([*DTYPES, 'BYTES'])}"
        )
    want = _elements(shape)
    if want is not None and want != len(values):
        raise BinaryError(
            f"input {name!r}: its {len(raw)} bytes hold {len(values)} {datatype} values, but its "
            f"shape {shape} needs {want}: send shape and bytes that agree"
        )
    return values


def split_bytes(name: str, raw: bytes) -> list[bytes]:
    """A BYTES tensor's elements: each a 4-byte little-endian length, then that many bytes."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise BinaryError(
                f"input {name!r}: BYTES element {len(out)} is cut inside its 4-byte length prefix"
            )
        n = int(np.frombuffer(raw, dtype="<u4", count=1, offset=at)[0])
        at += 4
        if at + n > len(raw):
            raise BinaryError(
                f"input {name!r}: BYTES element {len(out)} says {n} bytes, {len(raw) - at} are left"
            )
        out.append(raw[at : at + n])
        at += n
    return out


def encode_tensor(datatype: str, data: list) -> bytes:
    """An output's JSON ``data`` as the extension's bytes."""
    if datatype == "BYTES":
        items = [
            v if isinstance(v, bytes) else str(v).encode() for v in np.asarray(data, dtype=object).ravel()
        ]
        return b"".join(np.array([len(v)], dtype="<u4").tobytes() + v for v in items)
    return np.asarray(data, dtype=DTYPES[datatype]).tobytes()


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii")


def _elements(shape: Any) -> int | None:
    """The element count a shape holds; None for one the runtime refuses with its own message."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


# -- requests and answers ---------------------------------------------------------------------------------
def to_json_request(body: bytes, header_length: bytes | None) -> tuple[dict, dict[str, bool], bool]:
    """The JSON request of a binary one; with the outputs asked for by name (True: binary) and whether
    the others are wanted binary (``binary_data_output``)."""
    n = _header_length(header_length, len(body))
    try:
        request = json.loads(body[:n])
    except ValueError as exc:
        raise BinaryError(
            f"the request's JSON header (its first {n} bytes, Inference-Header-Content-Length) "
            f"is not valid JSON ({exc}): send a V2 inference request"
        ) from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise BinaryError('the request\'s JSON header must be an object with "inputs": a list of tensors')
    at = n
    for i, inp in enumerate(request["inputs"]):
        size = _binary_size(inp, i)
        if size is None:
            continue
        if at + size > len(body):
            raise BinaryError(
                f"input {inp.get('name')!r}: binary_data_size is {size}, but the body has "
                f"{len(body) - at} bytes left: the body is truncated or the size is wrong"
            )
        inp["data"] = decode_tensor(
            str(inp.get("name")), inp.get("datatype"), inp.get("shape"), body[at : at + size]
        )
        at += size
    if at != len(body):
        raise BinaryError(
            f"the body has {len(body) - at} bytes after its JSON header and binary inputs: "
            "each input's parameters.binary_data_size must give its byte count"
        )
    return request, *_wanted_binary(request)


def _header_length(value: bytes | None, size: int) -> int:
    if value is None:
        return size
    if not value.strip().isdigit() or int(value) > size:
        raise BinaryError(
            f"Inference-Header-Content-Length is {value.decode('latin-1')!r}: it must be the JSON "
            f"header's byte count, at most the body's {size} bytes"
        )
    return int(value)


def _binary_size(inp: Any, i: int) -> int | None:
    if not isinstance(inp, dict):
        raise BinaryError(f"inputs[{i}] must be an object with name, datatype, shape")
    params = inp.get("parameters")
    if not isinstance(params, dict) or "binary_data_size" not in params:
        return None
    size = params.pop("binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BinaryError(f"input {inp.get('name')!r}: binary_data_size must be a byte count, not {size!r}")
    if "data" in inp:
        raise BinaryError(f"input {inp.get('name')!r} has both data and binary_data_size: send one")
    return size


def _wanted_binary(request: dict) -> tuple[dict[str, bool], bool]:
    params = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
    named = {}
    for out in request.get("outputs") or []:
        p = out.get("parameters") if isinstance(out, dict) and isinstance(out.get("parameters"), dict) else {}
        if isinstance(out, dict) and "binary_data" in p:
            named[str(out.get("name"))] = bool(p.pop("binary_data"))
    return named, bool(params.pop("binary_data_output", False))


def to_binary_answer(body: bytes, named: dict[str, bool], others: bool) -> tuple[bytes, int] | None:
    """MLServer's JSON answer with the wanted outputs in binary: (body, JSON header length), or None
    when none is wanted."""
    answer = json.loads(body)
    chunks = []
    for out in answer.get("outputs") or []:
        if not named.get(out.get("name"), others) or "data" not in out:
            continue
        raw = encode_tensor(out["datatype"], out.pop("data"))
        out["parameters"] = {**(out.get("parameters") or {}), "binary_data_size": len(raw)}
        chunks.append(raw)
    if not chunks:
        return None
    header = json.dumps(answer, separators=(",", ":")).encode()
    return header + b"".join(chunks), len(header)


# -- the middleware ---------------------------------------------------------------------------------------
class BinaryTensors:
    """ASGI middleware: the binary tensor extension on ``POST .../infer`` (see the module)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/infer"):
            return await self.app(scope, receive, send)
        header_length = next((v for k, v in scope["headers"] if k.lower() == HEADER), None)
        body = await _read(receive)
        if body is None:  # the client left
            return None
        if header_length is None and (b"binary_data" not in body or not _is_json(body)):
            # a JSON request, as MLServer reads it
            return await self.app(scope, replayed(body, receive), send)
        try:
            request, named, others = to_json_request(body, header_length)
            new = json.dumps(request, allow_nan=False).encode()
        except BinaryError as exc:
            return await _refuse(send, str(exc))
        except ValueError as exc:  # NaN or infinity in the JSON header
            return await _refuse(
                send, f"the request holds a value JSON cannot carry ({exc}): send finite numbers"
            )
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _BODY_HEADERS]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(new)).encode())]
        inner = {**scope, "headers": headers}
        if not named and not others:
            return await self.app(inner, replayed(new, receive), send)
        return await self._binary_answer(inner, replayed(new, receive), send, named, others)

    async def _binary_answer(self, scope, receive, send, named: dict[str, bool], others: bool) -> None:
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        body = b"".join(chunks)
        headers = start.get("headers", [])
        encoded = any(k.lower() == b"content-encoding" for k, _ in headers)
        converted = (
            to_binary_answer(body, named, others) if start.get("status") == 200 and not encoded else None
        )
        if converted is None:
            return await _answer(send, start.get("status", 500), headers, body)
        body, n = converted
        headers = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/octet-stream"), (HEADER, str(n).encode())]
        return await _answer(send, 200, headers, body)


#: request headers that describe the body, replaced when the body becomes JSON
_BODY_HEADERS = (b"content-type", b"content-length", b"transfer-encoding", HEADER, b"accept-encoding")


async def _read(receive) -> bytes | None:
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


async def _refuse(send, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await _answer(send, 400, [(b"content-type", b"application/json")], body)


async def _answer(send, status: int, headers: list, body: bytes) -> None:
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    await respond(send, (status, [*headers, (b"content-length", str(len(body)).encode())], body))


def replayed(body: bytes, receive):
    """An ASGI ``receive`` that hands the app ``body`` whole (read already), then the client's own messages."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


__all__ = [
    "BinaryError",
    "BinaryTensors",
    "decode_tensor",
    "encode_tensor",
    "replayed",
    "to_binary_answer",
    "to_json_request",
]
