"""The promotion gate (a spec's ``gate:`` block): is the candidate good enough, and better than production?

    gate:
      metric: accuracy            # primary test metric (accuracy, macro_f1, log_loss | rmse, mae, r2)
      direction: maximize         # default: from the metric
      min_value: 0.9              # absolute floor (a first model must meet it too)
      min_improvement: 0.002      # over the champion; `improvement: relative` makes it a fraction
      improvement: absolute
      max_regression: {log_loss: 0.05}   # how much worse a secondary metric may get than the champion's
      approval: none              # required: a human approves in the Airflow UI before promotion
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAXIMIZE = {"accuracy", "macro_f1", "r2"}
MINIMIZE = {"log_loss", "rmse", "mae", "loss"}
METRICS = {"classification": ("accuracy", "macro_f1", "log_loss"), "regression": ("rmse", "mae", "r2")}


class GateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str | None = Field(default=None, description="default: accuracy (classification) or rmse")
    direction: Literal["maximize", "minimize"] | None = None
    min_value: float | None = None
    min_improvement: float = Field(default=0.0, ge=0)
    improvement: Literal["absolute", "relative"] = "absolute"
    max_regression: dict[str, float] = Field(default_factory=dict)
    approval: Literal["none", "required"] = "none"

    @model_validator(mode="after")
    def _known(self) -> GateSpec:
        known = MAXIMIZE | MINIMIZE
        for name in [self.metric, *self.max_regression] if self.metric else list(self.max_regression):
            if name not in known:
                raise ValueError(f"gate metric {name!r} is unknown; use one of {', '.join(sorted(known))}")
        if any(v < 0 for v in self.max_regression.values()):
            raise ValueError("gate.max_regression values are allowed worsenings: give them as non-negative numbers")
        return self


def direction_of(metric: str, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    return "maximize" if metric in MAXIMIZE else "minimize"


def decide(gate: GateSpec, candidate: dict[str, Any], champion: dict[str, Any] | None) -> dict[str, Any]:
    """The decision and every reason for it, ready for lineage.json and the task log."""
    task = candidate.get("task", "classification")
    metric = gate.metric or METRICS[task][0]
    if metric not in candidate:
        raise ValueError(f"gate metric {metric!r} is not a {task} metric; use one of {', '.join(METRICS[task])}")
    goal = direction_of(metric, gate.direction)
    sign = 1.0 if goal == "maximize" else -1.0
    value = float(candidate[metric])
    reasons: list[str] = []
    passed = True
    if gate.min_value is not None:
        ok = sign * (value - gate.min_value) >= 0
        passed &= ok
        reasons.append(
            f"{metric} {value:.4f} {'meets' if ok else 'misses'} the {'minimum' if goal == 'maximize' else 'maximum'} "
            f"{gate.min_value:.4f}"
        )
    delta = None
    if champion is None:
        reasons.append("no production model yet: a first model needs only the absolute threshold")
    else:
        base = float(champion[metric])
        delta = sign * (value - base)  # > 0: better
        needed = gate.min_improvement * (abs(base) if gate.improvement == "relative" else 1.0)
        ok = delta >= needed - 1e-12
        passed &= ok
        reasons.append(
            f"{metric} {value:.4f} vs champion {base:.4f}: {'+' if delta >= 0 else ''}{delta:.4f} "
            f"({'better' if delta > 0 else 'no better' if delta == 0 else 'worse'}); "
            f"needed ≥ {needed:.4f} ({gate.improvement})"
            + ("" if ok else " — blocked")
        )
        for other, allowed in sorted(gate.max_regression.items()):
            if other not in candidate or other not in champion:
                continue
            s = 1.0 if direction_of(other) == "maximize" else -1.0
            worse = s * (float(champion[other]) - float(candidate[other]))  # > 0: the candidate is worse
            ok = worse <= allowed + 1e-12
            passed &= ok
            reasons.append(
                f"{other} {float(candidate[other]):.4f} vs champion {float(champion[other]):.4f}: "
                f"{'worse' if worse > 0 else 'not worse'} by {worse if worse > 0 else 0.0:.4f} (allowed {allowed:.4f})"
                + ("" if ok else " — blocked")
            )
    return {
        "promote": bool(passed),
        "decision": "promote" if passed else "block",
        "metric": metric,
        "direction": goal,
        "candidate": value,
        "champion": None if champion is None else float(champion[metric]),
        "delta": delta,
        "reasons": reasons,
        "approval": gate.approval,
        "gate": gate.model_dump(),
    }


__all__ = ["GateSpec", "decide", "direction_of"]
