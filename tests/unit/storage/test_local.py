"""file:// and data:// storage: atomic writes (also under kill -9), hashing, path safety."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from freestack.errors import UnsafePathError
from freestack.storage import (
    atomic_write,
    check_relative,
    join,
    list_objects,
    to_path,
    write_bytes,
    write_json,
)


def test_write_read_hash_and_list(tmp_path):
    root = to_path(tmp_path.as_uri())
    obj = write_bytes(join(root, "a", "b.bin"), b"payload")
    assert obj.sha256 == hashlib.sha256(b"payload").hexdigest() and obj.size == 7
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"payload"
    write_json(join(root, "a", "c.json"), {"x": 1})
    assert [p.name for p in list_objects(join(root, "a"))] == ["b.bin", "c.json"]


def test_exception_inside_write_leaves_nothing_and_keeps_old_version(tmp_path):
    root = to_path(tmp_path.as_uri())
    target = join(root, "x.bin")
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as w:
            w.write(b"new but half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]  # no temporary left behind


def test_a_local_writers_temporary_is_announced_before_it_exists(tmp_path):
    """What journals an upload's temporary hears of it before the file is there: a kill -9 at any moment
    leaves no temporary that the journal does not list."""
    from freestack.storage.objects import AtomicWriter

    seen = []
    with AtomicWriter(
        join(to_path(tmp_path.as_uri()), "x.bin"),
        on_temporary=lambda tmp: seen.append((tmp, os.path.exists(tmp))),
    ) as w:
        w.write(b"data")
        assert [os.path.exists(tmp) for tmp, _ in seen] == [True]
    assert len(seen) == 1 and seen[0][1] is False and ".freestack-tmp-" in seen[0][0]
    assert (tmp_path / "x.bin").read_bytes() == b"data"


def test_if_absent_is_exclusive(tmp_path):
    target = join(to_path(tmp_path.as_uri()), "lease.json")
    write_bytes(target, b"first", if_absent=True)
    with pytest.raises(FileExistsError):
        write_bytes(target, b"second", if_absent=True)
    assert target.read_bytes() == b"first"


@pytest.mark.parametrize("scheme", ["file", "data"])
def test_kill_9_mid_write_never_exposes_a_partial_object(tmp_path, scheme, monkeypatch, clean_stores):
    monkeypatch.setenv("FREESTACK_DATA_ROOT", (tmp_path / "backing").as_uri())
    uri = (tmp_path / "out.bin").as_uri() if scheme == "file" else "data://.my/coll/out.bin"
    final = (
        tmp_path / "out.bin" if scheme == "file" else tmp_path / "backing" / "freestack" / "coll" / "out.bin"
    )
    write_bytes(to_path(uri), b"previous version")
    (tmp_path / "signals").mkdir()
    marker = tmp_path / "signals" / "started"
    script = textwrap.dedent(
        f"""
        import time, pathlib
        from freestack.storage import AtomicWriter, to_path
        w = AtomicWriter(to_path({uri!r}))
        w.write(b"x" * (1 << 20))
        pathlib.Path({str(marker)!r}).write_text("1")
        while True:
            w.write(b"y" * (1 << 16))
            time.sleep(0.01)
        """
    )
    env = dict(os.environ, FREESTACK_DATA_ROOT=(tmp_path / "backing").as_uri())
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, "writer died early"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert final.read_bytes() == b"previous version"
    assert [p.name for p in list_objects(to_path(uri).parent)] == ["out.bin"]


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a/%2e%2e/b",
        "%2e%2e%2fx",
        "a/%252e%252e/b",
        "a\\..\\b",
        "a/./b",
        "~root",
        "a\x00b",
        "C:/x",
    ],
)
def test_paths_that_escape_are_rejected(bad):
    with pytest.raises(UnsafePathError):
        check_relative(bad)


def test_join_rejects_traversal(tmp_path):
    with pytest.raises(UnsafePathError, match="escape"):
        join(to_path(tmp_path.as_uri()), "lake/../../etc")


def test_data_scheme_maps_my_to_owner(tmp_path, monkeypatch, clean_stores):
    monkeypatch.setenv("FREESTACK_DATA_ROOT", (tmp_path / "store").as_uri())
    monkeypatch.setenv("FREESTACK_DATA_OWNER", "alice")
    p = to_path("data://.my/models/card.json")
    write_json(p, {"ok": True})
    assert (tmp_path / "store" / "alice" / "models" / "card.json").exists()
    assert to_path("data://alice/models/card.json").read_text().strip().startswith("{")
    for bad in ("data://.my/../bob/x", "data://.my/m/%2e%2e/%2e%2e/x", "data://..hidden/x"):
        with pytest.raises(UnsafePathError):
            to_path(bad).read_bytes()


def test_data_scheme_through_airflow_provider_registry(tmp_path, monkeypatch, clean_stores):
    """ObjectStoragePath resolves data:// through the provider's `filesystems` entry."""
    from airflow.sdk.io import get_fs

    from freestack.storage.datafs import DataFileSystem

    monkeypatch.setenv("FREESTACK_DATA_ROOT", (tmp_path / "store").as_uri())
    fs = get_fs("data", None)
    assert isinstance(fs, DataFileSystem)
    fs.makedirs("freestack/c", exist_ok=True)
    fs.pipe_file("freestack/c/f.txt", b"hi")
    assert (tmp_path / "store" / "freestack" / "c" / "f.txt").read_bytes() == b"hi"
