"""The monitor: one interval of a model's request log judged against each served version's reference.

    monitoring/<model>/requests/ds=D/hour=H/*.parquet    the model server's request log (freestack_server.core.requestlog)
    monitoring/<model>/labels/ds=D/hour=H/*.parquet      ground truth: /send-feedback, or files users drop here
    registry/<model>/<version>/reference.json            the version's reference statistics (written at evaluation)
    monitoring/<model>/reports/<start>--<end>/           report.html (plots inline) and summary.json per interval
    monitoring/<model>/alerts/<start>--<end>.json        the alert, when the interval drifted

Plain Python (pandas, pyarrow, scipy, matplotlib): :func:`monitor` is what the ``monitor`` task runs, and
works from a notebook too. A version without reference statistics, an interval without requests, too few
rows or an unreadable log file each give a report that says so, never an alert.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from freestack.keys import NO_KEYS, Keys
from freestack.ml.features import KINDS
from freestack.monitor import stats, text_drift
from freestack.monitor.report import render
from freestack.monitor.spec import interval_name
from freestack.registry.core import registry_for
from freestack.storage import join, list_objects, subfolders, to_path, write_bytes, write_json
from freestack.tracking.wandb import WandbSettings, start_run
from freestack_server.core.requestlog import INPUT_PREFIX, hour_folder, monitoring_uri

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)
REFERENCE_FILE = "reference.json"


def feature_kinds(spec: PipelineSpec) -> dict[str, str]:
    """Each feature as the monitor sees it: numeric, category, text or image. A text-generation model's
    is what a request carries, its prompt or its chat so far: a preference pair's rejected answer is read
    by training alone, and a request log never holds it."""
    kinds = spec.feature_kinds
    if spec.model.generative:
        asked = spec.model.chat.messages or spec.model.chat.prompt or ""
        kinds = {c.name: c.type for c in spec.source.schema_.fields if c.name == asked} or kinds
    return {f: KINDS.get(t, "numeric") for f, t in kinds.items()}


# ---------------------------------------------------------------------------------------------------------
# reference statistics (the evaluate task writes them into the candidate's folder)


def build_reference(
    spec: PipelineSpec, frame, predicted: list, *, version: str, metric: tuple[str, float] | None, source: str
) -> dict[str, Any]:
    """The reference of a version: statistics of the window's rows ``frame`` (a sample) and of the model's
    predictions ``predicted`` (class labels, or values) on its test split."""
    kinds = feature_kinds(spec)
    columns = {f: frame[f].tolist() for f in kinds}
    # a text's vocabulary comes from every other row, its unknown-word rate is measured on the others: the
    # reference rate is then what unseen in-distribution text scores, not 0
    vocab = {f: stats.vocabulary(v[::2]) for f, v in columns.items() if kinds[f] == "text"}
    cols = {f: (v[1::2] if kinds[f] == "text" else v) for f, v in columns.items()}
    sets = {f: set(w) for f, w in vocab.items()}
    series = stats.series_of(cols, kinds, sets)  # a text feature's proxies from its own half of the rows
    task = "classification" if predicted and isinstance(predicted[0], str) else "regression"
    series["prediction"] = (
        ("category", stats.category_values(predicted))
        if task == "classification"
        else ("numeric", np.asarray(predicted, np.float64))
    )
    return {
        "model": spec.model_name,
        "version": version,
        "rows": int(len(frame)),
        "source": source,
        "task": task,
        "features": kinds,
        "vocabulary": vocab,
        "series": stats.reference(series),
        "metric": {"name": metric[0], "value": metric[1]} if metric else None,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def read_reference(spec: PipelineSpec, version: str) -> dict[str, Any] | None:
    path = join(to_path(registry_for(spec).version_uri(version)), REFERENCE_FILE)
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------------------------------------------------
# reading the log


@dataclass
class Logged:
    """An interval's logged rows, and what could not be read."""

    rows: Any  # a pandas DataFrame
    files: int = 0
    problems: list[str] = field(default_factory=list)


def _hours(start: datetime, end: datetime) -> list[str]:
    """The request log's hour folders that [start, end) touches."""
    out, t = [], start.replace(minute=0, second=0, microsecond=0)
    while t < end:
        out.append(hour_folder(t))
        t += timedelta(hours=1)
    return out


