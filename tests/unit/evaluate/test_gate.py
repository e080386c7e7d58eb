"""Evaluation on the held-out split, and the promotion gate's decisions."""

from __future__ import annotations

import json
from datetime import date

import pytest

from freestack.evaluate.gate import GateSpec, decide, decision_note

CLS = {"task": "classification", "accuracy": 0.95, "macro_f1": 0.94, "log_loss": 0.20}


def test_a_first_model_is_promoted_if_it_meets_the_threshold():
    assert decide(GateSpec(threshold=0.9), CLS, None)["promote"]
    blocked = decide(GateSpec(threshold=0.97), CLS, None)
    assert not blocked["promote"] and blocked["threshold"] == 0.97
    assert blocked["reasons"][0] == "accuracy 0.9500 < 0.9700 (threshold, higher is better): block"
    assert "no production model yet" in blocked["reasons"][1]


def test_rules_on_the_candidates_costs_give_their_figures():
    costs = {"model_mb": 0.21, "train": {"cost": 0.0125, "currency": "EUR"}}
    gate = GateSpec(threshold=0.9, max_model_mb=0.25, max_train_cost=0.01)
    blocked = decide(gate, CLS, None, costs)
    assert not blocked["promote"] and blocked["reasons"][-2:] == [
        "model_mb 0.2100 ≤ 0.2500 MB (max_model_mb): pass",
        "train cost 0.0125 > 0.0100 EUR (max_train_cost): block",
    ]
    assert decide(gate.model_copy(update={"max_train_cost": 0.02}), CLS, None, costs)["promote"]
    unmeasured = decide(gate, CLS, None, None)  # a version trained before freestack measured costs
    assert not unmeasured["promote"] and unmeasured["reasons"][-1] == (
        "train cost: not recorded by this version (max_train_cost 0.01): retrain it to measure it: block"
    )
    assert decide(GateSpec(threshold=0.9), CLS, None, None)["promote"]  # no rule on costs: none needed


def test_rules_on_serving_costs_give_the_figures_and_compare_with_production_as_a_fraction():
    serving = {"latency_p99_ms": 1.8, "peak_memory_mb": 900.0}
    costs = {"model_mb": 0.2, "serving": serving}
    gate = GateSpec(threshold=0.9, max_latency_p99_ms=2, max_peak_memory_mb=800)
    blocked = decide(gate, CLS, None, costs)
    assert not blocked["promote"] and blocked["reasons"][-2:] == [
        "latency_p99 1.8000 ≤ 2.0000 ms (max_latency_p99_ms): pass",
        "serving peak memory 900.0000 > 800.0000 MB (max_peak_memory_mb): block",
    ]
    # max_regression on a serving figure: a fraction of production's, measured in the same evaluation
    slower = GateSpec(threshold=0.9, max_regression={"latency_p99": 0.2, "log_loss": 0.05})
    champion = {"serving": {"latency_p99_ms": 1.6}}
    ok = decide(slower, CLS, CLS, costs, champion)
    assert ok["promote"] and ok["reasons"][-1] == (
        "latency_p99_ms 1.8 vs production 1.6: 12.5% more (allowed: up to 20% more, max_regression.latency_p99): pass"
    ), ok["reasons"]
    too_slow = decide(slower, CLS, CLS, costs, {"serving": {"latency_p99_ms": 1.4}})
    assert not too_slow["promote"] and "28.6% more" in too_slow["reasons"][-1]
    assert decide(slower, CLS, None, costs)["promote"]  # a first model: nothing to compare with
    # a candidate whose server could not be measured is blocked by a rule on it, saying why
    failed = {"serving": {"error": "the model server exited with code 1"}}
    unmeasured = decide(gate, CLS, None, failed)
    assert unmeasured["reasons"][-2] == (
        "latency_p99: not recorded by this version (max_latency_p99_ms 2): not measured (the model server "
        "exited with code 1): evaluate it with deploy.measure.enabled (and FREESTACK_MEASURE_SERVING on): block"
    )
    missing = decide(slower, CLS, CLS, costs, {"serving": {"error": "x"}})
    assert (
        missing["reasons"][-1]
        == "latency_p99: production has no latency_p99_ms to compare (max_regression.latency_p99): block"
    )


