"""A trial's figures as the sweep compares trials on them: its kept epoch's metric (the model it saved),
or, on several objectives, a figure of its training's costs (:data:`freestack.sweeps.spec.TRIAL_FIGURES`)."""

from __future__ import annotations

from typing import Any

from freestack.sweeps.spec import TRIAL_FIGURES


def best_of(history: list[dict[str, Any]], metric: str, goal: str) -> float | None:
    values = [r[metric] for r in history if isinstance(r.get(metric), int | float)]
    return (max if goal == "maximize" else min)(values, default=None)


def kept_value(trial: dict[str, Any], metric: str, goal: str) -> float | None:
    """A trial's figure on ``metric``: its kept epoch's (``summary.best_epoch``: the model it saved, which the
    sweep publishes if it wins), else, for a trial that has not finished, the best over its epochs."""
    history = trial.get("history") or []
    kept = (trial.get("summary") or {}).get("best_epoch")
    row = next((r for r in history if kept is not None and r.get("epoch") == kept), None)
    if row is not None and isinstance(row.get(metric), int | float):
        return row[metric]
    return best_of(history, metric, goal)


def objective_value(trial: dict[str, Any], name: str, goal: str) -> float | None:
    """A trial's figure on one objective: its kept epoch's metric, or a figure of its costs."""
    if name not in TRIAL_FIGURES:
        return kept_value(trial, name, goal)
    value: Any = trial.get("costs") or {}
    for part in TRIAL_FIGURES[name].split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


__all__ = ["best_of", "kept_value", "objective_value"]
