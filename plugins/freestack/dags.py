"""The DAG factory: every pipeline's DAGs, wired from its spec and the stages' operators. Imported by the
DAG files at parse time.

    <p>_ingest     [wait_for_landing] -> ingest                                        (ingest)
    <p>_train      window -> choose -> train | create_sweep -> agent x N -> select_best (train, sweeps)
                   -> evaluate -> gate -> [approve] -> promote -> deploy | blocked      (evaluate, registry, serving)
    <p>_rollback   move_production -> deploy                                           (registry, serving)
                   (every alias move and deploy of a model: its pool of one slot, freestack_deploy_<model>)
    <p>_promote    move_alias -> deploy (when the alias moved is the one served)       (registry, serving)
    <p>_monitor    monitor -> alert, retrain (drift asset -> <p>_train)                (monitor)
    <p>_score      plan -> score (with a ``score:`` block)                             (score)

Which of them a spec gets is :func:`freestack.spec.pipeline_dags` (no target: ingest alone).

Parse-time rules: no torch/pandas/pyarrow/wandb import, no connection, no Variable, no network.
A broken spec is left out here and reported as the import error of ``dags/freestack_spec_errors.py``
(:func:`raise_spec_errors`), naming its file and field: the other pipelines' DAGs stay live.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, Param

from freestack.errors import SpecError
from freestack.evaluate.operators import BlockedOperator, EvaluateOperator, GateOperator, PromoteOperator
from freestack.ingest.operators import IngestOperator, LandingSensor, lake_asset
from freestack.monitor.operators import (
    AlertOperator,
    MonitorOperator,
    RetrainOperator,
    drift_asset,
    monitoring_asset,
)
from freestack.registry.operators import MoveAliasOperator, RollbackOperator
from freestack.score.operators import PlanScoreOperator, ScoreOperator, scores_asset
from freestack.serving.operators import DeployOperator
from freestack.serving.spec import DEPLOY_PRIORITY, MOVE_PRIORITY, deploy_pool
from freestack.settings import pipelines_dir
from freestack.spec import PipelineSpec, discover_specs, load_spec, pipeline_dags, spec_file
from freestack.sweeps.operators import (
    ChooseTrainingOperator,
    CreateSweepOperator,
    SelectBestOperator,
    SweepAgentOperator,
)
from freestack.sweeps.spec import POOL
from freestack.train.operators import TrainOperator, WindowSensor


def _combined(errors: list[SpecError]) -> SpecError:
    if len(errors) == 1:
        return errors[0]
    return SpecError(
        f"{len(errors)} pipeline specs are invalid", None, "\n" + "\n".join(str(e) for e in errors)
    )


def raise_spec_errors(directory: str | Path | None = None) -> None:
    """Raise one SpecError naming every invalid spec in the folder (each file, field and fix); nothing
    when all are valid. Called by ``dags/freestack_spec_errors.py``, whose import error this becomes:
    a file apart from the pipelines' DAGs, which Airflow would otherwise all mark stale. (A task process
    parses only its DAG's own file, never this one.)"""
    specs = discover_specs(Path(directory) if directory else pipelines_dir())
    broken = [s for s in specs.values() if isinstance(s, SpecError)]
    if broken:
        raise _combined(broken)


def _schedule(schedule: str | None):
    """A spec's schedule (the ingest DAG's, or a block's) as Airflow's."""
    if schedule is None:
        return None
    if schedule in ("@once", "@continuous"):
        return schedule
    return _cron(schedule)


@functools.cache
def _cron(schedule: str) -> CronDataIntervalTimetable:
    """Classic data intervals (the run for day D starts once D has ended, and {{ ds }} is D): one timetable
    per expression, shared by the DAGs on it (building one describes the expression in words)."""
    return CronDataIntervalTimetable(schedule, timezone="UTC")


def _common(spec: PipelineSpec, kind: str) -> dict[str, Any]:
    """What every DAG of a pipeline shares: start, owner, retries, tags."""
    return {
        "start_date": datetime(spec.start_date.year, spec.start_date.month, spec.start_date.day, tzinfo=UTC),
        "default_args": {"owner": spec.owner, "retries": spec.retries, "retry_delay": spec.retry_delay},
        "tags": sorted({"freestack", kind, f"pipeline:{spec.name}", *spec.tags}),
    }


