"""train.cache (freestack.train.reuse): a training keyed on the same partitions, settings, base and code as
an earlier one reuses its candidate without training; each kind of change is a miss naming it; a corrupt
entry or a candidate deleted since is a miss, never a wrong reuse; a registered version is named."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import date
from pathlib import Path

import pytest

from tests.support.sweeps import ROOT

RUN = {"dag_id": "digits_train", "run_id": "manual__first"}


@pytest.fixture
def trained(storage):
    """(the digits spec with train.cache, the request, its lookup, the outcome of the first training)."""
    from demo.landing import make_landing
    from freestack.ingest.core import ingest_partition
    from freestack.spec import load_spec
    from freestack.train import reuse
    from freestack.train.window import fix_window

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={"cache": True})})
    make_landing(storage, date(2026, 11, 1), 3)
    for ds in ("2026-11-01", "2026-11-02", "2026-11-03"):
        ingest_partition(spec, ds)
    req = _request(fix_window(spec, "2026-11-03", spec.train.window_days).as_dict())
    first = reuse.lookup(spec, req)
    started = time.perf_counter()
    outcome = _train(spec, req)
    seconds = time.perf_counter() - started
    first.save(outcome, RUN)
    return spec, req, first, outcome, seconds


def _request(window, **kw):
    from freestack.train.request import TrainRequest

    return TrainRequest(end_ds="2026-11-03", epochs=1, window=window, run_key="digits_train/first", **kw)


def _train(spec, req):
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train

    return train(spec, req, tracking_settings=WandbSettings(mode="disabled"))


def _entry(spec) -> Path:
    from freestack.train import reuse

    (entry,) = Path(reuse.folder(spec).removeprefix("file://")).glob("*.json")
    return entry


def test_the_same_inputs_reuse_the_candidate_and_each_change_is_a_miss(trained, monkeypatch):
    from freestack import step_cache
    from freestack.train import reuse

    spec, req, first, outcome, seconds = trained
    assert first.found.miss == step_cache.FIRST
    started = time.perf_counter()
    again = reuse.lookup(spec, req)
    hit_seconds = time.perf_counter() - started
    assert again.found.hit and again.registered is None
    assert again.outcome.version == outcome.version and again.outcome.metrics == outcome.metrics
    assert again.outcome.partitions == outcome.partitions
    assert again.line().startswith(
        f"train: cache hit: reused version {outcome.version} from run manual__first"
    )
    assert hit_seconds < seconds, (hit_seconds, seconds)  # the lookup reads two files; training fits a model

    other = reuse.lookup(spec, _request(req.window, learning_rate=0.01))  # a form value the key holds
    assert other.outcome is None and other.found.miss == "spec changed since run manual__first"
    with monkeypatch.context() as m:
        m.setattr(reuse, "_base_commit", lambda spec: "0" * 40)
        assert reuse.lookup(spec, req).found.miss == "base changed since run manual__first"
    with monkeypatch.context() as m:
        m.setattr(step_cache, "code_digest", lambda: "f" * 64)
        assert reuse.lookup(spec, req).found.miss == "code_version changed since run manual__first"
    not_an_input = spec.model_copy(update={"train": spec.train.model_copy(update={"queue": "gpu"})})
    assert reuse.lookup(not_an_input, req).found.hit  # where it runs is not what it learns


def test_a_day_ingested_again_with_other_bytes_is_a_miss(trained, storage):
    from freestack.ingest.core import ingest_partition
    from freestack.train import reuse
    from freestack.train.window import fix_window

    spec, req, _, _, _ = trained
    landing = Path(storage.removeprefix("file://")) / "landing" / "digits" / "2026-11-02" / "digits.csv"
    landing.write_text("".join(landing.read_text().splitlines(keepends=True)[:-1]))  # one row fewer
    ingest_partition(spec, "2026-11-02")
    window = fix_window(spec, "2026-11-03", spec.train.window_days).as_dict()
    assert window != req.window
    changed = reuse.lookup(spec, _request(window))  # another window's data: its miss names the day
    assert changed.outcome is None
    assert changed.found.miss == "partitions changed since run manual__first: 2026-11-02 (other bytes)"


def test_an_entry_naming_a_version_trained_on_other_partitions_is_a_miss(trained, tmp_path):
    """A hand-edited entry (its key intact) naming another registered version, whose lineage names other
    partitions: a miss saying so, never "trained on these inputs"."""
    import shutil

    from freestack.registry.core import registry_for
    from freestack.train import reuse

    spec, req, _, outcome, _ = trained
    other = tmp_path / "other"
    shutil.copytree(outcome.version_uri.removeprefix("file://"), other)
    lineage = json.loads((other / "lineage.json").read_text())
    lineage["partitions"][0]["sha256"] = "0" * 64
    (other / "lineage.json").write_text(json.dumps(lineage))
    registry_for(spec).register(other.as_uri(), "v20261103-other")
    entry = _entry(spec)
    doc = json.loads(entry.read_text())
    doc["extra"]["version"] = "v20261103-other"
    entry.write_text(json.dumps(doc))
    found = reuse.lookup(spec, req)
    assert found.registered is None and found.outcome is None
    assert found.found.miss.startswith(
        "the cache entry names version v20261103-other, whose lineage names other partitions than these 3"
    )


def _register_copy(spec, outcome, folder: Path, version: str, edit) -> None:
    """Register a copy of the trained candidate as ``version``, ``edit(folder)`` applied to the copy first."""
    import shutil

    from freestack.registry.core import registry_for

    shutil.copytree(outcome.version_uri.removeprefix("file://"), folder)
    edit(folder)
    registry_for(spec).register(folder.as_uri(), version)


def _name_in_entry(spec, version: str) -> None:
    """The entry edited by hand to name ``version`` (its key left intact)."""
    entry = _entry(spec)
    doc = json.loads(entry.read_text())
    doc["extra"]["version"] = version
    entry.write_text(json.dumps(doc))


def test_an_entry_naming_another_registered_version_of_the_window_is_a_miss(trained, tmp_path):
    """A hand-edited entry naming another registered version of the same window's partitions: one whose
    lineage records other settings, or one whose files are not those the entry's run trained (other
    weights), is a miss saying so, never "was trained on these inputs"."""
    from freestack.train import reuse

    spec, req, _, outcome, _ = trained

    def other_settings(folder: Path) -> None:
        lineage = json.loads((folder / "lineage.json").read_text())
        assert lineage["keyed_spec"] == reuse.inputs(spec, req)["spec"]  # the training recorded its own
        lineage["keyed_spec"] = "0" * 64  # as a training with another learning rate records it
        (folder / "lineage.json").write_text(json.dumps(lineage))

    _register_copy(spec, outcome, tmp_path / "settings", "v20261103-settings", other_settings)
    _name_in_entry(spec, "v20261103-settings")
    found = reuse.lookup(spec, req)
    assert found.registered is None and found.outcome is None
    assert found.found.miss == (
        "the cache entry names version v20261103-settings, whose lineage records other settings than these "
        f"(keyed_spec 000000000000, now {found.found.inputs['spec'][:12]}) (the entry was edited or copied): "
        "training again"
    )
    assert found.line().startswith("train: cache miss: the cache entry names version v20261103-settings")

    def other_weights(folder: Path) -> None:
        weights = folder / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))

    _register_copy(spec, outcome, tmp_path / "weights", "v20261103-weights", other_weights)
    _name_in_entry(spec, "v20261103-weights")
    found = reuse.lookup(spec, req)
    assert found.registered is None and found.outcome is None
    assert found.found.miss == (
        "the cache entry names version v20261103-weights, whose registered files are not those run "
        "manual__first trained (model.safetensors; the entry was edited or copied): training again"
    )


def test_a_candidate_changed_since_its_training_is_a_miss(trained):
    """The candidate's weights changed since the entry's run wrote them (the entry recorded each file's
    sha256), or the entry's outcome edited to name another folder: a miss saying so."""
    from freestack.train import reuse

    spec, req, _, outcome, _ = trained
    entry = _entry(spec)
    doc = json.loads(entry.read_text())
    weights_uri = f"{outcome.version_uri}/model.safetensors"
    recorded = doc["digests"][weights_uri]
    weights = Path(weights_uri.removeprefix("file://"))
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    changed = reuse.lookup(spec, req)
    assert changed.outcome is None and changed.found.miss == (
        f"{weights_uri} is not what run manual__first wrote (sha256 {recorded[:12]} then, "
        f"sha256 {hashlib.sha256(weights.read_bytes()).hexdigest()[:12]} now)"
    )
    weights.write_bytes(data)
    assert reuse.lookup(spec, req).found.hit
    doc["extra"]["outcome"]["version_uri"] = "file:///elsewhere/v1"
    entry.write_text(json.dumps(doc))
    moved = reuse.lookup(spec, req)
    assert moved.outcome is None and moved.found.miss == (
        "the cache entry's outcome names file:///elsewhere/v1, not the folder its run wrote"
    )


