"""The monitor's judge signal (``monitor.text.judge_rows``): gate.judge scores a seeded sample of an
interval's served answers, within the daily budget, against the version's judge_score at evaluation; a
judge that is down is a note, never a failed monitor. The judge is the stand-in (a real HTTP server,
tests/unit/evaluate/judge_standin.py) with a rubric whose reference is "4": it scores an answer 4 at 5, any
other at 1."""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest

from freestack.judging.spec import JudgeSpec
from freestack.keys import Keys
from freestack.monitor import text_drift
from freestack.monitor.core import alerts_of, judge_version
from freestack.monitor.report import _text_section
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


def _signal(spec, rows, key=None, version="v1") -> dict:
    got = text_drift.judge(spec, version, rows, keys=Keys(judge=key))
    return next(s for s in got["signals"] if s["name"] == "judge"), got


def _down(spec):
    """``spec`` with gate.judge at a port nothing listens on: a judge asked would be a note of its own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = JudgeSpec(url=f"http://127.0.0.1:{port}/v1", model="fair", rubric=RUBRIC, retries=0)
    return spec.model_copy(update={"gate": spec.gate.model_copy(update={"judge": down})})


def _version(spec, version: str, metrics: dict | None) -> None:
    """``version`` in the registry with v1's evaluation sample and ``metrics`` as its metrics.json (None:
    none)."""
    registry = registry_for(spec)
    sample = join(to_path(registry.version_uri("v1")), text_drift.SAMPLE)
    folder = to_path(registry.version_uri(version))
    write_json(join(folder, text_drift.SAMPLE), json.loads(sample.read_text()))
    if metrics is not None:
        write_json(join(folder, "evaluation", "metrics.json"), metrics)
    else:
        folder.joinpath("evaluation", "metrics.json").unlink(missing_ok=True)


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
    signal, got = _signal(_down(judged), _answers(np.random.default_rng(3), 0.6))
    assert signal["value"] is None and not signal["drifted"] and not got["drifted"]
    assert "the judge signal was not measured" in signal["note"] and "gate.judge.url" in signal["note"]


def test_no_budget_no_judge_signal(judged):
    spec = judged.model_copy(
        update={"monitor": judged.monitor.model_copy(update={"text": TextDrift(judge_rows=0)})}
    )
    got = text_drift.judge(spec, "v1", _answers(np.random.default_rng(4), 0.6))
    assert "judge" not in {s["name"] for s in got["signals"]}


PAIRWISE = {"status": "judged", "url": "http://judge/v1", "model": "fair", "mode": "pairwise", "reason": None}


def test_a_version_the_gate_judged_pairwise_has_the_signal_off_and_says_why(judged, setup):  # noqa: F811
    """Its evaluation recorded a win rate against production, no judge_score: the monitor does not ask
    the judge (a down one here would be a note of its own), and the version's note, the monitor's
    summary notes and the report say why the signal is off and how to turn it on."""
    _, reference = setup
    metrics = {"champion_version": "v1", "candidate": {"judge_win_rate": 0.75, "judge": PAIRWISE}}
    _version(judged, "v2", metrics)
    spec = _down(judged)
    signal, got = _signal(spec, _answers(np.random.default_rng(5), 0.6), version="v2")
    assert signal["value"] is None and signal["reference"] is None and signal["rows"] == 0
    assert signal["off"] and not signal["drifted"] and not got["drifted"]
    note = signal["note"]
    assert note.startswith("version v2: the judge signal is off") and got["note"] == note
    assert "the gate judged it pairwise (win rate 0.75 against v1)" in note
    assert "gate.judge.mode: pointwise" in note and "monitor.text.judge_rows: 0" in note
    verdict = judge_version(
        {**reference, "version": "v2"}, _answers(np.random.default_rng(5), 0.0), pd.DataFrame(), spec
    )
    assert verdict["note"] == note and verdict["status"] == "ok"  # the summary's notes take it
    page = _text_section(verdict["text"])  # the report's text signals
    assert "off (see the note below)" in page and "<li>judge: version v2: the judge signal is off" in page


@pytest.mark.parametrize(
    ("metrics", "why"),
    [
        (None, "it has no evaluation/metrics.json. Evaluate v3 again"),
        ({"candidate": {"accuracy": 1.0}}, "it was evaluated without gate.judge"),
        (
            {"candidate": {"judge": {**PAIRWISE, "status": "skipped", "reason": "no production model"}}},
            "the gate judged it pairwise and judged nothing (no production model)",
        ),
        (
            {
                "candidate": {
                    "judge": {**PAIRWISE, "mode": "pointwise", "status": "unavailable", "reason": "down"}
                }
            },
            "the judge did not answer when it was evaluated (down)",
        ),
    ],
)
def test_each_version_without_a_judge_score_says_why(judged, metrics, why):
    _version(judged, "v3", metrics)
    got = text_drift.evaluated_judge(judged, "v3")
    assert got.score is None and why in got.off and "has none" in got.off
