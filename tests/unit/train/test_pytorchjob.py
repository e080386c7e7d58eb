"""``train.distributed`` with ``launcher: kubernetes``: the PyTorchJob manifest validated against the Kubeflow
Training Operator's CRD (``include/training/pytorchjob-crd.yaml``), and the train task's path through the
Kubernetes API (``tests/fakes/k8s_api.py``'s FakeTrainingAPI, a fake operator moving the job's conditions):
create, follow, read rank 0's outcome; a Failed job; a job left by a killed attempt.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from freestack.errors import FreestackError
from freestack.kube import KubeRef
from freestack.spec import load_spec
from freestack.storage import join, to_path, write_bytes
from freestack.tracking.wandb import WandbSettings
from freestack.train import manifests as kube_job
from freestack.train import pytorchjobs
from freestack.train.distributed import Launch, LaunchError
from freestack.train.request import TrainRequest, places
from tests.fakes.k8s_api import FakeTrainingAPI

REPO = Path(__file__).resolve().parents[3]
CRD = REPO / "include/training/pytorchjob-crd.yaml"
CONN = "training_fake"
NS = "training"
RUN_KEY = "digits_train/manual__2026-11-10T00:00:00+00:00"
SECRET_KEY = "wandb-key-that-must-not-travel-0123456789"


def make_spec(tmp_path: Path, train: dict | None = None, **distributed):
    """digits.yaml with a train.distributed block for the kubernetes launcher (and ``train``'s other
    fields), as a file (the launch reads it)."""
    data = yaml.safe_load((REPO / "include/pipelines/digits.yaml").read_text())
    data["train"]["distributed"] = {"launcher": "kubernetes", "namespace": NS, **distributed}
    data["train"].update(train or {})
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path), str(path)


def manifest_for(spec, name: str = "digits-run-1") -> dict:
    return kube_job.pytorchjob_manifest(
        spec,
        name=name,
        launch_uri="s3://freestack_s3@runs/digits/launch.json",
        run_id="digits-run-1",
        run_key=RUN_KEY,
        storage_root="s3://freestack_s3@runs",
    )


def container_of(manifest: dict, rtype: str = "Master") -> dict:
    (c,) = manifest["spec"]["pytorchReplicaSpecs"][rtype]["template"]["spec"]["containers"]
    return c


# ---------------------------------------------------------------------------------------------------------
# the manifest and the CRD


def test_the_stored_crd_is_the_operators_v1_pytorchjob():
    head = CRD.read_text().splitlines()[:3]
    assert "kubeflow/training-operator" in head[0] and re.search(r"commit [0-9a-f]{40}", head[1])
    crd = next(d for d in yaml.safe_load_all(CRD.read_text()) if d)
    assert crd["metadata"]["name"] == kube_job.CRD_NAME and crd["spec"]["names"]["kind"] == "PyTorchJob"


@pytest.mark.parametrize("nodes", [1, 3])
@pytest.mark.parametrize("gpus", [0, 2])
def test_manifest_validates_for_cpu_and_gpu_one_and_several_nodes(tmp_path, nodes, gpus):
    spec, _ = make_spec(
        tmp_path,
        nodes=nodes,
        processes_per_node=2,
        gpus_per_node=gpus,
        threads_per_process=3,
        image="registry.example/freestack/airflow:1.2.3",
    )
    m = manifest_for(spec)
    kube_job.validate_pytorchjob(m, CRD)
    kube_job.validate_pytorchjob(m)  # the checkout's copy, found by default
    assert (m["apiVersion"], m["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert m["metadata"]["namespace"] == NS
    assert m["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "freestack",
        "freestack.io/pipeline": "digits",
        "freestack.io/run": "digits_train-manual__2026-11-10T00-00-00-00-00",
    }
    assert m["metadata"]["annotations"]["freestack.io/run"] == RUN_KEY
    job = m["spec"]
    assert job["nprocPerNode"] == "2"
    assert job["runPolicy"]["backoffLimit"] == 0 and job["runPolicy"]["cleanPodPolicy"] == "Running"
    replicas = job["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert ("Worker" in replicas) == (nodes > 1)
    if nodes > 1:
        assert replicas["Worker"]["replicas"] == nodes - 1
        assert container_of(m, "Worker") == container_of(m, "Master")
    for r in replicas.values():
        assert r["restartPolicy"] == "Never"
        assert r["template"]["metadata"]["labels"] == m["metadata"]["labels"]
    c = container_of(m)
    assert c["name"] == "pytorch" and c["image"] == "registry.example/freestack/airflow:1.2.3"
    assert c["command"] == [
        "torchrun",
        f"--nnodes={nodes}",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)",
        "--rdzv-id=digits-run-1",
        "--rdzv-conf=join_timeout=300",
        "--max-restarts=0",
        "-m",
        "freestack.train.distributed",
        "s3://freestack_s3@runs/digits/launch.json",
    ]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["OMP_NUM_THREADS"] == "3" and env["FREESTACK_STORAGE_ROOT"] == "s3://freestack_s3@runs"
    assert c["envFrom"] == [
        {"secretRef": {"name": "freestack-s3", "optional": True}},
        {"secretRef": {"name": "freestack-wandb", "optional": True}},
    ]
    assert c["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
    assert c["resources"]["requests"] == {"cpu": "6"}
    assert c["resources"].get("limits") == ({"nvidia.com/gpu": "2"} if gpus else None)


def test_manifest_names_other_secrets_and_a_service_account(tmp_path):
    spec, _ = make_spec(tmp_path)
    m = kube_job.pytorchjob_manifest(
        spec,
        name="digits-x",
        launch_uri="file:///l.json",
        run_id="r",
        secrets=["team-s3"],
        service_account="trainer",
        active_deadline_seconds=600,
    )
    kube_job.validate_pytorchjob(m, CRD)
    assert container_of(m)["envFrom"] == [{"secretRef": {"name": "team-s3", "optional": True}}]
    assert m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["serviceAccountName"] == "trainer"
    assert m["spec"]["runPolicy"]["activeDeadlineSeconds"] == 600
    assert "FREESTACK_STORAGE_ROOT" not in {e["name"] for e in container_of(m)["env"]}


def _set(path: list, value):
    def change(m: dict) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _drop(path: list):
    def change(m: dict) -> None:
        node = m
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


MASTER = ["spec", "pytorchReplicaSpecs", "Master"]
MASTER_POD = [*MASTER, "template", "spec"]


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (_set(["spec", "nprocPerNode"], 2), "$.spec.nprocPerNode"),
        (_set(["spec", "nprocPerNode"], "two"), "$.spec.nprocPerNode"),
        (_drop([*MASTER_POD, "containers"]), "$.spec.pytorchReplicaSpecs.Master.template.spec"),
        (_set([*MASTER_POD, "containers"], []), "$.spec.pytorchReplicaSpecs.Master.template.spec.containers"),
        (
            _set([*MASTER_POD, "containers", 0, "name"], "trainer"),
            "$.spec.pytorchReplicaSpecs.Master.template.spec.containers",
        ),
        (
            _set([*MASTER_POD, "containers", 0, "ports", 0, "containerPort"], "23456"),
            "$.spec.pytorchReplicaSpecs.Master.template.spec.containers[0].ports[0].containerPort",
        ),
        (_set([*MASTER, "replicas"], 2), "$.spec.pytorchReplicaSpecs.Master.replicas"),
        (_set(["spec", "pytorchReplicaSpecs", "Chief"], {"replicas": 1}), "$.spec.pytorchReplicaSpecs.Chief"),
        (_drop(["spec", "pytorchReplicaSpecs"]), "$.spec"),
        (_set(["spec", "runPolicy", "backoffLimit"], "0"), "$.spec.runPolicy.backoffLimit"),
        (_set(["spec", "runPolicy", "restarts"], 0), "$.spec.runPolicy"),
        (_set(["metadata", "name"], "1-digits"), "$.metadata.name"),
        (_set(["metadata", "labels", "freestack.io/run"], "x" * 64), "$.metadata.labels['freestack.io/run']"),
    ],
)
def test_broken_manifests_are_refused_naming_the_path(tmp_path, change, path):
    spec, _ = make_spec(tmp_path, nodes=2)
    m = copy.deepcopy(manifest_for(spec))
    change(m)
    with pytest.raises(kube_job.ManifestInvalid) as err:
        kube_job.validate_pytorchjob(m, CRD)
    assert path in [p for p, _ in err.value.violations], err.value.violations
    assert path in str(err.value) and "PyTorchJob training/" in str(err.value)


def test_a_missing_crd_file_is_named(tmp_path):
    spec, _ = make_spec(tmp_path)
    with pytest.raises(FreestackError, match="pytorchjob-crd.yaml"):
        kube_job.validate_pytorchjob(manifest_for(spec), tmp_path / "nowhere.yaml")


def test_job_names_are_dns_labels_stable_per_run_and_distinct_between_runs():
    long_key = "digits_train/scheduled__2026-11-10T00:00:00+00:00" + "-x" * 40
    names = {kube_job.job_name("digits", f"{long_key}{i}") for i in range(50)}
    assert len(names) == 50  # the truncated part differs only in the hash
    for n in [*names, kube_job.job_name("9lives", "run"), kube_job.job_name("__", "//")]:
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= kube_job.MAX_JOB_NAME <= 63, n
    assert kube_job.job_name("digits", RUN_KEY) == kube_job.job_name("digits", RUN_KEY)


@pytest.mark.parametrize(
    ("conditions", "state"),
    [
        ([], "Pending"),
        ([("Created", "True")], "Created"),
        ([("Created", "True"), ("Running", "True")], "Running"),
        ([("Created", "True"), ("Running", "False"), ("Succeeded", "True")], "Succeeded"),
        ([("Created", "True"), ("Failed", "True"), ("Running", "True")], "Failed"),
    ],
)
def test_job_state_reads_the_conditions(conditions, state):
    obj = {"status": {"conditions": [{"type": t, "status": s} for t, s in conditions]}}
    assert kube_job.job_state(obj)[0] == state


# ---------------------------------------------------------------------------------------------------------
# the operator path, against the fake API server and operator


@pytest.fixture
def kube(monkeypatch):
    api = FakeTrainingAPI(reconcile_after=0.02, ready_after=0.15).start()
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": api.kubeconfig()}}),
    )
    yield api
    api.stop()


@pytest.fixture
def run(tmp_path, storage):
    """A kubernetes-launched digits training of 3 nodes x 2 ranks, its request and W&B settings with a key."""
    spec, path = make_spec(tmp_path, nodes=3, processes_per_node=2)
    req = TrainRequest(end_ds="2026-11-10", run_key=RUN_KEY)
    return spec, path, req, WandbSettings(mode="online", api_key=SECRET_KEY, project="digits")


def outcome_doc(version: str) -> dict:
    return {
        "version": version,
        "version_uri": f"file:///candidates/digits/{version}",
        "metrics": {"val_accuracy": 0.9},
        "partitions": [{"ds": "2026-11-10"}],
        "train": {"epochs": 3},
        "wandb": {"run_id": "abc"},
    }


def rank0_writes(spec, req, version: str = "v20261110-new"):
    """What rank 0 does before the job succeeds: outcome.json beside the launch file."""
    outcome = join(places(spec, req).run_dir, "outcome.json")

    def finish(job: dict) -> None:
        launch_uri = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
            "command"
        ][-1]
        Launch.model_validate_json(to_path(launch_uri).read_bytes())  # the pods can read what they were given
        write_bytes(outcome, json.dumps(outcome_doc(version)).encode())

    return finish


def call(spec, path, req, settings, **kw):
    return pytorchjobs.run_on_kubernetes(spec, path, req, settings, conn_id=CONN, poll_seconds=0.02, **kw)


def test_a_job_runs_to_succeeded_and_returns_rank_0s_outcome(kube, run, storage):
    spec, path, req, settings = run
    stale = join(places(spec, req).run_dir, "outcome.json")
    write_bytes(stale, json.dumps(outcome_doc("v-of-a-killed-attempt")).encode())
    kube.on_finish = rank0_writes(spec, req)
    outcome = call(spec, path, req, settings, max_wait_seconds=20)
    assert outcome.version == "v20261110-new" and outcome.metrics == {"val_accuracy": 0.9}
    (post,) = kube.calls("POST")
    body = post["body"]
    kube_job.validate_pytorchjob(body, CRD)
    name = kube_job.job_name("digits", RUN_KEY)
    assert post["path"] == f"/apis/kubeflow.org/v1/namespaces/{NS}/pytorchjobs"
    assert body["metadata"]["name"] == name and body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    c = container_of(body)
    assert c["command"][-1] == str(join(places(spec, req).run_dir, "launch.json"))
    assert {e["name"]: e["value"] for e in c["env"]}["FREESTACK_STORAGE_ROOT"] == storage
    assert body["spec"]["runPolicy"]["activeDeadlineSeconds"] == 20
    assert SECRET_KEY not in json.dumps(body)  # the key travels in a Secret, by reference
    assert SECRET_KEY not in to_path(c["command"][-1]).read_text()
    assert kube.objects[(NS, name)]["status"]["conditions"][-1]["type"] == "Succeeded"  # kept: its pods' logs


def test_a_failed_job_raises_with_the_reason_and_how_to_read_the_logs(kube, run):
    spec, path, req, settings = run
    kube.outcome = "Failed"
    kube.failure_reason = "PyTorchJobFailed"
    kube.failure_message = "PyTorchJob training/x is failed because 1 Worker replica(s) failed."
    with pytest.raises(pytorchjobs.PyTorchJobError) as err:
        call(spec, path, req, settings, max_wait_seconds=20)
    name = kube_job.job_name("digits", RUN_KEY)
    text = str(err.value)
    assert isinstance(err.value, LaunchError)  # the train task retries it, resuming from the checkpoint
    assert f"PyTorchJob {NS}/{name} failed" in text
    assert "PyTorchJobFailed: PyTorchJob training/x is failed because 1 Worker replica(s) failed." in text
    assert f"kubectl logs -l training.kubeflow.org/job-name={name} -n {NS}" in text
    assert (NS, name) in kube.objects  # not deleted: its failed pods hold the logs


def test_a_job_left_by_a_killed_attempt_is_deleted_and_created_again(kube, run):
    spec, path, req, settings = run
    name = kube_job.job_name("digits", RUN_KEY)
    old = pytorchjobs.job_manifest(spec, req, "file:///old/launch.json")
    kube.ready_after = None  # the old job runs on, as a killed task left it
    pytorchjobs.submit_job(old, CONN)
    old_uid = kube.objects[(NS, name)]["metadata"]["uid"]
    kube.requests.clear()
    kube.ready_after, kube.delete_after = 0.15, 0.2  # its pods take a while to go
    kube.on_finish = rank0_writes(spec, req)
    outcome = call(spec, path, req, settings, max_wait_seconds=20)
    assert outcome.version == "v20261110-new"
    methods = [c["method"] for c in kube.calls()]
    assert methods[:3] == ["POST", "GET", "DELETE"] and methods.count("POST") == 2
    (delete,) = kube.calls("DELETE")
    assert delete["query"].get("propagationPolicy") == ["Foreground"]
    second = methods.index("POST", 1)
    assert methods[3:second] and set(methods[3:second]) == {"GET"}  # waited until it was gone
    assert kube.objects[(NS, name)]["metadata"]["uid"] != old_uid


def test_a_job_of_the_same_name_that_freestack_did_not_make_is_left_alone(kube, run):
    spec, path, req, settings = run
    foreign = pytorchjobs.job_manifest(spec, req, "file:///other/launch.json")
    foreign["metadata"]["labels"] = {"team": "vision"}
    kube.ready_after = None
    pytorchjobs.submit_job(foreign, CONN)
    with pytest.raises(pytorchjobs.PyTorchJobError, match="not managed by freestack"):
        call(spec, path, req, settings, max_wait_seconds=5)
    assert not kube.calls("DELETE")


def test_a_job_that_does_not_finish_in_time_is_deleted(kube, run):
    spec, path, req, settings = run
    kube.ready_after = None  # stays Running
    with pytest.raises(pytorchjobs.PyTorchJobError, match="did not finish within 0.3 s"):
        call(spec, path, req, settings, max_wait_seconds=0.3)
    assert kube.calls("DELETE") and not kube.objects


def test_a_succeeded_job_without_an_outcome_says_where_it_looked(kube, run):
    spec, path, req, settings = run
    with pytest.raises(pytorchjobs.PyTorchJobError, match="left no outcome.json"):
        call(spec, path, req, settings, max_wait_seconds=20)


def test_a_cluster_without_the_training_operator_is_named(kube, run):
    spec, path, req, settings = run
    kube.crd_installed = False
    with pytest.raises(pytorchjobs.PyTorchJobError, match="Training Operator .v1. is not installed") as err:
        call(spec, path, req, settings, max_wait_seconds=5)
    assert f"connection {CONN!r}" in str(err.value) and "pytorchjobs.kubeflow.org" in str(err.value)


def test_a_short_api_outage_while_following_is_tolerated(kube, run):
    spec, path, req, settings = run
    kube.on_finish = rank0_writes(spec, req)
    kube.ready_after = 0.3
    seen: list[str] = []
    answer = kube.handle

    def flaky(method, raw_path, content_type, body):  # the 2nd and 3rd status reads answer 503
        seen.append(method)
        if method == "GET" and seen.count("GET") in (2, 3):
            kube.fail_next.append(503)
        return answer(method, raw_path, content_type, body)

    kube.handle = flaky
    assert call(spec, path, req, settings, max_wait_seconds=20).version == "v20261110-new"
    assert seen.count("GET") > 3


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (
            lambda api: setattr(api, "forbidden", True),
            "kubectl auth can-i create pytorchjobs.kubeflow.org -n training",
        ),
        (lambda api: setattr(api, "namespaces", {"default"}), "kubectl create namespace training"),
        (lambda api: api.fail_next.extend([503]), "overloaded or failing"),
    ],
)
def test_api_answers_name_what_to_check(kube, run, setup, expected):
    spec, path, req, settings = run
    setup(kube)
    with pytest.raises(pytorchjobs.PyTorchJobError, match=re.escape(expected)) as err:
        call(spec, path, req, settings, max_wait_seconds=5)
    assert f"PyTorchJob {NS}/{kube_job.job_name('digits', RUN_KEY)}" in str(err.value)


def test_an_unreachable_api_server_is_named(run, monkeypatch):
    from tests.support.ports import free_port

    spec, path, req, settings = run
    server = f"http://127.0.0.1:{free_port()}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "x", "cluster": {"server": server}}],
        "users": [{"name": "x", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}],
        "current-context": "x",
    }
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": kubeconfig}}),
    )
    with pytest.raises(
        pytorchjobs.PyTorchJobUnavailable, match=f"cannot reach the Kubernetes API server {server}"
    ):
        call(spec, path, req, settings, max_wait_seconds=5)


@pytest.mark.parametrize(
    ("setup", "permanent"),
    [
        (lambda api: setattr(api, "forbidden", True), True),
        (lambda api: api.fail_next.extend([503] * 20), False),
    ],
)
def test_the_train_task_fails_at_once_on_answers_a_retry_cannot_change(
    kube, tmp_path, storage, setup, permanent
):
    """Through TrainOperator: RBAC refusing the job fails the task for good (no retry would pass); an
    overloaded API server raises an error the task's retries take."""
    from airflow.sdk.exceptions import AirflowFailException

    from freestack.train.operators import TrainOperator

    spec, path = make_spec(tmp_path, nodes=2, kubernetes_conn_id=CONN)
    req = TrainRequest(end_ds="2026-11-10", run_key=RUN_KEY)
    setup(kube)
    op = TrainOperator(task_id="train", spec_path=path)
    with pytest.raises(AirflowFailException if permanent else pytorchjobs.PyTorchJobError) as err:
        op._train(spec, req, WandbSettings(mode="disabled"))
    assert ("kubectl auth can-i" in str(err.value)) == permanent