# ---------------------------------------------------------------------------------------------------------
# <p>_ingest


def ingest_dag(spec: PipelineSpec, spec_path: str) -> DAG:
    policy = spec.source.policy
    with DAG(
        dag_id=f"{spec.name}_ingest",
        description=f"Ingest landing files of {spec.name} into the lake"
        + (f": {spec.description}" if spec.description else ""),
        schedule=_schedule(spec.schedule),
        catchup=spec.catchup,
        max_active_runs=spec.max_active_runs,
        doc_md=(
            f"### {spec.name}: ingest\n\n{spec.description}\n\n"
            f"For data interval D, reads `{spec.source.landing}` (format `{spec.source.format}`), validates "
            f"every row against the schema and writes `lake/{spec.name}/ds=D/part.parquet`; rejected rows "
            f"go to the partition's quarantine (`_quarantine-<sha>.parquet`) with a reason each. Spec: `{spec_path}`."
        ),
        **_common(spec, "ingest"),
    ) as dag:
        ingest = IngestOperator(
            task_id="ingest",
            spec_path=spec_path,
            outlets=[lake_asset(spec.name)],
            doc_md="Validate and publish the lake partition; emits the lake asset event.",
        )
        if policy.on_missing == "wait":
            wait = LandingSensor(
                task_id="wait_for_landing",
                spec_path=spec_path,
                poke_interval=policy.wait_poke_seconds,
                timeout=policy.wait_timeout_minutes * 60,
            )
            wait >> ingest
    return dag


# ---------------------------------------------------------------------------------------------------------
# <p>_train


#: the JSON Schema dialect of every Trigger-form field. Airflow checks a Param's schema against its
#: dialect's meta-schema each time it resolves the Param (the DAG's validation, each serialization of
#: the DAG): with 2020-12, Airflow's default, that check costs about 3x more than with draft 7, and
#: every keyword these forms use means the same in both (``bench/orchestration``, docs/benchmarks.md).
FORM_DIALECT = "http://json-schema.org/draft-07/schema#"


def form_field(default: Any, **schema: Any) -> Param:
    """A Trigger-form field: a :class:`Param` whose schema is in :data:`FORM_DIALECT`."""
    return Param(default, **{"$schema": FORM_DIALECT}, **schema)


def with_form(dag: DAG, params: dict[str, Param]) -> DAG:
    """Give ``dag``, its tasks built, its Trigger form (``params``), validated as ``DAG(params=...)`` does.
    A task's context has the DAG's Params, then its own, then the run's conf, so it needs no copy; given
    first, Airflow copies them into every task, and serializing those copies was about 40% of the DAG
    processor's time for the pipelines' file (docs/benchmarks.md)."""
    dag.params = params  # type: ignore[assignment]  # DAG converts it to a ParamsDict and validates it
    return dag


def train_params(spec: PipelineSpec) -> dict[str, Param]:
    """The Trigger form of ``<p>_train``: the spec's ``train:`` defaults, changeable per run, with the
    spec's own limits (a value the spec would refuse is refused in the form)."""
    t, sweep = spec.train, spec.sweep
    if sweep is None:
        sweep_text = "This spec has no sweep: block, so this must stay off (add one to sweep)"
    else:
        sweep_text = (
            f"Run the spec's {sweep.method} hyperparameter sweep ({sweep.run_cap or 'grid'} trials, W&B sweep "
            "semantics) instead of one training; the best trial becomes the candidate"
        )
    agents = min(2, sweep.run_cap) if sweep is not None and sweep.run_cap else 2
    return {
        "end_ds": form_field(
            None,
            type=["null", "string"],
            format="date",
            title="Train up to (day)",
            description="The last lake partition (YYYY-MM-DD) in the window. Empty: the newest landed "
            "partition once the pipeline's running ingest runs finished (the `window` "
            "task's XCom and the run's note show the day chosen)",
        ),
        "window_days": form_field(
            t.window_days,
            type="integer",
            minimum=1,
            maximum=3660,
            title="Window (days)",
            description=f"Days of lake partitions up to that day to train on (spec: train.window_days = {t.window_days})",
        ),
        "epochs": form_field(
            t.epochs,
            type="integer",
            minimum=1,
            maximum=10_000,
            title="Epochs",
            description=f"The most epochs; early stopping after {t.patience} epochs without a better "
            f"validation score may end sooner (spec: train.epochs = {t.epochs})",
        ),
        "learning_rate": form_field(
            t.learning_rate,
            type="number",
            exclusiveMinimum=0,
            maximum=10,
            title="Learning rate",
            description=f"AdamW's peak learning rate, {t.scheduler} schedule (spec: train.learning_rate = {t.learning_rate:g})",
        ),
        "batch_size": form_field(
            t.batch_size,
            type="integer",
            minimum=1,
            maximum=1_000_000,
            title="Batch size",
            description=f"Rows per optimisation step (spec: train.batch_size = {t.batch_size})",
        ),
        "sweep": form_field(
            sweep is not None, type="boolean", title="Hyperparameter sweep", description=sweep_text
        ),
        "sweep_agents": form_field(
            agents,
            type="integer",
            minimum=1,
            maximum=64,
            title="Sweep agents",
            description=f"Agents training trials side by side (mapped tasks in the {POOL} pool, "
            "which caps how many run at once); ignored without a sweep",
        ),
    }