def _read_folders(folders: list) -> Logged:
    """The Parquet and CSV files directly in ``folders``, as one frame; an unreadable one is reported and left out."""
    import pandas as pd
    import pyarrow.parquet as pq

    frames, files, problems = [], 0, []
    for obj in (o for folder in folders for o in list_objects(folder)):  # list_objects hides dot-files
        if not obj.name.endswith((".parquet", ".csv")):
            continue
        files += 1
        try:
            with obj.open("rb") as f:
                if obj.name.endswith(".parquet"):
                    frames.append(_plain(pq.read_table(f)).to_pandas())
                else:
                    frames.append(pd.read_csv(f, dtype={"request_id": str, "label": str}))
        except Exception as exc:  # a truncated or foreign file: reported, the rest still judged
            problems.append(f"{obj}: unreadable ({type(exc).__name__}: {str(exc)[:160]}); it was left out")
    return Logged(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), files, problems)


def _plain(table):
    """The table with dictionary-encoded columns (the request ids, the version) as plain values."""
    import pyarrow as pa

    fields = [
        pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def read_requests(root: str, model: str, start: datetime, end: datetime) -> Logged:
    import pandas as pd

    base = to_path(monitoring_uri(root, model))
    logged = _read_folders([join(base, "requests", hour) for hour in _hours(start, end)])
    if len(logged.rows):
        ts = pd.to_datetime(logged.rows["ts"], utc=True)
        logged.rows = logged.rows[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))]
    return logged


def read_labels(root: str, model: str, since: datetime) -> Logged:
    """Every label that arrived on or after ``since``'s day (ground truth comes after the request): the
    feedback's ``ds=<day>/hour=<hh>/`` files, and files users drop anywhere else under ``labels/``."""
    import pandas as pd

    logged = _read_folders(
        _label_folders(join(to_path(monitoring_uri(root, model)), "labels"), f"ds={since:%Y-%m-%d}")
    )
    if not len(logged.rows):
        logged.rows = pd.DataFrame(columns=["request_id", "row", "label"])
    elif "row" not in logged.rows:
        logged.rows["row"] = 0
    return logged


def _label_folders(folder, since: str) -> list:
    """``folder`` and its subfolders, leaving out the feedback's days before ``since`` (ds=YYYY-MM-DD)."""
    if not folder.exists():
        return []
    out, todo = [], [folder]
    while todo:
        here = todo.pop()
        out.append(here)
        todo += [
            p for p in here.iterdir() if p.is_dir() and not (p.name.startswith("ds=") and p.name < since)
        ]
    return out


# ---------------------------------------------------------------------------------------------------------
# judging


def _logged_columns(rows, kinds: dict[str, str]) -> dict[str, list]:
    return {
        f: rows[INPUT_PREFIX + f].tolist() if INPUT_PREFIX + f in rows else [None] * len(rows) for f in kinds
    }


def judge_version(
    ref: dict[str, Any], rows, labels, spec: PipelineSpec, keys: Keys = NO_KEYS
) -> dict[str, Any]:
    """One version's rows of the interval against its reference: every series, and the metric where labelled."""
    t = spec.monitor.thresholds
    kinds = ref["features"]
    vocab = {f: set(w) for f, w in (ref.get("vocabulary") or {}).items()}
    series = stats.series_of(_logged_columns(rows, kinds), kinds, vocab)
    # a text-generation model's log holds its answers' texts and their lengths: its reference holds those
    # lengths in characters (freestack.evaluate.text_generation.reference_of)
    pred = (
        rows["completion_chars"]
        if "completion_chars" in rows and ref["task"] != "classification"
        else rows["prediction"]
    )
    series["prediction"] = (
        ("category", stats.category_values(pred.tolist()))
        if ref["task"] == "classification"
        else ("numeric", pred.to_numpy(np.float64))
    )
    judged = [
        {"name": name, **stats.drift(ref["series"][name], kind, values, t.psi, t.p_value)}
        for name, (kind, values) in series.items()
        if name in ref["series"]
    ]
    judged.sort(key=lambda s: -s["psi"])
    out = {
        "version": ref["version"],
        "rows": int(len(rows)),
        "series": judged,
        "drifted": [s["name"] for s in judged if s["drifted"]],
        "labels": _labelled_metric(ref, rows, labels, spec),
    }
    if "finish_reason" in rows:  # a text-generation model's log: its text signals (monitor.text)
        out["text"] = text_drift.judge(spec, ref["version"], rows, keys=keys)
        if out["text"].get("note"):
            out["note"] = out["text"]["note"]
    text_drifted = (out.get("text") or {}).get("drifted")
    out["status"] = (
        "drift" if out["drifted"] or (out["labels"] or {}).get("drifted") or text_drifted else "ok"
    )
    return out


