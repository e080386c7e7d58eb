"""The deploy stage's Kubernetes target: SeldonDeployment manifests validated against Seldon Core's CRD,
and apply / traffic / promote / rollback / the availability trigger at the Kubernetes API boundary
(a real HTTP server on 127.0.0.1 speaking the custom-objects REST API, ``tests/fakes/k8s_api.py``),
reached through the cncf.kubernetes provider's hooks and a connection from ``AIRFLOW_CONN_*``.

A last test talks to a real cluster when a kubeconfig and ``FREESTACK_K8S_TEST_NAMESPACE`` are set.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import time
import uuid
from pathlib import Path

import pytest

from freestack.errors import FreestackError
from freestack.kube import KubeRef
from freestack.serving import manifests, seldon_deployments
from freestack.serving.spec import DeploySpec, KubernetesTarget
from freestack_server.core.requestlog import SMOKE_ID
from tests.fakes.k8s_api import FakeKubeAPI, ProxyingKubeAPI, json_patch, merge_patch, stored_sample
from tests.support.ports import free_port
from tests.support.serving import make_version

REPO = Path(__file__).resolve().parents[3]
SHARED_CRD = Path(__file__).parents[3].parent / "shared/seldon/seldondeployment-crd.yaml"
VENDORED_CRD = REPO / "include/serving/seldondeployment-crd.yaml"
CRD = SHARED_CRD if SHARED_CRD.is_file() else VENDORED_CRD
CONN = "seldon_fake"
NS = "seldon"
DIGITS = KubeRef("digits", NS, CONN)  # the SeldonDeployment most tests deploy


def target(**kw) -> KubernetesTarget:
    base = {
        "conn_id": CONN,
        "namespace": NS,
        "image": "freestack/serving:0.1.0",
        "replicas": 2,
        "env_secret": "s3-credentials",
        "service_account": "seldon-models",
        "workers": 3,
        "threads": 2,
        "canary": {"traffic": 10, "replicas": 1},
    }
    return KubernetesTarget.model_validate({**base, **kw})


def manifest(version: str = "3", canary: str | None = None, name: str = "digits", **kw) -> dict:
    return manifests.build_manifest(
        name,
        model="digits",
        version=version,
        model_uri=f"s3://models/registry/digits/{version}",
        target=target(**kw),
        canary_version=canary,
        canary_uri=f"s3://models/registry/digits/{canary}" if canary else None,
    )


def env_of(predictor: dict) -> dict[str, str]:
    (container,) = predictor["componentSpecs"][0]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def keyed_target(**kw) -> KubernetesTarget:
    """``target()`` of a spec whose ``deploy.api_key`` names the Secret ``llm-api-key``."""
    spec = DeploySpec.model_validate(
        {
            "target": "kubernetes",
            "kubernetes": target(**kw).model_dump(),
            "runtime": "mlserver",
            "api_key": {"secret": "llm-api-key", "secret_key": "openai"},
        }
    )
    return spec.kubernetes


SECRET_ENV = {
    "name": "FREESTACK_SERVER_API_KEY",
    "valueFrom": {"secretKeyRef": {"name": "llm-api-key", "key": "openai"}},
}


# ---------------------------------------------------------------------------------------------------------
# manifests and the CRD


def test_vendored_crd_is_the_shared_one():
    assert VENDORED_CRD.is_file(), "include/serving/seldondeployment-crd.yaml is missing"
    if not SHARED_CRD.is_file():
        pytest.skip(f"no shared CRD at {SHARED_CRD} to compare with")
    assert VENDORED_CRD.read_bytes() == SHARED_CRD.read_bytes()


def test_manifest_without_canary_validates():
    m = manifest("3")
    manifests.validate_manifest(m, CRD)
    assert m["apiVersion"] == "machinelearning.seldon.io/v1" and m["kind"] == "SeldonDeployment"
    assert m["metadata"]["namespace"] == NS and m["metadata"]["name"] == "digits"
    assert m["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "freestack",
        "freestack.io/model": "digits",
        "freestack.io/version": "3",
    }
    (main,) = m["spec"]["predictors"]
    assert (main["name"], main["replicas"], main["traffic"]) == ("main", 2, 100)
    assert main["graph"] == {"name": "model", "type": "MODEL", "endpoint": {"type": "REST"}, "children": []}
    pod = main["componentSpecs"][0]["spec"]
    assert pod["serviceAccountName"] == "seldon-models"
    (c,) = pod["containers"]
    assert c["name"] == "model" and c["image"] == "freestack/serving:0.1.0"
    assert env_of(main) == {
        "FREESTACK_MODEL_URI": "s3://models/registry/digits/3",
        "FREESTACK_MODEL_VERSION": "3",
        "FREESTACK_MODEL_NAME": "digits",
        "FREESTACK_SERVER_RUNTIME": "seldon",
        "FREESTACK_SERVER_DEPLOYMENT": "digits",
        "FREESTACK_SERVER_WORKERS": "3",
        "FREESTACK_SERVER_THREADS": "2",
    }
    assert "command" not in c and "args" not in c  # the image's own CMD: python -m freestack_server
    assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    assert c["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health/ping" and c[probe]["httpGet"]["port"] == "http"
    # no secret, no service account: neither appears
    bare = manifest("3", env_secret=None, service_account=None, canary=None)
    manifests.validate_manifest(bare, CRD)
    pod = bare["spec"]["predictors"][0]["componentSpecs"][0]["spec"]
    assert "serviceAccountName" not in pod and "envFrom" not in pod["containers"][0]


def test_manifest_with_canary_validates():
    m = manifest("3", canary="4")
    manifests.validate_manifest(m, CRD)
    main, canary = m["spec"]["predictors"]
    assert (main["name"], main["traffic"], main["replicas"]) == ("main", 90, 2)
    assert (canary["name"], canary["traffic"], canary["replicas"]) == ("canary", 10, 1)
    assert env_of(canary)["FREESTACK_MODEL_VERSION"] == "4"
    assert env_of(canary)["FREESTACK_MODEL_URI"] == "s3://models/registry/digits/4"
    assert env_of(main)["FREESTACK_MODEL_VERSION"] == "3"
    assert m["metadata"]["labels"]["freestack.io/canary-version"] == "4"
    assert canary["labels"]["freestack.io/version"] == "4"


def test_an_mlserver_manifest_is_protocol_v2_and_validates():
    """runtime: mlserver: the mlserver image's own command (python -m freestack_server) with the same
    variables as Seldon's runtime, REST and gRPC ports, V2 probes; a canary too."""
    m = manifests.build_manifest(
        "digits",
        model="digits",
        version="3",
        model_uri="s3://models/registry/digits/3",
        target=target(),
        canary_version="4",
        canary_uri="s3://models/registry/digits/4",
        request_log_uri="s3://models/monitoring/digits",
        runtime="mlserver",
    )
    manifests.validate_manifest(m, CRD)
    assert m["spec"]["protocol"] == "v2"
    main, canary = m["spec"]["predictors"]
    (c,) = main["componentSpecs"][0]["spec"]["containers"]
    assert c["image"] == "freestack/mlserver:0.1.0" and "command" not in c and "args" not in c
    env = env_of(main)
    assert env["FREESTACK_SERVER_RUNTIME"] == "mlserver" and env["FREESTACK_MODEL_NAME"] == "digits"
    assert env["FREESTACK_MODEL_URI"] == "s3://models/registry/digits/3"
    assert env["FREESTACK_REQUEST_LOG_URI"] == "s3://models/monitoring/digits"
    assert env_of(canary)["FREESTACK_MODEL_URI"] == "s3://models/registry/digits/4"
    assert [p["containerPort"] for p in c["ports"]] == [9000, 9500]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/models/digits/ready"  # the model, not the server


