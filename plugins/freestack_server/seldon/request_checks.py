"""What the model server refuses before Seldon's app sees a request, and how: every refusal is a 4xx
answer in Seldon's JSON error format, ``{"status": {"status": 1, "info": ..., "code": -1, "reason":
...}}`` (what the app answers for its own errors), whichever worker class serves it. Runs in the
serving environment.

Two layers:

- the workers (:mod:`freestack_server.seldon.worker`) hand the app only whole requests whose body
  is already in memory, within ``max_body_bytes`` and a read deadline; what they refuse (a bad request
  line, bad headers or framing, a body over the limit, a client too slow to send its request) is
  answered by :func:`error_response` through :class:`JsonErrors` and the connection closed;
- :class:`RequestChecks`, a WSGI middleware around Seldon's Flask app: unknown paths (404) and methods (405),
  CORS (an allow-list of origins, none by default), ``Content-Encoding`` (refused: 415), and the Seldon
  message of every route that takes one (predictions, feedback, transform-input/output, route,
  aggregate), whether it comes as the JSON body, a form's ``json`` field or ``?json=`` on a GET:
  JSON that parses (no NaN or infinite values, at most MAX_DEPTH levels deep), ``meta`` of the types
  Seldon's protocol gives them, ``data.ndarray`` rows of numbers of one width, ``data.tensor`` values
  a flat list of numbers as many as its shape holds; a prediction's message carries exactly one of
  ``data``, ``jsonData``, ``strData`` and ``binData``, of a kind the model takes (:class:`Inputs`).

These are the only checks of a message's form: the worker's direct prediction asks them too
(:mod:`freestack_server.seldon.direct_predict`), and the model (:mod:`freestack_server.core.model`) checks only what
needs the model, the values against its columns.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from freestack_server.core.errors import kind_of
from freestack_server.seldon.framing import Refused, too_large

try:
    import orjson
except ImportError:  # pragma: no cover - the serving environment has it
    orjson = None

MAX_DEPTH = 64  # levels of JSON nesting in a message (a Seldon message needs 4 or 5)
NUMBER = frozenset((int, float))
CONTAINERS = frozenset((list, dict))
META_KEYS = frozenset(("puid", "tags", "routing", "requestPath", "metrics"))
METRIC_TYPES = frozenset(("COUNTER", "GAUGE", "TIMER"))
MESSAGE_ENDPOINTS = {
    "Predict": "predict",
    "TransformInput": "message",
    "TransformOutput": "message",
    "Route": "message",
    "Aggregate": "aggregate",
    "SendFeedback": "feedback",
}
FORM = "application/x-www-form-urlencoded"
PARSED = "freestack.json"  # environ key: the JSON body as the request checks parsed it (the app does not parse it again)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
KINDS = ("data", "jsonData", "strData", "binData")  # what a Seldon message may carry


@dataclass(frozen=True)
class Inputs:
    """What the served model takes besides rows of numbers: ``raw_values``, category/text/image values in
    ``data.ndarray`` rows (text, true/false and null besides numbers); ``raw_kinds``, the one-column
    messages it takes ("strData": its one column is text, "binData": an image)."""

    raw_values: bool = False
    raw_kinds: frozenset[str] = frozenset()
    generation: bool = False  # a text-generation model: prompts in strData or jsonData, never rows of numbers


#: what a text-generation model takes, for the refusal of anything else
GENERATION_HINT = (
    '{"strData": "a prompt"}, or {"jsonData": {"prompt": "..."}} or {"jsonData": {"messages": [{"role": '
    '"user", "content": "..."}]}} (several: {"jsonData": {"instances": [...]}}), with "parameters": '
    '{"max_new_tokens", "temperature", "top_p", "stop"}'
)


# ---------------------------------------------------------------------------------------------------------
# the error format


def error_body(info: str, reason: str) -> bytes:
    """Seldon's error message (``SeldonMicroserviceException.to_dict``)."""
    return json.dumps({"status": {"status": 1, "info": info, "code": -1, "reason": reason}}).encode()


