"""Seldon Core v1 on Kubernetes: apply SeldonDeployments, follow their rollout, move canary traffic.

The deploy stage's Kubernetes target, over the cncf.kubernetes provider's ``KubernetesHook`` (its
connection says which cluster and which credentials) through :mod:`freestack.kube.api`'s session, as the
train stage reaches its PyTorchJobs; the manifests themselves are :mod:`freestack.serving.manifests`::

    stored = apply(manifest, conn_id)        # create, or replace carrying resourceVersion
    # ... SeldonDeploymentAvailableTrigger waits for status.state == Available ...
    smoke_rollout(spec, record)              # the version's test rows, answered as evaluated
    promote_canary(KubeRef(name, namespace, conn_id))  # or rollback_canary / set_traffic

Every call that reaches the cluster raises ``DeployError`` (or its ``KubernetesUnavailable``
subclass when the cluster cannot be reached or is failing) with a message naming the API
server, the namespace, the object and what to check.

Light at import: ``kubernetes`` and Airflow are imported inside the functions.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from freestack.errors import DeployError
from freestack.kube import KubeRef
from freestack.kube.api import AnswerWords, Session
from freestack.kube.api import api_session as kube_session
from freestack.kube.api import delete as kube_delete
from freestack.kube.manifests import MANAGED_BY, MANAGED_BY_KEY, label_value
from freestack.registry.core import registry_for
from freestack.serving.manifests import (
    CANARY,
    CANARY_URI_KEY,
    CANARY_VERSION_KEY,
    CRD_NAME,
    ENV_URI,
    GROUP,
    MAIN,
    MODEL_URI_KEY,
    PLURAL,
    VERSION,
    VERSION_KEY,
    build_manifest,
    predictor_env,
    predictor_version,
    served_version,
    split_predictors,
    validate_manifest,
)
from freestack.serving.records import Deployments
from freestack.storage import storage_root

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

_CONFLICT_RETRIES = 5
#: test rows a rollout's smoke test sends (as many as deploy.local.smoke_rows sends by default)
SMOKE_ROWS = 32


class KubernetesUnavailable(DeployError):
    """The API server could not be reached, its configuration could not be loaded, or it is failing
    (5xx, 429, rejected credentials). Retrying later may help."""


# ---------------------------------------------------------------------------------------------------------
# talking to the API server


#: what the API server's answers about a SeldonDeployment say to check (:func:`freestack.kube.api.answer_text`)
ANSWER_WORDS = AnswerWords(
    kind="SeldonDeployment",
    crd=CRD_NAME,
    verbs="get, create, update, patch and delete",
    namespace_setting="deploy.kubernetes.namespace",
    not_installed="Seldon Core's CRD",
    install="Install Seldon Core 1.17 (the seldon-core-operator Helm chart) or point the connection at a "
    "cluster that has it.",
    gone=". The object does not exist (deleted meanwhile?); deploy it again.",
    conflict=". It changed while we were updating it; run the deploy again.",
    refused="The API server (or Seldon's admission webhook) rejected the manifest; fix the deploy: block of "
    "the pipeline spec.",
    webhook_down=". Seldon Core's admission webhook could not be called: check that the "
    "seldon-controller-manager is running ('kubectl get pods -n seldon-system').",
)


class _Session(Session):
    """A session on one SeldonDeployment, which can also POST through the API server's service proxy."""

    group, version, plural = GROUP, VERSION, PLURAL

    def secret_value(self, secret: str, key: str) -> str:
        """Value ``key`` of Secret ``secret`` in the deployment's namespace (``deploy.api_key``: the key the
        smoke test sends, as the clients do; the worker's account needs ``get`` on that Secret)."""
        from kubernetes.client import CoreV1Api

        self.action = f"read Secret {secret} (deploy.api_key) for"
        data = CoreV1Api(self.api.api_client).read_namespaced_secret(secret, self.ref.namespace).data or {}
        if key not in data:
            raise DeployError(
                f"Secret {self.ref.namespace}/{secret} has no key {key!r} (deploy.api_key.secret_key); it has "
                f"{', '.join(sorted(data)) or 'none'}: add it (`kubectl create secret generic {secret} "
                f"--from-literal={key}=<the key>`) or name the one that holds the key"
            )
        return base64.b64decode(data[key]).decode()

    def proxy_post(
        self, url: str, payload: Any, *, timeout: float, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """POST ``payload`` to ``url`` on this API server (a service proxy path) with the connection's
        credentials (and ``headers`` for the pod: the proxy drops ``Authorization``, its own credential);
        answers as :func:`freestack.serving.smoke.http_json` does: (status, JSON body)."""
        from kubernetes.client.exceptions import ApiException

        self.action = "smoke-test"
        sent = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        try:
            resp = self.api.api_client.call_api(
                url.removeprefix(self.host),
                "POST",
                body=payload,
                auth_settings=["BearerToken"],
                header_params=sent,
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=timeout,
            )
            code, raw = resp.status, resp.data
        except ApiException as exc:
            if not exc.status:
                raise
            code, raw = exc.status, exc.body or b""
        try:
            return code, json.loads(raw)
        except ValueError:
            return code, raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def api_session(deployment: KubeRef) -> AbstractContextManager[_Session]:
    """A session on the connection's cluster for one SeldonDeployment (:func:`freestack.kube.api.api_session`):
    every failure inside becomes a DeployError naming the API server, the object and what to check."""
    return kube_session(
        deployment,
        session_class=_Session,
        words=ANSWER_WORDS,
        error=DeployError,
        unavailable=KubernetesUnavailable,
    )


def _deployment(manifest: dict[str, Any], conn_id: str) -> KubeRef:
    meta = manifest.get("metadata") or {}
    if not meta.get("name") or not meta.get("namespace"):
        raise ValueError("the manifest needs metadata.name and metadata.namespace (use build_manifest)")
    return KubeRef(meta["name"], meta["namespace"], conn_id)


def apply(
    manifest: dict[str, Any], conn_id: str, *, force: bool = False, dry_run: bool = False
) -> dict[str, Any]:
    """Create the SeldonDeployment, or replace the one that exists (carrying its ``resourceVersion``; on a
    409 conflict it is read again and the replace retried). Returns the object as stored.

    An existing object that freestack does not manage (no ``app.kubernetes.io/managed-by: freestack``)
    is left alone unless ``force``. ``dry_run`` asks the API server to validate without storing."""
    from kubernetes.client.exceptions import ApiException

    deployment = _deployment(manifest, conn_id)
    kw = {"dry_run": "All"} if dry_run else {}
    with api_session(deployment) as s:
        body = copy.deepcopy(manifest)
        body.pop("status", None)
        body["metadata"].pop("resourceVersion", None)
        create = True
        for _ in range(_CONFLICT_RETRIES):
            if create:
                try:
                    return s.create(body, **kw)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
            current = s.read()  # it exists: replace it
            if current is None:  # deleted meanwhile: create again
                create = True
                continue
            managed = ((current.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_KEY)
            if managed != MANAGED_BY and not force:
                raise DeployError(
                    f"SeldonDeployment {deployment.describe()} already exists on {s.host} and is not managed "
                    f"by freestack (label {MANAGED_BY_KEY}={managed!r}); delete it, or set deploy.name to "
                    "another name"
                )
            update = copy.deepcopy(body)
            update["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                return s.replace(update, **kw)
            except ApiException as exc:
                if exc.status not in (404, 409):  # deleted, or changed since we read it: look again
                    raise
                create = exc.status == 404
        raise DeployError(
            f"SeldonDeployment {deployment.describe()} on {s.host} kept changing while being applied "
            f"({_CONFLICT_RETRIES} conflicts in a row): another process is writing it; try again",
            status=409,
        )


def get(deployment: KubeRef) -> dict[str, Any] | None:
    """The SeldonDeployment as stored, or None when it does not exist."""
    with api_session(deployment) as s:
        return s.read()


def delete(deployment: KubeRef) -> bool:
    """Delete the SeldonDeployment; False when there was none."""
    return kube_delete(deployment, session=api_session)


def _update(
    deployment: KubeRef,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    *,
    patch: bool = False,
) -> dict[str, Any]:
    """Read, ``change`` a copy (None: nothing to do), write it back conditioned on the resourceVersion
    that was read (a replace, or a merge patch of ``spec.predictors`` that carries it), retrying conflicts."""
    from kubernetes.client.exceptions import ApiException

    with api_session(deployment) as s:
        for _ in range(_CONFLICT_RETRIES):
            current = s.read()
            if current is None:
                raise DeployError(
                    f"SeldonDeployment {deployment.describe()} does not exist on {s.host} "
                    f"(connection {deployment.conn_id!r}); deploy it first",
                    status=404,
                )
            desired = change(copy.deepcopy(current))
            if desired is None:
                return current
            rv = current["metadata"]["resourceVersion"]
            try:
                if patch:
                    # a merge patch replaces lists whole; the resourceVersion in it is a precondition (409)
                    return s.merge_patch(
                        {
                            "metadata": {"resourceVersion": rv},
                            "spec": {"predictors": desired["spec"]["predictors"]},
                        }
                    )
                desired.pop("status", None)
                desired["metadata"]["resourceVersion"] = rv
                return s.replace(desired)
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise
        raise DeployError(
            f"SeldonDeployment {deployment.describe()} on {s.host} kept changing ({_CONFLICT_RETRIES} conflicts "
            "in a row): another process is writing it; try again",
            status=409,
        )


def set_traffic(deployment: KubeRef, *, canary_traffic: int) -> dict[str, Any]:
    """Send ``canary_traffic`` percent of requests to the canary predictor and the rest to main (a merge
    patch conditioned on the resourceVersion just read)."""
    if (
        isinstance(canary_traffic, bool)
        or not isinstance(canary_traffic, int)
        or not 0 <= canary_traffic <= 100
    ):
        raise ValueError(f"canary_traffic must be an integer percentage 0..100, got {canary_traffic!r}")

    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        main, canary = split_predictors(obj)
        if canary is None:
            raise DeployError(
                f"SeldonDeployment {deployment.describe()} has no {CANARY!r} predictor to send traffic to; "
                "deploy a canary first (deploy.kubernetes.canary)"
            )
        if main.get("traffic") == 100 - canary_traffic and canary.get("traffic") == canary_traffic:
            return None
        main["traffic"], canary["traffic"] = 100 - canary_traffic, canary_traffic
        return obj

    return _update(deployment, change, patch=True)


def promote_canary(deployment: KubeRef, *, version: str | None = None) -> dict[str, Any]:
    """The canary's container (image, version, URI) becomes main's, the canary predictor goes, main takes
    all traffic. With ``version``: the canary must serve that version; when there is no canary and main
    already serves it, nothing changes (so a retried task is harmless)."""

    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        main, canary = split_predictors(obj)
        if canary is None:
            if (
                version is not None
                and predictor_version(main) == version
                and main.get("traffic") in (100, None)
            ):
                return None
            raise DeployError(
                f"SeldonDeployment {deployment.describe()} has no {CANARY!r} predictor to promote "
                f"(main serves version {predictor_version(main)!r})"
            )
        new_version = predictor_version(canary)
        if version is not None and new_version != version:
            raise DeployError(
                f"the canary of SeldonDeployment {deployment.describe()} serves version {new_version!r}, not "
                f"{version!r}: refusing to promote it"
            )
        main["componentSpecs"] = copy.deepcopy(canary["componentSpecs"])
        main["graph"] = copy.deepcopy(canary["graph"])
        main["labels"] = {**(main.get("labels") or {}), **(canary.get("labels") or {})}
        main["traffic"] = 100
        obj["spec"]["predictors"] = [main]
        meta = obj["metadata"]
        labels, annotations = meta.setdefault("labels", {}), meta.setdefault("annotations", {})
        labels.pop(CANARY_VERSION_KEY, None)
        if new_version is not None:
            labels[VERSION_KEY] = label_value(new_version)
            annotations[VERSION_KEY] = new_version
        uri = predictor_env(canary, ENV_URI)
        if uri is not None:
            annotations[MODEL_URI_KEY] = uri
        annotations.pop(CANARY_VERSION_KEY, None)
        annotations.pop(CANARY_URI_KEY, None)
        return obj

    return _update(deployment, change)


def rollback_canary(deployment: KubeRef) -> dict[str, Any]:
    """Remove the canary predictor; main takes all traffic. Nothing changes when there is no canary."""

    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        main, canary = split_predictors(obj)
        if canary is None and main.get("traffic") in (100, None):
            return None
        main["traffic"] = 100
        obj["spec"]["predictors"] = [main]
        meta = obj["metadata"]
        (meta.get("labels") or {}).pop(CANARY_VERSION_KEY, None)
        for key in (CANARY_VERSION_KEY, CANARY_URI_KEY):
            (meta.get("annotations") or {}).pop(key, None)
        return obj

    return _update(deployment, change)


# ---------------------------------------------------------------------------------------------------------
# a deploy's rollout


def start_rollout(spec: PipelineSpec, version: str, model_uri: str, *, reason: str) -> dict[str, Any]:
    """Apply the SeldonDeployment that serves ``version`` (from ``model_uri``, as the pod reads it) and
    record the rollout; the caller then waits for Available. With a canary in the spec and another
    version serving, the new one becomes the canary predictor; otherwise it replaces the main one."""
    from freestack.serving.smoke import smoke_sample
    from freestack_server.core.requestlog import monitoring_uri

    target = spec.deploy.kubernetes
    name = spec.deployment_name
    smoke_sample(registry_for(spec).version_uri(version), SMOKE_ROWS)  # no stored test rows: not rolled out
    serving = served_version(get(KubeRef(name, target.namespace, target.conn_id)))
    canary = target.canary is not None and serving is not None and serving[0] != version
    logs = monitoring_uri(str(storage_root(spec.storage_root)), spec.model_name)
    main_version, main_uri = serving if canary else (version, model_uri)
    manifest = build_manifest(
        name,
        model=spec.model_name,
        version=main_version,
        model_uri=main_uri,
        target=target,
        canary_version=version if canary else None,
        canary_uri=model_uri if canary else None,
        request_log_uri=logs,
        runtime=spec.deploy.runtime,
        openai_api=spec.model.generative,
    )
    validate_manifest(manifest)
    stored = apply(manifest, target.conn_id)
    deployments = Deployments(str(storage_root(spec.storage_root)), spec.model_name)
    old, token = deployments.read(name)
    record = {
        "name": name,
        "model": spec.model_name,
        "target": "kubernetes",
        "state": "rolling-out",
        "version": (old or {}).get("version", serving[0]) if canary else version,
        "canary_version": version if canary else None,
        "canary_traffic": target.canary.traffic if canary else 0,
        "namespace": target.namespace,
        "conn_id": target.conn_id,
        "role": CANARY if canary else MAIN,
        "generation": (stored.get("metadata") or {}).get("generation"),
        "reason": reason,
    }
    deployments.write(name, {**(old or {}), **record}, token)
    return record


def finish_rollout(
    spec: PipelineSpec, event: dict[str, Any], sample: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Record what the wait for Available ended with, once the new version answers the smoke test
    (:func:`smoke_rollout`, with ``sample`` for a version no evaluation wrote one for); DeployError when
    it did not become Available or answers otherwise."""

    if event.get("status") != "available":
        raise DeployError(
            f"SeldonDeployment {event.get('namespace')}/{event.get('name')} did not become Available "
            f"({event.get('status')}): {event.get('message')}"
        )
    deployments = Deployments(str(storage_root(spec.storage_root)), spec.model_name)
    record, token = deployments.read(spec.deployment_name)
    checked = smoke_rollout(spec, record or {}, sample)
    record = {
        **(record or {}),
        "state": "serving",
        "message": event.get("message"),
        "smoke": {k: checked.get(k) for k in ("rows", "max_abs_diff", "tolerance")},
    }
    deployments.write(spec.deployment_name, record, token)
    return record


def predictor_service(name: str, predictor: str) -> str:
    """The Service Seldon Core 1.17 gives a predictor, in front of its executor (port ``http``):
    ``<name>-<predictor>``, or past 63 characters ``seldon-`` and the md5 of that, as its operator names it."""
    key = f"{name}-{predictor}"
    return key if len(key) <= 63 else "seldon-" + hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()


def smoke_rollout(
    spec: PipelineSpec, record: dict[str, Any], sample: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Send the rolled-out version's stored test rows (``evaluation/smoke.json``) to its predictor and
    require the evaluation's answers, with the local deploy's smoke test: Available only says the pods are
    ready, not that they serve the evaluated model. The request goes through the API server's service
    proxy, so the worker needs no route into the cluster. A canary that fails is removed again."""
    from freestack.serving.smoke import smoke_sample, smoke_test, smoke_test_v2, truncated

    target, name = spec.deploy.kubernetes, spec.deployment_name
    deployment = KubeRef(name, target.namespace, target.conn_id)
    canary = record.get("role") == CANARY
    version = record.get("canary_version" if canary else "version")
    if not version:
        raise DeployError(f"no rollout of {name} is recorded: nothing to smoke-test; deploy again")
    uri = registry_for(spec).version_uri(version)
    sample = smoke_sample(uri, SMOKE_ROWS) if sample is None else truncated(sample, SMOKE_ROWS)
    service = predictor_service(name, CANARY if canary else MAIN)
    path = f"/api/v1/namespaces/{deployment.namespace}/services/{service}:http/proxy"
    key = spec.deploy.api_key
    try:
        with api_session(deployment) as s:
            if spec.deploy.runtime == "mlserver":  # a key travels as api-key: the proxy drops Authorization
                sent = {"api-key": s.secret_value(key.secret, key.secret_key)} if key and key.secret else {}
                post = functools.partial(s.proxy_post, headers=sent)
                return smoke_test_v2(s.host + path, spec.model_name, sample, post=post)
            return smoke_test(s.host + path, sample, post=s.proxy_post)
    except DeployError as exc:
        if not canary or isinstance(exc, KubernetesUnavailable):
            raise
        rollback_canary(deployment)
        raise DeployError(
            f"{exc}\nThe canary ({version}) was removed: {record.get('version')} takes all traffic again."
        ) from exc


__all__ = [
    "DeployError",
    "ANSWER_WORDS",
    "KubernetesUnavailable",
    "apply",
    "delete",
    "finish_rollout",
    "get",
    "promote_canary",
    "rollback_canary",
    "set_traffic",
    "start_rollout",
    "SMOKE_ROWS",
    "predictor_service",
    "smoke_rollout",
]