def rollback_params(spec: PipelineSpec) -> dict[str, Param]:
    """The Trigger form of ``<p>_rollback``."""
    return {
        "version": form_field(
            "previous",
            type="string",
            minLength=1,
            examples=["previous"],
            title="Version to serve",
            description=f"'previous' (the {spec.model_name} version before production when the move "
            "runs) or a registered version name (`freestack models list`)",
        ),
        "expect_production": form_field(
            None,
            type=["null", "string"],
            title="Production now",
            description="The version production is as you ask (the Models page and `freestack models "
            "rollback` fill it): if another move lands first, this run fails naming it and "
            "changes nothing. Empty: move from whatever production is when the task runs",
        ),
    }


def promote_params(spec: PipelineSpec) -> dict[str, Param]:
    """The Trigger form of ``<p>_promote``."""
    return {
        "version": form_field(
            "latest",
            type="string",
            minLength=1,
            title="Version",
            description=f"A registered {spec.model_name} version (`freestack models list`), an alias, or "
            "latest (the newest version the gate did not block)",
        ),
        "alias": form_field(
            spec.deploy.alias,
            type="string",
            enum=["production", "staging"],
            title="Alias",
            description=f"The alias to point at it; moving {spec.deploy.alias} redeploys (previous <- the old one)",
        ),
        "reason": form_field(
            "", type="string", maxLength=500, title="Reason", description="Kept in the aliases' history"
        ),
        "allow_blocked": form_field(
            "",
            type="string",
            maxLength=500,
            title="Override the gate",
            description="Why a version the gate blocked may take the alias anyway (kept in the history and "
            "the run's note with the gate's reasons). Empty: a blocked version is refused",
        ),
        "expect": form_field(
            None,
            type=["null", "string"],
            title="Alias now",
            description="The version the alias points at as you ask (the Models page and `freestack "
            "models promote` fill it): if another move lands first, this run fails naming it "
            "and changes nothing. Empty: move it from whatever it is when the task runs",
        ),
    }


