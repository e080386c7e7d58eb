"""Seldon Core v1 SeldonDeployment manifests: built from a spec's ``deploy.kubernetes`` block, validated
against the CRD, and read back (which version each predictor serves, whether it is Available).

Pure functions over plain dicts; talking to a cluster is :mod:`freestack.serving.seldon_deployments`::

    manifest = build_manifest("digits", model="digits", version="3", model_uri="s3://.../3",
                              target=spec.deploy.kubernetes, canary_version=..., canary_uri=...)
    validate_manifest(manifest)              # ManifestInvalid names every violation's path

Light at import: ``jsonschema`` and ``yaml`` are imported inside the functions.
"""

from __future__ import annotations

import copy
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from freestack.errors import DeployError, FreestackError
from freestack.kube.manifests import (
    DNS1035_LABEL,
    DNS1123_LABEL,
    MANAGED_BY,
    MANAGED_BY_KEY,
    QUALIFIED_KEY,
    ManifestInvalid,
    crd_schema,
    label_value,
    listed,
    named,
    strict_validator,
    violations,
)
from freestack.serving.spec import KubernetesTarget
from freestack.settings import checkout_dir, settings
from freestack_server.core.config import PREFIX as SERVER_PREFIX
from freestack_server.core.config import ServerConfig

GROUP = "machinelearning.seldon.io"
VERSION = "v1"
PLURAL = "seldondeployments"
KIND = "SeldonDeployment"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"
KSERVE_API_VERSION = "serving.kserve.io/v1beta1"
KSERVE_KIND = "InferenceService"

MAIN = "main"
CANARY = "canary"
CONTAINER = "model"
HTTP_PORT = 9000
GRPC_PORT = 9500
HEALTH_PATH = "/health/ping"

MODEL_KEY = "freestack.io/model"
VERSION_KEY = "freestack.io/version"
CANARY_VERSION_KEY = "freestack.io/canary-version"
MODEL_URI_KEY = "freestack.io/model-uri"
CANARY_URI_KEY = "freestack.io/canary-uri"
#: a predictor without Seldon's service orchestrator: its Service and ingress reach the model container itself
NO_ENGINE_KEY = "seldon.io/no-engine"

#: the setting that names the CRD file (``seldon_crd``), as an environment variable
CRD_ENV = "FREESTACK_SELDON_CRD"

ENV_URI = "FREESTACK_MODEL_URI"
ENV_VERSION = "FREESTACK_MODEL_VERSION"
ENV_NAME = "FREESTACK_MODEL_NAME"
#: the model server's OpenAI API key (:class:`freestack_server.core.config.ServerConfig`'s ``api_key``)
API_KEY_ENV = f"{SERVER_PREFIX}API_KEY"


_DNS1123_LABEL = re.compile(DNS1123_LABEL)


# ---------------------------------------------------------------------------------------------------------
# manifests


def _container(
    target: KubernetesTarget,
    *,
    model: str,
    version: str,
    model_uri: str,
    request_log_uri: str | None = None,
    runtime: str = "seldon",
) -> dict[str, Any]:
    """The model container of either runtime, started by its image's own command (``python -m
    freestack_server``): Seldon's protocol, or (``mlserver``) the Open Inference Protocol, with a gRPC port
    and probes on the V2 paths. Its variables are the model server's (:mod:`freestack_server.core.config`), as
    the local deploy sets them; the interface and ports are the image's ``ENV`` and Seldon's operator's
    ``PREDICTIVE_UNIT_*``."""
    cfg = ServerConfig.model_validate(
        {
            "runtime": runtime,
            "model": model,
            "version": version,
            "deployment": model,
            "workers": target.workers,
            "threads": target.threads,
        }
    )
    own = cfg.env(
        include={"runtime", "deployment", "workers", "threads"}
    )  # model and version: the names below
    env = [
        {"name": ENV_URI, "value": model_uri},
        {"name": ENV_VERSION, "value": version},
        {"name": ENV_NAME, "value": model},
        *({"name": k, "value": v} for k, v in own.items()),
    ]
    if request_log_uri and target.log_sample_rate > 0:  # the monitor's request log (freestack.monitor)
        env += [
            {"name": "FREESTACK_REQUEST_LOG_URI", "value": request_log_uri},
            {"name": "FREESTACK_REQUEST_LOG_RATE", "value": f"{target.log_sample_rate:g}"},
        ]
    # deploy.generation's bounds that differ from the server's defaults (a text-generation model's requests)
    env += [{"name": k, "value": v} for k, v in target.generation.env(defaults=False).items()]
    env += _api_key_env(target)
    if runtime == "mlserver":
        container = _base_container(
            target, target.mlserver_image, env, ready=f"/v2/models/{model}/ready", live="/v2/health/live"
        )
        container["ports"].append({"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"})
        return container
    return _base_container(target, target.image, env, ready=HEALTH_PATH, live=HEALTH_PATH)