def test_better_is_promoted_and_worse_is_blocked_with_reasons():
    champ = {**CLS, "accuracy": 0.94}
    ok = decide(GateSpec(min_improvement=0.005), CLS, champ)
    assert ok["promote"] and ok["delta"] == pytest.approx(0.01)
    assert (
        ok["reasons"][-1]
        == "accuracy 0.9500 vs production 0.9400: better by 0.0100 (needed: better by ≥ 0.0050): pass"
    )
    worse = decide(GateSpec(min_improvement=0.0), {**CLS, "accuracy": 0.93}, champ)
    assert not worse["promote"]
    assert (
        worse["reasons"][-1]
        == "accuracy 0.9300 vs production 0.9400: worse by 0.0100 (needed: no worse): block"
    )
    # relative: 2% of 0.94 is 0.0188 > the 0.01 gained
    rel = decide(GateSpec(min_improvement=0.02, improvement="relative"), CLS, champ)
    assert not rel["promote"]
    assert rel["reasons"][-1] == (
        "accuracy 0.9500 vs production 0.9400: better by 0.0100 (needed: better by ≥ 0.0188, 2% of 0.9400): block"
    )
    # a secondary metric may not regress beyond its allowance (log_loss: lower is better)
    reg = decide(GateSpec(max_regression={"log_loss": 0.05}), CLS, {**champ, "log_loss": 0.10})
    assert not reg["promote"]
    assert (
        reg["reasons"][-1]
        == "log_loss 0.2000 vs production 0.1000: worse by 0.1000 (allowed: up to 0.0500 worse): block"
    )


def test_minimize_metrics_and_regression():
    cand = {"task": "regression", "rmse": 1.0, "mae": 0.8, "r2": 0.9}
    assert decide(GateSpec(threshold=1.5), cand, None)["promote"]  # rmse <= 1.5
    assert not decide(GateSpec(threshold=0.5), cand, None)["promote"]
    assert decide(GateSpec(), cand, {**cand, "rmse": 1.2})["promote"]
    assert not decide(GateSpec(), cand, {**cand, "rmse": 0.9})["promote"]


def test_the_threshold_reads_in_the_metrics_direction():
    """``threshold`` is a ceiling for a minimized metric and a floor for a maximized one, and the reason
    says which, with the comparison sign the way the metric goes (issue 23.6: min_value acted as a
    maximum for rmse)."""
    reg = {"task": "regression", "rmse": 47.8, "mae": 30.0, "r2": 0.8}
    gate = GateSpec(metric="rmse", threshold=50)
    passed = decide(gate, reg, None)
    assert passed["promote"] and passed["direction"] == "minimize" and passed["threshold"] == 50.0
    assert passed["reasons"][0] == "rmse 47.8000 ≤ 50.0000 (threshold, lower is better): pass"
    blocked = decide(gate, {**reg, "rmse": 52.0}, None)
    assert not blocked["promote"] and blocked["decision"] == "block"
    assert blocked["reasons"][0] == "rmse 52.0000 > 50.0000 (threshold, lower is better): block"
    assert decide(gate, {**reg, "rmse": 50.0}, None)["promote"]  # the bar itself passes

    acc = GateSpec(metric="accuracy", threshold=0.9)
    low = decide(acc, {**CLS, "accuracy": 0.87}, None)
    assert (
        not low["promote"]
        and low["reasons"][0] == "accuracy 0.8700 < 0.9000 (threshold, higher is better): block"
    )
    high = decide(acc, CLS, None)
    assert (
        high["promote"]
        and high["reasons"][0] == "accuracy 0.9500 ≥ 0.9000 (threshold, higher is better): pass"
    )


