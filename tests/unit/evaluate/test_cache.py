"""evaluate's step cache (freestack.step_cache through freestack.evaluate.reuse.cached): a second evaluation of
the same candidate with nothing changed reuses the first's ``evaluation/`` without loading a model or
writing a file; a changed partition byte, spec block, candidate file or production version is a miss
naming what changed (the partition's day, the block, the versions); a corrupt entry, one whose outputs are
gone, or one whose ``metrics.json`` is another evaluation's is a miss, never a wrong reuse."""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from freestack import step_cache
from tests.support.sweeps import ROOT

sys.path.insert(0, str(ROOT / "include"))
RUN = {"dag_id": "digits_train", "run_id": "manual__first"}
CHAMPION = ROOT / "tests" / "fixtures" / "versions" / "digits" / "version"


@pytest.fixture
def candidate(storage, tmp_path):
    """(the digits spec, a candidate trained on three lake days, not evaluated yet)."""
    from demo.landing import make_landing
    from freestack.ingest.core import ingest_partition
    from freestack.spec import load_spec
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train
    from freestack.train.request import TrainRequest

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    make_landing(storage, date(2026, 11, 1), 3)
    for ds in ("2026-11-01", "2026-11-02", "2026-11-03"):
        ingest_partition(spec, ds)
    out = train(
        spec, TrainRequest(end_ds="2026-11-03", epochs=1), tracking_settings=WandbSettings(mode="disabled")
    )
    return spec, out.version_uri


