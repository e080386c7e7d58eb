"""Seldon Core v1 on Kubernetes: SeldonDeployment manifests, validation against the CRD, apply, traffic.

The deploy stage's Kubernetes target. Pure functions over plain dicts, plus thin calls to the
API server through the cncf.kubernetes provider's ``KubernetesHook`` (its connection says which
cluster and which credentials)::

    manifest = build_manifest("digits", model="digits", version="3", model_uri="s3://.../3",
                              target=spec.deploy_spec.kubernetes, canary_version=..., canary_uri=...)
    validate_manifest(manifest)              # ManifestInvalid names every violation's path
    stored = apply(manifest, conn_id)        # create, or replace carrying resourceVersion
    # ... SeldonDeploymentAvailableTrigger waits for status.state == Available ...
    promote_canary(name, namespace, conn_id) # or rollback_canary / set_traffic

Every call that reaches the cluster raises ``DeployError`` (or its ``KubernetesUnavailable``
subclass when the cluster cannot be reached or is failing) with a message naming the API
server, the namespace, the object and what to check.

Light at import: ``kubernetes``, ``jsonschema`` and Airflow are imported inside the functions.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError

if TYPE_CHECKING:
    from freestack.serving.spec import KubernetesTarget

GROUP = "machinelearning.seldon.io"
VERSION = "v1"
PLURAL = "seldondeployments"
KIND = "SeldonDeployment"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"

MAIN = "main"
CANARY = "canary"
CONTAINER = "model"
HTTP_PORT = 9000
HEALTH_PATH = "/health/ping"

MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "freestack"
MODEL_KEY = "freestack.io/model"
VERSION_KEY = "freestack.io/version"
CANARY_VERSION_KEY = "freestack.io/canary-version"
MODEL_URI_KEY = "freestack.io/model-uri"
CANARY_URI_KEY = "freestack.io/canary-uri"

ENV_URI = "FREESTACK_MODEL_URI"
ENV_VERSION = "FREESTACK_MODEL_VERSION"
ENV_NAME = "FREESTACK_MODEL_NAME"

CRD_ENV = "FREESTACK_SELDON_CRD"

_CONFLICT_RETRIES = 5
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_QUALIFIED_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)

# ---------------------------------------------------------------------------------------------------------
# errors

try:  # one DeployError for every deploy target, if the package defines a shared one
    from freestack.errors import DeployError as _DeployBase  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on what freestack.errors holds
    _DeployBase = FreestackError


class DeployError(_DeployBase):
    """The Kubernetes API refused a deploy step (RBAC, missing CRD or namespace, invalid object, ...).

    ``status`` is the HTTP status the API server answered, when there was one."""

    def __init__(self, message: str, *, status: int | None = None):
        Exception.__init__(self, message)
        self.status = status


class KubernetesUnavailable(DeployError):
    """The API server could not be reached, its configuration could not be loaded, or it is failing
    (5xx, 429, rejected credentials). Retrying later may help."""


class ManifestInvalid(FreestackError, ValueError):
    """A manifest does not match the SeldonDeployment CRD. ``violations`` holds (JSON path, message)."""

    def __init__(self, message: str, violations: list[tuple[str, str]]):
        super().__init__(message)
        self.violations = violations


# ---------------------------------------------------------------------------------------------------------
# manifests


def label_value(value: Any) -> str:
    """``value`` made a valid Kubernetes label value: at most 63 of ``[A-Za-z0-9_.-]``, alphanumeric at both
    ends (other characters become ``-``). The exact value goes into an annotation next to it."""
    v = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value))[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", v)


def _container(target: KubernetesTarget, *, model: str, version: str, model_uri: str) -> dict[str, Any]:
    env = [
        {"name": ENV_URI, "value": model_uri},
        {"name": ENV_VERSION, "value": version},
        {"name": ENV_NAME, "value": model},
        {"name": "GUNICORN_WORKERS", "value": str(target.workers)},
        {"name": "GUNICORN_THREADS", "value": str(target.threads)},
    ]
    probe = {"httpGet": {"path": HEALTH_PATH, "port": "http", "scheme": "HTTP"}, "timeoutSeconds": 5}
    # loading a model (a download from object storage) may take a while: the startup probe allows up to
    # the deploy timeout before liveness starts counting
    startup_failures = max(12, int(target.timeout_minutes * 60 / 5))
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": target.image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": copy.deepcopy(target.resources),
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": startup_failures},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if target.env_secret:
        container["envFrom"] = [{"secretRef": {"name": target.env_secret}}]
    return container


def _predictor(
    name: str, target: KubernetesTarget, *, replicas: int, traffic: int, model: str, version: str, uri: str
) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [_container(target, model=model, version=version, model_uri=uri)]}
    if target.service_account:
        pod["serviceAccountName"] = target.service_account
    return {
        "name": name,
        "replicas": replicas,
        "traffic": traffic,
        "labels": {VERSION_KEY: label_value(version), MANAGED_BY_KEY: MANAGED_BY},
        "progressDeadlineSeconds": int(target.timeout_minutes * 60),
        "componentSpecs": [{"spec": pod}],
        "graph": {"name": CONTAINER, "type": "MODEL", "endpoint": {"type": "REST"}, "children": []},
    }


def build_manifest(
    name: str,
    *,
    model: str,
    version: str,
    model_uri: str,
    target: KubernetesTarget | dict[str, Any],
    canary_version: str | None = None,
    canary_uri: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A ``machinelearning.seldon.io/v1`` SeldonDeployment serving ``model`` ``version`` from ``model_uri``.

    One predictor ``main``; with ``canary_version`` and ``canary_uri`` (and ``target.canary`` set) a second
    predictor ``canary`` that takes ``target.canary.traffic`` percent of the requests."""
    from freestack.serving.spec import KubernetesTarget

    if isinstance(target, dict):
        target = KubernetesTarget.model_validate(target)
    if not _DNS1123_LABEL.match(name) or len(name) > 63:
        raise ValueError(
            f"deployment name {name!r} is not a valid Kubernetes name: use lowercase letters, digits and '-', "
            "at most 63 characters (set deploy.name in the pipeline spec)"
        )
    for what, v in (("model", model), ("version", version), ("model_uri", model_uri)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{what} must be a non-empty string, got {v!r}")
    if (canary_version is None) != (canary_uri is None):
        given, missing = ("canary_version", "canary_uri") if canary_uri is None else ("canary_uri", "canary_version")
        raise ValueError(f"{given} was given without {missing}: a canary needs both its version and its URI")
    canary = canary_version is not None
    if canary and target.canary is None:
        raise ValueError(
            f"canary version {canary_version!r} was given but deploy.kubernetes.canary is not set: add "
            "'canary: {traffic: 10, replicas: 1}' to the deploy block, or deploy without a canary"
        )

    meta_labels = {MANAGED_BY_KEY: MANAGED_BY, MODEL_KEY: label_value(model), VERSION_KEY: label_value(version)}
    annotations = {MODEL_KEY: model, VERSION_KEY: version, MODEL_URI_KEY: model_uri}
    if canary:
        meta_labels[CANARY_VERSION_KEY] = label_value(canary_version)
        annotations[CANARY_VERSION_KEY] = canary_version
        annotations[CANARY_URI_KEY] = canary_uri
    for key, value in (labels or {}).items():
        if not re.match(_QUALIFIED_KEY, str(key)) or len(str(key)) > 316:
            raise ValueError(
                f"label key {key!r} is not a valid Kubernetes label key ([prefix/]name; name at most 63 of "
                "letters, digits, '-', '_', '.')"
            )
        meta_labels.setdefault(str(key), label_value(value))

    main_traffic = 100 - target.canary.traffic if canary else 100
    predictors = [
        _predictor(MAIN, target, replicas=target.replicas, traffic=main_traffic, model=model, version=version,
                   uri=model_uri)
    ]
    if canary:
        predictors.append(
            _predictor(CANARY, target, replicas=target.canary.replicas, traffic=target.canary.traffic,
                       model=model, version=canary_version, uri=canary_uri)
        )
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": target.namespace, "labels": meta_labels,
                     "annotations": annotations},
        "spec": {"name": name, "protocol": "seldon", "predictors": predictors},
    }


