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
    sock.close()

    garbage = [
        (b"this is not json\n", 400, "one JSON object a line"),
        (b'["open"]\n', 400, "one JSON object a line"),
        (b'{"op": "delete", "path": "alice/x"}\n', 400, "unknown local-read op 'delete'"),
        (b'{"op": "open", "path": 7}\n', 400, '"path" must be a string'),
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
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reads through its own connection, then reports
        try:
            ok = read(names[0]) == blobs["f0_bin"] and fs.fs.local_reads._channel.pid == os.getpid()
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
    args = ("--local-socket", str(sock_path))
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
        http_fs(third, "alice", local=False).pipe_file(f"alice/{coll}/a.txt", b"after")
        # the filesystem made before the restarts reconnects once (asking health anew) and reads locally
        assert fs.cat_file(f".my/{coll}/a.txt") == b"after"
        assert fs.fs.local_reads.active and fs.fs.local_reads.opened == 2
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