def test_comparisons_with_production_say_better_or_worse_and_by_how_much():
    reg = {"task": "regression", "rmse": 47.8, "mae": 30.0, "r2": 0.8}
    better = decide(
        GateSpec(metric="rmse", threshold=50, max_regression={"mae": 1.0}), reg, {**reg, "rmse": 49.1}
    )
    assert better["promote"] and better["delta"] == pytest.approx(1.3)
    assert better["reasons"] == [
        "rmse 47.8000 ≤ 50.0000 (threshold, lower is better): pass",
        "rmse 47.8000 vs production 49.1000: better by 1.3000 (needed: no worse): pass",
        "mae 30.0000 vs production 30.0000: unchanged (allowed: up to 1.0000 worse): pass",
    ]
    cls = {**CLS, "log_loss": 0.31}
    allowed = decide(
        GateSpec(max_regression={"log_loss": 0.05}), cls, {**cls, "accuracy": 0.94, "log_loss": 0.29}
    )
    assert allowed["promote"]
    assert (
        allowed["reasons"][-1]
        == "log_loss 0.3100 vs production 0.2900: worse by 0.0200 (allowed: up to 0.0500 worse): pass"
    )
    improved = decide(
        GateSpec(max_regression={"log_loss": 0.0}), cls, {**cls, "accuracy": 0.94, "log_loss": 0.4}
    )
    assert (
        improved["reasons"][-1]
        == "log_loss 0.3100 vs production 0.4000: better by 0.0900 (allowed: no worse): pass"
    )
    for d in (better, allowed, improved):
        assert not any("not worse by" in r or "champion" in r for r in d["reasons"])


def _regression_spec(gate: dict) -> dict:
    return {
        "name": "x",
        "source": {
            "schema": {
                "key": "id",
                "target": "y",
                "columns": [
                    {"name": "id", "nullable": False},
                    {"name": "f", "type": "float"},
                    {"name": "y", "type": "float"},
                ],
            }
        },
        "gate": gate,
    }


@pytest.mark.parametrize(
    "gate, words",
    [
        ({"metric": "rmse", "min_value": 50}, "rmse is minimized (lower is better)"),
        ({"metric": "mae", "min_value": 3.5}, "write `threshold: 3.5`"),
        ({"metric": "log_loss", "min_value": 0.3}, "write `threshold: 0.3`"),
        ({"direction": "minimize", "min_value": 0.5}, "the metric is minimized"),
        ({"min_value": 50}, "the gate names no metric"),
    ],
)
def test_min_value_is_refused_where_it_would_be_a_ceiling(gate, words):
    """The old name reads as a floor; on a minimized metric it was a ceiling. The spec is refused when
    it is read, naming the field, its value and the fix, not quietly gated the other way."""
    from freestack.errors import SpecError
    from freestack.spec import parse_spec

    with pytest.raises(SpecError) as info:
        parse_spec(_regression_spec(gate), "x.yaml")
    msg = str(info.value)
    assert msg.startswith(f"x.yaml: gate.min_value: min_value {gate['min_value']:g} "), msg
    assert "threshold" in msg and words in msg


def test_min_value_on_a_maximized_metric_is_the_threshold():
    gate = GateSpec(metric="accuracy", min_value=0.9)
    assert gate.threshold == 0.9 and "min_value" not in gate.model_dump()
    assert (
        decide(gate, CLS, None)["reasons"][0]
        == "accuracy 0.9500 ≥ 0.9000 (threshold, higher is better): pass"
    )
    assert GateSpec(direction="maximize", min_value=0.9).threshold == 0.9


