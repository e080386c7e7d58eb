"""``data://`` through the Data API service: an fsspec filesystem that speaks its REST protocol.

A ``freestack_data`` connection whose root is ``http(s)://...`` makes ``DataFileSystem`` wrap this
filesystem instead of a folder or an S3 prefix: every task then reads and writes through the service
with the connection's API key, and the service applies the ACLs for the key's user.

Paths here are already resolved (``owner/collection/...``, no ``.my``). What maps to what:

- ``info``: ``HEAD`` (``X-Data-Type``, ``Content-Length``, ``Last-Modified``);
- ``ls``: ``GET`` of the directory, following ``marker`` until the listing ends;
- reading: ``GET`` with ``Range`` for each block, so pyarrow's random access (Parquet footers) works
  and memory stays at the block size;
- writing: one streamed ``PUT`` (chunked transfer encoding) fed by a bounded queue; the service
  publishes the file only when the whole body arrived, so an aborted write (``discard()``, a killed
  task, a dropped connection) never leaves a partial file. ``xb`` sends ``If-None-Match: *``;
- ``mkdir``/``makedirs``: ``POST`` to the parent with ``{"name": ...}``; ``rm``: ``DELETE``
  (``?force=true`` for a recursive delete).

Errors keep their meaning: 404 is FileNotFoundError, 401/403 AccessDenied, 409/412 FileExistsError.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import threading
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import quote

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from freestack.errors import AccessDenied, FreestackError, StorageFull
from freestack.storage.acl import Acl
from freestack.storage.objects import PublishOnExit

BLOCK = 8 * 1024 * 1024  # read block (one ranged GET)
UPLOAD_CHUNK = 4 * 1024 * 1024  # what one queued upload chunk holds
UPLOAD_QUEUE = 4  # chunks in flight between the writer and the sending thread
TIMEOUT = (10, 300)  # connect, read (seconds)


#: where a Data API service serves ``data://`` (the service mounts its routes under it)
API_PREFIX = "/v1/data"


class DataApiUnavailable(FreestackError, ConnectionError):
    """The Data API service could not be reached."""


def _message(resp) -> str:
    msg = resp.headers.get("X-Error-Message")
    if not msg:
        try:
            body = resp.json()
            msg = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        except ValueError:
            msg = None
    return msg or (resp.text or "").strip()[:500] or resp.reason or f"HTTP {resp.status_code}"


def _raise_for(resp, what: str) -> NoReturn:
    """The OSError (or AccessDenied) an fsspec caller expects for an error response."""
    status = resp.status_code
    msg = f"{what}: {_message(resp)}"
    if status == 404:
        raise FileNotFoundError(errno.ENOENT, msg)
    if status == 401:
        raise AccessDenied(msg, anonymous=True)
    if status == 403:
        raise AccessDenied(msg)
    if status in (409, 412):
        if "not empty" in msg:
            raise OSError(errno.ENOTEMPTY, msg)
        if "is a directory" in msg:
            raise IsADirectoryError(errno.EISDIR, msg)
        raise FileExistsError(errno.EEXIST, msg)
    if status == 400:
        raise OSError(errno.EINVAL, msg)
    if status == 507:  # the service's disk is full
        raise StorageFull(errno.ENOSPC, msg)
    raise OSError(errno.EIO, f"{msg} (HTTP {status})")


def _body(resp) -> bytes:
    """A streamed response's whole body in one read (``.content`` would gather it 10 KiB at a time)."""
    data = resp.raw.read(decode_content=True)
    expected = resp.headers.get("Content-Length")
    if expected is not None and len(data) != int(expected):
        raise OSError(errno.EIO, f"{resp.url}: the body ended after {len(data)} of {expected} bytes")
    return data


def _epoch(http_date: str | None) -> float | None:
    if not http_date:
        return None
    try:
        return parsedate_to_datetime(http_date).timestamp()
    except (TypeError, ValueError):
        return None


