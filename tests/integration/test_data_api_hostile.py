"""The Data API against hostile input and crashes, on the live service.

- ``If-Match`` checks who may write before it looks at the object, and compares against the hash the
  service recorded when it wrote the object: the object is not read (the server's read bytes and peak
  memory stay flat for a 64 MiB object);
- a ``kill -9`` mid-upload leaves no partial object, and the temporaries it leaves are removed when the
  service starts again (at once: the dead process's upload journal lists them) and, while it runs,
  periodically, also by a sibling process over the same folder (never one whose upload is in flight);
- paths too deep, JSON nested too deep, forged listing markers: 400 naming the limit; a tree deeper
  than Python's recursion limit is deleted (``?force=true``);
- an owner's namespace answers the same whether the user exists or not; names are NFC, and bidi
  controls, zero-width and line-separator characters, all-space names and invalid UTF-8 are refused;
- refusals say what was refused: writing ("may not write"), or that the caller must sign in.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
import unicodedata
from pathlib import Path

import pytest
import requests

from tests.integration.data_api_service import (  # noqa: F401  (fixture)
    BIN,
    HOST,
    DataApi,
    data_api,
    log_tail,
    rss_peak_kib,
    service_env,
    start_service,
    stop,
    wait_healthy,
)
from tests.support.ports import free_port

MIB = 1024 * 1024
TMP_MARK = ".freestack-tmp-"


def _error(body: bytes) -> str:
    return json.loads(body)["error"]["message"]


def _collection(api: DataApi, owner: str = "alice", acl: dict | None = None) -> str:
    coll = api.collection()
    body = {"name": coll, **({"acl": acl} if acl is not None else {})}
    status, _, data = api.raw(
        "POST",
        f"/v1/data/{owner}",
        user=owner,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 200, data
    return coll


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.startswith(".") and TMP_MARK in p.name)


def _wait_for(predicate, timeout: float = 30.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


def _open_chunked_put(api: DataApi, path: str, user: str = "alice") -> socket.socket:
    """A PUT with a chunked body, left open: the caller sends chunks and ends it (or does not)."""
    port = int(api.url.rsplit(":", 1)[1])
    s = socket.create_connection((HOST, port), timeout=30)
    head = [
        f"PUT {path} HTTP/1.1",
        f"Host: {HOST}",
        f"Authorization: Simple {api.keys[user]}",
        "Transfer-Encoding: chunked",
    ]
    s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return s


def _send_chunks(s: socket.socket, data: bytes, piece: int = 256 * 1024) -> None:
    for i in range(0, len(data), piece):
        part = data[i : i + piece]
        s.sendall(b"%x\r\n%s\r\n" % (len(part), part))


def _finish(s: socket.socket) -> bytes:
    s.sendall(b"0\r\n\r\n")
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        part = s.recv(65536)
        if not part:
            break
        reply += part
    s.close()
    return reply


def _proc_io(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM starts again from the current RSS


# ---------------------------------------------------------------------------------------------------------
# If-Match


def _put_streamed(api: DataApi, path: str, size: int, user: str = "alice") -> str:
    """Upload ``size`` random bytes (chunked, so streamed); returns their sha256."""
    h = hashlib.sha256()
    block = os.urandom(MIB)

    def body():
        for _ in range(size // MIB):
            h.update(block)
            yield block

    r = requests.put(f"{api.url}{path}", data=body(), headers=api.headers(user), timeout=300)
    assert r.status_code == 200, r.text
    return h.hexdigest()


def test_if_match_checks_permission_first_and_never_reads_the_object(data_api):  # noqa: F811
    coll = _collection(data_api, acl={"read": ["user://*"]})
    path = f"/v1/data/alice/{coll}/big.bin"
    sha = _put_streamed(data_api, path, 64 * MIB)
    pid = data_api.pid

    # anonymous: 401 (sign in), not 412 about the object's content; memory stays flat
    _reset_peak(pid)
    base = rss_peak_kib(pid)
    for tag in ("0" * 64, sha):
        status, _, data = data_api.raw("PUT", path, body=b"replacement", headers={"If-Match": f'"{tag}"'})
        assert status == 401, (status, data)
        assert "sign in with an API key" in _error(data)
    assert rss_peak_kib(pid) - base < 16 * 1024, "an anonymous If-Match made the server read the object"
    # a signed-in user who may read (public) but not write: 403, whatever the tag
    status, _, data = data_api.raw("PUT", path, user="bob", body=b"x", headers={"If-Match": f'"{sha}"'})
    assert status == 403 and "may not write" in _error(data), data

    # the owner: compared against the hash recorded when the object was written; the object is not read
    read_before = _proc_io(pid, "rchar")
    _reset_peak(pid)
    base = rss_peak_kib(pid)
    status, _, data = data_api.raw(
        "PUT", path, user="alice", body=b"stale", headers={"If-Match": f'"{"1" * 64}"'}
    )
    assert status == 412 and "changed since it was read" in _error(data), data
    status, _, data = data_api.raw("PUT", path, user="alice", body=b"v2", headers={"If-Match": f'"{sha}"'})
    assert status == 200, data
    assert _proc_io(pid, "rchar") - read_before < 4 * MIB, "the server read the object to compare it"
    assert rss_peak_kib(pid) - base < 16 * 1024
    assert (data_api.root / "alice" / coll / "big.bin").read_bytes() == b"v2"
    # the tag of what the service just wrote is recorded too
    v2 = hashlib.sha256(b"v2").hexdigest()
    status, _, data = data_api.raw("PUT", path, user="alice", body=b"v3", headers={"If-Match": f'"{v2}"'})
    assert status == 200, data

    # an object written beside the service (no record): still compared right, in bounded memory
    direct = data_api.root / "alice" / coll / "direct.bin"
    direct.write_bytes(os.urandom(32 * MIB))
    dsha = hashlib.sha256(direct.read_bytes()).hexdigest()
    _reset_peak(pid)
    base = rss_peak_kib(pid)
    dpath = f"/v1/data/alice/{coll}/direct.bin"
    status, _, data = data_api.raw(
        "PUT", dpath, user="alice", body=b"n", headers={"If-Match": f'"{"2" * 64}"'}
    )
    assert status == 412, data
    status, _, data = data_api.raw("PUT", dpath, user="alice", body=b"new", headers={"If-Match": f'"{dsha}"'})
    assert status == 200, data
    assert rss_peak_kib(pid) - base < 16 * 1024
    # replaced beside the service after the service recorded it: the record is not trusted
    direct.write_bytes(b"changed on disk")
    status, _, data = data_api.raw(
        "PUT", dpath, user="alice", body=b"x", headers={"If-Match": f'"{hashlib.sha256(b"new").hexdigest()}"'}
    )
    assert status == 412, data
    status, _, data = data_api.raw(
        "PUT",
        dpath,
        user="alice",
        body=b"y",
        headers={"If-Match": f'"{hashlib.sha256(b"changed on disk").hexdigest()}"'},
    )
    assert status == 200, data
    # absent object: 412 for the owner, 401 for an anonymous caller
    missing = f"/v1/data/alice/{coll}/missing.bin"
    assert data_api.raw("PUT", missing, user="alice", body=b"x", headers={"If-Match": f'"{sha}"'})[0] == 412
    assert data_api.raw("PUT", missing, body=b"x", headers={"If-Match": f'"{sha}"'})[0] == 401


def test_an_if_match_that_cannot_apply_is_refused_with_400_naming_the_request(data_api):  # noqa: F811
    """A tag that is not a sha256 is a bad request (400), not a changed object (412); a body too large for
    a compare-and-swap is named as the request's, not as the stored object's; nothing is written."""
    coll = _collection(data_api)
    path = f"/v1/data/alice/{coll}/small.txt"
    assert data_api.raw("PUT", path, user="alice", body=b"v1")[0] == 200
    for tag in ("not-a-hash", '"not-a-hash"', "*", "0" * 63, "g" * 64):
        status, _, data = data_api.raw("PUT", path, user="alice", body=b"x", headers={"If-Match": tag})
        assert status == 400, (tag, status, data)
        assert "is not a content hash" in _error(data) and "sha256 (64 hex digits)" in _error(data), data
    sha = hashlib.sha256(b"v1").hexdigest()
    status, _, data = data_api.raw(
        "PUT", path, user="alice", body=os.urandom(2 * MIB), headers={"If-Match": sha}
    )
    message = _error(data)
    assert status == 400 and f"this request's body is {2 * MIB} bytes" in message, data
    assert "is larger" not in message and "nothing was written" in message, message
    assert (data_api.root / "alice" / coll / "small.txt").read_bytes() == b"v1"
    assert data_api.raw("PUT", path, user="alice", body=b"v2", headers={"If-Match": sha.upper()})[0] == 200


@pytest.mark.s3
def test_if_match_over_s3(moto_s3, tmp_path):
    """Over S3 the record's stamp is the ETag (when it is the MD5 of what was written); an object without
    such a record, or one replaced beside the service, is hashed once instead. Permission first, either way."""
    from tests.integration.conftest import REGION

    s3 = moto_s3.client()
    bucket = f"fs-hostile-{os.getpid()}-{int(time.time())}"
    s3.create_bucket(Bucket=bucket)
    conn = {
        "conn_type": "aws",
        "login": moto_s3.access_key,
        "password": moto_s3.secret_key,
        "extra": {"endpoint_url": moto_s3.endpoint_url, "region_name": REGION},
    }
    api = start_service(
        tmp_path,
        root_uri=f"s3://{moto_s3.conn_id}@{bucket}/data",
        users=("alice", "bob"),
        env={
            f"AIRFLOW_CONN_{moto_s3.conn_id.upper()}": json.dumps(conn),
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )
    try:
        coll = _collection(api, acl={"read": ["user://*"]})
        for name, body in (("small.json", b'{"v": 1}'), ("big.bin", os.urandom(12 * MIB + 5))):
            path = f"/v1/data/alice/{coll}/{name}"
            if len(body) > MIB:
                r = requests.put(
                    f"{api.url}{path}", data=iter([body]), headers=api.headers("alice"), timeout=120
                )
                assert r.status_code == 200, r.text
            else:
                assert api.raw("PUT", path, user="alice", body=body)[0] == 200
            tag = hashlib.sha256(body).hexdigest()
            with sqlite3.connect(tmp_path / "versions.sqlite") as db:  # the hash, recorded at write time
                rows = db.execute(
                    "SELECT sha256, stamp FROM versions WHERE path = ?", (f"alice/{coll}/{name}",)
                ).fetchall()
            etag = s3.head_object(Bucket=bucket, Key=f"data/alice/{coll}/{name}")["ETag"].strip('"')
            single_part = etag == hashlib.md5(body, usedforsecurity=False).hexdigest()
            assert rows == ([(tag, etag)] if single_part else []), rows  # multipart: no ETag to trust
            assert api.raw("PUT", path, body=b"x", headers={"If-Match": f'"{tag}"'})[0] == 401
            assert api.raw("PUT", path, user="bob", body=b"x", headers={"If-Match": f'"{tag}"'})[0] == 403
            assert (
                api.raw("PUT", path, user="alice", body=b"x", headers={"If-Match": f'"{"0" * 64}"'})[0] == 412
            )
            assert api.raw("PUT", path, user="alice", body=b"v2", headers={"If-Match": f'"{tag}"'})[0] == 200
            # replaced beside the service: the recorded hash no longer applies
            s3.put_object(Bucket=bucket, Key=f"data/alice/{coll}/{name}", Body=b"outside")
            v2 = hashlib.sha256(b"v2").hexdigest()
            assert api.raw("PUT", path, user="alice", body=b"y", headers={"If-Match": f'"{v2}"'})[0] == 412
            outside = hashlib.sha256(b"outside").hexdigest()
            assert (
                api.raw("PUT", path, user="alice", body=b"z", headers={"If-Match": f'"{outside}"'})[0] == 200
            )
            assert s3.get_object(Bucket=bucket, Key=f"data/alice/{coll}/{name}")["Body"].read() == b"z"
    finally:
        stop(api.proc)


# ---------------------------------------------------------------------------------------------------------
# kill -9 and temporaries


def _start_uploads(api: DataApi, coll: str, names: list[str], size: int) -> list[socket.socket]:
    """Streamed uploads of ``size`` random bytes to each name, left unfinished once their temporaries hold
    data (the client never ends them)."""
    folder = api.root / "alice" / coll
    before = set(_temps(folder))
    sockets = []
    for name in names:
        s = _open_chunked_put(api, f"/v1/data/alice/{coll}/{name}")
        _send_chunks(s, os.urandom(size))
        sockets.append(s)
    _wait_for(
        lambda: (
            len(set(_temps(folder)) - before) == len(names)
            and all(p.stat().st_size > 0 for p in set(_temps(folder)) - before)
        ),
        what="the uploads' temporaries",
    )
    return sockets


def _journals(api: DataApi) -> list[Path]:
    return sorted((api.root / ".freestack-uploads").glob("*.journal"))


def test_kill_9_mid_upload_then_restart_sweeps_temporaries_at_once(tmp_path):
    api = start_service(tmp_path)
    try:
        coll = _collection(api)
        folder = api.root / "alice" / coll
        done = {f"done{i}.bin": os.urandom(3 * MIB + i) for i in range(2)}
        for name, body in done.items():
            assert api.raw("PUT", f"/v1/data/alice/{coll}/{name}", user="alice", body=body)[0] == 200
        # a pipeline task's write (not the service's): fresh, so it may be in flight; and one two hours quiet
        other = folder / f".other.bin{TMP_MARK}0123456789abcdef"
        other.write_bytes(b"another process is writing this")
        dead_other = folder / "sub" / f".gone.bin{TMP_MARK}fedcba9876543210"
        dead_other.parent.mkdir()
        dead_other.write_bytes(b"x" * 1000)
        old = time.time() - 2 * 3600
        os.utime(dead_other, (old, old))
        killed = [f"big{i}.bin" for i in range(4)]
        sockets = _start_uploads(api, coll, killed, 3 * MIB)
        left = sorted(set(_temps(folder)) - {other, dead_other})
        os.kill(api.pid, signal.SIGKILL)
        api.proc.wait(timeout=30)
        for s in sockets:
            s.close()
        assert len(left) == 4 and all(
            p.exists() for p in left
        )  # a killed writer cannot clean up after itself
        left_bytes = sum(p.stat().st_size for p in left)
        assert len(_journals(api)) == 1  # the dead process's list of them, no longer locked
        started = time.monotonic()
        api = start_service(tmp_path)
        # the start-up sweep: the dead process's uploads go at once, although only seconds old
        _wait_for(lambda: not any(p.exists() for p in [*left, dead_other]), what="the start-up sweep")
        print(
            f"start-up sweep: {len(left)} temporaries, {left_bytes / MIB:.1f} MiB, gone "
            f"{time.monotonic() - started:.2f} s after the restart began"
        )
        assert other.exists()  # not the service's, and too young to be anyone's leftover
        assert len(_journals(api)) == 1  # the new process's own; the dead one's is gone
        for name, body in done.items():  # what was committed is intact
            status, _, data = api.raw("GET", f"/v1/data/alice/{coll}/{name}", user="alice")
            assert status == 200 and data == body
        for name in killed:  # and no partial object is visible
            assert api.raw("GET", f"/v1/data/alice/{coll}/{name}", user="alice")[0] == 404
        status, _, data = api.raw("GET", f"/v1/data/alice/{coll}", user="alice")
        assert [f["filename"] for f in json.loads(data)["files"]] == sorted(done)
        assert sorted(p.name for p in folder.iterdir()) == sorted([other.name, *done, "sub"])
    finally:
        stop(api.proc)


def test_the_default_age_sweeps_a_temporary_quiet_for_700_s_at_start_up_and_keeps_one_of_100_s(tmp_path):
    """With no age set (``freestack data-api`` as deployed), the default, 600 s (it was 3,600 s), applies: at
    start-up a temporary last written 700 s ago is taken for a killed writer's and removed, one written
    100 s ago may still be in flight and stays."""
    from freestack.settings import Settings

    assert Settings.model_fields["data_api_stale_tmp_age"].default == 600.0
    assert "FREESTACK_DATA_API_STALE_TMP_AGE" not in os.environ  # the service's environment is ours
    folder = tmp_path / "data" / "alice" / "quiet"
    folder.mkdir(parents=True)
    old, young = (
        folder / f".old.bin{TMP_MARK}0123456789abcdef",
        folder / f".young.bin{TMP_MARK}fedcba9876543210",
    )
    for path, age in ((old, 700), (young, 100)):
        path.write_bytes(b"x" * 1000)
        then = time.time() - age
        os.utime(path, (then, then))
    api = start_service(tmp_path)
    try:
        _wait_for(lambda: not old.exists(), what="the start-up sweep of the 700 s old temporary")
        time.sleep(1.0)  # the same sweep has looked at the young one by now
        assert young.exists() and young.read_bytes() == b"x" * 1000
    finally:
        stop(api.proc)


_LAUNCH = """
import sys
from freestack.dataapi.app import DataApiSettings
from freestack.dataapi.standalone import serve
port, root, keys, age, every = sys.argv[1:6]
serve("127.0.0.1", int(port), DataApiSettings(root=root, keys_path=keys, page_size=5,
      stale_tmp_age_s=float(age), tmp_sweep_interval_s=float(every)), log_level="warning")
