"""Champion/challenger after training: ``evaluate`` -> ``gate`` (decide, register, route) ->
(``approve``) -> ``promote`` (:mod:`freestack.registry.operators`), or ``blocked``. Thin operators over
:mod:`freestack.evaluate`.

A blocked candidate is an outcome, not a failure: the run ends in success, but it shows. ``blocked``
runs (and logs every reason) while ``promote`` and ``deploy`` are skipped, so the grid's column for
that run differs from a promoting one; and the run gets a note with the decision and its numbers
(the gate's ``freestack_run_note`` XCom, set as the DAG-run note by :mod:`freestack.runtime.notes`).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from freestack.hooks.huggingface import HubEnvironment, hub_settings
from freestack.hooks.wandb import WandbHook
from freestack.operator_links import FreestackPageLink, WandbRunLink
from freestack.pipeline_operator import RUN_NOTE_XCOM, PipelineOperator, TorchTask


def candidate_of(context: Context) -> dict[str, Any]:
    """The model this run produced: from ``select_best`` (a sweep) or ``train``."""
    ti = context["ti"]
    for task_id in ("select_best", "train"):
        out = ti.xcom_pull(task_ids=task_id)
        if out:
            uri = out.get("version_uri")
            version = out.get("version") or uri.rstrip("/").rsplit("/", 1)[-1]
            return {
                "version": version,
                "version_uri": uri,
                "from": task_id,
                "sweep": out if task_id == "select_best" else None,
            }
    raise AirflowFailException("neither train nor select_best produced a model version in this run")


class EvaluateOperator(TorchTask, HubEnvironment, PipelineOperator):
    """Score the candidate and the current production model on the same held-out test split."""

    operator_extra_links = (WandbRunLink(), FreestackPageLink())
    ui_color = "#d8f0e4"

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.evaluate.core import EvaluationError, evaluate
        from freestack.registry.core import RegistryError, registry_for

        spec = self.pipeline_spec()
        cand = candidate_of(context)
        reg = registry_for(spec)
        champion_version = None
        try:
            champion_version = reg.resolve("production")
        except RegistryError:
            self.log.info(
                "no production version of %s yet: the candidate is the first model", spec.model_name
            )
        # a version the gate registered already (this task cleared after it): its evaluation stands
        candidate_uri = (
            reg.version_uri(cand["version"]) if reg.is_registered(cand["version"]) else cand["version_uri"]
        )
        try:
            summary = evaluate(
                spec,
                candidate_uri,
                champion_uri=reg.version_uri(champion_version) if champion_version else None,
                tracking_settings=WandbHook().checked_settings(),
            )
        except EvaluationError as exc:
            raise AirflowFailException(str(exc)) from None
        context["ti"].xcom_push(key="wandb", value=summary.get("wandb"))
        summary["candidate_version"] = cand["version"]
        summary["champion_version"] = champion_version
        summary["sweep"] = cand["sweep"]
        return summary


def route_for(decision: dict[str, Any]) -> str:
    """The task after the gate: ``promote``, ``approve`` (a human first) or ``blocked``."""
    if not decision["promote"]:
        return "blocked"
    return "approve" if decision.get("approval") == "required" else "promote"


class GateOperator(PipelineOperator, BaseBranchOperator):
    """Decide promotion by the spec's ``gate:`` block, register the candidate as an immutable version
    with that decision and its model card, and branch: ``promote``, ``approve`` first, or ``blocked``.

    One task for the three steps: each is a few milliseconds of work, and as separate tasks each cost a
    task start and a scheduler hop (``bench/orchestration``). The log gives the decision and its
    reasons, then the registration; the decision is the task's XCom (``ti.xcom_pull(task_ids='gate')``,
    as the approval form shows it), the registration its ``registered`` XCom. A retry is safe: the
    decision is computed again from the evaluation, and a version this run registered already is
    taken as it is."""

    ui_color = "#d8f0e4"

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        ev = ti.xcom_pull(task_ids="evaluate")
        decision = self.decide(ev)
        registered = self.register(ev, decision, ti.run_id)
        ti.xcom_push(key="registered", value=registered)
        ti.xcom_push(key=RUN_NOTE_XCOM, value=self.note(decision))
        # skipping the branches not taken ends the task by an exception (Airflow 3's task runner then
        # pushes no return value), so the decision is pushed first, under the return value's key
        ti.xcom_push(key="return_value", value=decision)
        self.do_branch(context, route_for(decision))
        return decision

    def decide(self, ev: dict[str, Any]) -> dict[str, Any]:
        from freestack.evaluate.gate import decide

        spec = self.pipeline_spec()
        gate = spec.gate
        try:
            decision = decide(gate, ev["candidate"], ev.get("champion"))
        except ValueError as exc:
            raise AirflowFailException(f"{self.spec_path}: gate: {exc}") from None
        decision.update(
            candidate_version=ev["candidate_version"], champion_version=ev.get("champion_version")
        )
        verdict = "PROMOTE" if decision["promote"] else "BLOCK"
        if decision["promote"] and gate.approval == "required":
            verdict += " (after a human approves)"
        self.log.info("gate for %s %s: %s", spec.model_name, ev["candidate_version"], verdict)
        for reason in decision["reasons"]:
            self.log.info("  - %s", reason)
        return decision

    def note(self, decision: dict[str, Any]) -> str:
        from freestack.evaluate.gate import decision_note

        return decision_note(decision, self.pipeline_spec().model_name)

    def register(self, ev: dict[str, Any], decision: dict[str, Any], run_id: str) -> dict[str, Any]:
        """Commit the candidate (blocked ones too) with its model card and the decision."""
        from freestack.registry.candidates import PromotionError, register_candidate

        spec = self.pipeline_spec()
        try:
            return register_candidate(spec, ev, decision, run_id=run_id, hub=hub_settings())
        except PromotionError as exc:
            raise AirflowFailException(str(exc)) from None


class BlockedOperator(BaseOperator):
    """The branch a blocked candidate takes: logs the gate's reasons (one click from the grid), changes
    nothing. It runs where ``promote`` and ``deploy`` are skipped; production keeps serving."""

    ui_color = "#f6d3cf"

    def execute(self, context: Context) -> dict[str, Any]:
        decision = context["ti"].xcom_pull(task_ids="gate") or {}
        self.log.warning(
            "the gate blocked candidate %s: %s %s; production stays %s",
            decision.get("candidate_version"),
            decision.get("metric"),
            decision.get("candidate"),
            decision.get("champion_version") or "(none)",
        )
        for reason in decision.get("reasons") or []:
            self.log.warning("  - %s", reason)
        return {"blocked": decision.get("candidate_version"), "production": decision.get("champion_version")}


__all__ = ["BlockedOperator", "EvaluateOperator", "GateOperator", "candidate_of", "route_for"]
