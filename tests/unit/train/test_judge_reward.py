"""The LLM judge as a GRPO reward (``train.grpo.rewards: [{function: judge}]``): gate.judge's endpoint (the
stand-in judge on 127.0.0.1, tests/unit/evaluate/judge_standin.py: 5 for an answer equal to the reference,
1 otherwise) scores each completion, read as (score - 1) / 4; the samples of a batch are asked
concurrently, one request each; a judge that answers nothing readable fails the training naming it; the
spec refuses the reward without a gate.judge; the key is never written down. GRPO takes DDP ranks, not
FSDP."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from freestack.errors import FreestackError
from freestack.keys import Keys
from freestack.ml.lm.rewards import Sample
from tests.dags.test_preference_dag import grpo_spec
from tests.unit.evaluate.judge_standin import RUBRIC, StandinJudge


@pytest.fixture(scope="module")
def judge():
    server = StandinJudge()
    yield server
    server.stop()


def _spec(judge_url: str | None, model: str = "fair", **judge):
    from freestack.spec import PipelineSpec

    spec = grpo_spec(Path("/tmp/base"), "judged")
    spec["train"]["grpo"]["rewards"] = [{"function": "judge", "weight": 2.0}, {"function": "exact_match"}]
    if judge_url is not None:
        spec["gate"]["judge"] = {"url": judge_url, "model": model, "rubric": RUBRIC, "retries": 0, **judge}
    return PipelineSpec.model_validate(spec)


def _samples() -> list[Sample]:
    rows = [{"chosen": "12"}, {"chosen": "321"}, {"chosen": "03/11/2026"}]
    answers = ["12", "123", "03/11/2026"]
    prompts = ["What is 7 + 5?", "Reverse the digits: 123", "Convert 2026-11-03 to DD/MM/YYYY."]
    return [Sample(p, a, 2, r) for p, a, r in zip(prompts, answers, rows, strict=True)]


def test_the_judge_scores_each_completion_against_its_reference(judge):
    from freestack.train.objectives import reward_set

    before = len(judge.requests)
    rewards = reward_set(_spec(judge.url), Keys(judge="sk-judge"))
    assert rewards.names == ["judge", "exact_match"]
    assert rewards.score(_samples()) == [[1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]
    asked = judge.requests[before:]
    assert len(asked) == 3 and {r["model"] for r in asked} == {"fair"}
    assert any("REFERENCE<<321>>\nANSWER<<123>>" in r["messages"][-1]["content"] for r in asked)
    judged = rewards.lineage()[0]
    assert judged["function"] == "judge" and judged["weight"] == 2.0 and judged["url"] == judge.url
    assert judged["model"] == "fair" and judged["rubric"] == RUBRIC


def test_a_judge_that_answers_nothing_readable_fails_the_training_naming_it(judge):
    from freestack.train.objectives import reward_set

    rewards = reward_set(_spec(judge.url, model="prose"))
    with pytest.raises(
        FreestackError, match="train.grpo.rewards judge: 3 of 3 judgings failed, over gate.judge"
    ):
        rewards.score(_samples())


def test_a_failed_judging_counts_every_kind_of_error(judge):
    """Two requests timed out and one answered HTTP 500: the message counts both kinds, each with its
    first error, and ends with one period (openai's "Request timed out." quoted before it)."""
    from freestack.train.objectives import reward_set

    rewards = reward_set(_spec(judge.url, model="overloaded", timeout_s=0.5))
    with pytest.raises(FreestackError) as info:
        rewards.score(_samples())
    msg = str(info.value)
    assert "3 of 3 judgings failed" in msg, msg
    timeouts = "2 APITimeoutError (first: Request timed out)"
    assert f"{timeouts}, 1 HTTP 500 (first: Error code: 500 - the judge is overloaded)" in msg, msg
    assert ".." not in msg and msg.endswith("Fix the judge (or its key), then clear the task")


def test_the_judge_reward_needs_a_judge_and_its_key_is_never_written_down():
    from freestack.train.request import TrainRequest

    with pytest.raises(ValidationError, match="the judge reward asks gate.judge's endpoint"):
        _spec(None)
    req = TrainRequest(end_ds="2026-11-03", keys=Keys(judge="sk-secret"))
    assert "sk-secret" not in repr(req) and repr(req.keys) == "Keys(judge)"
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(req)
    with pytest.raises(TypeError, match="never pickled"):
        copy.deepcopy(req.keys)


def test_grpo_trains_on_ddp_ranks_and_refuses_fsdp():
    from freestack.spec import PipelineSpec
    from freestack.train.objectives import check_grpo

    spec = grpo_spec(Path("/tmp/base"), "ranked")
    spec["train"]["distributed"] = {"processes_per_node": 2, "threads_per_process": 1}
    ddp = PipelineSpec.model_validate(spec)
    check_grpo(ddp)
    spec["train"]["distributed"]["strategy"] = "fsdp"
    spec["model"]["peft"] = None
    with pytest.raises(FreestackError, match="samples answers on each rank alone.*strategy ddp"):
        check_grpo(PipelineSpec.model_validate(spec))
    judged = _spec("http://127.0.0.1:9/v1")
    ranked = judged.train.model_copy(update={"distributed": ddp.train.distributed})
    with pytest.raises(FreestackError, match="the judge reward trains in one process"):
        check_grpo(judged.model_copy(update={"train": ranked}))
