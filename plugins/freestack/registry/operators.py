"""Moving aliases by hand from Airflow: ``move_production`` in ``<p>_rollback`` and ``move_alias`` in
``<p>_promote``. Thin operators over :class:`freestack.registry.core.ModelRegistry`; the serving stage's
``deploy`` follows them. (``promote`` in ``<p>_train``, production <- the gated candidate, is the gate's
last step: :class:`freestack.evaluate.operators.PromoteOperator`.)

Each returns what it set, ``{"alias", "version", ...}``: ``deploy`` serves exactly that version, or fails
saying who moved the alias since. Every alias move and deploy of a model runs in the model's pool of one
slot (:mod:`freestack.runtime.pools`).

Every move records who made it (``by`` in the aliases' history): the user who triggered the rollback or
promotion (the DAG run's triggering user: the Airflow UI's freestack pages trigger these DAGs with the
user's own login). A version the gate blocked takes an alias only with ``allow_blocked`` saying why
(:meth:`~freestack.registry.core.ModelRegistry.set_alias`); a promotion's run note (:func:`moved_note`) says
where the alias went and, when it was overridden, the gate's reasons and why.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from freestack.pipeline_operator import RUN_NOTE_XCOM, PipelineOperator
from freestack.registry.core import AliasMoved, RegistryError, registry_for

#: the most characters of the gate's reasons a run note repeats (the task's log and the history hold all)
NOTE_REASONS = 300


def moved_text(exc: Any, alias: str, asked: str, again: str) -> str:
    """Why a move a user asked for was refused: the alias is no longer where they saw it."""
    return (
        f"{alias} moved from {exc.expected or '(none)'} to {exc.current or '(none)'} ({exc.move or 'by someone'}) "
        f"after this {asked} was asked; nothing was changed: ask again if it is still wanted ({again})"
    )


def moved_note(model: str, alias: str, before: str | None, aliases: dict[str, Any]) -> str:
    """The run's note (Markdown) once ``alias`` of ``model`` was pointed at a version: "**Promoted.**", where
    it came from and, when the gate had blocked the version, "**Gate overridden.**" with the gate's reasons
    and the override's why, as the move's history event records them."""
    version = aliases.get(alias)
    if before == version:
        return f"**Promoted.** `{version}` of `{model}` was {alias} already: nothing moved."
    was = f" (previous: `{before}`)" if alias == "production" else f" (was `{before}`)"
    note = f"**Promoted.** `{version}` of `{model}` is {alias} now{was if before else ''}."
    override = ((aliases.get("history") or [{}])[-1]).get("override")
    if not override:
        return note
    reasons = "; ".join(override.get("gate_reasons") or []) or "no reason recorded"
    if len(reasons) > NOTE_REASONS:
        reasons = reasons[: NOTE_REASONS - 1].rstrip() + "…"
    return (
        f"{note}\n\n**Gate overridden.** The gate blocked `{version}` ({reasons}); moved anyway: "
        f"{override.get('why')}"
    )


def push_note(context: Context, note: str) -> None:
    """Push ``note`` as the task's ``freestack_run_note``: the run's note once it ends
    (:mod:`freestack.runtime.notes`)."""
    context["ti"].xcom_push(key=RUN_NOTE_XCOM, value=note)


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
        spec = self.pipeline_spec()
        reg = registry_for(spec)
        wanted = (self.version or "previous").strip()
        expect = (self.expect_production or "").strip() or None
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
                reason=f"manual rollback ({context['run_id']})",
                by=triggered_by(context),
                expect=expect if expect else False,
            )
        except AliasMoved as exc:
            again = f"the Models page, or freestack models rollback {spec.name}"
            raise AirflowFailException(moved_text(exc, "production", "rollback", again)) from None
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
    ``expect`` (what the alias was when the user asked), only while it still is (as :class:`RollbackOperator`).
    A version the gate blocked moves only with ``allow_blocked`` saying why; the run's note says where the
    alias went (and the override, with the gate's reasons)."""

    template_fields = ("version", "alias", "reason", "expect", "allow_blocked")
    ui_color = "#e4dcf5"

    def __init__(
        self,
        *,
        version: str,
        alias: str = "production",
        reason: str = "",
        expect: str | None = None,
        allow_blocked: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.version, self.alias, self.reason, self.expect = version, alias, reason, expect
        self.allow_blocked = allow_blocked

    def execute(self, context: Context) -> dict[str, Any]:
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
                allow_blocked=(self.allow_blocked or "").strip() or None,
            )
        except AliasMoved as exc:
            command = f"freestack models {'promote' if alias == 'production' else 'alias'} {spec.name}"
            raise AirflowFailException(
                moved_text(exc, alias, "promotion", f"the Models page, or {command}")
            ) from None
        except RegistryError as exc:
            raise AirflowFailException(
                f"cannot point {spec.model_name}'s {alias} at {wanted!r}: {exc}"
            ) from None
        self.log.info("%s %s: %s -> %s", spec.model_name, alias, before, aliases.get(alias))
        push_note(context, moved_note(spec.model_name, alias, before, aliases))
        return {
            "alias": alias,
            "version": aliases.get(alias),
            "from": before,
            "to": aliases.get(alias),
            "production": aliases.get("production"),
        }


__all__ = ["MoveAliasOperator", "RollbackOperator", "moved_note", "moved_text", "push_note", "triggered_by"]
