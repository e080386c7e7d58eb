"""freestack storage against real S3-compatible servers (moto_server and SeaweedFS) on 127.0.0.1.

Every test runs once per server (see ``s3_server`` in conftest.py) in a fresh bucket, and checks
the outcome on the server itself with boto3, not only through the code under test.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import pytest

from freestack.errors import UnsafePathError
from freestack.storage import (
    AtomicWriter,
    atomic_write,
    join,
    list_objects,
    sha256_of,
    to_path,
    write_bytes,
    write_json,
)

pytestmark = [pytest.mark.s3, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
# S3's smallest multipart part. s3fs buffers 50 MiB per part by default; the tests lower the
# block size of the connection's filesystem so that ~11 MiB already spans several parts.
PART = 5 * MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def small_parts(path) -> None:
    """Make the (cached, per-connection) S3 filesystem behind ``path`` upload 5 MiB parts."""
    path.fs.default_block_size = PART


def multipart_parts(s3, key: str) -> list[int]:
    """Part numbers of every multipart upload of ``key`` still pending on the server."""
    out = []
    for up in s3.pending_uploads(key):
        if up["Key"] == key:
            parts = s3.s3.list_parts(Bucket=s3.bucket, Key=key, UploadId=up["UploadId"]).get("Parts", [])
            out.append(len(parts))
    return out


# ---------------------------------------------------------------------------------------------------------
# round trip


def test_round_trip_hash_and_listing(s3_conn):
    s3 = s3_conn
    base = to_path(s3.uri("prefix"))
    payload = os.urandom(300_000) + b"end"

    obj = write_bytes(join(base, "a.bin"), payload)
    assert obj.uri == s3.uri("prefix/a.bin")
    assert obj.size == len(payload)
    assert obj.sha256 == sha(payload)

    doc = {"b": [1, 2, 3], "a": "x", "when": date(2026, 11, 1)}
    jobj = write_json(join(base, "b.json"), doc)
    stored_json = s3.get("prefix/b.json")
    assert jobj.sha256 == sha(stored_json) and jobj.size == len(stored_json)
    assert json.loads(stored_json) == {"a": "x", "b": [1, 2, 3], "when": "2026-11-01"}

    # read back through freestack and directly from the server
    assert s3.get("prefix/a.bin") == payload
    assert join(base, "a.bin").read_bytes() == payload
    assert json.loads(join(base, "b.json").read_text()) == json.loads(stored_json)
    assert sha256_of(join(base, "a.bin")) == obj.sha256

    # dot-files (and our temporaries' naming) and sub-folders are not listed
    s3.s3.put_object(Bucket=s3.bucket, Key="prefix/.hidden", Body=b"h")
    s3.s3.put_object(Bucket=s3.bucket, Key="prefix/.a.bin.freestack-tmp-123", Body=b"t")
    s3.s3.put_object(Bucket=s3.bucket, Key="prefix/sub/c.txt", Body=b"c")
    base.fs.invalidate_cache()  # those puts bypassed this process's listing cache (see the last test)
    assert [p.name for p in list_objects(base)] == ["a.bin", "b.json"]
    assert [str(p) for p in list_objects(base)] == [s3.uri("prefix/a.bin"), s3.uri("prefix/b.json")]
    assert list_objects(join(base, "missing")) == []

    # overwrite replaces the object whole
    obj2 = write_bytes(join(base, "a.bin"), b"v2")
    assert s3.get("prefix/a.bin") == b"v2" and obj2.sha256 == sha(b"v2") and obj2.size == 2
    assert s3.keys("prefix/") == [
        "prefix/.a.bin.freestack-tmp-123",
        "prefix/.hidden",
        "prefix/a.bin",
        "prefix/b.json",
        "prefix/sub/c.txt",
    ]


# ---------------------------------------------------------------------------------------------------------
# abort


def test_abort_after_multipart_leaves_nothing(s3_conn):
    s3 = s3_conn
    fresh = to_path(s3.uri("out/big.bin"))
    small_parts(fresh)
    chunk = os.urandom(MiB)

    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(fresh) as w:
            for _ in range(11):  # 11 MiB: two 5 MiB parts uploaded, 1 MiB still buffered
                w.write(chunk)
            assert multipart_parts(s3, "out/big.bin") == [2], "the write should be a multipart upload by now"
            assert not s3.exists("out/big.bin")
            raise RuntimeError("boom")

    assert w.result is None and w.closed
    assert not s3.exists("out/big.bin")
    assert s3.keys() == []
    assert s3.pending_uploads() == [], "abort must abort the multipart upload, not leave it pending"
    fresh.fs.invalidate_cache()
    assert not fresh.exists()
    with pytest.raises(Exception, match="aborted"):
        w.commit()


def test_abort_keeps_previous_version(s3_conn):
    s3 = s3_conn
    s3.s3.put_object(Bucket=s3.bucket, Key="out/model.bin", Body=b"version 1")
    target = to_path(s3.uri("out/model.bin"))
    small_parts(target)

    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as w:
            for _ in range(12):
                w.write(b"\x01" * MiB)
            raise KeyboardInterrupt  # BaseException too
    assert s3.get("out/model.bin") == b"version 1"
    assert s3.pending_uploads() == []

    # a small write (one-shot PUT, never multipart) aborted: nothing new either
    with pytest.raises(ValueError):
        with atomic_write(to_path(s3.uri("out/small.json"))) as w:
            w.write(b'{"half": ')
            raise ValueError("serialisation failed")
    assert not s3.exists("out/small.json")

    # an AtomicWriter dropped without commit (e.g. a crash in caller code) publishes nothing
    w = AtomicWriter(to_path(s3.uri("out/dropped.bin")))
    w.write(b"x" * 1000)
    w.abort()
    w.close()  # close after abort must not publish
    del w
    assert s3.keys() == ["out/model.bin"]
    assert s3.get("out/model.bin") == b"version 1"


# ---------------------------------------------------------------------------------------------------------
# kill -9


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from freestack.storage import AtomicWriter, to_path

    fresh, existing = to_path(sys.argv[1]), to_path(sys.argv[2])
    fresh.fs.default_block_size = 5 << 20  # several parts for a few MiB (see PART in the test)
    writers = [AtomicWriter(fresh), AtomicWriter(existing)]
    chunk = bytes(range(256)) * 4096  # 1 MiB
    for mib in range(1, 200):
        for w in writers:
            w.write(chunk)
        print(f"wrote {mib}", flush=True)
        time.sleep(0.05)
    for w in writers:
        w.commit()
    print("COMMITTED", flush=True)
    """
)


