"""What a Data API request may name and send, checked before anything is read or written: its key
(``Authorization``), its data path (normalised, no escape, no name that displays as something else, no
percent-encoded separator), its JSON body (small, shallow), a listing's marker and a download's range.
Every refusal is an :class:`ApiError`, the status and the message the client gets."""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.requests import Request

from freestack.errors import UnsafePathError
from freestack.storage.acl import USER_RE
from freestack.storage.paths import check_relative

MAX_JSON_BODY = 64 * 1024


MAX_NAME_BYTES = 255


MAX_DEPTH = 64  # path segments, owner and collection included


MAX_PATH_BYTES = 1024  # a data path in UTF-8 (S3's limit for a key)


MAX_JSON_DEPTH = 32  # nesting of a request's JSON body


MAX_MARKER = 4096  # a listing marker's length (those handed out stay under 2,200)


class ApiError(Exception):
    """An answer other than success: HTTP status, message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def request_key(request: Request) -> str | None:
    raw = request.headers.get("authorization")
    if raw is None:
        return None
    raw = raw.strip()
    scheme, _, rest = raw.partition(" ")
    if rest and scheme.lower() in ("simple", "bearer"):
        return rest.strip()
    if not rest and raw:
        return raw
    raise ApiError(
        401,
        "the Authorization header must be 'Simple <key>' (or the bare key); "
        "create a key with `freestack keys create <user>`",
    )


def parse_data_path(raw: str) -> str:
    """The request's data path, normalised (Unicode NFC, no empty segments); ApiError 400 if it could escape,
    is too deep or too long, or holds a name that is malformed or would display as something else."""
    raw = unicodedata.normalize("NFC", raw)  # one name, one file, however the client composed it
    try:
        rel = check_relative(raw, what="data path")
    except UnsafePathError as exc:
        raise ApiError(400, str(exc)) from None
    parts = rel.split("/") if rel else []
    if len(parts) > MAX_DEPTH:
        raise ApiError(
            400,
            f"data path {shortened(raw)!r} is {len(parts)} levels deep; the limit is {MAX_DEPTH} levels "
            "(owner and collection included): use a flatter layout",
        )
    if len(rel.encode("utf-8")) > MAX_PATH_BYTES:
        raise ApiError(
            400,
            f"data path {shortened(raw)!r} is {len(rel.encode('utf-8'))} bytes long (UTF-8); the limit is "
            f"{MAX_PATH_BYTES} bytes: use shorter names or a flatter layout",
        )
    for i, seg in enumerate(parts):
        if i == 0 and seg == ".my":
            continue
        if seg.startswith("."):
            raise ApiError(
                400,
                f"data path {raw!r}: {seg!r} starts with '.', which is reserved (hidden temporaries and ACL "
                "documents); rename it without the leading dot",
            )
        if len(seg.encode("utf-8")) > MAX_NAME_BYTES:
            raise ApiError(400, f"data path {shortened(raw)!r}: a name is longer than {MAX_NAME_BYTES} bytes")
        problem = name_problem(seg)
        if problem:
            raise ApiError(400, f"data path {raw!r}: the name {seg!r} {problem}; choose a name without it")
    if parts and parts[0] != ".my" and not USER_RE.match(parts[0]):
        raise ApiError(
            400,
            f"data path {raw!r}: {parts[0]!r} is not a user name; paths are <owner>/<collection>/<name> "
            "(or .my/<collection>/<name>)",
        )
    return rel


#: characters that make a name display differently from what it is, by what they are
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


_ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff\u180e")


_CATEGORY = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Zl": "a line or paragraph separator",
    "Zp": "a line or paragraph separator",
    "Cs": "a lone surrogate (not a character)",
}


def name_problem(name: str) -> str | None:
    """What is wrong with one name (a path segment), as the end of a sentence; None if nothing is."""
    if name.isascii() and name.isprintable() and not name.isspace():
        return None
    if name.isspace():
        return "is only spaces, which no listing shows legibly"
    for ch in name:
        if ch in _BIDI:
            kind = "a bidirectional-text control character, which reorders how the name is displayed"
        elif ch in _ZERO_WIDTH:
            kind = "a zero-width (invisible) character"
        else:
            kind = _CATEGORY.get(unicodedata.category(ch))
            if kind is None:
                continue
        label = unicodedata.name(ch, "")
        return f"contains {kind} (U+{ord(ch):04X}{' ' + label if label else ''})"
    return None


#: escapes that no name may hold: the server decodes ``%2F`` into the ``/`` that separates names (``a%2Fb.txt``
#: would write ``a/b.txt``, ``%2Fevil`` ``evil``); ``%5C`` is a backslash, ``%00`` a NUL
_ENCODED_SEPARATOR = re.compile(rb"%(?:2f|5c|00)", re.IGNORECASE)


_MEANS = {b"2f": "'/'", b"5c": "backslash", b"00": "NUL byte"}


def check_escapes(request: Request) -> None:
    """400 if the raw request path (as sent, before the server decoded it) holds an encoded separator, at
    any level of encoding (``%252F`` is ``%2F`` once decoded), or is not valid UTF-8 once decoded."""
    raw = request.scope.get("raw_path") or b""
    if b"%" not in raw:
        return
    level = raw
    for _ in range(5):  # as freestack.storage.paths.check_relative decodes
        found = _ENCODED_SEPARATOR.search(level)
        if found:
            what = _MEANS[found.group()[1:].lower()]
            sent = shortened(raw.decode("ascii", "backslashreplace"))
            raise ApiError(
                400,
                f"the request path {sent!r} holds {found.group().decode()!r}, an encoded {what}: percent-encoded "
                "separators are refused, because decoded they would split or end a name (a%2Fb.txt would "
                "name a/b.txt). Nothing was read or written. Send '/' unencoded between names, and choose "
                "names without '/', backslashes or NUL",
            )
        decoded = unquote_to_bytes(level)
        if decoded == level:
            break
        level = decoded
    check_utf8(raw)


def check_utf8(raw: bytes) -> None:
    """400 unless the raw request path, its %XX escapes decoded, is valid UTF-8 (the server would otherwise
    turn every invalid sequence into U+FFFD, and different names into one)."""
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = unquote_to_bytes(raw)[exc.start : exc.end]
        raise ApiError(
            400,
            f"the request path is not valid UTF-8 once its %XX escapes are decoded (bytes {bad.hex(' ')}); "
            "names are UTF-8 text: percent-encode each byte of a name's UTF-8 form",
        ) from None


def shortened(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]}"


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` byte of a single ``bytes=`` range, None for the whole file (no/odd header)."""
    if not value:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise ValueError
            start, end = max(size - n, 0), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start < 0 or start >= size or start > end:
        raise ApiError(
            416, f"range {value!r} is outside the file ({size} bytes)", {"Content-Range": f"bytes */{size}"}
        )
    return start, end


