"""The ingest DAG run for real through dag.test(), over several days of landing data."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("airflow_db")


def _dag(specs: Path, monkeypatch, name: str = "digits", broken: tuple[str, ...] = ()):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    errors = "\n".join(bag.import_errors.values())
    for stem in broken:
        assert f"{stem}.yaml" in errors, errors
    if not broken:
        assert not bag.import_errors, bag.import_errors
    return bag.get_dag(f"{name}_ingest")


def _run(dag, ds: str):
    d = date.fromisoformat(ds)
    run = dag.test(logical_date=datetime(d.year, d.month, d.day, tzinfo=UTC))
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


@pytest.fixture
def specs(tmp_path) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", folder / "digits.yaml")
    return folder


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _quarantine(partition: Path) -> Path:
    """The partition's one quarantine file (named by its hash)."""
    (path,) = partition.glob("_quarantine-*.parquet")
    return path


def test_several_days_with_bad_rows_empty_file_missing_day_and_non_utf8(specs, storage, monkeypatch):
    from demo.landing import make_landing

    root = Path(storage.removeprefix("file://"))
    make_landing(storage, date(2026, 11, 1), 3)
    # 2026-11-04: missing entirely. 2026-11-05: an empty file. 2026-11-06: a row with non-UTF-8 bytes.
    (root / "landing/digits/2026-11-05").mkdir(parents=True)
    (root / "landing/digits/2026-11-05/empty.csv").write_bytes(b"")
    good = (root / "landing/digits/2026-11-01/digits.csv").read_bytes().splitlines()
    bad_row = good[1].replace(b"digit-", b"d\xff\xfeigit-", 1)
    (root / "landing/digits/2026-11-06").mkdir(parents=True)
    (root / "landing/digits/2026-11-06/day.csv").write_bytes(
        b"\n".join([good[0], *good[30:60], bad_row]) + b"\n"
    )

    # a broken spec beside it: an import error naming it, and digits still loads and runs
    (specs / "broken.yaml").write_text("name: broken\nsource:\n  format: csv\n  schema: {columns: []}\n")
    dag = _dag(specs, monkeypatch, broken=("broken",))
    for ds in ("2026-11-01", "2026-11-02", "2026-11-03"):
        run, states = _run(dag, ds)
        assert run.state == "success" and states == {"ingest": "success"}, (ds, states)
        part = root / f"lake/digits/ds={ds}/part.parquet"
        quarantine = pq.read_table(_quarantine(root / f"lake/digits/ds={ds}"))
        assert quarantine.num_rows == 5
        reasons = set(quarantine.column("_reason").to_pylist())
        assert any(r.startswith("px_10: above the maximum 16") for r in reasons)
        assert any(r.startswith("malformed row: expected 67 fields, found 10") for r in reasons)
        table = pq.read_table(part)
        assert table.num_rows > 300 and table.schema.field("label").type == "int64"
        assert len(set(table.column("id").to_pylist())) == table.num_rows

    # the missing day fails with a message that says where and what to do
    run, states = _run(dag, "2026-11-04")
    assert run.state == "failed" and states == {"ingest": "failed"}
    assert not (root / "lake/digits/ds=2026-11-04").exists()

    # a 0-byte file (the spec says header: true) is missing data: on_missing: fail fails the day and
    # publishes nothing, so no empty partition can enter a training window
    run, states = _run(dag, "2026-11-05")
    assert run.state == "failed" and states == {"ingest": "failed"}
    assert not (root / "lake/digits/ds=2026-11-05").exists()

    # non-UTF-8 bytes: only that row is quarantined, with the reason
    run, states = _run(dag, "2026-11-06")
    assert run.state == "success"
    q = pq.read_table(_quarantine(root / "lake/digits/ds=2026-11-06")).to_pylist()
    assert [r["_reason"] for r in q] == ["id: not valid UTF-8 text"]
    assert pq.read_table(root / "lake/digits/ds=2026-11-06/part.parquet").num_rows == 30


def test_rerun_is_byte_identical_and_emits_asset_event(specs, storage, monkeypatch):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    from demo.landing import make_landing

    root = Path(storage.removeprefix("file://"))
    make_landing(storage, date(2026, 11, 1), 2)
    dag = _dag(specs, monkeypatch)
    _run(dag, "2026-11-02")
    part = root / "lake/digits/ds=2026-11-02/part.parquet"
    first = (_sha(part), _sha(_quarantine(part.parent)))
    run, _ = _run(dag, "2026-11-02")
    assert (_sha(part), _sha(_quarantine(part.parent))) == first
    names = sorted(p.name for p in part.parent.iterdir())
    assert names == ["_manifest.json", _quarantine(part.parent).name, "part.parquet"], names
    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id).all()
    assert events, "no asset event with the partition's extra"
    extra = events[-1].extra
    assert extra["part_sha256"] == first[0]
    assert (
        extra["rows_good"] + extra["rows_quarantined"] == extra["rows_in"] and extra["rows_quarantined"] == 5
    )


