"""The train stage's operators: WindowSensor fixes the run's lake window, TrainOperator trains once on it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from freestack.errors import SpecError
from freestack.hooks.credentials import task_keys
from freestack.hooks.huggingface import HubEnvironment
from freestack.hooks.wandb import WandbHook
from freestack.ingest.operators import lake_asset
from freestack.kube import KubeRef
from freestack.ml.contract import CustomModelError
from freestack.operator_links import FreestackPageLink, WandbRunLink
from freestack.pipeline_operator import RUN_NOTE_XCOM, PipelineOperator, TorchTask
from freestack.storage import storage_root
from freestack.train.distributed import LaunchError, is_distributed, launch
from freestack.train.manifests import job_name
from freestack.train.pytorchjobs import (
    MAX_WAIT_SECONDS,
    PyTorchJobError,
    delete_job,
    finish_on_kubernetes,
    start_on_kubernetes,
)
from freestack.train.request import TrainingError, TrainRequest
from freestack.train.triggers import PyTorchJobFinishedTrigger
from freestack.train.window import WindowError, already_trained, fix_window, window_interval

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage

#: runs the window task decides alone, without a person: they skip when the window holds nothing new
AUTOMATIC_RUNS = ("asset_triggered", "scheduled")
#: runs whose Airflow data interval is their timetable's: lineage records it as the run's
INTERVAL_RUNS = ("scheduled", "backfill")


class WindowSensor(HubEnvironment, PipelineOperator, BaseSensorOperator):
    """``window``: wait until the pipeline's running ingest runs finished (a backfill of several days is
    trained on once, whole), then fix the run's window (:mod:`freestack.train.window`) and return it.

    ``end_ds``: the form's, else the data interval's day for a cron-scheduled run, else the newest
    landed partition. An automatic run whose window holds nothing new (a version was trained on exactly
    these partitions, or on a newer window) is skipped, and its note says why."""

    ui_color = "#e4d8f7"

    def __init__(self, *, spec_path: str, wait_minutes: float, drift: Any = None, **kwargs: Any) -> None:
        super().__init__(
            spec_path=spec_path, mode="reschedule", timeout=max(60.0, wait_minutes * 60 + 600), **kwargs
        )
        self.wait_minutes = wait_minutes
        self.drift = drift  # the monitor's drift asset: a run it starts retrains (its note says which alert)

    def poke(self, context: Context) -> PokeReturnValue | bool:
        spec = self.pipeline_spec()
        _check_model(spec)
        if self._ingest_running(context, spec):
            return False
        params = context.get("params") or {}
        run_type = _run_type(context.get("dag_run")) or ""
        end_ds, chosen = params.get("end_ds") or None, "form"
        if end_ds is None and run_type == "scheduled" and context.get("ds"):
            end_ds, chosen = str(context["ds"]), "interval"
        try:
            window = fix_window(
                spec, end_ds, int(params.get("window_days") or spec.train.window_days), chosen=chosen
            )
        except WindowError as exc:
            raise AirflowFailException(str(exc)) from None
        window = window.with_events(self._lake_events(context, spec))
        alert = self._drift_alert(context)
        note = f"{alert} {window.text()}" if alert else window.text()
        self.log.info("%s: %s", spec.name, note)
        if run_type in AUTOMATIC_RUNS and params.get("end_ds") is None:
            seen = already_trained(spec, window, drift=alert is not None)
            if seen is not None:
                context["ti"].xcom_push(
                    key=RUN_NOTE_XCOM, value=f"**Nothing new to train.** {note} {seen[1]}."
                )
                raise AirflowSkipException(f"nothing new to train: {seen[1]}")
        context["ti"].xcom_push(key=RUN_NOTE_XCOM, value=note)
        return PokeReturnValue(is_done=True, xcom_value=window.as_dict())

    def _drift_alert(self, context: Context) -> str | None:
        """The drift alert that started this run (the drift asset's newest event among the run's
        triggering ones), in words: the monitor run, its first alert (the signal and its figure), the
        report; None for a run the drift asset did not start."""
        events = context.get("triggering_asset_events")
        got = list(events.get(self.drift) or []) if self.drift is not None and events else []
        if not got:
            return None
        event = got[-1]
        extra = event.extra or {}
        alerts = [
            a.get("message", str(a)) if isinstance(a, dict) else str(a) for a in extra.get("alerts") or []
        ]
        more = f" (and {len(alerts) - 1} more)" if len(alerts) > 1 else ""
        return (
            f"**Retraining on drift:** {event.source_dag_id} run {event.source_run_id} alerted: "
            f"{alerts[0] if alerts else 'drift'}{more}; report {extra.get('report', '?')}."
        )

    def _lake_events(self, context: Context, spec) -> list[dict[str, Any]]:
        """The pipeline's lake asset events (the task's inlet) that carry a partition's folder, ds and sha256."""
        inlet_events = context.get("inlet_events")
        if inlet_events is None:  # called outside Airflow's task runner (bench/orchestration's plain loop)
            return []
        keys = ("ds", "part_sha256", "partition")
        return [
            {
                "id": e.id,
                "timestamp": e.timestamp.isoformat(),
                "dag_id": e.source_dag_id,
                "run_id": e.source_run_id,
                **{k: e.extra[k] for k in keys},
            }
            for e in inlet_events[lake_asset(spec.name)]
            if all((e.extra or {}).get(k) for k in keys)
        ]

    def _ingest_running(self, context: Context, spec) -> bool:
        """Whether ``<p>_ingest`` has queued or running runs and this run has waited less than
        ``train.ingest_wait_minutes`` for them."""
        if self.wait_minutes <= 0:
            return False
        ingest = f"{spec.name}_ingest"
        active = context["ti"].get_dr_count(dag_id=ingest, states=["queued", "running"])
        if not active:
            return False
        started = getattr(context.get("dag_run"), "start_date", None)
        waited = (datetime.now(UTC) - started).total_seconds() / 60 if started else 0.0
        if waited >= self.wait_minutes:
            self.log.warning(
                "%d %s runs still active after %.0f minutes (train.ingest_wait_minutes): fixing the "
                "window on the lake as it is",
                active,
                ingest,
                waited,
            )
            return False
        self.log.info("waiting for %d queued or running %s runs before fixing the window", active, ingest)
        return True


