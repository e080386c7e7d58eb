"""The monitor DAG's operators: judge an interval, alert, ask for retraining. Thin over freestack.monitor.core.

monitor  -> the report, summary.json, W&B figures; outlet: the monitoring asset (every judged interval)
alert    -> the spec's notifiers and the alert record (skipped when nothing drifted or alert is not an action)
retrain  -> outlet: the drift asset, which schedules <p>_train (skipped unless drifted and retrain is an action)
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from freestack.hooks.credentials import task_keys
from freestack.monitor.spec import interval_name
from freestack.pipeline_operator import RUN_NOTE_XCOM, PipelineOperator
from freestack.storage import join, to_path, write_json

if TYPE_CHECKING:
    from airflow.sdk import Context


def monitoring_asset(pipeline: str) -> Asset:
    """Updated by every judged interval of the pipeline's monitor (the extra: status, alerts, report)."""
    return Asset(name=f"{pipeline}_monitoring", uri=f"freestack://monitoring/{pipeline}", group="freestack")


def drift_asset(pipeline: str) -> Asset:
    """Updated when an interval drifted and the spec's monitor asks for retraining: ``<p>_train`` is scheduled on it."""
    return Asset(name=f"{pipeline}_drift", uri=f"freestack://drift/{pipeline}", group="freestack")


class MonitorOperator(PipelineOperator):
    """Judge the run's data interval of the request log against the served versions' references."""

    ui_color = "#fdf0c8"

    def execute(self, context: Context) -> dict[str, Any]:
        # monitor.core loads numpy: imported when the task runs, not at DAG parse time
        from freestack.monitor.core import monitor

        spec = self.pipeline_spec()
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is None or end is None or start >= end:
            raise AirflowFailException(
                f"this run has no data interval ({start} to {end}): trigger it with one, or "
                "let the schedule or a backfill create the run"
            )
        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        keys = task_keys(spec, judge=bool(spec.monitor.text.judge_rows))
        summary = monitor(spec, start, end, run=run, keys=keys)
        brief = {k: summary[k] for k in ("status", "alert", "rows", "report")}
        brief["alerts"] = [a["message"] for a in summary["alerts"]][:20]
        context["outlet_events"][monitoring_asset(spec.name)].extra = {
            **{k: brief[k] for k in ("status", "rows", "report")},
            "alerts": len(summary["alerts"]),
        }
        context["ti"].xcom_push(key=RUN_NOTE_XCOM, value=_note(summary))
        return brief


def _note(summary: dict[str, Any]) -> str:
    head = {"drift": "**drift**", "ok": "no drift", "no_data": "no verdict"}[summary["status"]]
    lines = [f"{head}: {summary['rows']} logged rows, {len(summary['alerts'])} alert(s)"]
    lines += [f"- {a['message']}" for a in summary["alerts"][:5]] or [f"- {n}" for n in summary["notes"][:3]]
    return "\n".join(lines)[:1000]


def _drifted(context: Context, action: str, spec) -> dict[str, Any]:
    got = context["ti"].xcom_pull(task_ids="monitor") or {}
    if not got.get("alert"):
        raise AirflowSkipException(
            f"no drift in this interval ({got.get('status', '?')}): nothing to {action}"
        )
    if action not in spec.monitor.actions:
        raise AirflowSkipException(f"the spec's monitor.actions {spec.monitor.actions} leave out {action}")
    return got


class AlertOperator(PipelineOperator):
    """Send the interval's alerts through the spec's Airflow notifiers; keep the alert beside the report."""

    ui_color = "#f9d0c4"

    def execute(self, context: Context) -> list[str]:
        # monitor.core and the request log load numpy: imported when the task runs, not at DAG parse time
        from freestack_server.core.requestlog import monitoring_uri

        spec = self.pipeline_spec()
        got = _drifted(context, "alert", spec)
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        alert = {
            "model": spec.model_name,
            "interval": {"start": start.isoformat(), "end": end.isoformat()},
            "report": got["report"],
            "alerts": got["alerts"],
            "run_id": context["run_id"],
        }
        alerts = join(to_path(monitoring_uri(spec.root, spec.model_name)), "alerts")
        write_json(join(alerts, f"{interval_name(start, end)}.json"), alert)
        for line in got["alerts"]:
            self.log.error("DRIFT %s", line)
        subject = f"freestack: {spec.model_name} drifted ({len(got['alerts'])} alert(s), {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M})"
        text = subject + "\n\n" + "\n".join(f"- {a}" for a in got["alerts"]) + f"\n\nreport: {got['report']}"
        sent = []
        for n in spec.monitor.notify:
            notifier = _notifier(n.notifier, n.args, subject, text)
            notifier({**context, "freestack_alert": alert, "freestack_alert_text": text})
            sent.append(n.notifier)
            self.log.info("alert sent through %s", n.notifier)
        return sent


#: argument names a notifier takes for the alert's title and text, tried in this order
TITLE_ARGS = ("subject", "title")
TEXT_ARGS = ("html_content", "text", "message", "body", "content")


def _notifier(path: str, args: dict[str, Any], subject: str, text: str):
    """The spec's notifier, built with its arguments; a title or text argument it takes but was not given
    is the alert's."""
    from airflow.sdk.bases.notifier import BaseNotifier

    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise AirflowFailException(
            f"monitor.notify: cannot import {path} ({exc}); install its provider on the "
            "workers or fix the dotted path"
        ) from None
    if not (inspect.isclass(cls) and issubclass(cls, BaseNotifier)):
        raise AirflowFailException(
            f"monitor.notify: {path} is not an Airflow notifier (a BaseNotifier subclass)"
        )
    params = inspect.signature(cls).parameters
    filled = dict(args)
    for names, value in (
        (TITLE_ARGS, subject),
        (TEXT_ARGS, text.replace("\n", "<br>\n") if "html_content" in params else text),
    ):
        arg = next((a for a in names if a in params), None)
        if arg and arg not in filled:
            filled[arg] = value
    return cls(**filled)


class RetrainOperator(PipelineOperator):
    """Update the drift asset, so that ``<p>_train`` retrains on the latest window."""

    ui_color = "#dce9f9"

    def execute(self, context: Context) -> str:
        spec = self.pipeline_spec()
        got = _drifted(context, "retrain", spec)
        context["outlet_events"][drift_asset(spec.name)].extra = {
            "report": got["report"],
            "alerts": got["alerts"][:5],
        }
        self.log.info(
            "drift: %s_train is scheduled through the drift asset (report %s)", spec.name, got["report"]
        )
        return got["report"]


__all__ = ["AlertOperator", "MonitorOperator", "RetrainOperator", "drift_asset", "monitoring_asset"]