def _api_key_env(target: KubernetesTarget) -> list[dict[str, Any]]:
    """The OpenAI API's key (``deploy.api_key.secret``): the server's ``FREESTACK_SERVER_API_KEY`` read from
    the Secret by the kubelet (``valueFrom.secretKeyRef``), so the key itself is in no manifest. The /v1 routes
    need nothing else: they are served on the same HTTP port as the other protocols."""
    source = target.api_key
    if source is None or source.secret is None:
        return []
    ref = {"name": source.secret, "key": source.secret_key}
    return [{"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": ref}}]


def _base_container(
    target: KubernetesTarget, image: str, env: list[dict[str, Any]], *, ready: str, live: str
) -> dict[str, Any]:
    """The container both runtimes share: the HTTP port, resources, the secret's environment and the probes."""

    def probe(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http", "scheme": "HTTP"}, "timeoutSeconds": 5}

    # loading a model (a download from object storage) may take a while: the startup probe allows up to
    # the deploy timeout before liveness starts counting
    startup_failures = max(12, int(target.timeout_minutes * 60 / 5))
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "resources": copy.deepcopy(target.resources),
        "startupProbe": {**probe(ready), "periodSeconds": 5, "failureThreshold": startup_failures},
        "readinessProbe": {**probe(ready), "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe(live), "periodSeconds": 10, "failureThreshold": 3},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if target.env_secret:
        container["envFrom"] = [{"secretRef": {"name": target.env_secret}}]
    return container


def _containers(pred: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a predictor's component specs (any of them may be missing or null)."""
    return [
        c
        for cs in pred.get("componentSpecs") or []
        for c in ((cs or {}).get("spec") or {}).get("containers") or []
    ]


def _check_name(name: str) -> None:
    if not _DNS1123_LABEL.match(name) or len(name) > 63:
        raise ValueError(
            f"deployment name {name!r} is not a valid Kubernetes name: use lowercase letters, digits and '-', "
            "at most 63 characters (set deploy.name in the pipeline spec)"
        )


def _predictor(
    name: str,
    target: KubernetesTarget,
    *,
    replicas: int,
    traffic: int,
    model: str,
    version: str,
    uri: str,
    request_log_uri: str | None = None,
    runtime: str = "seldon",
    openai_api: bool = False,
) -> dict[str, Any]:
    container = _container(
        target, model=model, version=version, model_uri=uri, request_log_uri=request_log_uri, runtime=runtime
    )
    pod: dict[str, Any] = {"containers": [container]}
    if target.service_account:
        pod["serviceAccountName"] = target.service_account
    predictor = {
        "name": name,
        "replicas": replicas,
        "traffic": traffic,
        "labels": {VERSION_KEY: label_value(version), MANAGED_BY_KEY: MANAGED_BY},
        "progressDeadlineSeconds": int(target.timeout_minutes * 60),
        "componentSpecs": [{"spec": pod}],
        "graph": {"name": CONTAINER, "type": "MODEL", "endpoint": {"type": "REST"}, "children": []},
    }
    if openai_api:
        # Seldon's service orchestrator answers only its protocol's own paths (/api/v1.0/..., /v2/models/...);
        # without it the predictor's Service, and so the ingress's /seldon/<namespace>/<name>/ prefix, reach
        # the model server itself, which answers /v1 (the OpenAI API) beside those paths
        predictor["annotations"] = {NO_ENGINE_KEY: "true"}
    return predictor


def _metadata(
    name: str, target: KubernetesTarget, *, model: str, version: str, model_uri: str
) -> dict[str, Any]:
    """The object's name and namespace, and the labels and annotations that say it is freestack's and
    which version it serves (SeldonDeployment and InferenceService alike)."""
    return {
        "name": name,
        "namespace": target.namespace,
        "labels": {
            MANAGED_BY_KEY: MANAGED_BY,
            MODEL_KEY: label_value(model),
            VERSION_KEY: label_value(version),
        },
        "annotations": {MODEL_KEY: model, VERSION_KEY: version, MODEL_URI_KEY: model_uri},
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
    request_log_uri: str | None = None,
    runtime: str = "seldon",
    openai_api: bool = False,
) -> dict[str, Any]:
    """A ``machinelearning.seldon.io/v1`` SeldonDeployment serving ``model`` ``version`` from ``model_uri``
    (with ``request_log_uri``, the model's monitoring folder, its servers keep the request log there).
    ``runtime: mlserver``: ``protocol: v2``, the mlserver image running freestack's V2 runtime.
    ``openai_api`` (a text-generation model): its predictors run without Seldon's service orchestrator
    (``seldon.io/no-engine``), whose router knows only its protocol's paths, so that the ingress reaches the
    server's OpenAI API (``/seldon/<namespace>/<name>/v1/...``) too.

    One predictor ``main``; with ``canary_version`` and ``canary_uri`` (and ``target.canary`` set) a second
    predictor ``canary`` that takes ``target.canary.traffic`` percent of the requests."""

    if isinstance(target, dict):
        target = KubernetesTarget.model_validate(target)
    _check_name(name)
    for what, v in (("model", model), ("version", version), ("model_uri", model_uri)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"{what} must be a non-empty string, got {v!r}")
    if (canary_version is None) != (canary_uri is None):
        given, missing = (
            ("canary_version", "canary_uri") if canary_uri is None else ("canary_uri", "canary_version")
        )
        raise ValueError(f"{given} was given without {missing}: a canary needs both its version and its URI")
    canary = canary_version is not None
    if canary and target.canary is None:
        raise ValueError(
            f"canary version {canary_version!r} was given but deploy.kubernetes.canary is not set: add "
            "'canary: {traffic: 10, replicas: 1}' to the deploy block, or deploy without a canary"
        )

    metadata = _metadata(name, target, model=model, version=version, model_uri=model_uri)
    meta_labels, annotations = metadata["labels"], metadata["annotations"]
    if canary:
        meta_labels[CANARY_VERSION_KEY] = label_value(canary_version)
        annotations[CANARY_VERSION_KEY] = canary_version
        annotations[CANARY_URI_KEY] = canary_uri
    for key, value in (labels or {}).items():
        if not re.match(QUALIFIED_KEY, str(key)) or len(str(key)) > 316:
            raise ValueError(
                f"label key {key!r} is not a valid Kubernetes label key ([prefix/]name; name at most 63 of "
                "letters, digits, '-', '_', '.')"
            )
        meta_labels.setdefault(str(key), label_value(value))

    roles = [(MAIN, target.replicas, 100 - target.canary.traffic if canary else 100, version, model_uri)]
    if canary:
        roles.append((CANARY, target.canary.replicas, target.canary.traffic, canary_version, canary_uri))
    predictors = [
        _predictor(
            role,
            target,
            replicas=replicas,
            traffic=traffic,
            model=model,
            version=served,
            uri=uri,
            request_log_uri=request_log_uri,
            runtime=runtime,
            openai_api=openai_api,
        )
        for role, replicas, traffic, served, uri in roles
    ]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "name": name,
            "protocol": "v2" if runtime == "mlserver" else "seldon",
            "predictors": predictors,
        },
    }


def build_inference_service(
    name: str,
    *,
    model: str,
    version: str,
    model_uri: str,
    target: KubernetesTarget,
    request_log_uri: str | None = None,
) -> dict[str, Any]:
    """A KServe ``serving.kserve.io/v1beta1`` InferenceService serving ``model`` ``version`` with freestack's
    V2 runtime (the mlserver image, the same container as a ``protocol: v2`` SeldonDeployment's), for a
    cluster that runs KServe instead of Seldon Core."""
    _check_name(name)
    container = _container(
        target,
        model=model,
        version=version,
        model_uri=model_uri,
        request_log_uri=request_log_uri,
        runtime="mlserver",
    )
    container["name"] = "kserve-container"
    container["env"] = [*container["env"], {"name": "PROTOCOL", "value": "v2"}]
    predictor: dict[str, Any] = {
        "minReplicas": target.replicas,
        "maxReplicas": target.replicas,
        "containers": [container],
    }
    if target.service_account:
        predictor["serviceAccountName"] = target.service_account
    metadata = _metadata(name, target, model=model, version=version, model_uri=model_uri)
    metadata["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    return {
        "apiVersion": KSERVE_API_VERSION,
        "kind": KSERVE_KIND,
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }


# ---------------------------------------------------------------------------------------------------------
# validation against the CRD


def default_crd_path() -> Path:
    """The SeldonDeployment CRD to validate against: the ``seldon_crd`` setting, else the copy in the
    checkout (``include/serving/seldondeployment-crd.yaml``), else ``../shared/seldon/`` next to it."""
    configured = settings().seldon_crd
    if configured:
        return configured.expanduser()
    root = checkout_dir()
    candidates = [
        root / "include" / "serving" / "seldondeployment-crd.yaml",
        root.parent / "shared" / "seldon" / "seldondeployment-crd.yaml",
    ]
    return next((p for p in candidates if p.is_file()), candidates[0])


def _file_identity(path: Path, missing: str) -> tuple[str, int, int]:
    """(resolved path, mtime, size) of a CRD file, what keys its cached validator; ``missing``: the
    FreestackError's message when there is no such file."""
    try:
        st = path.stat()
    except OSError:
        raise FreestackError(missing) from None
    return str(path.resolve()), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=4)
