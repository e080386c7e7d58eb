"""The score DAG's operators. Thin over freestack.score.core (and its writers).

plan   -> resolves score.version once for the run (recorded), checks it loads and that the input has its
          columns, and lists the interval's days with input (skipped, with a note, when none has any)
score  -> one mapped task per day: the day's scores (a text-generation version's answers) published whole;
          outlet: the scores asset
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from freestack import step_cache
from freestack.errors import ScoreError
from freestack.hooks.credentials import task_keys
from freestack.pipeline_operator import RUN_NOTE_XCOM, PipelineOperator, TorchTask

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

PLAN_XCOM = "plan"


def scores_asset(pipeline: str) -> Asset:
    """Updated by every scored day (the extra: day, version, rows, where): downstream DAGs (a report, an
    export through a provider) are scheduled on it."""
    return Asset(name=f"{pipeline}_scores", uri=f"freestack://scores/{pipeline}", group="freestack")


class PlanScoreOperator(PipelineOperator):
    """The run's version and its days to score (the return value: one job per day, mapped by ``score``)."""

    ui_color = "#e8e0f8"

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from freestack.score import core, published, teacher

        spec = self.pipeline_spec()
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is None or end is None:
            raise AirflowFailException(
                "this run has no data interval: let the schedule or a backfill create it "
                f"(`freestack backfill {spec.name} --dag score --start ... --end ...`)"
            )
        try:
            if spec.score.teacher is not None:  # a teacher endpoint answers instead of a version
                got = teacher.plan(spec, start, end, task_keys(spec, teacher=True))
            else:
                got = core.plan(spec, start, end)
        except ScoreError as exc:  # the day at fault, or every day of the run, is listed failed with why
            run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
            for ds in [exc.ds] if exc.ds else core.days_of(start, end):
                published.record_failure(spec, ds, str(exc), task="plan", run=run)
            raise AirflowFailException(str(exc)) from None
        context["ti"].xcom_push(
            key=PLAN_XCOM, value={k: got[k] for k in ("version", "uri", "asked", "skipped")}
        )
        days = [j["ds"] for j in got["jobs"]]
        self.log.info(
            "scoring %s with %s %s (%s)", days or "nothing", spec.model_name, got["version"], got["asked"]
        )
        if not got["jobs"]:
            note = (
                f"nothing to score: no input for {', '.join(got['skipped'])} ({spec.score.input}); ingest the "
                "day first, then clear this task"
            )
            context["ti"].xcom_push(key=RUN_NOTE_XCOM, value=note)
            raise AirflowSkipException(note)
        if got["skipped"]:
            self.log.warning("no input for %s: those days are not scored", ", ".join(got["skipped"]))
        return got["jobs"]


class ScoreOperator(TorchTask, PipelineOperator):
    """Score one day (a job from ``plan``) and publish its scores whole."""

    ui_color = "#d8ccf4"

    def __init__(self, *, job: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.score import answers_writer, core, published, teacher

        spec = self.pipeline_spec()
        # a text-generation version answers the day's prompt rows; a teacher endpoint, with score.teacher
        score = answers_writer.score if spec.model.generative else core.score
        if spec.score.teacher is not None:
            score = functools.partial(teacher.score, keys=task_keys(spec, teacher=True))
        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        try:
            manifest = score(spec, self.job, run)
        except ScoreError as exc:
            published.record_failure(spec, self.job["ds"], str(exc), task="score", run=run)
            raise AirflowFailException(str(exc)) from None
        except Exception as exc:  # listed failed with the try: Airflow retries it, and a success clears it
            tries = f"try {context['ti'].try_number} of {self.retries + 1}"
            error = f"{type(exc).__name__}: {str(exc)[:1000]} ({tries})"
            published.record_failure(spec, self.job["ds"], error, task="score", run=run)
            raise
        brief = {k: manifest[k] for k in ("ds", "version", "rows_scored", "rows_quarantined")}
        brief["output"] = self.job["output"]
        self._scored = manifest  # what get_openlineage_facets_on_complete reports
        context["outlet_events"][scores_asset(spec.name)].extra = brief
        cached = step_cache.note(manifest.get("cache"), f"the scores of {manifest['ds']}")
        context["ti"].xcom_push(
            key=RUN_NOTE_XCOM,
            value=(
                f"{manifest['ds']}: {manifest['rows_scored']} rows scored with {manifest['version']}, "
                f"{manifest['rows_quarantined']} quarantined; {self.job['output']}"
                + (f" ({cached})" if cached else "")
            ),
        )
        return brief

    def openlineage(self, ol: Any) -> OperatorLineage:
        """OpenLineage (:mod:`freestack.lineage_events`): the day's input files and the version folder ->
        the day's scores folder (its rows scored), with the version and the step cache's hit or miss as
        run facets."""
        manifest = getattr(self, "_scored", None)
        if manifest is None:
            return ol.lineage()
        files = {i["uri"]: i.get("sha256") for i in manifest["inputs"] if i.get("uri")}
        inputs = [ol.input_dataset(uri, sha256=sha) for uri, sha in files.items()]
        inputs.append(ol.input_dataset(manifest["version_uri"]))
        out = ol.output_dataset(self.job["output"], rows=manifest["rows_scored"])
        facets = ol.model_version_facet(manifest["model"], manifest["version"], manifest["version_uri"])
        return ol.lineage(inputs, [out], {**facets, **ol.cache_facet(manifest.get("cache"))})


__all__ = ["PLAN_XCOM", "PlanScoreOperator", "ScoreOperator", "scores_asset"]