# ---------------------------------------------------------------------------------------------------------
# deferred: the trigger waits in the triggerer, the task resumes in execute_complete


def run_trigger(trigger) -> dict:
    """The trigger's one event (a second would fail the test)."""
    import asyncio

    async def collect():
        gen = trigger.run()
        event = await gen.__anext__()
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
        return event.payload

    return asyncio.run(collect())


def job_trigger(name: str, timeout: float = 5.0, poll: float = 0.02, conn: str = CONN):
    from freestack.train.triggers import PyTorchJobFinishedTrigger

    return PyTorchJobFinishedTrigger(
        name=name, namespace=NS, conn_id=conn, timeout_seconds=timeout, poll_seconds=poll
    )


def submitted(spec, req) -> str:
    """Create the run's job as the train task does; its name."""
    pytorchjobs.submit_job(pytorchjobs.job_manifest(spec, req, "file:///l.json"), CONN)
    return kube_job.job_name("digits", RUN_KEY)


def test_the_job_trigger_serializes_round_trip_with_an_absolute_deadline():
    import importlib
    import time

    from freestack.train.triggers import PyTorchJobFinishedTrigger

    path, kwargs = PyTorchJobFinishedTrigger(name="digits-x", namespace=NS).serialize()
    assert path == "freestack.train.triggers.PyTorchJobFinishedTrigger"
    module, cls = path.rsplit(".", 1)
    again = getattr(importlib.import_module(module), cls)(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert (
        kwargs["timeout_seconds"] == pytorchjobs.MAX_WAIT_SECONDS
        and kwargs["poll_seconds"] == pytorchjobs.POLL_SECONDS
    )
    assert kwargs["deadline"] == pytest.approx(time.time() + pytorchjobs.MAX_WAIT_SECONDS, abs=5)
    assert kwargs["conn_id"] == pytorchjobs.DEFAULT_CONN_ID
    assert again.ref == KubeRef("digits-x", NS, pytorchjobs.DEFAULT_CONN_ID)


def test_the_job_trigger_serializes_its_ref_as_the_plain_kwargs_earlier_versions_wrote():
    import importlib
    import json

    from freestack.train.triggers import PyTorchJobFinishedTrigger

    ref = KubeRef("digits-x", NS, CONN)
    assert ref.describe("PyTorchJob") == f"PyTorchJob {NS}/digits-x" and ref.describe() == f"{NS}/digits-x"
    with pytest.raises(AttributeError):  # immutable
        ref.namespace = "elsewhere"  # type: ignore[misc]
    path, kwargs = PyTorchJobFinishedTrigger.for_ref(ref, timeout_seconds=60.0).serialize()
    assert {k: kwargs[k] for k in ("name", "namespace", "conn_id")} == ref.plain()
    assert json.loads(json.dumps(kwargs)) == kwargs  # plain values only
    # what a task deferred by an earlier version left in the triggerer's table still resumes
    earlier = {
        "name": "digits-x",
        "namespace": NS,
        "conn_id": CONN,
        "timeout_seconds": 60.0,
        "poll_seconds": 10.0,
        "deadline": 1.0,
    }
    module, cls = path.rsplit(".", 1)
    again = getattr(importlib.import_module(module), cls)(**earlier)
    assert again.ref == ref and again.deadline == 1.0
    assert again.serialize() == (path, earlier)


def test_the_job_trigger_sees_a_job_succeed_through_api_hiccups(kube, run):
    spec, _, req, _ = run
    name = submitted(spec, req)
    kube.fail_next = [503, 500]
    event = run_trigger(job_trigger(name))
    assert event == {
        "status": "succeeded",
        "message": f"PyTorchJob {NS}/{name} succeeded",
        "name": name,
        "namespace": NS,
    }
    assert len(kube.calls("GET")) >= 3


def test_the_job_trigger_reports_a_failure_with_the_reason_and_the_logs(kube, run):
    spec, _, req, _ = run
    kube.outcome, kube.failure_reason, kube.failure_message = (
        "Failed",
        "PyTorchJobFailed",
        "1 Worker replica(s) failed.",
    )
    name = submitted(spec, req)
    event = run_trigger(job_trigger(name))
    assert event["status"] == "failed"
    assert "failed (PyTorchJobFailed: 1 Worker replica(s) failed.)" in event["message"]
    assert f"kubectl logs -l training.kubeflow.org/job-name={name} -n {NS}" in event["message"]


def test_the_job_trigger_reports_a_job_deleted_meanwhile(kube, run):
    import threading

    spec, _, req, _ = run
    kube.ready_after = None
    name = submitted(spec, req)
    threading.Timer(0.1, pytorchjobs.delete_job, (KubeRef(name, NS, CONN),)).start()
    event = run_trigger(job_trigger(name))
    assert event["status"] == "failed" and "was deleted on http://127.0.0.1:" in event["message"]


def test_the_job_trigger_times_out_at_its_deadline_naming_the_state(kube, run):
    import time

    spec, _, req, _ = run
    kube.ready_after = None  # stays Running
    name = submitted(spec, req)
    time.sleep(0.1)
    started = time.monotonic()
    event = run_trigger(job_trigger(name, timeout=0.3))
    assert event["status"] == "timeout" and time.monotonic() - started < 3
    assert "did not finish within 0.3 s (last seen: PyTorchJob training/" in event["message"]
    assert "is Running" in event["message"] and "kubectl logs" in event["message"]
    assert (NS, name) in kube.objects  # the trigger only reports: finish_on_kubernetes deletes it


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda api: setattr(api, "forbidden", True), "kubectl auth can-i create pytorchjobs.kubeflow.org"),
        (lambda api: setattr(api, "crd_installed", False), "Training Operator (v1) is not installed"),
    ],
)
def test_the_job_trigger_stops_on_answers_waiting_will_not_fix(kube, setup, expected):
    setup(kube)
    event = run_trigger(job_trigger("digits-x"))
    assert event["status"] == "error" and expected in event["message"], event
    assert f"connection {CONN!r}" in event["message"]


