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
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import struct
import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("freestack.storage")

SERVICE = "freestack-data-api"
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_REPLY = 64 * 1024
TIMEOUT_S = 30.0


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
            chunk, got, _flags, _addr = socket.recv_fds(sock, 4096, 1)
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
            peer = _peer_pid(sock)
            if self.service_pid is not None and peer is not None and peer != self.service_pid:
                raise LocalReadsUnavailable(f"process {peer} answers there, not the service (pid {self.service_pid})")
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

    def open(self, path: str, key: str | None) -> tuple[int, int, float | None]:
        """``(fd, size, mtime)`` of ``path`` (resolved, ``owner/collection/...``); LocalReadRefused with
        the service's status and message, LocalReadsUnavailable when the connection failed."""
        if self.pid != os.getpid():  # a forked child: its own connection, never the parent's
            self.lock = threading.Lock()
            self.forget()
            self.connect()
        request = json.dumps({"op": "open", "path": path, "key": key}).encode() + b"\n"
        with self.lock:
            if self.sock is None:
                self.connect()
            try:
                self.sock.sendall(request)
                reply, fds = _read_line(self.sock)
            except (OSError, LocalReadsUnavailable) as exc:
                self.forget()
                raise LocalReadsUnavailable(f"the local-read connection broke: {exc}") from exc
        return _opened(reply, fds)


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a Unix socket, where the kernel tells (Linux)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def _opened(reply: dict[str, Any], fds: list[int]) -> tuple[int, int, float | None]:
    if reply.get("ok") is True and len(fds) == 1:
        st = os.fstat(fds[0])
        if stat.S_ISREG(st.st_mode):
            mtime = reply.get("mtime")
            return fds[0], st.st_size, float(mtime) if isinstance(mtime, int | float) else st.st_mtime
    for fd in fds:
        os.close(fd)
    if reply.get("ok") is False and isinstance(reply.get("status"), int):
        raise LocalReadRefused(reply["status"], str(reply.get("message") or "refused"))
    raise LocalReadsUnavailable(f"the service's answer is not one local reads understand: {str(reply)[:200]}")


_LIVE: weakref.WeakSet[LocalReads] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for local in list(_LIVE):  # a lock another thread held at the fork would stay held in the child
        local._setup = threading.Lock()
        if local._channel is not None:
            local._channel.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LocalReads:
    """Local reads for one Data API filesystem: set up on the first read, off for good once they fail.

    ``health`` answers the service's ``GET /v1/freestack/health`` as a dict."""

    def __init__(self, url: str, health: Callable[[], dict[str, Any]]):
        self.url = url
        self.health = health
        self.opened = 0  # reads served through the socket
        self.off_reason: str | None = None if is_loopback(url) else f"{url} is not a loopback address"
        self._channel: Channel | None = None
        self._setup = threading.Lock()
        _LIVE.add(self)

    @property
    def active(self) -> bool:
        """Whether reads go through the socket (False until the first read has set them up)."""
        return self._channel is not None and self.off_reason is None

    def open(self, path: str, key: str | None) -> LocalReadFile | None:
        """The object at ``path`` as a local file; None when it is to be read over HTTP instead.
        LocalReadRefused when the service refuses it (the status and message of a GET)."""
        channel = self._ready()
        if channel is None:
            return None
        try:
            fd, size, mtime = channel.open(path, key)
        except LocalReadsUnavailable as first:
            channel = self._reconnect(channel, first)
            if channel is None:
                return None
            try:
                fd, size, mtime = channel.open(path, key)
            except LocalReadsUnavailable as exc:
                self._off(f"the connection broke again after a reconnect ({exc})")
                return None
        self.opened += 1
        return LocalReadFile(fd, path, size, mtime)

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


__all__ = ["LocalReadFile", "LocalReadRefused", "LocalReads", "LocalReadsUnavailable", "is_loopback"]
