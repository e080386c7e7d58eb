"""Pure helpers for Kubernetes manifests, shared by the train stage (PyTorchJob) and the deploy stage
(SeldonDeployment, InferenceService): label values, the label that marks freestack's objects, and the
checks of a manifest against its kind's CRD before it reaches a cluster.

    schema = crd_schema(path, "v1", "the Training Operator's PyTorchJob CRD")
    validator = strict_validator(schema, api_version="kubeflow.org/v1", kind="PyTorchJob")
    problems = violations(validator, manifest)     # [(JSON path, message), ...]
    raise ManifestInvalid(f"... {named(manifest)} ...:\\n" + listed(problems), problems)

No Airflow; ``jsonschema`` and ``yaml`` are imported inside the functions.
"""

from __future__ import annotations

import re
from typing import Any

from freestack.errors import FreestackError

#: the label on every object freestack creates: an object without it is never replaced or deleted
MANAGED_BY_KEY = "app.kubernetes.io/managed-by"
MANAGED_BY = "freestack"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: a DNS-1035 label: what the API server asks of a Service name (and the operators of their objects')
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUALIFIED_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


class ManifestInvalid(FreestackError, ValueError):
    """A manifest does not match its kind's CRD. ``violations`` holds (JSON path, message)."""

    def __init__(self, message: str, violations: list[tuple[str, str]]):
        super().__init__(message)
        self.violations = violations


def label_value(value: Any) -> str:
    """``value`` made a valid Kubernetes label value: at most 63 of ``[A-Za-z0-9_.-]``, alphanumeric at both
    ends (other characters become ``-``). The exact value goes into an annotation next to it."""
    v = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value))[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", v)


def json_schema(node: Any, strict: bool) -> Any:
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
        out["properties"] = {k: json_schema(v, strict) for k, v in out["properties"].items()}
    for kw in ("items", "additionalProperties", "not"):
        if isinstance(out.get(kw), dict):
            out[kw] = json_schema(out[kw], strict)
    for kw in ("anyOf", "allOf", "oneOf"):
        if isinstance(out.get(kw), list):
            out[kw] = [json_schema(s, strict) for s in out[kw]]
    _kubernetes_types(out)
    is_open = "additionalProperties" in out or out.get("x-kubernetes-preserve-unknown-fields")
    if strict and out.get("type") == "object" and "properties" in out and not is_open:
        out["additionalProperties"] = False
    return out


def _kubernetes_types(out: dict[str, Any]) -> None:
    """``x-kubernetes-int-or-string`` and ``nullable`` of a schema node said in JSON Schema, in place."""
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and "type" in out:
        t = out["type"]
        out["type"] = [*t, "null"] if isinstance(t, list) else [t, "null"]
        if isinstance(out.get("enum"), list):
            out["enum"] = [*out["enum"], None]


def object_meta_schema(name_pattern: str = DNS1123_LABEL) -> dict[str, Any]:
    """``metadata`` as the API server checks it (a CRD leaves it open): what freestack's manifests set."""
    return {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 63, "pattern": name_pattern},
            "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL},
            "labels": {
                "type": "object",
                "propertyNames": {"pattern": QUALIFIED_KEY, "maxLength": 316},
                "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE},
            },
            "annotations": {
                "type": "object",
                "propertyNames": {"pattern": QUALIFIED_KEY, "maxLength": 316},
                "additionalProperties": {"type": "string"},
            },
            "resourceVersion": {"type": "string"},
            "generation": {"type": "integer"},
            "uid": {"type": "string"},
        },
    }


def crd_schema(path: str, version: str, what: str, hint: str = "") -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` in the CRD file at ``path``; FreestackError naming ``what``
    the file should be (and ``hint``: how to point at the right one) when it is not."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            docs = [d for d in yaml.load_all(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise FreestackError(f"cannot read {what} {path}: {exc}") from None
    crd = next((d.get("spec") or {} for d in docs if d.get("kind") == "CustomResourceDefinition"), {})
    found = next((v for v in crd.get("versions") or [] if v.get("name") == version), {})
    schema = (found.get("schema") or {}).get("openAPIV3Schema")
    if not schema:
        raise FreestackError(f"{path} is not {what} with a {version} openAPIV3Schema{hint}")
    return schema


def fits_bits(bits: int):
    """The CRD's ``format: int32`` / ``int64``: an integer the API server can store in that many bits."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return lambda v: not isinstance(v, int) or isinstance(v, bool) or lo <= v <= hi


def strict_validator(
    schema: dict[str, Any], *, api_version: str, kind: str, name_pattern: str = DNS1123_LABEL
):
    """A Draft 7 validator of a whole object of the CRD's kind: unknown fields refused (the CRD's schema made
    strict), ``apiVersion`` and ``kind`` fixed, ``metadata`` checked as the API server would, a stored
    object's ``status`` accepted as it is, integers checked against their format's bits."""
    import jsonschema

    schema = json_schema(schema, strict=True)
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    schema.setdefault("properties", {}).update(
        apiVersion={"const": api_version},
        kind={"const": kind},
        metadata=object_meta_schema(name_pattern),
        status={"type": "object"},
    )
    schema["additionalProperties"] = False
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("int32")(fits_bits(32))
    checker.checks("int64")(fits_bits(64))
    return jsonschema.Draft7Validator(schema, format_checker=checker)


def violations(validator: Any, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """Every schema violation of ``manifest`` as (JSON path, message), in path order."""
    return sorted((e.json_path, e.message) for e in validator.iter_errors(manifest))


def named(manifest: Any) -> str:
    """``namespace/name`` of a manifest, ``?`` for what it lacks."""
    meta = manifest.get("metadata") if isinstance(manifest, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    return f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"


def listed(problems: list[tuple[str, str]], limit: int = 25) -> str:
    """One ``  path: message`` line per violation, the first ``limit`` of them."""
    shown = [f"  {p}: {m}" for p, m in problems[:limit]]
    if len(problems) > limit:
        shown.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(shown)


__all__ = [
    "DNS1035_LABEL",
    "DNS1123_LABEL",
    "MANAGED_BY",
    "MANAGED_BY_KEY",
    "QUALIFIED_KEY",
    "ManifestInvalid",
    "crd_schema",
    "fits_bits",
    "json_schema",
    "label_value",
    "listed",
    "named",
    "object_meta_schema",
    "strict_validator",
    "violations",
]