@pytest.mark.parametrize(
    "gate, message",
    [
        ({"metric": "auc"}, "gate metric 'auc' is unknown"),
        ({"min_improvement": -1}, "min_improvement: Input should be greater than or equal to 0"),
        ({"approval": "maybe"}, "approval: Input should be 'none' or 'required'"),
        ({"max_regression": {"log_loss": -0.1}}, "non-negative"),
        ({"max_regression": {"latency": 0.1}}, "gate.max_regression names 'latency', which is unknown"),
        ({"max_latency_p99_ms": 0}, "max_latency_p99_ms: Input should be greater than 0"),
        ({"threshold": "high"}, "threshold: Input should be a valid number"),
        (
            {"metric": "accuracy", "threshold": 0.9, "min_value": 0.8},
            "gate.min_value: min_value 0.8 and threshold 0.9 name the same bar twice",
        ),
        (
            {"metric": "rmse", "direction": "maximize"},
            "gate.direction: maximize contradicts rmse (lower is better)",
        ),
    ],
)
def test_bad_gate_blocks_fail_clearly(tmp_path, gate, message):
    from freestack.errors import SpecError
    from freestack.spec import load_spec
    from tests.support.sweeps import write_spec

    path = write_spec(tmp_path, {"method": "grid", "parameters": {"learning_rate": {"values": [0.01]}}})
    import yaml

    data = yaml.safe_load(path.read_text())
    data["gate"] = gate
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert f"{path}: gate" in str(info.value) and message in str(info.value)


def test_evaluation_scores_the_trainers_test_split_and_writes_a_report(tmp_path, storage, monkeypatch):
    from demo.landing import make_landing
    from freestack.evaluate.core import evaluate
    from freestack.ingest.core import ingest_partition
    from freestack.spec import load_spec
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train
    from freestack.train.request import TrainRequest
    from tests.support.sweeps import ROOT

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    make_landing(storage, date(2026, 11, 1), 2)
    for ds in ("2026-11-01", "2026-11-02"):
        ingest_partition(spec, ds)
    off = WandbSettings(mode="disabled")
    a = train(spec, TrainRequest(end_ds="2026-11-02", epochs=3, run_key="a"), tracking_settings=off)
    b = train(
        spec,
        TrainRequest(end_ds="2026-11-02", epochs=1, learning_rate=1e-4, run_key="b"),
        tracking_settings=off,
    )
    summary = evaluate(spec, a.version_uri, champion_uri=b.version_uri, tracking_settings=off)
    # the same rows the trainer held out: the same accuracy as its own test metrics
    assert summary["candidate"]["accuracy"] == pytest.approx(a.metrics["test_accuracy"])
    assert summary["champion"]["accuracy"] == pytest.approx(b.metrics["test_accuracy"])
    assert summary["candidate"]["rows"] == summary["champion"]["rows"] > 0
    cm = summary["candidate"]["confusion_matrix"]
    assert sum(map(sum, cm["matrix"])) == summary["candidate"]["rows"]
    assert set(summary["candidate"]["per_class"]) == {str(i) for i in range(10)}
    folder = tmp_path / "storage" / a.version_uri.split("/storage/", 1)[1] / "evaluation"
    assert {p.name for p in folder.iterdir()} == {
        "metrics.json",
        "report.html",
        "confusion_matrix.png",
        "per_class.png",
        "learning_curves.png",
        "smoke.json",
        "_cache.json",  # the step cache's entry (freestack.step_cache)
    }
    smoke = json.loads((folder / "smoke.json").read_text())  # the rows deploy's smoke test sends
    assert len(smoke["rows"]) == len(smoke["outputs"]) == len(smoke["labels"]) > 0
    assert len(smoke["rows"][0]) == 64 and smoke["classes"] == [str(i) for i in range(10)]
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "champion" in page and "<script" not in page
    assert (
        json.loads((folder / "metrics.json").read_text())["candidate"]["accuracy"]
        == summary["candidate"]["accuracy"]
    )
    decision = decide(GateSpec(), summary["candidate"], summary["champion"])
    assert decision["promote"] == (summary["candidate"]["accuracy"] >= summary["champion"]["accuracy"])


