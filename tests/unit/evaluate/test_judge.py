"""The LLM judge (``gate.judge``): its spec, and its judging against a stand-in judge, a real HTTP server
speaking OpenAI's chat route (tests/unit/evaluate/judge_standin.py) that scores an answer 5 when it equals
the reference and 1 otherwise."""

from __future__ import annotations

import copy
import json
import socket

import pytest
from pydantic import ValidationError

from freestack.errors import SpecError
from freestack.evaluate.spec import GateSpec
from freestack.evaluate.text_generation import exact_match
from freestack.judging import client as judge
from freestack.judging.spec import JudgeSpec
from freestack.keys import NO_KEYS
from freestack.spec import parse_spec
from tests.unit.evaluate.judge_standin import PAIR_RUBRIC, RUBRIC, StandinJudge

REFS = ["4", "321", "03/11/2026", "12", "9", "yes", "blue", "7"]
CHATS = [
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"q{i}?"}]
    for i in range(8)
]
#: right on 0, 2, 3, 6 (four of eight)
CAND = ["4", "123", "03/11/2026", "12", "8", "no", "blue", "1"]
#: right on 0 and 1 only
CHAMP = ["4", "321", "2026-11-03", "13", "8", "no", "red", "1"]


@pytest.fixture(scope="module")
def server():
    s = StandinJudge()
    yield s
    s.stop()


def _spec(server, model="fair", **kw) -> JudgeSpec:
    mode = kw.get("mode", "pointwise")
    return JudgeSpec(url=server.url, model=model, rubric=RUBRIC if mode == "pointwise" else PAIR_RUBRIC, **kw)


def test_pointwise_scores_both_models_and_agrees_with_exact_match(server):
    got = judge.run(_spec(server), CHATS, REFS, CAND, CHAMP)
    assert got.status == "judged"
    assert got.candidate == {
        "judge_score": (4 * 5 + 4 * 1) / 8,
        "judge_judged": 8,
        "judge_failures": 0,
        "judge_exact_agreement": 1.0,
    }
    assert got.champion == {"judge_score": (2 * 5 + 6 * 1) / 8, "judge_judged": 8, "judge_failures": 0}
    # the judge's verdicts agree with exact match on every prompt: the agreement figure
    right = [it["candidate"]["score"] == 5 for it in sorted(got.items, key=lambda it: it["index"])]
    assert right == [r == a for r, a in zip(REFS, CAND, strict=True)]
    assert sum(right) / len(right) == exact_match(REFS, CAND) == 0.5
    worst = got.items[0]  # worst first
    assert worst["candidate"]["score"] == 1 and worst["candidate"]["raw"].startswith('{"score": 1')
    assert worst["candidate"]["rationale"] == "differs" and worst["prompt"] == "q1?"
    assert got.identity == {
        "url": server.url,
        "model": "fair",
        "mode": "pointwise",
        "served_by": None,
        "answered_as": "fair",
    }
    record = json.loads(json.dumps(got.record(_spec(server))))
    assert record["rubric"] == RUBRIC and len(record["items"]) == 8
    asked = server.requests[-1]
    assert asked["temperature"] == 0 and asked["messages"][0]["role"] == "system"
    assert "REFERENCE<<" in asked["messages"][1]["content"]


def test_a_fenced_answer_parses_and_a_freestack_judge_names_its_version(server):
    assert judge.run(_spec(server, "fenced"), CHATS, REFS, CAND, None).candidate["judge_score"] == 3.0
    got = judge.run(_spec(server, "freestack"), CHATS[:3], REFS, CAND, None)
    assert got.identity["served_by"] == "judge:v3" and got.candidate["judge_judged"] == 3


def test_pairwise_asks_both_orders_and_gives_a_win_rate_with_an_interval(server):
    before = len(server.requests)
    got = judge.run(_spec(server, mode="pairwise"), CHATS, REFS, CAND, CHAMP)
    assert len(server.requests) - before == 16  # 8 prompts, both orders
    # candidate right alone on 2, 3, 6; production alone on 1; both on 0; neither on 4, 5, 7
    c = got.candidate
    assert (c["judge_wins"], c["judge_losses"], c["judge_ties"], c["judge_failures"]) == (3, 1, 4, 0)
    assert c["judge_win_rate"] == pytest.approx((3 + 4 / 2) / 8)
    assert c["judge_win_rate_low"] < c["judge_win_rate"] < c["judge_win_rate_high"]
    assert (c["judge_win_rate_low"], c["judge_win_rate_high"]) == pytest.approx(judge.wilson(5, 8))
    assert c["judge_orders_agree"] == 1.0 and got.champion is None
    assert got.items[0]["outcome"] == "loss" and got.items[-1]["outcome"] == "win"
    assert set(got.items[0]) >= {"candidate_first", "champion_first", "candidate", "champion", "reference"}


