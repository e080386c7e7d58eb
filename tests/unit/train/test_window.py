"""The run's window (freestack.train.window): fixed once, read as fixed, skipped when nothing is new."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.sweeps import ROOT

sys.path.insert(0, str(ROOT / "include"))


@pytest.fixture
def lake(storage):
    """Three days of the demo pipeline in the lake."""
    from demo.landing import make_landing
    from freestack.ingest.core import ingest_partition
    from freestack.spec import load_spec

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    make_landing(storage, date(2026, 11, 1), 3)
    for ds in ("2026-11-01", "2026-11-02", "2026-11-03"):
        ingest_partition(spec, ds)
    return spec


def _part(spec, ds):
    from freestack.ingest.lake import PART, partition_dir
    from freestack.storage import join

    return join(partition_dir(spec, ds), PART)


def test_an_empty_end_ds_is_the_newest_partition_and_the_set_is_fixed(lake):
    from freestack.train.window import Window, fix_window

    w = fix_window(lake, None, 30)
    assert (w.end_ds, w.chosen) == ("2026-11-03", "newest")
    assert [p.ds for p in w.partitions] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert all(p.sha256 == hashlib.sha256(_part(lake, p.ds).read_bytes()).hexdigest() for p in w.partitions)
    assert Window.from_dict(json.loads(json.dumps(w.as_dict()))) == w  # as an XCom
    assert [p.ds for p in fix_window(lake, "2026-11-02", 1).of_days(1)] == ["2026-11-02"]
    assert "Window: 3 partitions (2026-11-01 … 2026-11-03) up to 2026-11-03" in w.text()


def test_readers_hash_what_they_read_and_refuse_a_rewritten_partition(lake):
    from freestack.train.window import WindowError, fix_window, read_window

    w = fix_window(lake, None, 30)
    df, parts = read_window(lake, w)
    assert len(df) == sum(p["rows"] for p in parts) and [p["sha256"] for p in parts] == [
        p.sha256 for p in w.partitions
    ]
    path = _part(lake, "2026-11-02")
    path.write_bytes(path.read_bytes()[:-10] + b"x" * 10)  # re-ingested under the run's feet
    with pytest.raises(
        WindowError, match=r"lake partition ds=2026-11-02 of 'digits' was rewritten .*Nothing was registered"
    ):
        read_window(lake, w)
    path.unlink()
    with pytest.raises(WindowError, match="ds=2026-11-02 of 'digits' was removed"):
        read_window(lake, w)
    with pytest.raises(WindowError, match="a 40-day window is wider than the 30 days this run fixed"):
        w.of_days(40)


def test_an_empty_lake_says_to_ingest_first(storage):
    from freestack.spec import load_spec
    from freestack.train.window import WindowError, fix_window

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    with pytest.raises(WindowError, match="the lake of 'digits' has no partitions: run digits_ingest"):
        fix_window(spec, None, 30)


def test_a_window_trained_already_or_older_than_a_trained_one_is_nothing_new(lake):
    """Registered versions (lineage: partitions with sha256) decide whether an automatic run trains."""
    from freestack.registry.core import registry_for
    from freestack.train.window import already_trained, fix_window
    from tests.support.registry import make_model_folder

    w = fix_window(lake, None, 30)
    assert already_trained(lake, w) is None
    reg = registry_for(lake)
    parts = [{"ds": p.ds, "uri": p.uri, "sha256": p.sha256, "bytes": p.size} for p in w.partitions]
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_model_folder(Path(tmp) / "v", seed=0)
        lineage = json.loads((folder / "lineage.json").read_text())
        lineage.update(partitions=parts, window={"end_ds": w.end_ds, "days": 30})
        (folder / "lineage.json").write_text(json.dumps(lineage))
        reg.register(folder.as_uri(), "v1")
    version, why = already_trained(lake, w)
    assert version == "v1" and "trained on these 3 partitions, unchanged since" in why
    # an older window (the newest partition deleted): v1 saw a newer one
    _part(lake, "2026-11-03").unlink()
    older = fix_window(lake, None, 30)
    version, why = already_trained(lake, older)
    assert version == "v1" and "newer window (up to 2026-11-03)" in why and "trigger with end_ds" in why
    # an explicit older end_ds is a person's choice: the window task does not ask (manual runs train);
    # a window with other partitions than any version's is new
    other = fix_window(lake, "2026-11-01", 30)
    assert [p.ds for p in other.partitions] == ["2026-11-01"]


def test_a_blocked_version_is_never_nothing_new_and_a_drift_alert_retrains(lake):
    """A version the gate blocked makes a lake event's training pointless only when it came from this very
    spec (and the reason says it was blocked); a drift alert retrains on the same partitions unless their
    version is production (or waiting) and was trained from this very spec."""
    from freestack.registry.core import registry_for
    from freestack.train.window import already_trained, fix_window
    from tests.support.registry import make_model_folder

    w, reg = fix_window(lake, None, 30), registry_for(lake)
    parts = [{"ds": p.ds, "uri": p.uri, "sha256": p.sha256, "bytes": p.size} for p in w.partitions]

    def register(version: str, promote: bool, spec_hash: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_model_folder(Path(tmp) / version, seed=0)
            lineage = json.loads((folder / "lineage.json").read_text())
            lineage.update(
                partitions=parts, window={"end_ds": w.end_ds, "days": 30}, spec_normalized_hash=spec_hash
            )
            (folder / "lineage.json").write_text(json.dumps(lineage))
            gate = {"promote": promote, "reasons": ["test"]}
            reg.register(folder.as_uri(), version, lineage_updates={"gate": gate})

    register("v0", False, "another spec")  # blocked, from another spec: the spec changed, so train
    assert already_trained(lake, w) is None and already_trained(lake, w, drift=True) is None
    register("v1", False, lake.normalized_hash())  # blocked, from this spec: a lake event has nothing new
    version, why = already_trained(lake, w)
    assert version == "v1" and "from this very spec, and the gate blocked it" in why
    assert already_trained(lake, w, drift=True) is None  # a drift alert retrains all the same
    register("v2", True, "another spec")
    reg.promote("v2")
    assert already_trained(lake, w)[0] == "v2"  # an automatic run with nothing new: as before
    assert already_trained(lake, w, drift=True) is None  # production came from another spec: retrain
    register("v3", True, lake.normalized_hash())
    version, why = already_trained(lake, w, drift=True)  # v3 waits for promotion, from this spec
    assert version == "v3" and why.endswith("(a candidate still waiting, from this spec)")
    reg.promote("v3")
    assert already_trained(lake, w, drift=True)[1].endswith("(production, from this spec)")


def test_the_window_note_names_the_drift_alert_that_started_the_run(lake):
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from freestack.monitor.operators import drift_asset
    from freestack.train.operators import WindowSensor

    event = SimpleNamespace(
        asset=SimpleNamespace(name="digits_drift", uri="freestack://drift/digits"),
        source_aliases=[],
        source_dag_id="digits_monitor",
        source_run_id="scheduled__2026-11-12T00:00:00+00:00",
        extra={
            "report": "file:///r/report.html",
            "alerts": [{"message": "px_3: PSI 0.41 > 0.2"}, {"message": "b"}],
        },
    )
    sensor = WindowSensor(
        task_id="window", spec_path="digits.yaml", wait_minutes=0, drift=drift_asset("digits")
    )
    said = sensor._drift_alert({"triggering_asset_events": TriggeringAssetEventsAccessor.build([event])})
    assert said == (
        "**Retraining on drift:** digits_monitor run scheduled__2026-11-12T00:00:00+00:00 alerted: "
        "px_3: PSI 0.41 > 0.2 (and 1 more); report file:///r/report.html."
    )
    assert sensor._drift_alert({"triggering_asset_events": TriggeringAssetEventsAccessor.build([])}) is None


def _event(n: int, partition: str | None, ds: str, sha256: str) -> SimpleNamespace:
    """An asset event of the lake asset as Airflow hands it to a task's ``inlet_events`` (what
    IngestOperator's outlet wrote in ``extra``; ``partition`` None: an event of an older release, which
    named no folder)."""
    extra = {
        "ds": ds,
        "part_sha256": sha256,
        "rows_good": 1,
        **({"partition": partition} if partition else {}),
    }
    return SimpleNamespace(
        id=n,
        timestamp=datetime(2026, 11, 4, 0, n, tzinfo=UTC),
        source_dag_id="digits_ingest",
        source_run_id=f"run-{n}",
        extra=extra,
    )


def test_lake_events_are_linked_to_a_partition_by_its_folder_ds_and_sha256(lake, storage):
    """697197d: identical bytes in another lake publish the same ds and sha256, so an event is linked only
    to the partition of the folder it names; an event that names no folder is linked to none; a day
    ingested again with other bytes is linked to the event of the bytes the window reads, not the old one."""
    from freestack.ingest.core import ingest_partition
    from freestack.ingest.lake import partition_dir
    from freestack.ingest.operators import lake_asset
    from freestack.train.operators import WindowSensor
    from freestack.train.window import fix_window

    before = {p.ds: p.sha256 for p in fix_window(lake, None, 30).partitions}
    day = Path(storage.removeprefix("file://")) / "landing/digits/2026-11-03"
    (landed,) = day.glob("*.csv")
    lines = landed.read_bytes().splitlines(keepends=True)
    landed.write_bytes(b"".join(lines[:-50]))  # the day lands again, 50 rows fewer
    ingest_partition(lake, "2026-11-03")
    window = fix_window(lake, None, 30)
    after = {p.ds: p.sha256 for p in window.partitions}
    assert after["2026-11-03"] != before["2026-11-03"] and after["2026-11-02"] == before["2026-11-02"]

    here = {ds: str(partition_dir(lake, ds)) for ds in after}
    elsewhere = here["2026-11-02"].replace(str(Path(storage.removeprefix("file://"))), "/srv/another-lake")
    assert elsewhere != here["2026-11-02"]
    inlet = [
        _event(1, here["2026-11-01"], "2026-11-01", after["2026-11-01"]),
        _event(2, elsewhere, "2026-11-02", after["2026-11-02"]),  # another lake, the same bytes
        _event(3, None, "2026-11-02", after["2026-11-02"]),  # names no folder
        _event(4, here["2026-11-03"], "2026-11-03", before["2026-11-03"]),  # the bytes ingested first
        _event(5, here["2026-11-03"] + "/", "2026-11-03", after["2026-11-03"]),  # the bytes read now
    ]
    context = {"inlet_events": {lake_asset(lake.name): inlet}}
    events = WindowSensor._lake_events(None, context, lake)  # type: ignore[arg-type]  # reads only the context
    assert [e["id"] for e in events] == [1, 2, 4, 5]  # the one without a folder is dropped here
    linked = {p.ds: [e["id"] for e in p.events] for p in window.with_events(events).partitions}
    assert linked == {"2026-11-01": [1], "2026-11-02": [], "2026-11-03": [5]}
    assert window.with_events(events).partitions[0].events[0] == {
        "id": 1,
        "timestamp": "2026-11-04T00:01:00+00:00",
        "dag_id": "digits_ingest",
        "run_id": "run-1",
    }