# ---------------------------------------------------------------------------------------------------------
# validation against the CRD


def default_crd_path() -> Path:
    """The SeldonDeployment CRD to validate against: ``FREESTACK_SELDON_CRD``, else the copy in the
    checkout (``include/serving/seldondeployment-crd.yaml``), else ``../shared/seldon/`` next to it."""
    env = os.environ.get(CRD_ENV)
    if env:
        return Path(env).expanduser()
    from freestack.config import checkout_dir

    root = checkout_dir()
    candidates = [
        root / "include" / "serving" / "seldondeployment-crd.yaml",
        root.parent / "shared" / "seldon" / "seldondeployment-crd.yaml",
    ]
    return next((p for p in candidates if p.is_file()), candidates[0])


def _convert(node: Any, strict: bool) -> Any:
    """A Kubernetes structural schema node as plain JSON Schema (draft 7).

    - ``x-kubernetes-int-or-string: true`` accepts an integer or a string (any ``pattern`` applies to strings);
    - ``nullable: true`` also accepts null;
    - with ``strict``, objects that list ``properties`` reject unknown fields (as ``kubectl --validate=strict``
      and ``fieldValidation=Strict`` do) unless they say ``x-kubernetes-preserve-unknown-fields``.
    """
    if not isinstance(node, dict):
        return node
    out = {k: v for k, v in node.items() if k != "description"}
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _convert(v, strict) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _convert(out["items"], strict)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(out["additionalProperties"], strict)
    for kw in ("anyOf", "allOf", "oneOf"):
        if isinstance(out.get(kw), list):
            out[kw] = [_convert(s, strict) for s in out[kw]]
    if isinstance(out.get("not"), dict):
        out["not"] = _convert(out["not"], strict)
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and "type" in out:
        t = out["type"]
        out["type"] = [*t, "null"] if isinstance(t, list) else [t, "null"]
        if isinstance(out.get("enum"), list):
            out["enum"] = [*out["enum"], None]
    if (
        strict
        and out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _object_meta_schema() -> dict[str, Any]:
    # The CRD leaves metadata open (``type: object``): the API server checks it. Check what a deploy sets.
    return {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 63, "pattern": _DNS1123_LABEL.pattern},
            "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS1123_LABEL.pattern},
            "labels": {
                "type": "object",
                "propertyNames": {"pattern": _QUALIFIED_KEY, "maxLength": 316},
                "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE},
            },
            "annotations": {
                "type": "object",
                "propertyNames": {"pattern": _QUALIFIED_KEY, "maxLength": 316},
                "additionalProperties": {"type": "string"},
            },
            "resourceVersion": {"type": "string"},
            "generation": {"type": "integer"},
            "uid": {"type": "string"},
        },
    }