def training_tasks(spec: PipelineSpec, spec_path: str):
    """``window`` -> ``choose`` -> ``train`` (and ``train_node`` x nodes-1) | ``create_sweep`` -> ``agent`` x N
    -> ``select_best``; returns the ends a candidate comes from (``train`` and its nodes, ``select_best``)."""
    # the spec's train.queue (e.g. gpu) for the tasks that train; Airflow's default queue otherwise
    on_queue = {"queue": spec.train.queue} if spec.train.queue else {}
    choose = ChooseTrainingOperator(
        task_id="choose", spec_path=spec_path, doc_md="One training, or the sweep (Params: sweep)."
    )
    d = spec.train.distributed
    nodes = d.nodes if d.launcher == "local" else 1
    gang = {"pool": d.pool} if d.pool and nodes > 1 else {}  # a slot per node, taken at once
    host = {"queue": d.host_queue} if d.host_queue and nodes > 1 else {}  # node 0 where the rendezvous is
    single = TrainOperator(
        task_id="train",
        spec_path=spec_path,
        doc_md="Train once; the W&B run is an extra link.",
        **{**on_queue, **host},
        **gang,
    )
    create = CreateSweepOperator(
        task_id="create_sweep", spec_path=spec_path, doc_md="Create the sweep (W&B config) once per run."
    )
    agents = SweepAgentOperator.partial(
        task_id="agent",
        spec_path=spec_path,
        pool=POOL,
        doc_md="Lease trials, train them, report epochs, stop when hyperband says so.",
        **on_queue,
    ).expand_kwargs(create.output)
    best = SelectBestOperator(
        task_id="select_best",
        spec_path=spec_path,
        trigger_rule="all_done_min_one_success",  # select among finished trials even if an agent failed
        doc_md="Trial table (CSV/JSON/W&B), metric-vs-parameter plot, the best model as a version.",
    )
    window = WindowSensor(
        task_id="window",
        spec_path=spec_path,
        wait_minutes=spec.train.ingest_wait_minutes,
        poke_interval=spec.train.ingest_poke_seconds,
        inlets=[lake_asset(spec.name)],
        drift=drift_asset(spec.name),
        doc_md="Wait for running ingest runs, then fix the partitions (ds, sha256) every training of this run reads.",
    )
    window >> choose
    choose >> [single, create]
    create >> agents >> best
    if nodes > 1:  # the other nodes' ranks: a gang, all at once (docs/operating/distributed.md)
        others = TrainOperator.partial(
            task_id="train_node",
            spec_path=spec_path,
            max_active_tis_per_dagrun=nodes - 1,
            doc_md="The ranks of node 1.. of a multi-node training; they meet train's at the rendezvous.",
            **on_queue,
            **gang,
        ).expand(node_rank=list(range(1, nodes)))
        choose >> others
        return [single, others, best]
    return [single, best]


#: the approval request's LLM judge figures and sample prompts side by side (an evaluation with gate.judge)
JUDGE_SAMPLES = (  # Airflow renders with StrictUndefined: every key read with get
    "{% set e = ti.xcom_pull(task_ids='evaluate') or {} %}{% set j = e.get('candidate') or {} %}"
    "{% if j.get('judge_win_rate') is not none %}\nLLM judge: win rate **{{ '%.2f' % j.judge_win_rate }}** "
    "against production (95% CI {{ '%.2f' % j.judge_win_rate_low }}-{{ '%.2f' % j.judge_win_rate_high }}; "
    "{{ j.judge_wins }} wins, {{ j.judge_ties }} ties, {{ j.judge_losses }} losses, "
    "{{ j.judge_failures }} failed).\n"
    "{% elif j.get('judge_score') is not none %}\nLLM judge: mean score **{{ '%.2f' % j.judge_score }}** of 5 "
    "({{ j.judge_judged }} prompts, {{ j.judge_failures }} failed).\n{% endif %}"
    "{% if e.get('judge_samples') %}\n| prompt | candidate | production | judge |\n|---|---|---|---|\n"
    "{% for s in e.judge_samples %}| {{ s.prompt }} | {{ s.candidate }} | {{ s.champion }} | {{ s.verdict }} |\n"
    "{% endfor %}{% endif %}"
)


