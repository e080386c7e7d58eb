"""The sweep step of ``<p>_train``: ``create_sweep`` -> ``agent`` (mapped over N agents) -> ``select_best``.

Thin operators over ``freestack.sweeps``: the controller (local, over object storage) or a W&B sweep
server when the ``wandb`` connection has a key and the server answers.
"""

from __future__ import annotations

import json
import os
from typing import Any

from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from freestack.hooks.credentials import task_keys
from freestack.hooks.huggingface import HubEnvironment
from freestack.hooks.wandb import WandbHook
from freestack.operator_links import FreestackPageLink, WandbRunLink
from freestack.pipeline_operator import RUN_NOTE_XCOM, PipelineOperator, TorchTask
from freestack.storage import to_path
from freestack.sweeps.core import (
    LocalAgent,
    SweepError,
    agent_threads,
    create_sweep,
    load_sweep,
    sweep_id_for,
)
from freestack.sweeps.report import select_best
from freestack.sweeps.wandb_sweep import (
    create_server_sweep,
    run_server_agent,
    server_can_run,
    server_settings,
)
from freestack.train.operators import airflow_info, fixed_window
from freestack.version.files import METRICS
from freestack.version.write import read_lineage


class ChooseTrainingOperator(PipelineOperator, BaseBranchOperator):
    """One training (``train``, with ``train_node`` for the other nodes of a multi-node training) or a
    sweep (``create_sweep``), as the Params form's ``sweep`` says."""

    def choose_branch(self, context: Context) -> str | list[str]:
        spec = self.pipeline_spec()
        wanted = bool((context.get("params") or {}).get("sweep"))
        if wanted and spec.sweep is None:
            raise AirflowFailException(
                f"the form asks for a sweep but {self.spec_path} has no sweep: block; add one (W&B sweep "
                "configuration) or untick 'sweep'"
            )
        if wanted:
            return "create_sweep"
        d = spec.train.distributed
        return ["train", "train_node"] if d.nodes > 1 and d.launcher == "local" else "train"


class CreateSweepOperator(PipelineOperator):
    """Create the sweep (once per DAG run; a retry finds it) and hand out the agent indexes."""

    ui_color = "#fde9c9"

    def execute(self, context: Context) -> list[dict[str, Any]]:
        """One entry per agent (the ``agent`` task is mapped over them with ``expand_kwargs``)."""
        # train.core loads torch: imported when the task runs, not at DAG parse time
        from freestack.train.core import prune_checkpoints

        spec = self.pipeline_spec()
        prune_checkpoints(spec)
        params = context.get("params") or {}
        window = fixed_window(context)
        end_ds = window["end_ds"]
        agents = int(params.get("sweep_agents") or 1)
        ti = context["ti"]
        sweep_id = sweep_id_for(spec.name, f"{ti.dag_id}/{ti.run_id}", end_ds)
        request = {
            "end_ds": end_ds,
            "window_days": params.get("window_days"),
            "epochs": params.get("epochs"),
            "learning_rate": params.get("learning_rate"),
            "batch_size": params.get("batch_size"),
            "airflow": airflow_info(context, window),
            "window": window,
        }
        settings = None
        if server_can_run(spec.sweep):
            settings = server_settings(WandbHook().checked_settings())
        else:
            self.log.info(
                "sweep method %s%s runs on the local controller: W&B's sweep server runs grid, random and bayes "
                "on one metric; every trial is still its own W&B run",
                spec.sweep.method,
                " on several objectives" if spec.sweep.metrics else "",
            )
        try:
            if settings is not None:
                sweep = create_server_sweep(spec, sweep_id, request, agents=agents, settings=settings)
            else:
                sweep = create_sweep(spec, sweep_id, request, agents=agents)
        except SweepError as exc:
            raise AirflowFailException(str(exc)) from None
        self.log.info(
            "sweep %s (%s, %s): at most %s trials by %d agents; state in %s",
            sweep["id"],
            sweep["mode"],
            spec.sweep.method,
            sweep["max_trials"],
            agents,
            sweep.get("uri"),
        )
        return [
            {"agent_index": i, "sweep_id": sweep["id"], "sweep_mode": sweep["mode"], "agents": agents}
            for i in range(agents)
        ]