def test_a_judge_that_always_prefers_answer_a_gives_ties_not_wins(server):
    got = judge.run(_spec(server, "first", mode="pairwise"), CHATS, REFS, CAND, CHAMP)
    assert got.candidate["judge_ties"] == 8 and got.candidate["judge_win_rate"] == 0.5
    assert got.candidate["judge_orders_agree"] == 0.0


def test_pairwise_without_production_is_skipped(server):
    got = judge.run(_spec(server, mode="pairwise"), CHATS, REFS, CAND, None)
    assert got.status == "skipped" and "no production model" in got.reason and not got.candidate


def test_the_wilson_interval():
    assert judge.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert judge.wilson(0, 10)[0] == 0.0 and judge.wilson(10, 10)[1] == pytest.approx(1.0)
    assert judge.wilson(0, 0) == (0.0, 1.0)


def test_prose_is_a_failure_past_max_failures_with_the_answer_quoted(server):
    with pytest.raises(judge.JudgeError) as err:
        judge.run(_spec(server, "prose", on_judge_error="pass"), CHATS, REFS, CAND, None)
    msg = str(err.value)
    assert f"gate.judge.url {server.url}" in msg and "gate.judge.max_failures 0.1" in msg
    assert "8 of 8 judgings failed (unparsable 8" in msg and "The answer looks quite good" in msg
    assert '{"score": <an integer from 1 to 5>' in msg


