"""The ``sweep:`` block of a pipeline spec: W&B's sweep configuration, typed.

    sweep:
      method: bayes                       # grid | random | bayes | tpe | nsga2 (Optuna's samplers)
      metric: {name: val_accuracy, goal: maximize}
      run_cap: 8
      early_terminate: {type: hyperband, min_iter: 2, eta: 2}
      parameters:
        learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 3.0e-2}
        batch_size: {values: [32, 64, 128]}
        model:                            # nested parameters, as in W&B
          parameters:
            dropout: {distribution: uniform, min: 0.0, max: 0.5}

Several objectives (``metrics:``, a list of ``{name, goal}``, in place of ``metric``) make the sweep keep the
Pareto front of its trials, and ``candidate:`` says which trial of the front becomes the candidate
(:mod:`freestack.sweeps.pareto`); ``tpe`` and ``nsga2`` propose trials with Optuna's multi-objective
samplers. An objective is an epoch metric or a figure of the trial's costs (:data:`TRIAL_FIGURES`); the
first must be an epoch metric: trials keep their best epoch on it.

The block is checked twice when the spec is read: field by field by the models below, then as a whole by
the rules W&B's own sweep server applies (the open-source ``sweeps`` engine's schema) and by what
freestack needs to run it (:func:`validate`): every parameter names something
the trainer can change, the metric is one the trainer reports each epoch, and random and bayes sweeps
have a ``run_cap``. The sweep's code passes the model around; :meth:`SweepSpec.config` gives the W&B
configuration back as a plain mapping only where one is needed: the sweep document (``sweep.json``), the
engine and the W&B server. :meth:`SweepSpec.stored` reads that mapping back from a sweep document.
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from freestack.specbase import SpecModel

#: keys of a W&B sweep config that the W&B server (not the search engine) handles
SERVER_KEYS = ("run_cap", "name", "description", "program", "command", "project", "entity", "controller")
TUNABLE_TRAIN = (
    "learning_rate",
    "batch_size",
    "epochs",
    "weight_decay",
    "patience",
    "grad_clip",
    "scheduler",
    "warmup_epochs",
    "seed",
    "window_days",
)
TUNABLE_MODEL = ("hidden", "channels", "dropout", "type")
#: the parameter-tree node whose leaves are a custom model's constructor arguments (model.init)
INIT = "init"
#: the parameter-tree node of a fine-tuned model's LoRA settings (model.peft), and the ones a sweep can change
PEFT = "peft"
TUNABLE_PEFT = ("r", "alpha", "dropout")
#: the parameter-tree node of a preference tuning's settings (train.dpo), and the ones a sweep can change
DPO = "dpo"
TUNABLE_DPO = ("beta", "sft_weight")
#: the node of a GRPO training's settings (train.grpo), and the ones a sweep can change
GRPO = "grpo"
TUNABLE_GRPO = ("beta", "num_generations", "epsilon", "temperature", "max_completion_length")
#: the nodes whose leaves are settings of one block, named ``<node>.<name>``
NODES = (INIT, PEFT, DPO, GRPO)
#: the nodes whose leaves a sweep may change only among their block's own settings: (node, what, which)
CHOSEN = (
    (PEFT, "a LoRA setting", TUNABLE_PEFT),
    (DPO, "a train.dpo setting", TUNABLE_DPO),
    (GRPO, "a train.grpo setting", TUNABLE_GRPO),
)
#: the train blocks a trial's settings go to (``dpo.<name>`` to train.dpo, ``grpo.<name>`` to train.grpo)
TRAIN_NODES = {DPO: TUNABLE_DPO, GRPO: TUNABLE_GRPO}
#: what the trainer logs every epoch (and so what a sweep metric can be)
EPOCH_METRICS = {
    "classification": ("val_loss", "val_accuracy", "val_macro_f1", "val_log_loss", "train_loss"),
    "regression": ("val_loss", "val_rmse", "val_mae", "val_r2", "train_loss"),
    "generation": ("val_loss", "val_perplexity", "train_loss"),
    # a preference-tuned language model (train.objective: dpo): DPO's validation metrics (ml.preference)
    "preference": (
        "val_reward_margin",
        "val_reward_accuracy",
        "val_reward_chosen",
        "val_reward_rejected",
        "val_logps_chosen",
        "val_logps_rejected",
        "val_loss",
        "train_loss",
    ),
    # a language model trained on rewards (train.objective: grpo): its rewards (ml.grpo); a reward of its
    # own is val_reward_<name>
    "grpo": (
        "val_reward",
        "val_completion_length",
        "val_loss",
        "train_reward",
        "train_reward_std",
        "train_kl",
        "train_loss",
    ),
}
ALL_EPOCH_METRICS = tuple(dict.fromkeys(m for metrics in EPOCH_METRICS.values() for m in metrics))
#: the methods Optuna's samplers run (TPE, NSGA-II), beside W&B's grid, random and bayes
OPTUNA_METHODS = ("tpe", "nsga2")
METHODS = ("grid", "random", "bayes", *OPTUNA_METHODS)
#: a trial's serving figures: its model served as the spec's ``deploy`` block serves it and measured as
#: evaluate measures a candidate (freestack.serving.costs), each the path in the trial's costs it reads
SERVED_FIGURES = {
    f"serving_{name}": f"serving.{name}"
    for name in (
        "latency_p50_ms",
        "latency_p99_ms",
        "rows_per_s",
        "peak_memory_mb",
        "cpu_ms_per_request",
        "ttft_p50_ms",
        "ttft_p99_ms",
        "itl_ms",
        "tokens_per_s",
    )
}
#: a trial's figures beside its epoch metrics that an objective may name: its costs as training recorded
#: them (freestack.train.costs), or as serving its model measured them, each the path in the costs it reads
TRIAL_FIGURES = {
    "trainable_params": "trainable_params",
    "model_mb": "model_mb",
    "train_wall_s": "train.wall_s",
    "train_cpu_s": "train.cpu_s",
    "train_peak_memory_mb": "train.peak_memory_mb",
    "train_cost": "train.cost",
    "train_tokens": "train.tokens",
    **SERVED_FIGURES,
}
#: the distributions Optuna's samplers take (as W&B names them); values and a fixed value always
OPTUNA_DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values", "q_uniform", "categorical")


def _short_name(path: str) -> str:
    """A leaf's name (``init.<name>``, ``peft.<name>`` and ``dpo.<name>`` inside those nodes)."""
    *parents, name = path.split(".")
    node = next((n for n in NODES if n in parents), None)
    return f"{node}.{name}" if node else name


