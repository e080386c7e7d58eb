"""The ``gate:`` block of a pipeline spec: when a candidate may replace production.

    gate:
      metric: accuracy            # primary test metric (accuracy, macro_f1, log_loss | rmse, mae, r2)
      direction: maximize         # default: from the metric (only accuracy, macro_f1, r2 are maximized)
      threshold: 0.9              # at least this for a maximized metric, at most this for a minimized one
      min_improvement: 0.002      # better than production by this, in the metric's good direction
      improvement: absolute       # relative: min_improvement is a fraction of production's value
      max_regression: {log_loss: 0.05, latency_p99: 0.2}  # how much worse than production's (serving: a fraction)
      max_latency_p99_ms: 5       # serving costs (deploy.measure): the candidate's latency p99 at most this
      max_peak_memory_mb: 2048    # ... and its model server's memory at most this
      approval: none              # required: a human approves in the Airflow UI before promotion
      judge:                      # text generation: an LLM judge (any OpenAI-compatible endpoint)
        url: http://127.0.0.1:8090/v1
        model: judge
        mode: pointwise           # pairwise: candidate against production, both orders
      min_judge_score: 3.5        # pointwise: the candidate's mean score (1-5) at least this
      min_win_rate: 0.5           # pairwise: wins (ties count half) over the prompts judged
      max_regression: {judge_score: 0.25}   # pointwise: how much lower than production's it may be
      cache: true                 # evaluate reuses an earlier run's evaluation when nothing it reads changed

``min_value`` is the old name of ``threshold``. It read as a floor and acted as a ceiling for rmse,
mae and log_loss, so it is accepted only where the metric is maximized (it means ``threshold`` there)
and refused, naming the fix, where the metric is minimized or not known.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from freestack.judging.spec import JudgeSpec
from freestack.specbase import SpecModel

MAXIMIZE = {"accuracy", "macro_f1", "r2", "exact_match", "rouge_l", "judge_score", "judge_win_rate"}
MINIMIZE = {"log_loss", "rmse", "mae", "loss", "perplexity"}
METRICS = {
    "classification": ("accuracy", "macro_f1", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
    "generation": ("perplexity", "loss", "exact_match", "rouge_l", "judge_score", "judge_win_rate"),
}
#: the serving figures the gate bounds against production's (``max_regression``, as a fraction of
#: production's), each the field of the versions' ``costs.serving`` it reads; all are better lower
SERVING_FIGURES = {
    "latency_p50": "latency_p50_ms",
    "latency_p99": "latency_p99_ms",
    "peak_memory": "peak_memory_mb",
    "cpu_per_request": "cpu_ms_per_request",
    "ttft_p50": "ttft_p50_ms",
    "ttft_p99": "ttft_p99_ms",
    "itl": "itl_ms",
}
#: the metrics only a judge gives, and the judge mode that gives each
JUDGE_METRICS = {"judge_score": "pointwise", "judge_win_rate": "pairwise"}


def goal_of(metric: str | None, direction: str | None = None) -> str | None:
    """``maximize`` or ``minimize``: ``direction`` if given, else the metric's; None if neither is known."""
    if direction:
        return direction
    if metric is None:
        return None
    return "maximize" if metric in MAXIMIZE else "minimize"


def better_word(goal: str) -> str:
    return "higher is better" if goal == "maximize" else "lower is better"


