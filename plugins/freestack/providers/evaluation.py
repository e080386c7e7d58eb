"""freestack's reusable evaluate operator: the evaluate stage and its gate, in a DAG of your own.

- :class:`FreestackEvaluateOperator`: score a trained candidate (the train operator's ``version_uri``) and
  the champion (production) on the candidate's own held-out test rows with the evaluate stage's
  :func:`freestack.evaluate.core.evaluate`, decide by the spec's ``gate:`` block
  (:func:`freestack.evaluate.gate.decide`) and register the candidate with that decision, as a pipeline's
  ``evaluate`` and ``gate`` tasks do. A candidate the gate blocks skips the tasks after it (by default), as
  Airflow's ShortCircuitOperator does: the task succeeds, its decision is its XCom.

Parsing stays light: the evaluation (torch, pandas) is imported in ``execute``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from airflow.providers.standard.utils.skipmixin import SkipMixin
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException
from pydantic import Field

from freestack.errors import EvaluationError
from freestack.evaluate.gate import costs_of, decide, decision_note
from freestack.hooks.credentials import model_source, task_keys
from freestack.hooks.huggingface import export_hub_environment, hub_settings
from freestack.hooks.wandb import WandbHook
from freestack.operator_links import WandbRunLink
from freestack.pipeline_operator import RUN_NOTE_XCOM, TorchTask
from freestack.providers.operators import TEMPLATED, _Arguments
from freestack.providers.training import SpecArguments, SpecOperator
from freestack.providers.versions import resolve
from freestack.registry.candidates import PromotionError, register_candidate
from freestack.registry.core import ModelRegistry, VersionNotFound, registry_for
from freestack.storage import join, to_path
from freestack.version.files import MARKER


class EvaluateArguments(SpecArguments):
    """The evaluate operator's arguments."""

    version_uri: str = Field(
        min_length=1,
        description="The candidate to evaluate: the train operator's version_uri.",
        json_schema_extra=TEMPLATED,
    )
    champion: str = Field(
        default="production",
        min_length=1,
        description="The alias or version the candidate is compared with (none registered: a first model).",
        json_schema_extra=TEMPLATED,
    )
    on_block: Literal["skip", "fail", "continue"] = Field(
        default="skip",
        description="A candidate the gate does not pass: skip what follows, fail the task, or go on.",
    )


