"""The LLM judge inside a pipeline under dag.test(): the tutorial's instruction-tuning pipeline
(include/pipelines/arith.yaml, as tests/dags/test_instruct_dag.py trains it on a tiny Llama) with
``gate.judge`` pointing at the stand-in judge (tests/unit/evaluate/judge_standin.py: 5 for an answer equal
to the reference, 1 otherwise). The evaluation writes ``judge.json`` and the judge's figures; a
``min_judge_score`` the candidate misses blocks it with the figures in the reasons and the run's note;
the judge's identity is in the version's lineage; its verdicts agree with exact match."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from tests.dags.test_instruct_dag import arith_spec, hub  # noqa: F401 (hub: the Hub stand-in fixture)
from tests.support.runs import run_note
from tests.support.views import views_client
from tests.unit.evaluate.judge_standin import RUBRIC, StandinJudge

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("airflow_db")]
DAYS = 3


@pytest.fixture
def judged_pipeline(tmp_path, storage, monkeypatch, hub):  # noqa: F811 (the imported fixture)
    from airflow.dag_processing.dagbag import DagBag

    from demo.instructions import make_landing

    judge = StandinJudge()
    specs = tmp_path / "pipelines"
    specs.mkdir()
    spec = arith_spec("judged")
    spec["model"]["generation"]["max_rows"] = 24
    spec["gate"] = {
        "metric": "exact_match",
        "judge": {"url": judge.url, "model": "freestack", "rubric": RUBRIC},
        "min_judge_score": 5.0,  # every answer right: what this short training does not reach
    }
    (specs / "judged.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    monkeypatch.setenv("HF_ENDPOINT", hub[0].endpoint)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    root = Path(storage.removeprefix("file://"))
    make_landing(root.as_uri(), date(2026, 11, 1), DAYS, rows=200, pipeline="judged")
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    yield {"bag": bag, "root": root, "judge": judge}
    judge.stop()


def test_the_judge_scores_the_candidate_and_its_figures_block_it(judged_pipeline):
    p = judged_pipeline
    ingest = p["bag"].get_dag("judged_ingest")
    for d in range(1, DAYS + 1):
        assert ingest.test(logical_date=datetime(2026, 11, d, tzinfo=UTC)).state == "success"
    run = p["bag"].get_dag("judged_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False})
    assert run.state == "success"
    versions = [
        v for v in (p["root"] / "registry" / "judged").iterdir() if v.is_dir() and v.name != "_aliases"
    ]
    (version,) = [v for v in versions if (v / "lineage.json").exists()]
    record = json.loads((version / "evaluation" / "judge.json").read_text())
    metrics = json.loads((version / "evaluation" / "metrics.json").read_text())["candidate"]
    items = record["items"]
    assert record["status"] == "judged" and len(items) == metrics["generated_rows"] == 24
    assert metrics["judge_judged"] == 24 and metrics["judge_failures"] == 0
    right = [it["candidate"]["answer"].strip() == it["reference"].strip() for it in items]
    assert metrics["judge_score"] == pytest.approx((5 * sum(right) + (24 - sum(right))) / 24)
    # agreement with exact match: the share of prompts where the judge's verdict and exact match agree
    agree = sum((it["candidate"]["score"] >= 4) == r for it, r in zip(items, right, strict=True)) / 24
    assert agree == metrics["judge_exact_agreement"] == 1.0
    assert metrics["exact_match"] == pytest.approx(sum(right) / 24)
    print(
        f"judge agreement with exact match: {agree:.3f} on 24 prompts; exact match {metrics['exact_match']:.3f}"
    )
    assert [it["candidate"]["score"] for it in items] == sorted(it["candidate"]["score"] for it in items)
    assert 0 < metrics["judge_score"] < 5  # some wrong: blocked
    assert "judge: worst prompts first" in (version / "evaluation" / "report.html").read_text()
    lineage = json.loads((version / "lineage.json").read_text())
    gate = lineage["gate"]
    assert gate["decision"] == "block"
    assert gate["judge"]["url"] == p["judge"].url and gate["judge"]["served_by"] == "judge:v3"
    reason = gate["reasons"][-1]
    assert reason.startswith(
        f"judge_score {metrics['judge_score']:.4f} < 5.0000 (min_judge_score; mean 1-5 of 24"
    )
    assert reason.endswith(": block")
    note = run_note(run) or ""
    assert "**Gate: blocked.**" in note and f"judge_score {metrics['judge_score']:.4f} < 5.0000" in note
    assert "evaluate: cache miss: no earlier run (key " in note  # the step cache's key on the run's page
    _version_page_shows_the_judge(p, version.name, items)


def _version_page_shows_the_judge(p, version: str, items: list[dict]) -> None:
    """The version's page (the real views app) has the judge's worst prompts with their scores and
    rationales, and links judge.json."""
    import html
    import os

    from freestack.spec import load_spec

    spec = load_spec(Path(os.environ["FREESTACK_PIPELINES_DIR"]) / "judged.yaml")
    with pytest.MonkeyPatch.context() as mp, views_client(mp, str(spec.root), spec) as client:
        page = client.get(f"/models/judged/{version}")
    assert page.status_code == 200, page.text[:500]
    section = page.text[page.text.index('<section id="judge">') :]
    worst = items[0]["candidate"]
    assert "judge: worst prompts first" in section and html.escape(worst["rationale"]) in section
    assert "files/evaluation/judge.json" in section
