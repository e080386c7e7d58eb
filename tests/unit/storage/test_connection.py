"""The freestack_data connection's fields, and what of them reaches the Data API client."""

from __future__ import annotations

import logging
import pickle

import pytest

from freestack.storage import connection
from freestack.storage.connection import config_of
from freestack.storage.datafs import DataFileSystem
from freestack.storage.httpfs import DataApiHttpFileSystem

URL = "http://127.0.0.1:8765"


def service(extra: dict, url: str = URL, conn_id: str = "data_test"):
    return config_of(conn_id, extra, host=url, port=None, login=None, password="fsk_x")


def test_a_service_connection_reads_over_http_and_never_prints_its_key():
    config = service({})
    assert config.is_remote_api and config.root == URL and config.api_key == "fsk_x"
    assert "fsk_x" not in repr(config)
    fs = DataFileSystem.from_config(config)
    assert isinstance(fs.fs, DataApiHttpFileSystem) and fs.fs.url == URL and not fs.check_acl


@pytest.mark.parametrize(
    "extra",
    [
        {"local_reads": True},
        {"local_reads": "false"},
        {"read_leases": False},
        {"local_reads": "maybe", "read_leases": 1},
    ],
)
def test_the_retired_local_reads_extras_are_ignored_with_one_warning(extra, caplog):
    """A connection made for the same-host local reads of older releases keeps working over HTTP."""
    connection._warn_retired.cache_clear()
    with caplog.at_level(logging.WARNING, logger="freestack.storage"):
        for _ in range(3):  # the connection is read again for every filesystem: it warns once
            config = service(extra)
            DataFileSystem.from_config(config)
    assert config == service({})
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        f"connection 'data_test': extra {name!r} is no longer used (data:// reads go over HTTP); "
        "remove it from the connection"
        for name in connection.RETIRED_EXTRAS
        if name in extra
    ]


def test_a_direct_store_keeps_its_config(tmp_path):
    config = config_of(
        "d",
        {"root": tmp_path.as_uri(), "local_reads": False},
        host=None,
        port=None,
        login="alice",
        password=None,
    )
    assert not config.is_remote_api and config.owner == "alice"


def test_the_client_survives_pickling():
    fs = DataApiHttpFileSystem(URL, api_key="fsk_x", expect_user="alice")
    again = pickle.loads(pickle.dumps(fs))
    assert again.url == URL and again.api_key == "fsk_x" and again.expect_user == "alice"
    data = pickle.loads(pickle.dumps(DataFileSystem(path="", fs=fs, owner=None, check_acl=False)))
    assert data.fs.url == URL and data.fs.api_key == "fsk_x"
