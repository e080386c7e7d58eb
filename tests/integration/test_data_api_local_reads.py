"""Local reads: ``data://`` reads on the service's host get a file descriptor over its Unix socket.

Every test talks to a real ``freestack data-api`` process on 127.0.0.1 (tests/integration/data_api_service.py),
here with its access log on, so a test can show which reads went over HTTP and which did not.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from freestack.errors import AccessDenied
from freestack.storage.connection import config_of
from freestack.storage.datafs import DataFileSystem
from freestack.storage.httpfs import DataApiHttpFileSystem
from freestack.storage.localreads import LocalReadFile
from tests.integration.data_api_service import BIN, DataApi, log_tail, service_env, start_service, stop
from tests.ports import free_port

MiB = 1024 * 1024
INFO = ("--log-level", "info")  # the access log: one line per HTTP request


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    service = start_service(tmp_path_factory.mktemp("local-reads"), extra_args=INFO)
    try:
        yield service
    finally:
        stop(service.proc)


def http_fs(api: DataApi, user: str | None, *, local: bool = True) -> DataApiHttpFileSystem:
    return DataApiHttpFileSystem(api.url, api_key=api.keys[user] if user else None, local_reads=local)


def data_fs(api: DataApi, user: str | None, *, extra: dict | None = None) -> DataFileSystem:
    """data:// as a task sees it: a freestack_data connection whose host is the service."""
    config = config_of("data_test", extra or {}, host=api.url, port=None, login=None,
                       password=api.keys[user] if user else None)  # fmt: skip
    return DataFileSystem.from_config(config)


def health(api: DataApi) -> dict:
    return requests.get(f"{api.url}/v1/freestack/health", timeout=10).json()


def access_log_gets(api: DataApi, path: str) -> int:
    """How many GETs of ``/v1/data/<path>`` the service logged (waits a moment for the log to catch up)."""
    time.sleep(0.3)
    return api.log.read_text(errors="replace").count(f'"GET /v1/data/{path} HTTP/1.1"')


def seed(api: DataApi, user: str = "alice", **files: bytes) -> str:
    """A fresh private collection of ``user`` holding ``files``; returns its name."""
    coll = api.collection()
    fs = http_fs(api, user, local=False)
    fs.makedirs(f"{user}/{coll}", exist_ok=True)
    for name, data in files.items():
        fs.pipe_file(f"{user}/{coll}/{name.replace('_', '.')}", data)
    return coll


def parquet_bytes():
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": list(range(50_000)), "y": [f"row-{i}" for i in range(50_000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=10_000)
    return table, sink.getvalue()


def test_reads_go_through_the_socket_with_the_same_bytes(api):
    import pyarrow.parquet as pq

    blob = os.urandom(3 * MiB + 17)
    table, pq_bytes = parquet_bytes()
    coll = seed(api, blob_bin=blob, t_parquet=pq_bytes)
    advert = health(api)["local_reads"]
    assert Path(advert["socket"]).is_socket() and len(advert["instance"]) == 32

    fs = data_fs(api, "alice")
    with fs.open(f".my/{coll}/blob.bin", "rb") as f:
        assert isinstance(f, LocalReadFile) and f.size == len(blob)
        assert f.read(1000) == blob[:1000] and f.tell() == 1000
        f.seek(2 * MiB)
        assert f.read(10) == blob[2 * MiB : 2 * MiB + 10]
        f.seek(-5, os.SEEK_END)
        assert f.read() == blob[-5:] and f.read() == b""
        f.seek(7)
        buf = bytearray(100)
        assert f.readinto(buf) == 100 and bytes(buf) == blob[7:107]
    assert f.closed
    with fs.open(f".my/{coll}/blob.bin", "rb") as f:
        assert f.read() == blob
    assert fs.cat_file(f".my/{coll}/blob.bin", start=10, end=20) == blob[10:20]
    assert fs.cat_file(f".my/{coll}/blob.bin", start=-3) == blob[-3:]
    with fs.open(f".my/{coll}/t.parquet", "rb") as f:
        assert isinstance(f, LocalReadFile)
        assert pq.read_table(f).equals(table)
        assert pq.ParquetFile(f).read_row_group(3).column("x").to_pylist() == list(range(30_000, 40_000))
    with fs.open(f".my/{coll}/t.parquet", "r", encoding="latin-1") as text:  # text mode wraps the local file
        assert text.read(4) == "PAR1"
    local = fs.fs.local_reads
    assert local.active and local.off_reason is None and local.opened == 6
    assert access_log_gets(api, f"alice/{coll}/blob.bin") == 0
    assert access_log_gets(api, f"alice/{coll}/t.parquet") == 0

    # the same reads over HTTP give the same bytes, and the access log shows them
    over_http = data_fs(api, "alice", extra={"local_reads": False})
    with over_http.open(f".my/{coll}/blob.bin", "rb") as f:
        assert not isinstance(f, LocalReadFile) and f.read() == blob
    with over_http.open(f".my/{coll}/t.parquet", "rb") as f:
        assert pq.read_table(f).equals(table)
    assert access_log_gets(api, f"alice/{coll}/blob.bin") >= 1