def test_kill_9_mid_multipart_publishes_nothing(s3_conn, tmp_path):
    s3 = s3_conn
    s3.s3.put_object(Bucket=s3.bucket, Key="k/existing.bin", Body=b"previous version")
    errlog = tmp_path / "writer.stderr"
    with open(errlog, "wb") as err:  # a file, not a pipe: a chatty child cannot block on it
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_SCRIPT, s3.uri("k/fresh.bin"), s3.uri("k/existing.bin")],
            stdout=subprocess.PIPE,
            stderr=err,
            env=dict(os.environ),
            cwd=ROOT,
        )
    try:
        written = 0
        deadline = time.monotonic() + 90
        while written < 12 and time.monotonic() < deadline:  # 12 MiB each: 2 parts up, 2 MiB buffered
            line = proc.stdout.readline().decode()
            if not line:
                break
            assert "COMMITTED" not in line
            if line.startswith("wrote "):
                written = int(line.split()[1])
        assert written >= 12, f"writer did not progress: rc={proc.poll()} stderr={errlog.read_text()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # it was killed in the middle of two multipart uploads ...
    assert multipart_parts(s3, "k/fresh.bin") and min(multipart_parts(s3, "k/fresh.bin")) >= 2
    assert multipart_parts(s3, "k/existing.bin") and min(multipart_parts(s3, "k/existing.bin")) >= 2
    # ... and neither is visible: no new object, the old one untouched
    assert not s3.exists("k/fresh.bin")
    assert s3.get("k/existing.bin") == b"previous version"
    assert s3.keys() == ["k/existing.bin"]
    fresh = to_path(s3.uri("k/fresh.bin"))
    assert not fresh.exists()
    assert list_objects(to_path(s3.uri("k"))) == [to_path(s3.uri("k/existing.bin"))]


