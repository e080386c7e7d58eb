"""A full disk under the storage root: a real small filesystem (a 4 MiB tmpfs, mounted for each test).

A write that runs out of space leaves no temporary behind (whatever else fails while throwing the write
away), and says which filesystem is full, under which storage root, while writing what, and what to do.
Once space is freed, the same task on the same root succeeds. Mounting needs root (CI runs as root);
elsewhere these tests skip, saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from freestack.errors import StorageFull
from freestack.storage import AtomicWriter, join, to_path
from freestack.storage.objects import STALE_AFTER_S
from tests.support.small_fs import ballast, free_mib, mounted_tmpfs, temporaries

ROOT = Path(__file__).resolve().parents[2]
DS = "2026-11-03"
SIZE_MIB = 4


@pytest.fixture
def small_fs(tmp_path, monkeypatch):
    """A 4 MiB tmpfs holding the storage root (``<mount>/root``)."""
    with mounted_tmpfs(tmp_path / "small", SIZE_MIB) as mount:
        monkeypatch.setenv("FREESTACK_STORAGE_ROOT", (mount / "root").as_uri())
        yield mount


def _events_spec(landing: Path):
    from freestack.spec import parse_spec

    columns = [{"name": "id", "type": "int", "nullable": False}]
    columns += [{"name": c, "type": "float"} for c in "abcd"]
    columns += [{"name": "y", "type": "float", "min": 0, "max": 1}]
    return parse_spec(
        {
            "name": "events",
            "source": {
                "format": "csv",
                "landing": f"{landing.as_uri()}/{{ds}}/",
                "schema": {"key": "id", "target": "y", "columns": columns},
                "policy": {"max_quarantine_fraction": 0.5},
            },
        },
        "events.yaml",
    )


def _land(landing: Path, rows: int) -> None:
    """Random floats (about 2 MiB of Parquet for 50k rows) and a few rows out of range (quarantined):
    the landing folder is on another filesystem, only the lake on the small one."""
    rng = np.random.default_rng(7)
    values = rng.random((rows, 5))
    values[::997, 4] = 5.0  # y over its max
    folder = landing / DS
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{i},{a},{b},{c},{d},{y}\n" for i, (a, b, c, d, y) in enumerate(values.tolist()))
    (folder / "data.csv").write_text("id,a,b,c,d,y\n" + lines)


def test_an_ingest_that_fills_the_disk_leaves_nothing_and_the_next_run_succeeds(small_fs, tmp_path):
    from freestack.ingest.core import ingest_partition
    from freestack.ingest.lake import read_manifest

    landing = tmp_path / "landing"
    _land(landing, rows=50_000)
    spec = _events_spec(landing)
    extra = ballast(small_fs, free_mib=1.0)

    with pytest.raises(StorageFull) as failed:
        ingest_partition(spec, DS)
    message = str(failed.value)
    assert f"No space left on the filesystem at {small_fs}" in message
    assert f"storage root {(small_fs / 'root').as_uri()}" in message
    assert "/lake/events/ds=2026-11-03/" in message and "it was not published" in message
    assert "Free space on that filesystem" in message and "FREESTACK_STORAGE_ROOT" in message
    assert "Errno" not in message
    assert temporaries(small_fs) == [], "a temporary of the failed ingest was left on the full disk"
    assert read_manifest(spec, DS) is None

    extra.unlink()  # space is freed: the same ingest on the same root now succeeds
    result = ingest_partition(spec, DS)
    assert result.rows_good + result.rows_quarantined == 50_000 and result.rows_quarantined == 51
    assert read_manifest(spec, DS)["part"]["sha256"] == result.part["sha256"]
    assert temporaries(small_fs) == []


def test_a_checkpoint_write_on_a_full_disk_says_so_and_the_next_one_succeeds(small_fs):
    import torch

    from freestack.ml.checkpoint import CHECKPOINT, pack, read
    from freestack.train.core import StoreCheckpoints

    model = torch.nn.Linear(256, 256)  # 0.25 MiB of weights; with the best ones and Adam's state, 1 MiB
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 256)).sum().backward()
    opt.step()
    data = pack(model, dict(model.state_dict()), opt, {"epoch": 1})
    run_dir = join(to_path((small_fs / "root").as_uri()), "runs", "events", "run-1")
    store = StoreCheckpoints(run_dir)
    store.save("notes.json", b"{}")  # the run's folder is there already
    extra = ballast(small_fs, free_mib=0.5)

    with pytest.raises(StorageFull) as failed:
        store.save(CHECKPOINT, data)
    message = str(failed.value)
    assert f"No space left on the filesystem at {small_fs}" in message
    assert f"{run_dir}/{CHECKPOINT}" in message and "re-run the task" in message
    assert temporaries(small_fs) == []
    assert store.load(CHECKPOINT) is None

    extra.unlink()
    store.save(CHECKPOINT, data)
    assert torch.equal(read(store.load(CHECKPOINT))[0]["weight"], model.weight.detach())
    assert temporaries(small_fs) == []


def test_throwing_a_write_away_on_a_full_disk_never_fails_and_frees_its_space(small_fs):
    """Closing a temporary with bytes still buffered fails on a full disk; aborting removes it anyway,
    so the space is back and the next writer's abort still runs."""
    root = to_path((small_fs / "root").as_uri())
    first, second = AtomicWriter(join(root, "a", "one.bin")), AtomicWriter(join(root, "a", "two.bin"))
    first.write(b"x" * 1000)  # buffered: reaches the disk only when flushed
    second.write(b"y" * 1000)
    ballast(small_fs, free_mib=0)
    second.abort()
    first.abort()  # last: the folders it made are empty now, and go too
    assert temporaries(small_fs) == []
    assert not (small_fs / "root").exists()