class SweepConfigError(ValueError):
    """An invalid ``sweep:`` block; the message names the field and what to write instead."""


# W&B's v1 log distributions (min/max are base-e exponents) and their v2 replacements, by schema name
_DEPRECATED_LOG = {
    "param_loguniform": "param_loguniform_v2",
    "param_inv_loguniform": "param_inv_loguniform_v2",
    "param_qloguniform": "param_qloguniform_v2",
}


def _demands(kind: dict[str, Any]) -> tuple[frozenset[str], frozenset[str] | None]:
    """What a parameter kind's schema demands of a parameter, as far as it says so plainly: the keys
    every parameter of the kind has, and the ``distribution`` values it takes (None: any)."""
    keys = frozenset(kind.get("required", ()))
    if kind.get("anyOf"):  # a kind in variants (uniform's): what every variant demands
        variants = [_demands(v) if isinstance(v, dict) else (frozenset(), None) for v in kind["anyOf"]]
        common = frozenset.intersection(*(k for k, _ in variants))
        values = [v for _, v in variants]
        return keys | common, None if None in values else frozenset().union(*values)
    if kind.get("additionalProperties") is not False or "patternProperties" in kind:
        return keys, None
    named = kind.get("properties", {}).get("distribution")
    if named is None:
        return keys, frozenset()  # no distribution key at all
    return keys, frozenset(named["enum"]) if "enum" in named else None


