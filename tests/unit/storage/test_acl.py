"""ACLs, API keys, and the same access rules on ``data://`` in direct mode (a local backing folder)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from freestack.dataapi.keys import KeyError_, KeyStore, hash_key
from freestack.errors import AccessDenied, UnsafePathError
from freestack.storage.acl import (
    ACL_NAME,
    PRIVATE,
    READ,
    WRITE,
    Acl,
    AclError,
    AclStore,
    check_access,
    check_user,
)

# -- the ACL document ---------------------------------------------------------------------------------------


def test_acl_parse_kinds_and_rules():
    assert Acl.parse(None) is PRIVATE and PRIVATE.kind == "private"
    public = Acl.parse({"read": ["user://*"]})
    assert public.kind == "public" and public.allows(None, READ) and public.allows("bob", READ)
    assert not public.allows("bob", WRITE) and not public.allows(None, WRITE)
    team = Acl.parse({"read": ["user://bob", "user://carol", "user://bob"], "write": ["user://bob"]})
    assert team.read == ("user://bob", "user://carol")  # duplicates dropped
    assert team.kind == "team" and team.readers() == ["bob", "carol"] and team.writers() == ["bob"]
    assert team.allows("bob", WRITE) and team.allows("carol", READ) and not team.allows("carol", WRITE)
    assert not team.allows("dave", READ) and not team.allows(None, READ)
    writer_only = Acl.parse({"write": ["user://erin"]})
    assert writer_only.allows("erin", READ)  # who may write may read
    algos = Acl.parse({"read": ["algo://.my/*"]})
    assert algos.kind == "my_algos" and not algos.allows("bob", READ)
    assert Acl.parse(team.to_json()) == team


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "must be an object"),
        ({"read": "user://*"}, "must be a list"),
        ({"read": ["everyone"]}, "user://\\*"),
        ({"read": [42]}, "not a string"),
        ({"read": ["user://../x"]}, "not valid"),
        ({"write": ["user://*"]}, "never write"),
        ({"write": ["algo://.my/*"]}, "only meaningful for reading"),
        ({"read": [], "admin": []}, "unknown keys"),
    ],
)
def test_acl_parse_refuses_bad_documents(data, message):
    with pytest.raises(AclError, match=message):
        Acl.parse(data)


@pytest.mark.parametrize("name", ["alice", "Bob_2", "x", "team-ml", "a" * 64])
def test_user_names_ok(name):
    assert check_user(name) == name


@pytest.mark.parametrize("name", ["", ".my", "../x", "a/b", "a b", "*", "-lead", "a" * 65, "user://x", None])
def test_user_names_refused(name):
    with pytest.raises(AclError, match="not valid"):
        check_user(name)


def test_check_access_matrix():
    acls = {
        ("alice", "pub"): Acl.parse({"read": ["user://*"]}),
        ("alice", "team"): Acl.parse({"read": ["user://bob"], "write": ["user://bob"]}),
    }

    def acl_of(owner, coll):
        return acls.get((owner, coll), PRIVATE)

    ok = [
        ("alice", "alice/priv/x", WRITE),
        ("alice", "alice/priv", WRITE),
        ("alice", "alice", WRITE),
        ("bob", "", READ),
        (None, "", READ),
        ("bob", "alice", READ),
        (None, "alice", READ),
        ("bob", "alice/pub/x", READ),
        (None, "alice/pub/x", READ),
        ("bob", "alice/team/x", WRITE),
        ("bob", "alice/team/sub/y", WRITE),
    ]
    for user, rel, mode in ok:
        check_access(user, rel, mode, acl_of)
    denied = [
        ("bob", "", WRITE, False),
        ("bob", "alice", WRITE, False),
        ("bob", "alice/priv/x", READ, False),
        (None, "alice/priv/x", READ, True),
        ("bob", "alice/pub/x", WRITE, False),
        (None, "alice/pub/x", WRITE, True),
        ("bob", "alice/team", WRITE, False),  # a team writer cannot delete or re-create the collection
        ("carol", "alice/team/x", READ, False),
    ]
    for user, rel, mode, anonymous in denied:
        with pytest.raises(AccessDenied) as info:
            check_access(user, rel, mode, acl_of)
        assert info.value.anonymous is anonymous, (user, rel, mode)


def test_acl_store_sees_changes_made_elsewhere_at_once(tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    (tmp_path / "alice" / "c").mkdir(parents=True)
    store = AclStore(LocalFileSystem(), str(tmp_path))
    assert store.get("alice", "c") is PRIVATE
    store.set("alice", "c", Acl.parse({"read": ["user://*"]}))
    assert store.get("alice", "c").kind == "public"
    # another process rewrites the document: the next lookup sees it (stat-validated cache)
    doc = tmp_path / "alice" / "c" / ACL_NAME
    doc.write_text(json.dumps({"read": ["user://bob"]}))
    os.utime(doc, ns=(1, 1))
    assert store.get("alice", "c").readers() == ["bob"]
    # a damaged document opens nothing up
    doc.write_text("{not json")
    assert store.get("alice", "c") is PRIVATE
    doc.unlink()
    assert store.get("alice", "c") is PRIVATE


# -- API keys -----------------------------------------------------------------------------------------------


def test_keys_create_list_revoke_authenticate(tmp_path):
    path = tmp_path / "sub" / "keys.sqlite"
    store = KeyStore(path)
    info, key = store.create_key("alice", label="laptop")
    info2, key2 = store.create_key("alice")
    _, bob_key = store.create_key("bob")
    assert key.startswith(f"fsk_{info.id}_") and len(key) > 40 and key != key2
    assert store.authenticate(key) == "alice" and store.authenticate(bob_key) == "bob"
    assert store.authenticate("fsk_" + "0" * 50) is None and store.authenticate("") is None
    assert store.authenticate("x" * 10_000) is None
    assert [k.id for k in store.list_keys("alice")] == [info.id, info2.id]  # in creation order
    assert store.users() == ["alice", "bob"]

    revoked = store.revoke(info.id)
    assert not revoked.active and revoked.revoked_at
    assert store.authenticate(key) is None and store.authenticate(key2) == "alice"
    assert store.revoke(key).id == info.id  # the whole key pasted works too; revoking twice is harmless
    assert [k.id for k in store.list_keys("alice", include_revoked=False)] == [info2.id]
    with pytest.raises(KeyError_, match="keys list"):
        store.revoke("deadbeef")
    with pytest.raises(AclError):
        store.create_key("../evil")

    # only hashes are stored; the file is private to its owner
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in path.parent.glob("keys.sqlite-*"))
    assert key.encode() not in raw and key2.encode() not in raw
    rows = sqlite3.connect(path).execute("SELECT sha256 FROM api_keys").fetchall()
    assert {r[0] for r in rows} >= {hash_key(key), hash_key(key2)}
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"

    # another handle (another process) sees the revocation at once
    other = KeyStore(path)
    store.revoke(info2.id)
    assert other.authenticate(key2) is None


def test_keys_cli(tmp_path, capsys):
    from freestack.cli import main

    keys = str(tmp_path / "keys.sqlite")
    assert main(["keys", "create", "dana", "--label", "ci", "--keys", keys, "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["user"] == "dana" and created["key"].startswith("fsk_") and created["active"]
    assert main(["keys", "list", "--keys", keys]) == 0
    out = capsys.readouterr().out
    assert created["id"] in out and "dana" in out and created["key"] not in out
    assert main(["keys", "revoke", created["id"], "--keys", keys]) == 0
    assert "revoked" in capsys.readouterr().out
    assert KeyStore(keys).authenticate(created["key"]) is None


# -- data:// in direct mode applies the same rules -----------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch, clean_stores) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("FREESTACK_DATA_ROOT", root.as_uri())
    monkeypatch.setenv("FREESTACK_DATA_OWNER", "alice")
    for user in ("alice", "bob"):
        monkeypatch.setenv(
            f"AIRFLOW_CONN_DATA_{user.upper()}",
            json.dumps({"conn_type": "freestack_data", "login": user, "extra": {"root": root.as_uri()}}),
        )
    return root


def _fs(user: str):
    from freestack.storage import to_path

    return to_path(f"data://data_{user}@{user}/x").fs


def test_direct_mode_enforces_acls(store):
    from freestack.storage import list_objects, to_path, write_bytes

    alice, bob = _fs("alice"), _fs("bob")
    assert alice.owner == "alice" and bob.owner == "bob"
    alice.create_dir("alice/priv")
    alice.create_dir("alice/pub", acl=Acl.parse({"read": ["user://*"]}))
    alice.create_dir("alice/team", acl=Acl.parse({"read": ["user://bob"], "write": ["user://bob"]}))
    for coll in ("priv", "pub", "team"):
        write_bytes(to_path(f"data://data_alice@.my/{coll}/f.txt"), coll.encode())

    # private: bob can neither read, list, write nor delete; the file is intact
    with pytest.raises(AccessDenied, match="may not read data://alice/priv"):
        to_path("data://data_bob@alice/priv/f.txt").read_bytes()
    with pytest.raises(AccessDenied):
        write_bytes(to_path("data://data_bob@alice/priv/f.txt"), b"bob")
    with pytest.raises(AccessDenied):
        bob.rm("alice/priv", recursive=True)
    with pytest.raises(AccessDenied):
        bob.ls("alice/priv")
    assert (store / "alice" / "priv" / "f.txt").read_bytes() == b"priv"

    # public: readable, not writable; team: bob writes inside but cannot remove the collection
    assert to_path("data://data_bob@alice/pub/f.txt").read_bytes() == b"pub"
    with pytest.raises(AccessDenied, match="may not write"):
        write_bytes(to_path("data://data_bob@alice/pub/g.txt"), b"bob")
    write_bytes(to_path("data://data_bob@alice/team/g.txt"), b"from bob")
    assert (store / "alice" / "team" / "g.txt").read_bytes() == b"from bob"
    assert [p.name for p in list_objects(to_path("data://data_bob@alice/team"))] == ["f.txt", "g.txt"]
    with pytest.raises(AccessDenied):
        bob.rm("alice/team", recursive=True)
    with pytest.raises(AccessDenied, match="cannot change the ACL"):
        bob.set_acl("alice/team", Acl.parse({"read": ["user://*"]}))

    # listings show bob only what he may read; recursive listings too; the ACL documents never
    assert sorted(n.rsplit("/", 1)[-1] for n in bob.ls("alice", detail=False)) == ["pub", "team"]
    assert sorted(alice.ls("alice", detail=False)) == ["alice/priv", "alice/pub", "alice/team"]
    assert all("priv" not in p and ACL_NAME not in p for p in bob.find("alice"))
    assert not any(ACL_NAME in p for p in alice.find("alice"))
    assert sorted(bob.ls("", detail=False)) == ["alice"]
    assert sorted(name for name, _, _ in bob.walk("alice")) == ["alice", "alice/pub", "alice/team"]

    # the ACL document cannot be read or written as a file, even by the owner
    for fs in (alice, bob):
        with pytest.raises(UnsafePathError, match="ACL"):
            fs.cat_file(f"alice/pub/{ACL_NAME}")
        with pytest.raises(UnsafePathError):
            fs.pipe_file(f"alice/priv/{ACL_NAME}", b'{"read": ["user://*"]}')
    assert alice.get_acl("alice/priv") is PRIVATE

    # the owner turns private into public: bob reads at once
    alice.set_acl("alice/priv", Acl.parse({"read": ["user://*"]}))
    assert to_path("data://data_bob@alice/priv/f.txt").read_bytes() == b"priv"
    with pytest.raises(Exception, match="collection"):
        alice.set_acl("alice/priv/sub", PRIVATE)


def test_direct_mode_local_path_checks_writes(store):
    from freestack.storage import to_path
    from freestack.storage.objects import local_os_path

    alice = _fs("alice")
    alice.create_dir("alice/pub", acl=Acl.parse({"read": ["user://*"]}))
    (store / "alice" / "pub" / "f.txt").write_text("x")
    p = to_path("data://data_bob@alice/pub/f.txt")
    assert local_os_path(p) == str(store / "alice" / "pub" / "f.txt")  # reading is allowed
    with pytest.raises(AccessDenied):
        local_os_path(p, write=True)


# -- the data:// connection ----------------------------------------------------------------------------------


def test_connection_kinds(monkeypatch):
    from freestack.hooks.datastore import DataStoreHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_D_HTTP",
        json.dumps({"conn_type": "freestack_data", "host": "http://127.0.0.1:8765/", "password": "fsk_x"}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_D_PORT", json.dumps({"conn_type": "freestack_data", "host": "svc", "port": 9000})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_D_AIRFLOW",
        json.dumps(
            {
                "conn_type": "freestack_data",
                "login": "alice",
                "extra": {"root": "http://airflow:8080/freestack/data", "api_key": "fsk_y"},
            }
        ),
    )
    c = DataStoreHook("d_http").config
    assert c.is_remote_api and c.root == "http://127.0.0.1:8765" and c.api_key == "fsk_x" and c.owner is None
    assert "fsk_x" not in repr(c)
    assert DataStoreHook("d_port").config.root == "http://svc:9000"
    c = DataStoreHook("d_airflow").config
    assert c.root == "http://airflow:8080/freestack/data" and c.api_key == "fsk_y" and c.owner == "alice"
    fs = DataStoreHook("d_http").get_conn()
    assert fs.is_remote_api and not fs.is_local and not fs.check_acl and not fs.needs_dir_marker


def test_acl_cli(tmp_path, capsys):
    from freestack.cli import main

    root = tmp_path / "data"
    (root / "alice" / "models").mkdir(parents=True)
    uri = root.as_uri()
    assert (
        main(["acl", "set", "data://alice/models", "--team", "bob,carol", "--writers", "bob", "--root", uri])
        == 0
    )
    assert "team: readers bob, carol" in capsys.readouterr().out
    assert main(["acl", "show", "data://alice/models", "--root", uri, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "team" and shown["acl"] == {
        "read": ["user://bob", "user://carol"],
        "write": ["user://bob"],
    }
    assert json.loads((root / "alice" / "models" / ACL_NAME).read_text()) == shown["acl"]
    assert main(["acl", "set", "data://alice/models", "--public", "--root", uri]) == 0
    assert "public" in capsys.readouterr().out
    assert main(["acl", "set", "data://alice/models", "--team", "../x", "--root", uri]) == 1
    assert "team member '../x' is not valid" in capsys.readouterr().err
    assert main(["acl", "set", "data://alice/nothing", "--private", "--root", uri]) == 1
    assert "create it first" in capsys.readouterr().err
    assert main(["keys", "revoke", "nope", "--keys", str(tmp_path / "k.sqlite")]) == 1
    assert "freestack keys list" in capsys.readouterr().err


def test_service_unreachable_says_so(monkeypatch, clean_stores):
    import socket

    from freestack.storage import to_path
    from freestack.storage.httpfs import DataApiUnavailable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setenv(
        "AIRFLOW_CONN_D_DOWN",
        json.dumps({"conn_type": "freestack_data", "host": f"http://127.0.0.1:{port}", "password": "fsk_x"}),
    )
    with pytest.raises(DataApiUnavailable, match="cannot be reached.*freestack data-api"):
        to_path("data://d_down@alice/c/x.txt").read_bytes()
