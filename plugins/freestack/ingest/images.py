"""Image columns at ingest: each value is a path under the interval's landing folder (or, in a Parquet
landing file, the image's bytes); the file is read through the storage layer and checked with Pillow
(format, byte size, pixel count before decoding, a full decode), and the lake keeps its bytes as they
landed. A value that fails gets a reason, and its row goes to the quarantine.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from freestack.ingest.spec import ImageOptions

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

#: file suffixes that are images, never table files of the landing folder
IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"))
_MAX_PATH = 1024


@dataclass
class Checked:
    """Per value: the image's bytes (None when it failed or was empty), the reason it failed, and what
    the quarantine shows for it (the path, or the size of inline bytes)."""

    data: list[bytes | None]
    reasons: list[str | None]
    shown: list[str | None]


def image_problem(data: bytes, opts: ImageOptions) -> str | None:
    """What is wrong with one image's bytes, or None: size, format, pixels (before decoding), decoding."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > opts.max_bytes:
        return f"is {len(data):,} bytes, over source.images.max_bytes {opts.max_bytes:,}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in opts.formats:
                    return f"is {img.format}, not one of source.images.formats {opts.formats}"
                width, height = img.size
                if width * height > opts.max_pixels:
                    return f"is {width}x{height} pixels, over source.images.max_pixels {opts.max_pixels:,}"
                img.verify()
            with Image.open(io.BytesIO(data)) as img:  # verify() leaves the image unusable: decode a fresh one
                img.load()
    except UnidentifiedImageError:
        return "does not decode as an image (not a format Pillow knows)"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:  # fmt: skip
        return f"does not decode as an image ({str(exc)[:120] or type(exc).__name__})"
    return None


def relative_path(text: str) -> str | None:
    """``text`` as a path inside the landing folder, or None when it would leave it (absolute, ``..``,
    a URI or a drive)."""
    parts = text.replace("\\", "/").split("/")
    if not text or text.startswith("/") or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join(parts)


def _as_path(value: bytes) -> str | None:
    """An inline value that is a path (short UTF-8 text without NUL), else None (image bytes)."""
    if len(value) > _MAX_PATH or b"\x00" in value:
        return None
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def check_images(column: str, values: list[bytes | str | None], landing: ObjectStoragePath,
                 opts: ImageOptions) -> Checked:  # fmt: skip
    """Read and check each value of an image column (paths under ``landing``, or inline bytes)."""
    from freestack.storage import join

    out = Checked([], [], [])
    for value in values:
        data, reason, shown = None, None, None
        if value is not None:
            raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            path = _as_path(raw)
            if path is None:
                data, shown = raw, f"<{len(raw):,} bytes>"
            else:
                shown = path
                rel = relative_path(path)
                if rel is None:
                    reason = f"{column}: {path!r} is not a path inside the landing folder; give it relative to {landing}"
                else:
                    try:
                        data = join(landing, *rel.split("/")).read_bytes()
                    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                        reason = f"{column}: {rel}: no such file under the landing folder {landing}"
            if data is not None and reason is None:
                problem = image_problem(data, opts)
                if problem is not None:
                    reason = f"{column}: {shown} {problem}; replace the file or drop the row"
                    data = None
        out.data.append(data if reason is None else None)
        out.reasons.append(reason)
        out.shown.append(shown)
    return out


__all__ = ["IMAGE_SUFFIXES", "Checked", "check_images", "image_problem", "relative_path"]