def test_the_openai_api_key_comes_from_the_secret_in_both_runtimes_manifests(kube):
    """deploy.api_key.secret: each predictor's container reads FREESTACK_SERVER_API_KEY from the Secret
    (valueFrom.secretKeyRef; the key is in no manifest), the CRD accepts it, and so does the API server.
    /v1 is served on the container's HTTP port; a text-generation model's predictors (openai_api) run
    without Seldon's service orchestrator, whose router answers only /api/v1.0/... and /v2/..., so that the
    ingress's /seldon/<namespace>/<name>/ prefix reaches the server's /v1 too."""
    for runtime in ("seldon", "mlserver"):
        m = manifests.build_manifest(
            "digits",
            model="digits",
            version="3",
            model_uri="s3://models/registry/digits/3",
            target=keyed_target(),
            canary_version="4",
            canary_uri="s3://models/registry/digits/4",
            runtime=runtime,
            openai_api=True,
        )
        manifests.validate_manifest(m, CRD)
        for pred in m["spec"]["predictors"]:
            assert pred["annotations"] == {"seldon.io/no-engine": "true"}
            (c,) = pred["componentSpecs"][0]["spec"]["containers"]
            assert [e for e in c["env"] if e["name"] == "FREESTACK_SERVER_API_KEY"] == [SECRET_ENV]
            assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]  # env_secret stays as it was
            assert c["ports"][0] == {"name": "http", "containerPort": 9000, "protocol": "TCP"}
        plain = manifests.build_manifest(
            "digits", model="digits", version="3", model_uri="s3://x/3", target=target(), runtime=runtime
        )
        (c,) = plain["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"]
        assert all("valueFrom" not in e for e in c["env"])  # no deploy.api_key: no key asked for
        assert "annotations" not in plain["spec"]["predictors"][0]  # not generative: the orchestrator stays
    stored = seldon_deployments.apply(m, CONN)  # the fake API server validates it against the CRD too
    assert stored["spec"]["predictors"][0]["annotations"] == {"seldon.io/no-engine": "true"}
    (c,) = stored["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"]
    assert SECRET_ENV in c["env"] and manifests.served_version(stored) == (
        "3",
        "s3://models/registry/digits/3",
    )
    assert manifests.summary(stored)["predictors"][0]["version"] == "3"