#: the variables a rubric may use, per mode; the first ones are required
class GateSpec(SpecModel):
    """When a candidate may replace production."""

    metric: str | None = Field(default=None, description="default: accuracy (classification) or rmse")
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="Whether higher or lower is better; default from the metric."
    )
    threshold: float | None = Field(
        default=None,
        description="The bar on the metric: at least this when higher is better (accuracy, macro_f1, r2), at most "
        "this when lower is better (rmse, mae, log_loss). A first model needs only this.",
    )
    min_value: float | None = Field(
        default=None,
        exclude=True,
        description="Deprecated: write threshold. Accepted only for a maximized metric, where it is the threshold.",
    )
    min_improvement: float = Field(
        default=0.0,
        ge=0,
        description="How much better than production a candidate must be, in the metric's good direction "
        "(higher for accuracy, lower for rmse); 0: no worse.",
    )
    improvement: Literal["absolute", "relative"] = Field(
        default="absolute",
        description="Whether min_improvement is absolute or a fraction of production's value.",
    )
    max_regression: dict[str, float] = Field(
        default_factory=dict,
        description="How much worse a secondary metric may get than production's, in its own units; a serving "
        "figure (latency_p50, latency_p99, peak_memory, cpu_per_request, ttft_p50, ttft_p99, itl): as a fraction "
        "of production's, measured in the same evaluation (0.2: up to 20% more)",
    )
    approval: Literal["none", "required"] = Field(
        default="none", description="required: a human approves in the Airflow UI before promotion."
    )
    judge: JudgeSpec | None = Field(
        default=None,
        description="Text generation: an LLM judge of the answers (its figures feed the rules below).",
    )
    min_judge_score: float | None = Field(
        default=None,
        ge=1,
        le=5,
        description="judge mode pointwise: the candidate's mean score (1-5) at least this.",
    )
    min_win_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="judge mode pairwise: the candidate's win rate against production (ties count half) at least this.",
    )
    max_model_mb: float | None = Field(
        default=None,
        gt=0,
        description="The candidate's saved model files at most this many MB (its costs.model_mb).",
    )
    max_train_cost: float | None = Field(
        default=None,
        ge=0,
        description="The candidate's training at most this cost, at the spec's prices (its costs.train.cost).",
    )
    max_latency_p99_ms: float | None = Field(
        default=None,
        gt=0,
        description="The candidate's serving latency p99 (one row a request, deploy.measure) at most this.",
    )
    max_peak_memory_mb: float | None = Field(
        default=None,
        gt=0,
        description="The candidate's model server (all its processes, deploy.measure) at most this much memory.",
    )

    cache: bool = Field(
        default=True,
        description="evaluate reuses an earlier run's evaluation of the same candidate when its inputs (the "
        "candidate and production versions, the test partitions' bytes, these spec blocks, freestack's code) "
        "did not change (docs/stages/evaluate.md, Caching).",
    )

    @field_validator("direction")
    @classmethod
    def _direction_fits_metric(cls, v: str | None, info: ValidationInfo) -> str | None:
        metric = info.data.get("metric")
        if v is not None and metric in MAXIMIZE | MINIMIZE and v != goal_of(metric):
            raise ValueError(
                f"{v} contradicts {metric} ({better_word(goal_of(metric))}); drop direction, it follows the metric"
            )
        return v

    @field_validator("min_value")
    @classmethod
    def _min_value_only_as_a_floor(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is None:
            return v
        metric, direction, threshold = (info.data.get(k) for k in ("metric", "direction", "threshold"))
        fix = f"write `threshold: {v:g}` instead"
        if threshold is not None:
            raise ValueError(
                f"min_value {v:g} and threshold {threshold:g} name the same bar twice; keep threshold only"
            )
        if metric is not None and metric not in MAXIMIZE | MINIMIZE:
            return v  # an unknown metric: _known says so
        goal = goal_of(metric, direction)
        if goal is None:
            raise ValueError(
                f"min_value {v:g} is ambiguous: the gate names no metric, and the default (accuracy for "
                f"classification, rmse for regression) decides whether it is a floor or a ceiling; {fix} "
                "(at least it for a metric where higher is better, at most it where lower is better)"
            )
        if goal == "minimize":
            name = metric or "the metric"
            raise ValueError(
                f"min_value {v:g} reads as a minimum, but {name} is minimized (lower is better), where the bar "
                f"is a maximum; {fix} ({name} must be at most {v:g})"
            )
        return v

    @model_validator(mode="after")
    def _known(self) -> GateSpec:
        known = MAXIMIZE | MINIMIZE
        if self.metric is not None and self.metric not in known:
            raise ValueError(f"gate metric {self.metric!r} is unknown; use one of {', '.join(sorted(known))}")
        for name in self.max_regression:
            if name not in known | set(SERVING_FIGURES):
                names = ", ".join([*sorted(known), *SERVING_FIGURES])
                raise ValueError(f"gate.max_regression names {name!r}, which is unknown; use one of {names}")
        if any(v < 0 for v in self.max_regression.values()):
            raise ValueError(
                "gate.max_regression values are allowed worsenings: give them as non-negative numbers"
            )
        self._judge_rules_have_a_judge()
        if self.min_value is not None and self.threshold is None:
            # the deprecated name, on a maximized metric: the threshold
            object.__setattr__(self, "threshold", self.min_value)
        return self

    def _judge_rules_have_a_judge(self) -> None:
        """Every rule on a judge's figure needs ``gate.judge`` in the mode that gives it."""
        if self.metric in JUDGE_METRICS:
            rule = "min_judge_score" if self.metric == "judge_score" else "min_win_rate"
            raise ValueError(
                f"gate.metric {self.metric} is a judge's figure, not a primary metric: keep a metric every "
                f"evaluation has (perplexity, exact_match, ...) and bound it with gate.{rule}"
            )
        if "judge_win_rate" in self.max_regression:
            raise ValueError(
                "gate.max_regression.judge_win_rate: the win rate is measured against production already; "
                "bound it with gate.min_win_rate"
            )
        named = [(m, f"gate.max_regression.{m}") for m in self.max_regression if m in JUDGE_METRICS]
        if self.min_judge_score is not None:
            named.append(("judge_score", "gate.min_judge_score"))
        if self.min_win_rate is not None:
            named.append(("judge_win_rate", "gate.min_win_rate"))
        for metric, field in named:
            mode = JUDGE_METRICS[metric]
            if self.judge is None:
                raise ValueError(f"{field} needs a judge: add gate.judge (url, model, mode: {mode})")
            if self.judge.mode != mode:
                raise ValueError(
                    f"{field} reads {metric}, which gate.judge.mode {mode} gives (it is {self.judge.mode})"
                )


__all__ = [
    "JUDGE_METRICS",
    "MAXIMIZE",
    "METRICS",
    "MINIMIZE",
    "SERVING_FIGURES",
    "GateSpec",
    "better_word",
    "goal_of",
]