def _validator(path: str, mtime_ns: int, size: int):  # the file's identity keys the cache
    schema = crd_schema(
        path,
        VERSION,
        "the SeldonDeployment CRD",
        f"; point {CRD_ENV} at seldondeployment-crd.yaml from Seldon Core 1.17",
    )
    return strict_validator(schema, api_version=API_VERSION, kind=KIND)


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
        containers = {c.get("name") for c in _containers(p)}
        graph = p.get("graph") or {}
        if not graph.get("implementation") and graph.get("name") not in containers:
            out.append(
                (
                    f"{where}.graph.name",
                    f"graph node {graph.get('name')!r} has no container of that name in componentSpecs "
                    f"(containers: {sorted(c for c in containers if c)})",
                )
            )
    if counted > 1 and total != 100:
        out.append(("$.spec.predictors", f"the predictors' traffic adds up to {total}, not 100"))
    return out


def validate_manifest(manifest: dict[str, Any], crd_path: str | os.PathLike | None = None) -> None:
    """Check ``manifest`` against the SeldonDeployment CRD's ``openAPIV3Schema`` (version v1) and the rules
    Seldon's admission webhook adds; raise ``ManifestInvalid`` listing each violation's JSON path."""
    path = Path(crd_path) if crd_path is not None else default_crd_path()
    missing = (
        f"the SeldonDeployment CRD is not at {path}: set {CRD_ENV} to the path of seldondeployment-crd.yaml "
        "(Seldon Core 1.17), or restore include/serving/seldondeployment-crd.yaml in the checkout"
    )
    problems = violations(_validator(*_file_identity(path, missing)), manifest)
    problems = problems or _semantic_violations(manifest)
    if problems:
        raise ManifestInvalid(
            f"SeldonDeployment {named(manifest)} does not match the Seldon Core v1 CRD ({path}):\n"
            + listed(problems)
            + "\nFix the deploy: block of the pipeline spec (or the manifest) and deploy again.",
            problems,
        )


