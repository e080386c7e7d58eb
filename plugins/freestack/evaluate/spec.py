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
    direction: Literal["maximize", "minimize"] | None = Field(default=None, description="Whether higher or lower is better; default from the metric.")
    min_value: float | None = Field(default=None, description="The bar the metric must clear (a first model needs only this).")
    min_improvement: float = Field(default=0.0, ge=0, description="How much better than production a candidate must be.")
    improvement: Literal["absolute", "relative"] = Field(default="absolute", description="Whether min_improvement is absolute or a fraction of production's value.")
    max_regression: dict[str, float] = Field(default_factory=dict, description="How much worse a secondary metric may get than production's.")
    approval: Literal["none", "required"] = Field(default="none", description="required: a human approves in the Airflow UI before promotion.")

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