def test_failures_within_the_bound_are_counted_not_scored(server):
    server.requests.clear()
    got = judge.run(
        _spec(server, "flaky", max_failures=0.5, retries=0, concurrency=1), CHATS, REFS, CAND, None
    )
    failed = [it for it in got.items if it["candidate"]["kind"]]
    assert got.candidate["judge_failures"] == len(failed) == 2  # requests 3 and 6 of 8
    assert got.candidate["judge_judged"] == 6
    scored = [it["candidate"]["score"] for it in got.items if not it["candidate"]["kind"]]
    assert got.candidate["judge_score"] == pytest.approx(sum(scored) / 6)
    assert all(it["candidate"]["score"] is None and "HTTP 500" in it["candidate"]["error"] for it in failed)
    with pytest.raises(judge.JudgeError, match="did not answer: 2 of 8 judgings failed"):
        server.requests.clear()
        judge.run(_spec(server, "flaky", retries=0, concurrency=1), CHATS, REFS, CAND, None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_judge_fails_naming_the_url_or_passes_by_rule():
    spec = JudgeSpec(url=f"http://127.0.0.1:{_closed_port()}/v1", model="j", retries=0)
    with pytest.raises(judge.JudgeError) as err:
        judge.run(spec, CHATS, REFS, CAND, None)
    msg = str(err.value)
    assert f"gate.judge.url {spec.url}" in msg and "did not answer" in msg
    assert "unreachable 8" in msg and "gate.judge.on_judge_error: pass" in msg
    passed = judge.run(spec.model_copy(update={"on_judge_error": "pass"}), CHATS, REFS, CAND, None)
    assert passed.status == "unavailable" and "did not answer" in passed.reason and not passed.candidate


def test_a_judge_past_its_timeout_is_an_outage(server):
    spec = _spec(server, "slow", timeout_s=0.3, retries=0, concurrency=8, on_judge_error="pass")
    got = judge.run(spec, CHATS[:2], REFS, CAND, None)
    assert got.status == "unavailable" and "APITimeoutError" in got.reason


def test_parsing():
    assert judge.parse_pointwise('{"score": 4, "rationale": "ok"}') == (4.0, "ok")
    assert judge.parse_pointwise('```json\n{"score": "5"}\n```') == (5.0, "")
    assert judge.parse_pairwise('sure: {"winner": "b", "rationale": "x"}') == ("B", "x")
    for bad, says in [
        ("I like it", "no JSON object"),
        ('{"score": 7}', "not a number from 1 to 5"),
        ('{"score": true}', "not a number from 1 to 5"),
        ('{"score": 4', "no JSON object"),
        ("[1, 2]", "no JSON object"),
    ]:
        with pytest.raises(ValueError, match=says):
            judge.parse_pointwise(bad)
    with pytest.raises(ValueError, match="winner 'C'"):
        judge.parse_pairwise('{"winner": "C"}')


def test_the_common_wordings_of_judges_are_read():
    """Wordings judges write that are not the format's exact words: a named answer, both, a fraction of 5,
    and prose with a brace of its own before the JSON."""
    for winner, want in (
        ("Answer A", "A"),
        ("response b.", "B"),
        ("(B)", "B"),
        ("both", "tie"),
        ("Neither", "tie"),
    ):
        assert judge.parse_pairwise(json.dumps({"winner": winner}))[0] == want, winner
    assert judge.parse_pointwise('{"score": "4/5"}')[0] == 4.0
    assert judge.parse_pointwise('{"score": "3 out of 5", "rationale": "fine"}') == (3.0, "fine")
    prose = 'Looking at {the answer}, it is right. {"score": 5, "rationale": "exact"} Hope that helps {:'
    assert judge.parse_pointwise(prose) == (5.0, "exact")
    with pytest.raises(ValueError, match="not a number from 1 to 5"):
        judge.parse_pointwise('{"score": "9/5"}')
    with pytest.raises(ValueError, match="not JSON"):
        judge.parse_pointwise("{score: 4}")


# ---------------------------------------------------------------------------------------------------------
# the spec

SPEC = {
    "name": "arith",
    "source": {
        "landing": "landing/{pipeline}/{ds}/",
        "format": "csv",
        "schema": {
            "key": "id",
            "target": "response",
            "columns": [
                {"name": "id", "type": "string", "nullable": False},
                {"name": "prompt", "type": "text"},
                {"name": "response", "type": "text"},
            ],
        },
    },
    "model": {"type": "huggingface", "base": "team/tiny-lm", "task": "text-generation"},
    "gate": {"metric": "exact_match", "judge": {"url": "http://127.0.0.1:8090/v1", "model": "judge"}},
}


def _pipeline(**gate):
    data = copy.deepcopy(SPEC)
    judge_changes = gate.pop("judge", {})
    data["gate"]["judge"].update(judge_changes)
    data["gate"].update(gate)
    return parse_spec(data, "arith.yaml")


def test_a_spec_with_a_judge_and_its_rules():
    spec = _pipeline(
        min_judge_score=3.5, max_regression={"judge_score": 0.25}, judge={"api_key": {"conn_id": "judge_key"}}
    )
    j = spec.gate.judge
    assert j.mode == "pointwise" and j.on_judge_error == "fail" and j.max_failures == 0.1
    assert j.api_key.conn_id == "judge_key" and "{answer}" in j.template
    pair = _pipeline(min_win_rate=0.5, judge={"mode": "pairwise", "rubric": PAIR_RUBRIC})
    assert pair.gate.judge.template == PAIR_RUBRIC


@pytest.mark.parametrize(
    ("gate", "says"),
    [
        ({"judge": {"rubric": "Rate {answer}."}}, "gate.judge.rubric: a pointwise rubric needs {prompt}"),
        (
            {"judge": {"rubric": "Rate {answer} to {prompt} as {grade}."}},
            "gate.judge.rubric: unknown variable {grade}; a pointwise rubric takes {prompt}, {answer}, {reference}",
        ),
        (
            {"judge": {"rubric": 'Answer {"score": 1} for {prompt} {answer}'}},
            "gate.judge.rubric: unknown variable",
        ),
        ({"judge": {"rubric": "Rate {answer for {prompt}"}}, "gate.judge.rubric: .*literal braces"),
        (
            {"judge": {"mode": "pairwise", "rubric": RUBRIC}},
            "gate.judge.rubric: unknown variable {answer}; a pairwise rubric",
        ),
        ({"judge": {"url": "127.0.0.1:8090"}}, "gate.judge.url"),
        ({"judge": {"max_failures": 1.5}}, "gate.judge.max_failures"),
        ({"judge": {"on_judge_error": "ignore"}}, "gate.judge.on_judge_error"),
        ({"judge": {"api_key": "sk-123"}}, "gate.judge.api_key"),
        (
            {"min_win_rate": 0.5},
            "gate.min_win_rate reads judge_win_rate, which gate.judge.mode pairwise gives",
        ),
        ({"judge": {"mode": "pairwise"}, "min_judge_score": 4}, "gate.min_judge_score reads judge_score"),
    ],
)
def test_bad_judge_specs_name_the_field(gate, says):
    with pytest.raises(SpecError, match=says):
        _pipeline(**gate)


def test_judge_rules_need_a_judge():
    with pytest.raises(ValidationError, match="gate.min_judge_score needs a judge: add gate.judge"):
        GateSpec(min_judge_score=4)
    with pytest.raises(ValidationError, match="gate.max_regression.judge_score needs a judge"):
        GateSpec(max_regression={"judge_score": 0.5})
    data = copy.deepcopy(SPEC)
    data["model"] = {"type": "mlp"}
    data["source"]["schema"]["columns"].append({"name": "y", "type": "float"})
    data["source"]["schema"]["target"] = "y"
    data["gate"] = {
        "metric": "rmse",
        "max_regression": {"judge_score": 0.5},
        **{"judge": SPEC["gate"]["judge"]},
    }
    with pytest.raises(SpecError, match="gate.max_regression: 'judge_score' is not a regression metric"):
        parse_spec(data, "x.yaml")


def test_the_evaluation_adds_the_judges_figures_to_both_models_metrics(server):
    from freestack.errors import EvaluationError
    from freestack.evaluate.report import render_html
    from freestack.evaluate.text_generation import Answers, judged_by

    spec = _pipeline(judge={"url": server.url, "model": "freestack", "rubric": RUBRIC})
    cand, champ = Answers({"task": "generation", "rows": 8}, CAND), Answers({"task": "generation"}, CHAMP)
    judged = judged_by(spec, CHATS, REFS, cand, champ, NO_KEYS)
    assert cand.metrics["judge_score"] == 3.0 and champ.metrics["judge_score"] == 2.0
    assert cand.metrics["judge"] == {"status": "judged", **judged.identity, "reason": None}
    assert judged.identity["served_by"] == "judge:v3"
    # a figure only the candidate has (the agreement, a win rate) leaves production's cell empty
    page = render_html(
        "t", {"version": "v2", "window": {}, "candidate": cand.metrics, "champion": champ.metrics}, {}
    )
    assert "judge_exact_agreement" in page
    page = render_html(
        "t", {"version": "v2", "window": {}, "candidate": cand.metrics, "judge_items": judged.items}, {}
    )
    assert "judge: worst prompts first" in page and "<td><pre>differs</pre></td>" in page
    pair = judge.run(_spec(server, mode="pairwise"), CHATS, REFS, CAND, CHAMP)
    assert "<th>verdict</th>" in judge.table_html(pair.items) and "loss (A=B, then A=A)" in judge.table_html(
        pair.items
    )
    down = _pipeline(judge={"url": "http://127.0.0.1:9/v1", "model": "j", "retries": 0})
    with pytest.raises(EvaluationError, match="gate.judge.url http://127.0.0.1:9/v1"):
        judged_by(down, CHATS, REFS, Answers({}, CAND), None, NO_KEYS)
    without = copy.deepcopy(SPEC)
    del without["gate"]["judge"]
    assert judged_by(parse_spec(without, "arith.yaml"), CHATS, REFS, cand, None, NO_KEYS) is None


def test_each_models_failures_are_bounded_on_their_own(server):
    """Production's answers all judged cannot hide that none of the candidate's were."""
    with pytest.raises(
        judge.JudgeError, match=r"8 of 8 judgings failed \(unparsable 8; gate.judge.max_failures 0.5"
    ):
        judge.run(_spec(server, max_failures=0.5), CHATS, REFS, ["UNREADABLE"] * 8, CHAMP, None)
    got = judge.run(_spec(server, max_failures=0.5), CHATS, REFS, ["UNREADABLE"] * 4 + CAND[4:], CHAMP, None)
    assert got.candidate["judge_failures"] == 4 and got.candidate["judge_score"] == 2.0  # 1 right of 4
    assert got.champion["judge_failures"] == 0
