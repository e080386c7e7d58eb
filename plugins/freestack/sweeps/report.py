"""``select_best``: the table of a sweep's trials, a plot of the metric against each parameter, and the
best trial's model published as the run's candidate (evaluated, then registered by the gate).

    runs/<pipeline>/<sweep_id>/results.csv, results.json    one row per trial
    runs/<pipeline>/<sweep_id>/metric_vs_params.png          the sweep metric against each parameter
    runs/<pipeline>/<sweep_id>/best.json                     the selection
    candidates/<model>/<version>/                            the best trial's model (HF layout)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from typing import TYPE_CHECKING, Any

from freestack.registry.core import registry_for
from freestack.storage import join, list_objects, to_path, write_bytes, write_json
from freestack.sweeps import pareto
from freestack.sweeps.core import SweepError, kept_value, load_sweep, load_trials, sweep_dir
from freestack.sweeps.spec import SweepSpec, objectives
from freestack.sweeps.values import objective_value
from freestack.tracking.wandb import WandbSettings, start_run
from freestack.train.window import window_interval
from freestack.version.files import LINEAGE
from freestack.version.write import read_lineage, write_lineage

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)


def sweep_metric(config: SweepSpec, task: str | None) -> tuple[str, str]:
    """The metric trials are compared on: the sweep's, else the trainer's primary validation metric."""
    # ml.metrics loads numpy; the operators (DAG parse) and the UI import this module
    from freestack.ml.metrics import PRIMARY

    found = objectives(config)  # several: the first (an epoch metric, the one trials keep their epoch on)
    if found:
        return found[0]
    name, higher = PRIMARY[task or "classification"]
    return f"val_{name}", "maximize" if higher else "minimize"


def trial_table(spec: PipelineSpec, sweep_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], str, str]:
    sweep = load_sweep(spec, sweep_id)
    trials = [d for d, _ in load_trials(spec, sweep_id)]
    task = next((t["summary"].get("task") for t in trials if t.get("summary", {}).get("task")), None)
    metric, goal = sweep_metric(sweep["config"], task)
    several = objectives(sweep["config"])[1:]
    on_front = set(pareto.front(sweep["config"], trials)) if several else set()
    rows = []
    for t in trials:
        hist = t.get("history") or []
        row = {
            "trial": t["id"],
            "state": t["state"],
            "stopped_early": bool(t.get("stopped")),
            "epochs": len(hist),
            metric: kept_value(t, metric, goal),
            **{name: objective_value(t, name, g) for name, g in several},
            **({"front": t["id"] in on_front} if several else {}),
            **{f"param.{k}": v for k, v in sorted(t["params"].items())},
            **{k: v for k, v in sorted((t.get("summary") or {}).items()) if k.startswith("test_")},
            "attempts": len(t.get("attempts") or []),
            "model_uri": t.get("model_uri"),
            "wandb_run": (t.get("wandb") or {}).get("id"),
            "error": t.get("error"),
        }
        rows.append(row)
    return sweep, rows, metric, goal


def _csv(rows: list[dict[str, Any]]) -> bytes:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()})
    return buf.getvalue().encode()


def plot_metric_vs_params(rows: list[dict[str, Any]], metric: str, goal: str, config: SweepSpec) -> bytes:
    """One panel per parameter: the metric of every trial (finished in blue, stopped early in grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = {path: p.distribution or "" for path, p in config.leaves().items()}
    params = [k[len("param.") :] for k in dict.fromkeys(k for r in rows for k in r if k.startswith("param."))]
    params = params or ["(none)"]
    cols = min(3, len(params))
    nrows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    scored = [r for r in rows if isinstance(r.get(metric), int | float)]
    best = (max if goal == "maximize" else min)(scored, key=lambda r: r[metric], default=None)
    for ax, name in zip(axes.flat, params, strict=False):
        _panel(ax, name, scored, best, metric, dists.get(name, ""))
    for ax in list(axes.flat)[len(params) :]:
        ax.axis("off")
    fig.suptitle(f"{metric} ({goal}) by parameter; grey: stopped early, star: best", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _panel(ax: Any, name: str, rows: list[dict[str, Any]], best: dict | None, metric: str, dist: str) -> None:
    """One parameter's panel: each scored row's metric against its value, a star on the ``best`` row."""
    xs = values = [r.get(f"param.{name}") for r in rows]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values) and values
    if not numeric:  # categorical (lists, strings): evenly spaced labels
        labels = list(dict.fromkeys(json.dumps(v) for v in values))
        xs = [labels.index(json.dumps(v)) for v in values]
        ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    colors = ["#9e9e9e" if r["stopped_early"] else "#1f77b4" for r in rows]
    ax.scatter(xs, [r[metric] for r in rows], c=colors, s=28)
    if best is not None:
        ax.scatter([xs[rows.index(best)]], [best[metric]], marker="*", s=180, c="#d62728", label="best")
    if numeric and ("log" in dist or (min(values) > 0 and max(values) / min(values) > 50)):
        ax.set_xscale("log")
    ax.set(xlabel=name, ylabel=metric)
    ax.grid(alpha=0.3)


def publish_best(
    spec: PipelineSpec, sweep: dict[str, Any], best: dict[str, Any], airflow: dict[str, Any] | None = None
) -> str:
    """Copy the best trial's model folder into ``candidates/<model>/<version>``; return its URI.
    ``airflow`` is the publishing task's record (:func:`freestack.train.operators.airflow_info`): it
    replaces the trial's, which names the task that created the sweep."""
    src = to_path(best["model_uri"])
    end_ds = sweep["request"]["end_ds"]
    digest = hashlib.sha256(f"{spec.name}|{sweep['id']}|{best['trial']}".encode()).hexdigest()[:8]
    version = f"v{end_ds.replace('-', '')}-{digest}"
    dest = registry_for(spec).candidate_path(version)
    for obj in list_objects(src):
        if obj.name == LINEAGE:
            continue
        write_bytes(join(dest, obj.name), obj.read_bytes())
    lineage = read_lineage(src).as_dict()
    lineage["version"] = version
    if airflow:
        lineage["airflow"] = _trained_interval(airflow, lineage.get("window") or {})
    lineage["sweep"] = {
        **(lineage.get("sweep") or {}),
        "id": sweep["id"],
        "trial": best["trial"],
        "method": sweep["config"].method,
        "trials_uri": str(sweep_dir(spec, sweep["id"])),
        "selected_on": best["metric"],
        **({"candidate": best["candidate"]} if best.get("candidate") else {}),
    }
    write_lineage(dest, lineage)
    return str(dest)


def _trained_interval(airflow: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
    """``airflow`` with, where its data interval is the run's window, the window the trial trained on
    (a sweep may tune ``window_days``)."""
    if airflow.get("data_interval_from") != "window" or not window.get("end_ds") or not window.get("days"):
        return airflow
    start, end = window_interval(window["end_ds"], window["days"])
    return {**airflow, "data_interval_start": start, "data_interval_end": end}


def select_best(
    spec: PipelineSpec, sweep_id: str, *, tracking_settings=None, airflow: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the table and the plot, publish the best trial's model (its lineage naming the Airflow task
    ``airflow`` describes), log both to W&B."""
    sweep, rows, metric, goal = trial_table(spec, sweep_id)
    folder = sweep_dir(spec, sweep_id)
    done = [r for r in rows if r["state"] == "finished" and isinstance(r.get(metric), int | float)]
    if not done:
        states = {r["trial"]: r["state"] for r in rows}
        raise SweepError(
            f"sweep {sweep_id} has no finished trial to select from (trials: {states or 'none'}); "
            "see the agents' logs and each trial.json's 'error'"
        )
    best, reason = _candidate(sweep["config"], done, metric, goal)
    table = write_json(join(folder, "results.json"), {"metric": metric, "goal": goal, "trials": rows})
    table_csv = write_bytes(join(folder, "results.csv"), _csv(rows))
    plot = write_bytes(
        join(folder, "metric_vs_params.png"), plot_metric_vs_params(rows, metric, goal, sweep["config"])
    )
    version_uri = publish_best(
        spec,
        sweep,
        {**best, "metric": {"name": metric, "goal": goal, "value": best[metric]}, "candidate": reason},
        airflow=airflow,
    )
    epochs_total = sum(r["epochs"] for r in rows)
    summary = {
        "sweep_id": sweep_id,
        "method": sweep["config"].method,
        "metric": metric,
        "goal": goal,
        "best_trial": best["trial"],
        "best_value": best[metric],
        "best_params": {k[len("param.") :]: v for k, v in best.items() if k.startswith("param.")},
        **_front_summary(sweep["config"], rows, reason),
        "version_uri": version_uri,
        "trials": len(rows),
        "finished": sum(r["state"] == "finished" for r in rows),
        "stopped_early": sum(r["stopped_early"] for r in rows),
        "failed": sum(r["state"] in ("failed", "crashed") for r in rows),
        "unfinished": sum(r["state"] == "running" for r in rows),
        "epochs_total": epochs_total,
        "results_csv": table_csv.uri,
        "results_json": table.uri,
        "plot": plot.uri,
    }
    if reason:
        log.info("sweep %s: the candidate is %s", sweep_id, reason)
    summary["wandb"] = _log_to_wandb(spec, sweep, rows, summary, tracking_settings)
    write_json(join(folder, "best.json"), summary)
    log.info(
        "sweep %s: best trial %s with %s %.4f of %d trials (%d stopped early, %d epochs in all); model %s",
        sweep_id,
        best["trial"],
        metric,
        best[metric],
        len(rows),
        summary["stopped_early"],
        epochs_total,
        version_uri,
    )
    return summary


def _candidate(
    config: SweepSpec, done: list[dict[str, Any]], metric: str, goal: str
) -> tuple[dict[str, Any], str | None]:
    """The trial the sweep publishes: with several objectives, the one its ``candidate`` rule picks from the
    Pareto front, and why (:func:`freestack.sweeps.pareto.choose`); else the best on its metric."""
    if len(objectives(config)) < 2:
        return (max if goal == "maximize" else min)(done, key=lambda r: r[metric]), None
    names = [n for n, _ in objectives(config)]
    on_front = [r for r in done if r.get("front") and all(isinstance(r.get(n), int | float) for n in names)]
    try:
        return pareto.choose(config, on_front)
    except ValueError as exc:
        raise SweepError(f"the sweep's candidate rule picks no trial: {exc}") from None


def _front_summary(config: SweepSpec, rows: list[dict[str, Any]], reason: str | None) -> dict[str, Any]:
    """With several objectives: them, the front's trials with their values, and why the candidate won."""
    found = objectives(config)
    if len(found) < 2:
        return {}
    names = [n for n, _ in found]
    return {
        "objectives": [{"name": n, "goal": g} for n, g in found],
        "front": [{"trial": r["trial"], **{n: r.get(n) for n in names}} for r in rows if r.get("front")],
        "candidate_rule": (  # as the sweep's config writes it
            config.candidate.model_dump(mode="json", exclude_none=True)
            if config.candidate
            else {"best": names[0]}
        ),
        "candidate_reason": reason,
    }


def _log_to_wandb(spec, sweep, rows, summary, tracking_settings) -> dict[str, Any]:
    if tracking_settings is None:
        tracking_settings = WandbSettings.from_environment()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    data = [
        [json.dumps(r.get(c)) if isinstance(r.get(c), list | dict) else r.get(c) for c in columns]
        for r in rows
    ]
    with start_run(
        tracking_settings,
        project=spec.name,
        name=f"{sweep['id']}-summary",
        config={"sweep_id": sweep["id"], "sweep": sweep["config"].config()},
        tags=[f"pipeline:{spec.name}", f"sweep:{sweep['id']}"[:64]],
        group=sweep["id"],
        job_type="sweep-summary",
    ) as run:
        run.log_table("sweep_trials", columns, data)
        run.log_image("metric_vs_params", summary["plot"])
        run.summary_update({k: v for k, v in summary.items() if isinstance(v, int | float | str)})
        return run.as_dict()


__all__ = ["plot_metric_vs_params", "publish_best", "select_best", "sweep_metric", "trial_table"]
