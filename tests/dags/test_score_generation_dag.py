"""<p>_score of a text-generation version under dag.test(): each prompt row of a lake day is answered
greedily through the model server's continuous batching (freestack.ml.lm.engine), and every answer equals
the version's own greedy answer computed alone, with its finish reason and token counts; rows without a
prompt, or over the prompt budget with truncate: refuse, are quarantined with their reason; the day is
published whole with its manifest, and a rescore pinned to another version replaces it whole; a day over
score.generation.max_rows publishes nothing. One day of 10,000 rows is answered whole
(about a minute on two cores)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.dags.test_sweep_dag import _states
from tests.support.generation_serving import SMOKE_PROMPTS, make_generation_version

pytestmark = pytest.mark.usefixtures("airflow_db")
ROOT = Path(__file__).resolve().parents[2]
NAME, DS = "chat", "2026-11-02"
PROMPTS = [*SMOKE_PROMPTS, "Name a colour.", "Count to three.", "What is 9 - 4?", "Spell cat.", "Say hi."]
TOKENS = 12


def _spec(score: dict) -> dict:
    """A text-generation pipeline whose lake holds prompt rows (id, prompt, response)."""
    return {
        "name": NAME,
        "start_date": "2026-11-01",
        "retries": 0,
        "source": {
            "landing": "landing/chat/{ds}/",
            "format": "csv",
            "schema": {
                "key": "id",
                "target": "response",
                "columns": [
                    {"name": "id", "type": "string", "nullable": False},
                    {"name": "prompt", "type": "text", "nullable": True},
                    {"name": "response", "type": "text", "nullable": True},
                ],
            },
        },
        "model": {
            "type": "huggingface",
            "base": "team/tiny-lm",
            "task": "text-generation",
            "data": {"prompt": "prompt", "response": "response"},
            "max_length": 96,
        },
        "score": score,
    }


@pytest.fixture
def chat(tmp_path, storage, monkeypatch):
    """Two registered versions of the chat model (v1, v2: other weights) and the pipelines folder."""
    specs = tmp_path / "pipelines"
    specs.mkdir()
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    work = tmp_path / "work"
    work.mkdir()
    v1 = make_generation_version(storage, NAME, "v1", work)
    v2 = make_generation_version(storage, NAME, "v2", work, seed=1)
    return {"specs": specs, "root": Path(storage.removeprefix("file://")), "v1": v1, "v2": v2}


def _bag(chat, **score):
    from airflow.dag_processing.dagbag import DagBag

    (chat["specs"] / f"{NAME}.yaml").write_text(yaml.safe_dump(_spec({"schedule": "@daily", **score})))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


def _lake_day(root: Path, ds: str, ids: list[str], prompts: list[str | None]) -> None:
    """A published lake partition of prompt rows (its part and the manifest's copy, as ingest writes it)."""
    from freestack.storage import sha256_of, to_path

    folder = root / "lake" / NAME / f"ds={ds}"
    folder.mkdir(parents=True)
    table = pa.table(
        {"id": ids, "prompt": pa.array(prompts, pa.string()), "response": pa.nulls(len(ids), pa.string())}
    )
    pq.write_table(table, folder / "part.parquet")
    uri = f"file://{folder / 'part.parquet'}"
    part = {"uri": uri, "sha256": sha256_of(to_path(uri)), "size": (folder / "part.parquet").stat().st_size}
    (folder / "_manifest.json").write_text(json.dumps({"ds": ds, "part": part}))


def _day(root: Path, ds: str = DS):
    folder = root / "scores" / NAME / f"ds={ds}"
    return folder, pq.read_table(folder / "part.parquet"), json.loads((folder / "_manifest.json").read_text())


def _expected(version, prompts: list[str]) -> list:
    """Each prompt's greedy answer computed alone by plain ``generate`` (the evaluation's view)."""
    return [version.answer([version.chat(p)], max_new_tokens=TOKENS)[0] for p in prompts]


def _logged_sample(root: Path) -> list[dict]:
    (logged,) = (root / "monitoring" / NAME / "requests").rglob(f"score-{NAME}.parquet")
    return pq.read_table(logged).to_pylist()


def _run(bag):
    return bag.get_dag(f"{NAME}_score").test(logical_date=datetime(2026, 11, 3, tzinfo=UTC))


def test_prompt_rows_are_answered_as_served_quarantined_and_rescored_with_a_pinned_version(chat):
    long = " ".join(["many words here"] * 40)
    ids = [f"r{i}" for i in range(len(PROMPTS))] + ["none", "empty", "long"]
    _lake_day(chat["root"], DS, ids, [*PROMPTS, None, "  ", long])
    generation = {"max_new_tokens": TOKENS, "truncate": "refuse", "max_prompt_tokens": 48}
    assert _states(_run(_bag(chat, version="v2", generation=generation))) == {
        "plan": ["success"],
        "score": ["success"],
    }
    folder, table, manifest = _day(chat["root"])
    assert table.column_names == [
        "id",
        "ds",
        "completion",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "truncated",
        "version",
        "scored_at",
    ]
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ids[: len(PROMPTS)]
    for row, want in zip(rows, _expected(chat["v2"], PROMPTS), strict=True):
        assert row["completion"] == want.text and row["finish_reason"] == want.finish_reason
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            want.prompt_tokens,
            want.completion_tokens,
        )
        assert row["version"] == "v2" and row["ds"] == DS and row["truncated"] is False
    assert any(r["completion"] for r in rows) and {r["finish_reason"] for r in rows} <= {"stop", "length"}
    sample = _logged_sample(chat["root"])  # the monitor's sample, as the model server logs requests
    assert [s["prediction"] for s in sample] == [r["completion"] for r in rows]
    assert [s["input.prompt"] for s in sample] == PROMPTS
    assert [s["finish_reason"] for s in sample] == [r["finish_reason"] for r in rows]
    assert {s["version"] for s in sample} == {"v2"} and {s["deployment"] for s in sample} == {f"{NAME}_score"}

    quarantined = pq.read_table(folder / "_quarantine.parquet").to_pylist()
    reasons = {q["id"]: q["_reason"] for q in quarantined}
    assert set(reasons) == {"none", "empty", "long"}
    assert "no prompt" in reasons["none"] and "no prompt" in reasons["empty"]
    assert "over the limit of 48" in reasons["long"] and "truncate: refuse" in reasons["long"]

    footer = json.loads(pq.read_metadata(folder / "part.parquet").metadata[b"freestack.scores"])
    assert footer == manifest
    assert (manifest["rows_in"], manifest["rows_scored"], manifest["rows_quarantined"]) == (
        len(ids),
        len(PROMPTS),
        3,
    )
    assert manifest["version"] == "v2" and manifest["task"] == "generation"
    assert manifest["generation"]["max_new_tokens"] == TOKENS and manifest["generation"]["temperature"] == 0
    assert manifest["generation"]["batching_ran"] == "padded"  # auto, on a CPU
    answers = manifest["answers"]
    assert sum(answers["finish_reasons"].values()) == len(PROMPTS)
    assert answers["completion_tokens"] == sum(r["completion_tokens"] for r in rows)

    # the day rescored with v1, pinned, by continuous batching: replaced whole with v1's answers
    continuous = {**generation, "batching": "continuous"}
    assert _states(_run(_bag(chat, version="v1", generation=continuous)))["score"] == ["success"]
    folder, again, manifest1 = _day(chat["root"])
    assert manifest1["version"] == "v1" and set(again.column("version").to_pylist()) == {"v1"}
    assert manifest1["generation"]["batching_ran"] == "continuous"
    want = [a.text for a in _expected(chat["v1"], PROMPTS)]
    assert again.column("completion").to_pylist() == want != table.column("completion").to_pylist()
    assert [s["prediction"] for s in _logged_sample(chat["root"])] == want  # the rescore's sample replaces it
    assert sorted(p.name for p in folder.iterdir()) == [
        "_cache.json",
        "_manifest.json",
        "_quarantine.parquet",
        "part.parquet",
    ]

    # over the day's cap: the day fails, the published scores stay as they were
    assert _states(_run(_bag(chat, version="v2", generation={**generation, "max_rows": 5})))["score"] == [
        "failed"
    ]
    _, kept, _ = _day(chat["root"])
    assert kept.column("version").to_pylist() == again.column("version").to_pylist()
    assert "score.generation.max_rows" in json.loads((folder / "_failed.json").read_text())["error"]


def test_a_day_of_ten_thousand_prompts_is_answered_whole(chat):
    n = 10_000
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} ({i})" for i in range(n)]
    _lake_day(chat["root"], DS, [f"r{i}" for i in range(n)], prompts)
    bag = _bag(chat, version="v1", generation={"max_new_tokens": 8, "max_requests": 128})
    started = time.perf_counter()
    assert _states(_run(bag)) == {"plan": ["success"], "score": ["success"]}
    took = time.perf_counter() - started
    _, table, manifest = _day(chat["root"])
    assert table.num_rows == manifest["rows_scored"] == n and manifest["rows_quarantined"] == 0
    sample = list(range(0, n, 997))
    want = chat["v1"].alone([chat["v1"].chat(prompts[i]) for i in sample], max_new_tokens=8)
    got = table.column("completion").to_pylist()
    assert [got[i] for i in sample] == want
    print(f"10,000 prompt rows answered in {took:.1f} s")
