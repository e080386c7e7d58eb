"""An LLM judge's gate promotes a preference-tuned model, under dag.test(): the pipeline of
tests/dags/test_preference_dag.py (a tiny causal LM carelessly instruction-tuned, then DPO on landed
prompt/chosen/rejected pairs) with ``gate.judge`` pointing at the stand-in judge
(tests/unit/evaluate/judge_standin.py: 5 for an answer equal to the reference, 1 otherwise; pairwise it
prefers the answer equal to the reference).

A first run keeps the starting model (one epoch at a vanishing learning rate) and becomes production,
judged pointwise: its judge score and the judge's agreement with exact match are in its evaluation. A
second run preference-tunes it for real and is judged pairwise against production with ``min_win_rate``:
it answers the reference more often, wins, and the gate promotes it, its reasons naming the win rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.dags.test_preference_dag import _base_exact_match, _ingest, dpo_spec
from tests.support.serving import needs_serving_env
from tests.unit.evaluate.judge_standin import PAIR_RUBRIC, RUBRIC, StandinJudge

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("airflow_db"), needs_serving_env]
NAME = "judgedprefs"
CONF = {"end_ds": "2026-11-03", "sweep": False}


def judged_spec(base: Path, url: str, mode: str) -> dict:
    """The DPO spec with the stand-in judge: pointwise (no judge rule: the first model's figures only) or
    pairwise against production with ``min_win_rate`` 0.5."""
    spec = dpo_spec(base, NAME)
    judge = {
        "url": url,
        "model": "fair",
        "mode": mode,
        "rubric": RUBRIC if mode == "pointwise" else PAIR_RUBRIC,
    }
    spec["gate"] = {"metric": "exact_match", "threshold": 0.2, "judge": judge}
    if mode == "pairwise":
        spec["gate"]["min_win_rate"] = 0.5
    return spec


@pytest.fixture
def judged(tmp_path, storage, monkeypatch):
    from datetime import date

    from tests.support.hf_tiny import tiny_causal_lm
    from tests.support.preference import landing_pairs, preference_pairs, sft_base

    judge = StandinJudge()
    base = sft_base(tiny_causal_lm(tmp_path / "lm"), tmp_path / "sft", preference_pairs(300, seed=1))
    specs = tmp_path / "pipelines"
    specs.mkdir()
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    root = Path(storage.removeprefix("file://"))
    landing_pairs(root, NAME, date(2026, 11, 1), 3, rows=150)
    yield {"root": root, "base": base, "specs": specs, "judge": judge}
    judge.stop()


def _bag(p: dict, mode: str):
    """The DAGs of the pipeline whose spec judges in ``mode`` (the spec file rewritten, the DAGs parsed)."""
    from airflow.dag_processing.dagbag import DagBag

    spec = judged_spec(p["base"], p["judge"].url, mode)
    (p["specs"] / f"{NAME}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


def _production(root: Path) -> tuple[Path, dict]:
    """Production's version folder and its lineage."""
    from freestack.serving.records import Deployments

    version = root / "registry" / NAME / Deployments(root.as_uri(), NAME).get(NAME)["version"]
    return version, json.loads((version / "lineage.json").read_text())


def _first_model_judged_pointwise(p: dict) -> Path:
    """Run 1: the starting model, barely trained, judged pointwise and promoted (no production yet)."""
    bag = _bag(p, "pointwise")
    p["bag"] = bag
    _ingest(p, NAME)
    run = bag.get_dag(f"{NAME}_train").test(run_conf={**CONF, "epochs": 1, "learning_rate": 1e-9})
    assert run.state == "success"
    version, lineage = _production(p["root"])
    assert lineage["gate"]["decision"] == "promote" and lineage["gate"]["judge"]["mode"] == "pointwise"
    first = json.loads((version / "evaluation" / "metrics.json").read_text())["candidate"]
    items = json.loads((version / "evaluation" / "judge.json").read_text())["items"]
    right = [it["candidate"]["answer"].strip() == it["reference"].strip() for it in items]
    assert first["judge_exact_agreement"] == 1.0 and first["judge_judged"] == len(items)
    assert lineage["evaluation"]["candidate"]["judge_exact_agreement"] == 1.0
    assert first["judge_score"] == pytest.approx((5 * sum(right) + len(right) - sum(right)) / len(right))
    print(
        f"production (starting model): exact match {first['exact_match']:.3f}, judge_score "
        f"{first['judge_score']:.3f} on {len(items)} prompts, judge_exact_agreement {first['judge_exact_agreement']}"
    )
    return version


def test_the_judge_promotes_a_preference_tuned_model_over_its_starting_model(judged):
    from freestack.evaluate.text_generation import exact_match
    from freestack.serving.local import stop_local

    p = judged
    try:
        first = _first_model_judged_pointwise(p)
        smoke = json.loads((first / "evaluation" / "smoke.json").read_text())
        start = exact_match(smoke["labels"], smoke["outputs"])
        assert start == pytest.approx(_base_exact_match(p["base"], smoke), abs=0.05)  # the starting model
        run = _bag(p, "pairwise").get_dag(f"{NAME}_train").test(run_conf=CONF)
        assert run.state == "success"
        version, lineage = _production(p["root"])
        assert version != first and lineage["objective"]["name"] == "dpo"
        evaluation = json.loads((version / "evaluation" / "metrics.json").read_text())
        assert evaluation["champion_version"] == first.name
        cand = evaluation["candidate"]
        record = json.loads((version / "evaluation" / "judge.json").read_text())
        assert record["status"] == "judged" and len(record["items"]) == cand["judge_judged"]
        wins, ties, losses = (cand[f"judge_{k}"] for k in ("wins", "ties", "losses"))
        assert wins > losses and cand["judge_failures"] == 0 and cand["judge_orders_agree"] == 1.0
        assert cand["judge_win_rate"] == pytest.approx((wins + ties / 2) / (wins + ties + losses))
        assert cand["judge_win_rate"] >= 0.5 and cand["exact_match"] > evaluation["champion"]["exact_match"]
        figures = ("judge_win_rate", "judge_win_rate_low", "judge_win_rate_high", "judge_wins", "judge_ties")
        assert {k: lineage["evaluation"]["candidate"][k] for k in (*figures, "judge_losses")} == {
            k: cand[k] for k in (*figures, "judge_losses")
        }
        assert lineage["evaluation"]["champion_version"] == first.name
        # the stand-in's verdicts are exact match's: a win where only the candidate answers the reference
        for it in record["items"]:
            mine, theirs = (it[k].strip() == it["reference"].strip() for k in ("candidate", "champion"))
            assert it["outcome"] == ("win" if mine > theirs else "loss" if mine < theirs else "tie"), it
        gate = lineage["gate"]
        assert gate["decision"] == "promote" and gate["judge"]["mode"] == "pairwise", gate
        reason = next(r for r in gate["reasons"] if r.startswith("judge_win_rate"))
        assert reason.startswith(f"judge_win_rate {cand['judge_win_rate']:.4f} ≥ 0.5000 (min_win_rate")
        assert f"{wins} wins, {ties} ties, {losses} losses" in reason and reason.endswith(": pass")
        tuned_smoke = json.loads((version / "evaluation" / "smoke.json").read_text())
        tuned = exact_match(tuned_smoke["labels"], tuned_smoke["outputs"])
        print(
            f"DPO vs production, judged pairwise on {cand['judge_judged']} prompts: win rate "
            f"{cand['judge_win_rate']:.3f} (95% CI {cand['judge_win_rate_low']:.3f}-"
            f"{cand['judge_win_rate_high']:.3f}; {wins} wins, {ties} ties, {losses} losses); "
            f"exact match {start:.3f} -> {tuned:.3f}"
        )
    finally:
        stop_local(p["root"].as_uri(), NAME, NAME)
