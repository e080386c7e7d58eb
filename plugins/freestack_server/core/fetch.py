"""Fetch a registered model version to a local folder, without Airflow.

Runs inside the serving environment (seldon-core 1.17.1's pins: numpy<2, no Airflow, no fsspec
providers), so it speaks to each store with the plainest client there is:

- ``file:///abs/path`` or a bare path: read in place;
- ``s3://[conn@]bucket/key``: boto3, with the standard ``AWS_*`` variables (``AWS_ENDPOINT_URL_S3`` or
  ``AWS_ENDPOINT_URL`` for an S3-compatible server); the ``conn@`` part names an Airflow connection and
  is ignored here: the deploy task turns the connection into those variables;
- ``data://owner/collection/path``: the Data API service over HTTP (``FREESTACK_DATA_API_URL``,
  ``FREESTACK_DATA_API_KEY``).

:class:`FetchSource` reads a version folder with these clients for
:func:`freestack.version.folder.open_folder`: the server serves a folder only when its ``_REGISTERED.json``
commit marker exists, and the version package checks every file against the sha256 the marker records, so
a half-copied or altered version never loads.

A URI may also name an alias instead of a version: ``<root>/registry/<model>@production`` (any alias
the registry keeps in ``registry/<model>/aliases.json``) is resolved by :func:`resolve_uri` to the
version the alias points at when it is read; every other URI is used as it is.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from freestack.registry.names import ALIAS_RE, ALIASES, VERSION_RE
from freestack.settings import settings


class FetchError(Exception):
    """The version cannot be fetched or is not a registered, intact version; the message says why."""


def _read_local(uri: str, name: str) -> bytes:
    path = Path(uri.removeprefix("file://")) / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(str(path)) from None


class TooLarge(FetchError):
    """A file over the size its reader allows (:func:`read_bounded`)."""


def _read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes. A symlink is followed (a
    Hugging Face cache's snapshot folder is symlinks to its blobs), and what it ends at must be a regular
    file too: opened without waiting (``O_NONBLOCK``: a FIFO's open would wait for a writer), then checked
    on the open file itself, so a device, FIFO or socket is never read and nothing is swapped in between."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(str(path)) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FetchError(f"{path} is not a regular file (a device, FIFO, socket or folder is never read)")
        if info.st_size > limit:
            raise TooLarge(f"{path} is {info.st_size} bytes, over the {limit} bytes it may hold")
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew while read
        raise TooLarge(f"{path} is over the {limit} bytes it may hold")
    return data


def read_bounded(uri: str, name: str, limit: int) -> bytes:
    """File ``name`` of the folder ``uri`` (local, ``s3://`` or ``data://``), refused (:class:`TooLarge`)
    past ``limit`` bytes; a local one only when it is a regular file (:func:`_read_regular`). For a file
    a client names: a remote read has its client's timeouts, a local regular file its bounded size."""
    if reader(uri) is _read_local:
        return _read_regular(Path(uri.removeprefix("file://")) / name, limit)
    data = reader(uri)(uri, name, limit)
    if len(data) > limit:
        raise TooLarge(f"{uri.rstrip('/')}/{name} is {len(data)} bytes, over the {limit} bytes it may hold")
    return data


def _s3_client():
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
    )


def _read_s3(uri: str, name: str, limit: int | None = None) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket_part, _, prefix = uri.removeprefix("s3://").partition("/")
    bucket = bucket_part.rsplit("@", 1)[-1]
    key = f"{prefix.rstrip('/')}/{name}" if prefix else name
    try:
        ranged = {} if limit is None else {"Range": f"bytes=0-{limit}"}  # one byte past: too large
        return _s3_client().get_object(Bucket=bucket, Key=key, **ranged)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "InvalidRange" and limit is not None:  # an empty object has no byte 0
            return b""
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(f"s3://{bucket}/{key}") from None
        raise FetchError(
            f"s3://{bucket}/{key}: {code or exc}; check the AWS_* credentials and endpoint"
        ) from exc
    except BotoCoreError as exc:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        raise FetchError(f"s3://{bucket}/{key}: cannot reach {endpoint} ({exc})") from exc