def test_regression_report_and_plots():
    import numpy as np

    from freestack.evaluate.measure import regression_report
    from freestack.evaluate.report import plots, render_html

    rng = np.random.default_rng(0)
    y = rng.normal(10, 3, 400)
    pred = y + rng.normal(0, 0.5, 400)
    rep = regression_report(y, pred)
    assert rep["rmse"] == pytest.approx(0.5, rel=0.15) and rep["r2"] > 0.95
    assert rep["mae"] < rep["rmse"] and abs(rep["residuals"]["mean"]) < 0.1
    assert rep["residuals"]["quantiles"]["p05"] < 0 < rep["residuals"]["quantiles"]["p95"]
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_rmse": 2 / e} for e in range(1, 6)]
    images = plots(rep, history, None)
    assert set(images) == {"residuals.png", "learning_curves.png"}
    assert all(b[:8] == b"\x89PNG\r\n\x1a\n" for b in images.values())
    page = render_html(
        "t",
        {
            "version": "v1",
            "window": {},
            "candidate": {k: v for k, v in rep.items() if k != "_points"},
            "champion": None,
        },
        images,
    )
    assert page.count("data:image/png;base64,") == 2 and "rmse" in page


def test_decision_notes():
    from freestack.evaluate.gate import NOTE_LIMIT, decision_note

    champ = {**CLS, "accuracy": 0.96}
    worse = decide(GateSpec(max_regression={"log_loss": 0.05}), {**CLS, "log_loss": 0.4}, champ)
    worse.update(candidate_version="v2", champion_version="v1")
    note = decision_note(worse, "digits")
    assert note.startswith(
        "**Gate: blocked.** Candidate `v2` of `digits` stays out of production (`v1` keeps serving)"
    )
    assert "accuracy 0.9500 vs 0.9600 for production `v1`" in note
    assert "- accuracy 0.9500 vs production 0.9600: worse by 0.0100 (needed: no worse): block" in note
    assert (
        "- log_loss 0.4000 vs production 0.2000: worse by 0.2000 (allowed: up to 0.0500 worse): block" in note
    )
    assert note.endswith("`promote` and `deploy` were skipped.")

    better = decide(GateSpec(), CLS, {**CLS, "accuracy": 0.9})
    better.update(candidate_version="v3", champion_version="v1")
    assert decision_note(better, "digits") == (
        "**Gate: passed.** Candidate `v3` of `digits` goes on to `promote`: accuracy 0.9500 vs 0.9000 for production `v1`."
    )
    first = decide(GateSpec(approval="required"), CLS, None)
    first.update(candidate_version="v1", champion_version=None)
    assert "awaiting approval" in decision_note(
        first, "digits"
    ) and "(no production model yet)" in decision_note(first, "d")

    worse["reasons"] = [f"reason {i} " + "x" * 80 for i in range(30)]  # Airflow keeps 1000 characters
    long = decision_note(worse, "digits")
    assert (
        len(long) <= NOTE_LIMIT
        and "every reason is in the gate task's log" in long
        and long.endswith("skipped.")
    )


# ---------------------------------------------------------------------------------------------------------
# the judge's rules (gate.judge, freestack.judging)

JUDGE = {"url": "http://127.0.0.1:8090/v1", "model": "judge"}
GEN = {"task": "generation", "perplexity": 3.0, "loss": 1.1, "exact_match": 0.5, "rouge_l": 0.6}
WHO = {
    "status": "judged",
    "url": JUDGE["url"],
    "model": "judge",
    "mode": "pointwise",
    "served_by": "judge:v3",
}


def _pointwise(score: float) -> dict:
    return {**GEN, "judge_score": score, "judge_judged": 16, "judge_failures": 1, "judge": WHO}


