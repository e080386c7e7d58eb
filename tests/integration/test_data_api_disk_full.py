"""The Data API over a full disk (a real 4 MiB tmpfs as its backing folder): an upload that runs out of
space is answered 507, leaves nothing behind, and a client writing ``data://`` through the service gets
StorageFull saying so; the service's log names the filesystem. Once space is freed the same write works."""

from __future__ import annotations

import json

import pytest

from freestack.errors import StorageFull
from freestack.storage import to_path, write_bytes
from tests.integration.data_api_service import start_service, stop
from tests.support.small_fs import ballast, mounted_tmpfs, temporaries


@pytest.fixture
def full_service(tmp_path, monkeypatch, clean_stores):
    with mounted_tmpfs(tmp_path / "small", 4) as mount:
        api = start_service(tmp_path / "service", root_uri=(mount / "data").as_uri(), users=("alice",))
        try:
            coll = api.collection()
            status, _, body = api.raw(
                "POST",
                "/v1/data/alice",
                user="alice",
                body=json.dumps({"name": coll}).encode(),
                headers={"Content-Type": "application/json"},
            )
            assert status == 200, body
            conn = {"conn_type": "freestack_data", "host": api.url, "password": api.keys["alice"]}
            monkeypatch.setenv("AIRFLOW_CONN_FREESTACK_DATA_DEFAULT", json.dumps(conn))
            yield api, mount, coll
        finally:
            stop(api.proc)


def test_an_upload_to_a_full_disk_is_507_and_leaves_nothing(full_service):
    api, mount, coll = full_service
    extra = ballast(mount, free_mib=1.0)
    target = to_path(f"data://.my/{coll}/weights.bin")

    status, _, body = api.raw(
        "PUT", f"/v1/data/alice/{coll}/weights.bin", user="alice", body=b"w" * (2 << 20)
    )
    assert status == 507
    assert "no space left" in json.loads(body)["error"]["message"]
    with pytest.raises(StorageFull, match=f"no space left for data://alice/{coll}/weights.bin"):
        write_bytes(target, b"w" * (2 << 20))
    assert temporaries(mount) == []
    assert f"No space left on the filesystem at {mount}" in api.log.read_text()

    extra.unlink()
    write_bytes(target, b"w" * (2 << 20))
    assert target.read_bytes() == b"w" * (2 << 20)
    assert temporaries(mount) == []
