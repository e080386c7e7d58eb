"""Where an HTTP/1.1 request ends, read by the model server's workers before Seldon's app sees it
(:mod:`freestack_server.seldon.worker`): its framing (``Content-Length`` or chunked, one of them, within
``max_body_bytes``), its request line, and a chunked body decoded, each refusal a :class:`Refused` with the
4xx status it is answered with. Runs in the serving environment."""

from __future__ import annotations

import re


class Refused(Exception):
    """A request answered with ``status`` before it reaches the app (raised in a worker)."""

    def __init__(self, status: int, reason: str, info: str):
        super().__init__(info)
        self.status, self.reason, self.info = status, reason, info


class RequestTimeout(Refused):
    """The client did not send its whole request within the read deadline."""

    def __init__(self, seconds: float):
        super().__init__(
            408,
            "REQUEST_TIMEOUT",
            f"the request did not arrive whole within the read deadline "
            f"({seconds:.0f} s from its first byte): send each request at once",
        )


def framing(headers: list[tuple[str, str]], max_body: int) -> tuple[str, int]:
    """``("length", n)``, ``("chunked", 0)`` or ``("none", 0)`` for a request's headers (upper-case
    names, as gunicorn gives them); raises :class:`Refused` for framing a server must not guess at
    (both Content-Length and Transfer-Encoding, two of either, a coding other than ``chunked``), for a
    header value holding NUL, CR or LF (lines a proxy could split otherwise), and for a Content-Length
    above ``max_body``."""
    for _, value in headers:
        if "\x00" in value or "\r" in value or "\n" in value:
            raise _control_characters()
    lengths = [v for n, v in headers if n == "CONTENT-LENGTH"]
    codings = [v for n, v in headers if n == "TRANSFER-ENCODING"]
    return _framing(lengths, codings, max_body)


def _control_characters() -> Refused:
    return Refused(
        400,
        "BAD_HEADER",
        "a header holds a NUL, CR or LF character: end each header line with CRLF, "
        "and send no control characters in values",
    )


def _framing(lengths: list, codings: list, max_body: int) -> tuple[str, int]:
    if len(lengths) > 1 or len(codings) > 1:
        raise Refused(
            400,
            "BAD_FRAMING",
            "the request has more than one Content-Length or Transfer-Encoding header: send exactly one",
        )
    if codings:
        if lengths:
            raise Refused(
                400, "BAD_FRAMING", "the request has both Content-Length and Transfer-Encoding: send one"
            )
        coding = _text(codings[0])
        if coding.lower() != "chunked":
            raise Refused(
                400,
                "BAD_FRAMING",
                f"Transfer-Encoding {coding!r} is not supported: send the body with "
                "a Content-Length or Transfer-Encoding: chunked",
            )
        return "chunked", 0
    if not lengths:
        return "none", 0
    value = _text(lengths[0])
    if not value.isdigit() or not value.isascii():
        raise Refused(400, "BAD_FRAMING", f"Content-Length {value!r} is not a number of bytes")
    length = int(value)
    if length > max_body:
        raise too_large(length, max_body)
    return "length", length


def _text(value: str | bytes) -> str:
    return (value.decode("latin-1") if isinstance(value, bytes) else value).strip(" \t")


def too_large(length: int | None, max_body: int) -> Refused:
    what = f"{length} bytes" if length is not None else f"over {max_body} bytes"
    return Refused(
        413,
        "PAYLOAD_TOO_LARGE",
        f"the request body is {what}; at most {max_body} are accepted: send fewer rows per request",
    )


HEAD_LIMIT = 64 * 1024  # bytes of request line and headers (and of a chunked body's trailers)

_HEX = re.compile(rb"^[0-9A-Fa-f]{1,15}$")


class Frame:
    """Where the request arriving at the start of a connection's buffer ends, found as its bytes come
    in (:func:`request_end`): each byte is looked at about once, however the request is cut up."""

    __slots__ = (
        "head_end",
        "searched",
        "end",
        "pos",
        "trailers",
        "decoded",
        "expect",
        "continued",
        "line_ok",
    )

    def __init__(self):
        self.head_end = self.end = -1  # head_end: offset of the body; end: of the request (known length)
        self.searched = self.pos = self.decoded = 0  # pos: next chunk-size line; decoded: chunk bytes
        self.trailers = self.expect = self.continued = False
        self.line_ok = False  # the request line is whole and looks like HTTP/1.x (:func:`check_request_line`)


_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:([^\r]*)", re.IGNORECASE)

_CODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:([^\r]*)", re.IGNORECASE)

_EXPECT = re.compile(rb"\r\nexpect[ \t]*:[ \t]*100-continue[ \t]*\r", re.IGNORECASE)


def head_framing(head: bytes, max_body: int) -> tuple[str, int, bool]:
    """:func:`framing` of a request's head as it arrived (request line and header lines, each ending in
    CRLF), as gunicorn's parser will read it, and whether it expects ``100 Continue``. Refuses a NUL or
    a lone CR or LF anywhere in it, and header lines folded onto the next (obsolete)."""
    crlf = head.count(b"\r\n")
    if b"\x00" in head or head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        raise _control_characters()
    if b"\r\n " in head or b"\r\n\t" in head:
        raise Refused(
            400,
            "BAD_HEADER",
            "a header line starts with whitespace (obsolete line folding): send each header on one line",
        )
    kind, length = _framing(_LENGTH.findall(head), _CODING.findall(head), max_body)
    return kind, length, _EXPECT.search(head) is not None