def test_min_judge_score_and_the_drop_from_production_name_the_judges_figures():
    gate = GateSpec(judge=JUDGE, min_judge_score=3.5, max_regression={"judge_score": 0.25})
    first = decide(gate, _pointwise(3.75), None)
    assert (
        first["promote"] and first["judge"] == WHO
    )  # the judge's identity goes to lineage with the decision
    assert first["reasons"][-1] == (
        "judge_score 3.7500 ≥ 3.5000 (min_judge_score; mean 1-5 of 16 prompts judged by judge at "
        "http://127.0.0.1:8090/v1, 1 failed): pass"
    )
    low = decide(gate, _pointwise(3.25), None)
    assert not low["promote"] and low["reasons"][-1].startswith(
        "judge_score 3.2500 < 3.5000 (min_judge_score;"
    )
    champ = {**_pointwise(4.25), "perplexity": 3.1}
    dropped = decide(gate, _pointwise(3.75), champ)
    assert not dropped["promote"]
    assert dropped["reasons"] == [
        "perplexity 3.0000 vs production 3.1000: better by 0.1000 (needed: no worse): pass",
        "judge_score 3.7500 ≥ 3.5000 (min_judge_score; mean 1-5 of 16 prompts judged by judge at "
        "http://127.0.0.1:8090/v1, 1 failed): pass",
        "judge_score 3.7500 vs production 4.2500: worse by 0.5000 (judge; allowed: up to 0.2500 lower): block",
    ]
    assert decide(gate, _pointwise(4.125), champ)["promote"]  # 0.125 lower: allowed


def test_min_win_rate_names_the_interval_wins_ties_and_losses():
    gate = GateSpec(judge={**JUDGE, "mode": "pairwise"}, min_win_rate=0.6)
    cand = {
        **GEN,
        "judge_win_rate": 0.5625,
        "judge_win_rate_low": 0.3318,
        "judge_win_rate_high": 0.7695,
        "judge_wins": 7,
        "judge_ties": 4,
        "judge_losses": 5,
        "judge_judged": 16,
        "judge_failures": 0,
        "judge": {**WHO, "mode": "pairwise"},
    }
    blocked = decide(gate, cand, GEN)
    assert not blocked["promote"]
    assert blocked["reasons"][-1] == (
        "judge_win_rate 0.5625 < 0.6000 (min_win_rate; 95% CI 0.3318-0.7695; 7 wins, 4 ties, 5 losses of 16 "
        "prompts asked in both orders by judge at http://127.0.0.1:8090/v1, 0 failed): block"
    )
    assert "judge_win_rate 0.5625" in decision_note(
        {**blocked, "candidate_version": "v2", "champion_version": "v1"}, "chat"
    )
    first = decide(
        gate, {**GEN, "judge": {**WHO, "status": "skipped", "reason": "no production model to compare"}}, None
    )
    assert first["promote"] and first["reasons"][-1] == (
        "gate.min_win_rate not checked: no production model to compare: pass"
    )


def test_a_judge_outage_passes_only_by_rule_and_missing_figures_are_an_error():
    gate = GateSpec(judge={**JUDGE, "on_judge_error": "pass"}, min_judge_score=4)
    down = {
        **GEN,
        "judge": {**WHO, "status": "unavailable", "reason": "the judge at gate.judge.url x did not answer"},
    }
    passed = decide(gate, down, None)
    assert passed["promote"] and passed["reasons"][-1] == (
        "gate.min_judge_score not checked: the judge at gate.judge.url x did not answer "
        "(gate.judge.on_judge_error: pass): pass"
    )
    with pytest.raises(ValueError, match="no judge figures for gate.min_judge_score"):
        decide(gate, GEN, None)
    assert decide(GateSpec(judge=JUDGE), GEN, None)["promote"]  # a judge without rules: figures only


def test_judge_rules_without_a_judge_or_in_the_wrong_mode_are_refused():
    for gate, says in [
        ({"min_judge_score": 4}, "gate.min_judge_score needs a judge"),
        ({"judge": JUDGE, "min_win_rate": 0.5}, "gate.min_win_rate reads judge_win_rate"),
        ({"judge": JUDGE, "metric": "judge_score"}, "gate.metric judge_score is a judge's figure"),
        ({"judge": JUDGE, "max_regression": {"judge_win_rate": 0.1}}, "measured against production already"),
    ]:
        with pytest.raises(ValueError, match=says):
            GateSpec(**gate)
