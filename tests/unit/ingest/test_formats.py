"""ingest_partition on JSON lines and Parquet landing files, and its validation rules."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from freestack.errors import LandingDataMissing, SchemaDriftError
from freestack.ingest.core import ingest_partition
from freestack.ingest.lake import lake_partitions
from freestack.spec import parse_spec

DS = "2026-11-03"


def _spec(fmt: str, **policy) -> object:
    return parse_spec(
        {
            "name": "events",
            "source": {
                "format": fmt,
                "schema": {
                    "key": "id",
                    "target": "y",
                    "columns": [
                        {"name": "id", "type": "int", "nullable": False},
                        {"name": "when", "type": "date"},
                        {"name": "ok", "type": "bool"},
                        {"name": "kind", "type": "string", "allowed": ["a", "b"]},
                        {"name": "y", "type": "float", "nullable": False, "min": 0, "max": 1},
                    ],
                },
                "policy": {"max_quarantine_fraction": 0.9, **policy},
            },
        },
        "events.yaml",
    )


def _landing(storage: str) -> Path:
    folder = Path(storage.removeprefix("file://")) / "landing" / "events" / DS
    folder.mkdir(parents=True)
    return folder


def _read(storage: str, name: str) -> list[dict]:
    """A partition file's rows; ``quarantine`` is the one quarantine file (named by its hash)."""
    folder = Path(storage.removeprefix("file://")) / f"lake/events/ds={DS}"
    if name == "quarantine":
        (path,) = folder.glob("_quarantine-*.parquet")
        return pq.read_table(path).to_pylist()
    return pq.read_table(folder / name).to_pylist()


def test_json_lines(storage):
    rows = [
        {"id": 1, "when": "2026-11-03", "ok": True, "kind": "a", "y": 0.5},
        {"id": 2, "when": "2026-11-03", "ok": False, "kind": "b", "y": 1, "extra": [1, 2]},
        {"id": 3, "when": "03/11/2026", "ok": True, "kind": "a", "y": 0.1},  # not ISO
        {"id": 4, "when": None, "ok": "maybe", "kind": "a", "y": 0.2},  # not a boolean
        {"id": 5, "kind": "c", "y": 0.3},  # kind not allowed
        {"id": 1, "y": 0.9},  # duplicate key
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json", "[1, 2]", ""]
    (_landing(storage) / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    result = ingest_partition(_spec("jsonl"), DS)
    assert (result.rows_in, result.rows_good, result.rows_quarantined) == (8, 2, 6)
    good = _read(storage, "part.parquet")
    assert [r["id"] for r in good] == [1, 2] and good[1]["ok"] is False and good[1]["y"] == 1.0
    reasons = sorted(r["_reason"] for r in _read(storage, "quarantine"))
    assert reasons == sorted(
        [
            "when: not a date (YYYY-MM-DD): '03/11/2026'",
            "ok: not a boolean: 'maybe'",
            "kind: not one of the allowed values: 'c'",
            "id: duplicate key (an earlier row has it): '1'",
            "malformed row: invalid JSON (Expecting property name enclosed in double quotes)",
            "malformed row: a JSON object is expected",
        ]
    )
    assert sorted(r["_line"] for r in _read(storage, "quarantine")) == [3, 4, 5, 6, 7, 8]  # each its line


def test_every_quarantined_csv_row_names_its_line(storage):
    """``_line``: a quarantined row's line in its file (the header is line 1), a malformed row (too few
    fields) and a row a check refused alike, the lines after a malformed one counted right."""
    (_landing(storage) / "day.csv").write_text(
        "id,when,ok,kind,y\n1,2026-11-03,true,a,0.5\n2,2026-11-03\n3,2026-11-03,maybe,a,0.5\n"
        "4,2026-11-03,true,a,0.25\n5,2026-11-03,true,zz,0.1\n"
    )
    result = ingest_partition(_spec("csv"), DS)
    assert (result.rows_good, result.rows_quarantined) == (2, 3)
    got = {r["_line"]: r["_reason"] for r in _read(storage, "quarantine")}
    assert sorted(got) == [3, 4, 6], got
    assert got[3].startswith("malformed row: expected 5 fields, found 2") and got[4].startswith(
        "ok: not a boolean"
    )
    assert got[6].startswith("kind: not one of the allowed values")


def test_parquet_with_typed_columns_and_drift(storage):
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "when": pa.array(["2026-11-03"] * 3),
            "ok": pa.array([True, None, False]),
            "kind": pa.array(["a", "b", "b"]),
            "y": pa.array([0.0, 2.5, None]),  # above max, missing non-null
            "unexpected": pa.array([1, 2, 3]),
        }
    )
    pq.write_table(table, _landing(storage) / "drop.parquet")
    result = ingest_partition(_spec("parquet"), DS)  # extra_columns: drop (default)
    assert (result.rows_good, result.rows_quarantined) == (1, 2)
    assert {r["_reason"] for r in _read(storage, "quarantine")} == {
        "y: above the maximum 1: '2.5'",
        "y: missing value (column is not nullable)",
    }
    with pytest.raises(SchemaDriftError, match=r"\['unexpected'\] are not in the schema"):
        ingest_partition(_spec("parquet", extra_columns="fail"), DS)