class _EngineSchema:
    """The sweeps engine's JSON schema (W&B's sweep rules) from its package data, with a Draft 7 validator
    for a whole config and one per parameter kind, built once per process.

    Importing ``sweeps.config`` for them would import numpy, requests and jsonref at every DAG parse,
    and the engine builds a validator per kind again for every parameter it checks.

    A parameter is of the first of about twenty kinds that accepts it, and jsonschema tries them in
    turn: both checks pass over the kinds whose schema plainly refuses the parameter (a key the kind
    requires is missing, or its ``distribution`` is another), which makes a spec's sweep check about
    5x quicker: it was two thirds of a spec's validation (docs/benchmarks.md). Only an invalid config
    gets jsonschema's own ``anyOf``, so every verdict and message stays the engine's."""

    def __init__(self) -> None:
        import importlib.util
        import json
        from pathlib import Path

        import jsonschema

        # located, not imported: the package's __init__ imports the engine
        package = importlib.util.find_spec("sweeps")
        if package is None or not package.submodule_search_locations:
            raise ImportError("the sweeps package (W&B's sweep engine) is not installed")
        folder = Path(list(package.submodule_search_locations)[0])
        schema = json.loads((folder / "config" / "schema.json").read_text())
        checker = jsonschema.FormatChecker()  # the engine's: the formats float and integer are Python types
        checker.checks("float")(lambda value: isinstance(value, float))
        checker.checks("integer")(lambda value: isinstance(value, int))
        self.definitions: dict[str, Any] = schema["definitions"]
        self._stock_any_of = jsonschema.Draft7Validator.VALIDATORS["anyOf"]
        checks = jsonschema.validators.extend(jsonschema.Draft7Validator, {"anyOf": self._any_of})
        self.validator = checks(schema, format_checker=checker)
        # the parameter kinds in the engine's order: a parameter is of the first kind it validates against
        self.kinds = {
            ref["$ref"].rsplit("/", 1)[-1]: checks(
                {"$ref": ref["$ref"], "definitions": self.definitions}, format_checker=checker
            )
            for ref in self.definitions["parameter"]["anyOf"]
        }
        self.demands = {name: _demands(self.definitions[name]) for name in self.kinds}

    def kind(self, parameter: dict[str, Any]) -> str | None:
        return next(
            (
                name
                for name, validator in self.kinds.items()
                if self._may_be(name, parameter) and validator.is_valid(parameter)
            ),
            None,
        )

    def _may_be(self, kind: str | None, parameter: Any) -> bool:
        """False when ``kind``'s schema plainly refuses ``parameter``; True otherwise (it may accept it)."""
        if kind not in self.demands or not isinstance(parameter, dict):
            return True
        keys, values = self.demands[kind]
        named = parameter.get("distribution")
        if not keys <= parameter.keys():
            return False
        return values is None or not isinstance(named, str) or named in values

    def _any_of(self, validator: Any, any_of: list, instance: Any, schema: dict) -> Any:
        """Draft 7's ``anyOf`` keyword: valid when an alternative is, trying each (but the kinds that
        plainly refuse the instance) up to its first error; else jsonschema's own error."""
        for index, alternative in enumerate(any_of):
            ref = alternative.get("$ref", "") if isinstance(alternative, dict) else ""
            kind = ref.removeprefix("#/definitions/") if ref.startswith("#/definitions/") else None
            if not self._may_be(kind, instance):
                continue
            if next(validator.descend(instance, alternative, schema_path=index), None) is None:
                return
        yield from self._stock_any_of(validator, any_of, instance, schema)

    def distribution(self, kind: str) -> str:
        return self.definitions[kind]["properties"]["distribution"]["enum"][0]


@functools.cache
def _engine_schema() -> _EngineSchema:
    return _EngineSchema()


def _min_max(name: str, parameter: dict[str, Any]) -> list[str]:
    """The engine's ``validate_min_max``, word for word."""
    if "min" in parameter and "max" in parameter and parameter["min"] >= parameter["max"]:
        return [f"{name}: min {parameter['min']} is not less than max {parameter['max']}"]
    return []


def _probabilities(name: str, parameter: dict[str, Any]) -> list[str]:
    """The engine's ``validate_categorical_prob`` (numpy's ``isclose`` tolerances), word for word."""
    if "values" not in parameter or "probabilities" not in parameter:
        return []
    values, probabilities = parameter["values"], parameter["probabilities"]
    if len(values) != len(probabilities):
        return [
            f"Parameter {name}: values {values} and probabilities {probabilities} are not the same length"
        ]
    if not abs(sum(probabilities) - 1.0) <= 1e-8 + 1e-5:
        return [f"Parameter {name}: Probabilities {probabilities} do not sum to 1"]
    return []


