"""Measure a candidate and the champion on the same held-out test split.

The test split is the one the trainer holds out: rows of the lake window ``(end_ds - days, end_ds]``
whose key hashes into ``test`` (``freestack.ml.prep.split_of_keys``, salted with the model name).
Both models are scored on exactly those rows, each through its own preprocessing, with metrics
computed in label space (a class the champion never saw counts as its error). From the candidate's
outputs come the monitor's reference statistics and the deploy's smoke sample; what serving it costs is
measured as ``deploy`` serves it (``deploy.measure``). A text-generation candidate is answered, measured
and judged through :mod:`.text_generation`.

Importing this module loads torch, pandas and pyarrow (the trainer's window reader, the ML core): the
evaluation (:mod:`.core`) and the gate's :func:`~freestack.evaluate.gate.decide_again` are imported, or
import it, inside the functions that evaluate, so parsing the DAG file stays light.
"""

from __future__ import annotations

import base64
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from freestack import version
from freestack.errors import DeployError, EvaluationError
from freestack.evaluate import text_generation as gen
from freestack.evaluate.spec import SERVING_FIGURES
from freestack.keys import NO_KEYS, Keys
from freestack.ml.loop import to_tensors
from freestack.ml.prep import split_of_keys
from freestack.monitor.core import REFERENCE_FILE, build_reference
from freestack.serving.costs import measure_serving
from freestack.settings import settings
from freestack.storage import join, to_path, write_json
from freestack.train.core import load_window
from freestack.train.request import TrainingError
from freestack.train.stream import FrameRows
from freestack.train.window import lineage_window
from freestack.version import LoadedVersion
from freestack.version.files import LINEAGE

if TYPE_CHECKING:
    from freestack.judging import client as llm_judge
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

EPS = 1e-12


@dataclass
class Candidate:
    """A candidate loaded to evaluate (by :func:`freestack.evaluate.core.evaluate`): the version, its name and lineage, the window it is
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
    text-generation candidate's sample answers and the judge's verdicts (:func:`measure_generation`)."""

    cand: dict[str, Any]
    champ: dict[str, Any] | None
    champion: LoadedVersion | None
    smoke: dict[str, Any]
    samples: list[dict[str, str]] | None = None
    judged: llm_judge.Judged | None = None
    serving: dict[str, Any] | None = None
    champion_serving: dict[str, Any] | None = None


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


def measure_predictions(spec: PipelineSpec, c: Candidate, champion: LoadedVersion | None) -> Measured:
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


def measure_generation(
    spec: PipelineSpec, c: Candidate, champion: LoadedVersion | None, keys: Keys
) -> Measured:
    """Answer, measure and judge: a text-generation candidate and champion answering the same test rows
    (:mod:`.text_generation`): their metrics (with the judge's, and its ``judge.json``), the sample answers
    side by side, the monitor's reference and the deploy's smoke sample."""
    model, pre = c.loaded.model, c.loaded.preprocessor
    frame = _frame(c.test)
    cand, champ, chats, refs = gen.both_answers(spec, model, pre, champion, frame)
    samples = gen.samples_table(
        chats, refs, cand.texts, champ.texts if champ else None, spec.model.generation.samples
    )
    reference = gen.reference_of(spec, frame, cand.texts, c.version, cand.metrics)
    write_json(join(to_path(c.uri), REFERENCE_FILE), reference)
    smoke = gen.smoke_sample(model, pre, frame, spec, spec.source.schema_.key)
    write_json(join(c.folder, "smoke.json"), smoke)
    judged = gen.judged_by(
        spec, chats, refs, cand, champ, keys, gen.golden_answers(spec, model, pre, champion)
    )
    if judged is not None:
        write_json(join(c.folder, "judge.json"), judged.record(spec.gate.judge))
    return Measured(cand.metrics, champ.metrics if champ else None, champion, smoke, samples, judged)


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


def add_serving_costs(
    spec: PipelineSpec, c: Candidate, m: Measured, champion_uri: str | None, source
) -> None:
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
    log.info("serving %s costs: %s", name, figures_line(figures))
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


def rescore(
    spec: PipelineSpec, candidate_uri: str, champion_uri: str | None, keys: Keys = NO_KEYS
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The metrics of a registered candidate and of a champion on the candidate's own test rows (the
    partitions its lineage names), as :func:`freestack.evaluate.core.evaluate` computed them (the judge's included): for the
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
            mine, theirs, chats, refs = gen.both_answers(spec, model, pre, champion, _frame(test))
            gen.judged_by(
                spec, chats, refs, mine, theirs, keys, gen.golden_answers(spec, model, pre, champion)
            )
            cand, champ = mine.metrics, (theirs.metrics if theirs else None)
        else:
            cand = score(model, pre, test, target)
            champ = score(champion.model, champion.preprocessor, test, target) if champion else None
    finally:
        data.close()
    return shown(cand), (shown(champ) if champ else None)


def shown(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics as the summary keeps them: without the points the plots are drawn from."""
    return {k: v for k, v in metrics.items() if k != "_points"}


def figures_line(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def _frame(test):
    import pandas as pd

    return test.frame if hasattr(test, "frame") else pd.concat(list(test.chunks()), ignore_index=True)


__all__ = [
    "Candidate",
    "Measured",
    "add_serving_costs",
    "figures_line",
    "load_version",
    "measure_generation",
    "measure_predictions",
    "outputs",
    "reference_of",
    "report_of",
    "rescore",
    "score",
    "served_costs",
    "shown",
    "smoke_sample",
    "test_split",
    "unevaluated_smoke_sample",
]
