"""The evaluation report, written beside the version into its ``evaluation/`` folder.

PNG plots (confusion matrix or residuals, per-class metrics, learning curves from ``history.json``),
``metrics.json`` (paths relative to the model folder, so they hold wherever it is copied) and
``report.html`` with the plots embedded; a text-generation candidate's sample answers and the judge's
verdicts are tables of the page. The metrics and plots are logged to W&B.
"""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING, Any

import numpy as np

from freestack.evaluate import text_generation as gen
from freestack.evaluate.measure import Candidate, Measured, shown
from freestack.judging import client as llm_judge
from freestack.ml.plots import png
from freestack.storage import join, write_bytes, write_json
from freestack.tracking.wandb import WandbSettings, start_run

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec


#: the learning curves' panels: metrics on one scale share a y axis, never a score (R², accuracy: up to
#: 1) with an error in the target's units (RMSE, MAE) or a loss
CURVE_SCALES = (
    ("loss", ("loss", "log_loss")),
    ("error (target units)", ("rmse", "mae")),
    ("score (higher is better)", ("r2", "accuracy", "macro_f1", "f1")),
)


def _curve_panels(history: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(title, [(history key, label), ...]) per panel of the learning curves, in CURVE_SCALES' order; a
    validation metric of no known scale gets a panel of its own."""
    first = history[0]
    panels: dict[str, list[tuple[str, str]]] = {}
    if "train_loss" in first:
        panels.setdefault("loss", []).append(("train_loss", "train loss"))
    for key in first:
        if not key.startswith("val_"):
            continue
        metric = key.removeprefix("val_")
        title = next((t for t, names in CURVE_SCALES if metric in names), metric)
        panels.setdefault(title, []).append((key, "validation loss" if key == "val_loss" else key))
    order = [t for t, _ in CURVE_SCALES]
    return sorted(panels.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def plots(
    report: dict[str, Any], history: list[dict[str, Any]], champion: dict[str, Any] | None
) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    if report["task"] == "generation":
        pass  # the report's sample answers say more than a plot
    elif report["task"] == "classification":
        cm = report["confusion_matrix"]
        m = np.array(cm["matrix"])
        fig, ax = plt.subplots(figsize=(5.5, 4.8))
        im = ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(cm["labels"])), cm["labels"])
        ax.set_yticks(range(len(cm["labels"])), cm["labels"])
        ax.set(xlabel="predicted", ylabel="true")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if m[i, j]:
                    color = "white" if m[i, j] > m.max() / 2 else "black"
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7, color=color)
        fig.colorbar(im, ax=ax)
        ax.set_title(f"confusion matrix (accuracy {report['accuracy']:.4f})")
        out["confusion_matrix.png"] = png(fig)
        names = list(report["per_class"])
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names)), 3.6))
        w = 0.27
        for k, metric in enumerate(("precision", "recall", "f1")):
            values = [report["per_class"][n][metric] for n in names]
            ax.bar(np.arange(len(names)) + (k - 1) * w, values, w, label=metric)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title("per-class metrics")
        out["per_class.png"] = png(fig)
    else:
        pts = report["_points"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        axes[0].scatter(pts["y"], pts["pred"], s=6, alpha=0.5)
        lo, hi = min(pts["y"] + pts["pred"]), max(pts["y"] + pts["pred"])
        axes[0].plot([lo, hi], [lo, hi], "r--", lw=1)
        axes[0].set(xlabel="true", ylabel="predicted")
        axes[1].hist(np.array(pts["pred"]) - np.array(pts["y"]), bins=40)
        axes[1].set_xlabel("residual (predicted - true)")
        fig.suptitle(f"residuals (RMSE {report['rmse']:.4g}, R² {report['r2']:.4f})")
        out["residuals.png"] = png(fig)
    panels = _curve_panels(history) if history else []
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
        epochs = [r["epoch"] for r in history]
        for ax, (title, curves) in zip(axes[0], panels, strict=True):
            for key, label in curves:
                ax.plot(epochs, [r.get(key) for r in history], label=label)
            ax.set_xlabel("epoch")
            ax.set_title(title, fontsize=9)
            ax.legend(fontsize=8)
        fig.suptitle("learning curves")
        out["learning_curves.png"] = png(fig)
    return out


def render_html(title: str, summary: dict[str, Any], images: dict[str, bytes]) -> str:
    """A self-contained page: the metrics tables and every plot inlined as data: URIs."""

    def table(rows: list[tuple[str, Any]]) -> str:
        cells = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(f'{v:.6g}' if isinstance(v, float) else str(v))}</td></tr>"
            for k, v in rows
        )
        return f"<table>{cells}</table>"

    cand = summary["candidate"]
    champ = summary.get("champion")
    scalar = [k for k, v in cand.items() if isinstance(v, int | float) and not k.startswith("_")]
    comparison = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{cand[k]:.6g}</td><td>{'' if not champ or k not in champ else f'{champ[k]:.6g}'}</td></tr>"
        for k in scalar
        if isinstance(cand[k], float)
    )
    imgs = "".join(
        f'<figure><img alt="{html.escape(n)}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
        f"<figcaption>{html.escape(n)}</figcaption></figure>"
        for n, b in images.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}figure{display:inline-block;margin:.5em}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        + table([("version", summary["version"]), ("test rows", cand["rows"]), ("window", summary["window"])])
        + "<h2>test metrics: candidate vs champion</h2>"
        f"<table><tr><th>metric</th><th>candidate</th><th>champion {html.escape(str(summary.get('champion_version') or '(none)'))}</th></tr>"
        f"{comparison}</table>{gen.samples_html(summary.get('samples') or [])}"
        f"{llm_judge.table_html(summary.get('judge_items') or [])}<h2>plots</h2>{imgs}</body></html>"
    )


def write_report(
    spec: PipelineSpec, c: Candidate, m: Measured, champion_uri: str | None, found, tracking_settings
) -> dict[str, Any]:
    """Report: the plots, ``metrics.json`` (its paths relative to the model folder) and ``report.html``
    written into ``evaluation/``, the metrics and plots logged to W&B; returns the summary."""
    images = plots(m.cand, c.loaded.history, m.champ)
    for name, image in images.items():
        write_bytes(join(c.folder, name), image)
    summary = {
        "version": c.version,
        "candidate_uri": str(c.uri),
        "champion_uri": champion_uri,
        "champion_version": m.champion.lineage.as_dict().get("version") if m.champion else None,
        **({"samples": m.samples} if m.samples is not None else {}),
        **({"judge_samples": m.judged.samples()} if m.judged is not None else {}),
        "window": {"end_ds": c.end_ds, "days": c.days, "partitions": [p["ds"] for p in c.data.partitions]},
        "candidate": shown(m.cand),
        "champion": shown(m.champ) if m.champ else None,
        "costs": _costs(c, m),
        "plots": {n: str(join(c.folder, n)) for n in images},
        **({"cache": found.record()} if found is not None else {}),
    }
    write_json(join(c.folder, "metrics.json"), {**summary, "plots": {n: f"evaluation/{n}" for n in images}})
    page = render_html(
        f"{spec.model_name} {c.version}: evaluation",
        {**summary, "judge_items": m.judged.items if m.judged else None},
        images,
    )
    summary["report"] = write_bytes(join(c.folder, "report.html"), page.encode()).uri
    summary["wandb"] = _log(spec, c.version, c.lineage, summary, images, tracking_settings)
    return summary


def _costs(c: Candidate, m: Measured) -> dict[str, Any]:
    """Each version's costs: its training's as its lineage recorded them (:mod:`freestack.train.costs`) and
    its serving's as measured here (production's as its own evaluation recorded them, unless measured
    again here for a rule comparing the two)."""
    cand = {**(c.lineage.get("costs") or {}), **({"serving": m.serving} if m.serving else {})}
    if m.champion is None:
        return {"candidate": cand or None, "champion": None}
    champ = dict(m.champion.lineage.as_dict().get("costs") or {})
    if m.champion_serving:
        champ["serving"] = {**m.champion_serving, "measured_with": c.version}
    return {"candidate": cand or None, "champion": champ or None}


def _log(spec, version, lineage, summary, images, tracking_settings) -> dict[str, Any]:
    if tracking_settings is None:
        tracking_settings = WandbSettings.from_environment()
    trained_in = (lineage.get("wandb") or {}).get("id")
    with start_run(
        tracking_settings,
        project=spec.name,
        name=f"{spec.name}-{version}-evaluate",
        config={"version": version, "trained_in_run": trained_in, "window": summary["window"]},
        tags=[f"pipeline:{spec.name}", f"version:{version}"[:64]],
        group=((lineage.get("sweep") or {}).get("id")) or trained_in,
        job_type="evaluate",
    ) as run:
        flat = {f"eval/{k}": v for k, v in summary["candidate"].items() if isinstance(v, int | float)}
        if summary["champion"]:
            flat.update(
                {f"champion/{k}": v for k, v in summary["champion"].items() if isinstance(v, int | float)}
            )
        serving = ((summary.get("costs") or {}).get("candidate") or {}).get("serving") or {}
        flat.update({f"costs/serving_{k}": v for k, v in serving.items() if isinstance(v, int | float)})
        run.summary_update(flat)
        for name in images:
            run.log_image(f"eval/{name.removesuffix('.png')}", summary["plots"][name])
        return run.as_dict()


__all__ = ["CURVE_SCALES", "plots", "render_html", "write_report"]
