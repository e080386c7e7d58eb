"""Deploy: serve the registry's ``production`` version with Seldon Core, locally or on Kubernetes. A thin
operator over :mod:`freestack.serving` and :mod:`freestack.registry`.

- local (the default): :func:`freestack.serving.local.deploy_local` starts the version's model server
  (``python -m freestack_server``) on 127.0.0.1, smoke-tests it against the evaluation's own predictions and
  switches the deployment record blue/green; a failure leaves the old version serving.
- kubernetes: a ``SeldonDeployment`` (validated against the CRD) is applied through the ``kubernetes``
  connection (:func:`freestack.serving.seldon_deployments.start_rollout`), and the task defers to a trigger until
  Seldon reports it ``Available``. With a canary in the spec, a new version first takes the canary
  predictor's share of the traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from freestack.errors import DeployError
from freestack.hooks.credentials import model_source, server_api_key
from freestack.hooks.huggingface import HubEnvironment
from freestack.pipeline_operator import PipelineOperator
from freestack.registry.core import RegistryError, registry_for
from freestack.serving.records import Deployments
from freestack.serving.seldon_deployments import finish_rollout, start_rollout
from freestack.serving.triggers import SeldonDeploymentAvailableTrigger
from freestack.storage import storage_root
from freestack.version import VersionError

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage


def deploy_spec_locally(
    spec: Any, version: str, uri: str, *, reason: str, alias: str | None
) -> dict[str, Any]:
    """Serve ``version`` (at ``uri``) as the spec's local deploy target does (the deploy task, ``freestack
    serve deploy``) with :func:`freestack.serving.local.deploy_local`; the deployment's record."""
    # serving.local loads numpy (its smoke test): imported when the task runs, not at DAG parse time
    from freestack.serving.local import deploy_local

    return deploy_local(
        root_uri=str(storage_root(spec.storage_root)),
        model=spec.model_name,
        name=spec.deployment_name,
        version=version,
        version_uri=uri,
        local=spec.deploy.local,
        reason=reason,
        source=model_source(uri),
        runtime=spec.deploy.runtime,
        alias=alias,
        api_key=server_api_key(spec.deploy),
    )


