"""Deploy: serve the registry's ``production`` version with Seldon Core, locally or on Kubernetes; and
the manual rollback. Thin operators over ``freestack.serving`` and ``freestack.registry``.

- local (the default): ``freestack.serving.local.deploy_local`` starts the version's supervised
  ``seldon-core-microservice`` on 127.0.0.1, smoke-tests it against the evaluation's own predictions and
  switches the deployment record blue/green; a failure leaves the old version serving.
- kubernetes: a ``SeldonDeployment`` (validated against the CRD) is applied through the ``kubernetes``
  connection, and the task defers to a trigger until Seldon reports it ``Available``. With a canary in
  the spec, a new version first takes the canary predictor's share of the traffic.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from freestack.operators.base import PipelineOperator


def _registry(spec):
    from freestack.registry.core import ModelRegistry
    from freestack.storage import storage_root

    return ModelRegistry(storage_root(spec.storage_root), spec.model_name)


def _root(spec) -> str:
    from freestack.storage import storage_root

    return str(storage_root(spec.storage_root))


class DeployOperator(PipelineOperator):
    """Serve ``version`` (a version or an alias; default the spec's ``deploy.alias``, ``production``)."""

    template_fields = ("version",)
    ui_color = "#d6e4f5"

    def __init__(self, *, version: str | None = None, reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version
        self.reason = reason

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.registry.core import RegistryError

        spec = self.pipeline_spec()
        deploy = spec.deploy_spec
        reg = _registry(spec)
        wanted = self.version or deploy.alias
        try:
            version = reg.resolve(wanted)
        except RegistryError as exc:
            raise AirflowFailException(f"nothing to deploy: {exc}") from None
        uri = reg.version_uri(version)
        reason = self.reason or f"{context['dag'].dag_id} run {context['run_id']}"
        if deploy.target == "kubernetes":
            return self._kubernetes(spec, deploy, version, uri, reason)
        from freestack.serving.local import DeployError, deploy_local

        try:
            record = deploy_local(
                root_uri=_root(spec), model=spec.model_name, name=spec.deployment_name, version=version,
                version_uri=uri, local=deploy.local, spec=spec, reason=reason,
            )  # fmt: skip
        except DeployError as exc:
            raise RuntimeError(str(exc)) from None  # retried: a port or the machine may be briefly busy
        self.log.info(
            "%s %s is served at %s (pid %s, %s); try:\n  curl -s -H 'Content-Type: application/json' -d "
            "'{\"data\": {\"ndarray\": [[...%d features...]]}}' %s\nmetrics (Prometheus): %s",
            spec.model_name, version, record["url"], record["pid"], record["color"], len(spec.model_features),
            record["predict_url"], record["metrics_url"],
        )  # fmt: skip
        return {k: v for k, v in record.items() if k != "history"}

    # -- kubernetes -----------------------------------------------------------------------------------
    def _kubernetes(self, spec, deploy, version: str, uri: str, reason: str) -> dict[str, Any]:
        from freestack.serving import k8s
        from freestack.serving.local import Deployments, model_source
        from freestack.triggers.seldon import SeldonDeploymentAvailableTrigger

        target = deploy.kubernetes
        name = spec.deployment_name
        model_uri, _env = model_source(uri)  # credentials reach the pod through target.env_secret
        current = k8s.get(name, target.namespace, target.conn_id)
        serving = _served_version(current)
        if target.canary is not None and serving and serving[0] != version:
            main_version, main_uri = serving
            manifest = k8s.build_manifest(
                name, model=spec.model_name, version=main_version, model_uri=main_uri, target=target,
                canary_version=version, canary_uri=model_uri,
            )  # fmt: skip
            role = "canary"
        else:
            manifest = k8s.build_manifest(name, model=spec.model_name, version=version, model_uri=model_uri, target=target)
            role = "main"
        k8s.validate_manifest(manifest)
        stored = k8s.apply(manifest, target.conn_id)
        deployments = Deployments(_root(spec), spec.model_name)
        old, token = deployments.read(name)
        record = {
            "name": name, "model": spec.model_name, "target": "kubernetes", "state": "rolling-out",
            "version": version if role == "main" else (old or {}).get("version", serving[0] if serving else None),
            "canary_version": version if role == "canary" else None,
            "canary_traffic": target.canary.traffic if role == "canary" else 0,
            "namespace": target.namespace, "conn_id": target.conn_id,
            "generation": (stored.get("metadata") or {}).get("generation"), "reason": reason,
        }  # fmt: skip
        deployments.write(name, {**(old or {}), **record}, token)
        self.log.info("applied SeldonDeployment %s/%s (%s %s); waiting for Available", target.namespace, name, role,
                      version)  # fmt: skip
        from datetime import timedelta

        self.defer(
            trigger=SeldonDeploymentAvailableTrigger(
                name=name, namespace=target.namespace, conn_id=target.conn_id,
                timeout_seconds=target.timeout_minutes * 60, poll_seconds=target.poll_seconds,
            ),
            method_name="execute_complete",
            timeout=timedelta(minutes=target.timeout_minutes + 5),
        )  # fmt: skip

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        from freestack.serving.local import Deployments

        spec = self.pipeline_spec()
        deployments = Deployments(_root(spec), spec.model_name)
        record, token = deployments.read(spec.deployment_name)
        if event.get("status") != "available":
            raise RuntimeError(
                f"SeldonDeployment {event.get('namespace')}/{event.get('name')} did not become Available "
                f"({event.get('status')}): {event.get('message')}"
            )
        record = {**(record or {}), "state": "serving", "message": event.get("message")}
        deployments.write(spec.deployment_name, record, token)
        self.log.info("SeldonDeployment %s/%s is Available", event.get("namespace"), event.get("name"))
        return {k: v for k, v in record.items() if k != "history"}


def _served_version(obj: dict[str, Any] | None) -> tuple[str, str] | None:
    """(version, model URI) of the main predictor of an existing SeldonDeployment."""
    if not obj:
        return None
    for pred in (obj.get("spec") or {}).get("predictors", []):
        if pred.get("name") != "main":
            continue
        for comp in pred.get("componentSpecs") or []:
            for c in (comp.get("spec") or {}).get("containers", []):
                env = {e.get("name"): e.get("value") for e in c.get("env", [])}
                if env.get("FREESTACK_MODEL_VERSION") and env.get("FREESTACK_MODEL_URI"):
                    return env["FREESTACK_MODEL_VERSION"], env["FREESTACK_MODEL_URI"]
    return None


class RollbackOperator(PipelineOperator):
    """Move ``production`` to ``version`` (``previous``: the version before the current one)."""

    template_fields = ("version",)
    ui_color = "#f5dcd6"

    def __init__(self, *, version: str = "previous", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version

    def execute(self, context: Context) -> dict[str, Any]:
        from freestack.registry.core import RegistryError

        spec = self.pipeline_spec()
        reg = _registry(spec)
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


__all__ = ["DeployOperator", "RollbackOperator"]
