"""Champion/challenger after training: ``evaluate`` -> ``gate`` (decide, register, route) ->
(``approve``) -> ``promote`` (production <- the gated candidate), or ``blocked``. Thin operators over
:mod:`freestack.evaluate` and the registry (:mod:`freestack.registry.core`, which imports nothing of
evaluate); the serving stage's ``deploy`` follows ``promote``.

A blocked candidate is an outcome, not a failure: the run ends in success, but it shows. ``blocked``
runs (and logs every reason) while ``promote`` and ``deploy`` are skipped, so the grid's column for
that run differs from a promoting one; and the run gets a note with the decision and its numbers
(the gate's ``freestack_run_note`` XCom, set as the DAG-run note by :mod:`freestack.runtime.notes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from freestack import step_cache
from freestack.errors import EvaluationError
from freestack.evaluate.gate import costs_of, decide, decide_again, decision_note
from freestack.hooks.credentials import model_source, task_keys
from freestack.hooks.huggingface import HubEnvironment, hub_settings
from freestack.hooks.wandb import WandbHook
from freestack.operator_links import FreestackPageLink, WandbRunLink
from freestack.pipeline_operator import RUN_NOTE_XCOM, PipelineOperator, TorchTask
from freestack.registry.candidates import PromotionError, register_candidate
from freestack.registry.core import AliasMoved, RegistryError, registry_for
from freestack.registry.hub import promote_on_hub

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage


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
        from freestack.evaluate.core import evaluate

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
                keys=task_keys(spec, judge=True),
                run={"dag_id": context["dag"].dag_id, "run_id": context["run_id"]},
                source=model_source,
            )
        except EvaluationError as exc:
            raise AirflowFailException(str(exc)) from None
        context["ti"].xcom_push(key="wandb", value=summary.get("wandb"))
        if line := step_cache.note(summary.get("cache"), f"the evaluation of {cand['version']}"):
            context["ti"].xcom_push(key=RUN_NOTE_XCOM, value=f"evaluate: {line}")
        summary.update(
            candidate_version=cand["version"], champion_version=champion_version, sweep=cand["sweep"]
        )
        self._evaluated = summary  # what get_openlineage_facets_on_complete reports
        return summary

    def openlineage(self, ol: Any) -> OperatorLineage:
        """OpenLineage (:mod:`freestack.lineage_events`): the candidate (and production) version folders ->
        the candidate's ``evaluation/``, with the candidate version, both models' test metrics and the step
        cache's key and hit (reused from which run) or miss."""
        ev = getattr(self, "_evaluated", None)
        if ev is None:
            return ol.lineage()
        uri = ev["candidate_uri"]
        inputs = [ol.input_dataset(u) for u in (uri, ev.get("champion_uri")) if u]
        facets = ol.model_version_facet(self.pipeline_spec().model_name, ev["candidate_version"], uri)
        facets.update(
            ol.metrics_facet(ev.get("candidate"), ev.get("champion")), **ol.cache_facet(ev.get("cache"))
        )
        return ol.lineage(inputs, [ol.output_dataset(f"{uri.rstrip('/')}/evaluation")], facets)


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
        ti.xcom_push(key=RUN_NOTE_XCOM, value=decision_note(decision, self.pipeline_spec().model_name))
        # skipping the branches not taken ends the task by an exception (Airflow 3's task runner then
        # pushes no return value), so the decision is pushed first, under the return value's key
        ti.xcom_push(key="return_value", value=decision)
        self._gated = (ev, decision, registered)  # what get_openlineage_facets_on_complete reports
        self.do_branch(context, route_for(decision))
        return decision

    def openlineage(self, ol: Any) -> OperatorLineage:
        """OpenLineage (:mod:`freestack.lineage_events`): the candidate and its ``evaluation/`` -> the
        registered version, with the gate's decision, the version (its manifest's sha256) and the metrics."""
        if getattr(self, "_gated", None) is None:
            return ol.lineage()
        ev, decision, registered = self._gated
        uri = ev["candidate_uri"].rstrip("/")
        model = self.pipeline_spec().model_name
        facets = {
            **ol.model_version_facet(model, registered["version"], registered["version_uri"]),
            **ol.gate_facet(decision, route_for(decision)),
            **ol.metrics_facet(ev.get("candidate"), ev.get("champion")),
        }
        inputs = [ol.input_dataset(uri), ol.input_dataset(f"{uri}/evaluation")]
        return ol.lineage(inputs, [ol.output_dataset(registered["version_uri"])], facets)

    def decide(self, ev: dict[str, Any]) -> dict[str, Any]:
        spec = self.pipeline_spec()
        gate = spec.gate
        try:
            decision = decide(gate, ev["candidate"], ev.get("champion"), *costs_of(ev))
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

    def register(self, ev: dict[str, Any], decision: dict[str, Any], run_id: str) -> dict[str, Any]:
        """Commit the candidate (blocked ones too) with its model card and the decision."""
        spec = self.pipeline_spec()
        try:
            return register_candidate(spec, ev, decision, run_id=run_id, hub=hub_settings())
        except PromotionError as exc:
            raise AirflowFailException(str(exc)) from None


