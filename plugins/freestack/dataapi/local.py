"""Local reads: a reader on the service's host gets an open, read-only file descriptor of an object over a
Unix domain socket instead of its bytes over HTTP (as HDFS short-circuit local reads do).

``freestack data-api`` starts it when its backing store is a local folder (never the Airflow-hosted app).
The socket is ``DataApiSettings.local_reads_socket``, by default ``data-api-<port>.sock`` beside the keys
file; ``GET /v1/freestack/health`` advertises it as ``"local_reads": {"socket", "instance", "pid"}``.
The client is freestack.storage.localreads.

The protocol is newline-delimited JSON on a stream socket; a client keeps its connection open:

- on connect the service sends ``{"service": "freestack-data-api", "instance": <token>}`` (the token of
  health's advert), or an error line and closes when MAX_CONNECTIONS are open already;
- a request is ``{"op": "open", "path": "<owner>/<collection>/<name>" (or ".my/..."), "key": <API key|null>}``,
  with ``"lease": true`` when the client would take a read lease;
- the answer is ``{"ok": true, "size": N, "mtime": <epoch s>}`` with the descriptor attached (SCM_RIGHTS),
  or ``{"ok": false, "status": 4xx|5xx, "message": ...}``: the status and message a GET gets.

An open makes the checks of a GET, in its order: the path (parse_data_path, 400), the key (401), the
collection's ACL (401/403, the check ``DataFileSystem.open`` makes), then the object exists (404) and is a
file (409). The descriptor is of the version opened: a replace afterwards (an atomic rename) does not
change what it reads. The backing path is never sent. A line that is not JSON, an unknown op or a line over
MAX_LINE bytes gets an error line, and the connection is closed.

Read leases (as NFS read delegations and HDFS's short-circuit descriptor cache save the server a round
trip): an open of an object that asks for one, from a peer that could open the backing folder's files
by their paths itself (the same OS user, mount namespace and root: ``lease_eligible``), also gets
``"lease": {"collection", "seconds", "acl", "revocations"}`` with two more descriptors: the collection's
directory and the keys' revocations log (freestack.dataapi.keys). For ``seconds`` the client then opens
plain names in that collection itself, relative to the directory, as long as the collection's ACL
document has the stamp ``acl`` (null: none) the check was made against and the log still has
``revocations`` bytes: an ACL change or a revoked key ends every lease at once. Both stamps are taken
before the key and the ACL are checked, so a change during the check ends the lease too. Such a peer
gains nothing the OS would not give it; a lease only saves the round trip.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freestack.dataapi.app import (
    DEFAULT_READ_LEASE_S,
    ApiError,
    DataApiSettings,
    _authenticate,
    _depth,
    _Service,
    api_error_of,
    parse_data_path,
)
from freestack.errors import FreestackError
from freestack.storage.acl import READ, acl_stamp
from freestack.storage.localreads import SERVICE, NotAFile, open_object, peer_credentials

log = logging.getLogger("freestack.dataapi")

MAX_LINE = 64 * 1024  # one request, its newline included
MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 300.0  # a connection quiet this long is closed (its client reconnects when it reads again)
MAX_SOCKET_PATH = 100  # bytes: AF_UNIX paths hold 107 on Linux, 103 on macOS
ACCEPT_POLL_S = 0.5  # how soon the accepting thread notices close()
REQUEST_FORM = '{"op": "open", "path": "<owner>/<collection>/<name>", "key": "<API key>"}'


def default_socket_path(keys_path: Path, port: int) -> tuple[str, str | None]:
    """``data-api-<port>.sock`` beside the keys file when that path fits AF_UNIX, else in a new temporary
    folder (mode 0700). Returns the path and the folder made for it (None when none was)."""
    name = f"data-api-{port}.sock"
    beside = keys_path.parent / name
    if len(os.fsencode(beside)) < MAX_SOCKET_PATH:
        return str(beside), None
    folder = tempfile.mkdtemp(prefix="freestack-data-api-")
    return os.path.join(folder, name), folder


def claim_socket_path(path: str) -> None:
    """Remove a socket file a stopped service left at ``path``; FreestackError if a process still answers
    there or the path is something other than a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FreestackError(f"{path} exists and is not a socket; remove it or choose another --local-socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):  # nobody listens: a leftover of a stopped service
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except OSError as exc:
        raise FreestackError(f"{path} cannot be probed ({exc}); remove it or choose another --local-socket") from exc
    finally:
        probe.close()
    raise FreestackError(
        f"another process answers on {path} (a second `freestack data-api` on this port?); stop it or choose "
        "another --local-socket"
    )


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _error(status: int, message: str) -> dict[str, Any]:
    return {"ok": False, "status": status, "message": message}


def open_descriptor(fs, rel: str, display: str) -> tuple[int, os.stat_result]:
    """The checks of a GET of ``rel`` on ``fs`` (the caller's DataFileSystem: ``svc.fs_for(user)``), then a
    read-only descriptor of the object (the caller closes it) and its stat; ApiError, AccessDenied or
    OSError as a GET of it would fail.

    The ACL check is the one ``DataFileSystem.open(rel, "rb")`` makes (``local_path`` runs the same
    ``_full(path, READ)``), made before anything about the object is looked at, as a GET makes it; the
    object is then opened once, and what it is comes from that descriptor (no second lookup a replace
    could slip between)."""
    if _depth(rel) <= 1:  # the root and every owner's namespace (.my too): directories, whoever the owner is
        fs.check(fs.resolve(rel), READ)
        raise ApiError(409, f"{display} is a directory")
    try:
        return open_object(fs.local_path(rel))
    except IsADirectoryError:
        raise ApiError(409, f"{display} is a directory") from None
    except NotAFile:
        raise ApiError(409, f"{display} is not a regular file; only files are read") from None


def lease_eligible(conn: socket.socket) -> bool:
    """Whether the peer on ``conn`` could open the backing folder's files by their paths itself: it runs as
    this service's OS user, in its mount namespace, under its root directory (Linux; elsewhere: no). Only
    such a peer is granted read leases."""
    creds = peer_credentials(conn)
    if creds is None:
        return False
    pid, uid, _gid = creds
    if pid <= 0 or uid != os.geteuid():
        return False
    try:
        for theirs, ours in ((f"/proc/{pid}/ns/mnt", "/proc/self/ns/mnt"), (f"/proc/{pid}/root", "/")):
            a, b = os.stat(theirs), os.stat(ours)
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                return False
    except OSError:  # not Linux, or the peer is gone or hidden: no lease
        return False
    return True


@dataclass
class PendingLease:
    """A read lease on one collection, its stamps taken before the key and the ACL are checked."""

    collection: str  # owner/collection
    folder: str  # the collection's backing folder
    acl: list[int] | None  # stamp of the collection's ACL document (None: it has none)
    revocations_fd: int
    revocations: int  # the revocations log's size

    @classmethod
    def stamp_revocations(cls, svc: _Service, held: list[int]) -> tuple[int, int] | None:
        """The revocations log, opened (into ``held``), and its size, taken before the key is checked; None
        when it cannot be opened (then no lease is granted)."""
        try:
            fd = svc.keys.open_revocations()
        except OSError as exc:
            log.warning("local reads: no read lease, the revocations log cannot be opened (%s)", exc)
            return None
        held.append(fd)
        return fd, os.fstat(fd).st_size

    @classmethod
    def before_acl_check(cls, fs, rel: str, revocations: tuple[int, int]) -> PendingLease | None:
        """The lease ``rel`` (an object inside a collection) would come under; None for anything else."""
        resolved = fs.resolve(rel)
        parts = resolved.split("/")
        if len(parts) < 3:
            return None
        acl_doc = fs.fs._strip_protocol(fs.acls.path(parts[0], parts[1]))
        stamp = acl_stamp(acl_doc)
        return cls("/".join(parts[:2]), os.path.dirname(acl_doc), list(stamp) if stamp else None, *revocations)

    def grant(self, seconds: float, held: list[int]) -> tuple[dict[str, Any], list[int]] | None:
        """The lease's terms and descriptors (the collection's folder, opened into ``held``, and the
        revocations log), sent once the object's checks have passed; None if the folder cannot be opened."""
        try:
            folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:  # removed meanwhile: the object is still answered, without a lease
            return None
        held.append(folder)
        terms = {"collection": self.collection, "seconds": seconds, "acl": self.acl, "revocations": self.revocations}
        return terms, [folder, self.revocations_fd]


class LocalReadServer:
    """The Unix socket of local reads for one service: an accepting thread, one daemon thread per
    connection (at most ``max_connections``)."""

    def __init__(self, svc: _Service, path: str, *, owned_dir: str | None = None,
                 max_connections: int = MAX_CONNECTIONS, idle_timeout: float = IDLE_TIMEOUT_S,
                 read_lease_s: float = DEFAULT_READ_LEASE_S):  # fmt: skip
        self.svc = svc
        self.path = path
        self.read_lease_s = read_lease_s
        self.owned_dir = owned_dir
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.instance = secrets.token_hex(16)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file bound here
        self._thread: threading.Thread | None = None

    @property
    def advert(self) -> dict[str, Any]:
        """What health says about it (the pid lets a client check who answers on the socket)."""
        return {"socket": self.path, "instance": self.instance, "pid": os.getpid()}

    def start(self) -> LocalReadServer:
        claim_socket_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            st = os.stat(self.path)
            self._bound = (st.st_dev, st.st_ino)
            # 0o666: any local user who can reach the folder may connect. That grants nothing by itself: every
            # request carries an API key and gets the checks of a GET, the same reach as HTTP on 127.0.0.1.
            os.chmod(self.path, 0o666)
            sock.listen(128)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        sock.settimeout(ACCEPT_POLL_S)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="data-api-local-reads", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting and remove the socket file (connections still open end with the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._unlink()

    def _unlink(self) -> None:
        try:
            st = os.lstat(self.path)
            if self._bound == (st.st_dev, st.st_ino):  # ours, not one a newer service bound since
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.owned_dir:
            shutil.rmtree(self.owned_dir, ignore_errors=True)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.warning("local reads: accept failed (%s); going on", exc)
                    self._stop.wait(0.1)
                continue
            if not self._slots.acquire(blocking=False):
                self._refuse(conn)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="data-api-local-read", daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        message = (
            f"the Data API has {self.max_connections} local-read connections open, its limit; "
            "this client reads over HTTP instead"
        )
        log.warning("local reads: refused a connection: %d are open", self.max_connections)
        try:
            conn.settimeout(1.0)
            conn.sendall(_line(_error(503, message)))
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(self.idle_timeout)
            conn.sendall(_line({"service": SERVICE, "instance": self.instance}))
            leases = self.read_lease_s > 0 and lease_eligible(conn)
            for line in _requests(conn):
                try:
                    path, key, lease = _parse(line)
                except ApiError as exc:
                    conn.sendall(_line(_error(exc.status, exc.message)))
                    return
                self._answer(conn, path, key, lease=lease and leases)
        except ApiError as exc:  # a line too long to be a request
            try:
                conn.sendall(_line(_error(exc.status, exc.message)))
            except OSError:
                pass
        except OSError:  # the client went away, or stayed idle past idle_timeout
            return
        finally:
            conn.close()
            self._slots.release()

    def _answer(self, conn: socket.socket, path: str, key: str | None, *, lease: bool) -> None:
        held: list[int] = []
        try:
            message, fds = self._open(path, key, lease, held)
            if fds:
                socket.send_fds(conn, [_line(message)], fds)
            else:
                conn.sendall(_line(message))
        finally:
            for fd in held:
                os.close(fd)

    def _open(self, path: str, key: str | None, lease: bool, held: list[int]) -> tuple[dict[str, Any], list[int]]:
        """The answer to an open and the descriptors to send with it (the object's first); every descriptor
        opened is put in ``held``, for the caller to close once the answer is sent."""
        display = f"data://{path.strip('/')}"
        try:
            self.svc.ensure()
            rel = parse_data_path(path)
            display = f"data://{rel}"
            revocations = PendingLease.stamp_revocations(self.svc, held) if lease else None
            fs = self.svc.fs_for(_authenticate(self.svc, key))
            pending = PendingLease.before_acl_check(fs, rel, revocations) if revocations else None
            fd, st = open_descriptor(fs, rel, display)
        except Exception as exc:  # every failure is an answer, as over HTTP
            err = api_error_of(exc, display)
            return _error(err.status, err.message), []
        held.append(fd)
        message: dict[str, Any] = {"ok": True, "size": st.st_size, "mtime": st.st_mtime}
        granted = pending.grant(self.read_lease_s, held) if pending is not None else None
        if granted is None:
            return message, [fd]
        message["lease"], more = granted
        return message, [fd, *more]


def _requests(conn: socket.socket) -> Iterator[bytes]:
    """The lines a client sends (each with its newline) until it leaves; ApiError 413 for a line over
    MAX_LINE bytes."""
    buf = b""
    while True:
        end = buf.find(b"\n", 0, MAX_LINE)
        if end >= 0:
            yield buf[: end + 1]
            buf = buf[end + 1 :]
            continue
        if len(buf) >= MAX_LINE:
            raise ApiError(413, f"a local-read request is over {MAX_LINE // 1024} KiB; send one short JSON object a "
                                f"line: {REQUEST_FORM}")  # fmt: skip
        chunk = conn.recv(MAX_LINE)
        if not chunk:
            return
        buf += chunk


def _parse(line: bytes) -> tuple[str, str | None, bool]:
    """``(path, key, lease)`` of a request line; ApiError 400 naming what is wrong."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        request = None
    if not isinstance(request, dict):
        raise ApiError(400, f"a local-read request is one JSON object a line: {REQUEST_FORM}")
    op = request.get("op")
    if op != "open":
        raise ApiError(400, f"unknown local-read op {_short(op)}; the only one is 'open': {REQUEST_FORM}")
    path, key, lease = request.get("path"), request.get("key"), request.get("lease", False)
    if not isinstance(path, str) or not (key is None or isinstance(key, str)):
        raise ApiError(400, f'"path" must be a string and "key" a string or null: {REQUEST_FORM}')
    if not isinstance(lease, bool):
        raise ApiError(400, f'"lease" must be true or false: {REQUEST_FORM}')
    return path, key, lease


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def start_local_reads(svc: _Service, settings: DataApiSettings, port: int) -> LocalReadServer | None:
    """Serve local reads for ``svc`` when its settings ask for them and its store is a local folder, and
    advertise them in health; None when off (the reason is logged). A socket path given explicitly that
    cannot be used is a FreestackError; the default one only turns local reads off."""
    if not settings.local_reads:
        return None
    try:
        svc.ensure()
    except Exception as exc:  # the service itself reports this on every request
        log.warning("local reads are off: the service could not set up (%s)", exc)
        return None
    if not svc.local:
        log.info("local reads are off: the backing store %s is not a local folder", svc.root)
        return None
    explicit = settings.local_reads_socket
    path, folder = (explicit, None) if explicit else default_socket_path(svc.keys.path, port)
    try:
        server = LocalReadServer(svc, path, owned_dir=folder, read_lease_s=settings.read_lease_s).start()
    except (OSError, FreestackError) as exc:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        if explicit:
            raise FreestackError(f"local reads cannot listen on {path}: {exc}") from exc
        log.warning("local reads are off: they cannot listen on %s (%s)", path, exc)
        return None
    svc.local_reads = server.advert
    return server


__all__ = [
    "MAX_CONNECTIONS", "MAX_LINE", "SERVICE", "LocalReadServer", "PendingLease",
    "claim_socket_path", "default_socket_path", "lease_eligible", "open_descriptor", "start_local_reads",
]
