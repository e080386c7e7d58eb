"""Image columns at ingest: each value is a path under the interval's landing folder (or, in a Parquet
landing file's binary column, the image's bytes); the file is read through the storage layer (local,
S3 or ``data://``, like the landing files) and checked with Pillow (format, byte size, pixel count
before anything is decoded, a full decode), and the lake keeps its bytes as they landed. A value that
fails gets a reason saying what is wrong and what to do, and its row goes to the quarantine.

Pillow is imported inside the functions: DAG files import nothing heavy at parse time.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from freestack.errors import UnsafePathError
from freestack.ingest.spec import ImageOptions
from freestack.storage.paths import check_relative, join

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: file suffixes that are images, never table files of the landing folder
IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"))
#: formats Pillow names differently from the family they belong to (MPO: a phone camera's JPEG)
_FORMAT_FAMILY = {"MPO": "JPEG"}
_READ_THREADS = 8  # image files read at once from an object store (each request waits a round trip)
_LOCAL = ("file", "local", "")  # local files are read one by one: threads only contend for the GIL there
_ADDRESS = re.compile(r" (at|object at) 0x[0-9a-fA-F]+")


@dataclass
class Checked:
    """Per value of an image column: the image's bytes (None when it failed or was empty), the reason it
    failed (None when it did not), and what the quarantine shows for it (the path, or the size of
    inline bytes)."""

    data: list[bytes | None]
    reasons: list[str | None]
    shown: list[str | None]


@dataclass(frozen=True)
class ImageFile:
    """One image file as read: its bytes (None when over ``max_bytes``), its size and the sha256 of all
    its bytes (None: there is no such file)."""

    data: bytes | None
    size: int
    sha256: str | None


def image_rows(opts: ImageOptions) -> int:
    """How many rows of an image column are read and checked at a time: at most about 1 GiB of images
    held at once (and an Arrow binary array stays under its 2 GiB), between 8 and 256 rows."""
    return max(8, min(256, (1 << 30) // opts.max_bytes))


def read_image_file(path: ObjectStoragePath, max_bytes: int) -> ImageFile:
    """Read ``path`` in chunks, hashing every byte, keeping the bytes only up to ``max_bytes``."""
    digest, chunks, size = hashlib.sha256(), [], 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
                digest.update(chunk)
                if size <= max_bytes:
                    chunks.append(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return ImageFile(None, 0, None)
    return ImageFile(b"".join(chunks) if size <= max_bytes else None, size, digest.hexdigest())


def read_image_files(paths: Sequence[ObjectStoragePath], max_bytes: int) -> list[ImageFile]:
    """:func:`read_image_file` of each path, in the paths' order (from an object store, a few at a time)."""
    if len(paths) < 2 or paths[0].protocol in _LOCAL:
        return [read_image_file(p, max_bytes) for p in paths]
    with ThreadPoolExecutor(min(_READ_THREADS, len(paths)), thread_name_prefix="freestack-images") as pool:
        return list(pool.map(lambda p: read_image_file(p, max_bytes), paths))


def _clean(exc: BaseException) -> str:
    """An exception's message without object addresses (the quarantine's bytes must not vary)."""
    text = _ADDRESS.sub("", str(exc)).strip() or type(exc).__name__
    return text[:160]


def _decode(data: bytes, opts: ImageOptions) -> str | None:
    """Format and pixel count from the header, then ``verify()`` and a full decode of a fresh open."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        fmt = _FORMAT_FAMILY.get(img.format, img.format)
        if fmt not in opts.formats:
            return f"is {img.format}, not one of source.images.formats {opts.formats}"
        width, height = img.size
        if width * height > opts.max_pixels:
            return f"is {width}x{height} pixels, over source.images.max_pixels {opts.max_pixels:,}"
        img.verify()
    with Image.open(io.BytesIO(data)) as img:  # verify() leaves the image unusable: decode a fresh one
        img.load()
    return None


def image_problem(data: bytes, opts: ImageOptions) -> str | None:
    """What is wrong with one image's bytes, or None: byte size, format, pixels (read from the header,
    before decoding), then whether it decodes fully (a truncated file does not)."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > opts.max_bytes:
        return f"is {len(data):,} bytes, over source.images.max_bytes {opts.max_bytes:,}"
    if not data:
        return "is empty (0 bytes)"
    try:
        with warnings.catch_warnings():
            # the pixel count is checked against source.images.max_pixels before decoding; Pillow's own
            # warning (past ~89M pixels) would refuse images a larger max_pixels allows
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _decode(data, opts)
    except UnidentifiedImageError:
        return "does not decode as an image (not a format Pillow knows)"
    except Image.DecompressionBombError as exc:  # past twice Pillow's limit: it refuses to open it at all
        return f"is over Pillow's decompression-bomb limit ({_clean(exc)})"
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001  (truncated or malformed files fail in many ways)
        return f"does not decode as an image ({_clean(exc)})"