def test_a_compare_and_swap_write_on_a_full_disk_leaves_no_temporary(small_fs):
    from freestack.storage import cas

    root = to_path((small_fs / "root").as_uri())
    target = join(root, "runs", "events", "sweep.json")
    token = cas.create(target, b"{}")
    extra = ballast(small_fs, free_mib=0.5)
    with pytest.raises(StorageFull, match="sweep.json"):
        cas.replace(target, b"x" * 2**20, token)
    assert temporaries(small_fs) == []
    extra.unlink()
    cas.replace(target, b"x" * 2**20, token)
    assert cas.read(target).data == b"x" * 2**20


def test_a_killed_ingests_temporary_does_not_keep_the_disk_full(small_fs, tmp_path):
    """A killed writer cannot remove its temporary; the next write into its folder does (the next ingest
    of the interval), so the disk does not stay full."""
    from freestack.ingest.core import ingest_partition
    from freestack.ingest.lake import read_manifest
    from tests.support.writers import age, kill, writing

    landing = tmp_path / "landing"
    _land(landing, rows=20_000)
    spec = _events_spec(landing)
    partition = small_fs / "root" / "lake" / "events" / f"ds={DS}"
    partition.mkdir(parents=True)
    killed = writing(f"file://{partition}/part.parquet", int((SIZE_MIB - 0.5) * 2**20))
    kill(killed)
    (left,) = temporaries(small_fs)
    age(Path(left), STALE_AFTER_S * 2)
    assert free_mib(small_fs) < 1

    result = ingest_partition(spec, DS)
    assert read_manifest(spec, DS)["part"]["sha256"] == result.part["sha256"]
    assert temporaries(small_fs) == []


def test_the_ingest_task_on_a_full_disk_fails_saying_what_to_do_and_succeeds_once_space_is_freed(
    small_fs, tmp_path, monkeypatch, airflow_db, capfd
):
    """The issue as a user meets it: the ingest DAG run by Airflow (dag.test) with its storage root on a
    disk that fills while the partition is written."""
    from datetime import UTC, date, datetime

    from airflow.dag_processing.dagbag import DagBag

    from demo.landing import make_landing

    root = (small_fs / "root").as_uri()
    make_landing(root, date(2026, 11, 1), 1)
    specs = tmp_path / "pipelines"
    specs.mkdir()
    text = (ROOT / "include" / "pipelines" / "digits.yaml").read_text()
    (specs / "digits.yaml").write_text(text.replace("retries: 2\n", "retries: 0\n"))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag("digits_ingest")
    extra = ballast(small_fs, free_mib=0.02)

    run = dag.test(logical_date=datetime(2026, 11, 1, tzinfo=UTC))
    (ti,) = run.get_task_instances()
    assert ti.state == "failed"
    out = capfd.readouterr()
    log = out.out + out.err
    assert f"No space left on the filesystem at {small_fs}" in log, log[-3000:]
    assert "/lake/digits/ds=2026-11-01/" in log and f"storage root {root}" in log
    assert temporaries(small_fs) == []

    extra.unlink()
    run = dag.test(logical_date=datetime(2026, 11, 1, tzinfo=UTC))
    assert [ti.state for ti in run.get_task_instances()] == ["success"]
    assert (small_fs / "root" / "lake" / "digits" / "ds=2026-11-01" / "part.parquet").exists()
    assert temporaries(small_fs) == []
