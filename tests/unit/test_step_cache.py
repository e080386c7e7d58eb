"""freestack.step_cache's words for a miss and its check of a hit, as evaluate and score use them: an entry keeps
its inputs in words (:class:`freestack.step_cache.Shown`), so a later miss says what changed in them, and the
outputs a hit would reuse are checked against the sha256 each was written with and against what they record
of their own inputs (no model, no files but the entry's and its outputs)."""

from __future__ import annotations

from freestack import step_cache

RUN = {"run_id": "manual__first"}


def _shown(version: str, days: dict[str, str], blocks: dict[str, str]) -> dict[str, step_cache.Shown]:
    return {
        "champion": step_cache.Shown(value=version),
        "partitions": step_cache.Shown(items=days, gone="left the window"),
        "spec": step_cache.Shown(items=blocks, changed="other settings"),
    }


def _inputs(shown: dict[str, step_cache.Shown]) -> dict[str, str]:
    return {name: step_cache.digest(s.model_dump()) for name, s in shown.items()}


def test_a_miss_says_what_changed_in_the_inputs_the_entry_keeps_in_words(tmp_path):
    folder = tmp_path.as_uri()
    (tmp_path / "out.json").write_text("{}")
    days = {f"2026-11-0{d}": f"sha{d}" for d in range(1, 4)}
    before = _shown("v1", days, {"gate": "g1", "train": "t1"})
    first = step_cache.lookup("evaluate", folder, _inputs(before), shown=before)
    assert first.miss == step_cache.FIRST
    step_cache.save(first, RUN, ["out.json"])
    assert step_cache.lookup("evaluate", folder, _inputs(before), shown=before).hit

    def miss(now: dict[str, step_cache.Shown]) -> str | None:
        return step_cache.lookup("evaluate", folder, _inputs(now), shown=now).miss

    assert (
        miss(_shown("v2", days, before["spec"].items)) == "champion changed since run manual__first: v1 -> v2"
    )
    moved = {"2026-11-02": "other", "2026-11-03": "sha3", "2026-11-04": "sha4"}
    assert miss(_shown("v1", moved, before["spec"].items)) == (
        "partitions changed since run manual__first: "
        "2026-11-02 (other bytes), 2026-11-04 (new), 2026-11-01 (left the window)"
    )
    assert miss(_shown("v2", days, {"gate": "g2", "train": "t1"})) == (
        "champion, spec changed since run manual__first: champion v1 -> v2; spec gate (other settings)"
    )
    many = {f"2026-12-{d:02}": "x" for d in range(1, 8)}
    assert miss(_shown("v1", many, before["spec"].items)) == (
        "partitions changed since run manual__first: 2026-12-01 (new), 2026-12-02 (new), 2026-12-03 (new), "
        "2026-12-04 (new), 2026-12-05 (new), and 5 more"
    )
    assert miss({**before, "base": step_cache.Shown(value="b")}) == "base changed since run manual__first"


def test_a_hit_is_checked_against_what_its_outputs_record():
    shown = _shown("v1", {"2026-11-01": "sha1", "2026-11-02": "sha2"}, {})
    found = step_cache.Lookup("evaluate", "file:///x", step_cache.ENTRY, "k" * 64, {}, None, None, shown)
    names_only = step_cache.Shown(items={"2026-11-01": "", "2026-11-02": ""})  # what metrics.json records
    recorded = {"champion": step_cache.Shown(value="v1"), "partitions": names_only}
    assert step_cache.not_of(found, recorded, "k" * 64, "metrics.json") is None
    assert step_cache.not_of(
        found, {**recorded, "champion": step_cache.Shown(value="v0")}, "k" * 64, "metrics.json"
    ) == ("metrics.json records other inputs than these (recorded -> now: champion v0 -> v1)")
    assert step_cache.not_of(found, recorded, "0" * 64, "metrics.json") == (
        "metrics.json was written under key 000000000000, not by the run the cache entry names"
    )


def test_a_hit_needs_each_output_to_hold_the_bytes_recorded_when_it_was_written(tmp_path):
    """An entry records each output's sha256 as its run wrote it (a folder's: each file's); an output
    rewritten since (the entry left as it was), a file of a folder output removed, or an entry that
    records no digest of an output is a miss naming it, never a reuse of bytes its run did not write."""
    import json

    folder = tmp_path.as_uri()
    (tmp_path / "out.json").write_text('{"answer": 1}')
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"\x00\x01")
    inputs = {"spec": "s1"}
    first = step_cache.lookup("score", folder, inputs)
    entry = step_cache.save(first, RUN, ["out.json", "model"])
    assert set(entry.digests) == {"out.json", "model/weights.bin"}
    assert step_cache.lookup("score", folder, inputs).hit
    (tmp_path / "model" / "card.md").write_text("written into the folder later: not the run's")
    assert step_cache.lookup("score", folder, inputs).hit

    recorded = entry.digests["out.json"]
    (tmp_path / "out.json").write_text('{"answer": 2}')  # rewritten: same name, other bytes
    rewritten = step_cache.file_digest((tmp_path / "out.json").as_uri())
    assert step_cache.lookup("score", folder, inputs).miss == (
        f"out.json is not what run manual__first wrote (sha256 {recorded[:12]} then, sha256 {rewritten[:12]} now)"
    )
    (tmp_path / "out.json").write_text('{"answer": 1}')
    (tmp_path / "model" / "weights.bin").unlink()
    assert step_cache.lookup("score", folder, inputs).miss == (
        f"model/weights.bin is not what run manual__first wrote (sha256 "
        f"{entry.digests['model/weights.bin'][:12]} then, it is gone)"
    )
    (tmp_path / "model" / "weights.bin").write_bytes(b"\x00\x01")
    doc = json.loads((tmp_path / step_cache.ENTRY).read_text())
    del doc["digests"]["out.json"]  # an entry edited (its key intact) to drop what it would be checked by
    (tmp_path / step_cache.ENTRY).write_text(json.dumps(doc))
    assert step_cache.lookup("score", folder, inputs).miss == (
        "the cache entry records no sha256 of out.json: its outputs cannot be checked"
    )