# ---------------------------------------------------------------------------------------------------------
# data:// over S3


def test_data_namespace_on_s3(data_conn):
    s3 = data_conn
    p = to_path("data://.my/coll/file.json")
    obj = write_json(p, {"model": "cnn", "acc": 0.97})
    assert s3.keys() == ["data/alice/coll/file.json"]
    stored = s3.get("data/alice/coll/file.json")
    assert json.loads(stored) == {"acc": 0.97, "model": "cnn"}
    assert obj.sha256 == sha(stored) and obj.size == len(stored)
    assert json.loads(p.read_text()) == {"acc": 0.97, "model": "cnn"}
    # the owner's name and .my are the same place
    assert to_path("data://alice/coll/file.json").read_bytes() == stored
    assert [q.name for q in list_objects(to_path("data://.my/coll"))] == ["file.json"]

    # another owner's collection lies beside it, under the same root, and its ACL applies to alice
    s3.s3.put_object(Bucket=s3.bucket, Key="data/bob/shared/x.bin", Body=b"bob")
    with pytest.raises(PermissionError, match="may not read data://bob/shared"):
        to_path("data://bob/shared/x.bin").read_bytes()
    with pytest.raises(PermissionError):
        write_bytes(to_path("data://bob/shared/x.bin"), b"alice")
    assert s3.get("data/bob/shared/x.bin") == b"bob"

    # escaping the namespace is refused, whatever the spelling; nothing is written
    before = s3.keys()
    for uri in (
        "data://.my/../x",
        "data://.my/coll/../../x",
        "data://.my/%2e%2e/x",
        "data://.my/coll/%2E%2E/%2e%2e/x",
        "data://.my/%252e%252e/x",
        "data://.hidden/coll/x",
    ):
        with pytest.raises(UnsafePathError):
            write_bytes(to_path(uri), b"escape")
        with pytest.raises(UnsafePathError):
            to_path(uri).read_bytes()
    assert s3.keys() == before


# ---------------------------------------------------------------------------------------------------------
# ingest