def promotion_tasks(spec: PipelineSpec, spec_path: str):
    """``evaluate`` -> ``gate`` -> [``approve``] -> ``promote`` | ``blocked``; returns (evaluate, promote)."""
    evaluate = EvaluateOperator(
        task_id="evaluate",
        spec_path=spec_path,
        trigger_rule="none_failed_min_one_success",  # after train or after select_best
        doc_md="Candidate and production scored on the same held-out test split; HTML report.",
    )
    gate = GateOperator(
        task_id="gate",
        spec_path=spec_path,
        doc_md=(
            "The spec's gate decides promote or block, with reasons; the candidate is committed as an "
            "immutable version with its model card and that decision (blocked ones too); then on to "
            "`promote`, `approve` first, or `blocked`."
        ),
    )
    approve = ApprovalOperator(
        task_id="approve",
        subject=f"Promote a new {spec.model_name} version to production?",
        body=(
            "{% set d = ti.xcom_pull(task_ids='gate') %}"
            "Candidate **{{ d.candidate_version }}** vs production **{{ d.champion_version or '(none)' }}**: "
            "{{ d.metric }} {{ '%.4f' % d.candidate }}.\n\n"
            "{% for r in d.reasons %}- {{ r }}\n{% endfor %}" + JUDGE_SAMPLES
        ),
        doc_md="A human approves the promotion (the spec's gate says approval: required).",
    )
    promote = PromoteOperator(
        task_id="promote",
        spec_path=spec_path,
        trigger_rule="none_failed_min_one_success",  # straight from the gate, or after approve
        doc_md="Move production (and previous) to the new version; if production moved since `evaluate`, "
        "first decide again against the new production on the same test rows.",
        **serialised(spec, MOVE_PRIORITY),
    )
    blocked = BlockedOperator(
        task_id="blocked",
        doc_md="The gate blocked the candidate: its log lists why; production is unchanged.",
    )
    evaluate >> gate >> [approve, promote, blocked]
    approve >> promote
    return evaluate, promote


def serialised(spec: PipelineSpec, priority: int) -> dict[str, Any]:
    """What every alias move and deploy of the spec's model shares: its pool of one slot (one alias move +
    deploy of a model at a time, :mod:`freestack.runtime.pools`), and a fixed priority: deploy outranks a
    move, so a run's deploy follows its own move before another run's move takes the slot."""
    return {"pool": deploy_pool(spec.model_name), "priority_weight": priority, "weight_rule": "absolute"}


def deploy_task(
    spec: PipelineSpec, spec_path: str, doc_md: str | None = None, moved_alias: str | None = None
):
    how = (
        "the model server (python -m freestack_server) on 127.0.0.1, smoke-tested, switched blue/green."
        if spec.deploy.target == "local"
        else "a SeldonDeployment on Kubernetes, waited on until Available."
    )
    return DeployOperator(
        task_id="deploy",
        spec_path=spec_path,
        moved_alias=moved_alias,
        doc_md=doc_md or f"Serve production with Seldon Core: {how}",
        **serialised(spec, DEPLOY_PRIORITY),
    )


def train_dag(spec: PipelineSpec, spec_path: str) -> DAG:
    t = spec.train
    if t.schedule:
        schedule = _cron(t.schedule)
    elif "retrain" in spec.monitor.actions:  # new lake partitions, or the monitor found drift
        schedule = lake_asset(spec.name) | drift_asset(spec.name)
    else:
        schedule = [lake_asset(spec.name)]
    with DAG(
        dag_id=f"{spec.name}_train",
        description=f"Train the {spec.model_name} model on the {spec.name} lake",
        schedule=schedule,
        catchup=False,
        max_active_runs=1,
        doc_md=(
            f"### {spec.name}: train\n\nTrains `{spec.model_name}` on the lake window the `window` task fixes "
            "(up to the newest landed partition, after running ingest runs finished), once (`train`) or as a hyperparameter sweep (`create_sweep` -> `agent` x N "
            "-> `select_best`, W&B sweep semantics); writes a model version in Hugging Face layout under "
            f"`registry/{spec.model_name}/` and W&B runs. Spec: `{spec_path}`."
        ),
        **_common(spec, "train"),
    ) as dag:
        ends = training_tasks(spec, spec_path)
        evaluate, promote = promotion_tasks(spec, spec_path)
        ends >> evaluate
        promote >> deploy_task(spec, spec_path)
    return with_form(dag, train_params(spec))


# ---------------------------------------------------------------------------------------------------------
# <p>_rollback and <p>_promote: manual DAGs


def _manual(spec: PipelineSpec, kind: str, description: str, doc_md: str) -> dict[str, Any]:
    """What the manual DAGs share: no schedule, one run at a time, unpaused (they never run by themselves);
    their Trigger forms come last (:func:`with_form`)."""
    return {
        "dag_id": f"{spec.name}_{kind}",
        "description": description,
        "schedule": None,
        "catchup": False,
        "max_active_runs": 1,
        "is_paused_upon_creation": False,
        "doc_md": doc_md,
        **_common(spec, kind),
    }


