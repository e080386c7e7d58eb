"""``train.distributed`` with ``launcher: kubernetes``: the train task submits a Kubeflow ``PyTorchJob`` and
follows it to the end, then returns the outcome rank 0 left (as the local launcher's node 0 does)::

    job = start_on_kubernetes(spec, spec_path, req, tracking_settings, conn_id=...)  # a KubeRef
    ... the train task defers to freestack.train.triggers.PyTorchJobFinishedTrigger, whose event ...
    outcome = finish_on_kubernetes(spec, req, event)
    # or, waiting in this process: run_on_kubernetes(spec, spec_path, req, tracking_settings, conn_id=...)

    launch.json  ->  PyTorchJob <pipeline>-<run>-<hash>  (Master + Workers, torchrun in each pod)
                 ->  status.conditions: Created, Running, Succeeded | Failed
                 ->  outcome.json beside launch.json (written by rank 0)

The API is reached as the deploy stage reaches its SeldonDeployments (:mod:`freestack.serving.seldon_deployments`), through
:mod:`freestack.kube.api`: the cncf.kubernetes provider's ``KubernetesHook`` and its connection, one
session class per resource, and errors that name the API server, the connection, the namespace, the job
and what to check. The manifests themselves are :mod:`freestack.train.manifests`.

Light at import: ``kubernetes`` and Airflow are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from freestack.kube import KubeRef
from freestack.kube.api import AnswerWords, Session, api_session, delete
from freestack.kube.manifests import MANAGED_BY, MANAGED_BY_KEY
from freestack.storage import join, storage_root, uri_of
from freestack.train.distributed import OUTCOME_FILE, LaunchError, _read_outcome, write_launch
from freestack.train.manifests import (
    CRD_NAME,
    DEFAULT_SECRETS,
    GROUP,
    JOB_NAME_LABEL,
    KIND,
    PLURAL,
    VERSION,
    job_name,
    job_state,
    pytorchjob_manifest,
    rendezvous_id,
    validate_pytorchjob,
)
from freestack.train.request import TrainOutcome, TrainRequest, places

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "kubernetes_default"
#: how often the job's status is read (a training runs minutes to days: every read is one API call)
POLL_SECONDS = 10.0
#: the longest a task follows one job; the job's activeDeadlineSeconds stops its pods at the same bound
MAX_WAIT_SECONDS = 72 * 3600
#: how long a replaced job may take to go (its pods are deleted first: foreground deletion)
DELETE_WAIT_SECONDS = 300.0
#: consecutive failed status reads tolerated while following (an API server restart is not a failed run)
UNAVAILABLE_TOLERANCE = 6


class PyTorchJobError(LaunchError):
    """The PyTorchJob could not be created or followed, or it failed; the message says which job, why and
    what to check. ``status``: the HTTP status the API server answered, when there was one. A LaunchError,
    so the train task retries it, and the retry resumes from the last checkpoint, unless ``permanent``:
    an answer a retry cannot change (default: ``status`` in :data:`PERMANENT`), which fails the task."""

    def __init__(self, message: str, *, status: int | None = None, permanent: bool | None = None):
        super().__init__(message)
        self.status = status
        self.permanent = status in PERMANENT if permanent is None else permanent


#: API answers that a retry cannot change: a malformed or forbidden request, no PyTorchJob kind, a conflict
PERMANENT = frozenset({400, 403, 404, 409, 422})


class PyTorchJobUnavailable(PyTorchJobError):
    """The API server could not be reached, its configuration could not be loaded, or it is failing
    (5xx, 429, rejected credentials). Retrying later may help."""


# ---------------------------------------------------------------------------------------------------------
# talking to the API server (freestack.kube.api's session, on pytorchjobs.kubeflow.org)


#: what the API server's answers about a PyTorchJob say to check (:func:`freestack.kube.api.answer_text`)
ANSWER_WORDS = AnswerWords(
    kind=KIND,
    crd=CRD_NAME,
    verbs="get, create and delete",
    namespace_setting="train.distributed.namespace",
    not_installed="the Kubeflow Training Operator (v1)",
    install="Install it, or point the connection at a cluster that has it.",
    gone=". The job does not exist (deleted meanwhile?); run the task again.",
    refused="The API server (or the Training Operator's webhook) rejected the manifest; fix the "
    "train.distributed block of the pipeline spec.",
    webhook_down=". The Training Operator's webhook could not be called: check that the training-operator pod "
    "is running ('kubectl get pods -n kubeflow').",
)


class _JobSession(Session):
    """A session on one PyTorchJob (``pytorchjobs.kubeflow.org``)."""

    group, version, plural = GROUP, VERSION, PLURAL

    def delete(self) -> dict[str, Any]:
        """Foreground: the job goes only after its pods, so a new job of the same name never meets them."""
        self.action = "delete"
        return self.api.delete_namespaced_custom_object(
            *self._args(), self.ref.name, propagation_policy="Foreground"
        )


def _session(job: KubeRef):
    """A session on the connection's cluster for one PyTorchJob; every failure inside becomes a PyTorchJobError."""
    return api_session(
        job,
        session_class=_JobSession,
        words=ANSWER_WORDS,
        error=PyTorchJobError,
        unavailable=PyTorchJobUnavailable,
    )