def _listing_epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class DataApiHttpFileSystem(AbstractFileSystem):
    """The Data API service at ``url`` (e.g. ``http://127.0.0.1:8765``) as a filesystem of
    ``owner/collection/...`` paths, authenticated with ``api_key`` (None: anonymous)."""

    protocol = ("freestack-data-api",)  # never registered: only DataFileSystem wraps it
    root_marker = ""
    sep = "/"
    cachable = False
    is_data_api = True

    def __init__(self, url: str, api_key: str | None = None, *, expect_user: str | None = None, **kwargs):
        super().__init__(**kwargs)
        import requests
        from requests.adapters import HTTPAdapter

        self.url = url.rstrip("/")
        self.api_key = api_key
        self.expect_user = expect_user
        self.session = requests.Session()
        self.session.trust_env = False  # no proxies from the environment for a service we were pointed at
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # -- plumbing --------------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return str(path).strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return self.data_url(name)

    def data_url(self, path: str) -> str:
        path = self._strip_protocol(path)
        return f"{self.url}{API_PREFIX}/{quote(path, safe='/')}" if path else f"{self.url}{API_PREFIX}/"

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        if self.api_key:
            headers["Authorization"] = f"Simple {self.api_key}"
        if extra:
            headers.update(extra)
        return headers

    def request(self, method: str, path: str, *, what: str | None = None, ok=(200,), url=None, **kwargs):
        import requests

        kwargs.setdefault("timeout", TIMEOUT)
        headers = self._headers(kwargs.pop("headers", None))
        target = url or self.data_url(path)
        try:
            resp = self.session.request(method, target, headers=headers, **kwargs)
        except requests.ConnectionError as exc:
            raise DataApiUnavailable(
                f"the Data API at {self.url} cannot be reached ({exc.__class__.__name__}); is it running? "
                "Start it with `freestack data-api` or check the connection's URL"
            ) from exc
        if resp.status_code not in ok:
            try:
                _raise_for(resp, what or f"{method} data://{self._strip_protocol(path)}")
            finally:
                resp.close()
        return resp

    def whoami(self) -> str | None:
        """The user the API key belongs to (None without a key); checks ``expect_user``."""
        if not self.api_key:
            return None
        resp = self.request("GET", "", url=f"{self.url}/v1/freestack/whoami", what="sign-in at the Data API")
        user = resp.json().get("username")
        if self.expect_user and user != self.expect_user:
            raise FreestackError(
                f"the data:// connection names user {self.expect_user!r}, but its API key belongs to {user!r}; "
                "fix the connection's login (or leave it empty)"
            )
        return user

    # -- reads -----------------------------------------------------------------------------------------

    def info(self, path, **kwargs) -> dict[str, Any]:
        path = self._strip_protocol(path)
        resp = self.request("HEAD", path, what=f"info of data://{path}")
        kind = resp.headers.get("X-Data-Type", "file")
        out: dict[str, Any] = {"name": path, "type": "directory" if kind == "directory" else "file"}
        if out["type"] == "file":
            out["size"] = int(resp.headers.get("Content-Length", 0))
            out["mtime"] = _epoch(resp.headers.get("Last-Modified"))
        else:
            out["size"] = 0
        return out

    def _type(self, path) -> str | None:
        """``file`` or ``directory``; None when nothing is at ``path``."""
        try:
            return self.info(path)["type"]
        except FileNotFoundError:
            return None

    def exists(self, path, **kwargs) -> bool:
        return self._type(path) is not None

    def isfile(self, path) -> bool:
        return self._type(path) == "file"

    def isdir(self, path) -> bool:
        return self._type(path) == "directory"

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        prefix = f"{path}/" if path else ""
        out: list[dict[str, Any]] = []
        marker = None
        while True:
            params = {"marker": marker} if marker else None
            resp = self.request("GET", path, params=params, stream=True, what=f"listing of data://{path}")
            with resp:
                if resp.headers.get("X-Data-Type") == "file":  # fsspec: ls of a file is the file
                    resp.close()
                    return [self.info(path)] if detail else [path]
                body = resp.json()
            for d in body.get("folders") or []:
                out.append({"name": prefix + d["name"], "type": "directory", "size": 0})
            for f in body.get("files") or []:
                out.append(
                    {
                        "name": prefix + f["filename"],
                        "type": "file",
                        "size": int(f.get("size") or 0),
                        "mtime": _listing_epoch(f.get("last_modified")),
                    }
                )
            marker = body.get("marker")
            if not marker:
                break
        return out if detail else [e["name"] for e in out]

    def cat_file(self, path, start=None, end=None, **kwargs) -> bytes:
        path = self._strip_protocol(path)
        headers = None
        if start is not None or end is not None:
            size = None
            if start is not None and start < 0 or end is not None and end < 0:
                size = self.info(path)["size"]
            lo = 0 if start is None else (start if start >= 0 else max(size + start, 0))
            hi = None if end is None else (end if end >= 0 else size + end)
            if hi is not None and hi <= lo:
                return b""
            headers = {"Range": f"bytes={lo}-" + ("" if hi is None else str(hi - 1))}
        resp = self.request(
            "GET", path, headers=headers, ok=(200, 206), stream=True, what=f"read of data://{path}"
        )
        with resp:
            if resp.headers.get("X-Data-Type") == "directory":
                raise IsADirectoryError(errno.EISDIR, f"data://{path} is a directory")
            return _body(resp)

    def modified(self, path) -> datetime:
        mtime = self.info(path).get("mtime")
        if mtime is None:
            raise FileNotFoundError(errno.ENOENT, f"data://{path} has no modification time")
        return datetime.fromtimestamp(mtime, tz=UTC)

    def invalidate_cache(self, path=None) -> None:
        """Nothing is cached: every call asks the service."""

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        path = self._strip_protocol(path)
        if "r" in mode:
            info = self.info(path)
            if info["type"] != "file":
                raise IsADirectoryError(errno.EISDIR, f"data://{path} is a directory")
            return _RangeReader(
                self,
                path,
                mode=mode,
                block_size=block_size or BLOCK,
                size=info["size"],
                cache_options=cache_options,
                **kwargs,
            )
        if "a" in mode or "+" in mode:
            raise ValueError(
                f"data:// over the Data API cannot open files in mode {mode!r}; use 'rb' or 'wb'"
            )
        return StreamingUpload(self, path, if_absent="x" in mode)

    # -- writes ----------------------------------------------------------------------------------------

    def pipe_file(self, path, value, **kwargs) -> None:
        path = self._strip_protocol(path)
        headers = {"Content-Type": "application/octet-stream"}
        if kwargs.get("mode") == "create":
            headers["If-None-Match"] = "*"
        self.request("PUT", path, data=bytes(value), headers=headers, what=f"write of data://{path}")

    def mkdir(self, path, create_parents=True, **kwargs) -> None:
        path = self._strip_protocol(path)
        if create_parents:
            return self.makedirs(path, exist_ok=False, acl=kwargs.get("acl"))
        self._create(path, acl=kwargs.get("acl"))

    def makedirs(self, path, exist_ok=False, acl=None) -> None:
        path = self._strip_protocol(path)
        parts = path.split("/")
        if len(parts) < 2:  # an owner's namespace always exists
            if exist_ok:
                return
            raise FileExistsError(errno.EEXIST, f"data://{path} is an owner's namespace; it always exists")
        for depth in range(2, len(parts) + 1):
            sub = "/".join(parts[:depth])
            last = depth == len(parts)
            if not last and self.isdir(sub):
                continue
            try:
                self._create(sub, acl=acl if last else None)
            except FileExistsError:
                if last and not exist_ok:
                    raise

    def _create(self, path: str, acl=None) -> None:
        parent, _, name = path.rpartition("/")
        body: dict[str, Any] = {"name": name}
        if acl is not None:
            body["acl"] = acl.to_json()
        self.request("POST", parent, json=body, what=f"create data://{path}")

    def rm_file(self, path, **kwargs) -> None:
        path = self._strip_protocol(path)
        self.request("DELETE", path, what=f"delete data://{path}")

    def rm(self, path, recursive=False, maxdepth=None) -> None:
        paths = path if isinstance(path, list) else [path]
        for p in paths:
            p = self._strip_protocol(p)
            params = {"force": "true"} if recursive else None
            self.request("DELETE", p, params=params, what=f"delete data://{p}")

    def rmdir(self, path) -> None:
        path = self._strip_protocol(path)
        self.request("DELETE", path, what=f"delete directory data://{path}")

    def cp_file(self, path1, path2, **kwargs) -> None:
        with self.open(path1, "rb") as src, self.open(path2, "wb") as dst:
            while chunk := src.read(BLOCK):
                dst.write(chunk)

    def get_acl(self, path: str):
        resp = self.request("GET", path, params={"acl": "true"}, what=f"ACL of data://{path}")
        return Acl.parse(resp.json().get("acl"), where=f"ACL of data://{path}")

    def set_acl(self, path: str, acl) -> None:
        self.request("PATCH", path, json={"acl": acl.to_json()}, what=f"ACL update of data://{path}")

    def __repr__(self) -> str:
        return f"DataApiHttpFileSystem({self.url!r}, api_key={'***' if self.api_key else None})"


