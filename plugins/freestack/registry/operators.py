"""Moving aliases from Airflow: ``promote`` (production <- the gated candidate) in ``<p>_train`` and
``move_production`` in ``<p>_rollback``. Thin operators over :class:`freestack.registry.core.ModelRegistry`;
the serving stage's ``deploy`` follows them.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from freestack.hooks.huggingface import hub_settings
from freestack.pipeline_operator import PipelineOperator


class PromoteOperator(PipelineOperator):
    """Move ``production`` (and ``previous``) to the new version atomically; on the Hub too."""

    ui_color = "#c8ecd4"

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.registry.core import registry_for
        from freestack.registry.hub import promote_on_hub

        spec = self.pipeline_spec()
        ti = context["ti"]
        registered = ti.xcom_pull(task_ids="gate", key="registered")
        decision = ti.xcom_pull(task_ids="gate")
        aliases = registry_for(spec).promote(
            registered["version"], reason=f"gate: {'; '.join(decision['reasons'])}"[:500]
        )
        if spec.model.hub_repo and registered.get("hub"):
            token, endpoint = hub_settings()
            promote_on_hub(spec.model.hub_repo, registered["version"], token, endpoint=endpoint)
        self.log.info("%s production -> %s (previous: %s)", spec.model_name, aliases.get("production"),
                      aliases.get("previous"))  # fmt: skip
        return {k: aliases.get(k) for k in ("production", "previous", "staging")}


class RollbackOperator(PipelineOperator):
    """Move ``production`` to ``version`` (``previous``: the version before the current one)."""

    template_fields = ("version",)
    ui_color = "#f5dcd6"

    def __init__(self, *, version: str = "previous", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.registry.core import RegistryError, registry_for

        spec = self.pipeline_spec()
        reg = registry_for(spec)
        wanted = (self.version or "previous").strip()
        reason = f"manual rollback ({context['run_id']})"
        try:
            before = reg.aliases().get("production")
            if wanted == "previous":
                aliases = reg.rollback(reason=reason)
            else:
                aliases = reg.promote(wanted, reason=reason)
        except RegistryError as exc:
            raise AirflowFailException(f"cannot roll back {spec.model_name}: {exc}") from None
        self.log.info("%s production: %s -> %s", spec.model_name, before, aliases.get("production"))
        return {"from": before, "production": aliases.get("production"), "previous": aliases.get("previous")}


__all__ = ["PromoteOperator", "RollbackOperator"]