def error_response(status: int, reason: str, info: str) -> bytes:
    """A whole HTTP/1.1 answer for a worker to send before it closes the connection."""
    body = error_body(info, reason)
    return (
        f"HTTP/1.1 {status} {reason_phrase(status)}\r\nServer: gunicorn\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


_PHRASES = {s.value: s.phrase for s in HTTPStatus}


def reason_phrase(status: int) -> str:
    """The status line's reason phrase for ``status`` ("Error" for a code HTTP does not name)."""
    return _PHRASES.get(status, "Error")


def protocol_error(exc: BaseException) -> tuple[int, str, str]:
    """(status, reason, info) for what gunicorn's parser or body readers raised on a request."""
    from gunicorn.http import errors as e

    if isinstance(exc, Refused):
        return exc.status, exc.reason, exc.info
    if isinstance(exc, e.LimitRequestLine):
        return 414, "URI_TOO_LONG", f"{exc}: send the message in the body of a POST rather than in ?json="
    if isinstance(exc, e.LimitRequestHeaders):
        return 431, "HEADERS_TOO_LARGE", f"{exc}: send fewer or shorter headers"
    if isinstance(exc, e.InvalidRequestLine | e.InvalidRequestMethod | e.InvalidHTTPVersion):
        return (
            400,
            "BAD_REQUEST_LINE",
            (f"invalid request line ({type(exc).__name__}: {exc}): send 'METHOD /path HTTP/1.1'"),
        )
    if isinstance(exc, e.InvalidHeader | e.InvalidHeaderName | e.InvalidSchemeHeaders):
        return 400, "BAD_HEADER", f"invalid header ({type(exc).__name__}: {exc})"
    if isinstance(exc, e.InvalidChunkSize | e.ChunkMissingTerminator):
        return 400, "BAD_CHUNK", f"invalid chunked body ({type(exc).__name__}: {exc})"
    if isinstance(exc, e.ParseException):
        return 400, "BAD_REQUEST", f"{type(exc).__name__}: {exc}"
    return 500, "MICROSERVICE_INTERNAL_ERROR", f"the server failed on this request ({type(exc).__name__})"


class JsonErrors:
    """Mixed into a gunicorn worker class: a request the worker itself refuses (what gunicorn answers
    with an HTML page) gets a JSON answer in Seldon's format, then the connection is closed."""

    def handle_error(self, req, client, addr, exc):
        status, reason, info = protocol_error(exc)
        if status >= 500:
            self.log.exception("Error handling request %s", getattr(req, "uri", ""))
        else:
            self.log.debug("Refused a request from %s: %s", (addr or ("",))[0], info)
        try:
            client.sendall(error_response(status, reason, info))
        except OSError:
            self.log.debug("Failed to send the error answer.")


# ---------------------------------------------------------------------------------------------------------
# the message


class _NotFinite(ValueError):
    pass


def _constant(name: str):
    raise _NotFinite(name)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotFinite(text)
    return value


def parse_json(raw: bytes | str) -> tuple[Any, str | None]:
    """The JSON value of ``raw`` and None, or None and what is wrong with it. orjson first (it refuses
    NaN, infinite numbers and nesting over 1024 levels); what it refuses goes to Python's json, which
    tells those apart from invalid JSON and still reads integers beyond 64 bits."""
    if orjson is not None:
        try:
            return orjson.loads(raw), None
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw, parse_constant=_constant, parse_float=_finite), None
    except _NotFinite as exc:
        return None, (
            f"NaN or infinite values are not accepted ({exc} in the JSON): impute them first, and send "
            "finite numbers"
        )
    except RecursionError:
        return None, f"the JSON is nested too deeply: a Seldon message needs at most {MAX_DEPTH} levels"
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"the request body is not valid JSON: {exc}"


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels (itself counted)."""
    stack = [(value, 1)] if type(value) in CONTAINERS else []
    while stack:
        obj, depth = stack.pop()
        if depth > limit:
            return True
        items = obj.values() if type(obj) is dict else obj
        if set(map(type, items)) & CONTAINERS:  # a C loop: most lists hold numbers only
            stack.extend((v, depth + 1) for v in items if type(v) in CONTAINERS)
    return False


def _tally(value: Any) -> tuple[int, int]:
    """(lists and objects, strings and keys) in ``value``, itself included."""
    containers = strings = 0
    stack = [value]
    while stack:
        obj = stack.pop()
        if type(obj) is str:
            strings += 1
            continue
        if type(obj) not in CONTAINERS:
            continue
        containers += 1
        items = obj.values() if type(obj) is dict else obj
        strings += len(obj) if type(obj) is dict else 0
        types = list(map(type, items))  # C loops: most lists hold numbers only
        strings += types.count(str)
        if types.count(list) or types.count(dict):
            stack.extend(v for v in items if type(v) in CONTAINERS)
    return containers, strings


_NUMERIC = b"0123456789.eE+-,: \t\r\n"  # what a JSON array of numbers is made of, besides its brackets


def numbers_only(msg: dict, raw: bytes | str) -> bool:
    """Whether ``data.ndarray``'s rows and ``data.tensor.values`` in ``msg``, parsed from ``raw``, can
    hold nothing but numbers, judged from the JSON text without looking at each value: ``raw`` holds
    no ``true``, ``false`` or ``null``, and no more brackets, braces and quotes than the rest of the
    message accounts for (a list, object or string inside a row would add its own). One C pass drops
    the characters numbers are written with; what is left is short."""
    rest = (raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")).translate(None, _NUMERIC)
    if b"tru" in rest or b"fals" in rest or b"null" in rest:  # true, false and null without their e
        return False
    data = dict(msg["data"])
    inside = 0
    if type(data.get("ndarray")) is list:
        inside += 1 + list(map(type, data["ndarray"])).count(list)  # the array and its rows, not their values
        data["ndarray"] = 0
    if type(data.get("tensor")) is dict and type(data["tensor"].get("values")) is list:
        inside += 1
        data["tensor"] = {**data["tensor"], "values": 0}
    containers, strings = _tally({**msg, "data": data})
    return rest.count(b"[") + rest.count(b"{") == containers + inside and rest.count(b'"') == 2 * strings


#: the values a row may hold for a model of category, text or image columns (images as base64 text)
RAW_VALUES = NUMBER | {str, bool, type(None)}


def ndarray_problem(arr: Any, numbers: bool = False, raw: bool = False) -> str | None:
    """``data.ndarray``: a list of rows of numbers, all of one width (or one row as a flat list);
    ``numbers``: the rows are known to hold numbers only (:func:`numbers_only`); ``raw``: the model takes
    raw values (text, true/false, null besides numbers; the model checks them per column)."""
    if type(arr) is not list:
        return f'"data.ndarray" must be a list of rows, e.g. [[0.0, 1.5, ...], ...], not {kind_of(arr)}'
    kinds = set(map(type, arr))
    if kinds <= (RAW_VALUES if raw else NUMBER):
        return None
    if kinds != {list}:
        if kinds <= NUMBER | {list}:
            return (
                '"data.ndarray" mixes numbers and rows: send a list of rows, [[...], ...], or one row, [...]'
            )
        i, v = next((i, v) for i, v in enumerate(arr) if type(v) not in NUMBER and type(v) is not list)
        return f'"data.ndarray" item {i} is {kind_of(v)}: each row must be a list of numbers'
    widths = set(map(len, arr))
    if len(widths) > 1:
        i = next(i for i, row in enumerate(arr) if len(row) != len(arr[0]))
        return f'"data.ndarray" is ragged: row {i} holds {len(arr[i])} values, row 0 holds {len(arr[0])}'
    if numbers or set(map(type, itertools.chain.from_iterable(arr))) <= (RAW_VALUES if raw else NUMBER):
        return None
    i, j, v = next((i, j, v) for i, row in enumerate(arr) for j, v in enumerate(row) if type(v) not in NUMBER)
    if type(v) in CONTAINERS:
        return (
            f'"data.ndarray" row {i}, value {j} is {kind_of(v)}: rows are nested deeper than [rows, features]'
        )
    hint = " (send true/false as 1 or 0)" if type(v) is bool else ""
    return f'"data.ndarray" row {i}, value {j} is {kind_of(v)}: features must be numbers{hint}'


def tensor_problem(t: Any, numbers: bool = False) -> str | None:
    """``data.tensor``: ``shape``, a list of non-negative integers, and ``values``, a flat list of numbers
    (``numbers``: known to be, :func:`numbers_only`)."""
    if type(t) is not dict:
        return f'"data.tensor" must be an object with "shape" and "values", not {kind_of(t)}'
    shape, values = t.get("shape"), t.get("values")
    if type(shape) is not list or not shape or not all(type(d) is int and d >= 0 for d in shape):
        return '"data.tensor.shape" must be a list of non-negative integers, e.g. [rows, features]'
    if type(values) is not list:
        return f'"data.tensor.values" must be a flat list of numbers, not {kind_of(values)}'
    if not numbers and not set(map(type, values)) <= NUMBER:
        i, v = next((i, v) for i, v in enumerate(values) if type(v) not in NUMBER)
        return f'"data.tensor.values" item {i} is {kind_of(v)}: values must be a flat list of numbers'
    if math.prod(shape) != len(values):
        return f'"data.tensor.shape" {shape} holds {math.prod(shape)} values but "values" has {len(values)}'
    return None


def meta_problem(meta: Any) -> str | None:
    """``meta``: the fields of Seldon's protocol, each of its type."""
    if type(meta) is not dict:
        return f'"meta" must be an object, not {kind_of(meta)}'
    unknown = sorted(set(meta) - META_KEYS)
    if unknown:
        return f'"meta" holds {unknown}: a Seldon message\'s meta has only {sorted(META_KEYS)}'
    if "puid" in meta and type(meta["puid"]) is not str:
        return '"meta.puid" must be a string'
    if "tags" in meta and type(meta["tags"]) is not dict:
        return f'"meta.tags" must be an object of name: value, not {kind_of(meta["tags"])}'
    for key, kind, what in (("routing", int, "an integer"), ("requestPath", str, "a string")):
        if key in meta and (
            type(meta[key]) is not dict or not all(type(v) is kind for v in meta[key].values())
        ):
            return f'"meta.{key}" must be an object whose values are each {what}'
    metrics = meta.get("metrics", [])
    if type(metrics) is not list or not all(_metric_ok(m) for m in metrics):
        return (
            '"meta.metrics" must be a list of {"key": name, "type": "COUNTER" | "GAUGE" | "TIMER", "value": '
            'number, "tags": {name: string}}'
        )
    return None