def _failure(fs, path: str) -> BaseException:
    try:
        fs.open(path, "rb").close()
    except Exception as exc:  # noqa: BLE001  (the test compares what each route raises)
        return exc
    raise AssertionError(f"{path} was opened")


def test_refusals_are_the_ones_http_gives(api):
    coll = seed(api, secret_txt=b"alice's secret")
    api.keys["nobody"] = "fsk_00000000_unknown"
    cases = [
        ("bob", f"alice/{coll}/secret.txt", AccessDenied),  # private collection of another user
        (None, f"alice/{coll}/secret.txt", AccessDenied),  # anonymous
        ("nobody", f"alice/{coll}/secret.txt", AccessDenied),  # a key the service does not know: 401
        ("alice", f"alice/{coll}/missing.txt", FileNotFoundError),
        ("alice", f"alice/{coll}", IsADirectoryError),
        ("alice", "alice", IsADirectoryError),  # an owner's namespace
    ]
    for user, path, kind in cases:
        local, http = http_fs(api, user), http_fs(api, user, local=False)
        got, want = _failure(local, path), _failure(http, path)
        assert type(got) is type(want) and isinstance(got, kind), (user, path, got, want)
        assert str(got) == str(want), (user, path)
        if isinstance(got, AccessDenied):
            assert got.anonymous == want.anonymous
        assert local.local_reads.active, (user, path)  # a refusal is an answer, not a failure of the socket
    assert "not valid" in str(_failure(http_fs(api, "nobody"), f"alice/{coll}/secret.txt"))
    assert access_log_gets(api, f"alice/{coll}/secret.txt") == 0  # HTTP only HEADs; no bytes were sent


def test_switched_off_on_either_side_reads_go_over_http(api, tmp_path):
    coll = seed(api, a_bin=b"over http")
    # the client side: extra local_reads false
    fs = data_fs(api, "alice", extra={"local_reads": "false"})
    assert fs.fs.local_reads is None
    with fs.open(f".my/{coll}/a.bin", "rb") as f:
        assert not isinstance(f, LocalReadFile) and f.read() == b"over http"
    assert access_log_gets(api, f"alice/{coll}/a.bin") == 1

    # the service side: --no-local-reads
    plain = start_service(tmp_path / "plain", extra_args=("--no-local-reads",))
    try:
        assert "local_reads" not in health(plain)
        assert not list((tmp_path / "plain").glob("*.sock"))
        coll = seed(plain, a_bin=b"plain")
        fs = data_fs(plain, "alice")
        with fs.open(f".my/{coll}/a.bin", "rb") as f:
            assert not isinstance(f, LocalReadFile) and f.read() == b"plain"
        assert not fs.fs.local_reads.active and "offers none" in fs.fs.local_reads.off_reason
    finally:
        stop(plain.proc)


def test_a_reader_keeps_the_version_it_opened(api):
    old, new = os.urandom(4 * MiB), os.urandom(MiB)
    coll = seed(api, m_bin=old)
    fs = data_fs(api, "alice")
    writer = http_fs(api, "alice", local=False)
    with fs.open(f".my/{coll}/m.bin", "rb") as f:
        assert isinstance(f, LocalReadFile)
        head = f.read(MiB)
        writer.pipe_file(f"alice/{coll}/m.bin", new)  # replaced (atomic rename) while it is being read
        assert (api.root / "alice" / coll / "m.bin").read_bytes() == new
        assert head + f.read() == old
    with fs.open(f".my/{coll}/m.bin", "rb") as f:
        assert f.read() == new


def _connect(api: DataApi) -> tuple[socket.socket, dict]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(health(api)["local_reads"]["socket"])
    return sock, _line(sock)


