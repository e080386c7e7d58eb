"""The preference-tuning spec (train.objective: dpo): its pairs' columns, its settings, and what is
refused with the field named, when the spec is read or before any data is read."""

from __future__ import annotations

import copy

import pytest

from freestack.errors import FreestackError, SpecError
from freestack.ml.lm.preference import METRICS as PREFERENCE_METRICS
from freestack.spec import parse_spec
from freestack.sweeps.spec import EPOCH_METRICS
from freestack.train.objectives import check_objective, objective_lineage

SPEC = {
    "name": "prefs",
    "source": {
        "landing": "landing/{pipeline}/{ds}/",
        "format": "csv",
        "schema": {
            "key": "id",
            "target": "good",
            "columns": [
                {"name": "id", "type": "string", "nullable": False},
                *({"name": c, "type": "text"} for c in ("question", "good", "bad", "response")),
            ],
        },
    },
    "model": {
        "type": "huggingface",
        "base": "team/tiny-lm",
        "task": "text-generation",
        "data": {"prompt": "question", "chosen": "good", "rejected": "bad"},
    },
    "train": {"objective": "dpo", "dpo": {"beta": 0.2}},
    "gate": {"metric": "exact_match", "threshold": 0.5},
}


def _spec(edit=None):
    data = copy.deepcopy(SPEC)
    if edit is not None:
        edit(data)
    return parse_spec(data, "prefs.yaml")


def test_pairs_name_their_columns_and_the_chosen_answer_is_the_response():
    spec = _spec()
    data = spec.model.chat
    assert (data.prompt, data.response, data.chosen, data.rejected) == ("question", "good", "good", "bad")
    assert data.preference and spec.model_features == ["question", "bad"]
    assert (spec.train.objective, spec.train.dpo.beta, spec.train.dpo.loss) == ("dpo", 0.2, "sigmoid")
    check_objective(spec)
    assert objective_lineage(spec)["name"] == "dpo" and objective_lineage(spec)["beta"] == 0.2
    with pytest.raises(SpecError, match="'chosen' is not a column"):  # chosen's default name
        _spec(lambda d: d["model"].update(data={"prompt": "question", "rejected": "bad"}))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["model"]["data"].update(rejected="nope"), "model.data: 'nope' is not a column"),
        (lambda d: d["model"]["data"].update(rejected="good"), "chosen and rejected are both 'good'"),
        (lambda d: d["model"]["data"].update(response="response"), "response 'response' and chosen 'good'"),
        (lambda d: d["train"]["dpo"].update(beta=0), "beta"),
        (lambda d: d["train"].update(objective="ppo"), "objective"),
    ],
)
def test_a_bad_preference_spec_is_refused_naming_the_field(edit, message):
    with pytest.raises(SpecError, match=message):
        _spec(edit)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["train"].pop("objective"),
            "model.data names chosen and rejected columns .* train.objective",
        ),
        (
            lambda d: d["model"].update(data={"prompt": "question", "response": "good"}),
            "train.objective dpo reads preference pairs: set model.data",
        ),
        (lambda d: d["model"].update(packing=True), "model.packing is for train.objective sft"),
    ],
)
def test_an_objective_that_does_not_fit_the_data_is_refused_before_any_data_is_read(edit, message):
    with pytest.raises(FreestackError, match=message):
        check_objective(_spec(edit))


def _sweep(metric: str | None, method: str = "grid"):
    """An edit giving the spec a 2-trial sweep over the learning rate, judged on ``metric``."""
    sweep = {"method": method, "parameters": {"learning_rate": {"values": [1e-3, 3e-3]}}}
    if metric is not None:
        sweep["metric"] = {"name": metric, "goal": "maximize"}
    return lambda d: d.update(sweep=sweep)


@pytest.mark.parametrize("metric", EPOCH_METRICS["preference"])
def test_a_preference_tuning_is_swept_on_what_dpo_logs_each_epoch(metric):
    spec = _spec(_sweep(metric))
    check_objective(spec)
    assert spec.sweep.metric.name == metric and spec.gate.metric == "exact_match"