def _metric_ok(m: Any) -> bool:
    tags = m.get("tags", {}) if type(m) is dict else None
    return (
        type(m) is dict
        and type(m.get("key")) is str
        and m.get("type", "COUNTER") in METRIC_TYPES
        and type(m.get("value")) in NUMBER
        and type(tags) is dict
        and all(type(v) is str for v in tags.values())
    )


def message_problem(msg: Any, raw: bytes | str | None = None, raw_values: bool = False) -> str | None:
    """What is wrong with a Seldon message, or None (the model checks the rest: widths, names, rows);
    ``raw``: the JSON text it was parsed from, which can spare looking at every value of its rows;
    ``raw_values``: the model takes text and null values in ``data.ndarray`` rows too."""
    if type(msg) is not dict:
        return f"the body must be a JSON object (a Seldon message), not {kind_of(msg)}"
    if "meta" in msg and (problem := meta_problem(msg["meta"])):
        return problem
    for key, value in msg.items():
        if key != "data" and _too_deep(value, MAX_DEPTH - 1):
            return f'"{key}" is nested too deeply: a Seldon message needs at most {MAX_DEPTH} levels'
    return _data_problem(msg, raw, raw_values) if "data" in msg else None


def _data_problem(msg: dict, raw: bytes | str | None, raw_values: bool) -> str | None:
    """:func:`message_problem`'s check of the message's ``data``."""
    data = msg["data"]
    if type(data) is not dict:
        return (
            '"data" must be an object holding "ndarray" or "tensor", e.g. {"data": {"ndarray": [[...]]}}, '
            f"not {kind_of(data)}"
        )
    if type(names := data.get("names", [])) is not list:
        return (
            f'"data.names" must be a list of feature names (strings), not {kind_of(names)}: leave it out to '
            "send none"
        )
    if not all(type(n) is str for n in names):
        return '"data.names" must be a list of feature names (strings)'
    if "tftensor" in data:
        return '"data.tftensor" is not accepted: send "ndarray" or "tensor"'
    if "ndarray" not in data and "tensor" not in data:
        return '"data" must hold "ndarray" or "tensor"'
    for key, value in data.items():
        if key not in ("ndarray", "tensor") and _too_deep(value, MAX_DEPTH - 2):
            return f'"data.{key}" is nested too deeply: a Seldon message needs at most {MAX_DEPTH} levels'
    numbers = raw is not None and numbers_only(msg, raw)
    if "ndarray" in data and (problem := ndarray_problem(data["ndarray"], numbers, raw_values)):
        return problem
    return tensor_problem(data["tensor"], numbers) if "tensor" in data else None