def test_the_job_trigger_on_kill_deletes_the_job(kube, run):
    import asyncio

    spec, _, req, _ = run
    kube.ready_after = None
    name = submitted(spec, req)
    asyncio.run(job_trigger(name).on_kill())
    assert (NS, name) not in kube.objects
    (delete,) = kube.calls("DELETE")
    assert delete["query"].get("propagationPolicy") == ["Foreground"]


def test_finish_deletes_the_job_on_a_timeout_and_keeps_a_failed_one(kube, run):
    spec, _, req, _ = run
    kube.ready_after = None
    name = submitted(spec, req)
    event = {"status": "failed", "message": "PyTorchJob x failed", "name": name, "namespace": NS}
    with pytest.raises(pytorchjobs.PyTorchJobError, match="PyTorchJob x failed") as err:
        pytorchjobs.finish_on_kubernetes(spec, req, event, conn_id=CONN)
    assert not err.value.permanent and (NS, name) in kube.objects
    with pytest.raises(pytorchjobs.PyTorchJobError, match="did not finish") as err:
        pytorchjobs.finish_on_kubernetes(
            spec, req, {**event, "status": "timeout", "message": "did not finish"}, conn_id=CONN
        )
    assert not err.value.permanent and (NS, name) not in kube.objects
    with pytest.raises(pytorchjobs.PyTorchJobError, match="RBAC") as err:
        pytorchjobs.finish_on_kubernetes(
            spec, req, {**event, "status": "error", "message": "RBAC"}, conn_id=CONN
        )
    assert err.value.permanent