@lru_cache(maxsize=4)
def _validator(path: str, mtime_ns: int, size: int):  # the file's identity keys the cache
    import jsonschema
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, encoding="utf-8") as fh:
            docs = [d for d in yaml.load_all(fh, Loader=loader) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise FreestackError(f"cannot read the SeldonDeployment CRD {path}: {exc}") from None
    crd = next((d for d in docs if d.get("kind") == "CustomResourceDefinition"), None)
    versions = ((crd or {}).get("spec") or {}).get("versions") or []
    version = next((v for v in versions if v.get("name") == VERSION), None)
    schema = ((version or {}).get("schema") or {}).get("openAPIV3Schema")
    if not schema:
        raise FreestackError(
            f"{path} is not the SeldonDeployment CRD with an openAPIV3Schema for version {VERSION}; "
            f"point {CRD_ENV} at seldondeployment-crd.yaml from Seldon Core 1.17"
        )
    schema = _convert(schema, strict=True)
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"const": API_VERSION}
    props["kind"] = {"const": KIND}
    props["metadata"] = _object_meta_schema()
    props["status"] = {"type": "object"}  # the controller's to write: accepted as it is on a stored object
    schema["additionalProperties"] = False

    def _int_range(bits: int):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        return lambda v: not isinstance(v, int) or isinstance(v, bool) or lo <= v <= hi

    checker = jsonschema.FormatChecker(formats=())
    checker.checks("int32")(_int_range(32))
    checker.checks("int64")(_int_range(64))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema, format_checker=checker)


