"""freestack.dataapi.client: the Algorithmia-style Data API client over data://."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from freestack.dataapi.client import (
    DataAccessDenied,
    DataApiError,
    DataClient,
    DataDirectory,
    DataFile,
    DataObjectType,
    client,
)
from freestack.errors import FreestackError, UnsafePathError


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from airflow.sdk.io import store

    data_root = tmp_path / "data"
    monkeypatch.setenv("FREESTACK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FREESTACK_DATA_ROOT", data_root.as_uri())
    monkeypatch.setenv("FREESTACK_DATA_OWNER", "alice")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    store._STORE_CACHE.clear()
    yield data_root
    store._STORE_CACHE.clear()


@pytest.fixture
def dc(root: Path) -> DataClient:
    return DataClient()


# -- paths -------------------------------------------------------------------------------------------------


def test_accepts_algorithmia_spellings(dc: DataClient) -> None:
    for spelling in ("data://.my/c/x.txt", ".my/c/x.txt", "/.my/c/x.txt", "data://.my//c/x.txt"):
        f = dc.file(spelling)
        assert f.path == ".my/c/x.txt"
        assert f.url == "/v1/data/.my/c/x.txt"
        assert f.uri == "data://.my/c/x.txt"
        assert f.getName() == "x.txt"
    assert dc.file("data://alice/c/x.txt").path == "alice/c/x.txt"
    assert dc.dir("data://.my/c/").path == ".my/c"
    assert dc.dir("data://.my/c").getName() == "c"
    assert dc.file("data://.my/c/x").is_file() and dc.dir(".my/c").is_dir()
    assert dc.dir(".my/c").get_type() is DataObjectType.directory
    assert isinstance(client(), DataClient) and client("x").conn_id == "x"


@pytest.mark.parametrize(
    "uri",
    [
        "data://.my/../x",
        "data://.my/c/%2e%2e/x",
        "data://.my/c/%252e%252e/x",
        "data://.my/c/./x",
        "data:///etc/passwd",
        "data://.my/c\\..\\x",
        "../x",
        "data://.alice/c/x",
    ],
)
def test_traversal_rejected(dc: DataClient, root: Path, uri: str) -> None:
    with pytest.raises(UnsafePathError):
        dc.file(uri)
    with pytest.raises(UnsafePathError):
        dc.dir(uri)
    assert not (root.parent / "x").exists()


def test_traversal_in_child_names_rejected(dc: DataClient) -> None:
    d = dc.dir("data://.my/c")
    for name in ("..", "../x", "a/../../x", "%2e%2e/x", "/etc/passwd"):
        with pytest.raises(UnsafePathError):
            d.file(name)
        with pytest.raises(UnsafePathError):
            d.dir(name)
    assert d.file("sub/x.txt").path == ".my/c/sub/x.txt"
    assert d.dir("sub").path == ".my/c/sub"


def test_other_schemes_and_bad_shapes_rejected(dc: DataClient) -> None:
    with pytest.raises(DataApiError, match="data:// only"):
        dc.file("s3://bucket/c/x")
    with pytest.raises(DataApiError, match="collection"):
        dc.file("data://.my/x.txt")  # files live in a collection
    with pytest.raises(DataApiError, match="empty"):
        dc.dir("data://")
    with pytest.raises(DataApiError, match="reserved"):
        dc.file("data://.my/c/.secret")
    with pytest.raises(DataApiError, match="conn_id"):
        dc.file("data://conn@.my/c/x")
    with pytest.raises(TypeError):
        dc.file(42)  # type: ignore[arg-type]


# -- files -------------------------------------------------------------------------------------------------


def test_put_get_bytes_and_string(dc: DataClient, root: Path) -> None:
    f = dc.file("data://.my/c/hello.txt")
    assert f.put("héllo") is f
    assert f.getBytes() == "héllo".encode()
    assert f.getString() == "héllo"
    assert f.size == len("héllo".encode())
    assert isinstance(f.last_modified, datetime) and f.last_modified.tzinfo is None
    assert f.sha256 is not None and len(f.sha256) == 64

    g = dc.file("data://.my/c/raw.bin")
    g.put(b"\x00\x01\xff")
    assert g.getBytes() == b"\x00\x01\xff"
    g.put(bytearray(b"ab"))  # overwrite
    assert dc.file("data://.my/c/raw.bin").getBytes() == b"ab"
    with pytest.raises(TypeError, match="putJson"):
        g.put({"a": 1})  # type: ignore[arg-type]


def test_my_resolves_to_owner(dc: DataClient, root: Path) -> None:
    dc.file("data://.my/models/m.txt").put("x")
    assert (root / "alice" / "models" / "m.txt").read_text() == "x"
    assert dc.file("data://alice/models/m.txt").getString() == "x"
    assert dc.owner == "alice"
    # another owner's namespace is addressed by name, and its ACL applies (private by default)
    (root / "bob" / "shared").mkdir(parents=True)
    (root / "bob" / "shared" / "s.txt").write_text("y")
    with pytest.raises(DataAccessDenied, match="user 'alice' may not read data://bob/shared"):
        dc.file("data://bob/shared/s.txt").getString()
    with pytest.raises(DataAccessDenied):
        dc.file("data://bob/shared/s.txt").put("overwritten")
    assert (root / "bob" / "shared" / "s.txt").read_text() == "y"


def test_put_get_json(dc: DataClient, root: Path) -> None:
    obj = {"a": [1, 2.5, None], "b": {"ü": True}}
    f = dc.file("data://.my/c/obj.json").putJson(obj)
    assert isinstance(f, DataFile)
    assert f.getJson() == obj
    assert json.loads((root / "alice" / "c" / "obj.json").read_text()) == obj
    with pytest.raises(TypeError):
        f.putJson({"x": object()})  # not JSON: nothing is written
    assert f.getJson() == obj

    dc.file("data://.my/c/bad.json").put("{not json")
    with pytest.raises(DataApiError, match="not valid JSON"):
        dc.file("data://.my/c/bad.json").getJson()


def test_put_file_get_file_round_trip(dc: DataClient, tmp_path: Path) -> None:
    src = tmp_path / "local.csv"
    src.write_text("a,b\n1,2\n")
    f = dc.file("data://.my/c/table.csv")
    assert f.putFile(str(src)) is f
    assert f.size == src.stat().st_size

    fh = dc.file("data://.my/c/table.csv").getFile()
    try:
        assert fh.read() == "a,b\n1,2\n"
        assert fh.name.endswith(".csv")
        assert os.path.abspath(fh.name) != os.path.abspath(src)
    finally:
        fh.close()
        os.unlink(fh.name)

    blob = bytes(range(256)) * 1000
    bsrc = tmp_path / "blob.bin"
    bsrc.write_bytes(blob)
    dc.file("data://.my/c/blob.bin").putFile(bsrc)
    local = dc.file("data://.my/c/blob.bin").getFile(as_path=True)
    try:
        assert Path(local).read_bytes() == blob
    finally:
        os.unlink(local)

    with pytest.raises(FileNotFoundError):
        f.putFile(tmp_path / "nope.csv")


def test_exists_delete_and_attributes(dc: DataClient) -> None:
    f = dc.file("data://.my/c/x.txt")
    assert not f.exists()
    assert f.existsWithError()[0] is False
    f.put("12345")

    fresh = dc.file("data://.my/c/x.txt")
    assert fresh.size is None and fresh.last_modified is None
    assert fresh.exists()
    assert fresh.size == 5 and isinstance(fresh.last_modified, datetime)

    assert fresh.delete() is True
    assert not fresh.exists() and not f.exists()
    with pytest.raises(DataApiError, match="does not exist"):
        fresh.delete()


def test_missing_file_error_names_path_and_fix(dc: DataClient) -> None:
    f = dc.file("data://.my/c/missing.txt")
    for call in (f.getBytes, f.getString, f.getJson, f.getFile):
        with pytest.raises(DataApiError) as info:
            call()
        msg = str(info.value)
        assert "data://.my/c/missing.txt" in msg
        assert "alice" in msg
        assert "does not exist" in msg
        assert "put" in msg and "client.dir('data://.my/c')" in msg
    assert isinstance(info.value, FreestackError)


def test_file_and_directory_kinds_do_not_mix(dc: DataClient) -> None:
    dc.dir("data://.my/c/sub").create()
    as_file = dc.file("data://.my/c/sub")
    assert not as_file.exists()
    with pytest.raises(DataApiError, match="is a directory"):
        as_file.getBytes()
    with pytest.raises(DataApiError, match="directory has that name"):
        as_file.put("x")
    with pytest.raises(DataApiError, match="is a directory"):
        as_file.delete()

    dc.file("data://.my/c/f.txt").put("x")
    as_dir = dc.dir("data://.my/c/f.txt")
    assert not as_dir.exists()
    with pytest.raises(DataApiError, match="is a file"):
        as_dir.delete()
    with pytest.raises(DataApiError, match="already exists"):
        as_dir.create()
    with pytest.raises(DataApiError, match="is a file"):
        list(as_dir.files())


# -- directories -------------------------------------------------------------------------------------------


def test_directory_create_list_delete(dc: DataClient, root: Path) -> None:
    d = dc.dir("data://.my/coll")
    assert not d.exists()
    assert d.create(acl={"read": ["user://*"]}) is d  # acl accepted, ignored for now
    assert d.exists() and (root / "alice" / "coll").is_dir()
    assert list(d.list()) == []
    with pytest.raises(DataApiError, match="already exists"):
        d.create()

    d.file("b.txt").put("bb")
    d.file("a.txt").put("a")
    d.dir("zsub").create()
    d.dir("asub").create()
    d.file("asub/inner.txt").put("i")  # not listed: not directly in d

    files = list(d.files())
    assert [f.getName() for f in files] == ["a.txt", "b.txt"]
    assert all(isinstance(f, DataFile) for f in files)
    assert [f.size for f in files] == [1, 2]
    assert all(isinstance(f.last_modified, datetime) for f in files)
    assert files[0].getString() == "a"

    dirs = list(d.dirs())
    assert [x.path for x in dirs] == [".my/coll/asub", ".my/coll/zsub"]
    assert all(isinstance(x, DataDirectory) for x in dirs)

    assert [(type(x).__name__, x.getName()) for x in d.list()] == [
        ("DataDirectory", "asub"),
        ("DataDirectory", "zsub"),
        ("DataFile", "a.txt"),
        ("DataFile", "b.txt"),
    ]
    assert [x.getName() for x in dc.dir("data://.my").dirs()] == ["coll"]

    assert dc.dir("data://.my/coll/zsub").delete() is True  # empty: no force needed
    with pytest.raises(DataApiError, match="not empty") as info:
        d.delete()
    assert "data://.my/coll" in str(info.value) and "force=True" in str(info.value)
    assert d.exists() and d.file("a.txt").exists()

    assert d.delete(force=True) is True
    assert not d.exists() and not (root / "alice" / "coll").exists()
    with pytest.raises(DataApiError, match="does not exist"):
        d.delete()


def test_missing_directory(dc: DataClient) -> None:
    d = dc.dir("data://.my/nothing")
    for it in (d.files, d.dirs, d.list):
        with pytest.raises(DataApiError, match=r"data://\.my/nothing.*does not exist"):
            list(it())


def test_owner_namespace_cannot_be_deleted(dc: DataClient) -> None:
    dc.file("data://.my/c/x").put("x")
    with pytest.raises(DataApiError, match="owner"):
        dc.dir("data://.my").delete(force=True)
    assert dc.file("data://.my/c/x").exists()


def test_hidden_temporaries_not_listed(dc: DataClient, root: Path) -> None:
    d = dc.dir("data://.my/c").create()
    d.file("real.txt").put("r")
    folder = root / "alice" / "c"
    # what a writer killed mid-write leaves behind (objects.AtomicWriter's temporary name)
    (folder / ".real.txt.freestack-tmp-0123abcd").write_bytes(b"partial")
    (folder / ".hidden-dir").mkdir()
    assert [x.getName() for x in d.list()] == ["real.txt"]
    assert [x.getName() for x in d.files()] == ["real.txt"]
    assert list(d.dirs()) == []

    # a directory holding only leftovers is empty for delete()
    d.file("real.txt").delete()
    assert list(d.list()) == []
    assert d.delete() is True
    assert not folder.exists()


def test_failed_write_leaves_old_content(
    dc: DataClient, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import freestack.dataapi.client as mod

    f = dc.file("data://.my/c/big.bin").put(b"old")
    src = tmp_path / "src.bin"
    src.write_bytes(b"new content")

    class Boom(Exception):
        pass

    def copy_then_fail(fsrc, fdst, length=0):
        fdst.write(fsrc.read(3))  # part of the new bytes reach the temporary...
        raise Boom()  # ...then the upload dies

    monkeypatch.setattr(mod.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(Boom):
        f.putFile(src)
    monkeypatch.undo()
    assert dc.file("data://.my/c/big.bin").getBytes() == b"old"
    assert sorted(p.name for p in (root / "alice" / "c").iterdir()) == ["big.bin"]


# -- connections -------------------------------------------------------------------------------------------


def test_named_connection(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    monkeypatch.setenv(
        "AIRFLOW_CONN_TEAM_DATA",
        json.dumps({"conn_type": "freestack_data", "login": "bob", "extra": {"root": other.as_uri()}}),
    )
    team = DataClient("team_data")
    f = team.file("data://.my/c/x.txt").put("team")
    assert (other / "bob" / "c" / "x.txt").read_text() == "team"
    assert f.uri == "data://team_data@.my/c/x.txt"
    assert team.owner == "bob"
    assert not DataClient().file("data://.my/c/x.txt").exists()  # the default store is elsewhere


def test_unknown_connection_says_what_to_do(root: Path) -> None:
    with pytest.raises(FreestackError, match="freestack_data"):
        DataClient("no_such_conn").file("data://.my/c/x").exists()