def _read_data_api(uri: str, name: str, limit: int | None = None) -> bytes:
    base = settings().data_api_url
    if not base:
        raise FetchError(
            f"{uri} is a data:// URI but FREESTACK_DATA_API_URL is not set; point it at the Data API service"
        )
    path = uri[len("data://") :].rstrip("/") + "/" + name
    url = f"{base.rstrip('/')}/v1/data/{urllib.parse.quote(path, safe='/')}"
    req = urllib.request.Request(url)
    key = settings().data_api_key
    if key:
        req.add_header("Authorization", f"Simple {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (the configured service)
            return resp.read(-1 if limit is None else limit + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(f"data://{path}") from None
        raise FetchError(
            f"data://{path}: the Data API answered {exc.code}; check FREESTACK_DATA_API_KEY"
        ) from exc
    except urllib.error.URLError as exc:
        raise FetchError(f"data://{path}: cannot reach the Data API at {base} ({exc.reason})") from exc


def reader(uri: str):
    if uri.startswith("s3://"):
        return _read_s3
    if uri.startswith("data://"):
        return _read_data_api
    if uri.startswith("file://") or "://" not in uri:
        return _read_local
    raise FetchError(f"cannot serve from {uri!r}: use a file://, s3:// or data:// model version URI")


def split_alias(uri: str) -> tuple[str, str, str] | None:
    """``(model folder URI, model, alias)`` when ``uri`` is ``<root>/registry/<model>@<alias>``, else None."""
    parent, sep, last = uri.rstrip("/").rpartition("/")
    if not sep or "@" not in last or parent.rpartition("/")[2] != "registry":
        return None
    model, _, alias = last.partition("@")
    if not model or not ALIAS_RE.match(alias):
        return None
    return f"{parent}/{model}", model, alias


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def model_name_of(uri: str) -> str | None:
    """The model a version or alias URI names: ``<model>`` of ``<root>/registry/<model>@<alias>``, else the
    folder holding the version (``<root>/registry/<model>/<version>``, or any ``.../<model>/<version>``);
    None when there is no such folder or its name is not one a URL path takes as it is."""
    parts = split_alias(uri)
    if parts is not None:
        name = parts[1]
    else:
        path = uri.rstrip("/").partition("://")[2] if "://" in uri else uri.rstrip("/")
        segments = [s for s in path.split("/") if s]
        name = segments[-2] if len(segments) >= 2 else ""
    return name if _NAME.match(name) else None


def resolve_uri(uri: str) -> str:
    """The version URI that ``uri`` means now: ``<root>/registry/<model>@<alias>`` becomes
    ``<root>/registry/<model>/<version>`` as ``registry/<model>/aliases.json`` says at this moment; any
    other URI is returned as it is (without reading anything)."""
    parts = split_alias(uri)
    if parts is None:
        return uri
    folder, model, alias = parts
    try:
        aliases = json.loads(reader(folder)(folder, ALIASES))
    except FileNotFoundError:
        raise FetchError(
            f"{uri}: model {model!r} has no {ALIASES} under {folder}: no version has been promoted to "
            f"{alias!r} yet (or the model name is wrong)"
        ) from None
    except json.JSONDecodeError as exc:
        raise FetchError(f"{folder}/{ALIASES} is not valid JSON ({exc})") from None
    if not isinstance(aliases, dict):
        raise FetchError(f"{folder}/{ALIASES} is not a JSON object of alias: version")
    version = aliases.get(alias)
    if not isinstance(version, str):
        known = sorted(a for a, v in aliases.items() if a != "history" and isinstance(v, str))
        raise FetchError(
            f"{uri}: model {model!r} has no {alias!r} alias (aliases: {', '.join(known) or 'none'}); "
            "promote a version first"
        )
    if not VERSION_RE.match(version):
        raise FetchError(f"{folder}/{ALIASES}: {alias!r} points at {version!r}, which is not a version name")
    return f"{folder}/{version}"


class FetchSource:
    """A version folder read with the server's plain clients (:func:`reader`): the
    :class:`freestack.version.sources.Source` the model server opens versions through."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self._read = reader(self.uri)

    def read(self, name: str) -> bytes:
        return self._read(self.uri, name)

    def local_dir(self) -> str | None:
        return None  # always copied into the server's cache, where the tokenizer is read again

    def read_base(self, uri: str, name: str) -> bytes:
        return reader(uri)(uri, name)


def put_bytes(uri: str, data: bytes) -> None:
    """Write one whole object (local files appear by rename, so never half-written)."""
    if uri.startswith("s3://"):
        bucket_part, _, key = uri.removeprefix("s3://").partition("/")
        _s3_client().put_object(Bucket=bucket_part.rsplit("@", 1)[-1], Key=key, Body=data)
        return
    if uri.startswith("data://"):
        base = settings().data_api_url
        if not base:
            raise FetchError(f"{uri}: FREESTACK_DATA_API_URL is not set")
        url = f"{base.rstrip('/')}/v1/data/{urllib.parse.quote(uri[len('data://') :], safe='/')}"
        req = urllib.request.Request(url, data=data, method="PUT")
        key = settings().data_api_key
        if key:
            req.add_header("Authorization", f"Simple {key}")
        req.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(req, timeout=60):  # noqa: S310 (the configured service)
            return
    if uri.startswith("file://") or "://" not in uri:
        path = Path(uri.removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    raise FetchError(f"cannot write to {uri!r}: use a file://, s3:// or data:// URI")
