"""The ``gate:`` block of a pipeline spec: when a candidate may replace production.

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

from typing import Literal

from pydantic import Field, model_validator

from freestack.specbase import SpecModel

MAXIMIZE = {"accuracy", "macro_f1", "r2"}
MINIMIZE = {"log_loss", "rmse", "mae", "loss"}
METRICS = {"classification": ("accuracy", "macro_f1", "log_loss"), "regression": ("rmse", "mae", "r2")}


class GateSpec(SpecModel):
    """When a candidate may replace production."""

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


__all__ = ["MAXIMIZE", "METRICS", "MINIMIZE", "GateSpec"]