def _line(sock: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk, fds, _, _ = socket.recv_fds(sock, 65536, 1)
        for fd in fds:
            os.close(fd)
        if not chunk:
            raise EOFError(f"the connection closed after {data!r}")
        data += chunk
    return json.loads(data)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_the_socket_protocol_refuses_garbage_and_goes_on(api):
    coll = seed(api, ok_txt=b"still serving")
    instance = health(api)["local_reads"]["instance"]
    sock, hello = _connect(api)
    assert hello == {"service": "freestack-data-api", "instance": instance}
    # refusals of an open keep the connection; each says what a GET would
    sock.sendall(json.dumps({"op": "open", "path": f"alice/{coll}/ok.txt", "key": api.keys["bob"]}).encode() + b"\n")
    reply = _line(sock)
    assert reply["ok"] is False and reply["status"] == 403 and "may not read" in reply["message"]
    sock.sendall(json.dumps({"op": "open", "path": "alice/../bob/x", "key": None}).encode() + b"\n")
    assert _line(sock)["status"] == 400
    sock.sendall(json.dumps({"op": "open", "path": f".my/{coll}/ok.txt", "key": api.keys["alice"]}).encode() + b"\n")
    reply = _line(sock)
    assert reply["ok"] is True and reply["size"] == len(b"still serving")
    # what is not a regular file is refused without waiting on it (a FIFO has no writer here)
    os.mkfifo(api.root / "alice" / coll / "pipe")
    (api.root / "alice" / coll / "sub").mkdir()
    for name, words in (("pipe", "is not a regular file; only files are read"), ("sub", "is a directory")):
        request = {"op": "open", "path": f"alice/{coll}/{name}", "key": api.keys["alice"], "lease": True}
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = _line(sock)
        assert reply == {"ok": False, "status": 409, "message": f"data://alice/{coll}/{name} {words}"}, reply
    sock.close()

    garbage = [
        (b"this is not json\n", 400, "one JSON object a line"),
        (b'["open"]\n', 400, "one JSON object a line"),
        (b'{"op": "delete", "path": "alice/x"}\n', 400, "unknown local-read op 'delete'"),
        (b'{"op": "open", "path": 7}\n', 400, '"path" must be a string'),
        (b'{"op": "open", "path": "alice/x", "lease": 1}\n', 400, '"lease" must be true or false'),
        (b"[" * 5000 + b"\n", 400, "one JSON object a line"),
        (b"x" * (70 * 1024) + b"\n", 413, "over 64 KiB"),
        (b"y" * (100 * 1024), 413, "over 64 KiB"),  # no newline at all
    ]
    for line, status, words in garbage:
        sock, _ = _connect(api)
        try:
            sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):  # the service answered and closed before the end
            pass
        reply = _line(sock)
        assert reply["ok"] is False and reply["status"] == status and words in reply["message"], (line[:40], reply)
        assert _closed(sock), line[:40]
        sock.close()

    fs = data_fs(api, "alice")
    with fs.open(f".my/{coll}/ok.txt", "rb") as f:
        assert isinstance(f, LocalReadFile) and f.read() == b"still serving"
    assert requests.get(f"{api.url}/v1/data/.my/{coll}/ok.txt", headers=api.headers("alice"), timeout=10).content == b"still serving"


def test_connections_over_the_limit_get_an_error_line(api):
    from freestack.dataapi.local import MAX_CONNECTIONS

    held = []
    try:
        while len(held) < MAX_CONNECTIONS:
            sock, hello = _connect(api)
            held.append(sock)
            if "instance" not in hello:  # another test's connection may hold a slot
                break
        sock, hello = _connect(api)
        assert hello["ok"] is False and hello["status"] == 503 and "limit" in hello["message"]
        assert _closed(sock)
        sock.close()
        # a client over the limit reads over HTTP instead
        coll = seed(api, z_txt=b"z")
        fs = data_fs(api, "alice")
        with fs.open(f".my/{coll}/z.txt", "rb") as f:
            assert not isinstance(f, LocalReadFile) and f.read() == b"z"
        assert "refused the connection" in fs.fs.local_reads.off_reason
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)  # the service notices the closed connections
    sock, hello = _connect(api)
    assert "instance" in hello
    sock.close()


