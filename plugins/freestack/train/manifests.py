"""Kubeflow Training Operator ``PyTorchJob`` manifests for ``train.distributed`` with ``launcher: kubernetes``:
built from the spec, validated against the operator's CRD before they reach a cluster.

Pure functions over plain dicts (no Airflow), as the deploy stage's :mod:`freestack.serving.manifests`;
creating and following the job is :mod:`freestack.train.pytorchjobs`::

    name = job_name(spec.name, req.run_key)        # the same for every attempt of a run
    manifest = pytorchjob_manifest(spec, name=name, launch_uri=str(launch_path), run_id=rendezvous_id(...))
    validate_pytorchjob(manifest)                  # ManifestInvalid names every violation's JSON path

Each node is one pod (``Master``, and ``Worker`` x nodes-1) running ``torchrun`` for its
``processes_per_node`` ranks, which meet at the c10d rendezvous on the master pod's service
(``$(MASTER_ADDR):$(MASTER_PORT)``, set by the operator); every rank runs ``python -m
freestack.train.distributed <launch file>``, as the local launcher's ranks do.

Secrets travel by reference only (``envFrom``, both optional): :data:`STORAGE_SECRET` holds the storage
connection (``AIRFLOW_CONN_FREESTACK_S3``, the Helm chart's Secret) and :data:`WANDB_SECRET` the key
``WANDB_API_KEY``; callers may name others (``secrets=``).

Light at import: ``jsonschema`` and ``yaml`` are imported inside the functions.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError
from freestack.kube.manifests import (
    DNS1035_LABEL,
    MANAGED_BY,
    MANAGED_BY_KEY,
    ManifestInvalid,
    crd_schema,
    label_value,
    listed,
    named,
    strict_validator,
    violations,
)
from freestack.settings import checkout_dir

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec
    from freestack.train.spec import DistributedSpec

GROUP = "kubeflow.org"
VERSION = "v1"
PLURAL = "pytorchjobs"
KIND = "PyTorchJob"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"

MASTER, WORKER = "Master", "Worker"
#: the container name the operator requires (it injects MASTER_ADDR/MASTER_PORT into it)
CONTAINER = "pytorch"
#: the port the operator looks for by name; its value becomes MASTER_PORT, where c10d listens
PORT_NAME, PORT = "pytorchjob-port", 23456
#: the label the operator puts on the job's pods (``kubectl logs -l ...``)
JOB_NAME_LABEL = "training.kubeflow.org/job-name"

PIPELINE_KEY = "freestack.io/pipeline"
RUN_KEY = "freestack.io/run"
LAUNCH_KEY = "freestack.io/launch-uri"

#: the Secret with the storage connection (the Helm chart's ``freestack-s3``: AIRFLOW_CONN_FREESTACK_S3)
STORAGE_SECRET = "freestack-s3"
#: the Secret with ``WANDB_API_KEY`` (without it the ranks log to W&B offline)
WANDB_SECRET = "freestack-wandb"
DEFAULT_SECRETS = (STORAGE_SECRET, WANDB_SECRET)

#: finished jobs keep their failed and completed pods (their logs), not running ones; a day later they go
CLEAN_POD_POLICY = "Running"
TTL_AFTER_FINISHED_SECONDS = 24 * 3600
#: pods are ``<job>-worker-<i>`` (a DNS-1035 label of at most 63): room for 1023 workers
MAX_JOB_NAME = 63 - len("-worker-1023")

_NPROC = re.compile(r"^([1-9][0-9]*|auto|cpu|gpu)$")


# ---------------------------------------------------------------------------------------------------------
# names


def job_name(pipeline: str, run_key: str) -> str:
    """The PyTorchJob of one training run: the same name for every attempt (a retry finds, and replaces, the
    job a killed attempt left), distinct per run (a hash of the full key survives the truncation), and a
    DNS-1035 label short enough for the operator's pod and service names."""
    digest = hashlib.sha256(f"{pipeline}\0{run_key}".encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{pipeline}-{run_key}".lower()).strip("-")
    base = slug if slug[:1].isalpha() else f"job-{slug}"
    return f"{base[: MAX_JOB_NAME - len(digest) - 1].rstrip('-')}-{digest}"


def rendezvous_id(pipeline: str, run_key: str) -> str:
    """torchrun's ``--rdzv-id`` (the local launcher's too, :func:`freestack.train.distributed.launch_config`)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"{pipeline}-{run_key}")[-120:]


# ---------------------------------------------------------------------------------------------------------
# the manifest


def _threads(d: DistributedSpec) -> int:
    """A pod has no node's core count to divide: one thread per rank unless the spec says more."""
    return d.threads_per_process or 1


def torchrun_command(d: DistributedSpec, *, launch_uri: str, run_id: str) -> list[str]:
    """One node's ranks: a fixed number of nodes, no restarts (Airflow's retry is the restart and resumes
    from the checkpoint), the rendezvous bounded like the local launcher's."""
    return [
        "torchrun",
        f"--nnodes={d.nodes}",
        f"--nproc-per-node={d.processes_per_node}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)",
        f"--rdzv-id={run_id}",
        f"--rdzv-conf=join_timeout={int(d.timeout_seconds)}",
        "--max-restarts=0",
        "-m",
        "freestack.train.distributed",
        launch_uri,
    ]


def _resources(d: DistributedSpec) -> dict[str, Any]:
    """A core per rank thread requested; GPUs as a limit (the device plugin's resource)."""
    resources: dict[str, Any] = {"requests": {"cpu": str(d.processes_per_node * _threads(d))}}
    if d.gpus_per_node:
        resources["limits"] = {"nvidia.com/gpu": str(d.gpus_per_node)}
    return resources


def _container(
    d: DistributedSpec, command: list[str], storage_root: str | None, secrets: Sequence[str]
) -> dict[str, Any]:
    """The ``pytorch`` container: the ranks' threads and the storage root as values, credentials only as
    references to Secrets (never their values in the manifest)."""
    threads = str(_threads(d))
    env = [{"name": "OMP_NUM_THREADS", "value": threads}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if storage_root:  # the pods resolve the run folder as the worker did
        env.append({"name": "FREESTACK_STORAGE_ROOT", "value": storage_root})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": d.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": _resources(d),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if secrets:
        container["envFrom"] = [{"secretRef": {"name": s, "optional": True}} for s in secrets]
    return container


def _replica(
    container: dict[str, Any], replicas: int, labels: dict[str, str], service_account: str | None
) -> dict[str, Any]:
    """One replica type's pods: never restarted in place (a failed rank fails the job, backoffLimit 0), a
    memory-backed /dev/shm (NCCL and DataLoader workers outgrow the runtime's 64 MiB)."""
    pod: dict[str, Any] = {
        "containers": [copy.deepcopy(container)],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    if service_account:
        pod["serviceAccountName"] = service_account
    return {
        "replicas": replicas,
        "restartPolicy": "Never",
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }


def _run_policy(active_deadline_seconds: int | None) -> dict[str, Any]:
    """No restarts by the operator (Airflow's retry is the restart); the failed pods' logs stay a day."""
    policy: dict[str, Any] = {
        "backoffLimit": 0,
        "cleanPodPolicy": CLEAN_POD_POLICY,
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_SECONDS,
    }
    if active_deadline_seconds:  # the cluster stops the pods when the task gives up waiting
        policy["activeDeadlineSeconds"] = int(active_deadline_seconds)
    return policy


def pytorchjob_manifest(
    spec: PipelineSpec,
    *,
    name: str,
    launch_uri: str,
    run_id: str,
    run_key: str | None = None,
    storage_root: str | None = None,
    secrets: Sequence[str] = DEFAULT_SECRETS,
    service_account: str | None = None,
    active_deadline_seconds: int | None = None,
) -> dict[str, Any]:
    """A ``kubeflow.org/v1`` PyTorchJob running ``spec.train.distributed``'s ranks on ``launch_uri``:
    ``Master`` (1 pod) and, with ``nodes`` > 1, ``Worker`` (nodes-1 pods), ``processes_per_node`` ranks each.

    ``run_id`` is the rendezvous id; ``run_key`` (default ``run_id``) is labelled on the job and its pods;
    ``storage_root`` becomes the pods' ``FREESTACK_STORAGE_ROOT``; ``secrets`` are Secrets whose keys become
    the pods' environment (optional, so a cluster without W&B still trains)."""
    d = spec.train.distributed
    run = run_key or run_id
    labels = {MANAGED_BY_KEY: MANAGED_BY, PIPELINE_KEY: label_value(spec.name), RUN_KEY: label_value(run)}
    command = torchrun_command(d, launch_uri=launch_uri, run_id=run_id)
    container = _container(d, command, storage_root, secrets)
    replicas = {MASTER: _replica(container, 1, labels, service_account)}
    if d.nodes > 1:
        replicas[WORKER] = _replica(container, d.nodes - 1, labels, service_account)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": d.namespace,
            "labels": labels,
            "annotations": {PIPELINE_KEY: spec.name, RUN_KEY: run, LAUNCH_KEY: launch_uri},
        },
        "spec": {
            "nprocPerNode": str(d.processes_per_node),
            "pytorchReplicaSpecs": replicas,
            "runPolicy": _run_policy(active_deadline_seconds),
        },
    }


# ---------------------------------------------------------------------------------------------------------
# validation against the CRD


def default_crd_path() -> Path:
    """The operator's PyTorchJob CRD in the checkout (``include/training/pytorchjob-crd.yaml``)."""
    return checkout_dir() / "include" / "training" / "pytorchjob-crd.yaml"


@lru_cache(maxsize=2)
def _validator(path: str, mtime_ns: int, size: int):  # the file's identity keys the cache
    """The CRD's v1 schema as strict JSON Schema, as the serving manifests are checked (unknown fields
    refused), with metadata checked as the API server and the operator's webhook would (a DNS-1035 name)."""
    schema = crd_schema(path, VERSION, "the Training Operator's PyTorchJob CRD")
    return strict_validator(schema, api_version=API_VERSION, kind=KIND, name_pattern=DNS1035_LABEL)


def _replica_violations(rtype: str, replica: Any) -> list[tuple[str, str]]:
    """The operator webhook's rules for one replica type."""
    where = f"$.spec.pytorchReplicaSpecs.{rtype}"
    if rtype not in (MASTER, WORKER):
        return [(where, f"replica type {rtype!r} is not {MASTER!r} or {WORKER!r}")]
    out: list[tuple[str, str]] = []
    containers = (((replica or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    if not any(isinstance(c, dict) and c.get("name") == CONTAINER for c in containers):
        out.append((f"{where}.template.spec.containers", f"must have a container named {CONTAINER!r}"))
    replicas = (replica or {}).get("replicas")
    if rtype == MASTER and replicas != 1:
        out.append((f"{where}.replicas", f"must be 1, not {replicas!r}"))
    return out


def _semantic_violations(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """What the Training Operator's webhook (and torchrun) refuses that the schema does not say."""
    spec = manifest.get("spec") or {}
    out = [
        v
        for rtype, r in (spec.get("pytorchReplicaSpecs") or {}).items()
        for v in _replica_violations(rtype, r)
    ]
    nproc = spec.get("nprocPerNode")
    if nproc is not None and not _NPROC.match(nproc):
        out.append(("$.spec.nprocPerNode", f"{nproc!r} is not a positive integer, auto, cpu or gpu"))
    if MASTER not in (spec.get("pytorchReplicaSpecs") or {}):
        out.append(
            ("$.spec.pytorchReplicaSpecs", f"has no {MASTER!r}: the rendezvous runs on the master pod")
        )
    return out


def validate_pytorchjob(manifest: dict[str, Any], crd_path: str | os.PathLike | None = None) -> None:
    """Check a PyTorchJob against the Training Operator's CRD (v1) and its webhook's rules before it is
    created: a cluster would otherwise refuse it (or drop unknown fields) only once the task runs. Raises
    ``ManifestInvalid`` listing each violation's JSON path."""
    path = Path(crd_path) if crd_path is not None else default_crd_path()
    try:
        st = path.stat()
    except OSError:
        raise FreestackError(
            f"the PyTorchJob CRD is not at {path}: restore include/training/pytorchjob-crd.yaml"
        ) from None
    problems = violations(_validator(str(path.resolve()), st.st_mtime_ns, st.st_size), manifest)
    problems = problems or _semantic_violations(manifest)
    if problems:
        raise ManifestInvalid(
            f"PyTorchJob {named(manifest)} does not match the Training Operator's {VERSION} CRD ({path}):\n"
            + listed(problems)
            + "\nFix the train.distributed block of the pipeline spec (or the manifest).",
            problems,
        )


# ---------------------------------------------------------------------------------------------------------
# status


def job_state(obj: dict[str, Any]) -> tuple[str, str, str]:
    """``(state, reason, message)`` of a stored PyTorchJob: state is the newest true condition of
    Created / Running / Restarting / Succeeded / Failed / Suspended, ``Pending`` before the operator wrote
    any; a true Succeeded or Failed wins whatever its order (both are final)."""
    conditions = [c for c in ((obj.get("status") or {}).get("conditions") or []) if c.get("status") == "True"]
    final = [c for c in conditions if c.get("type") in ("Succeeded", "Failed")]
    chosen = (final or conditions or [None])[-1]
    if chosen is None:
        return "Pending", "", ""
    return chosen.get("type") or "Pending", chosen.get("reason") or "", chosen.get("message") or ""


__all__ = [
    "API_VERSION",
    "CLEAN_POD_POLICY",
    "CONTAINER",
    "CRD_NAME",
    "DEFAULT_SECRETS",
    "GROUP",
    "JOB_NAME_LABEL",
    "KIND",
    "MASTER",
    "MAX_JOB_NAME",
    "PLURAL",
    "STORAGE_SECRET",
    "VERSION",
    "WANDB_SECRET",
    "WORKER",
    "ManifestInvalid",
    "default_crd_path",
    "job_name",
    "job_state",
    "pytorchjob_manifest",
    "rendezvous_id",
    "torchrun_command",
    "validate_pytorchjob",
]