def _labelled_metric(ref: dict[str, Any], rows, labels, spec: PipelineSpec) -> dict[str, Any] | None:
    """The gate's metric over the interval's rows that got a label, against the version's test score."""
    if not len(labels) or not ref.get("metric"):
        return None
    joined = rows.merge(
        labels[["request_id", "row", "label"]].drop_duplicates(["request_id", "row"], keep="last"),
        on=["request_id", "row"],
        how="inner",
    )
    t = spec.monitor.thresholds
    name, before = ref["metric"]["name"], ref["metric"]["value"]
    out = {"rows": int(len(joined)), "metric": name, "reference": before, "value": None, "drifted": False}
    if len(joined) < t.min_labels:
        out["note"] = f"{len(joined)} labelled rows; {t.min_labels} are needed to judge {name}"
        return out
    value = _metric(name, joined, ref["task"])
    if value is None:
        out["note"] = (
            f"{name} cannot be computed from labels; accuracy (classification) and rmse/mae (regression) can"
        )
        return out
    lower_better = name in ("rmse", "mae", "log_loss")
    drop = (value - before) if lower_better else (before - value)
    out.update(value=value, drop=drop, drifted=bool(drop >= t.metric_drop), threshold=t.metric_drop)
    return out


def _metric(name: str, joined, task: str) -> float | None:
    if task == "classification" and name == "accuracy":
        return float((joined["prediction"].astype(str) == joined["label"].astype(str)).mean())
    if task == "regression" and name in ("rmse", "mae"):
        err = joined["prediction"].to_numpy(np.float64) - joined["label"].astype(float).to_numpy()
        return float(np.sqrt(np.mean(err**2))) if name == "rmse" else float(np.mean(np.abs(err)))
    return None  # another gate metric: labels alone give accuracy, or rmse/mae


def alerts_of(versions: list[dict[str, Any]], spec: PipelineSpec, report: str) -> list[dict[str, Any]]:
    """One alert line per drifted series or metric: the feature, the statistic, the threshold, the report."""
    t, out = spec.monitor.thresholds, []
    for v in versions:
        for s in v.get("series", []):
            if s["drifted"]:
                out.append(
                    {
                        "version": v["version"],
                        "series": s["name"],
                        "statistic": "psi",
                        "value": round(s["psi"], 4),
                        "threshold": t.psi,
                        "test": s["test"],
                        "p_value": s["p_value"],
                        "p_threshold": t.p_value,
                        "message": f"{spec.model_name} {v['version']}: {s['name']} drifted: PSI {s['psi']:.3f} >= "
                        f"{t.psi:g} and {s['test']} p-value {s['p_value']:.2g} < {t.p_value:g}; report {report}",
                    }
                )
        lab = v.get("labels") or {}
        if lab.get("drifted"):
            out.append(
                {
                    "version": v["version"],
                    "series": lab["metric"],
                    "statistic": "metric_drop",
                    "value": round(lab["drop"], 4),
                    "threshold": t.metric_drop,
                    "message": f"{spec.model_name} {v['version']}: {lab['metric']} on {lab['rows']} labelled rows is "
                    f"{lab['value']:.4f}, {lab['drop']:.4f} worse than at registration ({lab['reference']:.4f}; "
                    f"threshold {t.metric_drop:g}); report {report}",
                }
            )
        out += text_drift.alert_lines(spec.model_name, v["version"], v.get("text") or {}, report)
    return out


# ---------------------------------------------------------------------------------------------------------
# one interval


