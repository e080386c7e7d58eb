"""The ``sweep:`` block of a pipeline spec: W&B's sweep configuration, unchanged.

    sweep:
      method: bayes                       # grid | random | bayes
      metric: {name: val_accuracy, goal: maximize}
      run_cap: 8
      early_terminate: {type: hyperband, min_iter: 2, eta: 2}
      parameters:
        learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 3.0e-2}
        batch_size: {values: [32, 64, 128]}
        model:                            # nested parameters, as in W&B
          parameters:
            dropout: {distribution: uniform, min: 0.0, max: 0.5}

Validation uses the engine W&B's own server runs (the open-source ``sweeps`` package), plus what
freestack needs to run the sweep: every parameter names something the trainer can change, the metric
is one the trainer reports each epoch, and random/bayes sweeps have a ``run_cap`` so the agents finish.

The leaves of the parameter tree are matched by name: a ``train:`` field (learning_rate, batch_size,
epochs, ...) or a ``model:`` field (hidden, channels, dropout, type); nesting is free-form
(``model: {parameters: {dropout: ...}}`` or ``optimizer: {parameters: {learning_rate: ...}}``).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

#: keys of a W&B sweep config that the W&B server (not the search engine) handles
SERVER_KEYS = ("run_cap", "name", "description", "program", "command", "project", "entity", "controller")
TUNABLE_TRAIN = (
    "learning_rate", "batch_size", "epochs", "weight_decay", "patience", "grad_clip",
    "scheduler", "warmup_epochs", "seed", "window_days",
)  # fmt: skip
TUNABLE_MODEL = ("hidden", "channels", "dropout", "type")
#: what the trainer logs every epoch (and so what a sweep metric can be)
EPOCH_METRICS = {
    "classification": ("val_loss", "val_accuracy", "val_macro_f1", "val_log_loss", "train_loss"),
    "regression": ("val_loss", "val_rmse", "val_mae", "val_r2", "train_loss"),
}
ALL_EPOCH_METRICS = tuple(dict.fromkeys(EPOCH_METRICS["classification"] + EPOCH_METRICS["regression"]))


class SweepConfigError(ValueError):
    """An invalid ``sweep:`` block; the message names the field and what to write instead."""


def sweeps_engine():
    """The ``sweeps`` package, imported quietly (it declares pydantic-v1 settings that v2 renames),
    with the submodules the controller reaches through it (``sweeps.params`` imports scipy.stats, so
    only a run pays for it, never a DAG parse: see :func:`schema_violations`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
        import sweeps.params  # noqa: F401

    return sweeps


# W&B's v1 log distributions (min/max are base-e exponents) and their v2 replacements, by schema name
_DEPRECATED_LOG = (("param_loguniform", "param_loguniform_v2"), ("param_inv_loguniform", "param_inv_loguniform_v2"),
                   ("param_qloguniform", "param_qloguniform_v2"))  # fmt: skip


def schema_violations(config: dict[str, Any]) -> list[str]:
    """What ``sweeps.schema_violations_from_proposed_config`` reports, without importing scipy.

    The engine's last check (deprecated log distributions) builds a ``sweeps.params.HyperParameter``,
    whose module imports ``scipy.stats``: 1.0-1.7 s at every DAG parse (``bench/orchestration``). The
    same check reads the distribution's name against the engine's own schema here; the messages are
    the engine's, word for word."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sweeps.config import schema
    problems = [f"{error.message}" for error in schema.validator.iter_errors(config)]
    if not isinstance(config, dict):
        raise ValueError("Sweep config must be parsable as a JSON object.")
    defs = schema.dereferenced_sweep_config_jsonschema["definitions"]

    def name_of(definition: str) -> str:
        return defs[definition]["properties"]["distribution"]["enum"][0]

    for parameter_name, parameter_dict in (config.get("parameters") or {}).items():
        if not isinstance(parameter_dict, dict):
            raise ValueError(f"Invalid configuration for hyperparameter '{parameter_name}'")
        for check in (schema.validate_min_max, schema.validate_categorical_prob):
            try:
                check(parameter_name, parameter_dict)
            except ValueError as e:
                problems.append(e.args[0])
            except TypeError:  # the engine compares min and max without checking their types
                problems.append(f"{parameter_name}: min, max and probabilities must be numbers")
        # the engine's check_for_deprecated_distributions, minus the HyperParameter object around it
        try:
            found = schema.fill_parameter(parameter_name, parameter_dict)
        except schema.ParamValidationError:
            continue
        except (ValueError, TypeError) as e:
            problems.append(str(e.args[0]) if e.args else str(e))
            continue
        if found is None:
            problems.append(f"invalid hyperparameter configuration: {parameter_name}")
            continue
        for old, new in _DEPRECATED_LOG:
            if found[0] == old:
                problems.append(f"{parameter_name} uses {name_of(old)}, where min/max specify base-e exponents. "
                                f"Use {name_of(new)} to specify limit values.")  # fmt: skip
    return problems


def engine_part(config: dict[str, Any]) -> dict[str, Any]:
    """The config without the server-side keys: what the search engine validates and reads."""
    return {k: v for k, v in config.items() if k not in SERVER_KEYS}


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


def grid_size(config: dict[str, Any]) -> int | None:
    """How many points a grid sweep has (None for random/bayes)."""
    if config.get("method") != "grid":
        return None
    size = 1
    for spec in leaf_parameters(config["parameters"]).values():
        if "values" in spec:
            size *= len(spec["values"])
        elif "value" in spec:
            continue
        elif spec.get("distribution") == "int_uniform":
            size *= int(spec["max"]) - int(spec["min"]) + 1
        elif spec.get("distribution") == "q_uniform":
            size *= max(1, math.ceil((spec["max"] - spec["min"]) / spec["q"]))
    return size


def validate(block: Any) -> dict[str, Any]:
    """Check a ``sweep:`` block; return it (a copy). Raise SweepConfigError saying what is wrong."""
    if not isinstance(block, dict):
        raise SweepConfigError(f"must be a mapping (W&B's sweep configuration), got {type(block).__name__}")
    config = copy.deepcopy(block)
    if "method" not in config:
        raise SweepConfigError("method is missing: use grid, random or bayes")
    if config["method"] not in ("grid", "random", "bayes"):
        raise SweepConfigError(f"method {config['method']!r} is not supported: use grid, random or bayes")
    if not isinstance(config.get("parameters"), dict) or not config["parameters"]:
        raise SweepConfigError("parameters is missing or empty: name at least one hyperparameter to search")
    try:
        problems = schema_violations(engine_part(config))
    except ValueError as exc:  # the engine raises for shapes it cannot even walk
        problems = [str(exc)]
    if problems:
        raise SweepConfigError("; ".join(dict.fromkeys(problems)) + " (see W&B's sweep configuration reference)")

    leaves = leaf_parameters(config["parameters"])
    tunable = TUNABLE_TRAIN + TUNABLE_MODEL
    for path, _spec in leaves.items():
        name = path.rsplit(".", 1)[-1]
        if name not in tunable:
            raise SweepConfigError(
                f"parameters.{path}: {name!r} is not something the trainer can change; "
                f"use one of {', '.join(tunable)}"
            )
    names = [p.rsplit(".", 1)[-1] for p in leaves]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SweepConfigError(f"parameters: {twice} appear more than once in the parameter tree")

    metric = config.get("metric")
    if metric is not None:
        if metric.get("name") not in ALL_EPOCH_METRICS:
            raise SweepConfigError(
                f"metric.name {metric.get('name')!r} is not reported by the trainer each epoch; "
                f"use one of {', '.join(ALL_EPOCH_METRICS)}"
            )
    elif config["method"] == "bayes":
        raise SweepConfigError("method bayes needs a metric: {name: val_loss, goal: minimize}, for example")
    if config.get("early_terminate") is not None and metric is None:
        raise SweepConfigError("early_terminate needs a metric to compare trials on")

    run_cap = config.get("run_cap")
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
        raise SweepConfigError(f"run_cap must be a positive integer, got {run_cap!r}")
    if config["method"] in ("random", "bayes") and run_cap is None:
        raise SweepConfigError(
            f"method {config['method']} never runs out of suggestions: set run_cap (the number of trials)"
        )
    return config


def to_overrides(run_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A trial's config (W&B form ``{"lr": {"value": 0.1}, "model": {"value": {"dropout": 0.2}}}`` or
    plain values) as ``{"train": {...}, "model": {...}}`` for the trainer."""
    out: dict[str, dict[str, Any]] = {"train": {}, "model": {}}

    def walk(d: dict[str, Any]) -> None:
        for name, value in d.items():
            if isinstance(value, dict) and set(value) == {"value"}:
                value = value["value"]
            if isinstance(value, dict):
                walk(value)
            elif name in TUNABLE_TRAIN:
                out["train"][name] = value
            elif name in TUNABLE_MODEL:
                if name in ("hidden", "channels"):  # layer widths: a list, or one int for one layer
                    value = [int(v) for v in value] if isinstance(value, list) else [int(value)]
                out["model"][name] = value
            else:
                raise SweepConfigError(f"trial parameter {name!r} is not something the trainer can change")

    walk(run_config)
    return out


def plain_values(run_config: dict[str, Any]) -> dict[str, Any]:
    """``{"lr": {"value": 0.1}, "model": {"value": {"dropout": 0.2}}}`` -> ``{"lr": 0.1, "model.dropout": 0.2}``."""
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for name, value in d.items():
            if isinstance(value, dict) and set(value) == {"value"}:
                value = value["value"]
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")
            else:
                out[f"{prefix}{name}"] = value

    walk(run_config, "")
    return out


def engine_run_config(run_config: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config in the engine's internal naming: nested parameters flattened with its delimiter
    (the engine proposes nested configs but, handed them back, compares flattened names)."""
    delim = sweeps_engine().params.HyperParameterSet.NESTING_DELIMITER
    out: dict[str, Any] = {}

    def walk(values: dict[str, Any], params: dict[str, Any], prefix: str) -> None:
        for name, value in values.items():
            inner = value["value"] if isinstance(value, dict) and set(value) == {"value"} else value
            spec = params.get(name)
            if isinstance(spec, dict) and isinstance(spec.get("parameters"), dict) and isinstance(inner, dict):
                walk(inner, spec["parameters"], f"{prefix}{name}{delim}")
            else:
                out[f"{prefix}{name}"] = {"value": inner}

    walk(run_config, config["parameters"], "")
    return out


def json_safe(value: Any) -> Any:
    """numpy scalars (what the engine proposes) as plain Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    return value


__all__ = [
    "ALL_EPOCH_METRICS", "EPOCH_METRICS", "SweepConfigError", "engine_part", "engine_run_config", "grid_size",
    "json_safe", "leaf_parameters", "plain_values", "sweeps_engine", "to_overrides", "validate",
]  # fmt: skip
