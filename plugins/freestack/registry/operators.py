"""Moving aliases from Airflow: ``promote`` (production <- the gated candidate) in ``<p>_train``,
``move_production`` in ``<p>_rollback`` and ``move_alias`` in ``<p>_promote``. Thin operators over
:class:`freestack.registry.core.ModelRegistry`; the serving stage's ``deploy`` follows them.

Each returns what it set, ``{"alias", "version", ...}``: ``deploy`` serves exactly that version, or fails
saying who moved the alias since. Every alias move and deploy of a model runs in the model's pool of one
slot (:mod:`freestack.runtime.pools`).

Every move records who or what made it (``by`` in the aliases' history): the gate, the human who
approved the candidate, or the user who triggered the rollback or promotion (the DAG run's triggering
user: the Airflow UI's freestack pages trigger these DAGs with the user's own login).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from freestack.hooks.huggingface import hub_settings
from freestack.pipeline_operator import RUN_NOTE_XCOM, PipelineOperator


class PromoteOperator(PipelineOperator):
    """Move ``production`` (and ``previous``) to the new version atomically; on the Hub too.

    The move happens only while production is still the version the gate judged the candidate against
    (one compare-and-swap). If another run moved it meanwhile (a rollback, a promotion), the candidate
    and the new production are scored again on the same test rows and the gate decides again: a
    candidate that no longer passes is not promoted (this task and ``deploy`` are skipped, and the
    run's note says why)."""

    ui_color = "#c8ecd4"

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.registry.core import AliasMoved, registry_for
        from freestack.registry.hub import promote_on_hub

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
        """The gate's decision against the production that is there now, on the candidate's test rows;
        skips this task (and ``deploy``) when it blocks."""
        from freestack.evaluate.core import EvaluationError, rescore
        from freestack.evaluate.gate import decide, decision_note

        try:
            cand, champ = rescore(
                spec, reg.version_uri(version), reg.version_uri(current) if current else None
            )
            decision = decide(spec.gate, cand, champ)
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


def moved_text(exc: Any, alias: str, asked: str, again: str) -> str:
    """Why a move a user asked for was refused: the alias is no longer where they saw it."""
    return (
        f"{alias} moved from {exc.expected or '(none)'} to {exc.current or '(none)'} ({exc.move or 'by someone'}) "
        f"after this {asked} was asked; nothing was changed: ask again if it is still wanted ({again})"
    )


def _approver(context: Context) -> str:
    """ "approved by <user>" when the run's ``approve`` task took a human's answer, else "gate"."""
    has_approval = "approve" in context["dag"].task_ids
    answer = context["ti"].xcom_pull(task_ids="approve") if has_approval else None
    user = (answer or {}).get("responded_by_user") if isinstance(answer, dict) else None
    if user:
        name = user.get("name") or user.get("id") if isinstance(user, dict) else user
        return f"approved by {name}"
    return "gate"


def triggered_by(context: Context) -> str:
    """Who started this DAG run: "<user> (<run id>)"."""
    run = context.get("dag_run")
    user = getattr(run, "triggering_user_name", None) or "?"
    return f"{user} ({context['run_id']})"


class RollbackOperator(PipelineOperator):
    """Move ``production`` to ``version`` (``previous``: the version before the current one).

    With ``expect_production`` (what production was when the user asked: the Models page and the CLI
    fill it, with the version they named), the move is one compare-and-swap: if another move landed
    first, the task fails without a retry, naming that move, and nothing changes. A run triggered by hand
    without it moves production from whatever it is when the task runs (its log says so)."""

    template_fields = ("version", "expect_production")
    ui_color = "#f5dcd6"

    def __init__(
        self, *, version: str = "previous", expect_production: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.version, self.expect_production = version, expect_production

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.registry.core import AliasMoved, RegistryError, registry_for

        spec = self.pipeline_spec()
        reg = registry_for(spec)
        wanted = (self.version or "previous").strip()
        expect = (self.expect_production or "").strip() or None
        reason = f"manual rollback ({context['run_id']})"
        before = reg.aliases().get("production")
        if expect is None:
            self.log.info(
                "the form names no expect_production: %s's production moves from whatever it is when this "
                "task runs (%s now) to %s",
                spec.model_name,
                before,
                wanted,
            )
        try:
            aliases = reg.rollback(
                to=None if wanted == "previous" else wanted,
                reason=reason,
                by=triggered_by(context),
                expect=expect if expect else False,
            )
        except AliasMoved as exc:
            raise AirflowFailException(
                moved_text(
                    exc,
                    "production",
                    "rollback",
                    f"the Models page, or freestack models rollback {spec.name}",
                )
            ) from None
        except RegistryError as exc:
            raise AirflowFailException(f"cannot roll back {spec.model_name}: {exc}") from None
        self.log.info("%s production: %s -> %s", spec.model_name, before, aliases.get("production"))
        return {
            "alias": "production",
            "version": aliases.get("production"),
            "from": before,
            "production": aliases.get("production"),
            "previous": aliases.get("previous"),
        }


class MoveAliasOperator(PipelineOperator):
    """Point ``alias`` (production, staging...) at ``version``; production moves previous along. With
    ``expect`` (what the alias was when the user asked), only while it still is (as :class:`RollbackOperator`)."""

    template_fields = ("version", "alias", "reason", "expect")
    ui_color = "#e4dcf5"

    def __init__(
        self,
        *,
        version: str,
        alias: str = "production",
        reason: str = "",
        expect: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.version, self.alias, self.reason, self.expect = version, alias, reason, expect

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.registry.core import AliasMoved, RegistryError, registry_for

        spec = self.pipeline_spec()
        reg = registry_for(spec)
        alias, wanted = (self.alias or "production").strip(), (self.version or "").strip()
        expect = (self.expect or "").strip() or None
        reason = (self.reason or "").strip() or f"manual promotion ({context['run_id']})"
        try:
            before = reg.aliases().get(alias)
            aliases = reg.set_alias(
                alias,
                wanted,
                reason=reason[:500],
                by=triggered_by(context),
                expect=expect if expect else False,
            )
        except AliasMoved as exc:
            command = (
                f"freestack models promote {spec.name}"
                if alias == "production"
                else f"freestack models alias {spec.name}"
            )
            raise AirflowFailException(
                moved_text(exc, alias, "promotion", f"the Models page, or {command}")
            ) from None
        except RegistryError as exc:
            raise AirflowFailException(
                f"cannot point {spec.model_name}'s {alias} at {wanted!r}: {exc}"
            ) from None
        self.log.info("%s %s: %s -> %s", spec.model_name, alias, before, aliases.get(alias))
        return {
            "alias": alias,
            "version": aliases.get(alias),
            "from": before,
            "to": aliases.get(alias),
            "production": aliases.get("production"),
        }


__all__ = ["MoveAliasOperator", "PromoteOperator", "RollbackOperator", "triggered_by"]
