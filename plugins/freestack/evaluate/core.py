"""Evaluate a candidate model (and the current champion) on the same held-out test split.

The test split is the one the trainer holds out: rows of the lake window ``(end_ds - days, end_ds]``
whose key hashes into ``test`` (``freestack.ml.prep.split_of_keys``, salted with the model name).
Both models are scored on exactly those rows, each through its own preprocessing, with metrics
computed in label space (a class the champion never saw counts as its error).

Writes ``evaluation/`` into the candidate's folder (``candidates/<model>/<version>/``, outside the
registry until the gate registers it): ``metrics.json``, PNG plots (confusion matrix or residuals,
per-class metrics, learning curves from ``history.json``) and ``report.html`` with the plots embedded.
Paths in ``metrics.json`` are relative to the model folder, so they hold wherever it is copied. A
text-generation candidate with a judge (``gate.judge``, :mod:`freestack.judging.client`) also gets
``judge.json``: every prompt's verdicts, worst first, and the figures the gate reads.

Importing this module loads torch, pandas and pyarrow (the trainer's window reader, the ML core): the
operators and the gate's :func:`~freestack.evaluate.gate.decide_again` import it inside the functions that
evaluate, so parsing the DAG file stays light.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from freestack import step_cache, version
from freestack.errors import DeployError, EvaluationError
from freestack.evaluate import text_generation as gen
from freestack.evaluate.spec import SERVING_FIGURES
from freestack.judging import client as llm_judge
from freestack.ml.loop import to_tensors
from freestack.ml.plots import png
from freestack.ml.prep import split_of_keys
from freestack.monitor.core import REFERENCE_FILE, build_reference
from freestack.serving.costs import measure_serving
from freestack.settings import settings
from freestack.storage import join, to_path, write_bytes, write_json
from freestack.tracking.wandb import WandbSettings, start_run
from freestack.train.core import load_window
from freestack.train.request import TrainingError
from freestack.train.stream import FrameRows
from freestack.train.window import lineage_window
from freestack.version import LoadedVersion
from freestack.version.files import CARD, LINEAGE, MARKER

if TYPE_CHECKING:
    from collections.abc import Callable

    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)
EPS = 1e-12


def load_version(uri: str) -> LoadedVersion:
    """A version to evaluate, loaded (:meth:`freestack.version.ModelVersion.load`): the candidate, or a
    registered one (the champion, a candidate decided again), then verified against its manifest
    (:class:`~freestack.version.VersionCorrupt` names a file that changed)."""
    try:
        loaded = version.open(uri).load()
        loaded.preprocessor  # noqa: B018  (a version without preprocessing is refused here, not mid-way)
    except version.NotAVersion as exc:
        raise EvaluationError(f"{exc}; pass a model version URI") from None
    except version.VersionCorrupt as exc:  # a file changed since registration: no retry mends it
        raise EvaluationError(str(exc)) from None
    return loaded


def test_split(spec: PipelineSpec, end_ds: str, days: int, lineage: dict[str, Any] | None = None):
    """(the held-out test rows of the window, the window): the very partitions the candidate was trained
    on (its lineage: ds and sha256, checked as they are read), else the lake's. The rows are a frame's
    (:class:`~freestack.train.stream.FrameRows`) or, for a window read as a stream, a spooled file's
    (:class:`~freestack.train.stream.SpoolRows`); close the window when done."""
    fixed = lineage_window(lineage or {})
    try:
        data = load_window(
            spec, end_ds, days, fixed.as_dict() if fixed is not None else None, splits=("test",)
        )
    except TrainingError as exc:
        raise EvaluationError(str(exc)) from None
    if data.spool is not None:
        test = data.spool.splits["test"]
    else:
        t, df = spec.train, data.frame
        test = FrameRows(
            df[
                split_of_keys(
                    df[spec.source.schema_.key], t.val_fraction, t.test_fraction, salt=spec.model_name
                )
                == "test"
            ]
        )
    if test.rows == 0:
        data.close()
        raise EvaluationError(f"the window up to {end_ds} has no test rows; widen window_days")
    return test, data


def outputs(model, pre, test, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, outputs) of one model on the test rows (a frame, or rows read chunk by chunk): class
    probabilities, or predicted values; only these are kept across chunks."""
    import torch

    rows = test.chunks() if hasattr(test, "chunks") else [test]
    ys, outs = [], []
    with torch.no_grad():
        for frame in rows:
            x = to_tensors(pre.inputs(frame))
            ys.append(frame[target].to_numpy())
            outs.append(
                (model.predict_proba(x) if pre.task == "classification" else model.predict(x)).numpy()
            )
    y = np.concatenate(ys) if ys else np.array([])
    if pre.task == "classification":
        return y, np.concatenate(outs) if outs else np.zeros((0, len(pre.classes)))
    return y, np.concatenate(outs).astype(np.float64) if outs else np.array([])


