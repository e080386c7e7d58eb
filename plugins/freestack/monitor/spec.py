"""A pipeline spec's ``monitor:`` block: how ``<p>_monitor`` judges the request log, and what it does on drift.

    monitor:
      schedule: "@daily"          # one interval per run; backfill to judge past days
      min_rows: 100               # fewer logged rows in an interval (per version): no verdict
      thresholds:
        psi: 0.2                  # a column drifts when its PSI reaches this ...
        p_value: 0.01             # ... and its test (KS, chi²) is below this
        metric_drop: 0.1          # labelled rows: the gate's metric this much worse than at registration
        min_labels: 50            # labelled rows needed to judge the metric
      actions: [alert, retrain]   # alert: the notifiers below; retrain: <p>_train through the drift asset
      notify:
        - notifier: airflow.providers.smtp.notifications.smtp.SmtpNotifier
          args: {to: ml-team@example.com, smtp_conn_id: smtp_default}
      text:                       # a text-generation model's prompts and answers (freestack.monitor.text_drift)
        encoder: /models/minilm   # a sentence encoder (a folder or a Hub repo id); none: no embedding drift
        p_value: 0.01             # MMD permutation test of the embeddings against the evaluation's
        min_mmd: 0.01             # ... and its MMD² at least this
        rate_increase: 0.1        # empty, refusal, truncation rates this far above the evaluation's

No Airflow, no heavy imports: validated when the spec is read (DAG parse time); a notifier class is only
imported when an alert is sent.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from freestack.specbase import SpecModel

_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+$")


class Thresholds(SpecModel):
    psi: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="A column (a feature, a text or image proxy, the "
        "prediction) drifts when its population stability index reaches this (0.1: moderate, 0.2: large) ...",
    )
    p_value: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="... and its two-sample test (Kolmogorov-Smirnov for "
        "numbers, chi² for categories) gives a p-value below this: both, so that neither a small "
        "shift on much data nor noise on little data alerts",
    )
    metric_drop: float = Field(
        default=0.1,
        gt=0,
        description="With labels: alert when the gate's metric over the "
        "interval's labelled rows is this much worse than the version's test score",
    )
    min_labels: int = Field(
        default=50, ge=1, description="Labelled rows an interval needs before its metric is judged."
    )


class Notify(SpecModel):
    notifier: str = Field(
        description="An Airflow notifier class (a BaseNotifier), by its dotted path, e.g. "
        "airflow.providers.slack.notifications.slack.SlackNotifier"
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Its arguments; a message or subject argument "
        "left out is filled with the alert (feature, statistic, threshold, report)",
    )

    @field_validator("notifier")
    @classmethod
    def _dotted(cls, v: str) -> str:
        if not _DOTTED.match(v):
            raise ValueError(
                f"notifier {v!r} must be a class's dotted path, e.g. "
                "airflow.providers.smtp.notifications.smtp.SmtpNotifier"
            )
        return v


#: answers opening with one of these (case ignored) count as refusals, unless monitor.text.refusals says otherwise
REFUSALS = (
    "I can't",
    "I cannot",
    "I can not",
    "I'm sorry",
    "I am sorry",
    "I won't",
    "I'm unable",
    "As an AI",
)
#: the text signals that may alert (monitor.text.alert_on)
TEXT_SIGNALS = ("prompts", "completions", "empty", "refusal", "truncation", "judge")


class TextDrift(SpecModel):
    """A text-generation model's prompts and answers against its evaluation's (``monitor.text``)."""

    encoder: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="A small sentence encoder for embedding drift of prompts and completions: a folder "
        "written by transformers' save_pretrained (a path or a file:// URI) or a Hub repo id; its last hidden "
        "state is mean-pooled and normalized. None: the rates only",
    )
    revision: str = Field(
        default="main", max_length=200, description="The Hub revision of a repo id encoder."
    )
    sample_rows: int = Field(
        default=256,
        ge=10,
        le=10_000,
        description="Logged rows of an interval (per version) embedded, a seeded sample: the encoder's cost is bounded",
    )
    max_tokens: int = Field(default=128, ge=8, le=4096, description="Tokens of each text the encoder reads.")
    threads: int = Field(
        default=2,
        ge=1,
        le=64,
        description="torch threads of the encoder (the machine is shared with the workers).",
    )
    permutations: int = Field(
        default=200,
        ge=20,
        le=10_000,
        description="Permutations of the MMD test (its smallest p-value: 1/(n+1)).",
    )
    p_value: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="Embeddings drift when the MMD permutation test's p-value is below this ...",
    )
    min_mmd: float = Field(
        default=0.01,
        ge=0,
        le=2,
        description="... and the squared MMD (RBF kernel, median-distance bandwidth) is at least this",
    )
    rate_increase: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="A rate (empty answers, refusals, truncated answers) drifts when it is this much above the "
        "evaluation's and a one-sided Fisher exact test gives a p-value below p_value",
    )
    max_truncation_rate: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="The truncation rate's ceiling where the evaluation recorded no finish reasons",
    )
    refusals: list[str] = Field(
        default_factory=lambda: list(REFUSALS),
        max_length=200,
        description="Openings (case ignored) that make an answer a refusal.",
    )
    judge_rows: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="The daily budget of the judge signal: at most this many of an interval's answers (per "
        "version, a seeded sample) are scored by gate.judge, pointwise; 0: no judge signal",
    )
    max_judge_drop: float = Field(
        default=0.5,
        gt=0,
        le=4,
        description="The judge signal drifts when the answers' mean score (1-5) is this much below the "
        "evaluation's judge_score",
    )
    alert_on: list[Literal["prompts", "completions", "empty", "refusal", "truncation", "judge"]] = Field(
        default_factory=lambda: list(TEXT_SIGNALS),
        description="The text signals that raise the monitor's alert (the others are reported only).",
    )


class MonitorSpec(SpecModel):
    schedule: str = Field(
        default="@daily", description="The monitor DAG's schedule: one interval of the request log per run."
    )
    min_rows: int = Field(
        default=100,
        ge=1,
        le=10_000_000,
        description="Logged rows an interval needs (per version) before it is judged.",
    )
    reference_rows: int = Field(
        default=10_000,
        ge=100,
        le=1_000_000,
        description="Rows of the training window sampled into a version's reference statistics at evaluation.",
    )
    thresholds: Thresholds = Field(
        default_factory=Thresholds, description="When a column or the metric counts as drifted."
    )
    actions: list[Literal["alert", "retrain"]] = Field(
        default_factory=lambda: ["alert"],
        description="On drift: alert (the notifiers, and the alert on the monitoring page) and/or retrain (the "
        "drift asset schedules <p>_train on the latest window)",
    )
    notify: list[Notify] = Field(
        default_factory=list, max_length=20, description="Airflow notifiers that receive each alert."
    )
    text: TextDrift = Field(
        default_factory=TextDrift,
        description="A text-generation model's text signals: embedding drift of prompts and completions, and "
        "the empty, refusal and truncation rates against the evaluation's",
    )


def interval_name(start: datetime, end: datetime) -> str:
    """A judged interval's name, its report's folder and its alert's file: ``<start>--<end>``."""
    return f"{start:%Y-%m-%dT%H%M%S}--{end:%Y-%m-%dT%H%M%S}"


__all__ = ["interval_name", "REFUSALS", "TEXT_SIGNALS", "MonitorSpec", "Notify", "TextDrift", "Thresholds"]
