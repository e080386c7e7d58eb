"""An example DAG of your own built from freestack's reusable operators: train a model from a pipeline
spec written inline on the lake window ending on the run's day, register it, point production at it, then
score a folder of rows with it.

The spec below reads the digits lake (``lake/digits/`` under the storage root, landed and ingested by the
digits pipeline, or ``make demo``) and registers its versions as the model ``digits_own``, so the
pipeline's own model and its production are left alone. Copy it into your DAGs folder and trigger it:

    airflow dags trigger train_and_score --logical-date 2026-11-05T00:00:00+00:00 --conf '{"epochs": 2}'

A run trains on the ``window_days`` days up to its day (``RUN_DAY``: its logical date's, or for a run
triggered without ``--logical-date`` the day it ran), registers the version (no gate: this DAG is the
gate), promotes it, and scores ``input_uri`` (default: the lake's part file of that day) into
``scores/digits_own/ds=<day>/``. To train from a spec file instead, give the train task
``spec_path="digits.yaml"`` (a file in the pipelines folder) in place of ``spec``.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from freestack.providers import (
    RUN_DAY,
    FreestackPromoteOperator,
    FreestackScoreOperator,
    FreestackTrainOperator,
)

MODEL = "digits_own"

#: the pipeline spec inline, as a YAML file would hold it: the digits lake, a CNN over its 8x8 pixels
SPEC = {
    "name": "digits",
    "source": {
        "landing": "landing/{pipeline}/{ds}/",
        "format": "csv",
        "schema": {
            "key": "id",
            "target": "label",
            "columns": [
                {"name": "id", "type": "string", "nullable": False},
                {"name": "captured_at", "type": "timestamp", "nullable": False},
                {"name": "px_{i}", "repeat": 64, "type": "float", "nullable": False, "min": 0, "max": 16},
                {"name": "label", "type": "int", "nullable": False, "allowed": list(range(10))},
            ],
        },
    },
    "model": {"name": MODEL, "image_shape": [8, 8]},
    "train": {"epochs": 10, "window_days": 30},
}

with DAG(
    dag_id="train_and_score",
    description="Train from an inline spec, register and promote the version, score a folder with it",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["freestack", "example"],
    params={
        "window_days": Param(30, type="integer", minimum=1, description="Days of the lake up to ds."),
        "epochs": Param(10, type="integer", minimum=1, description="Epochs of the training."),
        "input_uri": Param("", type="string", description="The rows to score; empty: the lake's ds."),
    },
    default_args={"retries": 2},
) as dag:
    train = FreestackTrainOperator(
        task_id="train",
        spec=SPEC,
        end_ds=RUN_DAY,  # the run's day: its logical date's, or the day it ran for a run with none
        window_days="{{ params.window_days }}",
        epochs="{{ params.epochs }}",
        register=True,
    )
    promote = FreestackPromoteOperator(
        task_id="promote",
        model=MODEL,
        version="{{ ti.xcom_pull(task_ids='train')['version'] }}",
        reason=f"trained on the window up to {RUN_DAY} in {{{{ run_id }}}}",
    )
    score = FreestackScoreOperator(
        task_id="score",
        model=MODEL,
        alias="production",
        input_uri="{{ params.input_uri or 'lake/digits/ds=' ~ ((dag_run.logical_date or dag_run.run_after) | ds) "
        "~ '/part.parquet' }}",
        output_uri=f"scores/{MODEL}/ds={RUN_DAY}/",
    )
    train >> promote >> score