def _semantic_violations(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """What Seldon's admission webhook rejects that the schema does not say."""
    out: list[tuple[str, str]] = []
    predictors = (manifest.get("spec") or {}).get("predictors") or []
    seen: set[str] = set()
    total, counted = 0, 0
    for i, p in enumerate(predictors):
        where = f"$.spec.predictors[{i}]"
        if p.get("name") in seen:
            out.append((f"{where}.name", f"predictor name {p['name']!r} is used twice"))
        seen.add(p.get("name"))
        if not p.get("shadow"):
            total += p.get("traffic") or 0
            counted += 1
        containers = {
            c.get("name")
            for cs in p.get("componentSpecs") or []
            for c in ((cs or {}).get("spec") or {}).get("containers") or []
        }
        graph = p.get("graph") or {}
        if not graph.get("implementation") and graph.get("name") not in containers:
            out.append(
                (f"{where}.graph.name",
                 f"graph node {graph.get('name')!r} has no container of that name in componentSpecs "
                 f"(containers: {sorted(c for c in containers if c)})")
            )
    if counted > 1 and total != 100:
        out.append(("$.spec.predictors", f"the predictors' traffic adds up to {total}, not 100"))
    return out


def validate_manifest(manifest: dict[str, Any], crd_path: str | os.PathLike | None = None) -> None:
    """Check ``manifest`` against the SeldonDeployment CRD's ``openAPIV3Schema`` (version v1) and the rules
    Seldon's admission webhook adds; raise ``ManifestInvalid`` listing each violation's JSON path."""
    path = Path(crd_path) if crd_path is not None else default_crd_path()
    try:
        st = path.stat()
    except OSError:
        raise FreestackError(
            f"the SeldonDeployment CRD is not at {path}: set {CRD_ENV} to the path of seldondeployment-crd.yaml "
            "(Seldon Core 1.17), or restore include/serving/seldondeployment-crd.yaml in the checkout"
        ) from None
    validator = _validator(str(path.resolve()), st.st_mtime_ns, st.st_size)
    violations = sorted(
        ((e.json_path, e.message) for e in validator.iter_errors(manifest)), key=lambda v: (v[0], v[1])
    )
    if not violations:
        violations = _semantic_violations(manifest)
    if violations:
        meta = manifest.get("metadata") if isinstance(manifest, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        what = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
        shown = [f"  {p}: {m}" for p, m in violations[:25]]
        if len(violations) > 25:
            shown.append(f"  ... and {len(violations) - 25} more")
        raise ManifestInvalid(
            f"SeldonDeployment {what} does not match the Seldon Core v1 CRD ({path}):\n"
            + "\n".join(shown)
            + "\nFix the deploy: block of the pipeline spec (or the manifest) and deploy again.",
            violations,
        )


# ---------------------------------------------------------------------------------------------------------
# talking to the API server


def _status_body(body: Any) -> dict[str, Any] | None:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    return body if isinstance(body, dict) else None


def _resource_type_missing(status: int | None, body: Any) -> bool:
    """A 404 that is about the resource type (Seldon's CRD not installed), not about one object."""
    if status != 404:
        return False
    doc = _status_body(body)
    if doc is None:  # "404 page not found": the API group is not served at all
        return True
    details = doc.get("details") or {}
    return not details.get("name") and details.get("kind") != "namespaces"


def object_missing(status: int | None, body: Any) -> bool:
    """A 404 about the object itself (the type and the namespace exist)."""
    if status != 404:
        return False
    details = (_status_body(body) or {}).get("details") or {}
    return bool(details.get("name")) and details.get("kind") != "namespaces"


def api_error(
    status: int | None,
    reason: str | None,
    body: Any,
    *,
    host: str,
    conn_id: str,
    namespace: str,
    name: str,
    action: str,
) -> DeployError:
    """The error to raise for an API server answer (sync and async clients alike): what happened, where,
    and what to check."""
    doc = _status_body(body)
    detail = (doc or {}).get("message") or (body.decode() if isinstance(body, bytes) else body) or reason or ""
    detail = str(detail).strip()
    head = (
        f"Kubernetes API server {host} (connection {conn_id!r}) answered {status} {reason or ''}".rstrip()
        + f" to {action} SeldonDeployment {namespace}/{name}: {detail}"
    )
    if status == 401:
        return KubernetesUnavailable(
            head + f". The credentials were rejected: check that connection {conn_id!r}'s kube_config (token, "
            "client certificate or exec plugin) is current.",
            status=status,
        )
    if status == 403:
        return DeployError(
            head + f". RBAC: the identity of connection {conn_id!r} needs get, create, update, patch and delete "
            f"on {CRD_NAME} in namespace {namespace} (a Role and RoleBinding); check with "
            f"'kubectl auth can-i create {CRD_NAME} -n {namespace}'.",
            status=status,
        )
    if status == 404:
        details = (doc or {}).get("details") or {}
        if details.get("kind") == "namespaces":
            return DeployError(
                head + f". Namespace {namespace!r} does not exist: create it ('kubectl create namespace "
                f"{namespace}') or set deploy.kubernetes.namespace in the pipeline spec.",
                status=status,
            )
        if _resource_type_missing(status, body):
            return DeployError(
                head + f". The cluster does not serve {CRD_NAME}: Seldon Core's CRD is not installed "
                f"('kubectl get crd {CRD_NAME}' finds nothing). Install Seldon Core 1.17 (the "
                "seldon-core-operator Helm chart) or point the connection at a cluster that has it.",
                status=status,
            )
        return DeployError(head + ". The object does not exist (deleted meanwhile?); deploy it again.",
                           status=status)
    if status == 409:
        return DeployError(head + ". It changed while we were updating it; run the deploy again.", status=status)
    if status == 422:
        causes = ((doc or {}).get("details") or {}).get("causes") or []
        listed = "".join(f"\n  {c.get('field', '?')}: {c.get('message', '')}" for c in causes)
        return DeployError(
            head + listed + "\nThe API server (or Seldon's admission webhook) rejected the manifest; fix the "
            "deploy: block of the pipeline spec.",
            status=status,
        )
    if "webhook" in detail and (status or 0) >= 500:
        return KubernetesUnavailable(
            head + ". Seldon Core's admission webhook could not be called: check that the "
            "seldon-controller-manager is running ('kubectl get pods -n seldon-system').",
            status=status,
        )
    if status == 429 or (status or 0) >= 500 or not status:
        return KubernetesUnavailable(head + ". The API server is overloaded or failing; retry later.",
                                     status=status)
    return DeployError(head, status=status)


def unreachable(exc: BaseException, *, host: str, conn_id: str, namespace: str, name: str,
                action: str) -> KubernetesUnavailable:
    return KubernetesUnavailable(
        f"cannot reach the Kubernetes API server {host} (connection {conn_id!r}) to {action} SeldonDeployment "
        f"{namespace}/{name}: {type(exc).__name__}: {exc}. Check that the cluster is up and that the "
        f"connection's kube_config points at it ('kubectl cluster-info' with the same kubeconfig)."
    )


class _Session:
    """One API client for one object; ``action`` names what is being done, for error messages."""

    def __init__(self, api_client: Any, conn_id: str, namespace: str, name: str):
        from kubernetes.client import CustomObjectsApi

        self.api = CustomObjectsApi(api_client)
        self.host = api_client.configuration.host
        self.conn_id, self.namespace, self.name = conn_id, namespace, name
        self.action = "reach"

    def _args(self) -> tuple[str, str, str, str]:
        return GROUP, VERSION, self.namespace, PLURAL

    def read(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        self.action = "read"
        try:
            return self.api.get_namespaced_custom_object(*self._args(), self.name)
        except ApiException as exc:
            if object_missing(exc.status, exc.body):
                return None
            raise

    def create(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.action = "create"
        return self.api.create_namespaced_custom_object(*self._args(), body, **kw)

    def replace(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.action = "replace"
        return self.api.replace_namespaced_custom_object(*self._args(), self.name, body, **kw)

    def merge_patch(self, body: dict[str, Any]) -> dict[str, Any]:
        self.action = "patch"
        return self.api.patch_namespaced_custom_object(
            *self._args(), self.name, body, _content_type="application/merge-patch+json"
        )

    def delete(self) -> dict[str, Any]:
        self.action = "delete"
        return self.api.delete_namespaced_custom_object(*self._args(), self.name)


@contextmanager
def _session(conn_id: str, namespace: str, name: str) -> Iterator[_Session]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        api_client = KubernetesHook(conn_id=conn_id).get_conn()
    except Exception as exc:  # connection missing, no kubeconfig, conflicting extras, bad YAML...
        raise KubernetesUnavailable(
            f"cannot load the Kubernetes configuration of connection {conn_id!r} ({type(exc).__name__}: {exc}). "
            "Give the connection (conn_type kubernetes) exactly one of the extras kube_config_path, kube_config "
            "(the kubeconfig inline) or in_cluster: true."
        ) from exc
    session = _Session(api_client, conn_id, namespace, name)
    where = {"host": session.host, "conn_id": conn_id, "namespace": namespace, "name": name}
    try:
        yield session
    except ApiException as exc:
        if not exc.status:  # the client's own failure (TLS handshake, ...), not an answer
            raise unreachable(exc, action=session.action, **where) from exc
        raise api_error(exc.status, exc.reason, exc.body, action=session.action, **where) from exc
    except (HTTPError, OSError) as exc:
        raise unreachable(exc, action=session.action, **where) from exc
    finally:
        api_client.close()


def _ident(manifest: dict[str, Any]) -> tuple[str, str]:
    meta = manifest.get("metadata") or {}
    if not meta.get("name") or not meta.get("namespace"):
        raise ValueError("the manifest needs metadata.name and metadata.namespace (use build_manifest)")
    return meta["name"], meta["namespace"]


def apply(manifest: dict[str, Any], conn_id: str, *, force: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Create the SeldonDeployment, or replace the one that exists (carrying its ``resourceVersion``; on a
    409 conflict it is read again and the replace retried). Returns the object as stored.

    An existing object that freestack does not manage (no ``app.kubernetes.io/managed-by: freestack``)
    is left alone unless ``force``. ``dry_run`` asks the API server to validate without storing."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = _ident(manifest)
    kw = {"dry_run": "All"} if dry_run else {}
    with _session(conn_id, namespace, name) as s:
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
                    f"SeldonDeployment {namespace}/{name} already exists on {s.host} and is not managed by "
                    f"freestack (label {MANAGED_BY_KEY}={managed!r}); delete it, or set deploy.name to "
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
            f"SeldonDeployment {namespace}/{name} on {s.host} kept changing while being applied "
            f"({_CONFLICT_RETRIES} conflicts in a row): another process is writing it; try again",
            status=409,
        )


def get(name: str, namespace: str, conn_id: str) -> dict[str, Any] | None:
    """The SeldonDeployment as stored, or None when it does not exist."""
    with _session(conn_id, namespace, name) as s:
        return s.read()


def delete(name: str, namespace: str, conn_id: str) -> bool:
    """Delete the SeldonDeployment; False when there was none."""
    from kubernetes.client.exceptions import ApiException

    with _session(conn_id, namespace, name) as s:
        try:
            s.delete()
        except ApiException as exc:
            if object_missing(exc.status, exc.body):
                return False
            raise
        return True


def _update(
    name: str,
    namespace: str,
    conn_id: str,
    change: Callable[[dict[str, Any]], dict[str, Any] | None],
    *,
    patch: bool = False,
) -> dict[str, Any]:
    """Read, ``change`` a copy (None: nothing to do), write it back conditioned on the resourceVersion
    that was read (a replace, or a merge patch of ``spec.predictors`` that carries it), retrying conflicts."""
    from kubernetes.client.exceptions import ApiException

    with _session(conn_id, namespace, name) as s:
        for _ in range(_CONFLICT_RETRIES):
            current = s.read()
            if current is None:
                raise DeployError(
                    f"SeldonDeployment {namespace}/{name} does not exist on {s.host} (connection {conn_id!r}); "
                    "deploy it first",
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
                        {"metadata": {"resourceVersion": rv}, "spec": {"predictors": desired["spec"]["predictors"]}}
                    )
                desired.pop("status", None)
                desired["metadata"]["resourceVersion"] = rv
                return s.replace(desired)
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise
        raise DeployError(
            f"SeldonDeployment {namespace}/{name} on {s.host} kept changing ({_CONFLICT_RETRIES} conflicts in a "
            "row): another process is writing it; try again",
            status=409,
        )


def _predictors(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    meta = obj.get("metadata") or {}
    preds = (obj.get("spec") or {}).get("predictors") or []
    main = next((p for p in preds if p.get("name") == MAIN), None)
    if main is None:
        raise DeployError(
            f"SeldonDeployment {meta.get('namespace')}/{meta.get('name')} has no predictor named {MAIN!r} "
            f"(it has {[p.get('name') for p in preds]}): it was not made by freestack; redeploy it with freestack"
        )
    return main, next((p for p in preds if p.get("name") == CANARY), None)


def _env(pred: dict[str, Any], key: str) -> str | None:
    for cs in pred.get("componentSpecs") or []:
        for c in ((cs or {}).get("spec") or {}).get("containers") or []:
            if c.get("name") == CONTAINER:
                for e in c.get("env") or []:
                    if e.get("name") == key:
                        return e.get("value")
    return None


def predictor_version(pred: dict[str, Any]) -> str | None:
    """The model version a predictor serves (its container's ``FREESTACK_MODEL_VERSION``)."""
    return _env(pred, ENV_VERSION)


def set_traffic(name: str, namespace: str, conn_id: str, *, canary_traffic: int) -> dict[str, Any]:
    """Send ``canary_traffic`` percent of requests to the canary predictor and the rest to main (a merge
    patch conditioned on the resourceVersion just read)."""
    if isinstance(canary_traffic, bool) or not isinstance(canary_traffic, int) or not 0 <= canary_traffic <= 100:
        raise ValueError(f"canary_traffic must be an integer percentage 0..100, got {canary_traffic!r}")

    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        main, canary = _predictors(obj)
        if canary is None:
            raise DeployError(
                f"SeldonDeployment {namespace}/{name} has no {CANARY!r} predictor to send traffic to; deploy a "
                "canary first (deploy.kubernetes.canary)"
            )
        if main.get("traffic") == 100 - canary_traffic and canary.get("traffic") == canary_traffic:
            return None
        main["traffic"], canary["traffic"] = 100 - canary_traffic, canary_traffic
        return obj

    return _update(name, namespace, conn_id, change, patch=True)


def promote_canary(name: str, namespace: str, conn_id: str, *, version: str | None = None) -> dict[str, Any]:
    """The canary's container (image, version, URI) becomes main's, the canary predictor goes, main takes
    all traffic. With ``version``: the canary must serve that version; when there is no canary and main
    already serves it, nothing changes (so a retried task is harmless)."""

    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        main, canary = _predictors(obj)
        if canary is None:
            if version is not None and predictor_version(main) == version and main.get("traffic") in (100, None):
                return None
            raise DeployError(
                f"SeldonDeployment {namespace}/{name} has no {CANARY!r} predictor to promote "
                f"(main serves version {predictor_version(main)!r})"
            )
        new_version = predictor_version(canary)
        if version is not None and new_version != version:
            raise DeployError(
                f"the canary of SeldonDeployment {namespace}/{name} serves version {new_version!r}, not "
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
        uri = _env(canary, ENV_URI)
        if uri is not None:
            annotations[MODEL_URI_KEY] = uri
        annotations.pop(CANARY_VERSION_KEY, None)
        annotations.pop(CANARY_URI_KEY, None)
        return obj

    return _update(name, namespace, conn_id, change)


def rollback_canary(name: str, namespace: str, conn_id: str) -> dict[str, Any]:
    """Remove the canary predictor; main takes all traffic. Nothing changes when there is no canary."""

    def change(obj: dict[str, Any]) -> dict[str, Any] | None:
        main, canary = _predictors(obj)
        if canary is None and main.get("traffic") in (100, None):
            return None
        main["traffic"] = 100
        obj["spec"]["predictors"] = [main]
        meta = obj["metadata"]
        (meta.get("labels") or {}).pop(CANARY_VERSION_KEY, None)
        for key in (CANARY_VERSION_KEY, CANARY_URI_KEY):
            (meta.get("annotations") or {}).pop(key, None)
        return obj

    return _update(name, namespace, conn_id, change)


# ---------------------------------------------------------------------------------------------------------
# status


def _replica_summary(status: dict[str, Any]) -> tuple[str, list[str]]:
    parts, short = [], []
    for dep, st in sorted((status.get("deploymentStatus") or {}).items()):
        st = st or {}
        avail, want = st.get("availableReplicas") or 0, st.get("replicas") or 0
        parts.append(f"{dep} {avail}/{want} available" + (f" ({st['description']})" if st.get("description") else ""))
        if avail < want:
            short.append(dep)
    return "; ".join(parts), short


def availability(obj: dict[str, Any]) -> tuple[str, str]:
    """``("available" | "failed" | "progressing", message)`` from a SeldonDeployment's Seldon v1 status.

    A status whose ``observedGeneration`` is older than ``metadata.generation`` describes the previous spec
    and counts as progressing, however Available it says it is."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    what = f"SeldonDeployment {meta.get('namespace')}/{meta.get('name')}"
    state = status.get("state") or ""
    desc = status.get("description") or ""
    replicas, short = _replica_summary(status)
    gen, observed = meta.get("generation"), status.get("observedGeneration")
    if gen is not None and observed is not None and observed < gen:
        return "progressing", (
            f"{what}: Seldon has not processed generation {gen} yet (observed {observed}); "
            f"state {state or 'unknown'} is the previous spec's"
        )
    if state == "Failed":
        return "failed", f"{what}: Seldon reports Failed: {desc or 'no description'}" + (
            f" [{replicas}]" if replicas else ""
        )
    if state == "Available" and not short:
        return "available", f"{what} is Available" + (f": {replicas}" if replicas else "")
    shown = state or "no status yet"
    return "progressing", f"{what}: {shown}" + (f": {desc}" if desc else "") + (f" [{replicas}]" if replicas else "")


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    """A short record of what an object serves: name, namespace, generation, and per predictor the version,
    model URI, traffic, replicas and image (for ``deployments/<model>/<name>.json``)."""
    meta = obj.get("metadata") or {}
    preds = []
    for p in (obj.get("spec") or {}).get("predictors") or []:
        image = next(
            (c.get("image") for cs in p.get("componentSpecs") or []
             for c in ((cs or {}).get("spec") or {}).get("containers") or [] if c.get("name") == CONTAINER),
            None,
        )
        preds.append({"name": p.get("name"), "version": predictor_version(p), "model_uri": _env(p, ENV_URI),
                      "traffic": p.get("traffic"), "replicas": p.get("replicas"), "image": image})
    state, message = availability(obj)
    return {"name": meta.get("name"), "namespace": meta.get("namespace"), "generation": meta.get("generation"),
            "resource_version": meta.get("resourceVersion"), "predictors": preds, "state": state,
            "message": message}
