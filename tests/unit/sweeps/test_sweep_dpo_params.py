"""A preference tuning's settings (train.dpo.beta, train.dpo.sft_weight) as sweep parameters: the block
accepts them under a ``dpo`` node, the engine proposes them, a trial's value reaches its training's spec
(merged into the spec's train.dpo), and a name that is not one of them is refused, naming the field."""

from __future__ import annotations

import copy

import pytest

from freestack.errors import SpecError
from freestack.spec import parse_spec
from freestack.sweeps.config import engine_part, json_safe, sweeps_engine, to_overrides
from freestack.sweeps.core import engine_runs
from freestack.sweeps.spec import SweepConfigError, SweepSpec
from freestack.train.core import TrainingError, effective_spec
from freestack.train.request import TrainRequest
from tests.unit.train.test_preference_spec import SPEC as PREFERENCE_SPEC

#: the preference-tuning spec of tests/unit/train/test_preference_spec.py, with an sft term to sweep too
SPEC = {**PREFERENCE_SPEC, "train": {"objective": "dpo", "dpo": {"beta": 0.2, "sft_weight": 0.5}}}
BETA = {"dpo": {"parameters": {"beta": {"values": [0.05, 0.5]}}}}
METRIC = {"name": "val_reward_margin", "goal": "maximize"}


def _spec(parameters: dict, objective: str = "dpo"):
    data = copy.deepcopy(SPEC)
    data["train"]["objective"] = objective
    if objective != "dpo":
        data["model"]["data"] = {"prompt": "question", "response": "good"}
        data["train"].pop("dpo")
    data["sweep"] = {"method": "grid", "metric": METRIC, "parameters": parameters}
    return parse_spec(data, "prefs.yaml")


def test_a_grid_over_beta_reaches_each_trials_spec_merged_into_train_dpo():
    spec = _spec({**BETA, "learning_rate": {"values": [1e-3]}})
    engine, config, trials, betas = sweeps_engine(), spec.sweep, [], []
    while (run := engine.next_run(engine_part(config), engine_runs(config, trials))) is not None:
        overrides = to_overrides(json_safe(run.config))
        beta = overrides["train"]["dpo"]["beta"]
        assert overrides == {"train": {"learning_rate": 1e-3, "dpo": {"beta": beta}}, "model": {}}
        trial = effective_spec(spec, TrainRequest(end_ds="2026-11-03", overrides=overrides))
        assert trial.train.dpo.sft_weight == 0.5 and trial.train.learning_rate == 1e-3  # the spec's, kept
        betas.append(trial.train.dpo.beta)
        trials.append({"id": f"t{len(trials)}", "state": "finished", "config": json_safe(run.config)})
        assert len(trials) <= 2, betas
    assert sorted(betas) == [0.05, 0.5] and spec.train.dpo.beta == 0.2  # the spec itself is unchanged


@pytest.mark.parametrize(
    "parameters",
    [
        {"dpo": {"parameters": {"sft_weight": {"values": [0.0, 1.0]}}}},
        {"train": {"parameters": {"dpo": {"parameters": {"beta": {"min": 0.05, "max": 0.5}}}}}},
    ],
)
def test_sft_weight_and_a_deeper_tree_are_sweepable(parameters):
    spec = _spec(parameters)
    assert spec.sweep is not None
    leaf = "sft_weight" if "dpo" in parameters else "beta"
    trial = effective_spec(
        spec, TrainRequest(end_ds="2026-11-03", overrides=to_overrides({"dpo": {"value": {leaf: 0.3}}}))
    )
    assert getattr(trial.train.dpo, leaf) == 0.3


def test_a_name_that_is_not_a_dpo_setting_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"parameters.dpo.loss: 'loss' is not a train.dpo setting"):
        SweepSpec.model_validate(
            {"method": "grid", "parameters": {"dpo": {"parameters": {"loss": {"value": "x"}}}}}
        )
    with pytest.raises(ValueError, match=r"'beta' is not something the trainer can change.*dpo.<setting>"):
        SweepSpec.model_validate({"method": "grid", "parameters": {"beta": {"values": [0.1]}}})
    with pytest.raises(
        SweepConfigError, match="trial parameter dpo.label_smoothing is not a train.dpo setting"
    ):
        to_overrides({"dpo": {"value": {"label_smoothing": 0.1}}})


def test_dpo_parameters_belong_to_a_preference_tuning_and_a_bad_value_fails_the_trial():
    with pytest.raises(
        SpecError, match=r"sweep.parameters.dpo.beta: dpo.<setting> parameters are for train.objective: dpo"
    ):
        _spec(BETA, objective="sft")
    spec = _spec(BETA)
    with pytest.raises(TrainingError, match="dpo.beta: Input should be greater than 0"):
        effective_spec(spec, TrainRequest(end_ds="2026-11-03", overrides={"train": {"dpo": {"beta": 0.0}}}))