def test_missing_column_policy_and_missing_landing(storage):
    folder = _landing(storage)
    (folder / "a.csv").write_text("id,y\n1,0.5\n2,0.25\n")
    with pytest.raises(SchemaDriftError, match=r"missing column\(s\) \['when', 'ok', 'kind'\]"):
        ingest_partition(_spec("csv"), DS)
    result = ingest_partition(_spec("csv", missing_columns="null"), DS)
    assert result.rows_good == 2 and lake_partitions(_spec("csv")) == [DS]
    with pytest.raises(LandingDataMissing, match="2026-11-04.*missing or empty.*on_missing"):
        ingest_partition(_spec("csv"), "2026-11-04")


def _zero_row_parquet() -> bytes:
    """A Parquet file with the schema's columns and no rows (what a writer of an empty data frame leaves)."""
    sink = pa.BufferOutputStream()
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("when", pa.string()),
            ("ok", pa.bool_()),
            ("kind", pa.string()),
            ("y", pa.float64()),
        ]
    )
    pq.write_table(schema.empty_table(), sink)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    ("fmt", "content", "says"),
    [
        ("csv", b"", "0 bytes"),
        ("csv", b"id,when,ok,kind,y\n", "no rows"),
        ("jsonl", b"", "0 bytes"),
        ("jsonl", b"\n\n  \n", "no rows"),
        ("parquet", _zero_row_parquet(), "no rows"),
    ],
    ids=["csv-0-bytes", "csv-header-only", "jsonl-0-bytes", "jsonl-blank-lines", "parquet-0-rows"],
)
def test_a_day_whose_files_hold_no_rows_is_missing_data_not_an_empty_partition(storage, fmt, content, says):
    folder = _landing(storage)
    (folder / f"day.{fmt}").write_bytes(content)
    (folder / f"more.{fmt}").write_bytes(b"")
    with pytest.raises(
        LandingDataMissing,
        match=rf"interval {DS}: its files hold no rows \(day.{fmt}: {says}; more.{fmt}: 0 bytes\).*on_missing",
    ):
        ingest_partition(_spec(fmt), DS)
    assert lake_partitions(_spec(fmt)) == []
    assert not (Path(storage.removeprefix("file://")) / f"lake/events/ds={DS}").exists()


def test_a_0_byte_file_beside_rows_is_quarantined_by_name(storage):
    folder = _landing(storage)
    (folder / "a.csv").write_text("id,when,ok,kind,y\n1,2026-11-03,true,a,0.5\n2,2026-11-03,false,b,0.25\n")
    (folder / "b.csv").write_bytes(b"")
    result = ingest_partition(_spec("csv"), DS)
    assert (result.rows_good, result.rows_quarantined) == (2, 1)
    (entry,) = _read(storage, "quarantine")
    assert entry["_source"] == "b.csv" and entry["_line"] is None
    assert (
        entry["_reason"]
        == "empty file: b.csv is 0 bytes, a header line was expected; write its rows or remove it"
    )
    assert {s["name"]: s["rows"] for s in result.sources} == {"a.csv": 2, "b.csv": 0}
