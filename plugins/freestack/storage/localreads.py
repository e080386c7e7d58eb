"""Local reads: ``data://`` objects read through a file descriptor the Data API service hands over a Unix
socket, when client and service share a host (as HDFS short-circuit local reads do).

freestack.storage.httpfs uses it when the service's URL is a loopback address (127.0.0.1, ::1,
localhost) and local reads are not switched off (connection extra ``"local_reads": false``). On the first
read it asks the service's health once for the socket (``"local_reads": {"socket", "instance", "pid"}``),
connects, and checks that the process answering there is the service's (its pid, from the kernel) and
that the handshake names the same instance: a process that took the socket's place never sees a key. Each open is then one request on that
connection, answered with the object's size, mtime and a read-only descriptor: the service makes the
checks of a GET (the key, the ACL) before it sends one. Anything that keeps local reads from working
turns them off for that filesystem, with one log line saying why, and reads go over HTTP as before.

The connection is shared by the threads of a process (one request at a time, under a lock); a forked
child connects anew. A connection that breaks (the service restarted) is made again once, health asked
again; if that fails too, that read goes over HTTP and local reads stay off.

Read leases (freestack.dataapi.local): when the service grants one with an open, later opens of plain
names (``lease_name``) in the same collection with the same key are made here, relative to the
collection's directory, without a round trip, until the lease's time is up, the collection's ACL document
changes or a key is revoked (one ``fstat`` and one ``stat`` tell). Any other name, and any open that
fails under a lease, asks the service, whose answer is the one a GET gets. ``leases=False`` (connection
extra ``"read_leases": false``) asks the service for every open.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import socket
import stat
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from freestack.storage.acl import ACL_NAME, acl_stamp

log = logging.getLogger("freestack.storage")

SERVICE = "freestack-data-api"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_REPLY = 64 * 1024
TIMEOUT_S = 30.0
MAX_FDS = 3  # an answer's descriptors: the object's, and a lease's two
MAX_LEASES = 64  # collections a filesystem holds leases on at once (the one ending first makes room)
#: a name a lease opens: ASCII letters, digits and ._=+,@- in each segment, none starting with a dot, at most
#: 16 segments and 512 bytes; narrower than the service's path rules, so the service answers every other name
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+,@-]{0,127}(?:/[A-Za-z0-9_][A-Za-z0-9._=+,@-]{0,127}){0,15}")
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class LocalReadRefused(Exception):
    """The service answered an open with an error: the HTTP status and message a GET would get."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message


class LocalReadsUnavailable(Exception):
    """Local reads cannot be used (no socket offered, a broken connection, another service answering)."""


class LocalReadFile(io.BufferedReader):
    """A ``data://`` object opened through local reads: a read-only OS file (read, readinto, seek, tell,
    close, a context manager), of the version that was current when it was opened."""

    def __init__(self, fd: int, path: str, size: int, mtime: float | None):
        super().__init__(io.FileIO(fd, "rb", closefd=True))
        self.path = path
        self.size = size
        self.mtime = mtime

    def __repr__(self) -> str:
        return f"<LocalReadFile data://{self.path} ({self.size} bytes)>"


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine's loopback address."""
    return (urlsplit(url).hostname or "").lower() in LOOPBACK


