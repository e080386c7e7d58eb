"""The Data API against the official Algorithmia client (``algorithmia==2.0.5``), live on 127.0.0.1.

Every test talks to the running ``freestack data-api`` process (tests/integration/data_api_service.py)
through ``Algorithmia.client(key, url)`` (or plain HTTP for what the client cannot express) and checks
what landed in the backing folder.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
import requests

from tests.integration.data_api_service import PAGE_SIZE, data_api  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("data_api")


def test_files_put_get_exists_delete(data_api, tmp_path):  # noqa: F811
    from Algorithmia.errors import DataApiError

    c = data_api.client("alice")
    coll = data_api.collection()
    c.dir(f"data://.my/{coll}").create()

    # putJson / getJson
    f = c.file(f"data://.my/{coll}/model.json")
    assert f.putJson({"lr": 0.001, "layers": [64, 10]}) is f
    assert c.file(f"data://.my/{coll}/model.json").getJson() == {"lr": 0.001, "layers": [64, 10]}
    assert json.loads((data_api.root / "alice" / coll / "model.json").read_bytes()) == {
        "lr": 0.001,
        "layers": [64, 10],
    }

    # put / getBytes (binary) and getString (text), through the owner's own name as well as .my
    blob = bytes(range(256)) * 1000
    c.file(f"data://.my/{coll}/blob.bin").put(blob)
    assert c.file(f"data://alice/{coll}/blob.bin").getBytes() == blob
    c.file(f"data://.my/{coll}/hello.txt").put("héllo wörld")
    assert c.file(f"data://.my/{coll}/hello.txt").getString() == "héllo wörld"

    # putFile / getFile (streamed both ways; the client reads the local file itself)
    local = tmp_path / "weights.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    local.write_bytes(payload)
    c.file(f"data://.my/{coll}/weights.bin").putFile(str(local))
    got = c.file(f"data://.my/{coll}/weights.bin").getFile(as_path=True)
    try:
        with open(got, "rb") as fh:
            assert fh.read() == payload
    finally:
        os.unlink(got)
    assert (data_api.root / "alice" / coll / "weights.bin").read_bytes() == payload

    # exists / existsWithError
    assert c.file(f"data://.my/{coll}/blob.bin").exists()
    missing = c.file(f"data://.my/{coll}/nope.txt")
    ok, why = missing.existsWithError()
    assert not ok and "does not exist" in why
    with pytest.raises(DataApiError, match="does not exist"):
        missing.getBytes()

    # overwrite, then delete
    c.file(f"data://.my/{coll}/hello.txt").put("v2")
    assert c.file(f"data://.my/{coll}/hello.txt").getString() == "v2"
    assert c.file(f"data://.my/{coll}/hello.txt").delete() is True
    assert not c.file(f"data://.my/{coll}/hello.txt").exists()
    assert not (data_api.root / "alice" / coll / "hello.txt").exists()
    with pytest.raises(DataApiError, match="does not exist"):
        c.file(f"data://.my/{coll}/hello.txt").delete()
    # nothing hidden was left behind by any of it
    assert sorted(p.name for p in (data_api.root / "alice" / coll).iterdir()) == [
        "blob.bin",
        "model.json",
        "weights.bin",
    ]


def test_directories_create_list_iterate_delete(data_api):  # noqa: F811
    from Algorithmia.datadirectory import DataDirectory
    from Algorithmia.errors import DataApiError

    c = data_api.client("alice")
    coll = data_api.collection()
    d = c.dir(f"data://.my/{coll}")
    assert not d.exists()
    d.create()
    assert d.exists() and (data_api.root / "alice" / coll).is_dir()
    with pytest.raises(Exception, match="409"):  # noqa: B017  (the client wraps a refused POST generically)
        d.create()
    r = requests.post(
        f"{data_api.url}/v1/data/.my", json={"name": coll}, headers=data_api.headers("alice"), timeout=10
    )
    assert r.status_code == 409 and r.json()["error"]["message"] == f"data://.my/{coll} already exists"

    # the collection shows in the owner's namespace, as Algorithmia lists it (paths keep .my)
    assert f".my/{coll}" in {x.path for x in c.dir("data://.my/").dirs()}
    assert c.username() in ("alice", "/alice")

    # 12 files and 2 sub-directories: listings page by PAGE_SIZE, the client follows the markers
    names = [f"part-{i:02d}.csv" for i in range(12)]
    for i, name in enumerate(names):
        d.file(name).put(f"row,{i}\n" * (i + 1))
    d.dir("sub_a").create()
    d.dir("sub_b").create()
    d.dir("sub_a").file("inner.txt").put("inside")
    assert PAGE_SIZE < 12
    files = list(d.files())
    assert [f.getName() for f in files] == names
    assert [f.size for f in files] == [len(f"row,{i}\n") * (i + 1) for i in range(12)]
    assert all(isinstance(f.last_modified, datetime) for f in files)
    assert [x.getName() for x in d.dirs()] == ["sub_a", "sub_b"]
    listed = list(d.list())
    assert [x.getName() for x in listed] == ["sub_a", "sub_b", *names]  # folders first, like Algorithmia
    assert [f.getName() for f in c.dir(f"data://.my/{coll}/").files()] == names  # trailing slash
    assert [f.getName() for f in DataDirectory(c, f"data://.my/{coll}/sub_a").files()] == ["inner.txt"]

    # the raw listing: the documented shape, a marker while more entries remain
    r = requests.get(f"{data_api.url}/v1/data/.my/{coll}", headers=data_api.headers("alice"), timeout=10)
    body = r.json()
    assert r.status_code == 200 and r.headers["X-Data-Type"] == "directory"
    assert set(body) == {"folders", "files", "marker"} and body["marker"]
    assert body["folders"] == [{"name": "sub_a"}, {"name": "sub_b"}]
    assert set(body["files"][0]) == {"filename", "size", "last_modified"}
    r2 = requests.get(
        f"{data_api.url}/v1/data/.my/{coll}",
        params={"marker": body["marker"]},
        headers=data_api.headers("alice"),
        timeout=10,
    )
    assert [f["filename"] for f in r2.json()["files"]] == names[3:8]
    bad = requests.get(
        f"{data_api.url}/v1/data/.my/{coll}",
        params={"marker": "garbage"},
        headers=data_api.headers("alice"),
        timeout=10,
    )
    assert bad.status_code == 400 and "marker" in bad.json()["error"]["message"]

    # getDir downloads every file
    local = d.dir("sub_a").getDir()
    assert open(os.path.join(local, "inner.txt")).read() == "inside"

    # an empty directory goes with delete(); a non-empty one only with force=True
    c.dir(f"data://.my/{coll}/sub_b").delete()
    assert not (data_api.root / "alice" / coll / "sub_b").exists()
    with pytest.raises(DataApiError, match="not empty"):
        d.delete()
    assert d.exists() and len(list(d.files())) == 12
    assert d.delete(force=True) is True
    assert not d.exists() and not (data_api.root / "alice" / coll).exists()

    # Algorithmia's delete answer: how many files went
    d.create()
    d.file("a").put("1")
    d.file("b").put("2")
    r = requests.delete(
        f"{data_api.url}/v1/data/.my/{coll}",
        params={"force": "true"},
        headers=data_api.headers("alice"),
        timeout=10,
    )
    assert r.status_code == 200 and r.json() == {"result": {"deleted": 2}}


def test_permissions_private_public_team(data_api):  # noqa: F811
    from Algorithmia.acl import Acl, AclInner, AclType, ReadAcl
    from Algorithmia.errors import DataApiError

    alice, bob, anon = data_api.client("alice"), data_api.client("bob"), data_api.client(None)
    coll = data_api.collection()
    d = alice.dir(f"data://.my/{coll}")
    d.create(ReadAcl.private)
    d.file("secret.txt").put("for alice")
    assert d.get_permissions().read_acl == AclType.private
    assert json.loads((data_api.root / "alice" / coll / ".freestack-acl.json").read_text())["read"] == []

    # private: bob and the anonymous caller get nothing, with a reason
    for other in (bob, anon):
        with pytest.raises(DataApiError, match="not public|not shared"):
            other.file(f"data://alice/{coll}/secret.txt").getString()
        assert not other.file(f"data://alice/{coll}/secret.txt").exists()
    assert coll not in {x.getName() for x in bob.dir("data://alice").dirs()}  # not even listed

    # public: anyone may read, nobody but alice may write or change the ACL
    assert d.update_permissions(ReadAcl.public) is True
    assert d.get_permissions().read_acl == AclType.public
    assert bob.file(f"data://alice/{coll}/secret.txt").getString() == "for alice"
    assert anon.file(f"data://alice/{coll}/secret.txt").getString() == "for alice"
    assert coll in {x.getName() for x in anon.dir("data://alice").dirs()}
    with pytest.raises(Exception):  # noqa: B017  (the client raises a generic error for a refused PUT)
        bob.file(f"data://alice/{coll}/secret.txt").put("bob was here")
    with pytest.raises(DataApiError, match="only 'alice' can"):
        bob.dir(f"data://alice/{coll}").update_permissions(ReadAcl.private)
    assert (data_api.root / "alice" / coll / "secret.txt").read_text() == "for alice"

    # my_algos (Algorithmia's default) round-trips, and means the owner only here
    d.update_permissions(ReadAcl.my_algos)
    assert d.get_permissions().read_acl == AclType.my_algos
    with pytest.raises(DataApiError):
        bob.file(f"data://alice/{coll}/secret.txt").getString()

    # team: named users read; with a write list they write too (PATCH with freestack's "write")
    d.update_permissions(Acl(AclInner("team", "user://bob")))
    assert bob.file(f"data://alice/{coll}/secret.txt").getString() == "for alice"
    with pytest.raises(DataApiError):
        data_api.client("carol").file(f"data://alice/{coll}/secret.txt").getString()
    r = requests.patch(
        f"{data_api.url}/v1/data/alice/{coll}",
        headers=data_api.headers("alice"),
        timeout=10,
        json={"acl": {"read": ["user://bob", "user://carol"], "write": ["user://bob"]}},
    )
    assert r.status_code == 200, r.text
    bob.file(f"data://alice/{coll}/from_bob.txt").put("bob's contribution")
    assert (data_api.root / "alice" / coll / "from_bob.txt").read_text() == "bob's contribution"
    assert (
        data_api.client("carol").file(f"data://alice/{coll}/from_bob.txt").getString() == "bob's contribution"
    )
    r = requests.put(
        f"{data_api.url}/v1/data/alice/{coll}/from_carol.txt",
        data=b"x",
        headers=data_api.headers("carol"),
        timeout=10,
    )
    assert r.status_code == 403 and "may not write" in r.json()["error"]["message"]
    acl = requests.get(
        f"{data_api.url}/v1/data/alice/{coll}",
        params={"acl": "true"},
        headers=data_api.headers("bob"),
        timeout=10,
    ).json()["acl"]
    assert acl == {"read": ["user://bob", "user://carol"], "write": ["user://bob"]}
    # a team writer still cannot delete the collection itself
    r = requests.delete(
        f"{data_api.url}/v1/data/alice/{coll}",
        params={"force": "true"},
        headers=data_api.headers("bob"),
        timeout=10,
    )
    assert r.status_code == 403 and (data_api.root / "alice" / coll / "secret.txt").exists()

    # invalid ACLs are refused with what is allowed
    r = requests.patch(
        f"{data_api.url}/v1/data/alice/{coll}",
        headers=data_api.headers("alice"),
        timeout=10,
        json={"acl": {"read": ["everyone"]}},
    )
    assert r.status_code == 400 and "user://*" in r.json()["error"]["message"]
    r = requests.patch(
        f"{data_api.url}/v1/data/alice/{coll}",
        headers=data_api.headers("alice"),
        timeout=10,
        json={"acl": {"read": [], "write": ["user://*"]}},
    )
    assert r.status_code == 400 and "never write" in r.json()["error"]["message"]
    # ... and back to private: bob is out again at once
    d.update_permissions(ReadAcl.private)
    with pytest.raises(DataApiError):
        bob.file(f"data://alice/{coll}/secret.txt").getString()


def test_key_forms_whoami_head_and_ranges(data_api):  # noqa: F811
    key = data_api.keys["alice"]
    coll = data_api.collection()
    data_api.client("alice").file(f"data://.my/{coll}/r.bin").put(bytes(range(100)))
    for header in (f"Simple {key}", key, f"Bearer {key}", f"simple   {key}"):
        r = requests.get(f"{data_api.url}/v1/freestack/whoami", headers={"Authorization": header}, timeout=10)
        assert r.status_code == 200 and r.json() == {"username": "alice"}, header
        r = requests.get(
            f"{data_api.url}/v1/data/.my/{coll}/r.bin", headers={"Authorization": header}, timeout=10
        )
        assert r.content == bytes(range(100))

    url = f"{data_api.url}/v1/data/.my/{coll}/r.bin"
    h = data_api.headers("alice")
    r = requests.head(url, headers=h, timeout=10)
    assert (
        r.status_code == 200 and r.headers["X-Data-Type"] == "file" and r.headers["Content-Length"] == "100"
    )
    assert r.headers["Last-Modified"].endswith("GMT")
    r = requests.head(f"{data_api.url}/v1/data/.my/{coll}", headers=h, timeout=10)
    assert r.status_code == 200 and r.headers["X-Data-Type"] == "directory"
    r = requests.head(f"{data_api.url}/v1/data/.my/{coll}/missing", headers=h, timeout=10)
    assert r.status_code == 404 and "does not exist" in r.headers["X-Error-Message"] and not r.content
    # ranges: a slice, a suffix, an open end, and one outside the file
    assert requests.get(url, headers={**h, "Range": "bytes=10-19"}, timeout=10).content == bytes(
        range(10, 20)
    )
    assert requests.get(url, headers={**h, "Range": "bytes=-5"}, timeout=10).content == bytes(range(95, 100))
    r = requests.get(url, headers={**h, "Range": "bytes=90-"}, timeout=10)
    assert (
        r.status_code == 206
        and r.headers["Content-Range"] == "bytes 90-99/100"
        and r.content == bytes(range(90, 100))
    )
    r = requests.get(url, headers={**h, "Range": "bytes=200-300"}, timeout=10)
    assert r.status_code == 416 and r.headers["Content-Range"] == "bytes */100"
    # create-only writes
    r = requests.put(url, data=b"again", headers={**h, "If-None-Match": "*"}, timeout=10)
    assert r.status_code == 412 and requests.get(url, headers=h, timeout=10).content == bytes(range(100))
    # the older /v1/connector/data/ prefix is the same API
    r = requests.get(f"{data_api.url}/v1/connector/data/.my/{coll}/r.bin", headers=h, timeout=10)
    assert r.content == bytes(range(100))
    # outside the API: JSON 404
    r = requests.get(f"{data_api.url}/v1/algo/demo/Hello", timeout=10)
    assert r.status_code == 404 and "not part of the Data API" in r.json()["error"]["message"]


def test_freestack_client_through_the_service(data_api, monkeypatch, clean_stores):  # noqa: F811
    """freestack's own data:// client pointed at the service (a connection whose host is its URL)."""
    from freestack.dataapi.client import DataAccessDenied, DataApiError, DataClient

    coll = data_api.collection()
    for user in ("alice", "bob"):
        monkeypatch.setenv(
            f"AIRFLOW_CONN_DATA_{user.upper()}",
            json.dumps(
                {"conn_type": "freestack_data", "host": data_api.url, "password": data_api.keys[user]}
            ),
        )
    alice, bob = DataClient("data_alice"), DataClient("data_bob")
    assert alice.owner == "alice" and bob.owner == "bob"
    d = alice.dir(f"data://.my/{coll}")
    d.create(acl={"read": ["user://bob"]})
    d.file("m.json").putJson({"v": 1})
    assert d.get_permissions().readers() == ["bob"]
    assert bob.file(f"data://alice/{coll}/m.json").getJson() == {"v": 1}
    with pytest.raises(DataAccessDenied):
        bob.file(f"data://alice/{coll}/m.json").putJson({"v": 2})
    with pytest.raises(DataApiError):
        bob.dir(f"data://alice/{coll}").update_permissions({"read": ["user://*"]})
    assert [f.getName() for f in d.files()] == ["m.json"]
    d.update_permissions({"read": []})
    with pytest.raises(DataAccessDenied):
        bob.file(f"data://alice/{coll}/m.json").getJson()
    assert d.delete(force=True) and not (data_api.root / "alice" / coll).exists()