class _RangeReader(AbstractBufferedFile):
    """A file read block by block with ranged GETs."""

    def _fetch_range(self, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        resp = self.fs.request(
            "GET",
            self.path,
            headers={"Range": f"bytes={start}-{end - 1}"},
            ok=(200, 206),
            stream=True,
            what=f"read of data://{self.path}",
        )
        with resp:
            data = _body(resp)
        if resp.status_code == 200:  # the whole file came back (a server without ranges)
            data = data[start:end]
        if len(data) != min(end, self.size) - start:
            raise OSError(
                errno.EIO,
                f"data://{self.path} changed while it was read (asked bytes {start}-{end - 1}, got {len(data)}); "
                "read it again",
            )
        return data


_END = object()
_ABORT = object()


class _Aborted(Exception):
    """Raised inside the request body to drop the connection: the service discards the upload."""


class StreamingUpload(PublishOnExit):
    """A write-only file: one ``PUT`` whose body is streamed from ``write()`` calls.

    ``close()`` finishes the body and waits for the service to publish the file (errors raise there);
    ``discard()`` drops the connection mid-body, so the service publishes nothing. Memory is bounded by
    ``UPLOAD_QUEUE`` chunks of ``UPLOAD_CHUNK`` bytes.
    """

    def __init__(self, fs: DataApiHttpFileSystem, path: str, *, if_absent: bool = False):
        self.fs = fs
        self.path = path
        self.if_absent = if_absent
        self.closed = True  # until the sending thread runs there is nothing to finish or drop
        self._buf: list[bytes] = []
        self._buffered = 0
        self._q: queue.Queue = queue.Queue(maxsize=UPLOAD_QUEUE)
        self._resp = None
        self._error: BaseException | None = None
        # ask first whether this may be written: a refusal then says why, before any byte is sent
        fs.request("HEAD", path, params={"access": "write"}, ok=(200, 204), what=f"write of data://{path}")
        self._thread = threading.Thread(target=self._send, name=f"data-api-put-{path[-40:]}", daemon=True)
        self._thread.start()
        self.closed = False

    def _body(self):
        while True:
            item = self._q.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted()
            yield item

    def _send(self) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        if self.if_absent:
            headers["If-None-Match"] = "*"
        try:
            self._resp = self.fs.session.put(
                self.fs.data_url(self.path),
                data=self._body(),
                headers=self.fs._headers(headers),
                timeout=TIMEOUT,
            )
        except BaseException as exc:  # noqa: BLE001  (reported by close())
            self._error = exc

    def _enqueue(self, item) -> None:
        while True:
            if not self._thread.is_alive():
                self._finish_error()
                raise OSError(errno.EIO, f"upload of data://{self.path} stopped")
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def write(self, data) -> int:
        if self.closed:
            raise ValueError(f"write to data://{self.path} after close")
        view = memoryview(data).cast("B")
        n = view.nbytes
        if n:
            self._buf.append(bytes(view))
            self._buffered += n
            if self._buffered >= UPLOAD_CHUNK:
                self._flush_buffer()
        return n

    def _flush_buffer(self) -> None:
        if self._buf:
            chunk = b"".join(self._buf)
            self._buf, self._buffered = [], 0
            self._enqueue(chunk)

    def flush(self) -> None:
        """Data goes out in chunks as it is written; nothing is published before close()."""

    def _finish_error(self) -> None:
        self._thread.join()
        if self._error is not None and not isinstance(self._error, _Aborted):
            import requests

            if isinstance(self._error, requests.ConnectionError):
                raise DataApiUnavailable(
                    f"upload of data://{self.path} to {self.fs.url} failed: {self._error}"
                ) from self._error
            raise OSError(errno.EIO, f"upload of data://{self.path} failed: {self._error}") from self._error
        if self._resp is not None and self._resp.status_code not in (200, 201, 204):
            _raise_for(self._resp, f"write of data://{self.path}")

    def close(self) -> None:
        """Finish the upload; the file exists once this returns."""
        if self.closed:
            return
        self.closed = True
        try:
            self._flush_buffer()
            self._enqueue(_END)
        except BaseException:
            self._drop()
            raise
        self._finish_error()

    def _drop(self) -> None:
        self._buf = []
        while self._thread.is_alive():
            try:
                self._q.put(_ABORT, timeout=0.5)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._q.get_nowait()
        self._thread.join(timeout=60)

    def discard(self) -> None:
        """Abandon the upload: the connection is dropped mid-body and the service publishes nothing."""
        if self.closed:
            return
        self.closed = True
        self._drop()

    def _publish(self) -> None:
        self.close()

    def _abandon(self) -> None:
        self.discard()


__all__ = ["DataApiHttpFileSystem", "DataApiUnavailable", "StreamingUpload"]