def report_of(pre, y: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """Metrics of outputs against labels, in the target's own labels/units."""
    if pre.task == "classification":
        return classification_report(y, out, list(pre.classes))
    return regression_report(y.astype(np.float64), out)


def score(model, pre, test, target: str) -> dict[str, Any]:
    """Metrics of one model on the test rows."""
    return report_of(pre, *outputs(model, pre, test, target))


def reference_of(
    spec: PipelineSpec, pre, data, test, out: np.ndarray, version: str, cand: dict[str, Any]
) -> dict[str, Any]:
    """The version's reference statistics for the monitor: a sample of the window's rows (the test split's
    when the window was read as a stream) and the version's predictions on the test split."""
    import pandas as pd

    n = spec.monitor.reference_rows
    if getattr(data, "frame", None) is not None:
        frame, source = data.frame, "window"
    else:
        frame = pd.concat(list(test.chunks()), ignore_index=True) if hasattr(test, "chunks") else test
        source = "test split"
    if len(frame) > n:
        frame = frame.sample(n, random_state=0)
    predicted = (
        [str(pre.classes[i]) for i in out.argmax(axis=1).tolist()]
        if pre.task == "classification"
        else out.reshape(-1).tolist()
    )
    metric = spec.gate.metric if isinstance(cand.get(spec.gate.metric), float) else None
    return build_reference(
        spec,
        frame,
        predicted,
        version=version,
        source=source,
        metric=(metric, cand[metric]) if metric else None,
    )


def lowest_keys(test, key: str, n: int):
    """The ``n`` rows of ``test`` with the lowest keys (a stable sample), gathered chunk by chunk."""
    import pandas as pd

    chosen = None
    for frame in test.chunks() if hasattr(test, "chunks") else [test]:
        both = frame if chosen is None else pd.concat([chosen, frame], ignore_index=True)
        chosen = both.sort_values(key, kind="stable").head(n) if key in both.columns else both.head(n)
    return chosen if chosen is not None else pd.DataFrame()


def smoke_sample(model, pre, test, key: str, target: str, n: int = 64) -> dict[str, Any]:
    """Up to ``n`` test rows (lowest keys first, so the sample is stable) with the model's in-process
    outputs: what the deploy stage sends to a freshly started server, whose answers must equal these."""
    import torch

    rows = lowest_keys(test, key, n)
    x = pre.inputs(rows)
    with torch.no_grad():
        t = to_tensors(x)
        out = model.predict_proba(t) if pre.task == "classification" else model.predict(t)
    sample = {
        "task": pre.task,
        "features": list(pre.features),
        "keys": rows[key].astype(str).tolist() if key in rows.columns else [],
        # what a client sends: the numbers, or each row's raw values (images as base64) for other inputs
        "rows": x.tolist() if pre.encoder is None else raw_rows(rows, pre),
        "labels": rows[target].tolist() if target in rows.columns else [],
        "outputs": out.numpy().tolist(),
    }
    if pre.task == "classification":
        sample["classes"] = [str(c) for c in pre.classes]
        sample["predicted"] = [pre.classes[i] for i in out.argmax(dim=-1).tolist()]
    return sample


def unevaluated_smoke_sample(
    spec: PipelineSpec, version_uri: str, rows_uri: str | None = None, n: int = 64
) -> tuple[dict[str, Any], str]:
    """The smoke sample of a version no evaluation wrote one for (registered with no gate), and where its
    rows came from, in words: up to ``n`` rows with the version's in-process outputs, as
    :func:`smoke_sample` keeps them, from ``rows_uri`` (a Parquet or CSV file holding the version's
    feature columns), else from the version's own test split (the partitions its lineage names, read from
    ``spec``'s lake: :func:`freestack.providers.versions.version_spec` describes it)."""
    loaded = load_version(version_uri)
    model, pre = loaded.model, loaded.preprocessor
    key, target = spec.source.schema_.key, spec.source.schema_.target
    if rows_uri:
        frame, source = given_rows(rows_uri, pre), f"the given rows {rows_uri}"
    else:
        window = loaded.lineage.as_dict().get("window") or {}
        if not window.get("end_ds"):
            raise EvaluationError(f"{version_uri}: {LINEAGE} names no window: give rows to smoke-test with")
        days = int(window.get("days") or spec.train.window_days)
        test, data = test_split(spec, window["end_ds"], days, loaded.lineage.as_dict())
        try:
            frame = lowest_keys(test, key, n)
        finally:
            data.close()
        source = f"its own test split (the {days} days up to {window['end_ds']})"
    if pre.task == "generation":
        return gen.smoke_sample(model, pre, frame, spec, key, n), source
    return smoke_sample(model, pre, frame, key, target, n), source


def given_rows(rows_uri: str, pre):
    """The rows of a Parquet or CSV file (by its suffix) to smoke-test with; EvaluationError naming the
    version's feature columns the file lacks."""
    import pandas as pd

    path = to_path(rows_uri)
    try:
        with path.open("rb") as f:
            frame = pd.read_csv(f) if path.name.lower().endswith(".csv") else pd.read_parquet(f)
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{rows_uri}: cannot read rows to smoke-test with: {exc}") from None
    needed = list(pre.columns.columns) if pre.task == "generation" else list(pre.features)
    lacking = [c for c in needed if c not in frame.columns]
    if lacking or frame.empty:
        what = f"lacks the version's columns {', '.join(lacking)}" if lacking else "holds no rows"
        raise EvaluationError(f"{rows_uri} {what}: give a file of rows the version scores")
    return frame


def raw_rows(rows, pre) -> list[list[Any]]:
    """The feature values of ``rows`` as a client sends them in JSON: numbers, category and text values
    as they are (missing ones null), images as base64 of their bytes."""
    kinds = dict(pre.encoder.columns)
    out: list[list[Any]] = []
    for values in zip(*(rows[f].tolist() for f in pre.features), strict=True):
        row = []
        for f, v in zip(pre.features, values, strict=True):
            if kinds[f] == "image":
                row.append(base64.b64encode(v).decode("ascii") if v is not None else None)
            elif isinstance(v, float) and math.isnan(v):
                row.append(None)
            else:
                row.append(v.item() if hasattr(v, "item") else v)
        out.append(row)
    return out


def classification_report(y: np.ndarray, proba: np.ndarray, classes: list[Any]) -> dict[str, Any]:
    labels = sorted({*classes, *y.tolist()}, key=lambda v: (str(type(v)), v))
    pred = np.array([classes[i] for i in proba.argmax(axis=1)], dtype=object)
    index = {c: i for i, c in enumerate(classes)}
    p_true = np.array([proba[r, index[v]] if v in index else 0.0 for r, v in enumerate(y.tolist())])
    per_class, f1s = {}, []
    matrix = [[int(np.sum((y == a) & (pred == b))) for b in labels] for a in labels]
    for c in labels:
        tp = int(np.sum((pred == c) & (y == c)))
        fp = int(np.sum((pred == c) & (y != c)))
        fn = int(np.sum((pred != c) & (y == c)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        per_class[str(c)] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(np.sum(y == c)),
        }
        if tp + fp + fn:
            f1s.append(f1)
    return {
        "task": "classification",
        "rows": len(y),
        "accuracy": float(np.mean(pred == y)),
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "log_loss": float(-np.mean(np.log(np.clip(p_true, EPS, 1.0)))),
        "per_class": per_class,
        "confusion_matrix": {"labels": [str(c) for c in labels], "matrix": matrix},
    }


def regression_report(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    err = pred - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    q = np.quantile(err, [0.05, 0.25, 0.5, 0.75, 0.95]).tolist() if len(err) else [0.0] * 5
    return {
        "task": "regression",
        "rows": len(y),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else 0.0,
        "residuals": {
            "mean": float(err.mean()),
            "std": float(err.std()),
            "quantiles": dict(zip(("p05", "p25", "p50", "p75", "p95"), q, strict=True)),
            "max_abs": float(np.abs(err).max()) if len(err) else 0.0,
        },
        "_points": {"y": y.tolist(), "pred": pred.tolist()},
    }


# ---------------------------------------------------------------------------------------------------------
# plots and the report


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


@dataclass
class Candidate:
    """A candidate loaded to evaluate (:func:`_load`): the version, its name and lineage, the window it is
    evaluated on, that window's test rows (``data``: the window read, closed once they are measured) and
    the folder its evaluation is written into."""

    loaded: LoadedVersion
    uri: str
    version: str
    lineage: dict[str, Any]
    end_ds: str
    days: int
    test: Any
    data: Any
    folder: Any


@dataclass
class Measured:
    """Both models' metrics on the test rows (the champion's None without one), the champion, and a
    text-generation candidate's sample answers and the judge's verdicts (:func:`_generation`)."""

    cand: dict[str, Any]
    champ: dict[str, Any] | None
    champion: LoadedVersion | None
    smoke: dict[str, Any]
    samples: list[dict[str, str]] | None = None
    judged: llm_judge.Judged | None = None
    serving: dict[str, Any] | None = None
    champion_serving: dict[str, Any] | None = None


def evaluate(
    spec: PipelineSpec,
    candidate_uri: str,
    *,
    champion_uri: str | None = None,
    end_ds: str | None = None,
    tracking_settings=None,
    judge_key: str | None = None,
    run: dict[str, Any] | None = None,
    source: Callable[[str], tuple[str, dict[str, str]]] | None = None,
) -> dict[str, Any]:
    """Score the candidate (and the champion) on the candidate's window's test split; measure what
    serving it costs (``deploy.measure``); write ``evaluation/`` into the candidate folder; log the
    metrics and plots to W&B. Returns the summary.
    ``judge_key``: the API key of ``gate.judge``, read from its connection by the operator. ``run``: the
    Airflow run (dag_id, run_id) the cache entry names. ``source(uri)``: the URI a model server reads a
    version from and the environment it needs for it (credentials; default: the URI as it is). With ``gate.cache``, an earlier evaluation of the
    same inputs is returned as it is (:func:`cached`). The steps: :func:`_load` the candidate and its test
    rows; answer and measure both models there (:func:`_measure`; :func:`_generation` also judges a
    text-generation candidate's answers); :func:`_report` what was measured."""
    if join(to_path(candidate_uri), MARKER).exists():
        return _recorded(candidate_uri)
    found = cached(spec, candidate_uri, champion_uri, end_ds)
    if found is not None and found.hit and (reused := _reused(candidate_uri, found)) is not None:
        return reused
    cand = _load(spec, candidate_uri, end_ds)
    try:
        champion = load_version(champion_uri) if champion_uri else None
        if cand.loaded.preprocessor.task == "generation":
            measured = _generation(spec, cand, champion, judge_key)
        else:
            measured = _measure(spec, cand, champion)
    finally:
        cand.data.close()
    _serving(spec, cand, measured, champion_uri, source)
    summary = _report(spec, cand, measured, champion_uri, found, tracking_settings)
    if found is not None:
        written = _written([*summary["plots"]], measured.judged is not None)
        step_cache.save(found, run, written, {"wandb": summary["wandb"]})
    champ = f" (champion: {_figures(summary['champion'])})" if measured.champ else ""
    log.info(
        "evaluated %s on %d test rows up to %s: %s%s; report %s",
        cand.version,
        measured.cand["rows"],
        cand.end_ds,
        _figures(summary["candidate"]),
        champ,
        summary["report"],
    )
    return summary


def _load(spec: PipelineSpec, candidate_uri: str, end_ds: str | None) -> Candidate:
    """Load: the candidate (verified against its manifest), the window it is evaluated on (``end_ds``, else
    its lineage's) and that window's held-out test rows (the very partitions it was trained on, when the
    window is its lineage's)."""
    loaded = load_version(candidate_uri)
    lineage = loaded.lineage.as_dict()
    window = lineage.get("window") or {}
    end_ds = end_ds or window.get("end_ds")
    days = int(window.get("days") or spec.train.window_days)
    if not end_ds:
        raise EvaluationError(f"{candidate_uri}: {LINEAGE} names no window; pass end_ds")
    if spec.gate.judge is not None and loaded.preprocessor.task != "generation":
        raise EvaluationError(
            "gate.judge judges generated answers: it is for model.task text-generation only"
        )
    test, data = test_split(spec, end_ds, days, lineage if end_ds == window.get("end_ds") else None)
    version = lineage.get("version") or to_path(candidate_uri).name
    folder = join(to_path(candidate_uri), "evaluation")
    return Candidate(loaded, candidate_uri, version, lineage, end_ds, days, test, data, folder)


def _measure(spec: PipelineSpec, c: Candidate, champion: LoadedVersion | None) -> Measured:
    """Answer and measure a classifier's or a regressor's test rows, and the champion's; from the
    candidate's outputs, the monitor's reference statistics and the deploy's smoke sample."""
    model, pre, target = c.loaded.model, c.loaded.preprocessor, spec.source.schema_.target
    y, out = outputs(model, pre, c.test, target)
    cand = report_of(pre, y, out)
    reference = reference_of(spec, pre, c.data, c.test, out, c.version, cand)
    write_json(join(to_path(c.uri), REFERENCE_FILE), reference)
    champ = score(champion.model, champion.preprocessor, c.test, target) if champion else None
    smoke = smoke_sample(model, pre, c.test, spec.source.schema_.key, target)
    write_json(join(c.folder, "smoke.json"), smoke)
    return Measured(cand, champ, champion, smoke)


def _report(
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
        "candidate": _shown(m.cand),
        "champion": _shown(m.champ) if m.champ else None,
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


def _serving(spec: PipelineSpec, c: Candidate, m: Measured, champion_uri: str | None, source) -> None:
    """What serving the candidate costs, measured as ``deploy`` serves it (:mod:`freestack.serving.costs`),
    and production's too, in the same way and here, when the gate bounds the candidate's worsening on a
    serving figure (``max_regression.latency_p99``, ...). A server that cannot be measured is recorded as
    such (``{"error": ...}``), for a gate rule on its figures to say so."""
    if not (spec.deploy.measure.enabled and settings().measure_serving):
        return
    m.serving = _measured(spec, c.uri, c.version, m.smoke, source)
    if m.champion is not None and champion_uri and set(spec.gate.max_regression) & set(SERVING_FIGURES):
        name = str(m.champion.lineage.as_dict().get("version") or to_path(champion_uri).name)
        m.champion_serving = _measured(spec, champion_uri, name, m.smoke, source)


def _measured(spec: PipelineSpec, uri: str, name: str, sample: dict[str, Any], source) -> dict[str, Any]:
    prices = spec.prices
    try:
        costs = measure_serving(
            str(uri),
            model=spec.model_name,
            version=name,
            deploy=spec.deploy,
            sample=sample,
            cpu_hour=prices.cpu_hour,
            currency=prices.currency,
            source=source(str(uri)) if source else None,
        )
    except DeployError as exc:
        log.warning("the serving costs of %s could not be measured: %s", name, exc)
        return {"error": str(exc)}
    figures = costs.model_dump()
    log.info("serving %s costs: %s", name, _figures(figures))
    return figures


def served_costs(spec: PipelineSpec, version_uri: str, name: str) -> dict[str, Any]:
    """What serving a version no evaluation has measured costs (a sweep's trial, whose objectives name a
    serving figure): measured as evaluate measures a candidate, with its own test split's rows; a version
    that cannot be measured, or a worker that measures nothing, is recorded as such (``{"error": ...}``)."""
    if not (spec.deploy.measure.enabled and settings().measure_serving):
        return {"error": "not measured: deploy.measure.enabled and FREESTACK_MEASURE_SERVING must be on"}
    try:
        sample, _ = unevaluated_smoke_sample(spec, version_uri)
    except EvaluationError as exc:
        return {"error": f"not measured: {exc}"}
    return _measured(spec, version_uri, name, sample, None)


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


def _figures(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def _frame(test):
    import pandas as pd

    return test.frame if hasattr(test, "frame") else pd.concat(list(test.chunks()), ignore_index=True)


def _generation(
    spec: PipelineSpec, c: Candidate, champion: LoadedVersion | None, judge_key: str | None
) -> Measured:
    """Answer, measure and judge: a text-generation candidate and champion answering the same test rows
    (:mod:`.text_generation`): their metrics (with the judge's, and its ``judge.json``), the sample answers
    side by side, the monitor's reference and the deploy's smoke sample."""
    model, pre = c.loaded.model, c.loaded.preprocessor
    frame = _frame(c.test)
    cand, champ, chats, refs = _answers(spec, model, pre, champion, frame)
    samples = gen.samples_table(
        chats, refs, cand.texts, champ.texts if champ else None, spec.model.generation.samples
    )
    reference = gen.reference_of(spec, frame, cand.texts, c.version, cand.metrics)
    write_json(join(to_path(c.uri), REFERENCE_FILE), reference)
    smoke = gen.smoke_sample(model, pre, frame, spec, spec.source.schema_.key)
    write_json(join(c.folder, "smoke.json"), smoke)
    judged = judged_by(spec, chats, refs, cand, champ, judge_key, golden_answers(spec, model, pre, champion))
    if judged is not None:
        write_json(join(c.folder, "judge.json"), judged.record(spec.gate.judge))
    return Measured(cand.metrics, champ.metrics if champ else None, champion, smoke, samples, judged)


def _answers(spec: PipelineSpec, model, pre, champion: LoadedVersion | None, frame) -> tuple:
    """(the candidate's :class:`~.text_generation.Answers` to the test rows, the champion's or None, the
    prompts as chats and their references, at most ``max_rows`` of each)."""
    mine = gen.answer(model, pre, frame, spec)
    theirs = gen.answer(champion.model, champion.preprocessor, frame, spec) if champion else None
    return mine, theirs, *gen.chats_of(pre, frame.head(spec.model.generation.max_rows))


def golden_answers(spec: PipelineSpec, model, pre, champion: LoadedVersion | None) -> tuple | None:
    """The judge's golden set (``gate.judge.golden``) and both models' answers to it: (chats, references,
    the candidate's answers, production's or None); None without one."""
    judge = spec.gate.judge
    if judge is None or judge.golden is None:
        return None
    try:
        chats, refs = gen.golden_set(judge.golden)
    except llm_judge.JudgeError as exc:
        raise EvaluationError(str(exc)) from None
    theirs = gen.texts_of(champion.model, champion.preprocessor, chats, spec) if champion else None
    return chats, refs, gen.texts_of(model, pre, chats, spec), theirs


def judged_by(
    spec: PipelineSpec, chats, refs, cand: gen.Answers, champ: gen.Answers | None, judge_key, golden=None
):
    """The judge's verdicts on both models' answers to the test prompts (at most ``max_rows``) and the
    golden set's (:func:`golden_answers`), each item naming its ``source``; None without ``gate.judge``.
    Its figures are added to the models' metrics, its status and identity to the candidate's (``judge``:
    what lineage keeps)."""
    if spec.gate.judge is None:
        return None
    mine, theirs = list(cand.texts), (list(champ.texts) if champ else None)
    try:
        judge = llm_judge.with_rubric_file(spec.gate.judge)
        n = min(len(chats), len(mine), judge.max_rows or len(mine))
        chats, refs, mine = list(chats[:n]), list(refs[:n]), mine[:n]
        theirs = theirs[:n] if theirs is not None else None
        if golden is not None:
            chats, refs, mine = chats + golden[0], refs + golden[1], mine + golden[2]
            theirs = theirs + golden[3] if theirs is not None and golden[3] is not None else theirs
        judged = llm_judge.run(judge, chats, refs, mine, theirs, judge_key)
    except llm_judge.JudgeError as exc:
        raise EvaluationError(str(exc)) from None
    for item in judged.items:
        item["source"] = "test" if item["index"] < n else "golden"
    judged.candidate["judge_golden_rows"] = len(golden[0]) if golden is not None else 0
    cand.metrics.update(
        judged.candidate, judge={"status": judged.status, **judged.identity, "reason": judged.reason}
    )
    if champ is not None and judged.champion:
        champ.metrics.update(judged.champion)
    return judged


def rescore(
    spec: PipelineSpec, candidate_uri: str, champion_uri: str | None, judge_key: str | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The metrics of a registered candidate and of a champion on the candidate's own test rows (the
    partitions its lineage names), as :func:`evaluate` computed them (the judge's included): for the
    gate deciding again when production moved after the evaluation. Writes nothing."""
    candidate = load_version(candidate_uri)
    model, pre, lineage = candidate.model, candidate.preprocessor, candidate.lineage.as_dict()
    window = lineage.get("window") or {}
    if not window.get("end_ds"):
        raise EvaluationError(f"{candidate_uri}: {LINEAGE} names no window to score on")
    test, data = test_split(
        spec, window["end_ds"], int(window.get("days") or spec.train.window_days), lineage
    )
    target = spec.source.schema_.target
    try:
        champion = load_version(champion_uri) if champion_uri else None
        if pre.task == "generation":
            mine, theirs, chats, refs = _answers(spec, model, pre, champion, _frame(test))
            judged_by(spec, chats, refs, mine, theirs, judge_key, golden_answers(spec, model, pre, champion))
            cand, champ = mine.metrics, (theirs.metrics if theirs else None)
        else:
            cand = score(model, pre, test, target)
            champ = score(champion.model, champion.preprocessor, test, target) if champion else None
    finally:
        data.close()
    return _shown(cand), (_shown(champ) if champ else None)


def _shown(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics as the summary keeps them: without the points the plots are drawn from."""
    return {k: v for k, v in metrics.items() if k != "_points"}


#: what evaluate (and registration's card) writes into a candidate's folder: not part of its digest
WRITTEN_INTO = ("evaluation", REFERENCE_FILE, CARD)


def cached(
    spec: PipelineSpec, candidate_uri: str, champion_uri: str | None, end_ds: str | None
) -> step_cache.Lookup | None:
    """The candidate's evaluation cache (:mod:`freestack.step_cache`), keyed on the candidate's and production's
    files, the bytes of the partitions its lineage names, the spec blocks evaluate reads and the Hub base's
    commit; None with ``gate.cache`` off, for a window other than the candidate's own, or a candidate
    whose lineage cannot be read (the evaluation then says what is wrong). The versions' names, each
    partition's digest and each block's are kept in words: a miss says what changed in them, and a hit
    is checked against them (:func:`_reused`). A miss removes the old entry."""
    try:
        lineage = json.loads(join(to_path(candidate_uri), LINEAGE).read_text())
    except (OSError, ValueError):
        return None
    window = lineage.get("window") or {}
    if not spec.gate.cache or (end_ds and end_ds != window.get("end_ds")):
        return None
    partitions = [p for p in lineage.get("partitions") or [] if p.get("uri")]
    parts = [[p.get("ds"), step_cache.file_digest(p["uri"])] for p in partitions]
    blocks = {
        "name": spec.name,
        **{k: getattr(spec, k) for k in ("source", "train", "model", "gate", "monitor", "deploy")},
    }
    champion = "none"
    if champion_uri:
        try:
            champion = str(
                json.loads(join(to_path(champion_uri), LINEAGE).read_text()).get("version") or "none"
            )
        except (OSError, ValueError, AttributeError):
            champion = step_cache.MISSING
    found = step_cache.lookup(
        "evaluate",
        candidate_uri,
        {
            "candidate": step_cache.version_digest(candidate_uri, WRITTEN_INTO),
            "champion": step_cache.version_digest(champion_uri) if champion_uri else "none",
            "partitions": step_cache.digest(parts),
            "spec": step_cache.spec_digest(blocks, {"gate": {"cache"}}),
            "base": step_cache.base_commit(candidate_uri),
        },
        name=f"evaluation/{step_cache.ENTRY}",
        shown={
            "candidate": step_cache.Shown(value=str(lineage.get("version") or to_path(candidate_uri).name)),
            "champion": step_cache.Shown(value=champion),
            "partitions": step_cache.Shown(items={str(ds): sha for ds, sha in parts}, gone="left the window"),
            "spec": step_cache.spec_shown(blocks, {"gate": {"cache"}}),
        },
    )
    if not found.hit:
        log.info("%s", found.line(""))
        step_cache.forget(found)
    return found


def _written(images: list[str], judged: bool) -> list[str]:
    """What an evaluation writes into the candidate's folder: the outputs its cache entry lists."""
    written = ["evaluation/metrics.json", "evaluation/report.html", "evaluation/smoke.json", REFERENCE_FILE]
    return written + [f"evaluation/{n}" for n in [*images, *(["judge.json"] if judged else [])]]


def _reused(candidate_uri: str, found: step_cache.Lookup) -> dict[str, Any] | None:
    """The earlier run's evaluation of the same inputs, as :func:`evaluate` returned it (its W&B run);
    None, the hit turned into a miss and its entry removed, when its ``metrics.json`` cannot be read, or
    is not this evaluation of these inputs: it names another candidate or champion version, other window
    partitions, or it was written under another key (the entry edited, or evaluate run since uncached)."""
    try:
        summary = _summary_in(candidate_uri)
    except (OSError, ValueError) as exc:
        found.miss = f"the earlier evaluation cannot be read ({type(exc).__name__})"
    else:
        recorded = {
            "candidate": step_cache.Shown(value=str(summary.get("version"))),
            "champion": step_cache.Shown(value=str(summary.get("champion_version") or "none")),
            "partitions": step_cache.Shown(
                items=dict.fromkeys((summary.get("window") or {}).get("partitions") or [], "")
            ),
        }
        key = (summary.get("cache") or {}).get("key")
        found.miss = step_cache.not_of(found, recorded, key, "evaluation/metrics.json")
    if found.miss is not None:
        log.warning("%s", found.line(""))
        step_cache.forget(found)
        return None
    summary.update(wandb=(found.entry.extra.get("wandb") if found.entry else None), cache=found.record())
    log.info("%s", found.line(f"the evaluation of {summary.get('version')}"))
    return summary


def _recorded(candidate_uri: str) -> dict[str, Any]:
    """The evaluation a committed version holds (an evaluate task cleared after its gate registered
    the version): versions are immutable, so nothing is written into it again."""
    summary = _summary_in(candidate_uri)
    log.info(
        "%s is a registered version: its evaluation stands as recorded (%s)", candidate_uri, summary["report"]
    )
    return summary


def _summary_in(candidate_uri: str) -> dict[str, Any]:
    """The summary an evaluation wrote into ``evaluation/metrics.json``, its paths made whole again."""
    folder = join(to_path(candidate_uri), "evaluation")
    summary = json.loads(join(folder, "metrics.json").read_text())
    plots = {
        n: rel if "://" in rel else str(join(to_path(candidate_uri), *rel.split("/")))
        for n, rel in (summary.get("plots") or {}).items()
    }
    summary.update(
        candidate_uri=str(candidate_uri), plots=plots, report=str(join(folder, "report.html")), wandb=None
    )
    return summary


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


__all__ = [
    "EvaluationError",
    "evaluate",
    "load_version",
    "outputs",
    "reference_of",
    "report_of",
    "rescore",
    "score",
    "smoke_sample",
    "test_split",
]
