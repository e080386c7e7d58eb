"""Champion/challenger after training: ``evaluate`` -> ``gate`` (decide, register, route) ->
(``approve``) -> ``promote``, or ``blocked``. Thin operators over ``freestack.evaluate`` and
``freestack.registry``; a blocked candidate skips promotion and the DAG run still ends green.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.branch import BaseBranchOperator
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from freestack.links import WandbRunLink
from freestack.operators.base import PipelineOperator


def _registry(spec):
    from freestack.registry.core import ModelRegistry
    from freestack.storage import storage_root

    return ModelRegistry(storage_root(spec.storage_root), spec.model_name)


def hub_settings() -> tuple[str | None, str | None]:
    """(token, endpoint) of the ``huggingface_default`` connection, or (None, None) without one."""
    try:
        from freestack.hooks.huggingface import HuggingFaceHook
    except ImportError:  # pragma: no cover - the hook ships with the registry
        return None, None
    try:
        hook = HuggingFaceHook()
        return hook.token(), hook.endpoint()
    except Exception:  # no connection: everything stays local
        return None, None


def candidate_of(context: Context) -> dict[str, Any]:
    """The model this run produced: from ``select_best`` (a sweep) or ``train``."""
    ti = context["ti"]
    for task_id in ("select_best", "train"):
        out = ti.xcom_pull(task_ids=task_id)
        if out:
            uri = out.get("version_uri")
            version = out.get("version") or uri.rstrip("/").rsplit("/", 1)[-1]
            return {"version": version, "version_uri": uri, "from": task_id, "sweep": out if task_id == "select_best" else None}
    raise AirflowFailException("neither train nor select_best produced a model version in this run")


class EvaluateOperator(PipelineOperator):
    """Score the candidate and the current production model on the same held-out test split."""

    operator_extra_links = (WandbRunLink(),)
    ui_color = "#d8f0e4"

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.evaluate.core import EvaluationError, evaluate
        from freestack.registry.core import RegistryError
        from freestack.tracking.wandb import WandbHook

        spec = self.pipeline_spec()
        cand = candidate_of(context)
        reg = _registry(spec)
        champion_version = None
        try:
            champion_version = reg.resolve("production")
        except RegistryError:
            self.log.info("no production version of %s yet: the candidate is the first model", spec.model_name)
        try:
            summary = evaluate(
                spec,
                cand["version_uri"],
                champion_uri=reg.version_uri(champion_version) if champion_version else None,
                tracking_settings=WandbHook().settings(),
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
        # skipping the branches not taken ends the task by an exception (Airflow 3's task runner then
        # pushes no return value), so the decision is pushed first, under the return value's key
        ti.xcom_push(key="return_value", value=decision)
        self.do_branch(context, route_for(decision))
        return decision

    def decide(self, ev: dict[str, Any]) -> dict[str, Any]:
        from freestack.evaluate.gate import GateSpec, decide

        spec = self.pipeline_spec()
        gate = GateSpec.model_validate(spec.gate or {})
        try:
            decision = decide(gate, ev["candidate"], ev.get("champion"))
        except ValueError as exc:
            raise AirflowFailException(f"{self.spec_path}: gate: {exc}") from None
        decision.update(candidate_version=ev["candidate_version"], champion_version=ev.get("champion_version"))
        verdict = "PROMOTE" if decision["promote"] else "BLOCK"
        if decision["promote"] and gate.approval == "required":
            verdict += " (after a human approves)"
        self.log.info("gate for %s %s: %s", spec.model_name, ev["candidate_version"], verdict)
        for reason in decision["reasons"]:
            self.log.info("  - %s", reason)
        return decision

    def register(self, ev: dict[str, Any], decision: dict[str, Any], run_id: str) -> dict[str, Any]:
        """Commit the candidate (blocked ones too) with its model card and the decision."""
        from freestack.registry.core import RegistryError, VersionExists

        spec = self.pipeline_spec()
        version = ev["candidate_version"]
        reg = _registry(spec)
        sweep = ev.get("sweep") or None
        card = {
            "metrics": {f"test_{k}": v for k, v in ev["candidate"].items() if isinstance(v, int | float)},
            "window": ev["window"],
            "gate": decision,
            "sweep": {k: sweep[k] for k in ("sweep_id", "method", "metric", "best_trial", "best_value", "best_params",
                                            "trials", "stopped_early", "epochs_total") if k in sweep} if sweep else None,
            "intended_use": spec.description or f"Predict {spec.source.schema_.target} from {spec.name} rows.",
            "limitations": (
                f"Trained and tested only on the {spec.name} lake window up to {ev['window']['end_ds']} "
                f"({ev['window']['days']} days); scores on data outside that distribution are unknown."
            ),
            "tags": sorted({"freestack", f"pipeline:{spec.name}", *spec.tags}),
        }
        lineage = {
            "gate": decision,
            "evaluation": {"report": ev.get("report"), "champion_version": ev.get("champion_version"),
                           "candidate": {k: v for k, v in ev["candidate"].items() if isinstance(v, int | float)}},
        }  # fmt: skip
        try:
            uri = reg.register_in_place(version, lineage_updates=lineage, card=card)
        except VersionExists:
            # a retry of this task after its commit: the version is this run's, nothing to redo
            got = reg.get(version)
            if (got.get("lineage") or {}).get("airflow", {}).get("run_id") != run_id:
                raise AirflowFailException(
                    f"version {version} of {spec.model_name} is registered already by another run; versions "
                    "are immutable"
                ) from None
            uri = reg.version_uri(version)
        except RegistryError as exc:
            raise AirflowFailException(str(exc)) from None
        pushed = None
        if spec.model.hub_repo:
            token, endpoint = hub_settings()
            pushed = reg.push_to_hub(version, spec.model.hub_repo, token, endpoint=endpoint)
        self.log.info("registered %s %s at %s (model card: %s/README.md)", spec.model_name, version, uri, uri)
        return {"version": version, "version_uri": uri, "hub": pushed, "promote": decision["promote"]}


class PromoteOperator(PipelineOperator):
    """Move ``production`` (and ``previous``) to the new version atomically; on the Hub too."""

    ui_color = "#c8ecd4"

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.registry.core import promote_on_hub

        spec = self.pipeline_spec()
        ti = context["ti"]
        registered = ti.xcom_pull(task_ids="gate", key="registered")
        decision = ti.xcom_pull(task_ids="gate")
        reg = _registry(spec)
        aliases = reg.promote(registered["version"], reason=f"gate: {'; '.join(decision['reasons'])}"[:500])
        if spec.model.hub_repo and registered.get("hub"):
            token, endpoint = hub_settings()
            promote_on_hub(spec.model.hub_repo, registered["version"], token, endpoint=endpoint)
        self.log.info("%s production -> %s (previous: %s)", spec.model_name, aliases.get("production"),
                      aliases.get("previous"))
        return {k: aliases.get(k) for k in ("production", "previous", "staging")}


__all__ = [
    "EvaluateOperator", "GateOperator", "PromoteOperator", "candidate_of", "hub_settings", "route_for",
]  # fmt: skip