def test_the_preference_sweep_metrics_are_the_loops_validation_row():
    """What the loop writes each epoch: ``val_`` and each of DPO's metrics, and the training loss."""
    assert set(EPOCH_METRICS["preference"]) == {f"val_{m}" for m in PREFERENCE_METRICS} | {"train_loss"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _sweep("val_perplexity"),
            r"sweep.metric.name: 'val_perplexity' is not a preference metric \(train.objective is dpo\); "
            "use one of val_reward_margin, val_reward_accuracy",
        ),
        (_sweep("val_accuracy"), "'val_accuracy' is not a preference metric"),
        (_sweep(None), "sweep.metric: a train.objective dpo sweep .* val_reward_margin, goal: maximize"),
    ],
)
def test_a_preference_sweep_on_a_metric_dpo_does_not_log_is_refused_when_the_spec_is_read(edit, message):
    with pytest.raises(SpecError, match=message):
        _spec(edit)


def test_an_instruction_tuning_sweep_is_not_judged_on_dpo_metrics_nor_a_dpo_gate_on_them():
    def sft(d):
        d["train"].pop("objective")
        d["model"]["data"] = {"prompt": "question", "response": "good"}

    with pytest.raises(SpecError, match="'val_reward_margin' is not a generation metric"):
        _spec(lambda d: (sft(d), _sweep("val_reward_margin")(d)))
    with pytest.raises(SpecError, match="gate metric 'reward_margin' is unknown"):
        _spec(lambda d: d["gate"].update(metric="reward_margin"))


# -- pairs as chats (TRL's conversational preference formats) --------------------------------------------


def _chat_spec(implicit: bool = False, edit=None):
    from tests.support.preference import chat_pair_spec

    data = chat_pair_spec(implicit=implicit)
    if edit is not None:
        edit(data)
    return parse_spec(data, "chat_prefs.yaml")


def test_chat_pairs_name_the_chat_so_far_and_its_two_answers():
    spec = _chat_spec()
    data = spec.model.chat
    assert (data.messages, data.prompt, data.response, data.rejected) == (
        "messages",
        None,
        "chosen",
        "rejected",
    )
    assert data.columns == ["messages", "chosen", "rejected"] and not data.implicit_prompt
    assert spec.model_features == ["messages", "rejected"]  # the target is the chosen answer
    check_objective(spec)


def test_whole_chats_with_no_prompt_column_hold_the_prompt_in_the_chosen_chat():
    spec = _chat_spec(implicit=True)
    data = spec.model.chat
    assert (data.messages, data.prompt, data.response, data.chosen) == ("chosen", None, None, "chosen")
    assert data.columns == ["chosen", "rejected"] and data.implicit_prompt
    assert spec.model_features == ["rejected"]
    check_objective(spec)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["model"]["data"].update(prompt="messages"), "a prompt column or a messages column"),
        (lambda d: d["model"]["data"].update(messages="chosen"), "messages 'chosen' is the chat so far"),
        (lambda d: d["model"]["data"].update(response="messages"), "response 'messages' and chosen 'chosen'"),
        (lambda d: d["model"]["data"].update(messages="nope"), "model.data: 'nope' is not a column"),
        (
            lambda d: d["source"]["schema"].update(target="messages"),
            "target is 'messages', but a text-generation model learns the 'chosen' column",
        ),
    ],
)
def test_a_bad_chat_pair_spec_is_refused_naming_the_field(edit, message):
    with pytest.raises(SpecError, match=message):
        _chat_spec(edit=edit)


def test_chat_pairs_without_dpo_are_refused_before_any_data_is_read():
    with pytest.raises(FreestackError, match="model.data names chosen and rejected columns"):
        check_objective(_chat_spec(implicit=True, edit=lambda d: d["train"].pop("objective")))
