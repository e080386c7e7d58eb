"""The Data API refuses what it must, and loses or corrupts nothing while doing so.

Against the live service: path traversal (``..``, percent-encoded, absolute), encoded separators
(``%2F`` would otherwise split a name), someone else's private
collection, a revoked key, no key, oversized headers, truncated uploads. Paths are sent byte for byte
(http.client / raw sockets), since HTTP clients normalise ``..`` away before sending.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.data_api_service import (  # noqa: F401  (fixture)
    HOST,
    data_api,
    rss_now_kib,
)

BIN = Path(sys.executable).parent


def _seed(api, owner: str = "alice") -> tuple[str, dict[str, bytes]]:
    """A private collection of ``owner`` with two files; returns its name and the stored bytes."""
    coll = api.collection()
    c = api.client(owner)
    c.dir(f"data://.my/{coll}").create()
    c.file(f"data://.my/{coll}/secret.txt").put("alice's secret")
    c.file(f"data://.my/{coll}/model.bin").put(os.urandom(4096))
    return coll, api.files_under(owner, coll)


def _snapshot(root: Path) -> dict[str, bytes]:
    base = root.parent  # the service's working folder: anything escaping the data root lands here
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and "keys.sqlite" not in p.name and not p.name.endswith(".log")
    }


def _error(body: bytes) -> str:
    return json.loads(body)["error"]["message"]


def test_path_traversal_is_refused_in_every_spelling(data_api):  # noqa: F811
    coll, stored = _seed(data_api, "bob")
    alice_coll = data_api.collection()
    data_api.client("alice").dir(f"data://.my/{alice_coll}").create()
    before = _snapshot(data_api.root)
    attempts = [
        f"/v1/data/.my/{alice_coll}/../../bob/{coll}/secret.txt",
        f"/v1/data/.my/{alice_coll}/%2e%2e/%2e%2e/bob/{coll}/secret.txt",
        f"/v1/data/.my/{alice_coll}/%2E%2E%2F%2E%2E%2Fbob/{coll}/secret.txt",
        f"/v1/data/.my/{alice_coll}/%252e%252e/%252e%252e/bob/{coll}/secret.txt",
        f"/v1/data/.my/{alice_coll}/..%5c..%5cbob/{coll}/secret.txt",
        f"/v1/data/.my/{alice_coll}/./x",
        "/v1/data/.my/../../../etc/passwd",
        "/v1/data//etc/passwd",
        "/v1/data/%2fetc%2fpasswd",
        "/v1/data/~/x",
        "/v1/data/.my/x%00y/z",
        f"/v1/data/alice/{alice_coll}/.freestack-acl.json",
        f"/v1/data/bob/{coll}/.freestack-acl.json",
    ]
    for path in attempts:
        for method, body in (("GET", None), ("HEAD", None), ("PUT", b"overwrite"), ("DELETE", None)):
            status, headers, data = data_api.raw(method, path, user="alice", body=body)
            assert status in (400, 404), (method, path, status, data)
            assert "x-error-message" in headers, (method, path)
            if method != "HEAD":
                assert _error(data), (method, path)
        # creating a directory with a traversing name, and an ACL write through the back door
        status, _, data = data_api.raw(
            "POST",
            f"/v1/data/.my/{alice_coll}",
            user="alice",
            body=json.dumps({"name": "../../bob/evil"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status == 400, data
    status, _, data = data_api.raw(
        "GET", f"/v1/data/.my/{alice_coll}/../../bob/{coll}/secret.txt", user="alice"
    )
    assert "'..'" in _error(data)  # the message says what is wrong
    # nothing was read out (no 200 above), written or deleted anywhere
    assert _snapshot(data_api.root) == before
    assert data_api.files_under("bob", coll) == stored

    # the official client: its requests normalise '..' away before sending, and what arrives is refused
    from Algorithmia.errors import DataApiError

    c = data_api.client("alice")
    for uri in (
        f"data://.my/{alice_coll}/../../bob/{coll}/secret.txt",
        "data:///etc/passwd",
        f"data://.my/{alice_coll}/%2e%2e/%2e%2e/bob/{coll}/secret.txt",
    ):
        with pytest.raises((DataApiError, ValueError, Exception)):  # noqa: B017
            c.file(uri).getString()
        with pytest.raises(Exception):  # noqa: B017
            c.file(uri).put("x")
    assert _snapshot(data_api.root) == before


def test_encoded_separators_are_refused_and_write_nothing(data_api):  # noqa: F811
    """The server decodes %2F into the '/' that separates names before the app sees the path: without
    looking at the raw path, PUT .../%2Fevil would write evil and a%2Fb.txt would write a/b.txt."""
    coll = data_api.collection()
    data_api.client("alice").dir(f"data://.my/{coll}").create()
    base = f"/v1/data/alice/{coll}"
    before = _snapshot(data_api.root)
    for name in (
        "%2fevil",
        "%2Fevil",
        "a%2fb.txt",
        "a%2Fb.txt",
        "sub%2F..%2Fx",
        "a%5cb.txt",
        "a%5Cb.txt",
        "a%00b.txt",
        "a%252fb.txt",
        "a%25252Fb.txt",
        "%2e%2e%2fx",
    ):
        for method in ("PUT", "GET", "HEAD", "DELETE"):
            status, headers, data = data_api.raw(
                method, f"{base}/{name}", user="alice", body=b"evil" if method == "PUT" else None
            )
            assert status == 400, (method, name, status, data)
            message = headers["x-error-message"] if method == "HEAD" else _error(data)
            assert "encoded" in message and "Send '/' unencoded" in message, (name, message)
    assert _snapshot(data_api.root) == before  # nothing written: no evil, no a/b.txt
    # other escapes are names' UTF-8 bytes, as the docs say: a space, an accent, a literal '%'
    for name, stored in (("a%20b.txt", "a b.txt"), ("caf%C3%A9.txt", "café.txt"), ("50%25.txt", "50%.txt")):
        status, _, data = data_api.raw("PUT", f"{base}/{name}", user="alice", body=name.encode())
        assert status == 200, (name, data)
        assert (data_api.root / "alice" / coll / stored).read_bytes() == name.encode()
        assert data_api.raw("GET", f"{base}/{name}", user="alice")[2] == name.encode()


#: an encoded '/' in a segment other than the name's last one: the user, the collection, a folder, the
#: API's own segments, and a trailing one
NON_FINAL = (
    "/v1/data/alice%2f{coll}/x.txt",
    "/v1/data/alice/{coll}%2fsub/x.txt",
    "/v1/data/alice/{coll}/sub%2F/x.txt",
    "/v1/data%2falice/{coll}/x.txt",
    "/v1%2fdata/alice/{coll}/x.txt",
    "/v1/data/alice/{coll}/sub%2f",
)


def test_an_encoded_separator_in_any_segment_is_refused_and_writes_nothing(data_api):  # noqa: F811
    coll = data_api.collection()
    data_api.client("alice").dir(f"data://.my/{coll}").create()
    before = _snapshot(data_api.root)
    for path in NON_FINAL:
        for method in ("PUT", "GET", "DELETE"):
            status, _, data = data_api.raw(
                method, path.format(coll=coll), user="alice", body=b"evil" if method == "PUT" else None
            )
            assert status == 400 and "encoded '/'" in _error(data), (method, path, status, data)
    assert _snapshot(data_api.root) == before


def test_someone_elses_private_collection(data_api):  # noqa: F811
    coll, stored = _seed(data_api, "alice")
    base = f"/v1/data/alice/{coll}"
    for user, status in (("bob", 403), (None, 401)):
        for method, path, body in (
            ("GET", f"{base}/secret.txt", None),
            ("HEAD", f"{base}/secret.txt", None),
            ("GET", base, None),
            ("GET", f"{base}?acl=true", None),
            ("PUT", f"{base}/secret.txt", b"replaced"),
            ("PUT", f"{base}/new.txt", b"planted"),
            ("DELETE", f"{base}/secret.txt", None),
            ("DELETE", f"{base}?force=true", None),
            ("PATCH", base, json.dumps({"acl": {"read": ["user://*"]}}).encode()),
            ("POST", base, json.dumps({"name": "sub"}).encode()),
            ("POST", "/v1/data/alice", json.dumps({"name": "hijack"}).encode()),
        ):
            got, headers, data = data_api.raw(method, path, user=user, body=body)
            assert got == status, (user, method, path, got, data)
            assert "x-error-message" in headers
            if method != "HEAD":
                msg = _error(data)
                assert ("API key" in msg) if user is None else ("bob" in msg), msg
        # data://.my without a key means nobody
        got, _, data = data_api.raw("GET", "/v1/data/.my", user=user)
        assert got == (401 if user is None else 200)
    # a private collection does not show up in anyone else's listing
    for user in ("bob", None):
        _, _, data = data_api.raw("GET", "/v1/data/alice", user=user)
        assert coll not in {f["name"] for f in json.loads(data)["folders"]}
    # untouched, and nothing planted next to it
    assert data_api.files_under("alice", coll) == stored
    assert not (data_api.root / "alice" / "hijack").exists()


def test_revoked_key_and_no_key(data_api):  # noqa: F811
    from Algorithmia.errors import DataApiError

    key = data_api.new_key("carol")
    import Algorithmia

    c = Algorithmia.client(key, data_api.url)
    coll = data_api.collection()
    c.dir(f"data://.my/{coll}").create()
    c.file(f"data://.my/{coll}/a.txt").put("before revocation")

    listing = subprocess.run(
        [str(BIN / "freestack"), "keys", "list", "carol", "--json", "--keys", str(data_api.keys_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    key_id = key.split("_")[1]
    assert key_id in {k["id"] for k in json.loads(listing.stdout)}
    assert key not in listing.stdout  # list never shows keys
    revoked = subprocess.run(
        [str(BIN / "freestack"), "keys", "revoke", key_id, "--keys", str(data_api.keys_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout

    # refused at once, for reads and writes; a revoked key is not silently treated as anonymous
    with pytest.raises(DataApiError, match="revoked"):
        c.file(f"data://.my/{coll}/a.txt").getString()
    for method, body in (("GET", None), ("PUT", b"after revocation"), ("DELETE", None)):
        r = requests.request(
            method,
            f"{data_api.url}/v1/data/carol/{coll}/a.txt",
            data=body,
            headers={"Authorization": f"Simple {key}"},
            timeout=10,
        )
        assert r.status_code == 401 and "revoked" in r.json()["error"]["message"], (method, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Simple")
    assert (data_api.root / "carol" / coll / "a.txt").read_text() == "before revocation"
    # carol's other key still works
    assert data_api.client("carol").file(f"data://carol/{coll}/a.txt").getString() == "before revocation"

    # no key at all: 401 JSON for anything but reading public data
    for method, path, body in (
        ("GET", f"/v1/data/carol/{coll}/a.txt", None),
        ("PUT", f"/v1/data/carol/{coll}/b.txt", b"x"),
        ("POST", "/v1/data/carol", json.dumps({"name": "x"}).encode()),
        ("DELETE", f"/v1/data/carol/{coll}/a.txt", None),
        ("GET", "/v1/freestack/whoami", None),
    ):
        status, headers, data = data_api.raw(method, path, body=body)
        assert status == 401, (method, path, status)
        assert headers["content-type"] == "application/json" and _error(data)
    # malformed keys
    for header in ("Simple", "Basic dXNlcjpwdw==", "Simple " + "k" * 5000):
        status, _, data = data_api.raw(
            "GET", f"/v1/data/carol/{coll}/a.txt", headers={"Authorization": header}
        )
        assert status == 401, header
    assert not (data_api.root / "carol" / coll / "b.txt").exists()


def test_keys_are_stored_only_as_hashes(data_api):  # noqa: F811
    raw = data_api.keys_path.read_bytes()
    for user, key in data_api.keys.items():
        assert key.encode() not in raw, user
        secret = key.split("_", 2)[2]
        assert secret.encode() not in raw
    assert oct(data_api.keys_path.stat().st_mode & 0o777) == "0o600"


def test_oversized_headers_are_refused(data_api):  # noqa: F811
    coll, stored = _seed(data_api, "alice")
    url = f"{data_api.url}/v1/data/alice/{coll}/secret.txt"
    # over the app's limit (16 KiB in all, 8 KiB a value): 431 with a JSON error
    r = requests.get(url, headers={**data_api.headers("alice"), "X-Big": "a" * 20_000}, timeout=10)
    assert r.status_code == 431 and "too large" in r.json()["error"]["message"]
    many = {f"X-H{i}": "v" * 900 for i in range(20)}
    r = requests.put(url, data=b"replaced", headers={**data_api.headers("alice"), **many}, timeout=10)
    assert r.status_code == 431

    # a head that never ends: the server stops buffering at its cap, answers 431 and hangs up
    rss_before = rss_now_kib(data_api.pid)
    with socket.create_connection((HOST, int(data_api.url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(f"GET /v1/data/alice/{coll}/secret.txt HTTP/1.1\r\nHost: x\r\nX-Flood: ".encode())
        sent, reply, chunk = 0, b"", b"z" * 65536
        try:
            while sent < 64 * 1024 * 1024:
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while True:
                part = s.recv(65536)
                if not part:
                    break
                reply += part
        except (ConnectionResetError, TimeoutError):
            pass
    assert sent < 64 * 1024 * 1024, "the server kept reading an endless header"
    if reply:  # the 431 usually arrives before the reset
        assert reply.startswith(b"HTTP/1.1 431")
    assert rss_now_kib(data_api.pid) - rss_before < 32 * 1024  # it did not buffer the flood
    # still serving, nothing changed
    r = requests.get(url, headers=data_api.headers("alice"), timeout=10)
    assert r.status_code == 200 and r.content == b"alice's secret"
    assert data_api.files_under("alice", coll) == stored


def _truncated_put(api, path: str, *, chunked: bool, send: int, declared: int = 0) -> None:
    """Start a PUT, send ``send`` body bytes, and hang up before the body is complete."""
    port = int(api.url.rsplit(":", 1)[1])
    head = [f"PUT {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: Simple {api.keys['alice']}"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {declared}")
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        block = os.urandom(256 * 1024)
        sent = 0
        while sent < send:
            piece = block[: min(len(block), send - sent)]
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        # no final zero-length chunk / fewer bytes than Content-Length: the client is gone
        s.shutdown(socket.SHUT_RDWR)


def _settled(folder: Path, timeout: float = 10.0, quiet: float = 1.0) -> list[str]:
    """The folder's entries once the service has cleaned up after an interrupted upload: no temporary
    for ``quiet`` seconds in a row (on a busy machine the server may reach a cut request only after
    the client has given up on it, and only then create, and remove, its temporary)."""
    deadline = time.monotonic() + timeout
    clean_since = None
    while True:
        names = sorted(p.name for p in folder.iterdir())
        busy = any(n.startswith(".") and "freestack-tmp" in n for n in names)
        now = time.monotonic()
        clean_since = None if busy else (clean_since or now)
        if (clean_since is not None and now - clean_since >= quiet) or now > deadline:
            return names
        time.sleep(0.1)


def test_truncated_uploads_never_become_files(data_api):  # noqa: F811
    coll, stored = _seed(data_api, "alice")
    folder = data_api.root / "alice" / coll
    c = data_api.client("alice")
    # a small body (taken whole before anything is written) cut short: nothing appears
    _truncated_put(
        data_api, f"/v1/data/alice/{coll}/small.bin", chunked=False, send=100_000, declared=500_000
    )
    _truncated_put(data_api, f"/v1/data/alice/{coll}/secret.txt", chunked=False, send=10, declared=100)
    assert _settled(folder) == ["model.bin", "secret.txt"]
    for chunked in (False, True):
        # a new file: nothing appears, not even a temporary
        _truncated_put(
            data_api,
            f"/v1/data/alice/{coll}/new.bin",
            chunked=chunked,
            send=3 * 1024 * 1024,
            declared=10 * 1024 * 1024,
        )
        assert _settled(folder) == ["model.bin", "secret.txt"]
        assert not c.file(f"data://.my/{coll}/new.bin").exists()
        # an existing file: the old content stays, whole
        _truncated_put(
            data_api,
            f"/v1/data/alice/{coll}/secret.txt",
            chunked=chunked,
            send=2 * 1024 * 1024,
            declared=5 * 1024 * 1024,
        )
        assert _settled(folder) == ["model.bin", "secret.txt"]
        assert c.file(f"data://.my/{coll}/secret.txt").getString() == "alice's secret"
    assert data_api.files_under("alice", coll) == stored

    # freestack's own writer through the service: an exception mid-write publishes nothing
    from freestack.storage.httpfs import DataApiHttpFileSystem

    fs = DataApiHttpFileSystem(data_api.url, api_key=data_api.keys["alice"])
    f = fs.open(f"alice/{coll}/partial.bin", "wb")
    f.write(os.urandom(9 * 1024 * 1024))
    f.discard()
    assert _settled(folder) == ["model.bin", "secret.txt"]
    with fs.open(f"alice/{coll}/whole.bin", "wb") as g:
        g.write(b"complete")
    assert (folder / "whole.bin").read_bytes() == b"complete"
