"""evaluate's step cache (freestack.cache through freestack.evaluate.core.cached): a second evaluation of
the same candidate with nothing changed reuses the first's ``evaluation/`` without loading a model or
writing a file; a changed partition byte, spec block, candidate file or production version is a miss
naming what changed; a corrupt entry or one whose outputs are gone is a miss, never a wrong reuse."""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from freestack import cache
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
    from freestack.evaluate import core
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
        found = core.cached(changed.get("spec", spec), uri, changed.get("champion"), None)
        (folder / "evaluation" / "_cache.json").write_bytes(saved)  # a miss removed it: put it back
        assert found is not None and not found.hit
        return found.miss

    part = Path(
        json.loads((folder / "lineage.json").read_text())["partitions"][0]["uri"].removeprefix("file://")
    )
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one byte of one test partition
    assert miss().startswith("partitions changed since run manual__first")
    part.write_bytes(data)
    stricter = spec.model_copy(update={"gate": GateSpec(threshold=0.5)})
    assert miss(spec=stricter).startswith("spec changed")
    assert miss(champion=CHAMPION.as_uri()).startswith("champion changed")
    with monkeypatch.context() as mp:
        mp.setattr(cache, "code_digest", lambda: "0" * 64)  # an edit to freestack's code
        assert miss().startswith("code_version changed")
    history = folder / "history.json"
    kept = history.read_bytes()
    history.write_bytes(kept + b" ")
    assert miss().startswith("candidate changed")
    history.write_bytes(kept)
    (folder / "evaluation" / "_cache.json").write_text("{not json")
    assert miss() == "the cache entry cannot be read (ValidationError)"
    (folder / "evaluation" / "report.html").unlink()
    assert miss() == "outputs gone: evaluation/report.html"
    off = spec.model_copy(update={"gate": spec.gate.model_copy(update={"cache": False})})
    assert core.cached(off, uri, None, None) is None


def _no_model(uri):
    raise AssertionError(f"a cache hit loaded {uri}")