class DeployOperator(HubEnvironment, PipelineOperator):
    """Serve ``version`` (a version or an alias; default the spec's ``deploy.alias``, ``production``).
    With ``moved_alias`` (what the run before it moved), it skips unless that is the alias served.

    After an alias move in the same run, it serves exactly the version that move set, and it ends in
    success only if that version is served and the alias still points at it: when another run moved the
    alias in between, it fails (no retry), naming that move, instead of reporting a deploy of a version
    that is not what the alias serves."""

    template_fields = ("version", "moved_alias")
    ui_color = "#d6e4f5"

    def __init__(
        self,
        *,
        version: str | None = None,
        reason: str | None = None,
        moved_alias: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.reason = reason
        self.moved_alias = moved_alias

    def execute(self, context: Context) -> dict[str, Any]:
        spec = self.pipeline_spec()
        if self.moved_alias and self.moved_alias.strip() != spec.deploy.alias:
            raise AirflowSkipException(
                f"{self.moved_alias} moved; {spec.deploy.alias} (what is served) did not"
            )
        reg = registry_for(spec)
        alias = None if self.version else spec.deploy.alias
        set_here = self.set_by_this_run(context, spec.deploy.alias)
        try:
            version = reg.resolve(self.version or set_here or spec.deploy.alias)
        except RegistryError as exc:
            raise AirflowFailException(f"nothing to deploy: {exc}") from None
        if set_here:
            self.require_still_set(reg, spec.deploy.alias, version, "before deploying it")
        uri = reg.version_uri(version)
        reason = self.reason or f"{context['dag'].dag_id} run {context['run_id']}"
        try:
            if spec.deploy.target == "kubernetes":
                return self._kubernetes(spec, version, uri, reason)
            record = self._local(spec, version, uri, reason, alias)  # serves `version`, or raises
        except DeployError as exc:
            raise RuntimeError(str(exc)) from None  # retried: a port, the machine or the cluster may be busy
        except VersionError as exc:  # the version's files changed since registration: a retry reads the same
            raise AirflowFailException(str(exc)) from None
        if alias:
            self.require_still_set(reg, alias, version, "while it was deployed")
        self._deployed = record  # what get_openlineage_facets_on_complete reports
        return record

    def set_by_this_run(self, context: Context, alias: str) -> str | None:
        """The version this run's alias move (the task before this one) pointed ``alias`` at, if any."""
        for task_id in sorted(self.upstream_task_ids):
            moved = context["ti"].xcom_pull(task_ids=task_id)
            if isinstance(moved, dict) and moved.get("alias") == alias and moved.get("version"):
                return str(moved["version"])
        return None

    def require_still_set(self, reg, alias: str, version: str, when: str) -> None:
        """Fail (no retry) unless ``alias`` still points at ``version``: another run moved it after this
        one, and that run's own deploy serves what it set; this run's version is not what is served."""
        now = reg.aliases().get(alias)
        if now != version:
            raise AirflowFailException(
                f"{reg.model}'s {alias} moved from {version} to {now} {when} ({reg.last_move(alias) or 'by someone'}); "
                f"{version} is not what {alias} serves: that move's own deploy serves {now}. Trigger this again "
                "to serve it after all"
            )

    def _local(self, spec, version: str, uri: str, reason: str, alias: str | None) -> dict[str, Any]:
        record = deploy_spec_locally(spec, version, uri, reason=reason, alias=alias)
        body = (
            '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, %d], "data": [...]}]}'
            if spec.deploy.runtime == "mlserver"
            else '{"data": {"ndarray": [[...%d features...]]}}'
        ) % len(spec.model_features)
        if spec.model.generative and spec.deploy.runtime == "seldon":
            self.log.info(
                "the OpenAI API (/v1), continuous batching and LoRA versions by name are served on "
                "deploy.runtime: mlserver; this deployment answers Seldon's protocol"
            )
        if spec.model.generative:
            body = (
                '{"inputs": [{"name": "args", "datatype": "BYTES", "shape": [1], "data": ["your prompt"]}]}'
                if spec.deploy.runtime == "mlserver"
                else '{"strData": "your prompt"}'
            )
        self.log.info(
            "%s %s is served at %s (pid %s, %s, %s); try:\n  curl -s -H 'Content-Type: application/json' -d "
            "'%s' %s\nmetrics (Prometheus): %s",
            spec.model_name,
            version,
            record["url"],
            record["pid"],
            record["color"],
            spec.deploy.runtime,
            body,
            record["predict_url"],
            record["metrics_url"],
        )
        return {k: v for k, v in record.items() if k != "history"}

    def _kubernetes(self, spec, version: str, uri: str, reason: str) -> None:
        target = spec.deploy.kubernetes
        model_uri, _env = model_source(uri)  # credentials reach the pod through target.env_secret
        record = start_rollout(spec, version, model_uri, reason=reason)
        self.log.info(
            "applied SeldonDeployment %s/%s (%s %s); waiting for Available",
            target.namespace,
            record["name"],
            record["role"],
            version,
        )
        SeldonDeploymentAvailableTrigger.of(record["name"], target).defer_task(self)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        spec = self.pipeline_spec()
        try:
            record = finish_rollout(spec, event)
        except DeployError as exc:
            raise RuntimeError(str(exc)) from None
        self.log.info("SeldonDeployment %s/%s is Available", event.get("namespace"), event.get("name"))
        if not self.version:
            # with a canary, the new version is the canary's until `freestack serve canary ... promote`
            self.require_still_set(
                registry_for(spec),
                spec.deploy.alias,
                str(record.get("canary_version") or record.get("version")),
                "while it rolled out",
            )
        self._deployed = record  # what get_openlineage_facets_on_complete reports
        return {k: v for k, v in record.items() if k != "history"}

    def openlineage(self, ol: Any) -> OperatorLineage:
        """OpenLineage (:mod:`freestack.lineage_events`): the served version folder -> the deployment's
        record (``deployments/<model>/<name>.json``), with the version as a run facet."""
        record = getattr(self, "_deployed", None)
        if record is None:
            return ol.lineage()
        spec = self.pipeline_spec()
        where = Deployments(str(storage_root(spec.storage_root)), spec.model_name).path(spec.deployment_name)
        version = record.get("canary_version") or record["version"]  # a canary's: the version it rolled out
        uri = registry_for(spec).version_uri(version)
        return ol.lineage(
            [ol.input_dataset(uri)],
            [ol.output_dataset(str(where))],
            ol.model_version_facet(spec.model_name, version, uri),
        )


__all__ = ["DeployOperator"]
