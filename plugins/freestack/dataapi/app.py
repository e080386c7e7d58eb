"""The Data API service: Algorithmia's ``/v1/data`` REST protocol over freestack's data store.

Wire behaviour (what ``algorithmia==2.0.5`` and Algorithmia's other clients expect):

==========================================  =========================================================
``GET /v1/data/<path>``                     a file's bytes (``Range`` supported), or a directory's
                                            listing ``{"folders": [{"name"}], "files": [{"filename",
                                            "size", "last_modified"}], "marker"}``; ``?marker=`` pages
                                            on, ``?acl=true`` adds the collection's ``"acl"``
``HEAD /v1/data/<path>``                    200 with ``X-Data-Type: file|directory``,
                                            ``Content-Length``, ``Last-Modified``; errors carry
                                            ``X-Error-Message``
``PUT /v1/data/<owner>/<coll>/<name...>``   stores the body (streamed; published atomically only once
                                            the whole body arrived); ``If-None-Match: *`` = create only;
                                            ``If-Match: "<sha256>"`` = replace only that version
``POST /v1/data/<parent>``                  ``{"name": "...", "acl": {"read": [...]}}`` creates a
                                            directory (a collection when the parent is an owner)
``PATCH /v1/data/<owner>/<coll>``           ``{"acl": {...}}`` replaces the collection's ACL (owner)
``DELETE /v1/data/<path>[?force=true]``     a file, an empty directory, or (force) a whole tree;
                                            answers ``{"result": {"deleted": N}}``
==========================================  =========================================================

``/v1/connector/data/...`` is an alias (older clients). Errors are ``{"error": {"message": ...}}``
with 400 (bad path or body), 401 (no/invalid/revoked key where one is needed), 403 (the ACL says
no), 404, 409 (exists, not empty, is a directory), 412, 416 or 431 (headers too large).

Hostile input gets a 400 naming the limit: an encoded separator in the raw path (``%2F``, ``%5C``,
``%00``, at any level of encoding: the server would decode ``a%2Fb.txt`` into ``a/b.txt``), paths
deeper than MAX_DEPTH levels or longer than MAX_PATH_BYTES, JSON bodies nested deeper than
MAX_JSON_DEPTH, markers the service did not hand out, names that are not valid UTF-8 or hold characters that make them display as something else (bidi
controls, zero-width and separator characters, all spaces); names are stored in NFC. Writes check the
caller may write before looking at what is there. ``If-Match`` compares against the hash recorded when
the object was written (freestack.dataapi.versions), never by reading it. Temporaries left by killed
uploads are swept at start and periodically, never while their upload is in flight
(freestack.dataapi.temporaries); listings inside a collection page through a cached,
sorted index of the directory (freestack.dataapi.listing).

The API key is read from ``Authorization`` in the forms clients send it: ``Simple <key>`` (curl
examples), the bare key (the Python client), or ``Bearer <key>``. Without it the caller is anonymous
and may only read public collections. ``.my`` is the key's user. The access rules are the ones every
``data://`` filesystem applies (freestack.storage.acl): the service builds one DataFileSystem per
request for the caller over the backing store.

freestack extensions: ``GET /v1/freestack/whoami``, ``GET /v1/freestack/health``, ``"write"`` lists in
ACLs (team members allowed to write) and ``HEAD ...?access=write`` (may I write this file?).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from freestack.dataapi.keys import KeyStore
from freestack.dataapi.listing import DirectoryIndex, modified_at
from freestack.dataapi.listing import page as listing_page
from freestack.dataapi.requests import (
    ApiError,
    check_escapes,
    if_match_header,
    listing_marker,
    parse_data_path,
    parse_range,
    read_json_body,
    read_marker,
    request_key,
)
from freestack.dataapi.temporaries import Journal, Sweeper
from freestack.dataapi.versions import Versions, VersionStore
from freestack.errors import AccessDenied, FreestackError, StorageFull, UnsafePathError
from freestack.settings import settings
from freestack.storage.acl import READ, WRITE, Acl, AclError
from freestack.storage.connection import embedded_default, store_config
from freestack.storage.datafs import DataFileSystem, _Target
from freestack.storage.objects import AtomicWriter
from freestack.storage.schemes import to_path

log = logging.getLogger("freestack.dataapi")

CHUNK = 1024 * 1024  # upload bytes handed to the storage thread at a time
READ_CHUNK = 4 * 1024 * 1024  # download bytes read (in a thread) and sent at a time
MAX_HEADER_BYTES = 16 * 1024  # request line + all headers
MAX_HEADER_VALUE = 8 * 1024
DEFAULT_PAGE_SIZE = 1000
#: the answers to a write If-None-Match: * refuses (412), and to an upload whose body ended early (400)
EXISTS = "{} already exists (If-None-Match: * asks to create it only if absent)"
INCOMPLETE = "upload of {} incomplete: {} of {} bytes arrived; nothing was written"


# ---------------------------------------------------------------------------------------------------------
# settings and the backing store


@dataclass
class DataApiSettings:
    """Where the service keeps data and keys. None means: from the environment, then the defaults."""

    root: str | None = None
    keys_path: str | None = None
    page_size: int | None = None
    max_header_bytes: int = MAX_HEADER_BYTES
    #: where the content hashes of written objects are kept (default: ``versions.sqlite`` beside the keys)
    versions_path: str | None = None
    #: hidden temporaries not written to for this long are leftovers of killed writers, and removed
    #: (default: the ``data_api_stale_tmp_age`` setting, 600 s); see freestack.dataapi.temporaries
    stale_tmp_age_s: float | None = None
    #: how often the backing folder is swept for leftovers, also once at start (default: half the age)
    tmp_sweep_interval_s: float | None = None


def resolve_root(explicit: str | None = None) -> str:
    """The backing store the service serves: ``explicit``, else the ``data_api_root`` setting, else the
    ``freestack_data_default`` connection's root if it is a store (not itself a service URL), else the
    embedded default (the ``data_root`` setting or ``<home>/.freestack/data``)."""
    root = explicit or settings().data_api_root
    if not root:
        try:
            config = store_config()
            root = None if config.is_remote_api else config.root
        except Exception:  # no connection (or no way to ask for one here): the embedded default
            root = None
        root = root or embedded_default().root
    root = root.rstrip("/")
    if root.startswith(("http://", "https://")):
        raise FreestackError(
            f"the Data API needs a store to serve (file:///path or s3://conn@bucket/prefix), not another "
            f"service ({root}); pass --root or set FREESTACK_DATA_API_ROOT"
        )
    if root.startswith("data://") or "://" not in root:
        raise FreestackError(
            f"Data API root {root!r} must be a file:// or s3:// URI (e.g. file:///srv/freestack/data)"
        )
    return root


class _Service:
    """What every request needs, set up on the first one (so importing the app stays cheap)."""

    def __init__(self, settings: DataApiSettings):
        self.settings = settings
        self._lock = threading.Lock()
        self._ready = False
        self.root = ""
        self.fs: Any = None
        self.base = ""
        self.keys: Any = None
        self.page_size = DEFAULT_PAGE_SIZE
        self._per_user: dict[str | None, Any] = {}
        self.local = False
        self.versions: Any = None
        self.index = DirectoryIndex()
        self.sweeper: Any = None
        self.journal: Any = None  # the temporaries this process's uploads are writing (local folders only)

    def ensure(self) -> _Service:
        if self._ready:
            return self
        with self._lock:
            if self._ready:
                return self
            from fsspec.implementations.local import LocalFileSystem

            self.root = resolve_root(self.settings.root)
            backing = to_path(self.root)
            self.fs = backing.fs
            self.base = backing.path
            self.local = isinstance(self.fs, LocalFileSystem)
            if self.local:
                os.makedirs(self.fs._strip_protocol(self.base), exist_ok=True)
            self.keys = KeyStore(self.settings.keys_path or None)
            self.page_size = self.settings.page_size or settings().data_api_page_size or DEFAULT_PAGE_SIZE
            where = self.settings.versions_path or self.keys.path.parent / "versions.sqlite"
            self.versions = Versions(VersionStore(Path(where), self.root), self.fs, self.base, self.local)
            if self.local:
                self._start_sweeper()
            log.info("freestack Data API serving %s (keys: %s)", self.root, self.keys.path)
            self._ready = True
        return self

    def _start_sweeper(self) -> None:
        root = self.fs._strip_protocol(self.base)
        try:
            self.journal = Journal(root)
        except OSError as exc:  # serving reads beats refusing everything; leftovers then stay
            log.warning(
                "cannot keep an upload journal under %s (%s): stale temporaries are not swept", root, exc
            )
            return
        max_age = self.settings.stale_tmp_age_s or settings().data_api_stale_tmp_age
        self.sweeper = Sweeper(
            root, self.journal, max_age=max_age, interval=self.settings.tmp_sweep_interval_s
        )
        self.sweeper.start()

    def track(self, temporary: str | None) -> Any:
        """List an upload's temporary as in flight (no sweep, of any process, removes it while this process
        lives); returns what un-lists it once the upload is committed or aborted."""
        journal = self.journal
        if not temporary or journal is None:
            return None
        journal.add(temporary)
        return lambda: journal.discard(temporary)

    def fs_for(self, user: str | None):
        """A DataFileSystem over the backing store for this caller: ``.my`` and the ACLs are theirs.
        (One per user, kept: building one costs more than most requests.)"""
        fs = self._per_user.get(user)
        if fs is None:
            fs = DataFileSystem(path=self.base, fs=self.fs, owner=user)
            if len(self._per_user) >= 1024:
                self._per_user.clear()
            self._per_user[user] = fs
        return fs


# ---------------------------------------------------------------------------------------------------------
# helpers


def _authenticate(svc: _Service, key: str | None) -> str | None:
    """The user of ``key`` (None: no key); ApiError 401 for a key that is unknown or revoked."""
    if key is None:
        return None
    user = svc.keys.authenticate(key)
    if user is None:
        raise ApiError(
            401,
            "the API key is not valid: it is unknown or was revoked. Create a new one with "
            "`freestack keys create <user>` (and check the client sends it unchanged)",
        )
    return user


async def _caller(request: Request, svc: _Service) -> str | None:
    key = request_key(request)
    if key is None:
        return None
    return await _run(_authenticate, svc, key)


def _header_safe(message: str) -> str:
    text = message.replace("\r", " ").replace("\n", " ")
    return text.encode("ascii", "backslashreplace").decode("ascii")[:1000]


def error_response(status: int, message: str, *, head: bool = False, headers: dict[str, str] | None = None):
    out = {"X-Error-Message": _header_safe(message), "Cache-Control": "no-store"}
    if status == 401:
        out["WWW-Authenticate"] = 'Simple realm="freestack data"'
    out.update(headers or {})
    if head:
        return Response(status_code=status, headers=out)
    return JSONResponse({"error": {"message": message}}, status_code=status, headers=out)


def api_error_of(exc: BaseException, display: str) -> ApiError:
    """The status and message a failure on ``display`` is answered with; failures that are not the
    caller's are logged."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AccessDenied):
        return ApiError(401 if exc.anonymous else 403, str(exc))
    if isinstance(exc, UnsafePathError | AclError):
        return ApiError(400, str(exc))
    if isinstance(exc, FileNotFoundError):
        return ApiError(404, f"{display} does not exist")
    if isinstance(exc, FileExistsError):
        return ApiError(409, f"{display} already exists")
    if isinstance(exc, IsADirectoryError):
        return ApiError(409, f"{display} is a directory")
    if isinstance(exc, NotADirectoryError):
        return ApiError(409, f"{display}: a file is in the way (a path segment is a file)")
    if isinstance(exc, StorageFull):  # the operator's to fix: the log says where, the caller what happened
        log.error("Data API write of %s: %s", display, exc)
        return ApiError(
            507,
            f"the Data API's storage has no space left for {display}: nothing of it was "
            "written; send it again once the service's operator has freed space",
        )
    if isinstance(exc, FreestackError):
        return ApiError(400, str(exc))
    log.error("Data API failure on %s", display, exc_info=exc)
    if isinstance(exc, OSError):
        return ApiError(
            502,
            f"the storage behind the Data API failed on {display} ({type(exc).__name__}); see the service log",
        )
    return ApiError(500, f"internal error on {display} ({type(exc).__name__}); see the service log")