def monitor(
    spec: PipelineSpec,
    start: datetime,
    end: datetime,
    *,
    tracking_settings=None,
    run: dict[str, Any] | None = None,
    keys: Keys = NO_KEYS,
) -> dict[str, Any]:
    """Judge the interval [start, end) of the model's request log; write the report and the summary;
    log the figures to W&B. Returns the summary (``status``: ok, drift, or no_data; ``alerts``).
    ``keys.judge``: the key of ``gate.judge`` (its connection's password), for the judge signal."""
    root, model = spec.root, spec.model_name
    folder = join(to_path(monitoring_uri(root, model)), "reports", interval_name(start, end))
    logged = read_requests(root, model, start, end)
    labels = read_labels(root, model, start)
    versions, notes = _judge_all(spec, logged, labels, keys)
    report_uri = str(join(folder, "report.html"))
    alerts = alerts_of(versions, spec, report_uri)
    summary = {
        "pipeline": spec.name,
        "model": model,
        "interval": {"start": start.isoformat(), "end": end.isoformat()},
        "status": "drift" if alerts else ("ok" if any(v.get("series") for v in versions) else "no_data"),
        "alert": bool(alerts),
        "alerts": alerts,
        "rows": int(len(logged.rows)),
        "files": logged.files,
        "labels": int(len(labels.rows)),
        "problems": logged.problems + labels.problems,
        "notes": notes,
        "versions": versions,
        "thresholds": spec.monitor.thresholds.model_dump(),
        "min_rows": spec.monitor.min_rows,
        "actions": list(spec.monitor.actions),
        "report": report_uri,
        "airflow": run or {},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    page, images = render(summary)
    write_bytes(join(folder, "report.html"), page.encode())
    summary["wandb"] = _log(spec, summary, images, tracking_settings)
    write_json(join(folder, "summary.json"), summary)
    for line in [*notes, *summary["problems"], *(a["message"] for a in alerts)]:
        log.warning("%s", line)
    log.info(
        "%s %s: %s, %d rows, %d alert(s); report %s",
        model,
        interval_name(start, end),
        summary["status"],
        summary["rows"],
        len(alerts),
        report_uri,
    )
    return summary


def _judge_all(
    spec: PipelineSpec, logged: Logged, labels: Logged, keys: Keys = NO_KEYS
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each version's rows judged, or why not (no requests, too few rows, no reference statistics)."""
    rows, notes, out = logged.rows, [], []
    if not len(rows):
        notes.append(
            f"no requests were logged for {spec.model_name} in this interval ({logged.files} files): nothing "
            "to judge. Is the model deployed, with deploy.local.log_sample_rate above 0, and did it get traffic?"
        )
        return out, notes
    for version, part in rows.groupby("version", sort=True):
        entry = {"version": str(version), "rows": int(len(part)), "series": [], "drifted": [], "labels": None}
        ref = read_reference(spec, str(version))
        if ref is None:
            entry.update(
                status="no_reference",
                note=f"version {version} has no reference statistics ({REFERENCE_FILE}): "
                "it was registered before monitoring existed or not by the evaluate task; retrain or judge "
                "only versions registered since",
            )
        elif len(part) < spec.monitor.min_rows:
            entry.update(
                status="too_few_rows",
                note=f"version {version}: {len(part)} logged rows, fewer than "
                f"monitor.min_rows ({spec.monitor.min_rows}); no verdict for this interval",
            )
        else:
            entry = judge_version(ref, part, labels.rows, spec, keys)
        if entry.get("note"):
            notes.append(entry["note"])
        out.append(entry)
    return out, notes


def _log(
    spec: PipelineSpec, summary: dict[str, Any], images: dict[str, bytes], tracking_settings
) -> dict[str, Any] | None:
    """The interval's figures as a W&B run (job type monitor), the plots as images."""
    import tempfile
    from pathlib import Path

    if tracking_settings is None:
        tracking_settings = WandbSettings.from_environment()
    start = summary["interval"]["start"][:16]
    flat: dict[str, Any] = {
        "monitor/rows": summary["rows"],
        "monitor/alerts": len(summary["alerts"]),
        "monitor/drift": int(summary["alert"]),
    }
    for v in summary["versions"]:
        for s in v.get("series", []):
            flat[f"monitor/psi/{s['name']}"] = s["psi"]
        for s in (v.get("text") or {}).get("signals", []):
            if s.get("value") is not None:
                flat[f"monitor/text/{s['name']}"] = s["value"]
        if (v.get("labels") or {}).get("value") is not None:
            flat[f"monitor/labelled/{v['labels']['metric']}"] = v["labels"]["value"]
    with (
        start_run(
            tracking_settings,
            project=spec.name,
            name=f"{spec.name}-monitor-{start}",
            config={"interval": summary["interval"], "versions": [v["version"] for v in summary["versions"]]},
            tags=[f"pipeline:{spec.name}", "monitor"],
            job_type="monitor",
        ) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        run.summary_update(flat)
        for name, data in images.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            run.log_image(f"monitor/{name.removesuffix('.png')}", path.as_uri())
        return run.as_dict()


def recent_summaries(spec: PipelineSpec, limit: int = 60) -> list[dict[str, Any]]:
    """The newest interval summaries of the model, newest first (the views' monitoring page)."""
    folder = join(to_path(monitoring_uri(spec.root, spec.model_name)), "reports")
    names = sorted(subfolders(folder), reverse=True)[:limit]
    paths = [join(folder, name, "summary.json") for name in names]
    return [json.loads(path.read_text()) for path in paths if path.exists()]


__all__ = [
    "REFERENCE_FILE",
    "build_reference",
    "feature_kinds",
    "interval_name",
    "judge_version",
    "monitor",
    "read_labels",
    "read_reference",
    "read_requests",
    "recent_summaries",
]