def _check_model(spec) -> None:
    """The user's module (imported, run on a batch) or the pretrained base (fetched, checked against the
    task and LoRA) fails the first task, before any wait or data read."""
    from freestack.train.core import check_custom_model, check_hub_model

    check = {"custom": check_custom_model, "huggingface": check_hub_model}.get(spec.model.type)
    if check is None:
        return
    try:
        check(spec)
    except TrainingError as exc:
        raise AirflowFailException(str(exc)) from None


def fixed_window(context: Context) -> dict[str, Any]:
    """The window the run's ``window`` task fixed (its XCom)."""
    window = context["ti"].xcom_pull(task_ids="window")
    if not window:
        raise AirflowFailException("the window task left no window: clear it to fix the run's window again")
    return window


def airflow_info(context: Context, window: dict[str, Any] | None = None) -> dict[str, Any]:
    """What lineage records of the Airflow run: the dag, run and task that wrote the model, the try, the
    run's type, ``run_after`` (when it was due) and logical date (None for a run without one), and its
    data interval: Airflow's for a scheduled or backfill run (its timetable's interval); a run triggered
    by hand or by an asset has none of its own (None, or the instant it was triggered), so it records
    the days of the lake ``window`` it trained on. ``data_interval_from`` says which (``airflow``,
    ``window``, or None when neither is known)."""
    ti = context["ti"]
    dag_run = context.get("dag_run")
    run_type = _run_type(dag_run)
    start, end = getattr(dag_run, "data_interval_start", None), getattr(dag_run, "data_interval_end", None)
    source = (
        "airflow"
        if run_type in INTERVAL_RUNS and start is not None and end is not None and start < end
        else None
    )
    if source is None and window:
        start, end = window_interval(window["end_ds"], window["days"])
        source = "window"
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "try_number": ti.try_number,
        "run_type": run_type,
        "run_after": _iso(getattr(dag_run, "run_after", None)),
        "logical_date": _iso(getattr(dag_run, "logical_date", None)),
        "data_interval_start": _iso(start) if source else None,
        "data_interval_end": _iso(end) if source else None,
        "data_interval_from": source,
    }


def _run_type(dag_run) -> str | None:
    """The run's type: the value of the Task SDK's DagRunType (None without a run)."""
    kind = getattr(dag_run, "run_type", None)
    return str(getattr(kind, "value", kind) or "") or None


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else (str(value) if value else None)