def schema_violations(config: dict[str, Any]) -> list[str]:
    """What ``sweeps.schema_violations_from_proposed_config`` reports, without importing the engine.

    The engine's last check (deprecated log distributions) builds a ``sweeps.params.HyperParameter``,
    whose module imports ``scipy.stats``; the same check reads the parameter's kind from the engine's
    own schema here. The messages are the engine's, word for word."""
    engine = _engine_schema()
    problems = [f"{error.message}" for error in engine.validator.iter_errors(config)]
    if not isinstance(config, dict):
        raise ValueError("Sweep config must be parsable as a JSON object.")
    for parameter_name, parameter_dict in (config.get("parameters") or {}).items():
        if not isinstance(parameter_dict, dict):
            raise ValueError(f"Invalid configuration for hyperparameter '{parameter_name}'")
        for check in (_min_max, _probabilities):
            try:
                problems += check(parameter_name, parameter_dict)
            except TypeError:  # the engine compares min and max without checking their types
                problems.append(f"{parameter_name}: min, max and probabilities must be numbers")
        # the engine's check_for_deprecated_distributions, minus the HyperParameter object around it
        kind = engine.kind(parameter_dict)
        if kind == "param_dict":  # nested parameters: the engine does not fill them
            continue
        if kind is None:
            problems.append(f"invalid hyperparameter configuration: {parameter_name}")
            continue
        try:  # the engine fills the parameter only after checking min < max again
            problems += _min_max(parameter_name, parameter_dict)
        except TypeError as e:
            problems.append(str(e.args[0]) if e.args else str(e))
            continue
        if kind in _DEPRECATED_LOG:
            problems.append(
                f"{parameter_name} uses {engine.distribution(kind)}, where min/max specify base-e "
                f"exponents. Use {engine.distribution(_DEPRECATED_LOG[kind])} to specify limit values."
            )
    return problems


