"""TrainOperator: one training of a pipeline's model on its lake window (``freestack.train.core``)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from freestack.pipeline_operator import PipelineOperator
from freestack.ui.links import WandbRunLink


def resolve_end_ds(context: Context, spec) -> str:
    """The data interval to train up to: the form's end_ds, else the newest ds among the triggering
    lake events, else the run's data interval, else the newest partition in the lake."""
    params = context.get("params") or {}
    if params.get("end_ds"):
        return str(params["end_ds"])
    events = context.get("triggering_asset_events") or {}
    days = []
    for evs in events.values():
        for ev in evs:
            ds = (getattr(ev, "extra", None) or {}).get("ds")
            if ds:
                days.append(ds)
    if days:
        return max(days)
    if context.get("ds"):
        return str(context["ds"])
    from freestack.ingest.core import lake_partitions

    parts = lake_partitions(spec)
    if not parts:
        raise AirflowFailException(f"the lake of {spec.name!r} is empty: run {spec.name}_ingest first")
    return parts[-1]


def airflow_info(context: Context) -> dict[str, Any]:
    """What lineage records of the Airflow run: dag, run, task, try and data interval."""
    ti = context["ti"]
    dag_run = context.get("dag_run")
    return {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "try_number": ti.try_number,
        "data_interval_start": str(getattr(dag_run, "data_interval_start", None) or ""),
        "data_interval_end": str(getattr(dag_run, "data_interval_end", None) or ""),
    }


class TrainOperator(PipelineOperator):
    """Train once with the spec's defaults, overridden by the Params form."""

    operator_extra_links = (WandbRunLink(),)
    ui_color = "#e4d8f7"

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.errors import SpecError
        from freestack.hooks.wandb import WandbHook
        from freestack.train.core import TrainingError, TrainRequest, train

        spec = self.pipeline_spec()
        params = context.get("params") or {}
        end_ds = resolve_end_ds(context, spec)
        ti = context["ti"]
        req = TrainRequest(
            end_ds=end_ds,
            window_days=params.get("window_days"),
            epochs=params.get("epochs"),
            learning_rate=params.get("learning_rate"),
            batch_size=params.get("batch_size"),
            run_key=f"{ti.dag_id}/{ti.run_id}",
            airflow=airflow_info(context),
        )
        self.log.info("training %s on the lake up to %s", spec.name, end_ds)
        try:
            outcome = train(spec, req, tracking_settings=WandbHook().checked_settings())
        except (TrainingError, SpecError) as exc:
            raise AirflowFailException(str(exc)) from None
        ti.xcom_push(key="wandb", value=outcome.tracking)
        return outcome.as_dict()