def rollback_dag(spec: PipelineSpec, spec_path: str) -> DAG:
    with DAG(
        **_manual(
            spec,
            "rollback",
            f"Manual: move {spec.model_name}'s production to an earlier version and redeploy it",
            f"### {spec.name}: rollback\n\nMoves the `production` alias of `{spec.model_name}` to the version "
            "in the form (default `previous`) and redeploys it the way `deploy` does "
            f"(target `{spec.deploy.target}`): the old server keeps serving until the new one passed its "
            "smoke test. With `expect_production` (what production was when you asked), it moves only while "
            f"production still is that version, else fails naming the move that came first. Spec: `{spec_path}`.",
        )
    ) as dag:
        move = RollbackOperator(
            task_id="move_production",
            spec_path=spec_path,
            version="{{ params.version }}",
            expect_production="{{ params.expect_production or '' }}",
            doc_md="production <- the chosen version (previous <- the current one), only while production is "
            "still `expect_production` when the form names it.",
            **serialised(spec, MOVE_PRIORITY),
        )
        move >> deploy_task(spec, spec_path, doc_md="Serve the new production.")
    return with_form(dag, rollback_params(spec))


def promote_dag(spec: PipelineSpec, spec_path: str) -> DAG:
    with DAG(
        **_manual(
            spec,
            "promote",
            f"Manual: point an alias of {spec.model_name} (production, staging) at a version",
            f"### {spec.name}: promote\n\nPoints the alias in the form at a registered version of "
            f"`{spec.model_name}` (the Models page of the freestack views triggers it). Moving "
            f"`{spec.deploy.alias}` redeploys it the way `deploy` does (target `{spec.deploy.target}`), and "
            f"`previous` keeps the version it replaced; `staging` only moves. Spec: `{spec_path}`.",
        )
    ) as dag:
        move = MoveAliasOperator(
            task_id="move_alias",
            spec_path=spec_path,
            version="{{ params.version }}",
            alias="{{ params.alias }}",
            reason="{{ params.reason }}",
            expect="{{ params.expect or '' }}",
            allow_blocked="{{ params.allow_blocked or '' }}",
            doc_md="The alias <- the chosen version (who triggered it is recorded), only while the alias is still "
            "`expect` when the form names it.",
            **serialised(spec, MOVE_PRIORITY),
        )
        move >> deploy_task(
            spec,
            spec_path,
            doc_md="Serve the new production (skipped when another alias moved).",
            moved_alias="{{ params.alias }}",
        )
    return with_form(dag, promote_params(spec))


# ---------------------------------------------------------------------------------------------------------
# <p>_monitor


def monitor_dag(spec: PipelineSpec, spec_path: str) -> DAG:
    m = spec.monitor
    with DAG(
        dag_id=f"{spec.name}_monitor",
        description=f"Judge {spec.model_name}'s request log for drift, interval by interval",
        schedule=_schedule(m.schedule),
        catchup=False,
        max_active_runs=4,
        doc_md=(
            f"### {spec.name}: monitor\n\nFor each data interval, compares what the served `{spec.model_name}` "
            "was asked and answered (the request log, `monitoring/<model>/requests/`) with each version's reference "
            f"statistics: PSI with a KS or chi² test per feature, text and image proxy and the prediction; the gate's "
            f"metric where labels arrived. Writes an HTML report; on drift: {', '.join(m.actions)}. Backfill it to "
            f"judge past days. Spec: `{spec_path}`."
        ),
        **_common(spec, "monitor"),
    ) as dag:
        judge = MonitorOperator(
            task_id="monitor",
            spec_path=spec_path,
            outlets=[monitoring_asset(spec.name)],
            doc_md="The interval's report (HTML), summary.json and W&B figures.",
        )
        alert = AlertOperator(
            task_id="alert",
            spec_path=spec_path,
            doc_md="The spec's notifiers get every drifted column: feature, statistic, threshold, report.",
        )
        retrain = RetrainOperator(
            task_id="retrain",
            spec_path=spec_path,
            outlets=[drift_asset(spec.name)],
            doc_md=f"The drift asset: {spec.name}_train retrains on the latest window.",
        )
        judge >> [alert, retrain]
    return dag