def test_policies_skip_schema_drift_and_quarantine_limit(specs, storage, monkeypatch):
    root = Path(storage.removeprefix("file://"))
    text = (specs / "digits.yaml").read_text()
    (specs / "digits.yaml").write_text(
        text.replace("on_missing: fail", "on_missing: skip")
        .replace("extra_columns: drop", "extra_columns: fail")
        .replace("max_quarantine_fraction: 0.05", "max_quarantine_fraction: 0.2")
    )
    dag = _dag(specs, monkeypatch)

    run, states = _run(dag, "2026-11-10")  # nothing landed: skipped, run stays green
    assert run.state == "success" and states == {"ingest": "skipped"}

    header = "id,captured_at," + ",".join(f"px_{i}" for i in range(64)) + ",label"
    row = "k{n},2026-01-01T00:00:00," + ",".join(["1"] * 64) + ",{label}"
    day = root / "landing/digits/2026-11-11"
    day.mkdir(parents=True)
    (day / "a.csv").write_text(header + ",surprise\n" + row.format(n=1, label=3) + ",x\n")
    run, states = _run(dag, "2026-11-11")  # an unexpected column with extra_columns: fail
    assert run.state == "failed" and states == {"ingest": "failed"}
    assert not (root / "lake/digits/ds=2026-11-11").exists()

    day = root / "landing/digits/2026-11-12"
    day.mkdir(parents=True)
    rows = [row.format(n=n, label=(3 if n % 2 else 42)) for n in range(10)]  # half the labels invalid
    (day / "a.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    run, states = _run(dag, "2026-11-12")
    assert run.state == "failed"
    part_dir = root / "lake/digits/ds=2026-11-12"
    assert not (part_dir / "part.parquet").exists(), (
        "a partition over the quarantine limit must not be published"
    )
    assert pq.read_table(_quarantine(part_dir)).num_rows == 5, "the rejected rows stay readable"


def test_a_day_of_only_empty_files_is_skipped_under_on_missing_skip(specs, storage, monkeypatch):
    """Empty files are missing data to the DAG as well: with on_missing: skip the day's task is skipped
    (the run stays green), no partition is published and no asset event is emitted, so nothing
    downstream (a training window, a sensor) ever sees the day."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    root = Path(storage.removeprefix("file://"))
    text = (specs / "digits.yaml").read_text()
    (specs / "digits.yaml").write_text(text.replace("on_missing: fail", "on_missing: skip"))
    header = ("id,captured_at," + ",".join(f"px_{i}" for i in range(64)) + ",label\n").encode()
    day = root / "landing/digits/2026-11-13"
    day.mkdir(parents=True)
    (day / "empty.csv").write_bytes(b"")
    (day / "header-only.csv").write_bytes(header)
    dag = _dag(specs, monkeypatch)
    run, states = _run(dag, "2026-11-13")
    assert run.state == "success" and states == {"ingest": "skipped"}, states
    assert not (root / "lake/digits/ds=2026-11-13").exists()
    with create_session() as session:
        # only this run's events: other tests on this worker's Airflow emit events for the same day
        assert not session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id).all()


def test_wait_policy_defers_until_the_landing_files_arrive(specs, storage, monkeypatch):
    import threading

    from demo.landing import make_landing

    text = (specs / "digits.yaml").read_text()
    (specs / "digits.yaml").write_text(
        text.replace("on_missing: fail", "on_missing: wait\n    wait_poke_seconds: 1")
    )
    dag = _dag(specs, monkeypatch)
    assert [t.task_id for t in dag.topological_sort()] == ["wait_for_landing", "ingest"]
    assert dag.get_task("wait_for_landing").deferrable

    arrive = threading.Timer(4.0, make_landing, args=(storage, date(2026, 11, 1), 1))
    arrive.start()
    try:
        run, states = _run(dag, "2026-11-01")
    finally:
        arrive.cancel()
    assert run.state == "success" and states == {"wait_for_landing": "success", "ingest": "success"}
    root = Path(storage.removeprefix("file://"))
    assert (root / "lake/digits/ds=2026-11-01/part.parquet").exists()
