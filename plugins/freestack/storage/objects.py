"""Atomic, hashed writes and small read helpers over ObjectStoragePath.

A reader never sees a partial object, whatever the backend and even after ``kill -9``:
- local folders (``file://`` and ``data://`` over a folder): the bytes go to a hidden temporary
  file beside the target, are fsynced, then renamed over it (``os.replace`` is atomic);
- S3: an object appears only when its PUT or multipart upload completes; on error the upload is
  aborted, so an exception never publishes the bytes written so far.
The sha256 of the content is computed while writing, for lineage.

A local temporary is held locked (``flock``) by its writer while it writes. A writer killed mid-write
(``kill -9``, out of memory) leaves its temporary behind, unlocked: the next writer into that folder
removes it (:func:`remove_stale_temporaries`, one listing of the folder, at a process's first write
there), so a killed write never keeps its space. A write that finds the filesystem full removes its
temporary and raises StorageFull, which says where and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError, StorageFull
from freestack.settings import default_storage_root

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

TMP_MARK = ".freestack-tmp-"
#: an unlocked temporary younger than this may belong to a writer between creating and locking it
STALE_AFTER_S = 30.0
#: this process's temporaries being written: a lock does not keep out its own process on every filesystem
#: (NFS emulates flock with POSIX locks, which are per process)
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()
#: folders this process has swept: once each is enough (a task is a process of its own)
_SWEPT: set[str] = set()


def local_os_path(path: ObjectStoragePath, *, write: bool = False) -> str | None:
    """The operating-system path behind ``path`` if it lives on a local disk, else None.

    For ``data://`` the collection's ACL is checked first (AccessDenied): reading, or writing when
    ``write`` is true, since the caller then bypasses the filesystem object."""
    from fsspec.implementations.local import LocalFileSystem

    fs = path.fs
    if isinstance(fs, LocalFileSystem):
        return fs._strip_protocol(path.path)
    if getattr(fs, "protocol", None) == "data" and getattr(fs, "is_local", False):  # freestack.storage.datafs
        return fs.local_path(path.path, write=write)
    return None


@dataclass(frozen=True)
class WrittenObject:
    uri: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, "size": self.size}


class PublishOnExit:
    """Base of the write-only files that publish only a finished write.

    Leaving a ``with`` block normally publishes (``_publish``); an exception, or a writer dropped
    unfinished, abandons the write (``_abandon``), so a failed or forgotten write publishes nothing.
    A subclass reads ``closed`` True until there is something to publish or abandon.
    """

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._publish()
        else:
            self._abandon()

    def __del__(self):
        if not getattr(self, "closed", True):
            self._abandon()


class AtomicWriter(PublishOnExit):
    """A binary, write-only file object that publishes its target only on ``commit()``.

    Use as a context manager: leaving the block normally commits, an exception aborts. With
    ``if_absent=True`` the commit fails if the target exists (create-if-absent), atomically.
    """

    def __init__(
        self,
        path: ObjectStoragePath,
        *,
        if_absent: bool = False,
        on_temporary: Callable[[str], None] | None = None,
    ):
        """``on_temporary`` is told a local write's temporary before the file exists (to journal it)."""
        self._done = True  # until the handle below is open, there is nothing to abort
        self.path = path
        self.if_absent = if_absent
        self._hash = hashlib.sha256()
        self._size = 0
        self._failed: StorageFull | None = None
        self.result: WrittenObject | None = None
        self._local = local_os_path(path, write=True)
        if self._local is not None:
            folder, name = os.path.split(self._local)
            # the name is shortened so that any name the OS accepts still leaves room for the suffix
            self._tmp = os.path.join(folder, f".{name[:40]}{TMP_MARK}{uuid.uuid4().hex}")
            self._made: list[str] = []
            try:
                self._made = _makedirs(folder)
                if not self._made and on_temporary is None:  # a journalled write's owner sweeps its own
                    _sweep_once(folder)
                if on_temporary is not None:
                    on_temporary(self._tmp)
                self._fh = _open_locked(self._tmp)
            except OSError as exc:
                if StorageFull.caused(exc):
                    full = self._full(exc)
                    self._remove_folders()
                    raise full from exc
                raise
        else:
            self._tmp = None
            self._fh = path.fs.open(path.path, "xb" if if_absent else "wb")
        self._done = False

    # file-object protocol (what pyarrow and json need)
    def write(self, data) -> int:
        if self._failed is not None:
            raise self._failed
        if self._done:
            raise ValueError(f"write to {self.path} after commit/abort")
        view = memoryview(data).cast("B")
        self._hash.update(view)
        try:
            self._fh.write(view)
        except OSError as exc:
            self._fail(exc)
        self._size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        if not self._done and self._local is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self._fail(exc)

    @property
    def closed(self) -> bool:
        return self._done

    def close(self) -> None:
        """Closing is commit: callers that only know ``close()`` (pyarrow, json) publish the object."""
        if not self._done:
            self.commit()

    def digest(self) -> tuple[str, int]:
        """(sha256, size) of what was written so far: for naming an object by its content before it
        is committed (:meth:`commit_as`)."""
        return self._hash.hexdigest(), self._size

    def commit_as(self, path: ObjectStoragePath) -> WrittenObject:
        """Commit under ``path`` instead of the name given at the start (a name known only once the
        content is, e.g. its hash). Local folders rename the temporary straight to ``path``; object
        stores publish the first name, copy it server-side to ``path`` and remove the first name, so
        a crash between the two leaves a complete, unreferenced object under the first name (callers
        choose a name their readers ignore and remove leftovers)."""
        if self._local is not None and not self._done:
            self._local = local_os_path(path, write=True)
            self.path = path
            return self.commit()
        first = self.commit()
        if str(path) == first.uri:
            return first
        path.fs.mv(self.path.path, path.path)
        self.path = path
        self.result = WrittenObject(uri=str(path), sha256=first.sha256, size=first.size)
        return self.result

    def commit(self) -> WrittenObject:
        if self._failed is not None:
            raise self._failed
        if self._done:
            if self.result is None:
                raise FreestackError(f"{self.path} was aborted; it cannot be committed")
            return self.result
        try:
            if self._local is not None:
                self._commit_local()
            else:
                try:
                    self._fh.close()
                except OSError as exc:
                    if self.if_absent and _precondition_failed(exc):
                        raise FileExistsError(f"{self.path} already exists") from exc
                    raise
        except BaseException as exc:
            if StorageFull.caused(exc) and not isinstance(exc, StorageFull):
                self._failed = self._full(exc)  # before the cleanup: how full the disk was
            self._done = True
            self._cleanup()
            if self._failed is not None:
                raise self._failed from exc
            raise
        self._done = True
        self.result = WrittenObject(uri=str(self.path), sha256=self._hash.hexdigest(), size=self._size)
        return self.result

    def _commit_local(self) -> None:
        """fsync the temporary, then move it into place while still holding it (and its lock) open, so
        no sweep can take it for a killed writer's between the two."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        if self.if_absent:
            try:
                os.link(self._tmp, self._local)
            except FileExistsError:
                raise FileExistsError(f"{self.path} already exists") from None
            finally:
                os.unlink(self._tmp)
        else:
            os.replace(self._tmp, self._local)
        self._release()
        _fsync_dir(os.path.dirname(self._local))

    def abort(self) -> None:
        """Throw the write away. Never raises for the bytes it discards (closing a handle on a full disk
        fails): whatever happens, the temporary is removed."""
        if self._done:
            return
        self._done = True
        self._cleanup()

    def _fail(self, exc: OSError) -> None:
        """A write or flush failed: out of space, abort at once (freeing the space for other writers) and
        raise StorageFull, again for any later call; any other error is raised as it is."""
        if not StorageFull.caused(exc):
            raise exc
        self._failed = self._full(exc)  # before the abort: how full the disk was
        self.abort()
        raise self._failed from exc

    def _full(self, exc: OSError) -> StorageFull:
        written = self._size
        if self._local is not None and getattr(self, "_fh", None) is not None:
            with contextlib.suppress(OSError, ValueError):
                written = os.fstat(self._fh.fileno()).st_size  # what reached the disk
        message = no_space_message(exc, str(self.path), self._local, written)
        return StorageFull(exc.errno, message, self._local)

    def _release(self) -> None:
        with contextlib.suppress(OSError):  # a full disk fails the flush of bytes being thrown away
            self._fh.close()
        with _LIVE_LOCK:
            _LIVE.discard(self._tmp)

    def _remove_folders(self) -> None:
        for folder in self._made:  # only folders this writer created, and only if empty
            try:
                os.rmdir(folder)
            except OSError:
                break

    def _cleanup(self) -> None:
        if self._local is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            finally:
                self._release()
                self._remove_folders()
        else:
            discard = getattr(self._fh, "discard", None)
            if callable(discard):
                discard()
            # mark closed so neither close() nor __del__ uploads what was buffered
            with contextlib.suppress(AttributeError):
                self._fh.closed = True

    def _publish(self) -> None:
        self.commit()

    def _abandon(self) -> None:
        self.abort()


def abort_all(*writers: AtomicWriter | None) -> None:
    """Abort every writer, whatever aborting one of them raises (logged): one failed abort must not
    leave the others' temporaries behind. For the error path, so it raises nothing itself."""
    for writer in writers:
        if writer is None:
            continue
        try:
            writer.abort()
        except Exception:
            log.warning("aborting the write of %s failed", writer.path, exc_info=True)


