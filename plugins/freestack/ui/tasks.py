"""Which freestack page a pipeline task's "freestack" extra link opens (``/freestack/ui/task``)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from freestack.registry.core import registry_for
from freestack.score import published
from freestack.ui.catalog import common, model_pages, score_pages, sweep_pages

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

SWEEP_TASKS = ("create_sweep", "agent", "select_best")


def _q(text: str) -> str:
    return quote(text, safe="")


def page_of_task(pipeline: str, spec: PipelineSpec, kind: str, run_id: str, task_id: str) -> str:
    """The page's path under ``/freestack/ui`` for task ``task_id`` of run ``run_id`` of ``<pipeline>_<kind>``:

    - ingest: the pipeline's lake; ``deploy`` (any DAG): the deployments;
    - train: the sweep of the run (``create_sweep``, ``agent``, ``select_best``), else the version the run
      registered, else (none yet) the model's versions;
    - rollback, promote: the model's versions and aliases' history;
    - score: the pipeline's scored days, on the page of the newest day the run scored (its rows marked)."""
    if kind == "ingest":
        return f"/data/{_q(pipeline)}"
    if kind == "score" and spec.score is not None:
        return scores_of_run(pipeline, spec, run_id)
    if task_id == "deploy":
        return f"/deployments#{_q(pipeline)}"
    if kind == "train" and task_id in SWEEP_TASKS:
        sweep = next((s for s in sweep_pages.sweeps(spec) if s.airflow_run == run_id), None)
        if sweep is not None:
            return f"/sweeps/{_q(pipeline)}/{_q(sweep.sweep_id)}"
    if kind == "train":
        rows = model_pages.version_rows(registry_for(spec).folder)
        made = next((r for r in reversed(rows) if r.airflow_run == run_id), None)
        if made is not None:
            return f"/models/{_q(pipeline)}/{_q(made.version)}"
    return f"/models/{_q(pipeline)}"


def scores_of_run(pipeline: str, spec: PipelineSpec, run_id: str) -> str:
    """The Scores page of the pipeline at the newest day that run ``run_id`` scored (its manifests record the
    run), read a page of days at a time; the first page while the run has scored none."""
    days = published.score_days(spec)
    size = score_pages.SCORES_PAGE
    for start in range(0, len(days), size):
        got = common.parallel(lambda ds: score_pages.scored_day(spec, ds), days[start : start + size])
        day = next((d for d in got if d.run_id == run_id), None)
        if day is not None:
            pg = "" if start == 0 else f"&pg={start // size + 1}"
            return f"/scores/{_q(pipeline)}?run={_q(run_id)}{pg}#ds-{day.ds}"
    return f"/scores/{_q(pipeline)}"


__all__ = ["page_of_task", "scores_of_run"]
