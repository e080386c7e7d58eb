"""Read leases on the client's side (freestack.storage.localreads): which names a lease opens, and what
ends a lease. The service's side, over its real socket, is in tests/integration/test_data_api_local_reads.py."""

from __future__ import annotations

import os
import random
import time

import pytest

from freestack.dataapi.app import ApiError, parse_data_path
from freestack.storage.acl import ACL_NAME, acl_stamp
from freestack.storage.localreads import Lease, lease_name


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("alice/ml/model.safetensors", ("alice/ml", "model.safetensors")),
        ("alice/lake/digits/ds=2026-11-25/part.parquet", ("alice/lake", "digits/ds=2026-11-25/part.parquet")),
        ("alice/ml/a_b-c+d,e@f.g", ("alice/ml", "a_b-c+d,e@f.g")),
        ("alice/ml", None),  # the collection itself
        ("alice", None),
        ("alice/ml/.freestack-acl.json", None),  # hidden: the service refuses those (400)
        ("alice/ml/sub/.tmp-upload", None),
        ("alice/ml/../bob/x", None),
        ("alice/ml/a//b", None),
        ("alice/ml/a/", None),
        ("alice/ml/naïve.txt", None),  # not ASCII: the service normalises and checks it
        ("alice/ml/two words", None),
        ("alice/ml/100%25", None),  # percent-encoding: the service decodes and checks it
        ("alice/ml/~x", None),
        ("alice/ml/" + "a" * 129, None),  # longer than a lease opens
        ("alice/ml/" + "/".join(["d"] * 17), None),  # deeper than a lease opens
    ],
)
def test_a_lease_opens_only_plain_names(path, expected):
    assert lease_name(path) == expected


def _service_accepts_unchanged(path: str) -> bool:
    try:
        return parse_data_path(path) == path
    except ApiError:
        return False


def test_every_name_a_lease_opens_is_one_the_service_accepts_as_it_is():
    """A lease skips the service's path rules, so the names it opens must be a subset of what those rules
    accept unchanged (no normalisation, no refusal): checked on 30,000 random paths."""
    rng = random.Random(20261125)
    alphabet = "aZ09._-=+,@/ ~%\\:é\u202e\u200b\x00"
    taken = 0
    for _ in range(30_000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        path = f"alice/ml/{name}"
        if lease_name(path) is not None:
            taken += 1
            assert _service_accepts_unchanged(path), path
    assert taken > 1_000  # the property was tried on many names a lease takes


@pytest.fixture
def lease_parts(tmp_path):
    """A collection folder with an ACL document and a revocations log, opened as the service sends them."""
    folder = tmp_path / "alice" / "ml"
    folder.mkdir(parents=True)
    (folder / "x.bin").write_bytes(b"payload")
    (folder / "sub").mkdir()
    os.mkfifo(folder / "pipe")
    (folder / ACL_NAME).write_text('{"read": ["user://bob"], "write": []}\n')
    log = tmp_path / "keys.sqlite.revoked"
    log.write_text("")
    fds = [os.open(folder, os.O_RDONLY | os.O_DIRECTORY), os.open(log, os.O_RDONLY)]

    def lease(seconds: float = 60.0) -> Lease:
        stamp = acl_stamp(str(folder / ACL_NAME))
        return Lease("alice/ml", *(os.dup(fd) for fd in fds), 0, stamp, time.monotonic() + seconds)

    yield folder, log, lease
    for fd in fds:
        os.close(fd)


def test_a_lease_opens_regular_files_only(lease_parts):
    folder, _, make = lease_parts
    lease = make()
    try:
        fd, st = lease.open("x.bin")
        assert os.read(fd, 100) == b"payload" and st.st_size == 7
        os.close(fd)
        # what is not a regular file, or not there, is the service's to answer
        assert lease.open("missing.bin") is None and lease.open("sub") is None and lease.open("pipe") is None
    finally:
        lease.close()


def test_an_acl_change_a_revocation_or_the_time_ends_a_lease(lease_parts):
    folder, log, make = lease_parts
    lease = make()
    assert lease.valid()
    tmp = folder / ".acl-new"
    tmp.write_text('{"read": [], "write": []}\n')
    os.replace(tmp, folder / ACL_NAME)  # an ACL change is an atomic replace
    assert not lease.valid()
    lease.close()

    lease = make()
    assert lease.valid()
    with open(log, "a") as f:
        f.write("0badc0de\n")
    assert not lease.valid()
    lease.close()

    lease = make(seconds=0.05)
    time.sleep(0.1)
    assert not lease.valid()
    lease.close()


def test_a_collection_that_gets_an_acl_or_loses_its_log_ends_a_lease(lease_parts):
    folder, log, make = lease_parts
    (folder / ACL_NAME).unlink()  # private: no ACL document
    lease = make()
    assert lease.acl is None and lease.valid()
    (folder / ACL_NAME).write_text('{"read": ["user://*"], "write": []}\n')
    assert not lease.valid()
    lease.close()

    lease = make()
    assert lease.valid()
    log.unlink()  # the log replaced by hand: revocations would go to another file
    assert not lease.valid()
    lease.close()
