"""Compare-and-swap on small objects: the coordination primitive of the sweep controller.

Every object is read together with a *token* naming the exact version read; a write names the token
it expects and fails with :class:`CasConflict` if anyone changed the object in between:

- S3 (and S3-compatible servers): the token is the ETag; creation is ``PutObject`` with
  ``If-None-Match: *`` and replacement is ``PutObject`` with ``If-Match: <etag>``; the server decides,
  so it holds across machines.
- local folders (``file://``, ``data://`` over a folder): the token is the content's sha256;
  creation is an exclusive hard link of a fsynced temporary file, replacement is ``os.replace`` done
  while holding an exclusive ``flock`` on a hidden lock file beside the object. Readers take no lock:
  a rename is atomic, so they see either version, whole.

- ``data://`` served by the Data API service: the token is the content's sha256; creation is a PUT
  with ``If-None-Match: *``, replacement a PUT with ``If-Match: "<sha256>"``, which the service checks
  and applies as one step (objects up to 1 MiB, serialized within the service process).

Other backends have no conditional write; they get a clear error.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError, StorageFull
from freestack.storage.datafs import DataFileSystem
from freestack.storage.objects import (
    TMP_MARK,
    _fsync_dir,
    _makedirs,
    _precondition_failed,
    local_os_path,
    no_space_message,
    s3_answered,
)

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


class CasConflict(FreestackError):  # noqa: N818  (a normal outcome of a race, not a failure)
    """The object changed (or appeared, or vanished) since the caller read it."""


class CasUnsupported(FreestackError):
    """The storage backend has no conditional writes."""


@dataclass(frozen=True)
class Versioned:
    data: bytes
    token: str


def _s3_target(path: ObjectStoragePath) -> tuple[Any, str, str] | None:
    try:
        from s3fs import S3FileSystem
    except ImportError:  # pragma: no cover - s3fs is a dependency
        return None
    fs = path.fs
    inner = getattr(fs, "fs", None)  # a data:// folder over S3 is a DirFileSystem around s3fs
    full = path.path
    if not isinstance(fs, S3FileSystem) and isinstance(inner, S3FileSystem):
        full = fs._join(path.path)
        fs = inner
    if not isinstance(fs, S3FileSystem):
        return None
    bucket, key, _ = fs.split_path(full)
    return fs, bucket, key


def _http_target(path: ObjectStoragePath) -> tuple[Any, str] | None:
    """data:// served by a Data API service: (its HTTP filesystem, the path there)."""
    fs = path.fs
    if isinstance(fs, DataFileSystem) and fs.is_remote_api:
        return fs.fs, fs._join(path.path)
    return None