def predict_problem(msg: Any, raw: bytes | str | None = None, inputs: Inputs = Inputs()) -> str | None:
    """What is wrong with a message to predict on: it carries exactly one of :data:`KINDS`, of a kind the
    model takes (``inputs``), then what :func:`message_problem` checks."""
    if type(msg) is not dict:
        return f"the body must be a JSON object (a Seldon message), not {kind_of(msg)}"
    kinds = [k for k in KINDS if k in msg]
    if not kinds:
        return 'the message has no "data" or "jsonData": send {"data": {"ndarray": [[...], ...]}}'
    if len(kinds) > 1:
        return f"the message carries {kinds}; send exactly one of them"
    kind, value = kinds[0], msg[kinds[0]]
    if inputs.generation and kind in ("data", "binData"):
        what = '"data" (ndarray or tensor)' if kind == "data" else '"binData"'
        return f"this model generates text and takes no {what}: send {GENERATION_HINT}"
    if kind in ("strData", "binData"):
        return raw_problem(kind, value, inputs) or message_problem(msg, raw, inputs.raw_values)
    if kind == "jsonData" and type(value) is not dict:
        return '"jsonData" must be an object: {"instances": [{feature: value, ...}, ...]} or one record'
    return message_problem(msg, raw, inputs.raw_values)