def test_a_kserve_inference_service_runs_the_same_v2_container():
    isvc = manifests.build_inference_service(
        "digits", model="digits", version="3", model_uri="s3://models/registry/digits/3", target=target()
    )
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["metadata"]["namespace"] == NS and isvc["metadata"]["labels"]["freestack.io/version"] == "3"
    pred = isvc["spec"]["predictor"]
    (c,) = pred["containers"]
    assert pred["minReplicas"] == pred["maxReplicas"] == 2 and pred["serviceAccountName"] == "seldon-models"
    assert c["name"] == "kserve-container" and c["image"] == "freestack/mlserver:0.1.0"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["PROTOCOL"] == "v2" and env["FREESTACK_MODEL_URI"] == "s3://models/registry/digits/3"
    assert env["FREESTACK_SERVER_RUNTIME"] == "mlserver" and "command" not in c
    with pytest.raises(ValueError, match="not a valid Kubernetes name"):
        manifests.build_inference_service(
            "Digits!", model="digits", version="3", model_uri="s3://x", target=target()
        )


def test_label_values_are_sanitized_and_exact_values_kept_in_annotations():
    version = "2026-03-01T12:00:00+00:00/run 7_" + "x" * 80
    m = manifests.build_manifest(
        "digits",
        model="Digits Model!",
        version=version,
        model_uri="file:///tmp/m",
        target=target(),
        labels={"team": "ml platform", "example.com/tier": "gold"},
    )
    manifests.validate_manifest(m, CRD)  # label values valid (<= 63, alphanumeric ends)
    labels, ann = m["metadata"]["labels"], m["metadata"]["annotations"]
    assert len(labels["freestack.io/version"]) <= 63 and labels["freestack.io/version"].startswith(
        "2026-03-01T12"
    )
    assert labels["freestack.io/model"] == "Digits-Model"
    assert labels["team"] == "ml-platform" and labels["example.com/tier"] == "gold"
    assert ann["freestack.io/version"] == version and ann["freestack.io/model"] == "Digits Model!"
    with pytest.raises(ValueError, match="label key"):
        manifests.build_manifest(
            "digits", model="d", version="1", model_uri="u", target=target(), labels={"bad key!": "x"}
        )


def test_build_manifest_refuses_half_a_canary_and_a_canary_without_config():
    with pytest.raises(ValueError, match="canary_version was given without canary_uri"):
        manifests.build_manifest(
            "d", model="d", version="1", model_uri="u", target=target(), canary_version="2"
        )
    with pytest.raises(ValueError, match="canary_uri was given without canary_version"):
        manifests.build_manifest("d", model="d", version="1", model_uri="u", target=target(), canary_uri="v")
    with pytest.raises(ValueError, match="deploy.kubernetes.canary is not set"):
        manifests.build_manifest(
            "d",
            model="d",
            version="1",
            model_uri="u",
            target=target(canary=None),
            canary_version="2",
            canary_uri="v",
        )
    with pytest.raises(ValueError, match="not a valid Kubernetes name"):
        manifests.build_manifest("Digits_v2", model="d", version="1", model_uri="u", target=target())
    # a plain dict target works too (the operator may hold the spec as a dict)
    m = manifests.build_manifest("d", model="d", version="1", model_uri="u", target={"namespace": "ml"})
    assert m["metadata"]["namespace"] == "ml"