def _read_line(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One JSON line from the service and the descriptors that came with it; LocalReadsUnavailable if the
    connection ends or the line is not a JSON object."""
    data, fds = b"", []
    try:
        while not data.endswith(b"\n"):
            chunk, got, _flags, _addr = socket.recv_fds(sock, 4096, MAX_FDS)
            fds.extend(got)
            if not chunk:
                raise LocalReadsUnavailable("the service closed the local-read connection")
            data += chunk
            if len(data) > MAX_REPLY:
                raise LocalReadsUnavailable(f"the service's answer is over {MAX_REPLY} bytes")
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError(type(message).__name__)
    except (OSError, ValueError, LocalReadsUnavailable) as exc:
        for fd in fds:
            os.close(fd)
        if isinstance(exc, LocalReadsUnavailable):
            raise
        raise LocalReadsUnavailable(f"the local-read connection failed: {exc}") from exc
    return message, fds


class Channel:
    """One connection to the service's local-read socket."""

    def __init__(self, path: str, instance: str, pid: int | None = None, timeout: float = TIMEOUT_S):
        self.path = path
        self.instance = instance
        self.service_pid = pid
        self.timeout = timeout
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None

    def connect(self) -> Channel:
        """Connect and check the handshake; LocalReadsUnavailable saying why not."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            creds = peer_credentials(sock)
            if self.service_pid is not None and creds is not None and creds[0] != self.service_pid:
                raise LocalReadsUnavailable(f"process {creds[0]} answers there, not the service (pid {self.service_pid})")
            hello, fds = _read_line(sock)
        except (OSError, LocalReadsUnavailable) as exc:
            sock.close()
            raise LocalReadsUnavailable(f"cannot connect to {self.path}: {exc}") from exc
        for fd in fds:
            os.close(fd)
        if hello.get("ok") is False:
            sock.close()
            raise LocalReadsUnavailable(f"{self.path} refused the connection: {hello.get('message')}")
        if hello.get("service") != SERVICE or hello.get("instance") != self.instance:
            sock.close()
            raise LocalReadsUnavailable(
                f"{self.path} is not the socket health named: another service, or another run of it, answers there"
            )
        self.sock, self.pid = sock, os.getpid()
        return self

    def forget(self) -> None:
        """Drop the connection (this process's copy of it)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __del__(self) -> None:  # the service's connection slot is freed with the filesystem
        self.forget()

    def open(self, path: str, key: str | None, *, lease: bool = False) -> Opened:
        """``path`` (resolved, ``owner/collection/...``) opened by the service, with a read lease if asked
        for and granted; LocalReadRefused with the service's status and message, LocalReadsUnavailable when
        the connection failed."""
        if self.pid != os.getpid():  # a forked child: its own connection, never the parent's
            self.lock = threading.Lock()
            self.forget()
            self.connect()
        asked = {"op": "open", "path": path, "key": key, **({"lease": True} if lease else {})}
        request = json.dumps(asked).encode() + b"\n"
        sent = time.monotonic()  # a lease's time runs from before it was granted
        with self.lock:
            if self.sock is None:
                self.connect()
            try:
                self.sock.sendall(request)
                reply, fds = _read_line(self.sock)
            except (OSError, LocalReadsUnavailable) as exc:
                self.forget()
                raise LocalReadsUnavailable(f"the local-read connection broke: {exc}") from exc
        return _opened(reply, fds, sent)


class NotAFile(OSError):
    """What was opened is neither a regular file nor a directory (a FIFO, a device, a socket)."""


def open_object(path: str, *, dir_fd: int | None = None) -> tuple[int, os.stat_result]:
    """A read-only descriptor of the regular file at ``path`` (relative to ``dir_fd`` if given) and its stat,
    opened as every local read opens an object, the service's and a lease's alike: ``O_NONBLOCK``, so that
    a FIFO put there does not wait for a writer, cleared once it is known to be a regular file.
    IsADirectoryError for a directory, NotAFile for anything else, OSError as ``os.open`` raises it."""
    fd = os.open(path, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def peer_credentials(sock: socket.socket) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket, where the kernel tells (Linux)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


@dataclass
class Lease:
    """A read lease on one collection: its directory, the keys' revocations log and the stamps the
    service's check was made against."""

    collection: str
    folder: int  # descriptor of the collection's directory
    revocations: int  # descriptor of the revocations log
    revoked: int  # the log's size when granted
    acl: tuple[int, int, int] | None  # the ACL document's stamp when granted (None: it had none)
    until: float  # time.monotonic() when it ends

    def valid(self) -> bool:
        """Not ended: in time, no key revoked since, the ACL document the same."""
        if time.monotonic() >= self.until:
            return False
        try:
            st = os.fstat(self.revocations)
            if st.st_size != self.revoked or st.st_nlink == 0:
                return False
            return acl_stamp(ACL_NAME, dir_fd=self.folder) == self.acl
        except OSError:  # the folder cannot be searched any more, say: the service decides
            return False

    def open(self, name: str) -> tuple[int, os.stat_result] | None:
        """A read-only descriptor of the regular file ``name`` inside the collection, and its stat; None for
        anything else (missing, a directory, unreadable): the service answers those."""
        try:
            return open_object(name, dir_fd=self.folder)
        except OSError:
            return None

    def close(self) -> None:
        for fd in (self.folder, self.revocations):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class Opened:
    """What the service's answer to an open gives: the object's descriptor, size and mtime, and a lease."""

    fd: int
    size: int
    mtime: float
    lease: Lease | None = None


def lease_name(path: str) -> tuple[str, str] | None:
    """``(owner/collection, name inside it)`` when ``path`` is an object a lease may open, else None."""
    owner, _, inside = path.partition("/")
    collection, _, name = inside.partition("/")
    if not owner or not collection or not name or not _PLAIN.fullmatch(name):
        return None
    return f"{owner}/{collection}", name


def _opened(reply: dict[str, Any], fds: list[int], sent: float) -> Opened:
    if reply.get("ok") is True and len(fds) in (1, MAX_FDS):
        st = os.fstat(fds[0])
        if stat.S_ISREG(st.st_mode):
            mtime = reply.get("mtime")
            mtime = float(mtime) if isinstance(mtime, int | float) else st.st_mtime
            return Opened(fds[0], st.st_size, mtime, _lease(reply.get("lease"), fds[1:], sent))
    for fd in fds:
        os.close(fd)
    if reply.get("ok") is False and isinstance(reply.get("status"), int):
        raise LocalReadRefused(reply["status"], str(reply.get("message") or "refused"))
    raise LocalReadsUnavailable(f"the service's answer is not one local reads understand: {str(reply)[:200]}")


def _lease(terms: Any, fds: list[int], sent: float) -> Lease | None:
    """The lease an answer grants (its two descriptors), None if it grants none or none that is well formed."""
    try:
        if not isinstance(terms, dict) or len(fds) != 2:
            raise ValueError("no lease")
        acl, seconds = terms["acl"], float(terms["seconds"])
        if acl is not None and not (isinstance(acl, list) and len(acl) == 3 and all(isinstance(x, int) for x in acl)):
            raise ValueError(f"acl stamp {acl!r}")
        if not stat.S_ISDIR(os.fstat(fds[0]).st_mode) or not isinstance(terms["revocations"], int):
            raise ValueError("descriptors")
        return Lease(str(terms["collection"]), fds[0], fds[1], terms["revocations"],
                     tuple(acl) if acl is not None else None, sent + seconds)  # fmt: skip
    except (KeyError, TypeError, ValueError, OSError):
        for fd in fds:
            os.close(fd)
        return None


_LIVE: weakref.WeakSet[LocalReads] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for local in list(_LIVE):  # a lock another thread held at the fork would stay held in the child
        local._setup = threading.Lock()
        local._leasing = threading.Lock()
        if local._channel is not None:
            local._channel.lock = threading.Lock()
        _end_all(local._leases)  # the child asks the service anew, as it connects anew


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _end_all(leases: dict[Any, Lease]) -> None:
    for lease in leases.values():
        lease.close()
    leases.clear()


class LocalReads:
    """Local reads for one Data API filesystem: set up on the first read, off for good once they fail.

    ``health`` answers the service's ``GET /v1/freestack/health`` as a dict; ``leases`` takes the read
    leases the service grants."""

    def __init__(self, url: str, health: Callable[[], dict[str, Any]], *, leases: bool = True):
        self.url = url
        self.health = health
        self.leases = leases
        self.opened = 0  # reads served locally: through the socket or under a lease
        self.leased = 0  # of those, the ones opened under a lease (no round trip)
        self.off_reason: str | None = None if is_loopback(url) else f"{url} is not a loopback address"
        self._channel: Channel | None = None
        self._setup = threading.Lock()
        self._leasing = threading.Lock()  # held while a lease's descriptors are used or ended
        self._leases: dict[tuple[str | None, str], Lease] = {}  # (key, owner/collection) -> lease
        weakref.finalize(self, _end_all, self._leases)
        _LIVE.add(self)

    @property
    def active(self) -> bool:
        """Whether reads go through the socket (False until the first read has set them up)."""
        return self._channel is not None and self.off_reason is None

    def open(self, path: str, key: str | None) -> LocalReadFile | None:
        """The object at ``path`` as a local file; None when it is to be read over HTTP instead.
        LocalReadRefused when the service refuses it (the status and message of a GET)."""
        local = self._open_leased(path, key)
        if local is not None:
            return local
        channel = self._ready()
        if channel is None:
            return None
        try:
            opened = channel.open(path, key, lease=self.leases)
        except LocalReadsUnavailable as first:
            channel = self._reconnect(channel, first)
            if channel is None:
                return None
            try:
                opened = channel.open(path, key, lease=self.leases)
            except LocalReadsUnavailable as exc:
                self._off(f"the connection broke again after a reconnect ({exc})")
                return None
        if opened.lease is not None:
            self._keep(key, opened.lease)
        self.opened += 1
        return LocalReadFile(opened.fd, path, opened.size, opened.mtime)

    def _open_leased(self, path: str, key: str | None) -> LocalReadFile | None:
        """``path`` opened under a lease held for its collection and ``key``; None when none covers it."""
        if not self._leases or self.off_reason is not None:
            return None
        named = lease_name(path)
        if named is None:
            return None
        with self._leasing:
            lease = self._leases.get((key, named[0]))
            if lease is None:
                return None
            if not lease.valid():
                del self._leases[(key, named[0])]
                lease.close()
                return None
            got = lease.open(named[1])
        if got is None:
            return None
        fd, st = got
        self.opened += 1
        self.leased += 1
        return LocalReadFile(fd, path, st.st_size, st.st_mtime)

    def _keep(self, key: str | None, lease: Lease) -> None:
        """Hold ``lease`` for ``key``, in place of the one held for its collection, if any."""
        with self._leasing:
            old = self._leases.pop((key, lease.collection), None)
            if old is None and len(self._leases) >= MAX_LEASES:
                old = self._leases.pop(min(self._leases, key=lambda k: self._leases[k].until))
            if old is not None:
                old.close()
            self._leases[(key, lease.collection)] = lease

    def _ready(self) -> Channel | None:
        if self._channel is not None or self.off_reason is not None:
            return self._channel if self.off_reason is None else None
        with self._setup:
            if self._channel is None and self.off_reason is None:
                try:
                    self._channel = self._connect()
                except LocalReadsUnavailable as exc:
                    self._off(str(exc))
        return self._channel if self.off_reason is None else None

    def _connect(self) -> Channel:
        try:
            advert = self.health().get("local_reads")
        except Exception as exc:  # any failure to ask: reads go over HTTP, which reports it if it persists
            raise LocalReadsUnavailable(f"its health could not be read ({exc})") from exc
        if not isinstance(advert, dict) or not advert.get("socket") or not advert.get("instance"):
            raise LocalReadsUnavailable(
                "the service offers none (started with --no-local-reads, hosted by Airflow, or not over a "
                "local folder)"
            )
        pid = advert.get("pid")
        channel = Channel(str(advert["socket"]), str(advert["instance"]), pid if isinstance(pid, int) else None)
        channel.connect()
        log.debug("data:// local reads through %s for %s", channel.path, self.url)
        return channel

    def _reconnect(self, broken: Channel, why: LocalReadsUnavailable) -> Channel | None:
        with self._setup:
            if self._channel is not broken:  # another thread reconnected (or turned them off) meanwhile
                return self._channel if self.off_reason is None else None
            self._channel = None
            try:
                self._channel = self._connect()
            except LocalReadsUnavailable as exc:
                self._off(f"{why}; reconnecting failed: {exc}")
        return self._channel

    def _off(self, reason: str) -> None:
        if self.off_reason is None:
            log.info("data:// local reads from %s are off, reading over HTTP: %s", self.url, reason)
        self.off_reason = reason
        if self._channel is not None:
            self._channel.forget()
        with self._leasing:
            _end_all(self._leases)


__all__ = [
    "Lease", "LocalReadFile", "LocalReadRefused", "LocalReads", "LocalReadsUnavailable", "NotAFile", "Opened",
    "is_loopback", "lease_name", "open_object", "peer_credentials",
]
