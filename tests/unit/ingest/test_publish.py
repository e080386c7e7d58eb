"""A partition is published with one commit point: a re-ingest that fails at any step leaves the
partition wholly as it was (or wholly new once the commit point passed), never a mix."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import freestack.ingest.core as core
from freestack.ingest.core import ingest_partition
from freestack.ingest.lake import read_manifest
from freestack.spec import parse_spec
from freestack.storage import objects

DS = "2026-11-03"
HEADER = "id,y\n"


def _spec():
    return parse_spec(
        {
            "name": "events",
            "source": {
                "format": "csv",
                "schema": {
                    "key": "id",
                    "target": "y",
                    "columns": [
                        {"name": "id", "type": "int", "nullable": False},
                        {"name": "y", "type": "float", "nullable": False, "min": 0, "max": 1},
                    ],
                },
                "policy": {"max_quarantine_fraction": 0.9},
            },
        },
        "events.yaml",
    )


def _land(storage: str, good: int, bad: int, seed: int) -> None:
    folder = Path(storage.removeprefix("file://")) / "landing" / "events" / DS
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"{i},{(i * seed % 97) / 97:.4f}" for i in range(good)] + [
        f"{good + i},{2 + seed}" for i in range(bad)
    ]
    (folder / "data.csv").write_text(HEADER + "\n".join(rows) + "\n")


def _partition(storage: str) -> Path:
    return Path(storage.removeprefix("file://")) / "lake" / "events" / f"ds={DS}"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _observed(storage: str, spec) -> dict:
    """The partition as a reader sees it, checked for consistency: every hash the manifest gives
    matches the bytes it names, and the counts match the files."""
    m = read_manifest(spec, DS)
    part = _partition(storage) / "part.parquet"
    assert m["part"]["sha256"] == _sha(part), "the manifest's part hash does not match the part"
    assert m["rows_good"] == pq.read_table(part).num_rows
    quarantined = 0
    if m["quarantine"]:
        q = Path(m["quarantine"]["uri"].removeprefix("file://"))
        assert m["quarantine"]["sha256"] == _sha(q), "the manifest's quarantine hash does not match"
        quarantined = pq.read_table(q).num_rows
    assert m["rows_quarantined"] == quarantined
    return {"sources": m["sources"], "rows_good": m["rows_good"], "rows_quarantined": quarantined}


@pytest.fixture
def published(storage):
    spec = _spec()
    _land(storage, good=40, bad=3, seed=7)
    ingest_partition(spec, DS)
    before = _observed(storage, spec)
    _land(storage, good=55, bad=0, seed=11)  # the next landing: more rows, none rejected
    return spec, before


def _fail_at(monkeypatch, target, name: str, call: int = 1):
    """Make ``target.name`` raise on its ``call``-th call (a crash at that step of the publish)."""
    real = getattr(target, name)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise OSError(f"injected failure in {name}")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)


@pytest.mark.parametrize(
    ("target", "name", "call"),
    [
        (objects.AtomicWriter, "commit", 1),  # the part's commit, the commit point
        (core, "write_json", 1),  # the manifest's copy, after the commit point
        (core, "_remove_other_quarantines", 1),  # the old quarantine's removal
    ],
)
def test_a_failed_reingest_leaves_the_partition_whole(storage, published, target, name, call):
    spec, before = published
    with pytest.MonkeyPatch.context() as mp, pytest.raises(OSError, match="injected failure"):
        _fail_at(mp, target, name, call)
        ingest_partition(spec, DS)
    after = _observed(storage, spec)
    if name == "commit":
        assert after == before, "the partition changed although its commit point was not reached"
    else:
        assert after["rows_good"] == 55 and after["rows_quarantined"] == 0, after

    # the next ingest completes the partition and leaves no other quarantine or temporary behind
    result = ingest_partition(spec, DS)
    assert _observed(storage, spec)["rows_good"] == result.rows_good == 55
    assert sorted(p.name for p in _partition(storage).iterdir()) == ["_manifest.json", "part.parquet"]


def test_a_stale_manifest_copy_is_not_trusted(storage, published):
    """A publish that stopped after its commit point left the old ``_manifest.json``: readers get the
    new partition's record from the part's footer, hashes and all."""
    spec, before = published
    copy = _partition(storage) / "_manifest.json"
    old_copy = copy.read_text()
    ingest_partition(spec, DS)
    copy.write_text(old_copy)  # as if the copy had not been written
    m = read_manifest(spec, DS)
    assert m["rows_good"] == 55 and m["quarantine"] is None
    assert m["part"]["sha256"] == _sha(_partition(storage) / "part.parquet")
    assert json.loads(old_copy)["rows_good"] == before["rows_good"] == 40


def test_over_the_quarantine_limit_keeps_the_previous_partition(storage, published):
    spec, before = published
    _land(storage, good=2, bad=30, seed=5)
    with pytest.raises(Exception, match="over the limit") as err:
        ingest_partition(
            spec.model_copy(
                update={
                    "source": spec.source.model_copy(
                        update={
                            "policy": spec.source.policy.model_copy(update={"max_quarantine_fraction": 0.5})
                        }
                    )
                }
            ),
            DS,
        )
    assert _observed(storage, spec) == before
    rejected = Path(str(err.value).split("reasons in ")[1].split(",")[0].removeprefix("file://"))
    assert pq.read_table(rejected).num_rows == 30, "the rejected attempt's quarantine is readable"