def _backend(path: ObjectStoragePath, *, write: bool) -> tuple[str, Any]:
    local = local_os_path(path, write=write)  # data:// checks the collection's ACL for this access
    if local is not None:
        return "local", local
    s3 = _s3_target(path)
    if s3 is not None:
        return "s3", s3
    http = _http_target(path)
    if http is not None:  # the service does If-None-Match and If-Match (tag: the content's sha256)
        return "http", http
    raise CasUnsupported(
        f"{path} is on a backend without conditional writes ({type(path.fs).__name__}); sweep state "
        "needs a storage root on local disk or on S3 (or an S3-compatible server)"
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _s3_call(fs, method: str, **kwargs):
    from fsspec.asyn import sync

    return sync(fs.loop, fs._call_s3, method, **kwargs)


def read(path: ObjectStoragePath) -> Versioned | None:
    """The object's bytes and version token, or None if it does not exist."""
    kind, target = _backend(path, write=False)
    if kind == "local":
        try:
            with open(target, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return Versioned(data, _sha(data))
    if kind == "http":
        fs, full = target
        resp = fs.request("GET", full, ok=(200, 404), what=f"read of {path}")
        if resp.status_code == 404:
            return None
        return Versioned(resp.content, _sha(resp.content))
    fs, bucket, key = target
    try:
        resp = _s3_call(fs, "get_object", Bucket=bucket, Key=key)
    except FileNotFoundError:
        return None
    from fsspec.asyn import sync

    async def body():
        async with resp["Body"] as stream:
            return await stream.read()

    data = sync(fs.loop, body)
    return Versioned(data, resp["ETag"])


def _http_put(target: Any, data: bytes, what: str, condition: dict[str, str]) -> bool:
    """PUT ``data`` through the Data API under ``condition`` (``If-None-Match`` or ``If-Match``):
    whether the condition held (the service answers 412 when it does not)."""
    fs, full = target
    headers = {**condition, "Content-Type": "application/octet-stream"}
    return fs.request("PUT", full, ok=(200, 412), data=data, what=what, headers=headers).status_code != 412


def create(path: ObjectStoragePath, data: bytes) -> str:
    """Create ``path`` with ``data`` if it does not exist; return the token. CasConflict if it does."""
    kind, target = _backend(path, write=True)
    if kind == "local":
        folder = os.path.dirname(target)
        _makedirs(folder)
        tmp = _write_tmp(target, data, str(path))
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise CasConflict(f"{path} already exists") from None
        finally:
            os.unlink(tmp)
        _fsync_dir(folder)
        return _sha(data)
    if kind == "http":
        if not _http_put(target, data, f"create of {path}", {"If-None-Match": "*"}):
            raise CasConflict(f"{path} already exists")
        return _sha(data)
    fs, bucket, key = target
    try:
        resp = _s3_call(fs, "put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except Exception as exc:
        if _precondition_failed(exc) or _conflict(exc):
            raise CasConflict(f"{path} already exists") from None
        raise
    fs.invalidate_cache(f"{bucket}/{key}")
    return resp["ETag"]


def replace(path: ObjectStoragePath, data: bytes, token: str) -> str:
    """Replace ``path`` with ``data`` if it is still the version ``token``; return the new token."""
    kind, target = _backend(path, write=True)
    if kind == "local":
        with _locked(target):
            try:
                with open(target, "rb") as f:
                    current = _sha(f.read())
            except FileNotFoundError:
                raise CasConflict(f"{path} no longer exists") from None
            if current != token:
                raise CasConflict(f"{path} changed since it was read")
            tmp = _write_tmp(target, data, str(path))
            os.replace(tmp, target)
            _fsync_dir(os.path.dirname(target))
        return _sha(data)
    if kind == "http":
        if not _http_put(target, data, f"replace of {path}", {"If-Match": f'"{token}"'}):
            raise CasConflict(
                f"{path} {'no longer exists' if read(path) is None else 'changed since it was read'}"
            )
        return _sha(data)
    fs, bucket, key = target
    try:
        resp = _s3_call(fs, "put_object", Bucket=bucket, Key=key, Body=data, IfMatch=token)
    except FileNotFoundError:
        raise CasConflict(f"{path} no longer exists") from None
    except Exception as exc:
        if _precondition_failed(exc) or _conflict(exc):
            gone = read(path) is None  # some servers answer 412 rather than 404 for a missing key
            raise CasConflict(
                f"{path} {'no longer exists' if gone else 'changed since it was read'}"
            ) from None
        raise
    fs.invalidate_cache(f"{bucket}/{key}")
    return resp["ETag"]


def _conflict(exc: BaseException) -> bool:
    """409 ConditionalRequestConflict: S3's answer when two conditional writes race each other."""
    return s3_answered(exc, "ConditionalRequestConflict", 409)


def _write_tmp(target: str, data: bytes, uri: str) -> str:
    """``data`` in a new temporary beside ``target`` (the object ``uri``); nothing is left behind when that
    fails (a full disk: StorageFull)."""
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name[:40]}{TMP_MARK}{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if StorageFull.caused(exc):
            raise StorageFull(exc.errno, no_space_message(exc, uri, target, len(data)), target) from exc
        raise
    return tmp


@contextmanager
def _locked(target: str):
    folder, name = os.path.split(target)
    fd = os.open(os.path.join(folder, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


__all__ = ["CasConflict", "CasUnsupported", "Versioned", "create", "read", "replace"]
