"""score's step cache (freestack.step_cache through freestack.score.core.cached): a day scored again with the
same input bytes, version and settings keeps its published scores without loading the version or writing
a file; a changed partition byte, score setting or version is a miss naming what changed and the day is
scored again; a corrupt entry, one whose outputs are gone, or one whose published scores are another
run's (the day scored since with the cache off) is a miss, never a wrong reuse."""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from tests.support.sweeps import ROOT

sys.path.insert(0, str(ROOT / "include"))
DS = "2026-11-02"
RUN = {"dag_id": "digits_score", "run_id": "scheduled__first"}
OTHER = ROOT / "tests" / "fixtures" / "versions" / "digits" / "version"


@pytest.fixture
def day(storage):
    """(the digits spec, the job scoring 2026-11-02's lake partition with a version trained on three days)."""
    from demo.landing import make_landing
    from freestack.ingest.core import ingest_partition
    from freestack.score.day import input_files
    from freestack.score.published import output_dir
    from freestack.spec import load_spec
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train
    from freestack.train.request import TrainRequest

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    make_landing(storage, date(2026, 11, 1), 3)
    for ds in ("2026-11-01", DS, "2026-11-03"):
        ingest_partition(spec, ds)
    out = train(
        spec, TrainRequest(end_ds="2026-11-03", epochs=1), tracking_settings=WandbSettings(mode="disabled")
    )
    job = {
        "ds": DS,
        "version": out.version,
        "version_uri": out.version_uri,
        "inputs": input_files(spec, DS),
        "output": output_dir(spec, DS),
        "empty": [],
    }
    return spec, job


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


