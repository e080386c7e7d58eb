"""The KServe InferenceService that ``freestack.serving.manifests`` builds, checked against KServe's own CRD
(``include/serving/kserve-inferenceservice-crd.yaml``, v1beta1), the way SeldonDeployments are checked
against Seldon's: what the builder makes is accepted, and a broken one is refused naming the path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from freestack.errors import FreestackError
from freestack.serving import manifests
from tests.unit.serving.test_k8s import SECRET_ENV, keyed_target, target

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "include/serving/kserve-inferenceservice-crd.yaml"


def isvc(**kw) -> dict:
    return manifests.build_inference_service(
        "digits",
        model="digits",
        version="3",
        model_uri="s3://models/registry/digits/3",
        target=target(**kw),
        request_log_uri="s3://models/monitoring/digits",
    )


def refused(manifest: dict) -> dict[str, str]:
    """The violations ``validate_inference_service`` names, by JSON path."""
    with pytest.raises(manifests.ManifestInvalid) as info:
        manifests.validate_inference_service(manifest, CRD)
    assert "does not match KServe's v1beta1 CRD" in str(info.value)
    return dict(info.value.violations)


def test_the_vendored_crd_is_kserves_inference_service():
    (crd,) = [d for d in yaml.safe_load_all(CRD.read_text()) if d]
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "inferenceservices.serving.kserve.io"
    assert "v1beta1" in [v["name"] for v in crd["spec"]["versions"]]


def test_the_built_inference_service_validates():
    manifests.validate_inference_service(isvc(), CRD)
    manifests.validate_inference_service(isvc())  # the default: the copy in the checkout
    manifests.validate_inference_service(isvc(env_secret=None, service_account=None), CRD)


def test_the_openai_api_key_comes_from_the_secret_and_validates():
    """deploy.api_key.secret: the kserve-container reads FREESTACK_SERVER_API_KEY from the Secret
    (valueFrom.secretKeyRef), which KServe's CRD accepts; the /v1 routes need nothing more, since KServe
    routes http://<name>.<namespace>.<domain>/ (any path) to the container's HTTP port."""
    keyed = manifests.build_inference_service(
        "digits",
        model="digits",
        version="3",
        model_uri="s3://models/registry/digits/3",
        target=keyed_target(),
    )
    manifests.validate_inference_service(keyed, CRD)
    (c,) = keyed["spec"]["predictor"]["containers"]
    assert [e for e in c["env"] if e["name"] == "FREESTACK_SERVER_API_KEY"] == [SECRET_ENV]
    assert c["ports"][0] == {"name": "http", "containerPort": 9000, "protocol": "TCP"}
    assert all("valueFrom" not in e for e in isvc()["spec"]["predictor"]["containers"][0]["env"])
    broken = manifests.build_inference_service(
        "digits", model="digits", version="3", model_uri="s3://x", target=keyed_target()
    )
    ref = next(e for e in broken["spec"]["predictor"]["containers"][0]["env"] if "valueFrom" in e)
    ref["valueFrom"]["secretKeyRef"]["key"] = 7
    assert any("secretKeyRef.key" in path for path in refused(broken))


def test_a_wrong_field_type_is_refused_naming_its_path():
    bad = isvc()
    bad["spec"]["predictor"]["minReplicas"] = "two"
    bad["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "http"
    found = refused(bad)
    assert "not of type 'integer'" in found["$.spec.predictor.minReplicas"]
    assert "not of type 'integer'" in found["$.spec.predictor.containers[0].ports[0].containerPort"]


def test_a_missing_required_field_is_refused_naming_its_path():
    bad = isvc()
    del bad["spec"]["predictor"]["containers"][0]["name"]
    assert "'name' is a required property" in refused(bad)["$.spec.predictor.containers[0]"]
    no_spec = isvc()
    del no_spec["spec"]
    assert "'spec' is a required property" in refused(no_spec)["$"]


def test_unknown_fields_and_out_of_range_values_are_refused():
    bad = isvc()
    bad["spec"]["predictor"]["replicas"] = 2  # a SeldonDeployment field, not KServe's
    bad["spec"]["predictor"]["maxReplicas"] = 2**31  # int32
    found = refused(bad)
    assert "'replicas' was unexpected" in found["$.spec.predictor"]
    assert "int32" in found["$.spec.predictor.maxReplicas"]


def test_metadata_follows_kserves_naming_rule():
    bad = isvc()
    bad["metadata"]["name"] = "3digits"  # a valid DNS label, but KServe wants a leading letter
    assert "$.metadata.name" in refused(bad)
    wrong_kind = isvc()
    wrong_kind["apiVersion"] = "serving.kserve.io/v1alpha1"
    assert "$.apiVersion" in refused(wrong_kind)


def test_a_missing_crd_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(FreestackError, match="kserve-inferenceservice-crd.yaml"):
        manifests.validate_inference_service(isvc(), tmp_path / "missing.yaml")
    not_a_crd = tmp_path / "other.yaml"
    not_a_crd.write_text("kind: ConfigMap\n")
    with pytest.raises(FreestackError, match="v1beta1 openAPIV3Schema"):
        manifests.validate_inference_service(isvc(), not_a_crd)
