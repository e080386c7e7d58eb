"""The LLM judge's settings (``gate.judge``): the endpoint, the mode, the rubric and how failures are
bounded. A service's spec, shared by the evaluate stage (its gate) and the monitor (its judge signal)."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from freestack.specbase import SpecModel

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
    """Where an endpoint's API key comes from (the judge's, a teacher's), never the key itself."""

    conn_id: str = Field(
        min_length=1,
        max_length=250,
        description="The Airflow connection whose password is the endpoint's API key (read when the task runs).",
    )


class Endpoint(SpecModel):
    """An OpenAI-compatible chat endpoint that freestack asks (the judge, a teacher), another freestack
    deployment included, through the ``openai`` client (:func:`freestack.judging.client.openai_client`)."""

    url: str = Field(
        pattern=r"^https?://\S+$",
        max_length=2000,
        description="The endpoint's base URL as the openai client takes it (e.g. http://127.0.0.1:8090/v1).",
    )
    model: str = Field(min_length=1, max_length=500, description="The model's name at that endpoint.")
    api_key: JudgeKey | None = Field(
        default=None, description="{conn_id: ...}: the key's connection, if any."
    )
    timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Seconds one request may take.")
    connect_timeout_s: float = Field(
        default=5.0, gt=0, le=600, description="Seconds to connect before the attempt counts as failed."
    )
    retries: int = Field(
        default=1, ge=0, le=10, description="Retries of a failed request (the openai client's)."
    )
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight at once.")


class JudgeSpec(Endpoint):
    """An LLM judge of a text-generation candidate's answers (``gate.judge``): any OpenAI-compatible chat
    endpoint, another freestack deployment included. Asked at temperature 0 for a JSON object."""

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


__all__ = ["DEFAULT_RUBRICS", "RUBRIC_VARIABLES", "Endpoint", "JudgeKey", "JudgeSpec", "check_rubric"]