def leaf_parameters(parameters: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """``{"model.dropout": {...}, "learning_rate": {...}}``: every searchable leaf by dotted path."""
    out: dict[str, dict[str, Any]] = {}
    for name, spec in parameters.items():
        path = f"{prefix}{name}"
        if isinstance(spec, dict) and isinstance(spec.get("parameters"), dict):
            out.update(leaf_parameters(spec["parameters"], f"{path}."))
        else:
            out[path] = spec
    return out


def grid_size(config: SweepSpec) -> int | None:
    """How many points a grid sweep has (None for random/bayes)."""
    if config.method != "grid":
        return None
    size = 1
    for p in config.leaves().values():
        if p.values is not None:
            size *= len(p.values)
        elif p.value is not None:
            continue
        elif p.distribution == "int_uniform":
            size *= int(p.max) - int(p.min) + 1
        elif p.distribution == "q_uniform":
            size *= max(1, math.ceil((p.max - p.min) / p.q))
    return size


def validate(block: Any) -> dict[str, Any]:
    """Check a ``sweep:`` block; return it (a copy). Raise SweepConfigError saying what is wrong."""
    if not isinstance(block, dict):
        raise SweepConfigError(f"must be a mapping (W&B's sweep configuration), got {type(block).__name__}")
    config = copy.deepcopy(block)
    if "method" not in config:
        raise SweepConfigError(f"method is missing: use {', '.join(METHODS)}")
    if config["method"] not in METHODS:
        raise SweepConfigError(f"method {config['method']!r} is not supported: use {', '.join(METHODS)}")
    if not isinstance(config.get("parameters"), dict) or not config["parameters"]:
        raise SweepConfigError("parameters is missing or empty: name at least one hyperparameter to search")
    try:
        problems = schema_violations(wandb_part(config))
    except ValueError as exc:  # the engine raises for shapes it cannot even walk
        problems = [str(exc)]
    if problems:
        raise SweepConfigError(
            "; ".join(dict.fromkeys(problems)) + " (see W&B's sweep configuration reference)"
        )

    _check_parameters(config["parameters"])
    _check_objectives(config)
    metric = config.get("metric")
    if metric is not None:
        if metric.get("name") not in ALL_EPOCH_METRICS:
            raise SweepConfigError(
                f"metric.name {metric.get('name')!r} is not reported by the trainer each epoch; "
                f"use one of {', '.join(ALL_EPOCH_METRICS)}"
            )
    elif config.get("metrics") is not None:
        pass  # several objectives: _check_objectives read them
    elif config["method"] in ("bayes", *OPTUNA_METHODS):
        raise SweepConfigError(
            f"method {config['method']} needs a metric: {{name: val_loss, goal: minimize}}, for example, or "
            "metrics: [...] (several objectives)"
        )
    elif config.get("early_terminate") is not None:
        raise SweepConfigError("early_terminate needs a metric to compare trials on")

    run_cap = config.get("run_cap")
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
        raise SweepConfigError(f"run_cap must be a positive integer, got {run_cap!r}")
    if config["method"] in ("random", "bayes", *OPTUNA_METHODS) and run_cap is None:
        raise SweepConfigError(
            f"method {config['method']} never runs out of suggestions: set run_cap (the number of trials)"
        )
    return config


def wandb_part(config: dict[str, Any]) -> dict[str, Any]:
    """What W&B's sweep rules check: the config less the server's keys and freestack's own (several
    objectives, the candidate rule), an Optuna method checked as random (the same parameters)."""
    out = {k: v for k, v in config.items() if k not in (*SERVER_KEYS, "metrics", "candidate")}
    if out.get("method") in OPTUNA_METHODS:
        out["method"] = "random"
    return out


def objectives(config: SweepSpec) -> list[tuple[str, str]]:
    """The sweep's objectives, (name, goal) each: ``metrics``, else its one ``metric`` (none: [])."""
    if config.metrics:
        return [(m.name, m.goal) for m in config.metrics]
    metric = config.metric
    return [(metric.name, metric.goal)] if metric is not None and metric.name else []


def _objective_names(config: dict[str, Any]) -> list[str]:
    """The names of the objectives of a block as written (checked before its model is built)."""
    if config.get("metrics"):
        return [m["name"] for m in config["metrics"]]
    metric = config.get("metric") or {}
    return [metric["name"]] if metric.get("name") else []


def served(config: SweepSpec) -> bool:
    """Whether an objective is a serving figure: each trial's model is then served and measured."""
    return any(name in SERVED_FIGURES for name, _ in objectives(config))


def _check_objectives(config: dict[str, Any]) -> None:
    """``metrics`` (several objectives) and ``candidate`` (which trial of the front), and what an Optuna
    method can search."""
    if config.get("metrics") is not None:
        _check_metrics(config)
    if config.get("candidate") is not None:
        _check_candidate(config["candidate"], _objective_names(config))
    if config["method"] in OPTUNA_METHODS:
        for path, p in leaf_parameters(config["parameters"]).items():
            dist = p.get("distribution") if isinstance(p, dict) else None
            if dist is not None and dist not in OPTUNA_DISTRIBUTIONS:
                raise SweepConfigError(
                    f"parameters.{path}: method {config['method']} (Optuna) draws from "
                    f"{', '.join(OPTUNA_DISTRIBUTIONS)} or a list of values, not {dist}"
                )


def _check_metrics(config: dict[str, Any]) -> None:
    metrics = config["metrics"]
    if config.get("metric") is not None:
        raise SweepConfigError("metric and metrics both name objectives: keep metrics (a list) only")
    if (
        not isinstance(metrics, list)
        or not metrics
        or not all(isinstance(m, dict) and m.get("name") for m in metrics)
    ):
        raise SweepConfigError(
            "metrics must be a list of {name, goal}: [{name: val_accuracy, goal: maximize}, ...]"
        )
    names = [m["name"] for m in metrics]
    unknown = [n for n in names if n not in ALL_EPOCH_METRICS and n not in TRIAL_FIGURES]
    if unknown:
        raise SweepConfigError(
            f"metrics: {unknown} are neither epoch metrics ({', '.join(ALL_EPOCH_METRICS)}) nor a trial's "
            f"figures ({', '.join(TRIAL_FIGURES)})"
        )
    if names[0] not in ALL_EPOCH_METRICS:
        raise SweepConfigError(
            f"metrics: the first objective, {names[0]}, must be an epoch metric: trials keep their best "
            "epoch on it; put a trial's figure after it"
        )
    if len(set(names)) < len(names):
        raise SweepConfigError(f"metrics: {names} name an objective twice")
    if len(names) > 1 and config["method"] == "bayes":
        raise SweepConfigError("method bayes optimises one metric: use tpe or nsga2 for several objectives")
    if len(names) > 1 and config.get("early_terminate") is not None:
        raise SweepConfigError(
            "early_terminate compares trials on one metric: drop it, or keep one objective"
        )


def _check_candidate(rule: Any, names: list[str]) -> None:
    """``candidate``: ``{best: <objective>, limits: {<objective>: {max: x} | {min: x}}}`` or ``{weights:
    {<objective>: w}}``, every name one of the sweep's objectives."""
    if (
        not isinstance(rule, dict)
        or not ({"best", "weights"} & rule.keys())
        or set(rule) - {"best", "limits", "weights"}
    ):
        raise SweepConfigError(
            "candidate must be {best: <objective>, limits: {<objective>: {max: x}}} or {weights: {<objective>: w}}"
        )
    if "best" in rule and "weights" in rule:
        raise SweepConfigError("candidate: best and weights are two rules; keep one")
    named = [rule.get("best")] if "best" in rule else list(rule.get("weights") or {})
    named += list(rule.get("limits") or {})
    stray = [n for n in named if n not in names]
    if stray:
        raise SweepConfigError(f"candidate names {stray}, which are not among the sweep's objectives {names}")
    for name, bound in (rule.get("limits") or {}).items():
        if not isinstance(bound, dict) or not bound or set(bound) - {"min", "max"}:
            raise SweepConfigError(f"candidate.limits.{name} must be {{max: x}} and/or {{min: x}}")


def _check_parameters(parameters: dict[str, Any]) -> None:
    """Every leaf of the parameter tree must be something a trial can change (a custom model's constructor
    argument, a LoRA or train.dpo setting, or one of the trainer's), and no name may appear twice."""
    leaves = leaf_parameters(parameters)
    tunable = TUNABLE_TRAIN + TUNABLE_MODEL
    for path in leaves:
        *parents, name = path.split(".")
        if INIT in parents:  # a custom model's constructor argument: the spec checks it against model.init
            continue
        node = next(((what, names) for n, what, names in CHOSEN if n in parents), None)
        if node is not None and name not in node[1]:
            raise SweepConfigError(
                f"parameters.{path}: {name!r} is not {node[0]} a sweep can change; use one of {', '.join(node[1])}"
            )
        if node is None and name not in tunable:
            raise SweepConfigError(
                f"parameters.{path}: {name!r} is not something the trainer can change; "
                f"use one of {', '.join(tunable)}, init.<argument> for a custom model's constructor, "
                f"or dpo.<setting> ({', '.join(TUNABLE_DPO)}) for a preference tuning, "
                f"grpo.<setting> ({', '.join(TUNABLE_GRPO)}) for a GRPO training"
            )
    names = [_short_name(p) for p in leaves]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SweepConfigError(f"parameters: {twice} appear more than once in the parameter tree")


Distribution = Literal[
    "constant",
    "categorical",
    "categorical_w_probabilities",
    "int_uniform",
    "uniform",
    "log_uniform",
    "log_uniform_values",
    "q_uniform",
    "q_log_uniform",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "beta",
    "q_beta",
]

#: the sweep agents' Airflow pool: one slot per agent that trains at once
POOL = "freestack_sweep"
#: the validation context of a config read back from a sweep document (:meth:`SweepSpec.stored`)
_STORED = "stored"


def _stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(_STORED))