class SweepAgentOperator(TorchTask, HubEnvironment, PipelineOperator):
    """One agent: lease a trial, train it, report each epoch, stop when told; until the sweep is done."""

    ui_color = "#fde9c9"

    def __init__(
        self,
        *,
        sweep_id: str,
        agent_index: int = 0,
        agents: int = 1,
        sweep_mode: str = "local",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sweep_id = sweep_id
        self.agent_index = agent_index
        self.agents = agents
        self.sweep_mode = sweep_mode

    def torch_threads(self) -> tuple[int | None, str]:
        """The agents' own rule: FREESTACK_AGENT_THREADS, else the cores shared out among the agents."""
        why = f"FREESTACK_AGENT_THREADS, else the cores among {self.agents} agents"
        return agent_threads(self.agents), why

    def execute(self, context: Context) -> dict[str, Any]:
        # trials (train.core) loads torch: imported when the task runs, not at DAG parse time
        from freestack.sweeps.trials import make_trial_runner

        spec = self.pipeline_spec()
        ti = context["ti"]
        # the agent's slot outlives its tries: a retry takes over the trial its dead try held at once
        slot = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', self.agent_index)}"
        agent_id = f"{slot}/try{ti.try_number}/pid{os.getpid()}"
        tracking = WandbHook().checked_settings()
        keys = task_keys(spec, judge=spec.judge_rewarded, rollout=True)
        try:
            sweep = load_sweep(spec, self.sweep_id)
            if self.sweep_mode == "wandb":
                return run_server_agent(spec, sweep, agent_id=agent_id, settings=tracking, keys=keys)
            runner = make_trial_runner(spec, sweep, tracking_settings=tracking, keys=keys)
            agent = LocalAgent(
                spec, self.sweep_id, runner, agent_id=agent_id, slot=slot, try_number=ti.try_number
            )
            return agent.run().as_dict()
        except SweepError as exc:
            raise AirflowFailException(str(exc)) from None


def selected_note(summary: dict[str, Any]) -> str:
    """The run note of a sweep's choice: the trial, its figure on the sweep's metric (its kept model's),
    its parameters, and how many trials it was chosen among."""
    params = ", ".join(f"{k}={v}" for k, v in summary["best_params"].items()) or "no parameters"
    return (
        f"sweep {summary['sweep_id']}: trial {summary['best_trial']} chosen on {summary['metric']} "
        f"({summary['goal']}) = {summary['best_value']:.4g}, its kept model's, among {summary['finished']} "
        f"finished of {summary['trials']} trials; its parameters: {params}"
    )[:1000]


class SelectBestOperator(PipelineOperator):
    """The table of trials (CSV, JSON, W&B table), the metric-against-parameter plot, and the best
    trial's model published as a version; returns its URI like ``train`` does."""

    operator_extra_links = (WandbRunLink(), FreestackPageLink())
    ui_color = "#fde9c9"

    def execute(self, context: Context) -> dict[str, Any]:
        spec = self.pipeline_spec()
        ti = context["ti"]
        created = ti.xcom_pull(task_ids="create_sweep")
        if not created:
            raise AirflowFailException("create_sweep did not run; there is no sweep to select from")
        try:
            summary = select_best(
                spec,
                created[0]["sweep_id"],
                tracking_settings=WandbHook().checked_settings(),
                airflow=airflow_info(context, fixed_window(context)),
            )
        except SweepError as exc:
            raise AirflowFailException(str(exc)) from None
        ti.xcom_push(key="wandb", value=summary.get("wandb"))
        ti.xcom_push(key=RUN_NOTE_XCOM, value=selected_note(summary))
        self._selected = summary  # what get_openlineage_facets_on_complete reports
        return summary

    def openlineage(self, ol: Any) -> Any:
        """OpenLineage (:mod:`freestack.lineage_events`), as ``train`` reports one training: the partitions
        the best trial trained on (their part files and sha256, from the candidate's ``lineage.json``) ->
        the candidate version folder, with the version and its validation metrics as run facets."""
        selected = getattr(self, "_selected", None)
        if selected is None:
            return ol.lineage()
        uri = selected["version_uri"]
        trained = read_lineage(uri)
        inputs = [
            ol.input_dataset(p["uri"], sha256=p.get("sha256")) for p in trained.partitions if p.get("uri")
        ]
        version = trained.version or uri.rstrip("/").rsplit("/", 1)[-1]
        facets = ol.model_version_facet(self.pipeline_spec().model_name, version, uri)
        metrics = json.loads(to_path(uri).joinpath(METRICS).read_text())
        return ol.lineage(inputs, [ol.output_dataset(uri)], {**facets, **ol.metrics_facet(metrics)})


__all__ = [
    "ChooseTrainingOperator",
    "CreateSweepOperator",
    "SelectBestOperator",
    "SweepAgentOperator",
]