# ---------------------------------------------------------------------------------------------------------
# the job


def delete_job(job: KubeRef) -> bool:
    """Delete the PyTorchJob and its pods; False when there was none."""
    return delete(job, session=_session)


def submit_job(
    manifest: dict[str, Any],
    conn_id: str = DEFAULT_CONN_ID,
    *,
    delete_wait_seconds: float = DELETE_WAIT_SECONDS,
) -> dict[str, Any]:
    """Create the PyTorchJob. One of the same name is what a killed attempt of this run left (the name is the
    run's): it is deleted, with its pods, and the job created again; one freestack did not make is refused."""
    from kubernetes.client.exceptions import ApiException

    meta = manifest["metadata"]
    body = copy.deepcopy(manifest)
    body.pop("status", None)
    with _session(KubeRef(meta["name"], meta["namespace"], conn_id)) as s:
        try:
            return s.create(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        _replace_stale(s, delete_wait_seconds)
        return s.create(body)


def _replace_stale(s: _JobSession, wait_seconds: float) -> None:
    """Delete the job a killed attempt left and wait until it (and its pods) are gone."""
    current = s.read()
    if current is None:
        return
    managed = ((current.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_KEY)
    if managed != MANAGED_BY:
        raise PyTorchJobError(
            f"{s.ref.describe(KIND)} already exists on {s.host} and is not managed by "
            f"freestack (label {MANAGED_BY_KEY}={managed!r}); delete it, or train in another "
            "namespace (train.distributed.namespace)",
            status=409,
        )
    log.warning(
        "%s is left from an earlier attempt (%s): deleting it and its pods",
        s.ref.describe(KIND),
        job_state(current)[0],
    )
    s.delete()
    deadline = time.monotonic() + wait_seconds
    while s.read() is not None:
        if time.monotonic() >= deadline:
            raise PyTorchJobError(
                f"{s.ref.describe(KIND)} left by an earlier attempt is still being deleted "
                f"after {wait_seconds:g} s (finalizers, or pods that do not stop?); check "
                f"'kubectl describe {CRD_NAME} {s.ref.name} -n {s.ref.namespace}'"
            )
        time.sleep(0.5)


def _read_status(job: KubeRef, misses: int) -> tuple[dict[str, Any] | None, int]:
    """One status read; an unavailable API server counts a miss (a few in a row are tolerated)."""
    try:
        with _session(job) as s:
            obj = s.read()  # None: the job does not exist
    except PyTorchJobUnavailable as exc:
        if misses + 1 >= UNAVAILABLE_TOLERANCE:
            raise
        log.warning("reading %s failed (%d in a row), trying again: %s", job.describe(KIND), misses + 1, exc)
        return None, misses + 1
    if obj is None:
        raise PyTorchJobError(
            f"{job.describe(KIND)} was deleted while the train task followed it; run the task "
            "again (it resumes from the last checkpoint)"
        )
    return obj, 0


def wait_for_job(
    job: KubeRef,
    *,
    poll_seconds: float = POLL_SECONDS,
    max_wait_seconds: float = MAX_WAIT_SECONDS,
) -> dict[str, Any]:
    """Follow the job's conditions until Succeeded or Failed and return it as stored; bounded by
    ``max_wait_seconds`` (PyTorchJobError, naming the state it was left in)."""
    deadline, misses, seen = time.monotonic() + max_wait_seconds, 0, None
    while True:
        obj, misses = _read_status(job, misses)
        state = job_state(obj)[0] if obj is not None else seen
        if state != seen:
            log.info("%s: %s", job.describe(KIND), state)
            seen = state
        if state in ("Succeeded", "Failed"):
            return obj
        if time.monotonic() >= deadline:
            raise PyTorchJobError(timeout_text(job, max_wait_seconds, str(seen)))
        time.sleep(poll_seconds)


def _logs_hint(name: str, namespace: str) -> str:
    return (
        f"The ranks' logs: kubectl logs -l {JOB_NAME_LABEL}={name} -n {namespace} --prefix --tail=-1 "
        f"(and 'kubectl describe {CRD_NAME} {name} -n {namespace}' for the job's events)."
    )


def job_progress(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of a stored job, as the trigger's event and the synchronous wait say it:
    ``succeeded``, ``failed`` (why: the operator's condition, and where the ranks' logs are), else its
    state in lower case (not final)."""
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    state, reason, message = job_state(obj)
    why = ": ".join(p for p in (reason, message) if p)
    if state == "Succeeded":
        return "succeeded", f"{KIND} {namespace}/{name} succeeded"
    if state == "Failed":
        return "failed", (
            f"{KIND} {namespace}/{name} failed ({why or 'no reason given'}); every rank of this attempt was "
            f"stopped, and a retry resumes from the last checkpoint. {_logs_hint(name, namespace)}"
        )
    return state.lower(), f"{KIND} {namespace}/{name} is {state}" + (f" ({why})" if why else "")


def timeout_text(job: KubeRef, seconds: float, seen: str) -> str:
    """A job that did not finish in time: what it was last, that it goes, and where its logs are."""
    return (
        f"{job.describe(KIND)} did not finish within {seconds:g} s (last seen: {seen}); it is being deleted. "
        f"{_logs_hint(job.name, job.namespace)}"
    )


# ---------------------------------------------------------------------------------------------------------
# a training run


def job_manifest(
    spec: PipelineSpec,
    req: TrainRequest,
    launch_uri: str,
    *,
    max_wait_seconds: float = MAX_WAIT_SECONDS,
    secrets: Sequence[str] = DEFAULT_SECRETS,
    service_account: str | None = None,
) -> dict[str, Any]:
    """The run's PyTorchJob, validated: named after the pipeline and the run, its pods given the storage
    root the worker resolved (so they find the same run folder) and stopped when the task stops waiting."""
    manifest = pytorchjob_manifest(
        spec,
        name=job_name(spec.name, req.run_key),
        launch_uri=launch_uri,
        run_id=rendezvous_id(spec.name, req.run_key),
        run_key=req.run_key,
        storage_root=uri_of(storage_root(spec.storage_root)),
        active_deadline_seconds=int(max_wait_seconds),
        secrets=secrets,
        service_account=service_account,
    )
    validate_pytorchjob(manifest)
    return manifest


def start_on_kubernetes(
    spec: PipelineSpec,
    spec_path: str,
    req: TrainRequest,
    tracking_settings: Any,
    *,
    conn_id: str = DEFAULT_CONN_ID,
    max_wait_seconds: float = MAX_WAIT_SECONDS,
    secrets: Sequence[str] = DEFAULT_SECRETS,
    service_account: str | None = None,
) -> KubeRef:
    """Write the launch file and create the run's PyTorchJob; returns the job (on ``conn_id``). Split from the
    wait so the train task can hand the wait to the triggerer (:mod:`freestack.train.triggers`) instead of
    holding a worker slot for days. A killed attempt's outcome.json is removed first: only this job's
    rank 0 may leave the one :func:`finish_on_kubernetes` reads."""
    outcome = _outcome_path(spec, req)
    if outcome.exists():
        outcome.unlink()  # a killed attempt's
    launch = write_launch(spec, spec_path, req, tracking_settings, 0)
    manifest = job_manifest(
        spec,
        req,
        uri_of(launch),
        max_wait_seconds=max_wait_seconds,
        secrets=secrets,
        service_account=service_account,
    )
    job = KubeRef(manifest["metadata"]["name"], manifest["metadata"]["namespace"], conn_id)
    submit_job(manifest, conn_id)
    log.info(
        "submitted %s (%d node(s) x %d rank(s)); %s",
        job.describe(KIND),
        spec.train.distributed.nodes,
        spec.train.distributed.processes_per_node,
        _logs_hint(job.name, job.namespace),
    )
    return job


def finish_on_kubernetes(
    spec: PipelineSpec, req: TrainRequest, event: dict[str, Any], *, conn_id: str | None = None
) -> TrainOutcome:
    """The outcome rank 0 left, once the job's wait ended with ``event`` (the trigger's, or the synchronous
    wait's: ``status`` succeeded | failed | timeout | error, ``message``, ``name``, ``namespace``). ``req``
    must be the request the job was started with (its run folder holds the outcome). A failed job raises
    PyTorchJobError and is kept (its pods hold the logs); on a timeout or an error the job is deleted
    rather than leave GPUs busy for nobody; an error is ``permanent`` (waiting did not fix it, nor will a
    retry). ``conn_id``: default the spec's ``train.distributed.kubernetes_conn_id``."""
    status, message = event.get("status"), str(event.get("message") or "")
    name, namespace = str(event.get("name")), str(event.get("namespace"))
    if status in ("timeout", "error"):
        with contextlib.suppress(Exception):
            delete_job(KubeRef(name, namespace, conn_id or spec.train.distributed.kubernetes_conn_id))
        raise PyTorchJobError(message, permanent=status == "error")
    if status != "succeeded":
        raise PyTorchJobError(message or f"{KIND} {namespace}/{name} ended {status!r}")
    outcome = _outcome_path(spec, req)
    if not outcome.exists():
        raise PyTorchJobError(
            f"{KIND} {namespace}/{name} succeeded but rank 0 left no {OUTCOME_FILE} at {uri_of(outcome)}: do the "
            "pods write to the same storage as the worker (FREESTACK_STORAGE_ROOT, the storage Secret)? "
            + _logs_hint(name, namespace)
        )
    return _read_outcome(outcome)


def _outcome_path(spec: PipelineSpec, req: TrainRequest) -> Any:
    return join(places(spec, req).run_dir, OUTCOME_FILE)


def run_on_kubernetes(
    spec: PipelineSpec,
    spec_path: str,
    req: TrainRequest,
    tracking_settings: Any,
    *,
    conn_id: str = DEFAULT_CONN_ID,
    poll_seconds: float = POLL_SECONDS,
    max_wait_seconds: float = MAX_WAIT_SECONDS,
    secrets: Sequence[str] = DEFAULT_SECRETS,
    service_account: str | None = None,
) -> TrainOutcome:
    """Train as a PyTorchJob, waiting in this process, and return the outcome rank 0 left beside the launch
    file (the train task defers instead: :class:`freestack.train.triggers.PyTorchJobFinishedTrigger`). A
    Failed job raises PyTorchJobError (the operator's reason and how to read the pods' logs); a wait that
    ends otherwise (its bound, a kill, an API error) deletes the job rather than leave GPUs busy for
    nobody. ``secrets``: the Secrets the pods take their environment from (storage connection,
    ``WANDB_API_KEY``); ``service_account``: the pods' identity (e.g. an IAM role for S3)."""
    job = start_on_kubernetes(
        spec,
        spec_path,
        req,
        tracking_settings,
        conn_id=conn_id,
        max_wait_seconds=max_wait_seconds,
        secrets=secrets,
        service_account=service_account,
    )
    try:
        obj = wait_for_job(job, poll_seconds=poll_seconds, max_wait_seconds=max_wait_seconds)
    except BaseException:
        with contextlib.suppress(Exception):
            delete_job(job)
        raise
    status, message = job_progress(obj)
    event = {"status": status, "message": message, "name": job.name, "namespace": job.namespace}
    return finish_on_kubernetes(spec, req, event, conn_id=job.conn_id)


__all__ = [
    "ANSWER_WORDS",
    "DEFAULT_CONN_ID",
    "MAX_WAIT_SECONDS",
    "POLL_SECONDS",
    "PyTorchJobError",
    "PyTorchJobUnavailable",
    "delete_job",
    "finish_on_kubernetes",
    "job_manifest",
    "job_progress",
    "run_on_kubernetes",
    "start_on_kubernetes",
    "submit_job",
    "timeout_text",
    "wait_for_job",
]
