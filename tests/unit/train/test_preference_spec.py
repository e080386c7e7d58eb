"""The preference-tuning spec (train.objective: dpo): its pairs' columns, its settings, and what is
refused with the field named, when the spec is read or before any data is read."""

from __future__ import annotations

import copy

import pytest

from freestack.errors import FreestackError, SpecError
from freestack.spec import parse_spec
from freestack.train.pretrained import check_objective, objective_lineage

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
        (
            lambda d: d.update(
                sweep={
                    "method": "grid",
                    "metric": {"name": "val_perplexity", "goal": "minimize"},
                    "parameters": {"learning_rate": {"values": [1e-3, 3e-3]}},
                }
            ),
            "sweep: a train.objective dpo run reports val_reward_margin",
        ),
    ],
)
def test_an_objective_that_does_not_fit_the_data_is_refused_before_any_data_is_read(edit, message):
    with pytest.raises(FreestackError, match=message):
        check_objective(_spec(edit))
