"""Evaluate a candidate model (and the current champion) on the same held-out test split: the stage's
entry, which the operators call.

:func:`evaluate` loads the candidate and its test rows, has both models measured there
(:mod:`.measure`; a text-generation candidate's answers judged too, :mod:`.text_generation`) and writes
``evaluation/`` into the candidate's folder (``candidates/<model>/<version>/``, outside the registry
until the gate registers it): the report (:mod:`.report`: ``metrics.json``, PNG plots and
``report.html``), the deploy's ``smoke.json`` and the monitor's reference statistics. A text-generation
candidate with a judge (``gate.judge``, :mod:`freestack.judging.client`) also gets ``judge.json``:
every prompt's verdicts, worst first, and the figures the gate reads. An earlier evaluation of the same
inputs is reused (:mod:`.reuse`).

Importing this module loads torch, pandas and pyarrow (through :mod:`.measure`): the operators import it
inside the functions that evaluate, so parsing the DAG file stays light.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from freestack import step_cache
from freestack.errors import EvaluationError
from freestack.evaluate.measure import (
    Candidate,
    add_serving_costs,
    figures_line,
    load_version,
    measure_generation,
    measure_predictions,
    test_split,
)
from freestack.evaluate.report import write_report
from freestack.evaluate.reuse import cached, recorded_evaluation, reused_evaluation, written_files
from freestack.keys import NO_KEYS, Keys
from freestack.storage import join, to_path
from freestack.version.files import LINEAGE, MARKER

if TYPE_CHECKING:
    from collections.abc import Callable

    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)


def evaluate(
    spec: PipelineSpec,
    candidate_uri: str,
    *,
    champion_uri: str | None = None,
    end_ds: str | None = None,
    tracking_settings=None,
    keys: Keys = NO_KEYS,
    run: dict[str, Any] | None = None,
    source: Callable[[str], tuple[str, dict[str, str]]] | None = None,
) -> dict[str, Any]:
    """Score the candidate (and the champion) on the candidate's window's test split; measure what
    serving it costs (``deploy.measure``); write ``evaluation/`` into the candidate folder; log the
    metrics and plots to W&B. Returns the summary.
    ``keys``: the endpoints' API keys (``keys.judge``: ``gate.judge``'s), read from their connections by the operator. ``run``: the
    Airflow run (dag_id, run_id) the cache entry names. ``source(uri)``: the URI a model server reads a
    version from and the environment it needs for it (credentials; default: the URI as it is). With ``gate.cache``, an earlier evaluation of the
    same inputs is returned as it is (:func:`~.reuse.cached`). The steps: :func:`_load` the candidate and its test
    rows; answer and measure both models there (:func:`~.measure.measure_predictions`; :func:`~.measure.measure_generation` also judges a
    text-generation candidate's answers); :func:`~.report.write_report` what was measured."""
    if join(to_path(candidate_uri), MARKER).exists():
        return recorded_evaluation(candidate_uri)
    found = cached(spec, candidate_uri, champion_uri, end_ds)
    if found is not None and found.hit and (reused := reused_evaluation(candidate_uri, found)) is not None:
        return reused
    cand = _load(spec, candidate_uri, end_ds)
    try:
        champion = load_version(champion_uri) if champion_uri else None
        if cand.loaded.preprocessor.task == "generation":
            measured = measure_generation(spec, cand, champion, keys)
        else:
            measured = measure_predictions(spec, cand, champion)
    finally:
        cand.data.close()
    add_serving_costs(spec, cand, measured, champion_uri, source)
    summary = write_report(spec, cand, measured, champion_uri, found, tracking_settings)
    if found is not None:
        written = written_files([*summary["plots"]], measured.judged is not None)
        step_cache.save(found, run, written, {"wandb": summary["wandb"]})
    champ = f" (champion: {figures_line(summary['champion'])})" if measured.champ else ""
    log.info(
        "evaluated %s on %d test rows up to %s: %s%s; report %s",
        cand.version,
        measured.cand["rows"],
        cand.end_ds,
        figures_line(summary["candidate"]),
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


__all__ = ["evaluate"]
