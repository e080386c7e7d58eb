"""An example DAG of your own built from freestack's reusable operators, with no pipeline spec: score a
folder of rows with a registered version, then point an alias (production by default) at the version
that scored them.

Copy it into your DAGs folder and trigger it with the form's values (or ``--conf``):

    airflow dags trigger score_with_version --conf '{"model": "digits", "version": "v20261103-b66e9d40",
        "input_uri": "s3://bucket/customers/2026-11-05/"}'

The scores of a run go to ``scores/<model>/ds=<ds>/`` under the storage root; the promotion moves the
alias to exactly the version the scores were made with (the score task's XCom), so an alias given as
``version`` is resolved once. ``latest`` is the newest version the gate did not block. A version the gate
blocked (named as ``version``) is scored with, but the promotion refuses it unless ``allow_blocked`` says
why; the run's note then records that override with the gate's reasons.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from freestack.providers import RUN_DAY, FreestackPromoteOperator, FreestackScoreOperator

with DAG(
    dag_id="score_with_version",
    description="Score a folder with a registered version, then promote that version",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["freestack", "example"],
    params={
        "model": Param("digits", type="string", description="The registered model's name."),
        "version": Param(
            "latest",
            type="string",
            description="A version, an alias, or latest (the newest version the gate did not block).",
        ),
        "input_uri": Param(type="string", description="The folder or file of rows to score."),
        "alias": Param("production", type="string", description="The alias pointed at the version."),
        "allow_blocked": Param(
            "",
            type="string",
            description="Why a version the gate blocked may take the alias anyway; empty: it is refused.",
        ),
    },
    default_args={"retries": 2},
) as dag:
    score = FreestackScoreOperator(
        task_id="score",
        model="{{ params.model }}",
        version="{{ params.version }}",
        input_uri="{{ params.input_uri }}",
        output_uri=f"scores/{{{{ params.model }}}}/ds={RUN_DAY}/",  # the run's day, with a logical date or not
    )
    promote = FreestackPromoteOperator(
        task_id="promote",
        model="{{ params.model }}",
        version="{{ ti.xcom_pull(task_ids='score')['version'] }}",
        alias="{{ params.alias }}",
        reason="scored {{ params.input_uri }} in {{ run_id }}",
        allow_blocked="{{ params.allow_blocked }}",
    )
    score >> promote
