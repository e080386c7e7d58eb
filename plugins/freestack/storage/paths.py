"""Paths inside a storage root: the root setting, safe joins, and URI helpers.

Every task hands the next one a URI; these helpers build those URIs and refuse any path
that would escape its root, whatever the encoding.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from freestack.errors import UnsafePathError

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_relative(path: str, *, what: str = "path") -> str:
    """Return ``path`` normalised (no empty segments) if it stays inside its root; raise otherwise.

    Rejected: absolute paths, ``..`` and ``.`` segments, backslashes, control characters, and any of
    these hidden behind percent-encoding (decoded repeatedly, so ``%252e%252e`` is caught too).
    """
    if not isinstance(path, str):
        raise UnsafePathError(f"{what} must be a string, got {type(path).__name__}")
    decoded = path
    for _ in range(5):
        nxt = unquote(decoded)
        if nxt == decoded:
            break
        decoded = nxt
    else:
        raise UnsafePathError(f"{what} {path!r} is encoded too many times; send the plain path")
    for candidate in (path, decoded):
        if _CONTROL.search(candidate):
            raise UnsafePathError(f"{what} {path!r} contains a control character")
        if "\\" in candidate:
            raise UnsafePathError(f"{what} {path!r} contains a backslash; use '/' between segments")
        if candidate.startswith("/") or re.match(r"^[A-Za-z]:", candidate) or candidate.startswith("~"):
            raise UnsafePathError(f"{what} {path!r} is absolute; give a path relative to the storage root")
        segments = candidate.split("/")
        if any(s in ("..", ".") for s in segments):
            raise UnsafePathError(
                f"{what} {path!r} contains a '..' or '.' segment, which could escape its root; "
                "give a plain relative path"
            )
    return "/".join(s for s in path.split("/") if s)


def join(root: ObjectStoragePath, *parts: str) -> ObjectStoragePath:
    """``root / parts`` after checking every part stays inside ``root``."""
    out = root
    for part in parts:
        rel = check_relative(part)
        if rel:
            out = out / rel
    return out


def uri_of(path: ObjectStoragePath) -> str:
    """The URI of a path; ObjectStoragePath keeps the connection id in it (``s3://conn@bucket/key``)."""
    return str(path)