def test_forked_children_and_threads_share_a_filesystem(api):
    from concurrent.futures import ThreadPoolExecutor

    blobs = {f"f{i}_bin": os.urandom(64 * 1024 + i) for i in range(8)}
    coll = seed(api, **blobs)
    fs = data_fs(api, "alice")
    names = [n.replace("_", ".") for n in blobs]

    def read(name: str) -> bytes:
        with fs.open(f".my/{coll}/{name}", "rb") as f:
            assert isinstance(f, LocalReadFile)
            return f.read()

    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            assert list(pool.map(read, names)) == list(blobs.values())
    parent_channel = fs.fs.local_reads._channel
    assert fs.fs.local_reads._leases  # the parent read under a lease on the collection
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child holds none of the parent's leases: it reads through its own connection, then reports
        try:
            ok = not fs.fs.local_reads._leases
            ok = ok and read(names[0]) == blobs["f0_bin"] and fs.fs.local_reads._channel.pid == os.getpid()
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    assert read(names[1]) == blobs["f1_bin"] and fs.fs.local_reads._channel is parent_channel


def test_restart_reconnects_and_a_stale_socket_is_replaced(tmp_path):
    workdir = tmp_path / "svc"
    sock_path = tmp_path / "reads.sock"
    args = ("--local-socket", str(sock_path), "--read-lease", "600")  # a lease outlives the restarts below
    first = start_service(workdir, extra_args=args)
    coll = seed(first, a_txt=b"before")
    fs = data_fs(first, "alice")
    assert fs.cat_file(f".my/{coll}/a.txt") == b"before" and fs.fs.local_reads.active

    # a second service on the same socket refuses to start: the first one answers there
    clash = subprocess.run(
        [str(BIN / "freestack"), "data-api", "--port", str(free_port()), "--root", first.root.as_uri(),
         "--keys", str(first.keys_path), *args], capture_output=True, text=True, timeout=120, cwd=workdir,
        env=service_env(first.keys_path, FREESTACK_HOME=str(workdir / "home")), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert clash.returncode != 0 and "another process answers" in clash.stdout + clash.stderr
    assert sock_path.is_socket()

    # SIGTERM: the socket file goes with the service
    port = int(first.url.rsplit(":", 1)[1])
    stop(first.proc)
    assert not sock_path.exists(), log_tail(first.log)

    # kill -9 leaves the file; the next start removes it, as nothing answers on it
    second = start_service(workdir, extra_args=args, port=port)
    os.kill(second.proc.pid, 9)
    second.proc.wait(timeout=10)
    assert sock_path.is_socket()
    third = start_service(workdir, extra_args=args, port=port)
    try:
        assert health(third)["local_reads"]["socket"] == str(sock_path)
        writer = http_fs(third, "alice", local=False)
        writer.pipe_file(f"alice/{coll}/a.txt", b"after")
        fresh = third.collection()
        writer.makedirs(f"alice/{fresh}", exist_ok=True)
        writer.pipe_file(f"alice/{fresh}/b.txt", b"new collection")
        # the lease on the first collection still reads it (the same folder, the same ACL and keys)
        assert fs.cat_file(f".my/{coll}/a.txt") == b"after" and fs.fs.local_reads.leased == 1
        # one no lease covers: the filesystem made before the restarts reconnects once (asking health
        # anew) and reads locally
        assert fs.cat_file(f".my/{fresh}/b.txt") == b"new collection"
        assert fs.fs.local_reads.active and fs.fs.local_reads.opened == 3 and fs.fs.local_reads.leased == 1
    finally:
        stop(third.proc)
    assert not sock_path.exists()


def test_an_impostor_on_the_socket_never_sees_a_key(api, tmp_path):
    """A process that answers on the advertised path with the right handshake is still not the service:
    the client checks the peer's pid (from the kernel) against health's before it sends anything."""
    import threading

    from freestack.storage.localreads import Channel, LocalReadsUnavailable

    advert = health(api)["local_reads"]
    assert advert["pid"] == api.pid
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fake.bind(str(tmp_path / "fake.sock"))
    fake.listen(1)
    heard: list[bytes] = []

    def impostor() -> None:
        conn, _ = fake.accept()
        try:  # the client may be gone before the handshake: it did not wait for one
            conn.sendall(json.dumps({"service": "freestack-data-api", "instance": advert["instance"]}).encode() + b"\n")
            conn.settimeout(2)
            heard.append(conn.recv(65536))
        except OSError:
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    with pytest.raises(LocalReadsUnavailable, match=f"process {os.getpid()} answers there, not the service"):
        Channel(str(tmp_path / "fake.sock"), advert["instance"], advert["pid"]).connect()
    thread.join(timeout=10)
    fake.close()
    assert heard in ([], [b""])  # nothing, let alone a key


# ---------------------------------------------------------------------------------------------------------
# read leases: later opens in a collection without a round trip, ended at once by an ACL change or a revoked key


def set_acl(api: DataApi, owner: str, coll: str, read: list[str]) -> None:
    r = requests.patch(f"{api.url}/v1/data/{owner}/{coll}", headers=api.headers(owner), json={"acl": {"read": read}},
                       timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text


def read_while_the_service_is_stopped(api: DataApi, fs, path: str) -> bytes:
    """``path`` read with the service's process stopped (SIGSTOP): only a read that asks it nothing ends."""
    import threading

    got: list[bytes] = []
    os.kill(api.pid, 19)  # SIGSTOP
    try:
        reader = threading.Thread(target=lambda: got.append(fs.cat_file(path)), daemon=True)
        reader.start()
        reader.join(timeout=10)
    finally:
        os.kill(api.pid, 18)  # SIGCONT
    assert got, f"reading {path} waited for the stopped service"
    return got[0]


def test_later_opens_in_a_collection_are_made_under_a_read_lease(api):
    blobs = {f"f{i}_bin": os.urandom(1000 + i) for i in range(4)}
    coll = seed(api, **blobs)
    writer = http_fs(api, "alice", local=False)
    writer.pipe_file(f"alice/{coll}/ds=2026-11-25/part.parquet", b"PAR1 nested")
    writer.pipe_file(f"alice/{coll}/naïve.txt", b"not a plain name")
    fs = data_fs(api, "alice")
    local = fs.fs.local_reads
    assert fs.cat_file(f".my/{coll}/f0.bin") == blobs["f0_bin"] and (local.opened, local.leased) == (1, 0)
    for i in range(1, 4):
        with fs.open(f".my/{coll}/f{i}.bin", "rb") as f:
            assert isinstance(f, LocalReadFile) and f.read() == blobs[f"f{i}_bin"]
    assert (local.opened, local.leased) == (4, 3)
    # no round trip: the service can be stopped while a leased open is made
    assert read_while_the_service_is_stopped(api, fs, f".my/{coll}/ds=2026-11-25/part.parquet") == b"PAR1 nested"
    assert local.leased == 4

    # a name a lease does not open plainly is the service's: it normalises and checks it, as for a GET
    assert fs.cat_file(f".my/{coll}/naïve.txt") == b"not a plain name" and local.leased == 4
    # a replaced object reads as its new version; what is not a plain file gets the answer HTTP gives
    writer.pipe_file(f"alice/{coll}/f1.bin", b"replaced")
    assert fs.cat_file(f".my/{coll}/f1.bin") == b"replaced" and local.leased == 5
    http = data_fs(api, "alice", extra={"local_reads": False})
    for name, kind in (("missing.bin", FileNotFoundError), ("ds=2026-11-25", IsADirectoryError),
                       (".freestack-acl.json", Exception)):  # fmt: skip
        got, want = _failure(fs, f".my/{coll}/{name}"), _failure(http, f".my/{coll}/{name}")
        assert type(got) is type(want) and isinstance(got, kind) and str(got) == str(want), (name, got, want)
    assert local.leased == 5
    # another user's key needs a lease of its own: bob may not read alice's private collection
    bob = data_fs(api, "bob")
    assert isinstance(_failure(bob, f"alice/{coll}/f0.bin"), AccessDenied) and bob.fs.local_reads.leased == 0


def test_an_acl_change_ends_a_read_lease_at_once(api):
    coll = seed(api, a_txt=b"shared a", b_txt=b"shared b", c_txt=b"shared c")
    set_acl(api, "alice", coll, ["user://bob"])
    bob = data_fs(api, "bob")
    assert bob.cat_file(f"alice/{coll}/a.txt") == b"shared a"
    assert bob.cat_file(f"alice/{coll}/b.txt") == b"shared b" and bob.fs.local_reads.leased == 1
    set_acl(api, "alice", coll, [])  # private again
    got, want = _failure(bob, f"alice/{coll}/c.txt"), _failure(http_fs(api, "bob", local=False), f"alice/{coll}/c.txt")
    assert isinstance(got, AccessDenied) and str(got) == str(want) and "may not read" in str(got)
    assert bob.fs.local_reads.leased == 1 and not bob.fs.local_reads._leases
    # shared again: a new lease, granted against the new ACL
    set_acl(api, "alice", coll, ["user://bob"])
    assert bob.cat_file(f"alice/{coll}/c.txt") == b"shared c"
    assert bob.cat_file(f"alice/{coll}/a.txt") == b"shared a" and bob.fs.local_reads.leased == 2


def test_a_revoked_key_ends_every_read_lease_at_once(api):
    from freestack.dataapi.keys import KeyStore

    coll = seed(api, a_txt=b"a", b_txt=b"b")
    api.keys["alice-laptop"] = api.new_key("alice")
    laptop, desk = data_fs(api, "alice-laptop"), data_fs(api, "alice")
    for fs in (laptop, desk):
        assert fs.cat_file(f".my/{coll}/a.txt") == b"a" and fs.cat_file(f".my/{coll}/b.txt") == b"b"
        assert fs.fs.local_reads.leased == 1
    KeyStore(api.keys_path).revoke(api.keys.pop("alice-laptop"))
    got = _failure(laptop, f".my/{coll}/a.txt")
    assert isinstance(got, AccessDenied) and "not valid" in str(got) and laptop.fs.local_reads.leased == 1
    # every lease ended with it (leases do not say which key was revoked): the other key asks again, once
    assert desk.cat_file(f".my/{coll}/a.txt") == b"a" and desk.fs.local_reads.leased == 1
    assert desk.cat_file(f".my/{coll}/b.txt") == b"b" and desk.fs.local_reads.leased == 2


def test_a_lease_ends_with_its_time_and_none_is_granted_when_switched_off(tmp_path):
    short = start_service(tmp_path / "short", extra_args=("--read-lease", "0.5"))
    try:
        coll = seed(short, a_txt=b"a", b_txt=b"b")
        fs = data_fs(short, "alice")
        assert fs.cat_file(f".my/{coll}/a.txt") == b"a" and fs.cat_file(f".my/{coll}/b.txt") == b"b"
        assert fs.fs.local_reads.leased == 1
        time.sleep(0.6)
        assert fs.cat_file(f".my/{coll}/a.txt") == b"a" and fs.fs.local_reads.leased == 1  # asked again
        # the client's switch: every open asks the service
        asks = data_fs(short, "alice", extra={"read_leases": False})
        for _ in range(3):
            assert asks.cat_file(f".my/{coll}/a.txt") == b"a"
        assert (asks.fs.local_reads.opened, asks.fs.local_reads.leased) == (3, 0) and not asks.fs.local_reads._leases
    finally:
        stop(short.proc)
    off = start_service(tmp_path / "off", extra_args=("--read-lease", "0"))
    try:
        coll = seed(off, a_txt=b"a")
        fs = data_fs(off, "alice")
        for _ in range(3):
            assert fs.cat_file(f".my/{coll}/a.txt") == b"a"
        assert (fs.fs.local_reads.opened, fs.fs.local_reads.leased) == (3, 0) and not fs.fs.local_reads._leases
    finally:
        stop(off.proc)


def _peer_is_eligible(listener: socket.socket, *, uid: int | None = None, new_mounts: bool = False) -> bool:
    """Whether the service would grant read leases to a forked peer connecting to ``listener`` as ``uid``
    (and in a mount namespace of its own)."""
    import ctypes

    from freestack.dataapi.local import lease_eligible

    path = listener.getsockname()
    pid = os.fork()
    if pid == 0:
        try:
            if new_mounts:
                assert ctypes.CDLL(None, use_errno=True).unshare(0x00020000) == 0  # CLONE_NEWNS
            if uid is not None:
                os.setuid(uid)
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.connect(path)
            peer.recv(1)
        finally:
            os._exit(0)
    conn, _ = listener.accept()
    try:
        return lease_eligible(conn)
    finally:
        conn.sendall(b"x")
        conn.close()
        os.waitpid(pid, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="a peer of another OS user or mount namespace needs root to make")
def test_leases_go_only_to_a_peer_that_could_open_the_files_itself():
    """A lease lets its holder open a collection's files by name: only a process of the service's own OS
    user, mount namespace and root gets one, as it could open them by their paths anyway."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="freestack-peer-")
    os.chmod(folder, 0o755)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(os.path.join(folder, "s.sock"))
        os.chmod(os.path.join(folder, "s.sock"), 0o777)
        listener.listen(4)
        assert _peer_is_eligible(listener) is True
        assert _peer_is_eligible(listener, uid=65534) is False  # nobody
        assert _peer_is_eligible(listener, new_mounts=True) is False
    finally:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)
