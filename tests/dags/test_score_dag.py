"""<p>_score under dag.test(): the production model scores lake days and a folder of Parquet files; the
monitor judges a scored day from the sample it logged; a day without input is skipped with a note; bad
rows are quarantined with their reason; a rescore with a pinned older version replaces a day whole (and
its monitoring sample); an alias that names nothing fails the plan with the fix."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.dags.test_monitor_dag import _asset_events
from tests.dags.test_sweep_dag import _states
from tests.dags.test_train_dag import ROOT, lake  # noqa: F401  (the five-day digits lake fixture)
from tests.support.runs import dags_with, run_note

pytestmark = pytest.mark.usefixtures("airflow_db")


def _bag(lake, **score):  # noqa: F811
    return dags_with(lake["specs"], "score", score)


def _day(root, ds: str):
    folder = root / "scores" / "digits" / f"ds={ds}"
    return pq.read_table(folder / "part.parquet"), json.loads((folder / "_manifest.json").read_text())


def test_lake_days_are_scored_whole_and_rescored_with_a_pinned_version(lake):  # noqa: F811
    from freestack.ingest.lake import read_manifest
    from freestack.registry.core import ModelRegistry
    from freestack.spec import load_spec

    bag = _bag(lake, schedule="@daily")
    train = bag.get_dag("digits_train")
    assert train.test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 6}).state == "success"
    reg = ModelRegistry(lake["root"].as_uri(), "digits")
    first = reg.resolve("production")

    dag = bag.get_dag("digits_score")
    run = dag.test(logical_date=datetime(2026, 11, 3, tzinfo=UTC))  # a manual run: the day before its date
    assert _states(run) == {"plan": ["success"], "score": ["success"]}
    table, manifest = _day(lake["root"], "2026-11-02")
    assert "cache miss: no earlier run (key " in (run_note(run) or "")  # the cache key on the run's page
    lake_part = read_manifest(load_spec(lake["specs"] / "digits.yaml"), "2026-11-02")["part"]
    rows = pq.read_table(lake_part["uri"].removeprefix("file://"))
    assert table.num_rows == rows.num_rows == manifest["rows_scored"] and manifest["rows_quarantined"] == 0
    assert table.column_names == ["id", "ds", "prediction", "probabilities", "version", "scored_at"]
    assert set(table.column("version").to_pylist()) == {first} and manifest["version"] == first
    assert (
        manifest["inputs"][0]["sha256"] == lake_part["sha256"]
        and manifest["inputs"][0]["rows"] == rows.num_rows
    )
    truth = dict(zip(rows.column("id").to_pylist(), rows.column("label").to_pylist(), strict=True))
    got = dict(zip(table.column("id").to_pylist(), table.column("prediction").to_pylist(), strict=True))
    assert np.mean([got[k] == truth[k] for k in truth]) > 0.85
    probs = np.asarray(table.column("probabilities").to_pylist())
    assert probs.shape == (rows.num_rows, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    footer = json.loads(
        pq.read_metadata(lake["root"] / "scores/digits/ds=2026-11-02/part.parquet").metadata[
            b"freestack.scores"
        ]
    )
    assert footer == manifest and manifest["lineage"].endswith(f"{first}/lineage.json")
    assert len(_asset_events("freestack://scores/digits", run)) == 1  # the run's own event
    # the monitor judges the batch-scored day as it judges served traffic (a sample of 256 rows a batch)
    from freestack.monitor.core import monitor

    spec = load_spec(lake["specs"] / "digits.yaml")
    judged = monitor(spec, datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))
    assert judged["rows"] == 256 and judged["status"] in ("ok", "drift"), judged
    assert (
        "<img"
        in (
            lake["root"] / "monitoring/digits/reports/2026-11-02T000000--2026-11-03T000000/report.html"
        ).read_text()
    )

    # no lake partition that day: skipped with a note, nothing written
    empty = dag.test(logical_date=datetime(2026, 11, 20, tzinfo=UTC))
    assert _states(empty) == {"plan": ["skipped"], "score": ["skipped"]}
    assert not (lake["root"] / "scores" / "digits" / "ds=2026-11-19").exists()

    # a second version becomes production; the day scored with the first, pinned, is the cached day
    assert train.test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 4}).state == "success"
    assert len(reg.versions()) == 2
    bag = _bag(lake, schedule="@daily", version=first)
    pinned = bag.get_dag("digits_score").test(logical_date=datetime(2026, 11, 3, tzinfo=UTC))
    assert _states(pinned)["score"] == ["success"]
    # the same version and day: the scores are reused, and the run's note says from which run
    assert f"cache hit: reused the scores of 2026-11-02 from run {run.run_id} (key " in run_note(pinned)
    again, manifest2 = _day(lake["root"], "2026-11-02")
    assert manifest2["version"] == first and again.num_rows == table.num_rows
    assert manifest2 == manifest  # nothing rescored
    again_judged = monitor(spec, datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))
    assert again_judged["rows"] == 256  # the reused day added no second sample
    assert sorted(p.name for p in (lake["root"] / "scores/digits/ds=2026-11-02").iterdir()) == [
        "_cache.json",
        "_manifest.json",
        "part.parquet",
    ]

    # an alias that names nothing: the plan fails, naming it and what to do
    bag = _bag(lake, schedule="@daily", version="canary")
    failed = bag.get_dag("digits_score").test(logical_date=datetime(2026, 11, 3, tzinfo=UTC))
    assert _states(failed)["plan"] == ["failed"]


def test_a_folder_input_quarantines_rows_that_do_not_encode(lake, tmp_path):  # noqa: F811
    from freestack.registry.core import ModelRegistry
    from freestack.score.core import plan, score
    from freestack.spec import load_spec

    folder = tmp_path / "customers"
    bag = _bag(lake, input=f"file://{folder}/ds={{ds}}/", max_error_fraction=0.5)
    assert (
        bag.get_dag("digits_train").test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 4}).state
        == "success"
    )
    rows = pq.read_table(
        next((lake["root"] / "lake" / "digits" / "ds=2026-11-04").glob("part.parquet"))
    ).drop(["label"])
    pixels = rows.to_pandas()
    pixels.loc[3, "px_10"] = None  # a missing value
    (folder / "ds=2026-11-04").mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(pixels, preserve_index=False), folder / "ds=2026-11-04" / "a.parquet")

    spec = load_spec(lake["specs"] / "digits.yaml")
    got = plan(spec, datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC))
    assert (
        got["version"] == ModelRegistry(lake["root"].as_uri(), "digits").resolve("production")
        and len(got["jobs"]) == 1
    )
    manifest = score(spec, got["jobs"][0])
    assert manifest["rows_scored"] == len(pixels) - 1 and manifest["rows_quarantined"] == 1
    out = lake["root"] / "scores" / "digits" / "ds=2026-11-04"
    quarantined = pq.read_table(out / "_quarantine.parquet").to_pylist()
    assert quarantined[0]["id"] == pixels.loc[3, "id"] and "px_10" in quarantined[0]["_reason"]
    assert pixels.loc[3, "id"] not in pq.read_table(out / "part.parquet").column("id").to_pylist()

    # a file without a feature column: the plan names it
    pq.write_table(
        pa.Table.from_pandas(pixels.drop(columns=["px_0"]), preserve_index=False),
        folder / "ds=2026-11-04" / "a.parquet",
    )
    from freestack.errors import ScoreError

    with pytest.raises(ScoreError, match=r"no column\(s\) \['px_0'\]"):
        plan(spec, datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC))


KILLED_SCORER = """
import sys
from datetime import UTC, datetime
from freestack.score.core import plan, score
from freestack.spec import load_spec
spec = load_spec(sys.argv[1])
spec = spec.model_copy(update={"score": spec.score.model_copy(update={"cache": False})})  # scores, not reused
job = plan(spec, datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC))["jobs"][0]
print("scoring", flush=True)
score(spec, job)
"""


def test_a_scorer_killed_mid_write_leaves_the_published_day_whole(lake, tmp_path):  # noqa: F811
    import os
    import signal
    import subprocess
    import sys
    import time

    from freestack.registry.core import ModelRegistry
    from freestack.score.core import plan, score
    from freestack.spec import load_spec
    from freestack.storage.objects import TMP_MARK

    folder = tmp_path / "big"
    bag = _bag(lake, input=f"file://{folder}/ds={{ds}}/", batch_rows=2048)
    assert (
        bag.get_dag("digits_train").test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 2}).state
        == "success"
    )
    # blocked by the gate or not: the version is named
    trained = ModelRegistry(lake["root"].as_uri(), "digits").versions()[-1]["version"]
    _bag(lake, input=f"file://{folder}/ds={{ds}}/", batch_rows=2048, version=trained)
    day = pq.read_table(lake["root"] / "lake" / "digits" / "ds=2026-11-04" / "part.parquet").drop(["label"])
    (folder / "ds=2026-11-04").mkdir(parents=True)
    pq.write_table(
        pa.concat_tables([day] * 400), folder / "ds=2026-11-04" / "a.parquet"
    )  # about 140,000 rows
    spec = load_spec(lake["specs"] / "digits.yaml")
    first = score(
        spec, plan(spec, datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC))["jobs"][0]
    )
    out = lake["root"] / "scores" / "digits" / "ds=2026-11-04"
    before = (out / "part.parquet").read_bytes()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SCORER, str(lake["specs"] / "digits.yaml")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(TMP_MARK in p.name for p in out.iterdir()):  # its temporary is being written
        assert proc.poll() is None and time.monotonic() < deadline, (
            "the scorer ended before it wrote anything"
        )
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "part.parquet").read_bytes() == before  # the published day is the first run's, whole
    assert json.loads((out / "_manifest.json").read_text())["scored_at"] == first["scored_at"]
    assert pq.read_table(out / "part.parquet").num_rows == first["rows_scored"]
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == [
        "_cache.json",
        "_manifest.json",
        "part.parquet",
    ]  # the killed run's temporary is hidden ...
    again = score(
        spec, plan(spec, datetime(2026, 11, 4, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC))["jobs"][0]
    )
    assert not [p for p in out.iterdir() if TMP_MARK in p.name]  # ... and the next run removes it
    assert again["rows_scored"] == first["rows_scored"] and again["scored_at"] >= first["scored_at"]