def test_an_unchanged_day_keeps_its_scores_and_each_change_is_a_miss(day, monkeypatch):
    from freestack.score import core
    from freestack.score.published import read_scores_manifest

    spec, job = day
    folder = Path(job["output"].removeprefix("file://"))
    started = time.perf_counter()
    first = core.score(spec, job, RUN)
    first_s = time.perf_counter() - started
    assert first["cache"] == {
        "key": first["cache"]["key"],
        "hit": False,
        "from_run": None,
        "miss": "no earlier run",
    }
    assert read_scores_manifest(job["output"])["cache"] == first["cache"]  # the footer records it
    assert sorted(p.name for p in folder.iterdir()) == ["_cache.json", "_manifest.json", "part.parquet"]
    entry = json.loads((folder / "_cache.json").read_text())
    assert entry["run"] == RUN and entry["outputs"] == ["part.parquet", "_manifest.json"]

    before = _files(folder)
    monkeypatch.setattr(core, "ScoringModel", _no_model)  # a hit loads no version
    started = time.perf_counter()
    again = core.score(spec, job, {"dag_id": "digits_score", "run_id": "scheduled__second"})
    hit_s = time.perf_counter() - started
    print(f"\nscore: first run {first_s:.3f}s, cache hit {hit_s:.3f}s")
    assert _files(folder) == before  # nothing written
    assert again["cache"] == {**first["cache"], "hit": True, "from_run": "scheduled__first", "miss": None}
    assert again["scored_at"] == first["scored_at"] and again["rows_scored"] == first["rows_scored"]
    assert hit_s < first_s

    saved = (folder / "_cache.json").read_bytes()

    def miss(spec=spec, **changed) -> str:
        found = core.cached(spec, {**job, **changed})
        (folder / "_cache.json").write_bytes(saved)  # a miss removed it: put it back
        assert found is not None and not found.hit
        return found.miss

    part = Path(job["inputs"][0]["uri"].removeprefix("file://"))
    data = part.read_bytes()
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one byte of the day's partition
    # the miss says what changed in the input, not only which input (the entry keeps each in words)
    assert miss() == f"inputs changed since run scheduled__first: ds={DS}/part.parquet (other bytes)"
    part.write_bytes(data)
    assert miss(version="v-other", version_uri=OTHER.as_uri()) == (
        f"version, version_files changed since run scheduled__first: version {job['version']} -> v-other"
    )
    assert miss(
        spec.model_copy(update={"score": spec.score.model_copy(update={"columns": ["prediction"]})})
    ) == ("spec changed since run scheduled__first: score (other settings)")
    pinned = spec.model_copy(update={"score": spec.score.model_copy(update={"version": job["version"]})})
    assert core.cached(pinned, job).hit  # the alias is not keyed: the version it resolved to is
    (folder / "_cache.json").write_text('{"stage": "score"}')
    assert miss() == "the cache entry cannot be read (ValidationError)"
    off = spec.model_copy(update={"score": spec.score.model_copy(update={"cache": False})})
    assert core.cached(off, job) is None

    # a changed setting: the day is scored again, and its new manifest says why
    monkeypatch.undo()
    fewer = spec.model_copy(update={"score": spec.score.model_copy(update={"batch_rows": 100})})
    rescored = core.score(fewer, job, {"dag_id": "digits_score", "run_id": "scheduled__third"})
    assert rescored["cache"]["miss"] == "spec changed since run scheduled__first: score (other settings)"
    assert (
        rescored["scored_at"] >= first["scored_at"]
        and _files(folder)["part.parquet"] != before["part.parquet"]
    )
    _rewritten_scores_are_a_miss(fewer, job, folder)
    _a_hit_checks_the_scores_it_reuses(fewer, job, folder)
    (folder / "part.parquet").unlink()
    assert core.cached(fewer, job).miss == "outputs gone: part.parquet"


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewritten_scores_are_a_miss(spec, job, folder: Path) -> None:
    """The published part rewritten with other predictions, its footer (the manifest) kept as it was: the
    entry recorded the part's sha256 when it was written, so the lookup is a miss naming the part, and the
    day is scored again, never the other predictions reused. The entry and the part are put back after."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from freestack.score import core
    from freestack.score.published import FOOTER_KEY, read_scores_manifest

    entry, part = folder / "_cache.json", folder / "part.parquet"
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    saved, published, manifest = kept[entry.name], kept[part.name], read_scores_manifest(job["output"])
    table = pq.read_table(part)
    column = table.schema.get_field_index("prediction")
    predicted = table.column(column).to_pylist()
    other = table.set_column(
        column, "prediction", pc.cast([predicted[-1], *predicted[:-1]], table.field(column).type)
    )
    assert other.column("prediction").to_pylist() != predicted
    with pq.ParquetWriter(part, other.schema) as writer:  # the footer kept as the score task wrote it
        writer.write_table(other)
        writer.add_key_value_metadata(
            {FOOTER_KEY: pq.read_metadata(pa.BufferReader(published)).metadata[FOOTER_KEY]}
        )
    assert read_scores_manifest(job["output"]) == manifest  # the footer alone says it is the same day
    recorded, rewritten = json.loads(saved)["digests"]["part.parquet"], _sha(part)
    again = core.score(spec, job, {"dag_id": "digits_score", "run_id": "scheduled__fourth"})
    assert again["cache"]["hit"] is False and again["cache"]["miss"] == (
        f"part.parquet is not what run scheduled__third wrote (sha256 {recorded[:12]} then, "
        f"sha256 {rewritten[:12]} now)"
    )
    assert pq.read_table(part).column("prediction").to_pylist() == predicted  # scored again
    for name, data in kept.items():
        (folder / name).write_bytes(data)
    assert core.cached(spec, job).hit


def _a_hit_checks_the_scores_it_reuses(spec, job, folder: Path) -> None:
    """The day scored since with ``score.cache`` off (another version's scores published, the entry left as
    it was): the entry holds this key and its files are there, but the part is not what the entry's run
    wrote: a miss saying so. An entry edited to record the new part's sha256 as well is checked against
    the part's manifest, which is of another version: a miss saying so, the entry removed, never the other
    version's scores reused. A part with no manifest in its footer is a miss saying so, whole."""
    import pyarrow.parquet as pq

    from freestack import step_cache
    from freestack.score import core

    entry, part = folder / "_cache.json", folder / "part.parquet"
    saved = entry.read_bytes()
    off = spec.model_copy(update={"score": spec.score.model_copy(update={"cache": False})})
    core.score(off, {**job, "version": "v-other", "version_uri": OTHER.as_uri()}, RUN)
    found = core.cached(spec, job)
    assert found is not None and found.miss.startswith("part.parquet is not what run scheduled__third wrote")

    def edited(**digests: str) -> step_cache.Lookup:
        """The lookup of the entry edited to record these digests."""
        doc = json.loads(saved)
        doc["digests"].update(digests)
        entry.write_text(json.dumps(doc))
        found = core.cached(spec, job)
        assert found is not None and found.hit  # the entry alone would be reused
        return found

    found = edited(**{"part.parquet": _sha(part), "_manifest.json": _sha(folder / "_manifest.json")})
    assert core._reused(job, found) is None and not entry.exists()
    assert found.miss == (
        "the manifest of part.parquet records other inputs than these "
        f"(recorded -> now: version v-other -> {job['version']})"
    )
    pq.write_table(pq.read_table(part).replace_schema_metadata(None), part)  # no manifest in its footer
    found = edited(**{"part.parquet": _sha(part), "_manifest.json": _sha(folder / "_manifest.json")})
    assert core._reused(job, found) is None
    assert found.miss == (
        "the published scores cannot be read: part.parquet has no scores manifest in its footer "
        "(key freestack.scores): it was not written by the score task"
    )
    entry.write_bytes(saved)


def _no_model(uri, device="auto"):
    raise AssertionError(f"a cache hit loaded {uri}")