def _make_landing():
    spec = importlib.util.spec_from_file_location(
        "freestack_demo_landing", ROOT / "include" / "demo" / "landing.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ingest_partition_on_s3(s3_conn, monkeypatch):
    import pyarrow.parquet as pq

    from freestack.ingest.core import ingest_partition
    from freestack.spec import load_spec

    s3 = s3_conn
    root = s3.uri("root")
    monkeypatch.setenv("FREESTACK_STORAGE_ROOT", root)
    landing = _make_landing()
    uris = landing.make_landing(root, date(2026, 11, 1), 2)
    assert uris == [
        s3.uri("root/landing/digits/2026-11-01/digits.csv"),
        s3.uri("root/landing/digits/2026-11-02/digits.csv"),
    ]
    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    assert spec.root == root

    first = ingest_partition(spec, "2026-11-01")
    lake = "root/lake/digits/ds=2026-11-01/"
    quarantine_key = lake + f"_quarantine-{first.quarantine['sha256'][:16]}.parquet"
    assert s3.keys(lake) == [lake + "_manifest.json", quarantine_key, lake + "part.parquet"]
    assert first.partition == s3.uri(lake)

    expected_good = len(landing.day_rows(0, 2))
    assert first.rows_quarantined == 5
    assert first.rows_good == expected_good
    assert first.rows_in == first.rows_good + first.rows_quarantined == expected_good + 5

    part_bytes = s3.get(lake + "part.parquet")
    quar_bytes = s3.get(quarantine_key)
    assert first.part["sha256"] == sha(part_bytes) and first.part["size"] == len(part_bytes)
    assert first.quarantine["sha256"] == sha(quar_bytes)
    part = pq.read_table(io.BytesIO(part_bytes))
    quar = pq.read_table(io.BytesIO(quar_bytes))
    assert part.num_rows == first.rows_good
    assert quar.num_rows == 5
    assert len(set(part.column("id").to_pylist())) == part.num_rows
    manifest = json.loads(s3.get(lake + "_manifest.json"))
    assert manifest["rows_in"] == first.rows_in and manifest["part"]["sha256"] == first.part["sha256"]
    landing_csv = s3.get("root/landing/digits/2026-11-01/digits.csv")
    assert manifest["sources"][0]["sha256"] == sha(landing_csv)

    # deterministic: a second run publishes byte-identical outputs
    second = ingest_partition(spec, "2026-11-01")
    assert second.part["sha256"] == first.part["sha256"]
    assert s3.get(lake + "part.parquet") == part_bytes
    assert s3.get(quarantine_key) == quar_bytes
    assert (second.rows_in, second.rows_good, second.rows_quarantined) == (
        first.rows_in,
        first.rows_good,
        first.rows_quarantined,
    )
    assert s3.pending_uploads() == []
    assert not [k for k in s3.keys() if ".freestack-tmp-" in k]


# ---------------------------------------------------------------------------------------------------------
# create-if-absent


def test_if_absent_is_exclusive(s3_conn):
    """``if_absent=True`` maps to a conditional PUT / CompleteMultipartUpload (If-None-Match: *):
    the first writer wins, a later one fails and leaves the object and the bucket as they were."""
    s3 = s3_conn
    lease = to_path(s3.uri("lease/owner.json"))
    write_json(lease, {"owner": "first"}, if_absent=True)
    with pytest.raises(OSError):
        write_json(lease, {"owner": "second"}, if_absent=True)
    assert json.loads(s3.get("lease/owner.json")) == {"owner": "first"}

    big = to_path(s3.uri("lease/big.bin"))
    small_parts(big)
    s3.s3.put_object(Bucket=s3.bucket, Key="lease/big.bin", Body=b"old")
    with pytest.raises(OSError):
        with atomic_write(big, if_absent=True) as w:
            for _ in range(11):  # multipart: the condition is checked at CompleteMultipartUpload
                w.write(b"\x02" * MiB)
    assert w.result is None
    assert s3.get("lease/big.bin") == b"old"
    assert s3.pending_uploads() == [], "a refused conditional commit must abort its multipart upload"
    assert s3.keys() == ["lease/big.bin", "lease/owner.json"]


def test_if_absent_conflict_is_file_exists_error(s3_conn):
    """The documented contract (and the file:// behaviour) is FileExistsError on every backend,
    whatever the server puts in its 412 answer."""
    s3 = s3_conn
    lease = to_path(s3.uri("lease/owner.json"))
    write_bytes(lease, b"first", if_absent=True)
    try:
        write_bytes(lease, b"second", if_absent=True)
    except OSError as exc:
        raised = exc
    else:
        raised = None
    assert isinstance(raised, FileExistsError), f"expected FileExistsError, got {raised!r}"
    assert s3.get("lease/owner.json") == b"first"


# ---------------------------------------------------------------------------------------------------------
# listings in a long-lived process


def test_listing_sees_objects_written_by_other_processes(s3_conn):
    s3 = s3_conn
    uri = s3.uri("landing/digits/2026-11-01")
    s3.s3.put_object(Bucket=s3.bucket, Key="landing/digits/2026-11-01/a.csv", Body=b"a")
    assert [p.name for p in list_objects(to_path(uri))] == ["a.csv"]
    # an upstream system drops a second file; this process lists the same folder again
    s3.s3.put_object(Bucket=s3.bucket, Key="landing/digits/2026-11-01/b.csv", Body=b"b")
    assert [p.name for p in list_objects(to_path(uri))] == ["a.csv", "b.csv"]