# ---------------------------------------------------------------------------------------------------------
# KServe: an InferenceService against KServe's CRD


def default_kserve_crd_path() -> Path:
    """KServe's InferenceService CRD in the checkout (``include/serving/kserve-inferenceservice-crd.yaml``)."""
    return checkout_dir() / "include" / "serving" / "kserve-inferenceservice-crd.yaml"


@lru_cache(maxsize=2)
def _kserve_validator(path: str, mtime_ns: int, size: int):  # the file's identity keys the cache
    """The v1beta1 schema as strict JSON Schema, like the SeldonDeployment one: unknown fields refused,
    metadata checked as the API server and KServe's webhook would (a name starting with a letter)."""
    schema = crd_schema(path, "v1beta1", "KServe's InferenceService CRD")
    return strict_validator(
        schema, api_version=KSERVE_API_VERSION, kind=KSERVE_KIND, name_pattern=DNS1035_LABEL
    )


def validate_inference_service(manifest: dict[str, Any], crd_path: str | os.PathLike | None = None) -> None:
    """Check a KServe InferenceService against KServe's CRD (v1beta1) before it is applied, as
    :func:`validate_manifest` does for a SeldonDeployment: a cluster would otherwise refuse it (or drop
    unknown fields) only at apply time. Raises ``ManifestInvalid`` listing each violation's JSON path."""
    path = Path(crd_path) if crd_path is not None else default_kserve_crd_path()
    missing = f"KServe's InferenceService CRD is not at {path}: restore include/serving/kserve-inferenceservice-crd.yaml"
    problems = violations(_kserve_validator(*_file_identity(path, missing)), manifest)
    if problems:
        raise ManifestInvalid(
            f"InferenceService {named(manifest)} does not match KServe's v1beta1 CRD ({path}):\n"
            + listed(problems),
            problems,
        )


