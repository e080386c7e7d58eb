"""``docker/helm/values.yaml`` against the official Apache Airflow chart's own ``values.schema.json``
(chart 1.19.0, stored as ``docker/helm/airflow-chart-values.schema.json``; docs/operating/kubernetes.md
says where it came from), and the GPU overlay ``docker/helm/pod-template-gpu.yaml`` as a Kubernetes Pod.

Helm applies the same schema at install, but only on a machine with a cluster at hand; this test says it
first. The schema leaves unknown top-level keys open and deprecated keys allowed, so both are checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "docker" / "helm"
CHART_VERSION = "1.19.0"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((HELM / "airflow-chart-values.schema.json").read_text())


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((HELM / "values.yaml").read_text())


def test_values_match_the_chart_schema(schema, values):
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def test_every_top_level_key_is_a_chart_value(schema, values):
    """Helm ignores a misspelt top-level key silently; the chart's schema does not refuse it."""
    unknown = sorted(set(values) - set(schema["properties"]))
    assert not unknown, f"not values of chart {CHART_VERSION}: {unknown}"


def deprecated(value, node: dict, defs: dict, path: str = "$"):
    """Paths in ``value`` whose schema node's description says it is deprecated."""
    while "$ref" in node and "properties" not in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    if "deprecated" in node.get("description", "").lower():
        yield f"{path}: {node['description']}"
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in node.get("properties", {}):
                yield from deprecated(sub, node["properties"][key], defs, f"{path}.{key}")


def test_no_deprecated_values(schema, values):
    found = list(deprecated(values, schema, schema["definitions"]))
    assert not found, "\n".join(found)


def test_the_chart_version_is_named_where_it_is_installed(values):
    docs = (ROOT / "docs" / "operating" / "kubernetes.md").read_text()
    assert f"--version {CHART_VERSION}" in (HELM / "values.yaml").read_text()
    assert f"chart {CHART_VERSION}" in docs and "docker/helm/airflow-chart-values.schema.json" in docs
    # the image's Airflow is the one the chart is told about
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={values['airflowVersion']}\n" in dockerfile


def pod_overlay_schema(defs: dict) -> dict:
    """A Pod with only the fields the pod_mutation_hook in values.yaml merges, each checked against the
    Kubernetes definition the chart's schema carries."""
    ref = {
        name: {"$ref": f"#/definitions/io.k8s.{name}"}
        for name in (
            "api.core.v1.Container",
            "api.core.v1.Toleration",
            "api.core.v1.Affinity",
            "apimachinery.pkg.apis.meta.v1.ObjectMeta",
        )
    }
    container = {
        "allOf": [ref["api.core.v1.Container"]],
        "type": "object",
        "additionalProperties": False,
        "properties": {k: {} for k in ("name", "image", "resources", "env")},
    }
    spec = {
        "type": "object",
        "required": ["containers"],
        "additionalProperties": False,
        "properties": {
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
            "tolerations": {"type": "array", "items": ref["api.core.v1.Toleration"]},
            "affinity": ref["api.core.v1.Affinity"],
            "runtimeClassName": {"type": "string"},
            "priorityClassName": {"type": "string"},
            "containers": {"type": "array", "minItems": 1, "items": container},
        },
    }
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "v1"},
            "kind": {"const": "Pod"},
            "metadata": ref["apimachinery.pkg.apis.meta.v1.ObjectMeta"],
            "spec": spec,
        },
        "definitions": defs,
    }


def test_the_gpu_overlay_is_a_pod_with_a_base_container(schema):
    pod = yaml.safe_load((HELM / "pod-template-gpu.yaml").read_text())
    errors = list(jsonschema.Draft7Validator(pod_overlay_schema(schema["definitions"])).iter_errors(pod))
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == ["base"], f"the hook merges into the task container `base` only, got {names}"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_overlay_check_refuses_a_broken_pod(schema):
    pod = yaml.safe_load((HELM / "pod-template-gpu.yaml").read_text())
    pod["kind"] = "Deployment"
    pod["spec"]["containers"][0]["resources"]["limits"] = "one gpu"
    pod["spec"]["tolerations"][0]["tolerationSeconds"] = "soon"
    validator = jsonschema.Draft7Validator(pod_overlay_schema(schema["definitions"]))
    paths = {e.json_path for e in validator.iter_errors(pod)}
    wrong = ("$.kind", "$.spec.containers[0].resources.limits", "$.spec.tolerations[0].tolerationSeconds")
    for path in wrong:
        assert path in paths, f"{path} not refused: {sorted(paths)}"


def test_the_schema_is_the_charts(schema):
    """The stored file is the chart's schema (draft 7, Airflow's own keys), not some other chart's."""
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/schema")
    airflow_keys = {"executor", "airflowLocalSettings", "apiSecretKeySecretName", "jwtSecretName"}
    assert airflow_keys <= set(schema["properties"])
    assert schema["properties"]["defaultAirflowTag"]["default"] == "3.1.7"  # chart 1.19.0's default image
