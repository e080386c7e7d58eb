"""Sweeps on several objectives: Optuna's TPE and NSGA-II proposing trials through the real local controller
(leases, storage), the Pareto front of the finished trials, and the candidate rule with its reason."""

from __future__ import annotations

import pytest

from tests.support.sweeps import OBJECTIVES, sized, write_spec

LR = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}


@pytest.fixture
def sweep_of(tmp_path, storage):
    from freestack.spec import load_spec
    from freestack.sweeps.core import LocalAgent, create_sweep, load_trials

    def run(sweep, sweep_id):
        spec = load_spec(write_spec(tmp_path / sweep_id, sweep))
        create_sweep(spec, sweep_id, {"end_ds": "2026-11-05"}, agents=1)
        LocalAgent(spec, sweep_id, sized, ttl=30).run()
        runs.append(spec)
        return spec.sweep, [d for d, _ in load_trials(spec, sweep_id)]

    runs: list = []
    run.specs = runs

    return run


@pytest.mark.parametrize("method", ["tpe", "nsga2"])
def test_optuna_methods_propose_within_bounds_and_keep_the_pareto_front(sweep_of, method):
    from freestack.sweeps import pareto

    sweep = {
        "method": method,
        "metrics": OBJECTIVES,
        "run_cap": 12,
        "parameters": {
            "learning_rate": LR,
            "model": {"parameters": {"dropout": {"values": [0.0, 0.1, 0.3]}}},
        },
        "candidate": {"best": "val_accuracy", "limits": {"trainable_params": {"max": 2000}}},
    }
    config, trials = sweep_of(sweep, f"mo-{method}")
    assert len(trials) == 12 and all(t["state"] == "finished" for t in trials)
    assert all(1e-4 <= t["params"]["learning_rate"] <= 1e-1 for t in trials)
    assert {t["params"]["model.dropout"] for t in trials} <= {0.0, 0.1, 0.3}
    values = {t["id"]: pareto.values_of(t, config) for t in trials}
    front = pareto.front(config, trials)
    assert len(front) >= 2, values  # accuracy trades against size below lr 10^-2.5
    for tid in front:  # no trial is at least as good on both and better on one
        acc, size = values[tid]
        assert not any(a >= acc and s <= size and (a, s) != (acc, size) for a, s in values.values()), (
            tid,
            values,
        )
    outside = [tid for tid in values if tid not in front]
    for tid in outside:  # every trial off the front has one on it at least as good on both
        acc, size = values[tid]
        assert any(values[f][0] >= acc and values[f][1] <= size for f in front), (tid, values)
    rows = [
        {"trial": tid, "val_accuracy": values[tid][0], "trainable_params": values[tid][1]} for tid in front
    ]
    best, reason = pareto.choose(config, rows)
    within = [r for r in rows if r["trainable_params"] <= 2000]
    assert best["trainable_params"] <= 2000 and best["val_accuracy"] == max(r["val_accuracy"] for r in within)
    assert (
        reason.startswith(f"{best['trial']}: the best val_accuracy")
        and "within trainable_params ≤ 2000" in reason
    )


def _config(**block):
    """A sweep's config on OBJECTIVES, as its spec reads it."""
    from freestack.sweeps.spec import SweepSpec

    base = {"method": "nsga2", "metrics": OBJECTIVES, "run_cap": 8, "parameters": {"learning_rate": LR}}
    return SweepSpec.model_validate({**base, **block})


def test_the_candidate_rule_by_weights_and_limits_no_trial_keeps():
    from freestack.sweeps import pareto

    config = _config(candidate={"weights": {"val_accuracy": 1.0, "trainable_params": 1.0}})
    rows = [
        {"trial": "t0000", "val_accuracy": 0.90, "trainable_params": 9000},
        {"trial": "t0001", "val_accuracy": 0.85, "trainable_params": 1000},
        {"trial": "t0002", "val_accuracy": 0.60, "trainable_params": 500},
    ]
    best, reason = pareto.choose(config, rows)  # scaled: t0001 0.833 + 0.941, t0000 1 + 0, t0002 0 + 1
    assert best["trial"] == "t0001" and "the highest weighted score 1.7745" in reason, reason
    plain, why = pareto.choose(_config(), rows)  # no rule: the best on the first objective
    assert plain["trial"] == "t0000" and why.startswith("t0000: the best val_accuracy (0.9, maximize) of 3")
    bounded = _config(candidate={"best": "val_accuracy", "limits": {"trainable_params": {"max": 800}}})
    best, reason = pareto.choose(bounded, rows)
    assert best["trial"] == "t0002" and "left out: t0000 (trainable_params 9000 > 800)" in reason, reason
    assert "within trainable_params ≤ 800" in reason, reason
    with pytest.raises(ValueError, match="no trial of the front keeps candidate.limits"):
        pareto.choose(
            _config(candidate={"best": "val_accuracy", "limits": {"trainable_params": {"max": 10}}}), rows
        )


@pytest.mark.parametrize(
    "sweep, expected",
    [
        ({"metric": {"name": "val_loss"}, "metrics": OBJECTIVES}, "metric and metrics both name objectives"),
        ({"metrics": [{"name": "val_accuracy"}, {"name": "latency"}]}, "metrics: ['latency'] are neither"),
        ({"metrics": OBJECTIVES[::-1]}, "the first objective, trainable_params, must be an epoch metric"),
        ({"method": "bayes", "metrics": OBJECTIVES}, "method bayes optimises one metric: use tpe or nsga2"),
        ({"method": "tpe", "metric": None, "metrics": None}, "method tpe needs a metric"),
        (
            {"parameters": {"learning_rate": {"distribution": "normal", "mu": 0.01, "sigma": 0.001}}},
            "method nsga2 (Optuna) draws from uniform",
        ),
        ({"candidate": {"best": "val_loss"}}, "candidate names ['val_loss'], which are not among"),
        (
            {"candidate": {"best": "val_accuracy", "weights": {"val_accuracy": 1}}},
            "best and weights are two rules",
        ),
        ({"run_cap": None}, "method nsga2 never runs out of suggestions: set run_cap"),
    ],
)
def test_invalid_multi_objective_sweeps_fail_clearly(tmp_path, sweep, expected):
    from freestack.errors import SpecError
    from freestack.spec import load_spec

    block = {
        "method": "nsga2",
        "metrics": OBJECTIVES,
        "run_cap": 8,
        "parameters": {"learning_rate": LR},
        **sweep,
    }
    block = {k: v for k, v in block.items() if v is not None}
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, block))
    assert expected in str(info.value), str(info.value)


def test_optuna_methods_and_several_objectives_run_on_the_local_controller():
    """W&B's sweep server runs grid, random and bayes on one metric: the create task keeps the others local."""
    from freestack.sweeps.wandb_sweep import server_can_run

    one = {"metrics": None, "metric": OBJECTIVES[0]}
    assert server_can_run(_config(method="bayes", **one))
    assert not server_can_run(_config(method="tpe", **one))
    assert not server_can_run(_config(method="random"))