def raw_problem(kind: str, value: Any, inputs: Inputs) -> str | None:
    """``strData`` (the text of a one-text-column model) or ``binData`` (the base64 image of a
    one-image-column model)."""
    if kind not in inputs.raw_kinds:
        return (
            f'"{kind}" is not accepted by this model: send its features in "data" (ndarray with names) or '
            '"jsonData" records'
        )
    if kind == "strData":  # any text, the empty one too: the model reads it as training read empty text
        return None if type(value) is str else f'"strData" must be a string (the text), not {kind_of(value)}'
    if type(value) is not str or not value:
        return '"binData" must be a non-empty string (the image file\'s bytes, base64)'
    import base64
    import binascii

    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return '"binData" is not valid base64: send the image file\'s bytes base64-encoded'
    return None


def body_problem(
    kind: str, body: Any, raw: bytes | str | None = None, inputs: Inputs = Inputs()
) -> str | None:
    """``kind``: "predict" (a message to predict on, parsed from ``raw``), "message" (one for Seldon's
    other message routes), "feedback" (Seldon's Feedback) or "aggregate" (a list of messages in
    ``seldonMessages``)."""
    if kind == "predict":
        return predict_problem(body, raw, inputs)
    if kind == "message":
        return message_problem(body, raw, inputs.raw_values)
    if type(body) is not dict:
        return f"the body must be a JSON object, not {kind_of(body)}"
    if kind == "aggregate":
        msgs = body.get("seldonMessages")
        if type(msgs) is not list or set(body) != {"seldonMessages"}:
            return 'an aggregate request is {"seldonMessages": [message, ...]}'
        return next(
            (f"seldonMessages[{i}]: {p}" for i, m in enumerate(msgs) if (p := message_problem(m))), None
        )
    unknown = sorted(set(body) - {"request", "response", "reward", "truth"})
    if unknown:
        return f'feedback holds {unknown}: send {{"request": message, "response": message, "reward": number, "truth": message}}'
    if "reward" in body and type(body["reward"]) not in NUMBER:
        return '"reward" must be a number'
    # the truth may hold class names (strings), like a raw-values request
    return next(
        (
            f'"{k}": {p}'
            for k in ("request", "response", "truth")
            if k in body and (p := message_problem(body[k], None, raw_values=k == "truth"))
        ),
        None,
    )


# ---------------------------------------------------------------------------------------------------------
# the middleware


def check_origins(origins: list[str] | tuple[str, ...]) -> list[str]:
    """The CORS allow-list as given (``*``: any origin), each checked: ``scheme://host[:port]``."""
    out = []
    for origin in origins:
        origin = str(origin).strip().rstrip("/")
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(
                f"CORS origin {origin!r} is not scheme://host[:port] (e.g. https://app.example.com) or *"
            )
        out.append(origin)
    return out


