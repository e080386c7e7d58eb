"""The freestack_data connection's fields, and the local-reads switch they carry to the Data API client."""

from __future__ import annotations

import pickle

import pytest

from freestack.errors import FreestackError
from freestack.storage.connection import config_of
from freestack.storage.datafs import DataFileSystem
from freestack.storage.httpfs import DataApiHttpFileSystem
from freestack.storage.localreads import LocalReads, is_loopback

URL = "http://127.0.0.1:8765"


def service(extra: dict, url: str = URL):
    return config_of("data_test", extra, host=url, port=None, login=None, password="fsk_x")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, True),
        ({"local_reads": True}, True),
        ({"local_reads": False}, False),
        ({"local_reads": "false"}, False),
        ({"local_reads": " No "}, False),
        ({"local_reads": "off"}, False),
        ({"local_reads": 0}, False),
        ({"local_reads": "TRUE"}, True),
        ({"local_reads": "1"}, True),
        ({"local_reads": None}, True),
    ],
)
def test_local_reads_extra(extra, expected):
    config = service(extra)
    assert config.is_remote_api and config.local_reads is expected
    fs = DataFileSystem.from_config(config)
    assert (fs.fs.local_reads is not None) is expected
    assert ("local_reads=False" in repr(config)) is not expected and "fsk_x" not in repr(config)


@pytest.mark.parametrize(("extra", "expected"), [({}, True), ({"read_leases": False}, False), ({"read_leases": "off"}, False)])
def test_read_leases_extra(extra, expected):
    config = service(extra)
    assert config.read_leases is expected and ("read_leases=False" in repr(config)) is not expected
    assert DataFileSystem.from_config(config).fs.local_reads.leases is expected


def test_a_local_reads_extra_that_is_no_yes_or_no_is_refused():
    with pytest.raises(FreestackError, match=r"connection 'data_test': extra 'local_reads' is 'maybe'; use true or false"):
        service({"local_reads": "maybe"})


def test_a_direct_store_keeps_its_config(tmp_path):
    config = config_of("d", {"root": tmp_path.as_uri(), "local_reads": False}, host=None, port=None, login="alice",
                       password=None)  # fmt: skip
    assert not config.is_remote_api and config.owner == "alice"


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8765", True),
        ("http://localhost:8080/freestack/data", True),
        ("http://[::1]:8765", True),
        ("https://LOCALHOST", True),
        ("http://10.0.0.5:8765", False),
        ("http://data-api.internal:8765", False),
        ("http://127.0.0.2:8765", False),
    ],
)
def test_only_loopback_urls_try_local_reads(url, loopback):
    assert is_loopback(url) is loopback

    def health() -> dict:
        raise AssertionError("health must not be asked for a service on another host")

    local = LocalReads(url, health)
    if not loopback:
        assert local.open("alice/c/x", "fsk_x") is None
        assert "not a loopback address" in local.off_reason and not local.active


def test_the_switch_survives_pickling():
    for local in (True, False):
        fs = DataApiHttpFileSystem(URL, api_key="fsk_x", local_reads=local, read_leases=False)
        again = pickle.loads(pickle.dumps(fs))
        assert again.url == URL and again.api_key == "fsk_x"
        assert (again.local_reads is not None) is local
        assert not local or again.local_reads.leases is False
        data = pickle.loads(pickle.dumps(DataFileSystem(path="", fs=fs, owner=None, check_acl=False)))
        assert (data.fs.local_reads is not None) is local