class SweepModel(SpecModel):
    """A part of the ``sweep:`` block. Read back from a sweep document (:meth:`SweepSpec.stored`), it passes
    over the keys it does not name, as the sweep's code always did: an older version may have written them."""

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any, info: ValidationInfo) -> Any:
        if _stored(info) and isinstance(data, dict):
            return {k: v for k, v in data.items() if k in cls.model_fields}
        return data


class SweepMetric(SweepModel):
    """What the sweep optimises: a metric the trainer logs every epoch."""

    name: str = Field(
        description="An epoch metric: val_loss, val_accuracy, val_macro_f1, val_log_loss, val_rmse, val_mae, val_r2, train_loss."
    )
    goal: Literal["minimize", "maximize"] = Field(
        default="minimize", description="Whether lower or higher is better."
    )
    target: float | None = Field(
        default=None, description="Stop the sweep once a trial reaches this value (W&B)."
    )
    impute: float | None = Field(
        default=None, description="The value a trial that never logged the metric counts as (W&B)."
    )


class SweepObjective(SweepModel):
    """One of several objectives (``metrics``): an epoch metric or a figure of the trial's costs."""

    name: str = Field(
        description="An epoch metric (val_accuracy, ...) or a trial's figure (trainable_params, model_mb, train_wall_s, ...)."
    )
    goal: Literal["minimize", "maximize"] = Field(
        default="minimize", description="Whether lower or higher is better."
    )