class FreestackEvaluateOperator(TorchTask, SpecOperator, SkipMixin):
    """Evaluate a trained candidate against the champion, decide by the spec's gate and register it.

    The evaluate stage's own evaluation (:func:`freestack.evaluate.core.evaluate`): the candidate and the
    champion are scored on the candidate's held-out test rows (the partitions its lineage names), the
    report, plots, smoke sample and monitor reference are written into the candidate's ``evaluation/``,
    and the metrics are logged to the candidate's W&B run. The spec's ``gate:`` block decides
    (:func:`freestack.evaluate.gate.decide`), and the candidate is registered with the decision and its
    model card (blocked ones too), as the pipeline's gate does.

    :param spec: the pipeline spec inline (as the train operator takes it); give this or ``spec_path``
    :param spec_path: a pipeline spec file (templated): absolute, or under the pipelines folder
    :param version_uri: the candidate (templated, or an XComArg): ``train.output["version_uri"]``
    :param champion: the alias or version compared with (templated), default ``production``; with no
        production yet the candidate is a first model
    :param on_block: a candidate the gate does not pass (or that waits for a human, ``gate.approval:
        required``): ``skip`` (default) skips the tasks after it, ``fail`` fails the task, ``continue``
        returns the decision for a branch of your own
    :param storage: the storage root holding the lake and the registry (templated); default: the spec's

    Returns (and pushes as its XCom) ``{"version", "version_uri", "promote", "decision", "reasons",
    "metric", "candidate", "champion_version", "champion", "report"}``; the decision is the run's note.
    """

    arguments: ClassVar[type[_Arguments]] = EvaluateArguments
    operator_extra_links = (WandbRunLink(),)
    ui_color = "#d8f0e4"

    def run(self, context: Context) -> dict[str, Any]:
        from freestack.evaluate.core import evaluate  # torch and pandas: at run time

        spec = self.pipeline_spec()
        if spec.uses_hub:
            export_hub_environment()
        reg = registry_for(spec)
        version, candidate_uri = self.candidate(reg)
        champion = self.champion_of(reg)
        try:
            ev = evaluate(
                spec,
                candidate_uri,
                champion_uri=reg.version_uri(champion) if champion else None,
                tracking_settings=WandbHook().checked_settings(),
                keys=task_keys(spec, judge=True),
                run={"dag_id": context["dag"].dag_id, "run_id": context["run_id"]},
                source=model_source,
            )
            ev.update(candidate_version=version, champion_version=champion)
            decision = decide(spec.gate, ev["candidate"], ev.get("champion"), *costs_of(ev))
            decision.update(candidate_version=version, champion_version=champion)
            registered = register_candidate(spec, ev, decision, run_id=context["run_id"], hub=hub_settings())
        except (EvaluationError, PromotionError, ValueError) as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from None
        for reason in decision["reasons"]:
            self.log.info("  - %s", reason)
        ti = context["ti"]
        ti.xcom_push(key="wandb", value=ev.get("wandb"))
        ti.xcom_push(key=RUN_NOTE_XCOM, value=decision_note(decision, spec.model_name))
        self._evaluated = (spec.model_name, ev, decision, registered)  # what openlineage reports
        result = {
            "version": version,
            "version_uri": registered["version_uri"],
            "promote": decision["promote"] and decision.get("approval") != "required",
            "decision": decision["decision"],
            "reasons": decision["reasons"],
            "metric": decision["metric"],
            "candidate": ev["candidate"],
            "champion_version": champion,
            "champion": ev.get("champion"),
            "report": ev.get("report"),
        }
        return self.after_gate(context, result, decision)

    def candidate(self, reg: ModelRegistry) -> tuple[str, str]:
        """(the candidate's version, the URI to evaluate): the folder given, or the registered version
        when this run's gate registered it already (a retry). A version registered without an evaluation
        (``FreestackTrainOperator(register=True)``) is immutable: the task fails, saying what to do."""
        uri = self.version_uri.strip()
        version = uri.rstrip("/").rsplit("/", 1)[-1]
        if not reg.is_registered(version):
            return version, uri
        if not join(to_path(reg.version_uri(version)), "evaluation", "metrics.json").exists():
            raise AirflowFailException(
                f"{self.task_id}: version {version} of {reg.model} was registered without an evaluation "
                f"(FreestackTrainOperator(register=True)), and a registered version is immutable ({MARKER}): "
                "train with register=False and let this operator register it with its gate's decision, or "
                "deploy it as it is (FreestackDeployOperator smoke-tests it on its own test split)"
            )
        return version, reg.version_uri(version)

    def champion_of(self, reg: ModelRegistry) -> str | None:
        """The version ``champion`` names; None when it is ``production`` and none is set (a first model)."""
        asked = self.champion.strip()
        if asked == "production":
            try:
                return reg.resolve(asked)
            except VersionNotFound:
                self.log.info("no production version of %s yet: the candidate is the first model", reg.model)
                return None
        return resolve(reg, asked, "champion")

    def after_gate(
        self, context: Context, result: dict[str, Any], decision: dict[str, Any]
    ) -> dict[str, Any]:
        """The result, or (``on_block``) what follows a candidate the gate does not pass: every task after it
        skipped (as ShortCircuitOperator skips them; that ends the task, so the result is pushed first), or
        the task failed."""
        model, version = self._evaluated[0], result["version"]
        verdict = "passed" if result["promote"] else "blocked"
        if decision["promote"] and not result["promote"]:
            verdict = f"passed; gate.approval: required: a human promotes it (freestack models promote {model} {version})"
        self.log.info("gate for %s %s: %s", model, version, verdict)
        if result["promote"] or self.on_block == "continue":
            return result
        why = f"{model} {version}: the gate {verdict}: {'; '.join(decision['reasons'])}"
        if self.on_block == "fail":
            raise AirflowFailException(f"{self.task_id}: {why}")
        after = [t for t in context["task"].get_flat_relatives(upstream=False) if not t.is_teardown]
        self.log.info("%s; skipping %s", why, ", ".join(sorted(t.task_id for t in after)) or "nothing")
        context["ti"].xcom_push(key="return_value", value=result)
        self.skip(ti=context["ti"], tasks=after)
        return result

    def openlineage(self, ol: Any) -> Any:
        """The candidate (and champion) folders -> the registered version, with the version, the gate's
        decision and both models' test metrics as run facets."""
        if getattr(self, "_evaluated", None) is None:
            return ol.lineage()
        model, ev, decision, registered = self._evaluated
        uri = str(ev["candidate_uri"]).rstrip("/")
        inputs = [ol.input_dataset(u) for u in (uri, ev.get("champion_uri")) if u]
        facets = {
            **ol.model_version_facet(model, registered["version"], registered["version_uri"]),
            **ol.gate_facet(decision, "promote" if decision["promote"] else "blocked"),
            **ol.metrics_facet(ev.get("candidate"), ev.get("champion")),
        }
        return ol.lineage(inputs, [ol.output_dataset(registered["version_uri"])], facets)


__all__ = ["EvaluateArguments", "FreestackEvaluateOperator"]
