"""The monitor's judge signal (``monitor.text.judge_rows``): gate.judge scores a seeded sample of an
interval's served answers, within the daily budget, against the version's judge_score at evaluation; a
judge that is down is a note, never a failed monitor. The judge is the stand-in (a real HTTP server,
tests/unit/evaluate/judge_standin.py) with a rubric whose reference is "4": it scores an answer 4 at 5, any
other at 1."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from freestack.judging.spec import JudgeSpec
from freestack.monitor import text_drift
from freestack.monitor.core import alerts_of
from freestack.monitor.spec import TextDrift
from freestack.registry.core import registry_for
from freestack.storage import join, to_path, write_json
from tests.unit.evaluate.judge_standin import StandinJudge
from tests.unit.monitor.test_text_drift import day, setup  # noqa: F401 (the module's fixture)

RUBRIC = "Question: {prompt}\nREFERENCE<<4>>\nANSWER<<{answer}>>\nScore the answer."


@pytest.fixture(scope="module")
def judged(setup):  # noqa: F811
    """The spec with the stand-in as gate.judge (the evaluation judging its first 5 test prompts), a daily
    budget of 20 answers, and v1 evaluated at 4.8."""
    spec, _ = setup
    server = StandinJudge()
    judge = JudgeSpec(url=server.url, model="fair", rubric=RUBRIC, max_rows=5)
    text = TextDrift(judge_rows=20, max_judge_drop=0.5, alert_on=["judge"])
    spec = spec.model_copy(
        update={
            "gate": spec.gate.model_copy(update={"judge": judge}),
            "monitor": spec.monitor.model_copy(update={"text": text}),
        }
    )
    metrics = join(to_path(registry_for(spec).version_uri("v1")), "evaluation", "metrics.json")
    write_json(metrics, {"candidate": {"judge_score": 4.8}})
    yield spec
    server.stop()


def _answers(rng, wrong: float):
    rows = day(rng)
    rows["prediction"] = ["7" if rng.random() < wrong else "4" for _ in range(len(rows))]
    return rows


def _signal(spec, rows, key=None) -> dict:
    got = text_drift.judge(spec, "v1", rows, judge_key=key)
    return next(s for s in got["signals"] if s["name"] == "judge"), got


def test_good_answers_keep_the_judge_signal_quiet_within_the_budget(judged):
    signal, got = _signal(judged, _answers(np.random.default_rng(1), 0.0))
    assert signal["value"] == 5.0 and signal["reference"] == 4.8 and signal["rows"] == 20  # of 200
    assert signal["judged"] == 20  # the budget, not the evaluation's max_rows, bounds the sample
    assert not signal["drifted"] and "judge" not in got["drifted"]


def test_worse_answers_drift_and_raise_the_alert(judged):
    signal, got = _signal(judged, _answers(np.random.default_rng(2), 0.6))
    assert signal["value"] < 4.3 and signal["drifted"] and got["drifted"] == ["judge"]
    verdict = {"version": "v1", "series": [], "drifted": [], "labels": None, "text": got}
    (line,) = [a for a in alerts_of([verdict], judged, "report.html") if a["series"] == "text.judge"]
    assert "judge score" in line["message"] and "against 4.80 at evaluation" in line["message"]


def test_a_judge_that_is_down_is_a_note_not_a_failed_monitor(judged):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = JudgeSpec(url=f"http://127.0.0.1:{port}/v1", model="fair", rubric=RUBRIC, retries=0)
    spec = judged.model_copy(update={"gate": judged.gate.model_copy(update={"judge": down})})
    signal, got = _signal(spec, _answers(np.random.default_rng(3), 0.6))
    assert signal["value"] is None and not signal["drifted"] and not got["drifted"]
    assert "the judge signal was not measured" in signal["note"] and "gate.judge.url" in signal["note"]


def test_no_budget_no_judge_signal(judged):
    spec = judged.model_copy(
        update={"monitor": judged.monitor.model_copy(update={"text": TextDrift(judge_rows=0)})}
    )
    got = text_drift.judge(spec, "v1", _answers(np.random.default_rng(4), 0.6))
    assert "judge" not in {s["name"] for s in got["signals"]}
