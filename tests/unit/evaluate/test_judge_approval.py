"""The approval request of a judged candidate shows the judge's figures and sample prompts side by side
(freestack.judging.client.Judged.samples, rendered by the approve task's body template)."""

from __future__ import annotations

import jinja2

from freestack.dags import JUDGE_SAMPLES
from freestack.judging.client import Judged


class _TI:
    def __init__(self, evaluation):
        self.evaluation = evaluation

    def xcom_pull(self, task_ids):
        assert task_ids == "evaluate"
        return self.evaluation


def _render(evaluation) -> str:
    return (
        jinja2.Environment(undefined=jinja2.StrictUndefined)
        .from_string(JUDGE_SAMPLES)
        .render(ti=_TI(evaluation))
    )


def _pair(i: int, outcome: str) -> dict:
    return {
        "prompt": f"What is {i} + {i}?",
        "candidate": f"{2 * i}\nsure",
        "champion": "x | y",
        "outcome": outcome,
    }


def test_a_pairwise_judgement_shows_the_win_rate_and_the_worst_and_best_pairs():
    items = [_pair(1, "loss"), _pair(2, "loss"), _pair(3, "tie"), _pair(4, "win"), _pair(5, "win")]
    judged = Judged("judged", {}, items=items)
    samples = judged.samples()
    assert [s["prompt"] for s in samples] == [
        "What is 1 + 1?",
        "What is 2 + 2?",
        "What is 4 + 4?",
        "What is 5 + 5?",
    ]
    assert samples[0] == {
        "prompt": "What is 1 + 1?",
        "candidate": "2 sure",
        "champion": "x / y",
        "verdict": "loss",
    }
    figures = {
        "judge_win_rate": 0.5,
        "judge_win_rate_low": 0.2,
        "judge_win_rate_high": 0.8,
        "judge_wins": 2,
        "judge_ties": 1,
        "judge_losses": 2,
        "judge_failures": 0,
    }
    body = _render({"candidate": figures, "judge_samples": samples})
    assert (
        "LLM judge: win rate **0.50** against production (95% CI 0.20-0.80; 2 wins, 1 ties, 2 losses" in body
    )
    rows = [line for line in body.splitlines() if line.startswith("| What is")]
    assert rows[0] == "| What is 1 + 1? | 2 sure | x / y | loss |" and len(rows) == 4


def test_a_pointwise_judgement_shows_both_scores():
    item = {
        "prompt": "p",
        "candidate": {"answer": "a", "score": 2},
        "champion": {"answer": "b", "score": 4},
    }
    (sample,) = Judged("judged", {}, items=[item]).samples()
    assert sample == {"prompt": "p", "candidate": "a", "champion": "b", "verdict": "2 vs 4"}
    body = _render(
        {"candidate": {"judge_score": 2.0, "judge_judged": 1, "judge_failures": 0}, "judge_samples": [sample]}
    )
    assert (
        "LLM judge: mean score **2.00** of 5 (1 prompts, 0 failed)" in body
        and "| p | a | b | 2 vs 4 |" in body
    )


def test_without_a_judge_the_request_says_nothing_of_one():
    assert _render({"candidate": {"accuracy": 0.9}}).strip() == ""
    assert _render(None).strip() == ""


def test_the_prompts_the_judge_failed_on_are_among_the_worst_with_their_error():
    """Pairwise items are losses, failures, ties, wins: the failed prompts used to fall between the two
    worst losses and the two best, out of the approval table and of the report's first rows."""
    from freestack.judging.client import Verdict, _pairwise_figures, table_html

    won, lost = Verdict(value="A"), Verdict(value="B")
    down = Verdict(error="HTTP 500: the judge is overloaded", kind="unreachable")
    pairs = [(lost, won)] * 3 + [(won, down)] + [(won, lost)] * 2
    judged = _pairwise_figures({}, [f"p{i}" for i in range(6)], [None] * 6, ["c"] * 6, ["x"] * 6, pairs)
    samples = judged.samples()
    assert [s["verdict"] for s in samples] == [
        "failed: HTTP 500: the judge is overloaded",
        "loss",
        "loss",
        "win",
        "win",
    ]
    assert samples[0]["prompt"] == "p3"
    body = _render({"candidate": judged.candidate, "judge_samples": samples})
    assert "| p3 | c | x | failed: HTTP 500: the judge is overloaded |" in body
    page = table_html(judged.items, n=2)
    assert page.count("<tr><td>") == 3 and "the judge is overloaded" in page
    # pointwise: the failures (worst first already) no longer crowd the worst judged answers out
    item = lambda i, score, error=None: {  # noqa: E731
        "prompt": f"q{i}",
        "candidate": {"answer": "a", "score": score, "error": error},
        "champion": {"answer": "b", "score": None if error else 3},
    }
    items = [item(0, None, "unparsable: no JSON object"), item(1, None, "HTTP 429: slow down")]
    items += [item(2, 1), item(3, 2), item(4, 4), item(5, 5)]
    verdicts = [s["verdict"] for s in Judged("judged", {}, items=items).samples()]
    assert verdicts == [
        "failed vs failed: unparsable: no JSON object",
        "failed vs failed: HTTP 429: slow down",
        "1 vs 3",
        "2 vs 3",
        "4 vs 3",
        "5 vs 3",
    ]
