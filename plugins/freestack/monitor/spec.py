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

No Airflow, no heavy imports: validated when the spec is read (DAG parse time); a notifier class is only
imported when an alert is sent.
"""

from __future__ import annotations

import re
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


__all__ = ["MonitorSpec", "Notify", "Thresholds"]