class CandidateLimit(SweepModel):
    """Bounds on one objective for the candidate rule."""

    min: float | None = Field(default=None, description="At least this.")
    max: float | None = Field(default=None, description="At most this.")


class CandidateRule(SweepModel):
    """Which trial of the Pareto front becomes the candidate: the best on one objective within limits on
    the others, or the highest weighted score."""

    best: str | None = Field(default=None, description="The objective the candidate is the best on.")
    limits: dict[str, CandidateLimit] = Field(
        default_factory=dict, description="Bounds the candidate must keep."
    )
    weights: dict[str, float] | None = Field(
        default=None,
        description="A weight per objective: the candidate has the highest sum of weight x its value scaled to "
        "0 (the front's worst) .. 1 (its best)",
    )


class EarlyTerminate(SweepModel):
    """Hyperband early termination: trials behind the others at a bracket are stopped."""

    type: Literal["hyperband"] = Field(description="The only kind W&B supports.")
    min_iter: int | None = Field(default=None, ge=1, description="The epoch of the first bracket.")
    max_iter: int | None = Field(
        default=None, ge=1, description="The most epochs a trial runs (brackets count down from it)."
    )
    s: int | None = Field(default=None, ge=1, description="The number of brackets (with max_iter).")
    eta: float | None = Field(default=None, gt=1, description="The bracket multiplier (default 3).")


class SweepParameter(SweepModel):
    """One searchable parameter, as in W&B: a fixed ``value``, a list of ``values``, a ``distribution``
    with its bounds, or nested ``parameters``."""

    value: Any = Field(default=None, description="A fixed value.")
    values: list[Any] | None = Field(default=None, description="The values to choose from.")
    probabilities: list[float] | None = Field(default=None, description="With values: how likely each is.")
    distribution: Distribution | None = Field(default=None, description="How values are drawn (W&B's names).")
    min: int | float | None = Field(default=None, description="The distribution's lower bound.")
    max: int | float | None = Field(default=None, description="The distribution's upper bound.")
    q: int | float | None = Field(default=None, description="The step of a quantised distribution.")
    mu: int | float | None = Field(default=None, description="The mean of a normal distribution.")
    sigma: int | float | None = Field(
        default=None, description="The standard deviation of a normal distribution."
    )
    a: int | float | None = Field(default=None, description="A beta distribution's alpha.")
    b: int | float | None = Field(default=None, description="A beta distribution's beta.")
    parameters: dict[str, SweepParameter] | None = Field(default=None, description="Nested parameters.")