def split_predictors(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    meta = obj.get("metadata") or {}
    preds = (obj.get("spec") or {}).get("predictors") or []
    main = next((p for p in preds if p.get("name") == MAIN), None)
    if main is None:
        raise DeployError(
            f"SeldonDeployment {meta.get('namespace')}/{meta.get('name')} has no predictor named {MAIN!r} "
            f"(it has {[p.get('name') for p in preds]}): it was not made by freestack; redeploy it with freestack"
        )
    return main, next((p for p in preds if p.get("name") == CANARY), None)


def predictor_env(pred: dict[str, Any], key: str) -> str | None:
    """The value of variable ``key`` in a predictor's model container (None: not set there)."""
    models = [c for c in _containers(pred) if c.get("name") == CONTAINER]
    return next((e.get("value") for c in models for e in c.get("env") or [] if e.get("name") == key), None)


def predictor_version(pred: dict[str, Any]) -> str | None:
    """The model version a predictor serves (its container's ``FREESTACK_MODEL_VERSION``)."""
    return predictor_env(pred, ENV_VERSION)


# ---------------------------------------------------------------------------------------------------------
# status


def _replica_summary(status: dict[str, Any]) -> tuple[str, list[str]]:
    parts, short = [], []
    for dep, st in sorted((status.get("deploymentStatus") or {}).items()):
        st = st or {}
        avail, want = st.get("availableReplicas") or 0, st.get("replicas") or 0
        parts.append(
            f"{dep} {avail}/{want} available" + (f" ({st['description']})" if st.get("description") else "")
        )
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
    return "progressing", f"{what}: {shown}" + (f": {desc}" if desc else "") + (
        f" [{replicas}]" if replicas else ""
    )


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    """A short record of what an object serves: name, namespace, generation, and per predictor the version,
    model URI, traffic, replicas and image (for ``deployments/<model>/<name>.json``)."""
    meta = obj.get("metadata") or {}
    preds = []
    for p in (obj.get("spec") or {}).get("predictors") or []:
        image = next((c.get("image") for c in _containers(p) if c.get("name") == CONTAINER), None)
        preds.append(
            {
                "name": p.get("name"),
                "version": predictor_version(p),
                "model_uri": predictor_env(p, ENV_URI),
                "traffic": p.get("traffic"),
                "replicas": p.get("replicas"),
                "image": image,
            }
        )
    state, message = availability(obj)
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "generation": meta.get("generation"),
        "resource_version": meta.get("resourceVersion"),
        "predictors": preds,
        "state": state,
        "message": message,
    }


def served_version(obj: dict[str, Any] | None) -> tuple[str, str] | None:
    """(version, model URI) of the main predictor of an existing SeldonDeployment."""
    if not obj:
        return None
    for pred in (obj.get("spec") or {}).get("predictors", []):
        if pred.get("name") != "main":
            continue
        for c in _containers(pred):
            env = {e.get("name"): e.get("value") for e in c.get("env", [])}
            if env.get(ENV_VERSION) and env.get(ENV_URI):
                return env[ENV_VERSION], env[ENV_URI]
    return None


__all__ = [
    "API_KEY_ENV",
    "API_VERSION",
    "CANARY",
    "CONTAINER",
    "CRD_ENV",
    "CRD_NAME",
    "ENV_NAME",
    "ENV_URI",
    "ENV_VERSION",
    "GROUP",
    "KIND",
    "MAIN",
    "NO_ENGINE_KEY",
    "PLURAL",
    "VERSION",
    "ManifestInvalid",
    "availability",
    "build_manifest",
    "default_crd_path",
    "label_value",
    "predictor_env",
    "predictor_version",
    "served_version",
    "split_predictors",
    "summary",
    "validate_manifest",
    "KSERVE_API_VERSION",
    "KSERVE_KIND",
    "build_inference_service",
    "default_kserve_crd_path",
    "validate_inference_service",
]