def _open_locked(tmp: str):
    """Create the temporary ``tmp`` and hold it locked, so sweeps know its writer lives."""
    fh = open(tmp, "xb")  # noqa: SIM115  (closed in commit/abort)
    # a filesystem without locks: the age rule of remove_stale_temporaries still holds
    with contextlib.suppress(OSError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    with _LIVE_LOCK:
        _LIVE.add(tmp)
    return fh


def _sweep_once(folder: str) -> None:
    """The first write of this process into ``folder`` removes what killed writers left there."""
    with _LIVE_LOCK:
        if folder in _SWEPT:
            return
        _SWEPT.add(folder)
    remove_stale_temporaries(folder)


def is_temporary(name: str) -> bool:
    """Whether a file name is that of a write's hidden temporary."""
    return name.startswith(".") and TMP_MARK in name


def remove_stale_temporaries(folder: str, *, min_age: float = STALE_AFTER_S) -> tuple[int, int]:
    """Remove the temporaries directly in the local ``folder`` whose writer is gone; return ``(files
    removed, bytes freed)``. Gone means: no process holds the temporary locked (a writer holds it from
    creating it until it is renamed into place or removed; the kernel drops the lock of a process that
    dies, even by ``kill -9``), it is not this process's, and it is older than ``min_age`` seconds (a
    writer locks it just after creating it). One listing of ``folder``; nothing below it."""
    removed = freed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0, 0
    cutoff = time.time() - min_age
    for entry in entries:
        if not is_temporary(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff and remove_if_unlocked(entry.path):
                removed, freed = removed + 1, freed + st.st_size
        except FileNotFoundError:  # committed, aborted or removed meanwhile
            continue
        except OSError as exc:
            log.warning("could not remove the stale temporary %s: %s", entry.path, exc)
    if removed:
        log.warning(
            "removed %d temporaries (%.1f MiB) that killed writers left in %s", removed, freed / 2**20, folder
        )
    return removed, freed


def remove_if_unlocked(path: str) -> bool:
    """Remove the temporary ``path`` unless a writer holds it: one of this process's, or one that holds
    it locked (checked, and removed, under a lock of our own)."""
    with _LIVE_LOCK:
        if path in _LIVE:
            return False
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # its writer lives
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def no_space_message(exc: OSError, uri: str, local: str | None, written: int) -> str:
    """What a write that ran out of space says: the filesystem and how full it is, the storage root, the
    object and how much of it was written, that nothing of it was published, and what to do."""
    what = "No space left" if exc.errno == errno.ENOSPC else "Disk quota exceeded"
    where = ""
    if local is not None:
        mount = _mount_point(os.path.dirname(local))
        where = f" on the filesystem at {mount}"
        with contextlib.suppress(OSError):
            vfs = os.statvfs(mount)
            where += f" ({_mib(vfs.f_bavail * vfs.f_frsize)} free of {_mib(vfs.f_blocks * vfs.f_frsize)})"
    root = default_storage_root().rstrip("/")
    under = f"storage root {root}; " if uri.startswith(root + "/") else ""
    return (
        f"{what}{where} while writing {uri} ({under}{_mib(written)} of it written): it was not published and "
        "its partial copy was removed. Free space on that filesystem (or point the storage root, "
        "FREESTACK_STORAGE_ROOT or the spec's storage_root, at a larger one), then re-run the task."
    )


def _mount_point(folder: str) -> str:
    cur = os.path.abspath(folder)
    while not os.path.exists(cur):
        cur = os.path.dirname(cur)
    while not os.path.ismount(cur):
        cur = os.path.dirname(cur)
    return cur


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def s3_answered(exc: BaseException, code: str, status: int) -> bool:
    """Whether S3 answered with error ``code`` or HTTP ``status``, however the client wraps it."""
    for err in (exc, exc.__cause__, exc.__context__):
        resp = getattr(err, "response", None) or {}
        if (
            resp.get("Error", {}).get("Code") == code
            or resp.get("ResponseMetadata", {}).get("HTTPStatusCode") == status
        ):
            return True
    return False


def _precondition_failed(exc: BaseException) -> bool:
    """An S3 conditional write (If-None-Match) lost: 412 PreconditionFailed, however the client wraps it."""
    return isinstance(exc, FileExistsError) or s3_answered(exc, "PreconditionFailed", 412)


def _makedirs(folder: str) -> list[str]:
    """Create ``folder`` and missing parents; return those created, deepest first."""
    made: list[str] = []
    cur = os.path.abspath(folder)
    while not os.path.isdir(cur):
        made.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    os.makedirs(folder, exist_ok=True)
    return made


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: ObjectStoragePath, *, if_absent: bool = False) -> Iterator[AtomicWriter]:
    writer = AtomicWriter(path, if_absent=if_absent)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def write_bytes(path: ObjectStoragePath, data: bytes, *, if_absent: bool = False) -> WrittenObject:
    with atomic_write(path, if_absent=if_absent) as w:
        w.write(data)
    return w.result  # type: ignore[return-value]


def write_json(path: ObjectStoragePath, obj: Any, *, if_absent: bool = False) -> WrittenObject:
    data = (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    return write_bytes(path, data, if_absent=if_absent)


def sha256_of(path: ObjectStoragePath) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def remove_temporaries(folder: ObjectStoragePath) -> list[str]:
    """Remove the temporaries under ``folder`` (at any depth) that writers killed mid-write left behind;
    returns their paths. Only for a folder whose writer is the caller: a live writer's temporary
    looks the same."""
    fs = folder.fs
    fs.invalidate_cache(folder.path)
    try:
        found = fs.find(folder.path)
    except FileNotFoundError:
        return []
    stale = [str(p) for p in found if TMP_MARK in str(p).rsplit("/", 1)[-1]]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)
    return stale


def list_objects(folder: ObjectStoragePath) -> list[ObjectStoragePath]:
    """Files directly in ``folder``, sorted by name, hiding temporaries and dot-files."""
    # object stores cache listings per process (s3fs, forever): look again, so files written
    # meanwhile by other processes are seen
    folder.fs.invalidate_cache(folder.path)
    if not folder.exists():
        return []
    out = [p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()]
    return sorted(out, key=lambda p: p.name)


def subfolders(folder: ObjectStoragePath) -> list[str]:
    """The names of the folders directly in ``folder`` (one listing call, also on object stores)."""
    folder.fs.invalidate_cache(folder.path)
    try:
        entries = folder.fs.ls(folder.path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