class RequestChecks:
    """WSGI middleware in front of Seldon's Flask app (see the module's docstring)."""

    def __init__(
        self,
        app,
        flask_app,
        *,
        max_body: int,
        cors_origins: list[str] | tuple[str, ...] = (),
        inputs: Inputs = Inputs(),
    ):
        self.app, self.max_body, self.inputs = app, max_body, inputs
        self.origins = frozenset(check_origins(cors_origins))
        self.routes: dict[str, tuple[frozenset[str], str | None]] = {}
        for rule in flask_app.url_map.iter_rules():
            if rule.arguments:  # Flask's static route (Seldon's app serves no static files)
                continue
            methods = frozenset(rule.methods or ()) | {"OPTIONS"}
            self.routes[rule.rule] = (methods, MESSAGE_ENDPOINTS.get(rule.endpoint))

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        route = self.routes.get(path)
        if route is None:
            openai = (
                "; the OpenAI API (/v1/chat/completions, /v1/completions) is served by the mlserver runtime: "
                "deploy a text-generation version with deploy.runtime: mlserver"
                if path.startswith("/v1/")
                else ""
            )
            return _refuse(
                start_response,
                404,
                "NOT_FOUND",
                f"no such path {path!r}: the model answers POST /api/v1.0/predictions (see GET "
                f"/api/v1.0/metadata){openai}",
            )
        methods, kind = route
        method = environ.get("REQUEST_METHOD", "")
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:
            if method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
                return self._preflight(environ, start_response, origin, methods)
            start_response = self._cors(start_response, origin)
        if method not in methods:
            allowed = ", ".join(sorted(methods))
            return _refuse(
                start_response,
                405,
                "METHOD_NOT_ALLOWED",
                f"{method} is not allowed on {environ.get('PATH_INFO')}: use {allowed}",
                [("Allow", allowed)],
            )
        if kind is not None and method != "OPTIONS":
            refusal = self._check_message(environ, kind)
            if refusal is not None:
                return _refuse(start_response, *refusal)
        return self.app(environ, start_response)

    # -- CORS ----------------------------------------------------------------------------------------------
    def _allowed(self, origin: str) -> str | None:
        if origin in self.origins:
            return origin
        return "*" if "*" in self.origins else None

    def _cors(self, start_response, origin: str):
        allowed = self._allowed(origin)
        if allowed is None:
            return start_response

        def with_cors(status, headers, exc_info=None):
            headers = [h for h in headers if not h[0].lower().startswith("access-control-")]
            headers += [("Access-Control-Allow-Origin", allowed), ("Vary", "Origin")]
            return start_response(status, headers, exc_info)

        return with_cors

    def _preflight(self, environ, start_response, origin: str, methods: frozenset[str]):
        allowed = self._allowed(origin)
        if allowed is None:
            return _refuse(
                start_response,
                403,
                "CORS_ORIGIN_NOT_ALLOWED",
                f"origin {origin!r} may not call this "
                "server from a browser: list it in deploy.local.cors_origins",
            )
        headers = [
            ("Access-Control-Allow-Origin", allowed),
            ("Vary", "Origin"),
            ("Access-Control-Max-Age", "600"),
            ("Access-Control-Allow-Methods", ", ".join(sorted(methods))),
        ]
        asked = [
            h.strip() for h in environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "").split(",") if h.strip()
        ]
        if asked and all(_TOKEN.match(h) for h in asked):
            headers.append(("Access-Control-Allow-Headers", ", ".join(asked)))
        start_response("204 No Content", [*headers, ("Content-Length", "0")])
        return [b""]

    # -- the message -----------------------------------------------------------------------------------------
    def _check_message(self, environ, kind: str) -> tuple[int, str, str] | None:
        """Read the body (the worker buffered it), find the message the way Seldon's ``get_request``
        does (a form's ``json`` field, else ``?json=``, else the JSON body) and check it."""
        encoding = environ.get("HTTP_CONTENT_ENCODING", "").strip().lower()
        if encoding not in ("", "identity"):
            return (
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                f"Content-Encoding {encoding!r} is not accepted: send the body uncompressed",
            )
        stream = environ.get("wsgi.input")
        body = stream.read(self.max_body + 1) if stream is not None else b""
        if len(body) > self.max_body:
            refused = too_large(None, self.max_body)
            return refused.status, refused.reason, refused.info
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if mimetype == "multipart/form-data":  # Seldon reads every part of one as JSON, whatever ?json= says
            return (
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                "multipart/form-data is not supported: send the Seldon message as application/json",
            )
        raw = _first(urllib.parse.parse_qs(body)) if mimetype == FORM else None
        query = environ.get("QUERY_STRING", "")
        if not raw and ("json" in query or "%" in query):  # j%73on is json too
            raw = _first(urllib.parse.parse_qs(query.encode("latin-1")))
        if not raw:
            if mimetype == FORM:
                return 400, "BAD_PAYLOAD", "a form request needs a 'json' field holding the Seldon message"
            if mimetype != "application/json" and not mimetype.endswith("+json"):
                if not body and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
                    return (
                        400,
                        "BAD_PAYLOAD",
                        "no message: POST it as the JSON body (Content-Type: "
                        "application/json) or pass it as ?json=",
                    )
                return (
                    415,
                    "UNSUPPORTED_MEDIA_TYPE",
                    f"Content-Type {mimetype or '(none)'!r} is not supported: send application/json",
                )
            if not body.strip():
                return (
                    400,
                    "EMPTY_PAYLOAD",
                    'the request body is empty: send a Seldon message such as {"data": {"ndarray": [[...]]}}',
                )
            raw = body
        value, problem = parse_json(raw)
        if problem is None:
            problem = body_problem(kind, value, raw, self.inputs)
        if problem is not None:
            return 400, "BAD_PAYLOAD", problem
        if raw is body:
            environ[PARSED] = value
        return None