def test_a_corrupt_entry_or_a_deleted_candidate_is_a_miss(trained, caplog):
    from freestack.train import reuse

    spec, req, _, outcome, _ = trained
    entry = _entry(spec)
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 2])
    corrupt = reuse.lookup(spec, req)
    assert corrupt.outcome is None and corrupt.found.miss.startswith("the cache entry cannot be read")
    assert "cannot be read" in caplog.text
    tampered = json.loads(good)
    tampered["inputs"]["spec"] = "0" * 64  # an input that no longer digests to the entry's key
    entry.write_text(json.dumps(tampered))
    assert reuse.lookup(spec, req).found.miss == "the cache entry is not intact"
    entry.write_bytes(good)
    candidate = Path(outcome.version_uri.removeprefix("file://"))
    for f in sorted(candidate.rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    candidate.rmdir()
    gone = reuse.lookup(spec, req)
    assert gone.outcome is None and gone.found.miss.startswith("outputs gone")


def test_a_version_registered_since_is_named_not_trained_again(trained):
    from freestack.registry.core import registry_for
    from freestack.train import reuse

    spec, req, _, outcome, _ = trained
    registry_for(spec).register(outcome.version_uri, outcome.version)
    found = reuse.lookup(spec, req)
    assert found.registered == outcome.version and found.record()["hit"] is True
    assert found.outcome.version_uri == registry_for(spec).version_uri(outcome.version)
    assert found.line().startswith(f"train: cache hit: version {outcome.version}, registered since")