class TrainOperator(TorchTask, HubEnvironment, PipelineOperator):
    """Train once with the spec's defaults, overridden by the Params form. With ``train.distributed``, the
    task launches its node's ranks (``node_rank`` 0; the ``train_node`` tasks are the other nodes) or
    submits a PyTorchJob, and returns the version rank 0 wrote."""

    operator_extra_links = (WandbRunLink(), FreestackPageLink())
    ui_color = "#e4d8f7"

    def __init__(self, *, node_rank: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node_rank = node_rank

    def execute(self, context: Context) -> dict[str, Any] | None:
        from freestack.train import core, reuse  # torch: at run time only

        spec = self.pipeline_spec()
        if self.node_rank == 0:
            core.prune_checkpoints(spec)
        req = train_request(context)
        req.keys = task_keys(spec, judge=spec.judge_rewarded, rollout=True)
        self._run_key = req.run_key
        if self.node_rank != 0:  # another node's ranks: node 0's task keys, keeps and returns the version
            spec = spec.model_copy(update={"train": spec.train.model_copy(update={"cache": False})})

        def train_now():
            self.log.info("training %s on the lake up to %s", spec.name, req.end_ds)
            return self._train(spec, req, WandbHook().checked_settings())

        try:
            _, outcome = reuse.cached(
                spec, req, _run(context), train_now, lambda found: self._said(context, found)
            )
        except (TrainingError, SpecError, CustomModelError, WindowError) as exc:  # a retry fails the same
            raise AirflowFailException(str(exc)) from None
        except LaunchError as exc:  # a rank died or failed: the retry resumes from the checkpoint
            raise RuntimeError(str(exc)) from None
        return None if outcome is None else self._returned(context, outcome)

    def _said(self, context: Context, reuse) -> None:
        """``train.cache``: the run's key, hit or miss, in the log and the run's note. A version registered
        since ends the run here, as nothing new to train."""
        self._cache = reuse.record()  # what get_openlineage_facets_on_complete reports
        line = reuse.line()
        self.log.info("%s", line)
        if reuse.registered is not None:
            context["ti"].xcom_push(key=RUN_NOTE_XCOM, value=f"**Nothing new to train.** {line}.")
            raise AirflowSkipException(line)
        context["ti"].xcom_push(key=RUN_NOTE_XCOM, value=line)

    def _returned(self, context: Context, outcome) -> dict[str, Any]:
        """What the task returns of an outcome, with its W&B run as the ``wandb`` XCom (the run link's)."""
        context["ti"].xcom_push(key="wandb", value=outcome.tracking)
        self._outcome = outcome  # what get_openlineage_facets_on_complete reports
        return outcome.as_dict()

    def openlineage(self, ol: Any) -> OperatorLineage:
        """OpenLineage (:mod:`freestack.lineage_events`): the window's lake partitions (their part files and
        sha256) -> the version folder, with the version and its validation metrics as run facets. The
        task of another node (``train_node``) reports nothing: node 0's reports the version."""
        outcome = getattr(self, "_outcome", None)
        if outcome is None:
            return ol.lineage()
        inputs = [
            ol.input_dataset(p["uri"], sha256=p.get("sha256")) for p in outcome.partitions if p.get("uri")
        ]
        facets = ol.model_version_facet(self.pipeline_spec().model_name, outcome.version, outcome.version_uri)
        facets.update(ol.metrics_facet(outcome.metrics), **ol.cache_facet(getattr(self, "_cache", None)))
        return ol.lineage(inputs, [ol.output_dataset(outcome.version_uri)], facets)

    def _train(self, spec, req, tracking_settings):
        """In this process; or this node's ranks (train.distributed); or a PyTorchJob, awaited in the
        triggerer (the task defers; :meth:`execute_complete` reads the outcome)."""
        from freestack.train.core import train

        if not is_distributed(spec):
            return train(spec, req, tracking_settings=tracking_settings)
        if spec.train.distributed.launcher == "kubernetes":
            self._start_job(spec, req, tracking_settings)
        return launch(
            spec,
            self.spec_path,
            req,
            tracking_settings,
            node_rank=self.node_rank,
            environment=airflow_environment_of_ranks(spec),
            threads=self.threads,
        )

    def _start_job(self, spec, req, tracking_settings) -> None:
        """Create the run's PyTorchJob and defer to its trigger: the wait (up to the job's own 72 h bound)
        holds no worker slot. Answers a retry cannot change (RBAC, no CRD, a name taken) fail at once."""
        d = spec.train.distributed
        conn_id = d.kubernetes_conn_id
        with _permanent_fails():
            job = start_on_kubernetes(
                spec,
                self.spec_path,
                req,
                tracking_settings,
                conn_id=conn_id,
                max_wait_seconds=MAX_WAIT_SECONDS,
                service_account=d.service_account,
            )
        trigger = PyTorchJobFinishedTrigger.for_ref(job, timeout_seconds=MAX_WAIT_SECONDS)
        self.log.info("waiting for %s in the triggerer", job.describe("PyTorchJob"))
        self.defer(
            trigger=trigger,
            method_name="execute_complete",
            timeout=timedelta(seconds=MAX_WAIT_SECONDS + 600),  # the trigger's own timeout event comes first
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """The PyTorchJob's wait ended: return rank 0's outcome as :meth:`execute` would. The request is
        rebuilt from the run (deterministic: the same run key, so the same run folder and outcome.json)."""
        spec = self.pipeline_spec()
        req = train_request(context)
        self._run_key = req.run_key
        try:
            with _permanent_fails():
                outcome = finish_on_kubernetes(spec, req, event)
        except LaunchError as exc:  # a failed job or a timeout: the retry resumes from the checkpoint
            raise RuntimeError(str(exc)) from None
        self.log.info(
            "PyTorchJob %s/%s succeeded: version %s",
            event.get("namespace"),
            event.get("name"),
            outcome.version,
        )
        from freestack.train import reuse  # torch: at run time only

        # train.cache: the entry execute would have written had the training not deferred
        reuse.save_finished(spec, req, outcome, _run(context))
        return self._returned(context, outcome)

    def on_kill(self) -> None:
        """A killed task deletes its run's PyTorchJob (best effort) rather than leave its GPUs busy."""
        run_key = getattr(self, "_run_key", None)  # set by execute: nothing was submitted before
        with contextlib.suppress(Exception):
            spec = self.pipeline_spec()
            d = spec.train.distributed
            if run_key and d is not None and d.launcher == "kubernetes" and self.node_rank == 0:
                delete_job(KubeRef(job_name(spec.name, run_key), d.namespace, d.kubernetes_conn_id))


def _run(context: Context) -> dict[str, Any]:
    """The Airflow run a training's cache entry names."""
    return {"dag_id": getattr(context.get("dag"), "dag_id", None), "run_id": context.get("run_id")}


def train_request(context: Context):
    """The run's TrainRequest: the Params form over the fixed window, keyed by the run. Deterministic
    from the run, so a deferred task's resumption rebuilds the request its job was started with."""
    params = context.get("params") or {}
    window = fixed_window(context)
    ti = context["ti"]
    return TrainRequest(
        end_ds=window["end_ds"],
        window=window,
        window_days=params.get("window_days"),
        epochs=params.get("epochs"),
        learning_rate=params.get("learning_rate"),
        batch_size=params.get("batch_size"),
        run_key=f"{ti.dag_id}/{ti.run_id}",
        airflow=airflow_info(context, window),
    )


@contextlib.contextmanager
def _permanent_fails() -> Iterator[None]:
    """A PyTorchJobError a retry cannot change (RBAC, a missing CRD, a name taken, an API refusal the
    trigger met) fails the task at once; the others pass, for the task's retries."""
    try:
        yield
    except PyTorchJobError as exc:
        if exc.permanent:
            raise AirflowFailException(str(exc)) from None
        raise


def airflow_environment_of_ranks(spec) -> dict[str, str]:
    """What the ranks, processes of their own beside the task, need of Airflow: a database URL they can
    parse (a task's is blocked on purpose, and the ranks never use one) and the storage root's connection as
    an ``AIRFLOW_CONN_<ID>`` variable (Airflow's own way to give a process a connection)."""
    from airflow.sdk import BaseHook

    env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite://", "AIRFLOW__CORE__SQL_ALCHEMY_CONN": "sqlite://"}
    conn_id = getattr(storage_root(spec.storage_root), "conn_id", None)
    if conn_id:
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = BaseHook.get_connection(conn_id).as_json()
    return env