def listing_marker(key: tuple) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def read_marker(text: str) -> tuple:
    value: Any = None
    if len(text) <= MAX_MARKER:
        try:
            value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, TypeError, RecursionError):
            value = None
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(type(v) is int and v in (0, 1) for v in value[:2])
        and isinstance(value[2], str)
    ):
        return (value[0], value[1], value[2])
    raise ApiError(
        400, f"marker {shortened(text, 60)!r} is not one this service handed out; list again without it"
    )


async def read_json_body(request: Request) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BODY:
            raise ApiError(
                413, f"the request body is over {MAX_JSON_BODY // 1024} KiB; send a small JSON object"
            )
        chunks.append(chunk)
    raw = b"".join(chunks).strip() or b"{}"
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ApiError(
            400,
            f"the request body is JSON nested more than {MAX_JSON_DEPTH} levels deep; send a flat object, "
            'e.g. {"name": "my_collection", "acl": {"read": ["user://*"]}}',
        )
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, 'the request body must be JSON, e.g. {"name": "my_collection"}') from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def json_depth(raw: bytes) -> int:
    """How deep ``raw``'s arrays and objects nest (brackets inside strings do not count); the scan stops
    once past MAX_JSON_DEPTH."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def if_match_header(header: str | None) -> str | None:
    """The sha256 an ``If-Match`` header names (``"<64 hex digits>"``, quoted or not), lower-cased; None
    without the header. Anything else is refused: it could never match, and the caller's write would
    only be refused later as if the object had changed."""
    tag = (header or "").strip().strip('"')
    if not tag:
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", tag):
        shown = tag if len(tag) <= 80 else tag[:77] + "..."
        raise ApiError(
            400,
            f"If-Match {shown!r} is not a content hash: give the sha256 (64 hex digits) of the "
            'version to replace, as "<sha256>"; nothing was written',
        )
    return tag.lower()


__all__ = [
    "ApiError",
    "MAX_DEPTH",
    "MAX_JSON_BODY",
    "MAX_JSON_DEPTH",
    "MAX_MARKER",
    "MAX_NAME_BYTES",
    "MAX_PATH_BYTES",
    "check_escapes",
    "check_utf8",
    "if_match_header",
    "json_depth",
    "listing_marker",
    "name_problem",
    "parse_data_path",
    "parse_range",
    "read_json_body",
    "read_marker",
    "request_key",
    "shortened",
]