def _folder(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def _evaluate(spec, uri, **kw):
    from freestack.evaluate.core import evaluate
    from freestack.tracking.wandb import WandbSettings

    return evaluate(spec, uri, tracking_settings=WandbSettings(mode="disabled"), **kw)


def test_an_unchanged_evaluation_is_reused_and_each_change_is_a_miss(candidate, monkeypatch):
    from freestack.evaluate import core, reuse
    from freestack.evaluate.spec import GateSpec

    spec, uri = candidate
    folder = _folder(uri)
    started = time.perf_counter()
    first = _evaluate(spec, uri, run=RUN)
    first_s = time.perf_counter() - started
    assert first["cache"]["hit"] is False and first["cache"]["miss"] == "no earlier run"
    entry = json.loads((folder / "evaluation" / "_cache.json").read_text())
    assert entry["run"] == RUN and entry["key"] == first["cache"]["key"]
    assert {"evaluation/metrics.json", "evaluation/report.html", "reference.json"} <= set(entry["outputs"])
    assert sorted(entry["inputs"]) == ["base", "candidate", "champion", "code_version", "partitions", "spec"]

    before = _files(folder)
    monkeypatch.setattr(core, "load_version", _no_model)  # a hit loads no model
    started = time.perf_counter()
    again = _evaluate(spec, uri, run={"dag_id": "digits_train", "run_id": "manual__second"})
    hit_s = time.perf_counter() - started
    print(f"\nevaluate: first run {first_s:.3f}s, cache hit {hit_s:.3f}s")
    assert _files(folder) == before  # nothing written
    assert again["cache"] == {
        "key": first["cache"]["key"],
        "hit": True,
        "from_run": "manual__first",
        "miss": None,
    }
    assert again["candidate"] == first["candidate"] and again["report"] == first["report"]
    assert hit_s < first_s

    saved = (folder / "evaluation" / "_cache.json").read_bytes()

    def miss(**changed) -> str:
        found = reuse.cached(changed.get("spec", spec), uri, changed.get("champion"), None)
        (folder / "evaluation" / "_cache.json").write_bytes(saved)  # a miss removed it: put it back
        assert found is not None and not found.hit
        return found.miss

    first_part = json.loads((folder / "lineage.json").read_text())["partitions"][0]
    part = Path(first_part["uri"].removeprefix("file://"))
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one byte of one test partition
    # the miss says what changed in the input, not only which input (the entry keeps each in words)
    assert miss() == f"partitions changed since run manual__first: {first_part['ds']} (other bytes)"
    part.write_bytes(data)
    stricter = spec.model_copy(update={"gate": GateSpec(threshold=0.5)})
    assert miss(spec=stricter) == "spec changed since run manual__first: gate (other settings)"
    production = json.loads((CHAMPION / "lineage.json").read_text())["version"]
    assert (
        miss(champion=CHAMPION.as_uri()) == f"champion changed since run manual__first: none -> {production}"
    )
    assert miss(spec=stricter, champion=CHAMPION.as_uri()) == (
        f"champion, spec changed since run manual__first: champion none -> {production}; "
        "spec gate (other settings)"
    )
    with monkeypatch.context() as mp:
        mp.setattr(step_cache, "code_digest", lambda: "0" * 64)  # an edit to freestack's code
        assert miss().startswith("code_version changed")
    history = folder / "history.json"
    kept = history.read_bytes()
    history.write_bytes(kept + b" ")
    assert miss() == "candidate changed since run manual__first"  # the same version, other files
    history.write_bytes(kept)
    _a_hit_checks_the_evaluation_it_reuses(spec, uri, folder)
    (folder / "evaluation" / "_cache.json").write_text("{not json")
    assert miss() == "the cache entry cannot be read (ValidationError)"
    (folder / "evaluation" / "report.html").unlink()
    assert miss() == "outputs gone: evaluation/report.html"
    off = spec.model_copy(update={"gate": spec.gate.model_copy(update={"cache": False})})
    assert reuse.cached(off, uri, None, None) is None


def _a_hit_checks_the_evaluation_it_reuses(spec, uri, folder: Path) -> None:
    """The entry holds this key and its files are there, but ``evaluation/metrics.json`` is another
    evaluation's (evaluate run since with its cache off, or the entry edited): a miss saying so, the
    entry removed, never the other evaluation reused. The file's bytes are not those the entry recorded:
    the lookup says so; an entry edited to record them too is caught by what the file itself records."""
    import hashlib

    from freestack.evaluate import reuse

    entry, metrics = folder / "evaluation" / "_cache.json", folder / "evaluation" / "metrics.json"
    saved, original = entry.read_bytes(), metrics.read_bytes()
    written, sha = json.loads(original), json.loads(saved)["digests"]["evaluation/metrics.json"]
    days = written["window"]["partitions"]

    def reused(**recorded) -> str:
        metrics.write_text(json.dumps({**written, **recorded}))
        found = reuse.cached(spec, uri, None, None)
        assert found is not None and found.miss == (
            f"evaluation/metrics.json is not what run manual__first wrote (sha256 {sha[:12]} then, "
            f"sha256 {hashlib.sha256(metrics.read_bytes()).hexdigest()[:12]} now)"
        )
        edited = json.loads(saved)  # the entry edited to record the rewritten file's sha256 as well
        edited["digests"]["evaluation/metrics.json"] = hashlib.sha256(metrics.read_bytes()).hexdigest()
        entry.write_text(json.dumps(edited))
        found = reuse.cached(spec, uri, None, None)
        assert found is not None and found.hit  # the entry alone would be reused
        assert reuse.reused_evaluation(uri, found) is None and not found.hit and not entry.exists()
        entry.write_bytes(saved)
        return found.miss

    assert reused(champion_version="v0007") == (
        "evaluation/metrics.json records other inputs than these (recorded -> now: champion v0007 -> none)"
    )
    assert reused(window={**written["window"], "partitions": days[1:]}) == (
        "evaluation/metrics.json records other inputs than these "
        f"(recorded -> now: partitions {days[0]} (new))"
    )
    assert reused(version="v-other") == (
        "evaluation/metrics.json records other inputs than these (recorded -> now: candidate v-other -> "
        f"{written['version']})"
    )
    assert (
        reused(cache=None)
        == "evaluation/metrics.json was written under no key, not by the run the cache entry names"
    )
    metrics.write_bytes(original)
    found = reuse.cached(spec, uri, None, None)
    assert found.hit
    assert reuse.reused_evaluation(uri, found)["cache"]["hit"] is True  # its own evaluation is reused


def _no_model(uri):
    raise AssertionError(f"a cache hit loaded {uri}")
