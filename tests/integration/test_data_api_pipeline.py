"""A pipeline whose storage root is ``data://`` through the Data API service, end to end.

The ``freestack_data_default`` connection points at the live service (host = its URL, password = an
API key), and ``FREESTACK_STORAGE_ROOT=data://.my/<collection>``: the demo landing files, the
ingest DAG (dag.test) and the train DAG read and write only through HTTP, and the service's ACLs
apply to the tasks as to any client.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from tests.integration.data_api_service import data_api  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("airflow_db")


def _clear_stores() -> None:
    from airflow.sdk.io import store

    store._STORE_CACHE.clear()


@pytest.fixture
def pipeline(data_api, tmp_path, monkeypatch, clean_stores):  # noqa: F811
    """The digits spec, a fresh collection of alice's as storage root, tasks signed in as ``use(user)``."""
    specs = tmp_path / "pipelines"
    specs.mkdir()
    text = (ROOT / "include" / "pipelines" / "digits.yaml").read_text()
    assert "retries: 2\n" in text
    # a refused task fails at once (an ACL does not change between retries of one test)
    (specs / "digits.yaml").write_text(text.replace("retries: 2\n", "retries: 0\n"))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    monkeypatch.delenv("FREESTACK_DATA_ROOT", raising=False)
    coll = data_api.collection()

    def use(user: str, root: str) -> None:
        conn = {"conn_type": "freestack_data", "host": data_api.url, "password": data_api.keys[user]}
        monkeypatch.setenv("AIRFLOW_CONN_FREESTACK_DATA_DEFAULT", json.dumps(conn))
        monkeypatch.setenv("FREESTACK_STORAGE_ROOT", root)
        _clear_stores()

    use("alice", f"data://.my/{coll}")
    return {"coll": coll, "use": use, "backing": data_api.root / "alice" / coll, "api": data_api}


def _bag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


def _ingest(bag, ds: str):
    d = date.fromisoformat(ds)
    run = bag.get_dag("digits_ingest").test(logical_date=datetime(d.year, d.month, d.day, tzinfo=UTC))
    return run.state, {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_ingest_and_train_with_the_storage_root_behind_the_data_api(pipeline):
    from demo.landing import make_landing

    api, coll, backing = pipeline["api"], pipeline["coll"], pipeline["backing"]
    uris = make_landing(f"data://.my/{coll}", date(2026, 11, 1), 3)
    assert uris[0] == f"data://.my/{coll}/landing/digits/2026-11-01/digits.csv"
    assert (backing / "landing" / "digits" / "2026-11-01" / "digits.csv").stat().st_size > 10_000

    bag = _bag()
    for ds in ("2026-11-01", "2026-11-02", "2026-11-03"):
        state, tis = _ingest(bag, ds)
        assert state == "success" and tis == {"ingest": "success"}, (ds, tis)
        part_dir = backing / "lake" / "digits" / f"ds={ds}"
        table = pq.read_table(part_dir / "part.parquet")
        assert table.num_rows > 300 and table.schema.field("label").type == "int64"
        manifest = json.loads((part_dir / "_manifest.json").read_text())
        quarantine = part_dir / manifest["quarantine"]["uri"].rsplit("/", 1)[1]
        assert pq.read_table(quarantine).num_rows == 5
        assert (
            manifest["part"]["sha256"] == hashlib.sha256((part_dir / "part.parquet").read_bytes()).hexdigest()
        )
        assert manifest["rows_good"] == table.num_rows
        assert not [p.name for p in part_dir.iterdir() if p.name.startswith(".")]  # no temporaries left

    # the same lake through the official client
    c = api.client("alice")
    assert [d.getName() for d in c.dir(f"data://.my/{coll}/lake/digits").dirs()] == [
        "ds=2026-11-01",
        "ds=2026-11-02",
        "ds=2026-11-03",
    ]

    # training reads the partitions back over HTTP (ranged reads of Parquet) and writes the model there
    run = bag.get_dag("digits_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False, "epochs": 3})
    assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    versions = [p for p in (backing / "registry" / "digits").iterdir() if p.is_dir()]
    assert len(versions) == 1
    files = {p.name for p in versions[0].iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "lineage.json"} <= files
    lineage = json.loads((versions[0] / "lineage.json").read_text())
    assert [p["ds"] for p in lineage["partitions"]] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert (
        c.file(f"data://.my/{coll}/registry/digits/{versions[0].name}/metrics.json").getJson()[
            "test_accuracy"
        ]
        > 0.5
    )


def test_pipeline_tasks_obey_the_collection_acl(pipeline):
    from demo.landing import make_landing

    api, coll, backing = pipeline["api"], pipeline["coll"], pipeline["backing"]
    make_landing(f"data://.my/{coll}", date(2026, 11, 1), 1)
    before = sorted(str(p.relative_to(backing)) for p in backing.rglob("*"))

    # bob's tasks, pointed at alice's private collection: refused, nothing written
    pipeline["use"]("bob", f"data://alice/{coll}")
    bag = _bag()
    state, tis = _ingest(bag, "2026-11-01")
    assert state == "failed" and tis == {"ingest": "failed"}
    assert sorted(str(p.relative_to(backing)) for p in backing.rglob("*")) == before

    # alice shares it with bob, read-only: reading works, publishing the partition still does not
    r = requests.patch(
        f"{api.url}/v1/data/alice/{coll}",
        headers=api.headers("alice"),
        timeout=10,
        json={"acl": {"read": ["user://bob"]}},
    )
    assert r.status_code == 200
    state, tis = _ingest(bag, "2026-11-01")
    assert state == "failed"
    assert not (backing / "lake").exists()

    # ... and as a writer: bob's run publishes into alice's collection
    r = requests.patch(
        f"{api.url}/v1/data/alice/{coll}",
        headers=api.headers("alice"),
        timeout=10,
        json={"acl": {"read": ["user://bob"], "write": ["user://bob"]}},
    )
    assert r.status_code == 200
    state, tis = _ingest(bag, "2026-11-01")
    assert state == "success", tis
    assert pq.read_table(backing / "lake" / "digits" / "ds=2026-11-01" / "part.parquet").num_rows > 300


def test_compare_and_swap_through_the_data_api(pipeline):
    """Sweep state and registry aliases need conditional writes: the service gives If-None-Match and
    If-Match (on the content's sha256), so data:// over HTTP coordinates like S3 and local disk."""
    import threading

    from freestack.storage import cas, join, to_path

    p = join(to_path(f"data://.my/{pipeline['coll']}"), "state", "doc.json")
    assert cas.read(p) is None
    token = cas.create(p, b"v1")
    with pytest.raises(cas.CasConflict, match="already exists"):
        cas.create(p, b"other")
    t2 = cas.replace(p, b"v2", token)
    with pytest.raises(cas.CasConflict, match="changed since it was read"):
        cas.replace(p, b"stale", token)
    assert cas.read(p).data == b"v2" and cas.read(p).token == t2
    with pytest.raises(cas.CasConflict, match="no longer exists"):
        cas.replace(join(p.parent, "missing.json"), b"x", t2)
    # racing replaces of the same version: exactly one wins
    wins, losses = [], []

    def racer(i):
        try:
            cas.replace(p, f"racer {i}".encode(), t2)
            wins.append(i)
        except cas.CasConflict:
            losses.append(i)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 5
    assert cas.read(p).data == f"racer {wins[0]}".encode()
    assert (pipeline["backing"] / "state" / "doc.json").read_bytes() == f"racer {wins[0]}".encode()