# ---------------------------------------------------------------------------------------------------------
# <p>_score


def score_dag(spec: PipelineSpec, spec_path: str) -> DAG:
    sc = spec.score
    with DAG(
        dag_id=f"{spec.name}_score",
        description=f"Score {sc.input} with {spec.model_name}@{sc.version}, interval by interval",
        schedule=_schedule(sc.schedule),
        catchup=False,
        max_active_runs=spec.max_active_runs,
        doc_md=(
            f"### {spec.name}: score\n\nFor each data interval, `plan` resolves `{sc.version}` of "
            f"`{spec.model_name}` once (the run records the version) and lists the days of `{sc.input}` "
            f"that have input; `score` scores each day in batches of {sc.batch_rows} rows with the version's "
            f"own preprocessing and publishes one Parquet file per day, whole, to `{sc.output}` (rows that do "
            f"not encode go to a quarantine beside it, with the reason). Backfill it to rescore past days "
            f"(`freestack backfill {spec.name} --dag score`). Spec: `{spec_path}`."
        ),
        **_common(spec, "score"),
    ) as dag:
        plan = PlanScoreOperator(
            task_id="plan",
            spec_path=spec_path,
            doc_md="The version (resolved once) and the days with input; skipped when none has any.",
        )
        ScoreOperator.partial(
            task_id="score",
            spec_path=spec_path,
            outlets=[scores_asset(spec.name)],
            doc_md="One day's scores: key, prediction, probabilities, version, scored_at; published whole.",
            **({"queue": sc.queue} if sc.queue else {}),
        ).expand(job=plan.output)
    return dag


# ---------------------------------------------------------------------------------------------------------
# every pipeline

#: the builder of each kind of DAG; which kinds a spec gets is :func:`freestack.spec.pipeline_dags`
_BUILDERS = {
    "ingest": ingest_dag,
    "train": train_dag,
    "rollback": rollback_dag,
    "promote": promote_dag,
    "monitor": monitor_dag,
    "score": score_dag,
}


def _only_for_task(folder: Path) -> tuple[str, PipelineSpec, Any] | None:
    """In a task process, the one DAG it runs: ``(spec path, spec, builder)``, else None.

    Airflow's task runner parses the DAG file to find its own DAG and says which one in the parsing
    context (``airflow.sdk.get_parsing_context``, Airflow's documented way to skip generating the
    others). Building all of every pipeline's DAGs there would cost each task time for every spec in the
    folder; a spec name is its file name, so the DAG id names the file."""
    from airflow.sdk import get_parsing_context

    dag_id = get_parsing_context().dag_id
    if not dag_id:
        return None
    for kind, builder in _BUILDERS.items():
        if not dag_id.endswith(f"_{kind}"):
            continue
        path = spec_file(dag_id[: -len(kind) - 1], folder)
        if path.is_file():
            try:
                spec = load_spec(path)
            except SpecError:
                return None  # the full build reports it
            if dag_id not in {d for d, _, _ in pipeline_dags(spec)}:
                return None
            return str(path), spec, builder
    return None


def build_all(namespace: dict[str, Any], directory: str | Path | None = None) -> list[DAG]:
    """Add every pipeline's DAGs to ``namespace`` (a DAG file's ``globals()``); in a task process,
    only the DAG that task belongs to."""
    folder = Path(directory) if directory else pipelines_dir()
    only = _only_for_task(folder)
    if only is not None:
        path, spec, builder = only
        dag = builder(spec, path)
        namespace[dag.dag_id] = dag
        return [dag]
    built: list[DAG] = []
    for stem, spec in discover_specs(folder).items():
        if isinstance(spec, SpecError):
            continue  # dags/freestack_spec_errors.py reports it; the other pipelines stay live
        path = str(spec_file(stem, folder))
        for _, kind, _ in pipeline_dags(spec):
            dag = _BUILDERS[kind](spec, path)
            namespace[dag.dag_id] = dag
            built.append(dag)
    return built


__all__ = [
    "build_all",
    "raise_spec_errors",
    "ingest_dag",
    "monitor_dag",
    "promote_dag",
    "score_dag",
    "promote_params",
    "rollback_dag",
    "rollback_params",
    "train_dag",
    "train_params",
]