def relative_path(text: str) -> str | None:
    """``text`` as a plain path inside the landing folder (``./`` and ``\\`` allowed), or None when it
    would leave it or name another place: absolute, ``..`` (also percent-encoded), ``~``, a URI or a drive."""
    text = text.strip().replace("\\", "/")
    if not text or "://" in text or ":" in text.split("/", 1)[0] or text.startswith(("/", "~")):
        return None
    try:
        rel = check_relative("/".join(p for p in text.split("/") if p not in ("", ".")))
    except UnsafePathError:
        return None
    return rel or None


def _as_text(value: bytes | str) -> str | None:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _value(column: str, value: bytes | str, inline: bool, landing: ObjectStoragePath):
    """One non-null value: (shown, inline bytes or None, the path to read or None, reason or None)."""
    if inline and isinstance(value, bytes):
        return f"<{len(value):,} bytes>", value, None, None
    text = _as_text(value)
    if text is None:
        shown = bytes(value).decode("utf-8", "replace")
        return (
            shown,
            None,
            None,
            f"{column}: {shown[:80]!r} is not UTF-8 text; give the image's path under {landing}",
        )
    if not text.strip():
        return None, None, None, None  # empty: a missing value (nullable decides)
    rel = relative_path(text)
    if rel is None:
        why = (
            f"{column}: {text[:200]!r} is not a path inside the landing folder; give it relative to {landing}"
        )
        return text, None, None, why + " (no '..', no leading '/', no scheme)"
    return text, None, rel, None


def check_images(
    column: str,
    values: list[bytes | str | None],
    landing: ObjectStoragePath,
    opts: ImageOptions,
    *,
    inline: bool = False,
) -> Checked:
    """Read and check each value of an image column: a path under ``landing`` (text, or UTF-8 bytes as a
    CSV gives them); with ``inline`` (a Parquet file), a ``bytes`` value is the image itself."""
    n = len(values)
    out = Checked([None] * n, [None] * n, [None] * n)
    paths: dict[int, str] = {}
    for i, value in enumerate(values):
        if value is not None:
            out.shown[i], out.data[i], rel, out.reasons[i] = _value(column, value, inline, landing)
            if rel is not None:
                paths[i] = rel
    unique = list(dict.fromkeys(paths.values()))  # a file named by several rows is read and checked once
    read = read_image_files([join(landing, r) for r in unique], opts.max_bytes)
    files = {rel: (f, _problem(column, rel, f, opts, landing)) for rel, f in zip(unique, read, strict=True)}
    for i, rel in paths.items():
        out.data[i], out.reasons[i] = files[rel][0].data, files[rel][1]
    for i in range(n):
        if out.data[i] is not None and out.reasons[i] is None and i not in paths:  # inline bytes
            problem = image_problem(out.data[i], opts)
            out.reasons[i] = (
                None
                if problem is None
                else f"{column}: {out.shown[i]} {problem}; replace the file or drop the row"
            )
        if out.reasons[i] is not None:
            out.data[i] = None
    return out


def _problem(
    column: str, rel: str, f: ImageFile, opts: ImageOptions, landing: ObjectStoragePath
) -> str | None:
    """The reason an image file read from ``rel`` fails (missing, too large, not a good image), or None."""
    if f.sha256 is None:
        return f"{column}: {rel}: no such file under the landing folder {landing}; add it or drop the row"
    if f.data is None:
        problem = f"is {f.size:,} bytes, over source.images.max_bytes {opts.max_bytes:,}"
    else:
        problem = image_problem(f.data, opts)
    return None if problem is None else f"{column}: {rel} {problem}; replace the file or drop the row"


def check_files(
    column: str, rels: list[str], files: list[ImageFile], opts: ImageOptions, landing: ObjectStoragePath
) -> Checked:
    """Check image files already read (an image folder's), shown by their paths ``rels``."""
    out = Checked([], [], list(rels))
    for rel, f in zip(rels, files, strict=True):
        reason = _problem(column, rel, f, opts, landing)
        out.reasons.append(reason)
        out.data.append(f.data if reason is None else None)
    return out


__all__ = [
    "IMAGE_SUFFIXES",
    "Checked",
    "ImageFile",
    "check_files",
    "check_images",
    "image_problem",
    "image_rows",
    "read_image_file",
    "read_image_files",
    "relative_path",
]