class PromoteOperator(PipelineOperator):
    """Move ``production`` (and ``previous``) to the new version atomically; on the Hub too.

    The move happens only while production is still the version the gate judged the candidate against
    (one compare-and-swap). If another run moved it meanwhile (a rollback, a promotion), the candidate
    and the new production are scored again on the same test rows and the gate decides again: a
    candidate that no longer passes is not promoted (this task and ``deploy`` are skipped, and the
    run's note says why). The aliases' history records who moved production: the gate, or the human who
    approved the candidate. It returns what it set, ``{"alias", "version", ...}``, as the registry's
    operators do (:mod:`freestack.registry.operators`): ``deploy`` serves exactly that version. Every
    alias move and deploy of a model runs in the model's pool of one slot (:mod:`freestack.runtime.pools`)."""

    ui_color = "#c8ecd4"

    def execute(self, context: Context) -> dict[str, Any]:
        spec = self.pipeline_spec()
        ti = context["ti"]
        registered = ti.xcom_pull(task_ids="gate", key="registered")
        version = registered["version"]
        decision = ti.xcom_pull(task_ids="gate")
        reg = registry_for(spec)
        for _ in range(MAX_REDECISIONS):
            judged = decision.get("champion_version")
            try:
                aliases = reg.promote(
                    version,
                    reason=f"gate: {'; '.join(decision['reasons'])}"[:500],
                    by=_approver(context),
                    expect=judged,
                    allow_blocked=_passed_again(decision),
                )
                break
            except AliasMoved as exc:
                self.log.warning("production moved after this run's evaluation: %s", exc)
                decision = self.decide_again(spec, reg, version, exc.current, context)
        else:
            raise AirflowFailException(
                f"production of {spec.model_name} moved {MAX_REDECISIONS} times while "
                "this run decided again; trigger the run again once the moves settle"
            )
        if spec.model.hub_repo and registered.get("hub"):
            token, endpoint = hub_settings()
            promote_on_hub(spec.model.hub_repo, version, token, endpoint=endpoint)
        self.log.info(
            "%s production -> %s (previous: %s)",
            spec.model_name,
            aliases.get("production"),
            aliases.get("previous"),
        )
        ti.xcom_push(key=RUN_NOTE_XCOM, value=promoted_note(spec.model_name, version, aliases, decision))
        return {
            "alias": "production",
            "version": aliases.get("production"),
            **{k: aliases.get(k) for k in ("production", "previous", "staging")},
        }

    def decide_again(self, spec, reg, version: str, current: str | None, context: Context) -> dict[str, Any]:
        """The gate's decision against the production that is there now, on the candidate's test rows
        (:func:`freestack.evaluate.gate.decide_again`); skips this task (and ``deploy``) when it blocks."""
        try:
            decision = decide_again(
                spec,
                reg.version_uri(version),
                reg.version_uri(current) if current else None,
                keys=task_keys(spec, judge=True),
            )
        except (EvaluationError, ValueError) as exc:
            raise AirflowFailException(
                f"cannot decide {version} again against production {current}: {exc}"
            ) from None
        decision.update(candidate_version=version, champion_version=current, decided_again=True)
        self.log.info(
            "gate for %s %s against the new production %s: %s",
            spec.model_name,
            version,
            current,
            "PROMOTE" if decision["promote"] else "BLOCK",
        )
        for reason in decision["reasons"]:
            self.log.info("  - %s", reason)
        if not decision["promote"]:
            reg.block(version, decision)  # every page reads this decision from now on, not the gate's first
            note = decision_note(decision, spec.model_name)
            context["ti"].xcom_push(
                key=RUN_NOTE_XCOM,
                value=f"Production moved to `{current}` before `promote`; decided again against it: {note}",
            )
            raise AirflowSkipException(
                f"not promoted: against the new production {current}, the gate blocks "
                f"{version} ({'; '.join(decision['reasons'])})"
            )
        return decision


#: how often ``promote`` decides again when production keeps moving under it
MAX_REDECISIONS = 3


def promoted_note(model: str, version: str, aliases: dict[str, Any], decision: dict[str, Any]) -> str:
    """The run's note once ``promote`` moved production: the gate's note only said the candidate passed."""
    note = f"**Promoted.** `{version}` of `{model}` is production now"
    if aliases.get("previous") and aliases.get("previous") != version:
        note += f" (previous: `{aliases['previous']}`)"
    if decision.get("decided_again"):
        note += (
            f"; production had moved to `{decision.get('champion_version')}` before `promote`, and the gate, "
            "deciding again against it, passed it too"
        )
    return note + "."


def _passed_again(decision: dict[str, Any]) -> str | None:
    """The override ``promote`` records when the gate, deciding again, passed a candidate an earlier try of
    this task had found blocked (that block is still the registry's word on it); None otherwise."""
    if not decision.get("decided_again"):
        return None
    return f"the gate decided again against production {decision.get('champion_version') or '(none)'} and passed it"


def _approver(context: Context) -> str:
    """ "approved by <user>" when the run's ``approve`` task took a human's answer, else "gate"."""
    has_approval = "approve" in context["dag"].task_ids
    answer = context["ti"].xcom_pull(task_ids="approve") if has_approval else None
    user = (answer or {}).get("responded_by_user") if isinstance(answer, dict) else None
    if user:
        name = user.get("name") or user.get("id") if isinstance(user, dict) else user
        return f"approved by {name}"
    return "gate"


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


__all__ = [
    "BlockedOperator",
    "EvaluateOperator",
    "GateOperator",
    "PromoteOperator",
    "candidate_of",
    "promoted_note",
    "route_for",
]
