"""A window read as a stream (freestack.train.stream): spooled split by split, trained and evaluated like the
in-memory window, its partitions checked as they are read, its spool removed after the run."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from tests.support.sweeps import ROOT

sys.path.insert(0, str(ROOT / "include"))

STREAM = {"mode": "stream", "chunk_rows": 256, "shuffle_buffer": 512}


@pytest.fixture
def lake(storage, tmp_path, monkeypatch):
    """Three days of the demo pipeline in the lake; streamed windows spool under tmp_path/spool."""
    from demo.landing import make_landing
    from freestack.ingest.core import ingest_partition
    from freestack.spec import load_spec

    (tmp_path / "spool").mkdir()
    monkeypatch.setenv("FREESTACK_SPOOL_DIR", str(tmp_path / "spool"))
    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    make_landing(storage, date(2026, 11, 1), 3)
    for ds in ("2026-11-01", "2026-11-02", "2026-11-03"):
        ingest_partition(spec, ds)
    return spec


def _with_data(spec, **data):
    from freestack.train.spec import DataSpec

    return spec.model_copy(update={"train": spec.train.model_copy(update={"data": DataSpec(**data)})})


def _folder(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_a_streamed_window_trains_and_evaluates_like_the_in_memory_one(lake, tmp_path):
    from freestack.evaluate.core import evaluate
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train
    from freestack.train.request import TrainRequest

    off = WandbSettings(mode="disabled")
    runs = {}
    for mode, data in (("memory", {"mode": "memory"}), ("stream", STREAM)):
        req = TrainRequest(end_ds="2026-11-03", epochs=4, run_key=mode, overrides={"train": {"data": data}})
        runs[mode] = train(lake, req, tracking_settings=off)
    lineage = {m: json.loads((_folder(r.version_uri) / "lineage.json").read_text()) for m, r in runs.items()}
    assert [lineage[m]["data"]["mode"] for m in runs] == ["memory", "stream"]
    assert lineage["stream"]["data"]["reason"] == "train.data.mode is stream"
    assert (
        lineage["stream"]["data"]["rows"] == lineage["memory"]["data"]["rows"]
    )  # the same key-hashed splits
    assert lineage["stream"]["partitions"] == lineage["memory"]["partitions"]  # ds, sha256, bytes, rows
    pre = {
        m: json.loads((_folder(r.version_uri) / "preprocessing.json").read_text()) for m, r in runs.items()
    }
    assert np.allclose(pre["stream"]["mean"], pre["memory"]["mean"]) and np.allclose(
        pre["stream"]["std"], pre["memory"]["std"]
    )
    accuracy = {m: r.metrics["test_accuracy"] for m, r in runs.items()}
    assert min(accuracy.values()) > 0.8 and abs(accuracy["stream"] - accuracy["memory"]) < 0.06, accuracy
    assert list((tmp_path / "spool").iterdir()) == []  # the spool went with the run
    # evaluate streams the test split too: the trainer's test rows, the trainer's accuracy, the same smoke rows
    summary = {
        m: evaluate(
            spec,
            runs["stream"].version_uri if m == "stream" else runs["memory"].version_uri,
            tracking_settings=off,
        )
        for m, spec in (("memory", lake), ("stream", _with_data(lake, **STREAM)))
    }
    assert summary["stream"]["candidate"]["accuracy"] == pytest.approx(accuracy["stream"])
    assert (
        summary["stream"]["candidate"]["rows"]
        == summary["memory"]["candidate"]["rows"]
        == lineage["memory"]["data"]["rows"]["test"]
    )
    smoke = {
        m: json.loads((_folder(r.version_uri) / "evaluation" / "smoke.json").read_text())
        for m, r in runs.items()
    }
    assert smoke["stream"]["keys"] == smoke["memory"]["keys"] and len(smoke["stream"]["keys"]) == 64
    assert list((tmp_path / "spool").iterdir()) == []


def test_auto_streams_a_window_over_the_memory_limit(lake, monkeypatch):
    from freestack.train import stream
    from freestack.train.window import fix_window

    parts = fix_window(lake, None, 30).partitions
    need = stream.MEMORY_FACTOR * stream.uncompressed_bytes(parts)
    assert need > 0
    mode, why = stream.choose_mode(_with_data(lake, memory_limit_mb=16), parts)
    assert mode == "memory" and "within the 16 MiB limit" in why
    monkeypatch.setattr(stream, "MEMORY_FACTOR", 10_000_000)
    mode, why = stream.choose_mode(_with_data(lake, memory_limit_mb=16), parts)
    assert mode == "stream" and why.endswith("over the 16 MiB limit")
    assert stream.memory_limit_bytes(lake) >= 1 << 28  # a quarter of any machine these tests run on


def test_a_text_generation_window_is_read_into_memory(lake, monkeypatch):
    """Its conversations are tokenized whole: auto reads it into memory, over the limit too, and a spec
    asking to stream it is refused naming the field."""
    import yaml

    from freestack.spec import PipelineSpec, SpecError, parse_spec
    from freestack.train import stream
    from freestack.train.window import fix_window

    text = (ROOT / "include" / "pipelines" / "arith.yaml").read_text()
    chat: PipelineSpec = parse_spec(yaml.safe_load(text), "arith.yaml")
    monkeypatch.setattr(stream, "MEMORY_FACTOR", 10_000_000)
    parts = fix_window(lake, None, 30).partitions
    mode, why = stream.choose_mode(_with_data(chat, memory_limit_mb=16), parts)
    assert mode == "memory" and "text-generation window is read into memory" in why
    data = yaml.safe_load(text)
    data["train"]["data"] = {"mode": "stream"}
    with pytest.raises(
        SpecError, match="train.data.mode stream: a text-generation window is read into memory"
    ):
        parse_spec(data, "arith.yaml")


def test_a_partition_rewritten_under_a_streamed_run_fails_it_and_leaves_no_spool(lake, tmp_path):
    from freestack.ingest.lake import PART, partition_dir
    from freestack.storage import join
    from freestack.train.core import load_window
    from freestack.train.request import TrainingError
    from freestack.train.window import fix_window

    spec = _with_data(lake, **STREAM)
    fixed = fix_window(spec, None, 30).as_dict()
    data = load_window(spec, "2026-11-03", 30, fixed)
    assert data.mode == "stream" and sum(r.rows for r in data.spool.splits.values()) == sum(
        p["rows"] for p in data.partitions
    )
    assert all(len(list(rows.chunks())) >= 1 for rows in data.spool.splits.values())
    data.close()
    path = join(partition_dir(spec, "2026-11-02"), PART)
    path.write_bytes(path.read_bytes()[:-10] + b"x" * 10)
    with pytest.raises(
        TrainingError, match=r"ds=2026-11-02 of 'digits' was rewritten .*Nothing was registered"
    ):
        load_window(spec, "2026-11-03", 30, fixed)
    path.unlink()
    with pytest.raises(TrainingError, match="ds=2026-11-02 of 'digits' was removed"):
        load_window(spec, "2026-11-03", 30, fixed)
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_partition_without_a_column_the_model_reads_is_named(lake, tmp_path):
    from freestack.train.stream import spool_window
    from freestack.train.window import WindowError, fix_window

    spec = _with_data(lake, **STREAM)
    with pytest.raises(
        WindowError, match=r"ds=2026-11-01 of 'digits' has no column\(s\) \['colour'\], which the model reads"
    ):
        spool_window(spec, fix_window(spec, None, 30), 30, ["id", "colour", "label"])
    assert list((tmp_path / "spool").iterdir()) == []


def _relabelled_next_day(root: Path) -> list[list[str]]:
    """Land 150 rows of 11-03 again on 11-04, each with another label; those rows."""
    import csv

    with open(next((root / "landing/digits/2026-11-03").glob("*.csv")), newline="") as f:
        rows = list(csv.reader(f))
    header, again = rows[0], [[*r[:-1], str((int(r[-1]) + 1) % 10)] for r in rows[1:151]]
    (root / "landing/digits/2026-11-04").mkdir(parents=True)
    with open(root / "landing/digits/2026-11-04/day.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *again])
    return again


def test_a_key_on_several_days_is_read_once_from_its_latest_partition(lake, storage):
    """unique_key: window (the default): 150 keys of 11-03 land again, relabelled, on 11-04; both ways of
    reading the window read those keys once, from 11-04, and lineage counts what was superseded.
    unique_key: partition reads them on both days."""
    from freestack.ingest.core import ingest_partition
    from freestack.ingest.spec import IngestPolicy
    from freestack.train.stream import spool_window
    from freestack.train.window import fix_window, read_window

    root = _folder(storage)
    again = _relabelled_next_day(root)
    ingest_partition(lake, "2026-11-04")
    window = fix_window(lake, None, 30)

    import pyarrow.parquet as pq

    ids = {
        ds: set(pq.read_table(root / f"lake/digits/ds={ds}/part.parquet").column("id").to_pylist())
        for ds in ("2026-11-03", "2026-11-04")
    }
    both = ids["2026-11-03"] & ids["2026-11-04"]
    assert len(both) > 100  # the 150 rows again, but those the ingest quarantined on either day
    frame, parts = read_window(lake, window)
    assert [p["superseded"] for p in parts] == [0, 0, len(both), 0]
    assert frame["id"].is_unique and len(frame) == sum(p["rows"] for p in parts)
    relabelled = dict(zip(frame["id"], frame["label"], strict=True))
    latest: dict[str, int] = {}
    for r in again:  # a key repeated within a day: its first row was published, the next quarantined
        latest.setdefault(r[0], int(r[-1]))
    assert all(relabelled[k] == latest[k] for k in both)  # the latest partition's rows won

    spool = spool_window(lake, window, 30, ["id", "label"])
    try:
        assert [(p["rows"], p["superseded"]) for p in spool.partitions] == [
            (p["rows"], p["superseded"]) for p in parts
        ]
        assert sum(s.rows for s in spool.splits.values()) == len(frame)
    finally:
        spool.close()

    per_day = lake.model_copy(
        update={
            "source": lake.source.model_copy(
                update={
                    "policy": IngestPolicy(**{**lake.source.policy.model_dump(), "unique_key": "partition"})
                }
            )
        }
    )
    frame, parts = read_window(per_day, window)
    assert [p["superseded"] for p in parts] == [0, 0, 0, 0] and len(frame) == len(set(frame["id"])) + len(
        both
    )


def test_unique_key_off_keeps_a_keys_rows_of_every_day_in_the_window(lake, storage):
    """unique_key: off (also what `unique_key: false` means): the 150 rows of 11-03 landed again,
    relabelled, on 11-04 are kept on both days, in the window read in memory and streamed; nothing
    is superseded, and each such key has both its labels."""
    import pyarrow.parquet as pq

    from freestack.ingest.core import ingest_partition
    from freestack.ingest.spec import IngestPolicy
    from freestack.train.stream import spool_window
    from freestack.train.window import fix_window, read_window

    assert (
        IngestPolicy(unique_key=False).unique_key == "off"
        and IngestPolicy(unique_key=True).unique_key == "window"
    )
    off = lake.model_copy(
        update={
            "source": lake.source.model_copy(
                update={"policy": IngestPolicy(**{**lake.source.policy.model_dump(), "unique_key": False})}
            )
        }
    )
    root = _folder(storage)
    _relabelled_next_day(root)
    ingest_partition(off, "2026-11-04")
    day4 = pq.read_table(root / "lake/digits/ds=2026-11-04/part.parquet").column("id").to_pylist()
    assert len(day4) > len(set(day4))  # off: a key repeated within the day is not quarantined either
    day3 = set(pq.read_table(root / "lake/digits/ds=2026-11-03/part.parquet").column("id").to_pylist())
    both = day3 & set(day4)
    assert len(both) > 100

    window = fix_window(off, None, 30)
    frame, parts = read_window(off, window)
    assert [p["superseded"] for p in parts] == [0, 0, 0, 0]
    assert len(frame) == sum(p["rows"] for p in parts) and parts[-1]["rows"] == len(day4)
    counts = frame["id"].value_counts()
    assert all(counts[k] == 1 + day4.count(k) for k in both)  # a key's row of 11-03 and each of 11-04
    labels = frame.groupby("id")["label"].agg(set)
    assert all(len(labels[k]) == 2 for k in both)  # the old label and the new one, both kept

    spool = spool_window(off, window, 30, ["id", "label"])
    try:
        assert [(p["rows"], p["superseded"]) for p in spool.partitions] == [
            (p["rows"], p["superseded"]) for p in parts
        ]
        assert sum(sp.rows for sp in spool.splits.values()) == len(frame)
    finally:
        spool.close()