def _exception_response(exc: BaseException, display: str, *, head: bool) -> Response:
    err = api_error_of(exc, display)
    return error_response(err.status, err.message, head=head, headers=err.headers)


def _listing_time(dt: datetime | None) -> str:
    dt = dt or datetime(1970, 1, 1, tzinfo=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _depth(rel: str) -> int:
    return len(rel.split("/")) if rel else 0


def _info(svc: _Service, fs, rel: str, user: str | None) -> dict[str, Any] | None:
    """The object at ``rel`` (``type`` file or directory), None if absent; access is checked (READ).
    The root and every owner's namespace always exist, whether or not the owner has a key or data: a
    namespace answers the same for a user who exists and one who does not."""
    resolved = fs.resolve(rel)
    if _depth(resolved) <= 1:
        fs.check(resolved, READ)
        return {"name": resolved, "type": "directory", "size": 0}
    try:
        return fs.info(resolved)
    except FileNotFoundError:
        return None


def _run(fn, *args):
    return anyio.to_thread.run_sync(lambda: fn(*args))


# ---------------------------------------------------------------------------------------------------------
# the operations


def _get_sync(svc: _Service, key: str | None, rel: str, display: str, head: bool, query, range_header):
    """GET and HEAD, everything that blocks in one go (one thread hop a request): who is asking, the
    ACL, what the path is, and for a file its opening (small files are read here, whole)."""
    user = _authenticate(svc, key)
    fs = svc.fs_for(user)
    if head and query.get("access") == "write":
        _check_writable(svc, fs, rel, user, display)
        return Response(status_code=200, headers={"Cache-Control": "no-store"})
    info = _info(svc, fs, rel, user)
    if info is None:
        raise ApiError(404, f"{display} does not exist")
    if info.get("type") == "directory":
        headers = {"X-Data-Type": "directory", "Cache-Control": "no-store"}
        if head:
            return Response(status_code=200, headers=headers)
        want_acl = query.get("acl", "").lower() in ("true", "1", "yes")
        return JSONResponse(_listing(svc, fs, rel, user, query.get("marker"), want_acl), headers=headers)
    return _open_file(fs, rel, info, head, range_header)


def _check_writable(svc: _Service, fs, rel: str, user: str | None, display: str) -> dict[str, Any] | None:
    """WRITE first (a refusal tells nothing about what is there), then no directory in the way: what is there."""
    if _depth(rel) < 3:
        raise ApiError(
            400, f"{display} is not a file path: files live in a collection (<owner>/<collection>/<name>)"
        )
    fs.check(fs.resolve(rel), WRITE)
    info = _info(svc, fs, rel, user)
    if info is not None and info.get("type") == "directory":
        raise ApiError(409, f"{display} is a directory; delete it first or choose another name")
    return info


def _listing(svc: _Service, fs, rel: str, user: str | None, marker: str | None, want_acl: bool) -> dict:
    resolved = fs.resolve(rel)
    after = read_marker(marker) if marker else None
    if svc.local and _depth(resolved) >= 2:  # inside a collection: one ACL for all, read once by _info
        page, more = _local_page(svc, fs, resolved, after)
    else:
        page, more = _filtered_page(svc, fs, resolved, user, after)
    body: dict[str, Any] = {
        "folders": [{"name": k[2]} for k, e in page if k[0] == 0],
        "files": [
            {
                "filename": k[2],
                "size": int(e.get("size") or 0),
                "last_modified": _listing_time(modified_at(e)),
            }
            for k, e in page
            if k[0] == 1
        ],
        "marker": listing_marker(page[-1][0]) if (more and page) else None,
    }
    if want_acl and _depth(resolved) >= 2:
        body["acl"] = fs.get_acl(resolved).to_json()
    return body


def _local_page(svc: _Service, fs, resolved: str, after: tuple | None) -> tuple[list, bool]:
    """A page of a directory on a local backing folder, from its cached sorted names (freestack.dataapi.listing):
    the cost is the page's, whatever the directory's size."""
    folder = fs.local_path(resolved)
    try:
        keys = svc.index.keys(folder)
    except (FileNotFoundError, NotADirectoryError):
        keys = []
    return listing_page(folder, keys, after, svc.page_size)


def _filtered_page(
    svc: _Service, fs, resolved: str, user: str | None, after: tuple | None
) -> tuple[list, bool]:
    """A page of a listing the data:// filesystem filters per entry (the root and owners' namespaces show
    only what the caller may read) or of a directory on an object store."""
    try:
        entries = fs.ls(resolved, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    root = not resolved
    items: list[tuple[tuple, dict | None]] = []
    seen: set[str] = set()
    for entry in entries:
        full = entry["name"].strip("/")
        name = full.rsplit("/", 1)[-1]
        if not name or name.startswith(".") or name in seen or full == resolved:
            continue
        seen.add(name)
        is_dir = entry.get("type") == "directory"
        key = (0 if is_dir else 1, 0 if (root and name == user) else 1, name)
        items.append((key, None if is_dir else entry))
    if root and user and user not in seen:  # the caller's own namespace, first (Algorithmia's username())
        items.append(((0, 0, user), None))
    items.sort(key=lambda item: item[0])
    start = 0
    if after is not None:
        start = next((i for i, (k, _) in enumerate(items) if k > after), len(items))
    return items[start : start + svc.page_size], start + svc.page_size < len(items)


@dataclass
class _FileStream:
    """A file to stream back: the open handle, the status and headers, how many bytes from where."""

    f: Any
    status: int
    headers: dict[str, str]
    length: int

    def response(self) -> StreamingResponse:
        f, length = self.f, self.length

        async def body():
            # the next chunk is read (in a thread) while this one is being sent
            remaining = length
            ahead = asyncio.ensure_future(_run(f.read, min(READ_CHUNK, remaining)))
            try:
                while remaining > 0:
                    chunk = await ahead
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    if remaining > 0:
                        ahead = asyncio.ensure_future(_run(f.read, min(READ_CHUNK, remaining)))
                    yield chunk
            finally:
                if not ahead.done():
                    ahead.cancel()
                    try:  # a read in progress finishes before the file is closed
                        await ahead
                    except BaseException:  # noqa: BLE001
                        pass
                f.close()

        return StreamingResponse(body(), status_code=self.status, headers=self.headers)


def _open_file(fs, rel: str, info: dict[str, Any], head: bool, range_header: str | None):
    headers = {
        "X-Data-Type": "file",
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        # never re-encoded by a compressing middleware (the Airflow API server has one): ranges and
        # Content-Length stay those of the stored bytes
        "Content-Encoding": "identity",
        "Cache-Control": "no-store",
    }
    mtime = modified_at(info)
    if mtime is not None:
        headers["Last-Modified"] = formatdate(mtime.timestamp(), usegmt=True)
    if head:
        headers["Content-Length"] = str(int(info.get("size") or 0))
        return Response(status_code=200, headers=headers)
    f = fs.open(rel, "rb")
    try:
        size = _size_of(f)  # of the version opened (a replace meanwhile does not change it)
        rng = parse_range(range_header, size)
        status, start, length = 200, 0, size
        if rng is not None:
            start, end = rng
            status, length = 206, end - start + 1
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            f.seek(start)
        headers["Content-Length"] = str(length)
        if length <= READ_CHUNK:  # small: read now, answer in one piece
            data = f.read(length)
            f.close()
            return Response(content=data, status_code=status, headers=headers)
    except BaseException:
        f.close()
        raise
    return _FileStream(f, status, headers, length)


def _size_of(f) -> int:
    size = getattr(f, "size", None)
    if isinstance(size, int):
        return size
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    return size


def _begin_put(svc: _Service, key: str | None, rel: str, display: str, if_absent: bool):
    """Who is asking, may they write, is the name free: then the atomic writer (one thread hop)."""
    user = _authenticate(svc, key)
    fs = svc.fs_for(user)
    info = _check_writable(svc, fs, rel, user, display)  # _put checked the depth already
    if if_absent and info is not None:
        raise ApiError(412, EXISTS.format(display))
    # the temporary is journalled before it exists, so a kill -9 at any moment leaves nothing unlisted;
    # the sweeper spares it however long the client takes; its hash is recorded on commit
    untrack: list[Any] = []
    try:
        writer = AtomicWriter(
            _Target(fs, rel), if_absent=if_absent, on_temporary=lambda tmp: untrack.append(svc.track(tmp))
        )
    except BaseException:
        for done in untrack:
            if done is not None:
                done()
        raise
    return svc.versions.writer(writer, fs.resolve(rel), on_done=untrack[0] if untrack else None)


async def _feed(queue: asyncio.Queue, item, worker: asyncio.Task) -> None:
    """Hand ``item`` to the storage worker; if the worker failed meanwhile, raise its error."""
    if worker.done():
        worker.result()
        raise ApiError(500, "the storage worker stopped")
    put = asyncio.ensure_future(queue.put(item))
    done, _ = await asyncio.wait({put, worker}, return_when=asyncio.FIRST_COMPLETED)
    if put not in done:
        put.cancel()
        worker.result()
        raise ApiError(500, "the storage worker stopped")


#: serializes conditional replaces (If-Match) of one object within this service process
_CAS_LOCKS: dict[str, threading.Lock] = {}
_CAS_GUARD = threading.Lock()


def _cas_lock(rel: str) -> threading.Lock:
    with _CAS_GUARD:
        return _CAS_LOCKS.setdefault(rel, threading.Lock())


def _check_match(svc: _Service, key: str | None, rel: str, display: str, if_match: str) -> None:
    """If-Match: the object's current content must hash (sha256, hex) to the given tag. Who may write is
    checked first; the hash is the one recorded when the object was written (freestack.dataapi.versions),
    so the object is not read."""
    user = _authenticate(svc, key)
    fs = svc.fs_for(user)
    resolved = fs.resolve(rel)
    fs.check(resolved, WRITE)
    try:
        current = svc.versions.current(resolved)
    except IsADirectoryError:
        raise ApiError(409, f"{display} is a directory; If-Match replaces a file") from None
    if current is None:
        raise ApiError(412, f"{display} does not exist (If-Match asks to replace a version of it)")
    if current != if_match.lower():
        raise ApiError(
            412, f"{display} changed since it was read (If-Match {if_match[:12]}... is not current)"
        )


async def _put_small(
    request: Request,
    svc: _Service,
    key: str | None,
    rel: str,
    display: str,
    if_absent: bool,
    expected_n: int,
    if_match: str | None = None,
) -> Response:
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            chunks.append(chunk)
    except ClientDisconnect:
        log.warning("upload of %s interrupted after %d bytes: nothing was written", display, received)
        return Response(status_code=400)
    if received != expected_n:
        raise ApiError(400, INCOMPLETE.format(display, received, expected_n))

    def store() -> None:
        writer = _begin_put(svc, key, rel, display, if_absent)
        try:
            writer.write(b"".join(chunks))
            writer.commit()
        except FileExistsError:
            writer.abort()
            raise ApiError(412, EXISTS.format(display)) from None
        except BaseException:
            writer.abort()
            raise

    def store_if_match() -> None:
        with _cas_lock(rel):  # compare and write as one step
            _check_match(svc, key, rel, display, if_match)
            store()

    await _run(store if if_match is None else store_if_match)
    return JSONResponse({"result": display})


async def _put(request: Request, svc: _Service, key: str | None, rel: str, display: str):
    """Store the body: received in the event loop while the previous chunk is written in a thread
    (at most ``2 + 1`` chunks of CHUNK bytes in memory); published only once it all arrived."""
    if _depth(rel) < 3:
        raise ApiError(
            400,
            f"{display} is not a file path: files live in a collection (PUT /v1/data/<owner>/<collection>/<name>); "
            'to create a directory, POST {"name": ...} to its parent',
        )
    if_absent = request.headers.get("if-none-match", "").strip() == "*"
    if_match = if_match_header(request.headers.get("if-match"))
    expected = request.headers.get("content-length")
    try:
        expected_n = int(expected) if expected is not None else None
    except ValueError:
        raise ApiError(400, f"Content-Length {expected!r} is not a number") from None
    if expected_n is not None and expected_n <= CHUNK:  # small: take the body, then one thread hop
        return await _put_small(request, svc, key, rel, display, if_absent, expected_n, if_match)
    if if_match is not None:  # the body is large, or of unknown size
        body = "has no Content-Length" if expected_n is None else f"is {expected_n} bytes"
        raise ApiError(
            400,
            f"If-Match (compare-and-swap) takes a new body of at most {CHUNK} bytes with a Content-Length; "
            f"this request's body {body}: nothing was written to {display}. Send a smaller body with its "
            "Content-Length, or replace the object without If-Match",
        )
    writer = await _run(_begin_put, svc, key, rel, display, if_absent)

    queue: asyncio.Queue = asyncio.Queue(maxsize=2)

    async def drain() -> None:
        while (data := await queue.get()) is not None:
            await _run(writer.write, data)

    worker = asyncio.ensure_future(drain())
    received = 0
    pending: list[bytes] = []
    pending_n = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            received += len(chunk)
            pending.append(chunk)
            pending_n += len(chunk)
            if pending_n >= CHUNK:
                data = b"".join(pending)
                pending, pending_n = [], 0
                await _feed(queue, data, worker)
        if pending:
            await _feed(queue, b"".join(pending), worker)
        await _feed(queue, None, worker)
        await worker
        if expected_n is not None and received != expected_n:
            raise ApiError(400, INCOMPLETE.format(display, received, expected_n))
        await _run(writer.commit)
    except BaseException as exc:
        if not worker.done():
            worker.cancel()
            try:  # a write in progress finishes first: abort never races it
                await worker
            except BaseException:  # noqa: BLE001  (its outcome no longer matters)
                pass
        writer.abort()
        if isinstance(exc, ClientDisconnect):
            log.warning(
                "upload of %s interrupted after %d bytes: discarded, nothing was written", display, received
            )
            return Response(status_code=400)  # nobody is listening any more
        if isinstance(exc, FileExistsError):
            raise ApiError(412, EXISTS.format(display)) from None
        raise
    return JSONResponse({"result": display})


async def _post(request: Request, svc: _Service, fs, rel: str, user: str | None, display: str):
    body = await read_json_body(request)
    name = body.get("name")
    if not isinstance(name, str) or not name or "/" in name.strip("/"):
        raise ApiError(
            400, 'POST creates one directory: send {"name": "<name>"} (one name, no "/") to its parent'
        )
    name = name.strip("/")
    if name.startswith(".") or name in ("..", "."):
        raise ApiError(400, f"directory name {name!r} starts with '.', which is reserved; choose another")
    child = parse_data_path(f"{rel}/{name}" if rel else name)
    if not rel:
        raise ApiError(400, "owners' namespaces are not created by POST: a user exists once they have a key")
    acl = Acl.parse(body["acl"], where="acl") if body.get("acl") is not None else None
    child_display = f"data://{child}"

    def work() -> None:
        resolved = fs.resolve(child)
        fs.check(resolved, WRITE)  # first: a refusal is about writing, and tells nothing about what is there
        parent = _info(svc, fs, rel, user)
        if parent is None:
            raise ApiError(404, f"{display} does not exist; create it first")
        if parent.get("type") != "directory":
            raise ApiError(409, f"{display} is a file, not a directory")
        if _depth(resolved) != 2 and acl is not None:
            raise ApiError(
                400,
                f"{child_display}: ACLs are set per collection (data://<owner>/<collection>) and hold for "
                "everything inside it; create this directory without an acl",
            )
        if fs.exists(resolved):
            raise ApiError(409, f"{child_display} already exists")
        fs.create_dir(resolved, acl=acl)

    await _run(work)
    return JSONResponse({"result": child_display})


async def _patch(request: Request, svc: _Service, fs, rel: str, user: str | None, display: str):
    body = await read_json_body(request)
    if "acl" not in body:
        raise ApiError(
            400,
            'PATCH changes a collection\'s ACL: send {"acl": {"read": ["user://*"]}} or {"acl": {"read": []}}',
        )
    acl = Acl.parse(body["acl"], where="acl")

    def work() -> None:
        resolved = fs.resolve(rel)
        if _depth(resolved) != 2:
            raise ApiError(
                400,
                f"{display}: ACLs are set per collection (data://<owner>/<collection>); "
                "patch the collection this lies in",
            )
        fs.set_acl(resolved, acl)

    await _run(work)
    return JSONResponse({"result": display, "acl": acl.to_json()})


async def _delete(request: Request, svc: _Service, fs, rel: str, user: str | None, display: str):
    force = request.query_params.get("force", "").lower() in ("true", "1", "yes")

    def work() -> int:
        resolved = fs.resolve(rel)
        if _depth(resolved) < 2:
            raise ApiError(
                400,
                f"refusing to delete {display}: it is a whole namespace; delete its collections one by one",
            )
        fs.check(resolved, WRITE)  # first: a refusal is about writing, and tells nothing about what is there
        info = _info(svc, fs, rel, user)
        if info is None:
            raise ApiError(404, f"{display} does not exist")
        if info.get("type") != "directory":
            fs.rm_file(resolved)
            svc.versions.store.forget(resolved)
            return 1
        _check_empty(svc, fs, resolved, display, force)
        deleted = fs.delete_tree(resolved)  # iterative: a tree of any depth goes
        svc.versions.store.forget(resolved, tree=True)
        return deleted

    deleted = await _run(work)
    return JSONResponse({"result": {"deleted": deleted}})


def _check_empty(svc: _Service, fs, resolved: str, display: str, force: bool) -> None:
    """409 unless the directory holds nothing visible or ``force`` is given."""
    if force:
        return
    if svc.local:
        visible = [k[2] for k in svc.index.keys(fs.local_path(resolved))]
    else:
        names = [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(resolved, detail=False)]
        visible = sorted(n for n in names if n and not n.startswith("."))
    if visible:
        shown = ", ".join(visible[:5]) + (", ..." if len(visible) > 5 else "")
        raise ApiError(
            409,
            f"{display} is not empty ({len(visible)} entries: {shown}); delete them first or add ?force=true",
        )


_METHODS = {"POST": _post, "PATCH": _patch, "DELETE": _delete}


async def data_endpoint(request: Request) -> Response:
    svc: _Service = request.app.state.freestack_data
    head = request.method == "HEAD"
    raw = request.path_params.get("path", "")
    display = f"data://{raw.strip('/')}"
    try:
        if not svc._ready:
            await _run(svc.ensure)
        check_escapes(request)
        rel = parse_data_path(raw)
        display = f"data://{rel}"
        if request.method in ("GET", "HEAD"):
            out = await _run(
                _get_sync,
                svc,
                request_key(request),
                rel,
                display,
                head,
                request.query_params,
                request.headers.get("range"),
            )
            return out.response() if isinstance(out, _FileStream) else out
        if request.method == "PUT":
            return await _put(request, svc, request_key(request), rel, display)
        user = await _caller(request, svc)
        fs = svc.fs_for(user)
        return await _METHODS[request.method](request, svc, fs, rel, user, display)
    except Exception as exc:  # every failure is a JSON error (and X-Error-Message)
        return _exception_response(exc, display, head=head)


async def whoami(request: Request) -> Response:
    svc: _Service = request.app.state.freestack_data
    try:
        await _run(svc.ensure)
        user = await _caller(request, svc)
    except Exception as exc:
        return _exception_response(exc, "whoami", head=False)
    if user is None:
        return error_response(401, "no API key: send 'Authorization: Simple <key>'")
    return JSONResponse({"username": user})


async def health(request: Request) -> Response:
    svc: _Service = request.app.state.freestack_data
    try:
        await _run(svc.ensure)
    except Exception as exc:
        return error_response(503, f"the Data API cannot serve: {exc}")
    return JSONResponse({"status": "ok", "root": svc.root})


# ---------------------------------------------------------------------------------------------------------
# headers over the limit: refused before anything else runs


class HeaderLimit:
    """ASGI middleware: 431 for a request line plus headers over ``max_total`` bytes, or one header value
    over ``max_value``. (The standalone server also caps what it buffers before a request is parsed:
    freestack.dataapi.standalone.)"""

    def __init__(self, app, max_total: int = MAX_HEADER_BYTES, max_value: int = MAX_HEADER_VALUE):
        self.app = app
        self.max_total = max_total
        self.max_value = max_value

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            total = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            biggest = 0
            for name, value in scope.get("headers", []):
                total += len(name) + len(value) + 4
                biggest = max(biggest, len(value))
            if total > self.max_total or biggest > self.max_value:
                message = (
                    f"request headers too large ({total} bytes, largest value {biggest}); the limits are "
                    f"{self.max_total} bytes in all and {self.max_value} per value"
                )
                response = error_response(431, message, head=scope.get("method") == "HEAD")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: DataApiSettings | None = None) -> FastAPI:
    """The Data API as a FastAPI app; the backing store and keys are looked up on the first request."""
    settings = settings or DataApiSettings()
    app = FastAPI(title="freestack Data API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.freestack_data = _Service(settings)
    methods = ["GET", "HEAD", "PUT", *_METHODS]
    for prefix in ("/v1/data", "/v1/connector/data"):
        app.add_route(prefix, data_endpoint, methods=methods, include_in_schema=False)
        app.add_route(prefix + "/{path:path}", data_endpoint, methods=methods, include_in_schema=False)
    app.add_route("/v1/freestack/whoami", whoami, methods=["GET"], include_in_schema=False)
    app.add_route("/v1/freestack/health", health, methods=["GET"], include_in_schema=False)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"{request.url.path} is not part of the Data API; data lives under /v1/data/<owner>/..."
        return error_response(exc.status_code, message, head=request.method == "HEAD")

    app.add_middleware(HeaderLimit, max_total=settings.max_header_bytes)
    return app


#: the app the freestack AirflowPlugin mounts in the Airflow API server (settings from the environment)
data_api_app = create_app()

__all__ = [
    "DataApiSettings",
    "HeaderLimit",
    "api_error_of",
    "create_app",
    "data_api_app",
    "resolve_root",
]
