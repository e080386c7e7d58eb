"""The ``gate:`` block of a pipeline spec: when a candidate may replace production.

    gate:
      metric: accuracy            # primary test metric (accuracy, macro_f1, log_loss | rmse, mae, r2)
      direction: maximize         # default: from the metric (only accuracy, macro_f1, r2 are maximized)
      threshold: 0.9              # at least this for a maximized metric, at most this for a minimized one
      min_improvement: 0.002      # better than production by this, in the metric's good direction
      improvement: absolute       # relative: min_improvement is a fraction of production's value
      max_regression: {log_loss: 0.05}   # how much worse a secondary metric may get than production's
      approval: none              # required: a human approves in the Airflow UI before promotion
      judge:                      # text generation: an LLM judge (any OpenAI-compatible endpoint)
        url: http://127.0.0.1:8090/v1
        model: judge
        mode: pointwise           # pairwise: candidate against production, both orders
      min_judge_score: 3.5        # pointwise: the candidate's mean score (1-5) at least this
      min_win_rate: 0.5           # pairwise: wins (ties count half) over the prompts judged
      max_regression: {judge_score: 0.25}   # pointwise: how much lower than production's it may be

``min_value`` is the old name of ``threshold``. It read as a floor and acted as a ceiling for rmse,
mae and log_loss, so it is accepted only where the metric is maximized (it means ``threshold`` there)
and refused, naming the fix, where the metric is minimized or not known.
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from freestack.specbase import SpecModel

MAXIMIZE = {"accuracy", "macro_f1", "r2", "exact_match", "rouge_l", "judge_score", "judge_win_rate"}
MINIMIZE = {"log_loss", "rmse", "mae", "loss", "perplexity"}
METRICS = {
    "classification": ("accuracy", "macro_f1", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
    "generation": ("perplexity", "loss", "exact_match", "rouge_l", "judge_score", "judge_win_rate"),
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
RUBRIC_VARIABLES = {
    "pointwise": (("prompt", "answer"), ("reference",)),
    "pairwise": (("prompt", "answer_a", "answer_b"), ("reference",)),
}

DEFAULT_RUBRICS = {
    "pointwise": (
        "Rate how well the answer responds to the prompt, from 1 (wrong or useless) to 5 (correct and "
        "complete). A reference answer is given when one is known; an answer that means the same is correct."
        "\n\nPrompt:\n{prompt}\n\nReference answer:\n{reference}\n\nAnswer to rate:\n{answer}"
    ),
    "pairwise": (
        "Which answer responds better to the prompt: A or B (or tie when neither is better)? A reference "
        "answer is given when one is known.\n\nPrompt:\n{prompt}\n\nReference answer:\n{reference}"
        "\n\nAnswer A:\n{answer_a}\n\nAnswer B:\n{answer_b}"
    ),
}


class JudgeKey(SpecModel):
    """Where the judge's API key comes from, never the key itself."""

    conn_id: str = Field(
        min_length=1,
        max_length=250,
        description="The Airflow connection whose password is the judge's API key (read when evaluate runs).",
    )


class JudgeSpec(SpecModel):
    """An LLM judge of a text-generation candidate's answers (``gate.judge``): any OpenAI-compatible chat
    endpoint, another freestack deployment included. Asked at temperature 0 for a JSON object."""

    url: str = Field(
        pattern=r"^https?://\S+$",
        max_length=2000,
        description="The endpoint's base URL as the openai client takes it (e.g. http://127.0.0.1:8090/v1).",
    )
    model: str = Field(min_length=1, max_length=500, description="The judge's model name at that endpoint.")
    api_key: JudgeKey | None = Field(
        default=None, description="{conn_id: ...}: the key's connection, if any."
    )
    mode: Literal["pointwise", "pairwise"] = Field(
        default="pointwise",
        description="pointwise: a score 1-5 per answer (both models'); pairwise: candidate against production "
        "on each prompt, asked in both orders.",
    )
    rubric: str | None = Field(
        default=None,
        min_length=1,
        max_length=20_000,
        description="The judge's instructions, with {prompt} and {answer} (pairwise: {answer_a} and {answer_b}) "
        "and optionally {reference}; literal braces doubled ({{ }}). Default: a generic rubric.",
    )
    rubric_file: str | None = Field(
        default=None,
        max_length=1000,
        description="A file of the project holding the rubric (relative to the checkout, e.g. "
        "include/rubrics/support.txt), instead of rubric; checked as rubric is when evaluate starts.",
    )
    golden: str | None = Field(
        default=None,
        max_length=1000,
        description="A golden set judged besides the test split: a JSON Lines file of the project (relative to "
        'the checkout), one {"prompt": text} or {"messages": chat} a line, with an optional "reference".',
    )
    max_rows: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="The most test prompts judged (the golden set's come on top); default: every answered one.",
    )
    max_tokens: int = Field(default=256, ge=16, le=8192, description="Tokens the judge may answer with.")
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Seconds a judge request may take.")
    connect_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="Seconds to connect to the judge before it counts as down."
    )
    retries: int = Field(
        default=1, ge=0, le=10, description="Retries of a failed request (the openai client's)."
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="Judge requests in flight at once.")
    max_failures: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="The share of a model's prompts whose judging may fail (no answer, or one that does not "
        "parse) before the evaluation fails.",
    )
    on_judge_error: Literal["fail", "pass"] = Field(
        default="fail",
        description="A judge that does not answer (an outage): fail the evaluation, or pass its gate rules "
        "with the outage named in the reasons.",
    )

    @field_validator("rubric")
    @classmethod
    def _rubric_fits_mode(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("mode"):
            check_rubric(v, info.data["mode"])
        return v

    @model_validator(mode="after")
    def _one_rubric(self) -> JudgeSpec:
        if self.rubric is not None and self.rubric_file is not None:
            raise ValueError("give rubric or rubric_file, not both")
        return self

    @property
    def template(self) -> str:
        return self.rubric or DEFAULT_RUBRICS[self.mode]


def check_rubric(text: str, mode: str) -> set[str]:
    """The variables of a rubric; ValueError when one is unknown or a required one is missing, or a brace
    is left open (pydantic names the field, ``gate.judge.rubric``)."""
    required, optional = RUBRIC_VARIABLES[mode]
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
    except ValueError as exc:
        raise ValueError(f"{exc} (write literal braces as {{{{ and }}}})") from None
    unknown = sorted(n for n in names if n not in required + optional)
    if unknown:
        raise ValueError(
            f"unknown variable {', '.join('{' + n + '}' for n in unknown)}; a {mode} rubric "
            f"takes {', '.join('{' + n + '}' for n in required + optional)} (literal braces: {{{{ }}}})"
        )
    missing = [n for n in required if n not in names]
    if missing:
        raise ValueError(
            f"a {mode} rubric needs {', '.join('{' + n + '}' for n in missing)}, which it does not use"
        )
    return names


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
        default_factory=dict, description="How much worse a secondary metric may get than production's."
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
        for name in [self.metric, *self.max_regression] if self.metric else list(self.max_regression):
            if name not in known:
                raise ValueError(f"gate metric {name!r} is unknown; use one of {', '.join(sorted(known))}")
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
    "DEFAULT_RUBRICS",
    "JUDGE_METRICS",
    "MAXIMIZE",
    "METRICS",
    "MINIMIZE",
    "GateSpec",
    "JudgeKey",
    "JudgeSpec",
    "better_word",
    "check_rubric",
    "goal_of",
]