class FakeTI:
    """What TrainOperator reads of its task instance: the run's ids, the window task's XCom; and what it pushes."""

    dag_id, run_id, task_id, try_number = "digits_train", "manual__2026-11-10T00:00:00+00:00", "train", 1

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_pull(self, task_ids: str):
        return {"end_ds": "2026-11-10", "days": 1, "partitions": []} if task_ids == "window" else None

    def xcom_push(self, key: str, value) -> None:
        self.pushed[key] = value


@pytest.fixture
def deferring(kube, tmp_path, storage, monkeypatch):
    """A TrainOperator for a kubernetes-launched training of 2 nodes, W&B disabled, and its context."""
    from freestack.hooks.wandb import WandbHook
    from freestack.train.operators import TrainOperator

    monkeypatch.setattr(WandbHook, "checked_settings", lambda self: WandbSettings(mode="disabled"))
    spec, path = make_spec(tmp_path, {"cache": True, "window_days": 1}, nodes=2, kubernetes_conn_id=CONN)
    context = {"ti": FakeTI(), "params": {}, "dag_run": None, "run_id": "manual__deferred"}
    return TrainOperator(task_id="train", spec_path=path), context, spec


def test_the_train_task_defers_to_the_trigger_and_resumes_with_the_outcome(deferring, kube):
    from datetime import timedelta

    from airflow.sdk.exceptions import TaskDeferred

    from freestack.train.triggers import PyTorchJobFinishedTrigger

    op, context, spec = deferring
    kube.on_finish = rank0_writes(spec, TrainRequest(end_ds="2026-11-10", run_key=RUN_KEY))
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    trigger, name = deferred.value.trigger, kube_job.job_name("digits", RUN_KEY)
    assert isinstance(trigger, PyTorchJobFinishedTrigger) and deferred.value.method_name == "execute_complete"
    assert trigger.ref == KubeRef(name, NS, CONN)
    assert trigger.timeout_seconds == pytorchjobs.MAX_WAIT_SECONDS
    assert deferred.value.timeout > timedelta(
        seconds=pytorchjobs.MAX_WAIT_SECONDS
    )  # the trigger's timeout event first
    (post,) = kube.calls("POST")
    assert post["body"]["spec"]["runPolicy"]["activeDeadlineSeconds"] == pytorchjobs.MAX_WAIT_SECONDS
    trigger.poll_seconds = 0.02
    event = run_trigger(trigger)
    assert event["status"] == "succeeded"
    result = getattr(op, deferred.value.method_name)(context, event)
    assert result["version"] == "v20261110-new" and result["metrics"] == {"val_accuracy": 0.9}
    assert context["ti"].pushed["wandb"] == {"run_id": "abc"}
    # train.cache: the entry the deferred task could not write in execute, written when it resumed
    from freestack.train import reuse

    found = reuse.lookup(
        spec, TrainRequest(end_ds="2026-11-10", run_key=RUN_KEY, window=FakeTI().xcom_pull("window"))
    )
    assert found.found.entry.run["run_id"] == "manual__deferred"
    assert found.found.entry.extra["version"] == "v20261110-new"


@pytest.mark.parametrize(
    ("status", "fails_at_once", "deleted"),
    [("failed", False, False), ("timeout", False, True), ("error", True, True)],
)
def test_the_resumed_train_task_retries_a_failed_job_and_fails_on_an_error(
    deferring, kube, status, fails_at_once, deleted
):
    from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

    op, context, _ = deferring
    kube.ready_after = None
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    name = deferred.value.trigger.ref.name
    event = {"status": status, "message": f"it ended {status}", "name": name, "namespace": NS}
    with pytest.raises(AirflowFailException if fails_at_once else RuntimeError, match=f"it ended {status}"):
        op.execute_complete(context, event)
    assert ((NS, name) not in kube.objects) == deleted
    assert "wandb" not in context["ti"].pushed


def test_a_killed_train_task_deletes_its_job(deferring, kube):
    from airflow.sdk.exceptions import TaskDeferred

    op, context, _ = deferring
    kube.ready_after = None
    with pytest.raises(TaskDeferred):
        op.execute(context)
    op.on_kill()
    assert not kube.objects and kube.calls("DELETE")
