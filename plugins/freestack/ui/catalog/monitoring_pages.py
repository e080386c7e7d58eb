"""What the Monitoring pages show: a model's judged intervals (freestack.monitor's summaries) and an
interval's report."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from freestack.storage import join, to_path

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec


class IntervalRow(BaseModel):
    name: str = Field(description="the interval's folder under monitoring/<model>/reports/")
    start: str
    end: str
    status: str = Field(description="ok, drift or no_data")
    rows: int
    labels: int
    versions: list[str]
    alerts: list[str] = Field(
        description="one line per drifted column or metric: feature, statistic, threshold, report"
    )
    notes: list[str]
    top: list[tuple[str, float]] = Field(description="the largest PSI values of the interval (column, PSI)")
    drift: dict[str, tuple[float, float | None]] = Field(
        {},
        description="every monitored series: (PSI, its test's p-value), the largest PSI of the versions served",
    )
    text: dict[str, float] = Field(
        {},
        description="a text-generation model's text signals (freestack.monitor.text_drift): name -> MMD² of "
        "prompts or completions, or a rate; the largest of the versions served",
    )


class MonitoringPage(BaseModel):
    pipeline: str
    model: str
    thresholds: dict[str, float]
    actions: list[str]
    intervals: list[IntervalRow] = Field(description="newest first")
    min_mmd: float | None = Field(
        None, description="monitor.text.min_mmd: an embedding drifts from this MMD²"
    )
    figure: str | None = Field(
        None, exclude=True, description="drift over time (Plotly JSON) for the page; not in the API"
    )
    text_figure: str | None = Field(
        None, exclude=True, description="the text signals over time (Plotly JSON); not in the API"
    )


def monitoring_page(pipeline: str, spec: PipelineSpec, limit: int = 60) -> MonitoringPage:
    """The model's judged intervals, newest first (freestack.monitor's summaries)."""
    from freestack.monitor.core import interval_name, recent_summaries

    rows = []
    for s in recent_summaries(spec, limit):
        start, end = s["interval"]["start"], s["interval"]["end"]
        series = sorted((x for v in s["versions"] for x in v.get("series", [])), key=lambda x: -x["psi"])
        rows.append(
            IntervalRow(
                name=interval_name(datetime.fromisoformat(start), datetime.fromisoformat(end)),
                start=start,
                end=end,
                status=s["status"],
                rows=s["rows"],
                labels=s["labels"],
                versions=[v["version"] for v in s["versions"]],
                alerts=[a["message"] for a in s["alerts"]],
                notes=s["notes"] + s["problems"],
                top=[(x["name"], round(x["psi"], 3)) for x in series[:3]],
                drift=_drift_of(series),
                text=_text_of(s["versions"]),
            )
        )
    m = spec.monitor
    return MonitoringPage(
        pipeline=pipeline,
        model=spec.model_name,
        thresholds=m.thresholds.model_dump(),
        actions=list(m.actions),
        intervals=rows,
        min_mmd=m.text.min_mmd if spec.model.generative else None,
    )


def _text_of(versions: list[dict[str, Any]]) -> dict[str, float]:
    """``{signal: value}`` of an interval's text signals, the largest of its versions' (none judged: {})."""
    out: dict[str, float] = {}
    for v in versions:
        for sig in (v.get("text") or {}).get("signals", []):
            if isinstance(sig.get("value"), int | float):
                out[sig["name"]] = max(round(float(sig["value"]), 4), out.get(sig["name"], 0.0))
    return out


def _drift_of(series: list[dict[str, Any]]) -> dict[str, tuple[float, float | None]]:
    """``{name: (PSI, p-value)}`` of an interval's series, largest PSI first (a name judged for two versions
    keeps its larger PSI)."""
    out: dict[str, tuple[float, float | None]] = {}
    for x in series:
        p = x.get("p_value")
        out.setdefault(
            x["name"], (round(float(x["psi"]), 4), float(p) if isinstance(p, int | float) else None)
        )
    return out


def monitoring_report(spec: PipelineSpec, interval: str) -> bytes | None:
    """An interval's HTML report, read through the storage layer."""
    from freestack_server.core.requestlog import monitoring_uri

    path = join(to_path(monitoring_uri(spec.root, spec.model_name)), "reports", interval, "report.html")
    return path.read_bytes() if path.exists() else None


__all__ = [
    "IntervalRow",
    "MonitoringPage",
    "monitoring_page",
    "monitoring_report",
]