class SweepSpec(SweepModel):
    """A W&B sweep configuration for the pipeline's trainer."""

    method: Literal["grid", "random", "bayes", "tpe", "nsga2"] = Field(
        description="How trials are proposed: W&B's grid, random, bayes; Optuna's TPE and NSGA-II samplers."
    )
    metric: SweepMetric | None = Field(
        default=None, description="What to optimise; bayes and early_terminate need it."
    )
    metrics: list[SweepObjective] | None = Field(
        default=None,
        description="Several objectives in place of metric: the sweep keeps their Pareto front; the first must "
        "be an epoch metric",
    )
    candidate: CandidateRule | None = Field(
        default=None,
        description="Which trial of the front becomes the candidate (default: the best on the first objective).",
    )
    parameters: dict[str, SweepParameter] = Field(
        min_length=1,
        description="The searched parameters, by name: train: fields (learning_rate, batch_size, epochs, ...) "
        "or model: fields (hidden, channels, dropout, type), nested as you like; dpo.beta and dpo.sft_weight "
        "for a preference tuning (train.dpo); grpo.beta, grpo.num_generations, ... for a GRPO training (train.grpo).",
    )
    early_terminate: EarlyTerminate | None = Field(
        default=None, description="Stop weak trials early (hyperband)."
    )
    run_cap: int | None = Field(
        default=None, ge=1, description="The number of trials; random and bayes need it."
    )
    name: str | None = Field(default=None, description="A name for the sweep in W&B.")
    description: str | None = Field(default=None, description="A description for the sweep in W&B.")
    project: str | None = Field(default=None, description="The W&B project of a sweep on a W&B server.")
    entity: str | None = Field(default=None, description="The W&B entity of a sweep on a W&B server.")
    program: Any = Field(
        default=None,
        description="Accepted in a copied W&B config and ignored: the agents run the pipeline's trainer.",
    )
    command: Any = Field(
        default=None, description="Accepted in a copied W&B config and ignored, like program."
    )
    controller: Any = Field(
        default=None,
        description="Accepted in a copied W&B config and ignored: the controller is freestack's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _whole(cls, data: Any, info: ValidationInfo) -> Any:
        """W&B's own rules and freestack's, on the block as written (messages name the field); a stored
        config was checked when it was written."""
        return data if _stored(info) else validate(data)

    @classmethod
    def stored(cls, config: dict[str, Any]) -> SweepSpec:
        """The config a sweep document holds (``sweep.json``, as :meth:`config` wrote it, in this version or
        an older one), read back: not checked again, and the keys this version does not name passed over."""
        return cls.model_validate(config, context={_STORED: True})

    def config(self) -> dict[str, Any]:
        """The W&B sweep configuration as a plain mapping: what the sweep document stores, and the engine's and
        the W&B server's input."""
        return self.model_dump(mode="json", exclude_none=True)

    def leaves(self) -> dict[str, SweepParameter]:
        """Every searchable leaf of the parameter tree by dotted path (``model.dropout``)."""
        return _leaves(self.parameters)

    def widest(self, name: str) -> int:
        """The largest whole value a trial can give the parameters called ``name`` (0 when the sweep does not
        tune it): a training run's window is fixed wide enough for every ``window_days`` a trial may ask."""
        widest = 0
        for path, p in self.leaves().items():
            if path.rsplit(".", 1)[-1] != name:
                continue
            candidates = [*(p.values or []), p.value, p.max]
            widest = max([widest, *(int(v) for v in candidates if isinstance(v, int | float))])
        return widest


def _leaves(parameters: dict[str, SweepParameter], prefix: str = "") -> dict[str, SweepParameter]:
    """:func:`leaf_parameters` of the model's parameter tree."""
    out: dict[str, SweepParameter] = {}
    for name, p in parameters.items():
        path = f"{prefix}{name}"
        if p.parameters is not None:
            out.update(_leaves(p.parameters, f"{path}."))
        else:
            out[path] = p
    return out


__all__ = [
    "ALL_EPOCH_METRICS",
    "EPOCH_METRICS",
    "METHODS",
    "OPTUNA_METHODS",
    "SERVED_FIGURES",
    "TRIAL_FIGURES",
    "CandidateRule",
    "SweepObjective",
    "objectives",
    "served",
    "wandb_part",
    "DPO",
    "GRPO",
    "TRAIN_NODES",
    "TUNABLE_GRPO",
    "INIT",
    "NODES",
    "PEFT",
    "TUNABLE_DPO",
    "TUNABLE_PEFT",
    "POOL",
    "SERVER_KEYS",
    "TUNABLE_MODEL",
    "TUNABLE_TRAIN",
    "EarlyTerminate",
    "SweepConfigError",
    "SweepMetric",
    "SweepParameter",
    "SweepModel",
    "SweepSpec",
    "grid_size",
    "leaf_parameters",
    "validate",
]