def _first(params: dict[bytes, list[bytes]]) -> str | None:
    """The first ``json`` field, decoded as werkzeug decodes a form (UTF-8, errors replaced)."""
    values = params.get(b"json")
    return values[0].decode("utf-8", "replace") if values else None


def _refuse(start_response, status: int, reason: str, info: str, extra: list | None = None):
    body = error_body(info, reason)
    start_response(
        f"{status} {reason_phrase(status)}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *(extra or [])],
    )
    return [body]


def install(
    flask_app, *, max_body: int, cors_origins: list[str] | tuple[str, ...] = (), inputs: Inputs = Inputs()
) -> RequestChecks:
    """Put the request checks in front of ``flask_app`` (its ``wsgi_app``, so Flask's own ``__call__`` stays) and
    take flask_cors out of it: they answer CORS from ``cors_origins`` alone. The JSON body they
    parsed is the request's ``get_json()`` (werkzeug's cache of it), not parsed a second time.
    ``inputs``: what the model takes besides rows of numbers."""
    _drop_flask_cors(flask_app)
    checks = RequestChecks(
        flask_app.wsgi_app, flask_app, max_body=max_body, cors_origins=cors_origins, inputs=inputs
    )
    flask_app.wsgi_app = checks
    base = flask_app.request_class
    if isinstance(getattr(base, "_cached_json", None), tuple):  # werkzeug 2.x: (normal, silent)

        class Request(base):
            def __init__(self, environ, *args, **kwargs):
                super().__init__(environ, *args, **kwargs)
                parsed = environ.get(PARSED)
                if parsed is not None:
                    self._cached_json = (parsed, parsed)

        flask_app.request_class = Request
    return checks


def _drop_flask_cors(app) -> None:
    """Seldon's app runs ``CORS(app)`` with its defaults, which answer every origin (the request's
    ``Origin`` reflected): remove its after-request hook and its wrappers of the exception handlers."""
    funcs = app.after_request_funcs.get(None, [])
    funcs[:] = [f for f in funcs if getattr(f, "__module__", "") != "flask_cors.extension"]
    for name in ("handle_exception", "handle_user_exception"):
        wrapped = app.__dict__.get(name)
        if wrapped is not None and getattr(wrapped, "__module__", "") == "flask_cors.extension":
            del app.__dict__[name]


__all__ = [
    "GENERATION_HINT",
    "MAX_DEPTH",
    "RequestChecks",
    "Inputs",
    "JsonErrors",
    "body_problem",
    "check_origins",
    "error_body",
    "error_response",
    "install",
    "message_problem",
    "numbers_only",
    "parse_json",
    "predict_problem",
    "protocol_error",
    "reason_phrase",
]