"""


def _start_with(workdir: Path, root: Path | None = None, **settings: float) -> DataApi:
    """The service as ``freestack data-api`` runs it, with the temporaries' age limit and sweep interval set
    (over ``root``, default ``workdir/data``)."""
    root = root or workdir / "data"
    root.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    keys_path, log, port = workdir / "keys.sqlite", workdir / "data-api.log", free_port()
    cmd = [
        str(BIN / "python"),
        "-c",
        _LAUNCH,
        str(port),
        root.as_uri(),
        str(keys_path),
        str(settings["stale_tmp_age_s"]),
        str(settings["tmp_sweep_interval_s"]),
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=service_env(keys_path, FREESTACK_HOME=str(workdir / "home")),
            start_new_session=True,
        )
    api = DataApi(url=f"http://{HOST}:{port}", root=root, keys_path=keys_path, proc=proc, log=log)
    try:
        wait_healthy(api.url, proc, log)
    except BaseException:
        stop(proc)
        raise
    api.keys["alice"] = api.new_key("alice")
    return api


def test_periodic_sweep_spares_uploads_in_flight(tmp_path):
    api = _start_with(tmp_path, stale_tmp_age_s=2, tmp_sweep_interval_s=0.3)
    try:
        coll = _collection(api)
        folder = api.root / "alice" / coll
        # left by a writer that died while this service runs: removed by a periodic sweep
        leftover = folder / "sub" / f".x.bin{TMP_MARK}feedfacefeedface"
        leftover.parent.mkdir()
        leftover.write_bytes(b"partial")
        old = time.time() - 3600
        os.utime(leftover, (old, old))
        _wait_for(lambda: not leftover.exists(), what="the periodic sweep")
        # an upload whose client pauses longer than the age limit: its temporary stays, the upload completes
        s = _open_chunked_put(api, f"/v1/data/alice/{coll}/slow.bin")
        first, rest = os.urandom(2 * MIB), os.urandom(2 * MIB)
        _send_chunks(s, first)
        tmp = _wait_for(lambda: _temps(folder), what="the upload's temporary file")[0]
        _wait_for(lambda: time.time() - tmp.stat().st_mtime > 3, timeout=60, what="the upload going quiet")
        size_then = tmp.stat().st_size
        time.sleep(1.0)  # several sweeps pass while the temporary is older than the limit
        assert tmp.exists() and tmp.stat().st_size == size_then
        _send_chunks(s, rest)
        reply = _finish(s)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert (folder / "slow.bin").read_bytes() == first + rest
        assert _temps(folder) == []
    finally:
        stop(api.proc)
        if api.proc.returncode not in (0, -signal.SIGTERM):
            print(log_tail(api.log))


def test_a_sibling_process_spares_live_uploads_and_sweeps_dead_ones(tmp_path):
    """Two service processes over one folder (as the Airflow API server's workers are): one with a short
    age limit never removes the other's quiet upload, and removes its uploads once it is killed."""
    writer = start_service(tmp_path / "writer")
    sweeper = None
    try:
        sweeper = _start_with(
            tmp_path / "sweeper", root=writer.root, stale_tmp_age_s=1, tmp_sweep_interval_s=0.2
        )
        coll = _collection(writer)
        folder = writer.root / "alice" / coll
        s = _open_chunked_put(writer, f"/v1/data/alice/{coll}/slow.bin")
        first, rest = os.urandom(2 * MIB), os.urandom(2 * MIB)
        _send_chunks(s, first)
        tmp = _wait_for(lambda: _temps(folder), what="the upload's temporary file")[0]
        _wait_for(lambda: time.time() - tmp.stat().st_mtime > 2, timeout=60, what="the upload going quiet")
        time.sleep(1.0)  # several of the sibling's sweeps pass while the temporary is over its age limit
        assert tmp.exists()
        _send_chunks(s, rest)
        reply = _finish(s)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert (folder / "slow.bin").read_bytes() == first + rest
        # the writer dies mid-upload: the sibling removes its temporaries without waiting for a restart
        sockets = _start_uploads(writer, coll, ["a.bin", "b.bin"], 3 * MIB)
        left = _temps(folder)
        os.kill(writer.pid, signal.SIGKILL)
        writer.proc.wait(timeout=30)
        for sock in sockets:
            sock.close()
        _wait_for(lambda: not any(p.exists() for p in left), what="the sibling's sweep of the dead uploads")
        assert (folder / "slow.bin").read_bytes() == first + rest
    finally:
        stop(writer.proc)
        if sweeper is not None:
            stop(sweeper.proc)


# ---------------------------------------------------------------------------------------------------------
# depth and forged input: 400, not 500


def test_deep_paths_bodies_and_forged_markers_are_400(data_api):  # noqa: F811
    coll = _collection(data_api)
    for depth in (2000, 70):
        path = f"/v1/data/alice/{coll}/" + "d/" * depth + "f.txt"
        for method in ("PUT", "GET", "DELETE"):
            status, _, data = data_api.raw(method, path, user="alice", body=b"x" if method == "PUT" else None)
            assert status == 400, (method, depth, status, data[:300])
            assert "64 levels" in _error(data), _error(data)
    long_name = "n" * 200
    path = f"/v1/data/alice/{coll}/" + "/".join([long_name] * 6)  # 6 levels, over 1,024 bytes
    status, _, data = data_api.raw("PUT", path, user="alice", body=b"x")
    assert status == 400 and "1024 bytes" in _error(data), data
    assert not any((data_api.root / "alice" / coll).iterdir())

    # JSON nested 30,000 deep (inside the 64 KiB body limit)
    body = '{"name": "sub", "acl": ' + "[" * 30000 + "]" * 30000 + "}"
    status, _, data = data_api.raw(
        "POST",
        f"/v1/data/alice/{coll}",
        user="alice",
        body=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and "nested" in _error(data) and "32" in _error(data), data
    status, _, data = data_api.raw(
        "PATCH",
        f"/v1/data/alice/{coll}",
        user="alice",
        body=('{"acl": ' + '{"read": ' * 5000 + "[]" + "}" * 5000 + "}").encode(),
    )
    assert status == 400 and "nested" in _error(data), data

    # listing markers that this service never handed out
    def enc(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    for forged in (
        enc('[1e999, 1, "a"]'),
        enc('[1, 1e999, "a"]'),
        enc("1e999"),
        enc('[-1e999, 0, "a"]'),
        enc('[1, 1, {"a": 1}]'),
        enc('[true, 1, "a"]'),
        enc("[" * 1500 + "]" * 1500),
        enc('[NaN, 1, "a"]'),
        "!!!",
        "A" * 10000,
    ):
        status, _, data = data_api.raw("GET", f"/v1/data/alice/{coll}?marker={forged}", user="alice")
        assert status == 400 and "marker" in _error(data), (forged[:40], status, data[:200])


def _remove_deep(top: Path) -> None:
    while top.exists():
        folder = top
        while True:
            subdirs = [p for p in folder.iterdir() if p.is_dir()]
            if not subdirs:
                break
            folder = subdirs[0]
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


def test_force_delete_of_a_tree_deeper_than_the_recursion_limit(data_api):  # noqa: F811
    coll = _collection(data_api)
    top = data_api.root / "alice" / coll / "deep"
    folder = top
    folder.mkdir()
    for i in range(1500):  # made beside the service (it refuses to make paths this deep)
        if i % 500 == 0:
            (folder / f"f{i}.txt").write_bytes(b"x")
        folder = folder / "d"
        folder.mkdir()
    (folder / "bottom.txt").write_bytes(b"bottom")
    (folder / ".hidden").write_bytes(b"not counted")
    try:
        status, _, data = data_api.raw("DELETE", f"/v1/data/alice/{coll}/deep", user="alice")
        assert status == 409 and "not empty" in _error(data), data
        status, _, data = data_api.raw("DELETE", f"/v1/data/alice/{coll}/deep?force=true", user="alice")
        assert status == 200, data[:500]
        assert json.loads(data) == {"result": {"deleted": 4}}
        assert not top.exists()
    finally:  # pytest's own clean-up of old temporary folders recurses: never leave such a tree behind
        _remove_deep(top)
    # and the collection around it still works
    assert data_api.raw("PUT", f"/v1/data/alice/{coll}/after.txt", user="alice", body=b"ok")[0] == 200


# ---------------------------------------------------------------------------------------------------------
# namespaces and names


def test_an_owner_namespace_answers_the_same_for_known_and_unknown_users(data_api):  # noqa: F811
    known = f"k{os.urandom(4).hex()}"
    data_api.new_key(known)  # a user with a key and nothing stored yet
    unknown = f"k{os.urandom(4).hex()}"
    for user in (None, "bob"):
        answers = []
        for owner in (known, unknown):
            got = data_api.raw("GET", f"/v1/data/{owner}", user=user)
            head = data_api.raw("HEAD", f"/v1/data/{owner}", user=user)
            answers.append((got[0], got[2], head[0], head[1].get("x-data-type")))
        assert answers[0] == answers[1], answers
        assert answers[0][0] == 200 and json.loads(answers[0][1]) == {
            "folders": [],
            "files": [],
            "marker": None,
        }


def test_names_are_nfc_and_invisible_or_ambiguous_characters_are_refused(data_api):  # noqa: F811
    from urllib.parse import quote

    coll = _collection(data_api)
    base = f"/v1/data/alice/{coll}"
    nfd, nfc = unicodedata.normalize("NFD", "café.txt"), "café.txt"
    assert nfd != nfc
    assert data_api.raw("PUT", f"{base}/{quote(nfd)}", user="alice", body=b"first")[0] == 200
    assert data_api.raw("PUT", f"{base}/{quote(nfc)}", user="alice", body=b"second")[0] == 200
    for form in (nfd, nfc):
        status, _, data = data_api.raw("GET", f"{base}/{quote(form)}", user="alice")
        assert (status, data) == (200, b"second")
    listing = json.loads(data_api.raw("GET", base, user="alice")[2])
    assert [f["filename"] for f in listing["files"]] == [nfc]
    assert sorted(p.name for p in (data_api.root / "alice" / coll).iterdir()) == [nfc]
    # a directory name too
    status, _, data = data_api.raw(
        "POST",
        base,
        user="alice",
        body=json.dumps({"name": unicodedata.normalize("NFD", "résumé")}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 200 and json.loads(data)["result"] == f"data://alice/{coll}/résumé"

    refused = {
        "evil\u202etxt.exe": "bidirectional",
        "a\u2066b": "bidirectional",
        "zero\u200bwidth": "zero-width",
        "join\u200dme": "zero-width",
        "bom\ufeff": "zero-width",
        "line\u2028sep": "line or paragraph separator",
        "para\u2029sep": "line or paragraph separator",
        "c1\u0085ctl": "control",
        "soft\u00adhyphen": "invisible formatting",
        "   ": "only spaces",
        "\u3000\u00a0": "only spaces",
    }
    for name, what in refused.items():
        for method in ("PUT", "GET"):
            status, headers, data = data_api.raw(
                method, f"{base}/{quote(name)}", user="alice", body=b"x" if method == "PUT" else None
            )
            assert status == 400, (name, method, status, data)
            assert what in _error(data), (name, _error(data))
        status, _, data = data_api.raw(
            "POST",
            base,
            user="alice",
            body=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and what in _error(data), (name, data)
    # invalid UTF-8 is refused, rather than every invalid sequence becoming the same name
    for raw in ("%FF.txt", "%FE.txt", "%C3.txt", "%ED%A0%80.txt"):
        status, _, data = data_api.raw("PUT", f"{base}/{raw}", user="alice", body=raw.encode())
        assert status == 400 and "UTF-8" in _error(data), (raw, data)
    # a real U+FFFD, sent as valid UTF-8, is a name like any other
    assert data_api.raw("PUT", f"{base}/{quote('�.txt')}", user="alice", body=b"ok")[0] == 200
    names = sorted(p.name for p in (data_api.root / "alice" / coll).iterdir())
    assert names == sorted([nfc, "résumé", "�.txt"])


# ---------------------------------------------------------------------------------------------------------
# messages


def test_refusals_say_what_was_refused(data_api):  # noqa: F811
    public = _collection(data_api, acl={"read": ["user://*"]})
    private = _collection(data_api)
    assert data_api.raw("PUT", f"/v1/data/alice/{private}/f.txt", user="alice", body=b"mine")[0] == 200
    # anonymous writes into a public collection: not "is not public", but sign in
    for method, path, body in (
        ("PUT", f"/v1/data/alice/{public}/f.txt", b"x"),
        ("DELETE", f"/v1/data/alice/{public}/f.txt", None),
        ("POST", f"/v1/data/alice/{public}", json.dumps({"name": "sub"}).encode()),
    ):
        status, _, data = data_api.raw(method, path, body=body)
        msg = _error(data)
        assert status == 401 and "sign in with an API key" in msg and "not public" not in msg, (method, msg)
    # anonymous reads of a private collection: it is not public, sign in
    status, _, data = data_api.raw("GET", f"/v1/data/alice/{private}/f.txt")
    assert status == 401 and "not public" in _error(data) and "sign in with an API key" in _error(data)
    # bob may not write into alice's collections: said as writing, whether or not he may read
    for coll in (public, private):
        for method, path, body, headers in (
            ("PUT", f"/v1/data/alice/{coll}/f.txt", b"x", {}),
            ("PUT", f"/v1/data/alice/{coll}/g.txt", b"x", {"If-None-Match": "*"}),
            ("PUT", f"/v1/data/alice/{coll}/f.txt", b"x", {"If-Match": f'"{"0" * 64}"'}),
            ("DELETE", f"/v1/data/alice/{coll}/f.txt", None, {}),
            ("POST", f"/v1/data/alice/{coll}", json.dumps({"name": "sub"}).encode(), {}),
        ):
            status, _, data = data_api.raw(method, path, user="bob", body=body, headers=headers)
            msg = _error(data)
            assert status == 403 and "may not write" in msg and "may not read" not in msg, (coll, method, msg)
    assert (data_api.root / "alice" / private / "f.txt").read_bytes() == b"mine"


# ---------------------------------------------------------------------------------------------------------
# listings: pages served from a cached index stay exact


def test_listing_pages_see_every_change(data_api):  # noqa: F811
    coll = _collection(data_api)
    folder = data_api.root / "alice" / coll
    base = f"/v1/data/alice/{coll}"

    def listing() -> list[str]:
        names, marker = [], None
        while True:
            status, _, data = data_api.raw(
                "GET", base + (f"?marker={marker}" if marker else ""), user="alice"
            )
            assert status == 200, data
            page = json.loads(data)
            assert len(page["folders"]) + len(page["files"]) <= 5  # the test service's page size
            names += [f["name"] + "/" for f in page["folders"]] + [f["filename"] for f in page["files"]]
            marker = page["marker"]
            if not marker:
                return names

    for i in range(12):
        (folder / f"f{i:02d}.txt").write_bytes(b"x" * i)
    (folder / "sub").mkdir()
    expected = ["sub/"] + [f"f{i:02d}.txt" for i in range(12)]
    assert listing() == expected
    # changes right after a listing, beside the service and through it, show up in the next one
    for _ in range(3):
        (folder / "f99.txt").write_bytes(b"new")
        assert listing() == expected + ["f99.txt"]
        (folder / "f99.txt").unlink()
        assert listing() == expected
    assert data_api.raw("PUT", f"{base}/f50.txt", user="alice", body=b"12345")[0] == 200
    assert listing() == expected[:1] + sorted(expected[1:] + ["f50.txt"])
    page = json.loads(
        data_api.raw(
            "GET",
            base + "?marker=" + json.loads(data_api.raw("GET", base, user="alice")[2])["marker"],
            user="alice",
        )[2]
    )
    sizes = {f["filename"]: f["size"] for f in page["files"]}
    assert sizes["f05.txt"] == 5
    (folder / "f05.txt").write_bytes(b"longer now")  # same name, new size: seen at once
    first = json.loads(data_api.raw("GET", base, user="alice")[2])
    page = json.loads(data_api.raw("GET", base + "?marker=" + first["marker"], user="alice")[2])
    assert {f["filename"]: f["size"] for f in page["files"]}["f05.txt"] == 10
    assert data_api.raw("DELETE", f"{base}/f50.txt", user="alice")[0] == 200
    assert listing() == expected
