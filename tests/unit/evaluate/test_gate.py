"""Evaluation on the held-out split, and the promotion gate's decisions."""

from __future__ import annotations

import json
from datetime import date

import pytest

from freestack.evaluate.gate import GateSpec, decide

CLS = {"task": "classification", "accuracy": 0.95, "macro_f1": 0.94, "log_loss": 0.20}


def test_a_first_model_is_promoted_if_it_meets_the_minimum():
    assert decide(GateSpec(min_value=0.9), CLS, None)["promote"]
    blocked = decide(GateSpec(min_value=0.97), CLS, None)
    assert not blocked["promote"] and "misses the minimum 0.9700" in blocked["reasons"][0]
    assert "no production model yet" in blocked["reasons"][1]


def test_better_is_promoted_and_worse_is_blocked_with_reasons():
    champ = {**CLS, "accuracy": 0.94}
    ok = decide(GateSpec(min_improvement=0.005), CLS, champ)
    assert ok["promote"] and ok["delta"] == pytest.approx(0.01)
    worse = decide(GateSpec(min_improvement=0.0), {**CLS, "accuracy": 0.93}, champ)
    assert not worse["promote"] and "worse" in worse["reasons"][-1] and "blocked" in worse["reasons"][-1]
    # relative: 2% of 0.94 is 0.0188 > the 0.01 gained
    assert not decide(GateSpec(min_improvement=0.02, improvement="relative"), CLS, champ)["promote"]
    # a secondary metric may not regress beyond its allowance (log_loss: lower is better)
    reg = decide(GateSpec(max_regression={"log_loss": 0.05}), CLS, {**champ, "log_loss": 0.10})
    assert not reg["promote"] and "log_loss 0.2000 vs champion 0.1000: worse by 0.1000" in reg["reasons"][-1]


def test_minimize_metrics_and_regression():
    cand = {"task": "regression", "rmse": 1.0, "mae": 0.8, "r2": 0.9}
    assert decide(GateSpec(min_value=1.5), cand, None)["promote"]  # rmse <= 1.5
    assert not decide(GateSpec(min_value=0.5), cand, None)["promote"]
    assert decide(GateSpec(), cand, {**cand, "rmse": 1.2})["promote"]
    assert not decide(GateSpec(), cand, {**cand, "rmse": 0.9})["promote"]


@pytest.mark.parametrize(
    "gate, message",
    [
        ({"metric": "auc"}, "gate metric 'auc' is unknown"),
        ({"min_improvement": -1}, "min_improvement: Input should be greater than or equal to 0"),
        ({"approval": "maybe"}, "approval: Input should be 'none' or 'required'"),
        ({"max_regression": {"log_loss": -0.1}}, "non-negative"),
        ({"threshold": 0.9}, "threshold: Extra inputs are not permitted"),
    ],
)
def test_bad_gate_blocks_fail_clearly(tmp_path, gate, message):
    from freestack.errors import SpecError
    from freestack.spec import load_spec
    from tests.sweep_helpers import write_spec

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
    from freestack.train.core import TrainRequest, train
    from tests.sweep_helpers import ROOT

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    make_landing(storage, date(2026, 11, 1), 2)
    for ds in ("2026-11-01", "2026-11-02"):
        ingest_partition(spec, ds)
    off = WandbSettings(mode="disabled")
    a = train(spec, TrainRequest(end_ds="2026-11-02", epochs=3, run_key="a"), tracking_settings=off)
    b = train(spec, TrainRequest(end_ds="2026-11-02", epochs=1, learning_rate=1e-4, run_key="b"), tracking_settings=off)
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
        "metrics.json", "report.html", "confusion_matrix.png", "per_class.png", "learning_curves.png", "smoke.json"
    }
    smoke = json.loads((folder / "smoke.json").read_text())  # the rows deploy's smoke test sends
    assert len(smoke["rows"]) == len(smoke["outputs"]) == len(smoke["labels"]) > 0
    assert len(smoke["rows"][0]) == 64 and smoke["classes"] == [str(i) for i in range(10)]
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "champion" in page and "<script" not in page
    assert json.loads((folder / "metrics.json").read_text())["candidate"]["accuracy"] == summary["candidate"]["accuracy"]
    decision = decide(GateSpec(), summary["candidate"], summary["champion"])
    assert decision["promote"] == (summary["candidate"]["accuracy"] >= summary["champion"]["accuracy"])


def test_regression_report_and_plots():
    import numpy as np

    from freestack.evaluate.core import plots, regression_report, render_html

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
    page = render_html("t", {"version": "v1", "window": {}, "candidate": {k: v for k, v in rep.items() if k != "_points"},
                             "champion": None}, images)
    assert page.count("data:image/png;base64,") == 2 and "rmse" in page


def test_decision_notes():
    from freestack.evaluate.gate import NOTE_LIMIT, decision_note

    champ = {**CLS, "accuracy": 0.96}
    worse = decide(GateSpec(max_regression={"log_loss": 0.05}), {**CLS, "log_loss": 0.4}, champ)
    worse.update(candidate_version="v2", champion_version="v1")
    note = decision_note(worse, "digits")
    assert note.startswith("**Gate: blocked.** Candidate `v2` of `digits` stays out of production (`v1` keeps serving)")
    assert "accuracy 0.9500 vs 0.9600 for production `v1`" in note
    assert "- accuracy 0.9500 vs champion 0.9600: -0.0100 (worse)" in note
    assert "- log_loss 0.4000 vs champion 0.2000: worse by 0.2000 (allowed 0.0500) — blocked" in note
    assert note.endswith("`promote` and `deploy` were skipped.")

    better = decide(GateSpec(), CLS, {**CLS, "accuracy": 0.9})
    better.update(candidate_version="v3", champion_version="v1")
    assert decision_note(better, "digits") == (
        "**Gate: promoted.** Candidate `v3` of `digits` is production now: accuracy 0.9500 vs 0.9000 for production `v1`."
    )
    first = decide(GateSpec(approval="required"), CLS, None)
    first.update(candidate_version="v1", champion_version=None)
    assert "awaiting approval" in decision_note(first, "digits") and "(no production model yet)" in decision_note(first, "d")

    worse["reasons"] = [f"reason {i} " + "x" * 80 for i in range(30)]  # Airflow keeps 1000 characters
    long = decision_note(worse, "digits")
    assert len(long) <= NOTE_LIMIT and "every reason is in the gate task's log" in long and long.endswith("skipped.")