METHOD_MAX = 32  # bytes of a method name (the longest registered one has 17)

_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

_CTL = re.compile(rb"[\x00-\x1f\x7f]")

_REQUEST_LINE = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1," + str(METHOD_MAX).encode() + rb"} [^\x00-\x20\x7f]+ HTTP/1\.[0-9]"
)


def not_http() -> Refused:
    return Refused(
        400,
        "NOT_HTTP",
        "the request is not HTTP/1.1: send a request line such as 'POST "
        "/api/v1.0/predictions HTTP/1.1' and end each line with CRLF (this server speaks neither TLS "
        "nor HTTP/2)",
    )


def check_request_line(buf: bytearray, frame: Frame) -> None:
    """Raise :class:`Refused` (400) as soon as what ``buf`` starts with cannot be an HTTP/1.x request
    line: binary data (a TLS ClientHello, a port scanner's probe) would otherwise be held until the read
    deadline and get a 408. Until the line is whole only its first bytes are looked at (the method, a
    control character); the whole line once, when its CRLF is in (HTTP/2's preface is refused here too).
    What the line may still be wrong in (the path, its length) is gunicorn's parser's to refuse."""
    eol = buf.find(b"\r\n", 0, 8192)
    if eol >= 0:
        if not _REQUEST_LINE.fullmatch(buf, 0, eol):
            raise not_http()
        frame.line_ok = True
        return
    start = bytes(buf[: METHOD_MAX + 1])
    space = start.find(b" ")
    method = start if space < 0 else start[:space]
    if len(method) > METHOD_MAX or not _TOKEN_BYTES.issuperset(method) or _CTL.search(start.rstrip(b"\r")):
        raise not_http()


def request_end(buf: bytearray, frame: Frame, max_body: int) -> int:
    """The offset in ``buf`` where the request it starts with ends, or -1 while some of it is still to
    come. Raises :class:`Refused` as soon as the request cannot be served: a start that is not HTTP/1.x
    (:func:`check_request_line`), headers over HEAD_LIMIT, framing :func:`framing` refuses, an invalid
    chunk, a body over ``max_body``."""
    if not frame.line_ok:
        check_request_line(buf, frame)
    if frame.head_end < 0:
        i = buf.find(b"\r\n\r\n", max(0, frame.searched - 3))
        if i < 0 or i > HEAD_LIMIT:
            frame.searched = len(buf)
            if len(buf) > HEAD_LIMIT:
                raise Refused(
                    431,
                    "HEADERS_TOO_LARGE",
                    f"the request line and headers exceed {HEAD_LIMIT} bytes: send fewer or shorter headers",
                )
            return -1
        frame.head_end = i + 4
        kind, length, frame.expect = head_framing(bytes(buf[: i + 2]), max_body)
        if kind == "chunked":
            frame.pos = frame.head_end
        else:
            frame.end = frame.head_end + length
    if frame.end >= 0:
        return frame.end if len(buf) >= frame.end else -1
    return chunks_end(buf, frame, max_body)


def chunks_end(buf: bytearray, frame: Frame, max_body: int) -> int:
    """:func:`request_end` for a chunked body: each chunk is ``size-in-hex[;ext] CRLF data CRLF``, the
    last one of size 0, then trailer lines and an empty line (gunicorn's ChunkedReader reads the same)."""
    pos, n = frame.pos, len(buf)
    while True:
        if frame.trailers:
            if n >= pos + 2 and buf[pos : pos + 2] == b"\r\n":
                return pos + 2
            i = buf.find(b"\r\n\r\n", pos)
            if i >= 0:
                return i + 4
            if n - pos > HEAD_LIMIT:
                raise Refused(
                    431, "HEADERS_TOO_LARGE", f"the chunked body's trailers exceed {HEAD_LIMIT} bytes"
                )
            break
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if n - pos > 1024:
                raise Refused(
                    400, "BAD_CHUNK", "a chunk-size line is longer than 1 KiB: send the size in hex digits"
                )
            break
        text = bytes(buf[pos:eol]).split(b";", 1)[0].strip(b" \t")
        if not _HEX.match(text):
            raise Refused(
                400, "BAD_CHUNK", f"invalid chunk size {text[:20]!r}: send each chunk's size in hex digits"
            )
        size = int(text, 16)
        if size == 0:
            frame.trailers, pos = True, eol + 2
            continue
        if frame.decoded + size > max_body:
            raise too_large(None, max_body)
        end = eol + 2 + size
        if n < end + 2:
            break
        if buf[end : end + 2] != b"\r\n":
            raise Refused(
                400, "BAD_CHUNK", f"a chunk of {size} bytes is not followed by CRLF: its size is wrong"
            )
        frame.decoded += size
        pos = end + 2
    frame.pos = pos
    return -1


def decode_chunked(raw: bytes) -> bytes:
    """The data of a chunked body that :func:`chunks_end` accepted (each chunk sliced once; gunicorn's
    own reader copies what is left of a chunk at every 1 KiB it reads)."""
    out, pos = [], 0
    while True:
        eol = raw.find(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";", 1)[0].strip(b" \t"), 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[eol + 2 : eol + 2 + size])
        pos = eol + 4 + size


__all__ = [
    "Frame",
    "HEAD_LIMIT",
    "METHOD_MAX",
    "Refused",
    "RequestTimeout",
    "check_request_line",
    "chunks_end",
    "decode_chunked",
    "framing",
    "head_framing",
    "not_http",
    "request_end",
    "too_large",
]