def test_broken_manifest_is_rejected_naming_each_path():
    bad = manifest("3", canary="4")
    bad["spec"]["predictors"][0]["traffic"] = "ninety"
    del bad["spec"]["predictors"][1]["graph"]
    bad["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["envfrom"] = []
    with pytest.raises(manifests.ManifestInvalid) as info:
        manifests.validate_manifest(bad, CRD)
    msg = str(info.value)
    assert "$.spec.predictors[0].traffic: 'ninety' is not of type 'integer'" in msg
    assert "$.spec.predictors[1]: 'graph' is a required property" in msg
    assert "'envfrom' was unexpected" in msg
    assert "seldon/digits" in msg and str(CRD) in msg
    assert ("$.spec.predictors[0].traffic", "'ninety' is not of type 'integer'") in info.value.violations

    no_graph = manifest("3", canary=None)
    del no_graph["spec"]["predictors"][0]["graph"]
    with pytest.raises(
        manifests.ManifestInvalid, match=r"\$\.spec\.predictors\[0\]: 'graph' is a required property"
    ):
        manifests.validate_manifest(no_graph, CRD)

    wrong_kind = manifest("3")
    wrong_kind["apiVersion"] = "machinelearning.seldon.io/v1alpha2"
    with pytest.raises(manifests.ManifestInvalid, match=r"\$\.apiVersion"):
        manifests.validate_manifest(wrong_kind, CRD)

    # what Seldon's webhook rejects beyond the schema
    split = manifest("3", canary="4")
    split["spec"]["predictors"][0]["traffic"] = 50
    with pytest.raises(manifests.ManifestInvalid, match="traffic adds up to 60, not 100"):
        manifests.validate_manifest(split, CRD)
    renamed = manifest("3")
    renamed["spec"]["predictors"][0]["graph"]["name"] = "classifier"
    with pytest.raises(
        manifests.ManifestInvalid, match=r"graph\.name: graph node 'classifier' has no container"
    ):
        manifests.validate_manifest(renamed, CRD)


def test_int_or_string_and_nullable_fields():
    m = manifest("3")
    c = m["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]
    c["resources"]["limits"]["cpu"] = 2  # int-or-string: an integer...
    c["readinessProbe"]["httpGet"]["port"] = 9000
    m["spec"]["predictors"][0]["componentSpecs"][0]["metadata"] = {"creationTimestamp": None}  # nullable
    manifests.validate_manifest(m, CRD)
    c["resources"]["limits"]["cpu"] = "1500m"  # ... or a quantity string
    manifests.validate_manifest(m, CRD)
    c["resources"]["limits"]["cpu"] = "two cores"  # but the quantity pattern holds
    with pytest.raises(
        manifests.ManifestInvalid, match=r"resources\.limits\.cpu: 'two cores' does not match"
    ):
        manifests.validate_manifest(m, CRD)
    c["resources"]["limits"]["cpu"] = "1"
    m["spec"]["predictors"][0]["replicas"] = 2**31  # format int32
    with pytest.raises(manifests.ManifestInvalid, match=r"replicas"):
        manifests.validate_manifest(m, CRD)
    m["spec"]["predictors"][0]["replicas"] = 1
    m["metadata"]["labels"]["freestack.io/version"] = "not a label value!"
    with pytest.raises(manifests.ManifestInvalid, match=r"\$\.metadata\.labels"):
        manifests.validate_manifest(m, CRD)


def test_default_crd_path_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(manifests.CRD_ENV, raising=False)
    assert manifests.default_crd_path() == VENDORED_CRD
    manifests.validate_manifest(manifest("3"))  # the default: the copy in the checkout
    monkeypatch.setenv(manifests.CRD_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(FreestackError, match=f"set {manifests.CRD_ENV}"):
        manifests.validate_manifest(manifest("3"))
    (tmp_path / "other.yaml").write_text("kind: ConfigMap\n")
    monkeypatch.setenv(manifests.CRD_ENV, str(tmp_path / "other.yaml"))
    with pytest.raises(FreestackError, match="is not the SeldonDeployment CRD"):
        manifests.validate_manifest(manifest("3"))


def test_availability_reads_seldon_v1_status():
    obj = {"metadata": {"name": "d", "namespace": "ns", "generation": 2}, "spec": {}}
    assert manifests.availability(obj)[0] == "progressing"
    obj["status"] = {"state": "Available", "observedGeneration": 1}
    state, msg = manifests.availability(obj)
    assert state == "progressing" and "has not processed generation 2" in msg  # stale: the previous spec's
    obj["status"] = {
        "state": "Available",
        "observedGeneration": 2,
        "deploymentStatus": {"d-main-0-model": {"replicas": 2, "availableReplicas": 1}},
    }
    assert manifests.availability(obj)[0] == "progressing"
    obj["status"]["deploymentStatus"]["d-main-0-model"]["availableReplicas"] = 2
    assert manifests.availability(obj) == (
        "available",
        "SeldonDeployment ns/d is Available: d-main-0-model 2/2 available",
    )
    obj["status"] = {"state": "Failed", "description": "Deployment d-main-0-model failed: ImagePullBackOff"}
    state, msg = manifests.availability(obj)
    assert state == "failed" and "ImagePullBackOff" in msg
    obj["status"] = {"state": "Creating", "description": "waiting for pods"}
    assert manifests.availability(obj) == ("progressing", "SeldonDeployment ns/d: Creating: waiting for pods")


def test_fake_patch_semantics():
    doc = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert merge_patch(doc, {"a": {"b": None, "c": [3]}, "e": 1}) == {"a": {"c": [3]}, "d": "x", "e": 1}
    assert json_patch(
        doc,
        [
            {"op": "test", "path": "/d", "value": "x"},
            {"op": "replace", "path": "/a/c/1", "value": 9},
            {"op": "add", "path": "/a/c/-", "value": 7},
            {"op": "remove", "path": "/a/b"},
        ],
    ) == {"a": {"c": [1, 9, 7]}, "d": "x"}


# ---------------------------------------------------------------------------------------------------------
# at the Kubernetes API boundary


@pytest.fixture
def kube(monkeypatch):
    api = FakeKubeAPI().start()
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": api.kubeconfig()}}),
    )
    yield api
    api.stop()


def wait_available(name: str = "digits", timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        obj = seldon_deployments.get(KubeRef(name, NS, CONN))
        state, msg = manifests.availability(obj)
        if state == "available":
            return obj
        assert time.monotonic() < deadline, msg
        time.sleep(0.02)


def test_apply_creates_then_replaces_with_resource_version(kube):
    stored = seldon_deployments.apply(manifest("3"), CONN)
    assert stored["metadata"]["generation"] == 1 and stored["metadata"]["resourceVersion"]
    assert [c["method"] for c in kube.calls()] == ["POST"]
    obj = wait_available()
    assert obj["status"]["observedGeneration"] == 1

    kube.requests.clear()
    stored = seldon_deployments.apply(manifest("4"), CONN)
    assert [c["method"] for c in kube.calls()] == ["POST", "GET", "PUT"]  # 409 AlreadyExists -> replace
    put = kube.calls("PUT")[0]["body"]
    assert put["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert stored["metadata"]["generation"] == 2
    assert env_of(stored["spec"]["predictors"][0])["FREESTACK_MODEL_VERSION"] == "4"
    assert stored["status"]["observedGeneration"] == 1  # the controller has not seen it yet
    assert manifests.availability(stored)[0] == "progressing"
    obj = wait_available()
    assert obj["status"]["observedGeneration"] == 2
    assert seldon_deployments.get(DIGITS)["metadata"]["labels"]["freestack.io/version"] == "4"

    again = seldon_deployments.apply(manifest("4"), CONN)  # the same spec: no new generation
    assert again["metadata"]["generation"] == 2
    assert seldon_deployments.get(KubeRef("missing", NS, CONN)) is None
    assert seldon_deployments.delete(DIGITS) is True
    assert seldon_deployments.delete(DIGITS) is False
    assert seldon_deployments.get(DIGITS) is None


def test_apply_retries_when_another_writer_wins_the_race(kube):
    seldon_deployments.apply(manifest("3"), CONN)
    wait_available()  # the fake controller is done writing status
    kube.before_write.append(lambda: kube.touch(NS, "digits"))  # lands between our read and our write
    kube.requests.clear()
    stored = seldon_deployments.apply(manifest("4"), CONN)
    assert [c["method"] for c in kube.calls()] == ["POST", "GET", "PUT", "GET", "PUT"]
    assert kube.calls("PUT")[1]["body"]["metadata"]["resourceVersion"] == str(
        int(kube.calls("PUT")[0]["body"]["metadata"]["resourceVersion"]) + 1
    )
    assert env_of(stored["spec"]["predictors"][0])["FREESTACK_MODEL_VERSION"] == "4"


def test_apply_leaves_objects_freestack_does_not_manage(kube):
    foreign = manifest("3")
    foreign["metadata"]["labels"] = {"team": "other"}
    seldon_deployments.apply(foreign, CONN)
    with pytest.raises(seldon_deployments.DeployError, match="not managed by freestack"):
        seldon_deployments.apply(manifest("4"), CONN)
    stored = seldon_deployments.apply(manifest("4"), CONN, force=True)
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "freestack"


def test_dry_run_stores_nothing(kube):
    seldon_deployments.apply(manifest("3"), CONN, dry_run=True)
    assert kube.calls("POST")[0]["query"] == {"dryRun": ["All"]}
    assert seldon_deployments.get(DIGITS) is None


def test_set_traffic_promote_and_rollback(kube):
    seldon_deployments.apply(manifest("3", canary="4"), CONN)
    with pytest.raises(ValueError, match="0..100"):
        seldon_deployments.set_traffic(DIGITS, canary_traffic=101)
    wait_available()  # the fake controller's status writes are done: `before` stays current

    kube.requests.clear()
    before = seldon_deployments.get(DIGITS)
    obj = seldon_deployments.set_traffic(DIGITS, canary_traffic=50)
    patch = kube.calls("PATCH")[0]
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"]["metadata"] == {"resourceVersion": before["metadata"]["resourceVersion"]}
    assert [(p["name"], p["traffic"]) for p in obj["spec"]["predictors"]] == [("main", 50), ("canary", 50)]
    assert obj["metadata"]["generation"] == 2
    # a patch that races another writer is retried on a fresh read
    kube.before_write.append(lambda: kube.touch(NS, "digits"))
    obj = seldon_deployments.set_traffic(DIGITS, canary_traffic=25)
    assert [p["traffic"] for p in obj["spec"]["predictors"]] == [75, 25]
    assert obj["metadata"]["annotations"]["fake/touched"]  # the other writer's change survived

    obj = seldon_deployments.promote_canary(DIGITS, version="4")
    (main,) = obj["spec"]["predictors"]
    assert (main["name"], main["traffic"], main["replicas"]) == ("main", 100, 2)
    assert env_of(main)["FREESTACK_MODEL_VERSION"] == "4"
    assert env_of(main)["FREESTACK_MODEL_URI"] == "s3://models/registry/digits/4"
    assert obj["metadata"]["labels"]["freestack.io/version"] == "4"
    assert "freestack.io/canary-version" not in obj["metadata"]["labels"]
    assert obj["metadata"]["annotations"]["freestack.io/model-uri"] == "s3://models/registry/digits/4"
    manifests.validate_manifest(obj, CRD)  # the stored object (status, uid, ...) still matches the CRD
    # a retried promote is harmless; promoting another version is refused
    assert (
        seldon_deployments.promote_canary(DIGITS, version="4")["metadata"]["generation"]
        == obj["metadata"]["generation"]
    )
    with pytest.raises(seldon_deployments.DeployError, match="no 'canary' predictor to promote"):
        seldon_deployments.promote_canary(DIGITS, version="5")
    with pytest.raises(seldon_deployments.DeployError, match="no 'canary' predictor to send traffic to"):
        seldon_deployments.set_traffic(DIGITS, canary_traffic=10)

    seldon_deployments.apply(manifest("4", canary="5"), CONN)
    with pytest.raises(seldon_deployments.DeployError, match="serves version '5', not '6'"):
        seldon_deployments.promote_canary(DIGITS, version="6")
    obj = seldon_deployments.rollback_canary(DIGITS)
    (main,) = obj["spec"]["predictors"]
    assert main["traffic"] == 100 and env_of(main)["FREESTACK_MODEL_VERSION"] == "4"
    assert "freestack.io/canary-version" not in obj["metadata"]["labels"]
    assert (
        seldon_deployments.rollback_canary(DIGITS)["metadata"]["generation"] == obj["metadata"]["generation"]
    )
    assert manifests.summary(obj)["predictors"] == [
        {
            "name": "main",
            "version": "4",
            "model_uri": "s3://models/registry/digits/4",
            "traffic": 100,
            "replicas": 2,
            "image": "freestack/serving:0.1.0",
        }
    ]
    with pytest.raises(seldon_deployments.DeployError, match="does not exist"):
        seldon_deployments.rollback_canary(KubeRef("other", NS, CONN))


def test_crd_not_installed_says_so(kube):
    kube.crd_installed = False
    with pytest.raises(seldon_deployments.DeployError) as info:
        seldon_deployments.apply(manifest("3"), CONN)
    msg = str(info.value)
    assert (
        "Seldon Core's CRD is not installed" in msg and "seldondeployments.machinelearning.seldon.io" in msg
    )
    assert kube.url in msg and "seldon/digits" in msg and "404" in msg
    with pytest.raises(seldon_deployments.DeployError, match="CRD is not installed"):
        seldon_deployments.get(DIGITS)  # not "absent": the type itself is missing


def test_rbac_namespace_and_server_side_validation_errors(kube):
    kube.forbidden = True
    with pytest.raises(
        seldon_deployments.DeployError, match=r"403 .*RBAC.*kubectl auth can-i create seldondeployments"
    ):
        seldon_deployments.apply(manifest("3"), CONN)
    kube.forbidden = False
    kube.namespaces = {"default"}
    with pytest.raises(seldon_deployments.DeployError, match="Namespace 'seldon' does not exist: create it"):
        seldon_deployments.apply(manifest("3"), CONN)
    kube.namespaces = None
    bad = manifest("3")
    bad["spec"]["predictors"][0]["traffic"] = "all"
    with pytest.raises(
        seldon_deployments.DeployError, match=r"422.*\n  spec\.predictors\[0\]\.traffic: Invalid value"
    ) as info:
        seldon_deployments.apply(bad, CONN)
    assert info.value.status == 422 and not isinstance(info.value, seldon_deployments.KubernetesUnavailable)
    kube.fail_next = [503]
    with pytest.raises(seldon_deployments.KubernetesUnavailable, match="503.*retry later"):
        seldon_deployments.get(DIGITS)


def unreachable_conn(monkeypatch) -> tuple[str, str]:
    url = f"http://127.0.0.1:{free_port()}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    # a JSON string works as well as a dict, and the pre-2.3 prefixed extra name too
    monkeypatch.setenv(
        "AIRFLOW_CONN_K8S_DOWN",
        json.dumps(
            {"conn_type": "kubernetes", "extra": {"extra__kubernetes__kube_config": json.dumps(kubeconfig)}}
        ),
    )
    return "k8s_down", url


def test_unreachable_server_and_missing_connection(monkeypatch):
    conn, url = unreachable_conn(monkeypatch)
    with pytest.raises(seldon_deployments.KubernetesUnavailable) as info:
        seldon_deployments.apply(manifest("3"), conn)
    msg = str(info.value)
    assert f"cannot reach the Kubernetes API server {url}" in msg and "'k8s_down'" in msg
    assert "seldon/digits" in msg and "kubectl cluster-info" in msg
    with pytest.raises(
        seldon_deployments.KubernetesUnavailable,
        match="cannot load the Kubernetes configuration of connection 'no_such_conn'",
    ):
        seldon_deployments.get(KubeRef("digits", NS, "no_such_conn"))


# ---------------------------------------------------------------------------------------------------------
# the rollout's smoke test: the version's stored rows, through the API server's service proxy


@pytest.fixture
def rollout(tmp_path, storage, monkeypatch):
    """A kubernetes deploy of ``digits`` (canary 10%) with versions v1, v2 registered, against the proxying fake."""

    api = ProxyingKubeAPI().start()
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": api.kubeconfig()}}),
    )
    uris = {
        v: make_version(storage, "digits", v, tmp_path, seed=i) for i, v in enumerate(("v1", "v2"), start=1)
    }
    yield api, digits_spec(), uris
    api.stop()


def digits_spec(**deploy):
    """digits.yaml deployed to the fake cluster (a canary at 10%), with ``deploy``'s other fields."""
    import yaml

    from freestack.spec import parse_spec

    data = yaml.safe_load((REPO / "include" / "pipelines" / "digits.yaml").read_text())
    data["deploy"] = {
        "target": "kubernetes",
        "kubernetes": {"conn_id": CONN, "namespace": NS, "canary": {"traffic": 10, "replicas": 1}},
        **deploy,
    }
    return parse_spec(data, "digits.yaml")


def roll_out(spec, version: str, uri: str) -> dict:
    seldon_deployments.start_rollout(spec, version, uri, reason="test")
    wait_available()
    return seldon_deployments.finish_rollout(
        spec, {"status": "available", "name": "digits", "namespace": NS, "message": "ok"}
    )


def test_a_rollout_sends_the_versions_rows_and_compares_the_answers(rollout):
    api, spec, uris = rollout
    api.pods["digits-main"] = uris["v1"]
    record = roll_out(spec, "v1", uris["v1"])
    sample = stored_sample(uris["v1"])
    (sent,) = [r for r in api.requests if "service" in r]
    assert sent["path"] == f"/api/v1/namespaces/{NS}/services/digits-main:http/proxy/api/v1.0/predictions"
    assert sent["body"]["data"] == {"names": sample["features"], "ndarray": sample["rows"]}
    assert sent["body"]["meta"]["puid"].startswith(SMOKE_ID)
    assert record["state"] == "serving" and record["smoke"]["rows"] == len(sample["rows"])
    assert record["smoke"]["max_abs_diff"] < 1e-5


def test_a_keyed_rollout_sends_the_secrets_key_as_api_key_through_the_proxy(rollout):
    """deploy.api_key.secret (runtime mlserver): the smoke test reads the key from the Secret and sends it as
    ``api-key``, since the service proxy passes no ``Authorization``; a Secret without it fails naming it."""
    api, _, uris = rollout
    spec = digits_spec(runtime="mlserver", api_key={"secret": "llm-key", "secret_key": "openai"})
    api.pods["digits-main"], api.keys["digits-main"] = uris["v1"], "sk-cluster-key"
    with pytest.raises(
        seldon_deployments.DeployError, match=r"answered 404 .* to read Secret llm-key \(deploy.api_key\)"
    ):
        roll_out(spec, "v1", uris["v1"])
    api.secrets[NS, "llm-key"] = {"api-key": "sk-cluster-key"}
    with pytest.raises(
        seldon_deployments.DeployError, match=rf"Secret {NS}/llm-key has no key 'openai' .* it has api-key"
    ):
        roll_out(spec, "v1", uris["v1"])
    api.secrets[NS, "llm-key"] = {"openai": "sk-cluster-key"}
    record = roll_out(spec, "v1", uris["v1"])
    assert record["state"] == "serving" and record["smoke"]["max_abs_diff"] < 1e-5
    sent = [r for r in api.requests if "service" in r][-1]
    assert sent["path"].endswith("/proxy/v2/models/digits/infer")


def test_a_canary_that_answers_otherwise_fails_and_is_removed(rollout):
    api, spec, uris = rollout
    api.pods["digits-main"] = uris["v1"]
    roll_out(spec, "v1", uris["v1"])
    api.pods["digits-canary"] = uris["v1"]  # the canary's pods do not serve v2's model
    with pytest.raises(
        seldon_deployments.DeployError,
        match=r"smoke row 0 .*as the evaluated one\nThe canary \(v2\) was removed",
    ):
        roll_out(spec, "v2", uris["v2"])
    assert [p["name"] for p in seldon_deployments.get(DIGITS)["spec"]["predictors"]] == ["main"]
    api.pods["digits-canary"] = uris["v2"]
    record = roll_out(spec, "v2", uris["v2"])
    assert (record["version"], record["canary_version"], record["state"]) == ("v1", "v2", "serving")


def test_a_rollout_the_model_cannot_answer_says_where_it_asked(rollout):
    api, spec, uris = rollout  # no pods behind the service: the API server answers 503
    with pytest.raises(
        seldon_deployments.DeployError,
        match=r"smoke request to .*services/digits-main:http/proxy answered HTTP 503",
    ):
        roll_out(spec, "v1", uris["v1"])


def test_a_version_without_test_rows_is_not_rolled_out(rollout):
    api, spec, uris = rollout
    Path(uris["v2"].removeprefix("file://"), "evaluation", "smoke.json").unlink()
    with pytest.raises(seldon_deployments.DeployError, match="has no evaluation/smoke.json"):
        seldon_deployments.start_rollout(spec, "v2", uris["v2"], reason="test")
    assert not api.calls("POST") and seldon_deployments.get(DIGITS) is None


def test_predictor_service_names_follow_seldon():
    assert seldon_deployments.predictor_service("digits", "canary") == "digits-canary"
    long = seldon_deployments.predictor_service("d" * 60, "canary")
    assert long.startswith("seldon-") and len(long) == len("seldon-") + 32


# ---------------------------------------------------------------------------------------------------------
# the trigger


def run_trigger(trigger) -> dict:
    async def collect():
        gen = trigger.run()
        event = await gen.__anext__()
        with pytest.raises(StopAsyncIteration):  # exactly one event
            await gen.__anext__()
        return event.payload

    return asyncio.run(collect())


def make_trigger(name="digits", timeout=5.0, poll=0.02, conn=CONN):
    from freestack.serving.triggers import SeldonDeploymentAvailableTrigger

    return SeldonDeploymentAvailableTrigger(
        name=name, namespace=NS, conn_id=conn, timeout_seconds=timeout, poll_seconds=poll
    )


def test_trigger_serializes_round_trip():
    import importlib

    t = make_trigger(timeout=60, poll=5)
    path, kwargs = t.serialize()
    module, cls = path.rsplit(".", 1)
    again = getattr(importlib.import_module(module), cls)(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert kwargs["deadline"] == pytest.approx(
        time.time() + 60, abs=5
    )  # absolute: a restart does not extend it
    assert {k: kwargs[k] for k in ("name", "namespace", "conn_id", "timeout_seconds", "poll_seconds")} == {
        "name": "digits",
        "namespace": NS,
        "conn_id": CONN,
        "timeout_seconds": 60.0,
        "poll_seconds": 5.0,
    }


def test_trigger_available_after_transient_errors(kube):
    seldon_deployments.apply(manifest("3"), CONN)
    kube.fail_next = [503, 500]
    event = run_trigger(make_trigger())
    assert event["status"] == "available", event
    assert event["name"] == "digits" and event["namespace"] == NS and "Available" in event["message"]
    assert len(kube.calls("GET")) >= 3


def test_trigger_does_not_take_the_previous_specs_available_as_success(kube):
    seldon_deployments.apply(manifest("3"), CONN)
    wait_available()
    kube.reconcile_after = 30  # the controller has not looked at the new spec yet
    seldon_deployments.apply(manifest("4"), CONN)
    event = run_trigger(make_trigger(timeout=0.4))
    assert event["status"] == "timeout"
    assert (
        "has not processed generation 2" in event["message"]
        and "kubectl -n seldon get pods" in event["message"]
    )
    kube.set_status(NS, "digits", "Available")
    assert run_trigger(make_trigger())["status"] == "available"


def test_trigger_failed_and_timeout(kube):
    kube.outcome = "Failed"
    seldon_deployments.apply(manifest("3"), CONN)
    event = run_trigger(make_trigger())
    assert event["status"] == "failed" and "ImagePullBackOff" in event["message"]

    kube.ready_after = None  # stays Creating
    seldon_deployments.apply(manifest("3", name="slow"), CONN)
    started = time.monotonic()
    event = run_trigger(make_trigger(name="slow", timeout=0.3))
    assert event["status"] == "timeout" and time.monotonic() - started < 3
    assert "was not Available within 0.3s" in event["message"] and "Creating" in event["message"]

    event = run_trigger(make_trigger(name="gone"))
    assert event["status"] == "failed" and "no longer exists" in event["message"]


def test_trigger_errors_that_waiting_will_not_fix(kube, monkeypatch):
    kube.crd_installed = False
    event = run_trigger(make_trigger())
    assert event["status"] == "error" and "CRD is not installed" in event["message"]
    kube.crd_installed, kube.forbidden = True, True
    assert "RBAC" in run_trigger(make_trigger())["message"]
    event = run_trigger(make_trigger(conn="no_such_conn"))
    assert event["status"] == "error" and "'no_such_conn'" in event["message"]


def test_trigger_retries_an_unreachable_server_until_the_deadline(monkeypatch):
    conn, url = unreachable_conn(monkeypatch)
    event = run_trigger(make_trigger(conn=conn, timeout=0.3, poll=0.05))
    assert event["status"] == "timeout"
    assert f"cannot reach the Kubernetes API server {url}" in event["message"]


# ---------------------------------------------------------------------------------------------------------
# a real cluster, when there is one


def _kubeconfig() -> str | None:
    env = os.environ.get("KUBECONFIG")
    if env:
        found = [p for p in env.split(os.pathsep) if p and Path(p).expanduser().is_file()]
        return str(Path(found[0]).expanduser()) if found else None
    default = Path("~/.kube/config").expanduser()
    return str(default) if default.is_file() else None


def test_real_cluster(monkeypatch):
    path = _kubeconfig()
    if path is None:
        pytest.skip("no kubeconfig (KUBECONFIG or ~/.kube/config): no Kubernetes cluster to test against")
    namespace = os.environ.get("FREESTACK_K8S_TEST_NAMESPACE")
    if not namespace:
        pytest.skip(
            "a kubeconfig is present; set FREESTACK_K8S_TEST_NAMESPACE to a namespace this test may "
            "create a SeldonDeployment in"
        )
    monkeypatch.setenv(
        "AIRFLOW_CONN_K8S_REAL", json.dumps({"conn_type": "kubernetes", "extra": {"kube_config_path": path}})
    )
    name = f"freestack-test-{uuid.uuid4().hex[:8]}"
    m = manifests.build_manifest(
        name,
        model="digits",
        version="1",
        model_uri="file:///nonexistent",
        target={"namespace": namespace, "replicas": 1},
        labels={"freestack.io/test": "true"},
    )
    manifests.validate_manifest(m, CRD)
    try:
        seldon_deployments.get(KubeRef(name, namespace, "k8s_real"))
    except seldon_deployments.DeployError as exc:
        if "CRD is not installed" in str(exc):
            pytest.skip(f"Seldon Core's CRD is not installed on the cluster of {path}: {exc}")
        raise
    try:
        seldon_deployments.apply(
            m, "k8s_real", dry_run=True
        )  # the API server and Seldon's webhook validate it
        stored = seldon_deployments.apply(m, "k8s_real")
        assert stored["metadata"]["generation"] >= 1
        assert (
            seldon_deployments.get(KubeRef(name, namespace, "k8s_real"))["spec"]["predictors"][0]["traffic"]
            == 100
        )
        replaced = seldon_deployments.apply(copy.deepcopy(m), "k8s_real")
        assert replaced["metadata"]["uid"] == stored["metadata"]["uid"]
        assert manifests.availability(replaced)[0] in ("progressing", "available", "failed")
    finally:
        seldon_deployments.delete(KubeRef(name, namespace, "k8s_real"))
