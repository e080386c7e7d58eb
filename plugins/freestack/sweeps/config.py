"""The sweep engine's side of a ``sweep:`` block: trial configs in and out of the open-source ``sweeps``
engine (the one W&B's server runs). The block itself, and its validation, is :mod:`freestack.sweeps.spec`.
"""

from __future__ import annotations

import warnings
from typing import Any

from freestack.storage import join
from freestack.sweeps.spec import (
    NODES,
    TRAIN_NODES,
    TUNABLE_MODEL,
    TUNABLE_TRAIN,
    SweepConfigError,
    SweepParameter,
    SweepSpec,
    objectives,
    wandb_part,
)
from freestack.train.request import TrainRequest


def sweeps_engine():
    """The ``sweeps`` package, imported quietly (it declares pydantic-v1 settings that v2 renames),
    with the submodules the controller reaches through it (``sweeps.params`` imports scipy.stats, so
    only a run pays for it, never a DAG parse: see :func:`schema_violations`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
        import sweeps.params  # noqa: F401

    return sweeps


def engine_part(config: SweepSpec) -> dict[str, Any]:
    """The config as a plain mapping without the server-side keys and freestack's own (several objectives,
    the candidate rule): what the search engine validates and reads."""
    return wandb_part(config.config())


def to_overrides(run_config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A trial's config (W&B form ``{"lr": {"value": 0.1}, "model": {"value": {"dropout": 0.2}}}`` or
    plain values) as ``{"train": {...}, "model": {...}}`` for the trainer: ``dpo.<setting>`` goes to
    ``train.dpo`` (``grpo.<setting>`` to ``train.grpo``), ``init.<argument>`` and ``peft.<setting>`` to the model's blocks."""
    out: dict[str, dict[str, Any]] = {"train": {}, "model": {}}

    def walk(d: dict[str, Any], node: str | None = None) -> None:
        for name, value in d.items():
            if isinstance(value, dict) and set(value) == {"value"}:
                value = value["value"]
            if isinstance(value, dict):
                walk(value, node or (name if name in NODES else None))
            elif node in TRAIN_NODES:  # a preference or GRPO tuning's setting (train.dpo/grpo.<name>)
                if name not in TRAIN_NODES[node]:
                    raise SweepConfigError(
                        f"trial parameter {node}.{name} is not a train.{node} setting a sweep can change"
                    )
                out["train"].setdefault(node, {})[name] = value
            # a custom model's constructor argument (model.init.<name>), a LoRA setting
            elif node is not None:
                out["model"].setdefault(node, {})[name] = value
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


def kept_metric(config: SweepSpec) -> tuple[str, str] | None:
    """The sweep's metric (name, goal) its trials keep their best epoch on; None when it names none (the
    trainer's own metric, which the sweep then compares on too)."""
    found = objectives(config)  # several: the first, an epoch metric
    return found[0] if found else None


def trial_request(
    request: dict[str, Any],
    config: dict[str, Any],
    folder,
    run_key: str,
    tracking: dict[str, Any],
    metric: tuple[str, str] | None = None,
) -> TrainRequest:
    """A trial's training: the sweep's ``request`` with the trial's ``config`` as overrides, its model and
    checkpoints in the trial's ``folder``; ``metric`` (the sweep's name and goal): a validation metric is the
    one the trial keeps its best epoch on, so that the model it saves is the one the sweep scores it by."""
    name, goal = metric or ("", "")
    kept = name.startswith("val_")
    return TrainRequest(
        keep_metric=name.removeprefix("val_") if kept else None,
        keep_higher=goal == "maximize" if kept else None,
        end_ds=request["end_ds"],
        window_days=request.get("window_days"),
        epochs=request.get("epochs"),
        learning_rate=request.get("learning_rate"),
        batch_size=request.get("batch_size"),
        run_key=run_key,
        airflow=request.get("airflow") or {},
        window=request.get("window"),
        overrides=to_overrides(config),
        output_uri=str(join(folder, "model")),
        checkpoint_uri=str(join(folder, "train")),
        tracking=tracking,
    )


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


def engine_run_config(run_config: dict[str, Any], config: SweepSpec) -> dict[str, Any]:
    """A trial's config in the engine's internal naming: nested parameters flattened with its delimiter
    (the engine proposes nested configs but, handed them back, compares flattened names)."""
    delim = sweeps_engine().params.HyperParameterSet.NESTING_DELIMITER
    out: dict[str, Any] = {}

    def walk(values: dict[str, Any], params: dict[str, SweepParameter], prefix: str) -> None:
        for name, value in values.items():
            inner = value["value"] if isinstance(value, dict) and set(value) == {"value"} else value
            spec = params.get(name)
            if spec is not None and spec.parameters is not None and isinstance(inner, dict):
                walk(inner, spec.parameters, f"{prefix}{name}{delim}")
            else:
                out[f"{prefix}{name}"] = {"value": inner}

    walk(run_config, config.parameters, "")
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
    "engine_part",
    "engine_run_config",
    "json_safe",
    "kept_metric",
    "plain_values",
    "sweeps_engine",
    "to_overrides",
    "trial_request",
]
