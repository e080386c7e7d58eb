"""PyTorchJobFinishedTrigger: the train task's wait for its PyTorchJob (``train.distributed`` with
``launcher: kubernetes``), in the triggerer rather than a worker slot held for up to 72 h. The shared
loop (:class:`freestack.kube.trigger.CustomObjectTrigger`) on ``pytorchjobs.kubeflow.org``,
with the train stage's reading of a job and its messages (:mod:`freestack.train.pytorchjobs`).

It yields exactly one event, which :func:`freestack.train.pytorchjobs.finish_on_kubernetes` turns into the
outcome or the error::

    {"status": "succeeded" | "failed" | "timeout" | "error", "message": ..., "name": ..., "namespace": ...}

- ``succeeded``; ``failed``: the operator's reason and where the ranks' logs are (a job deleted while
  awaited is ``failed`` too);
- ``timeout``: not finished by the deadline (the job's own ``activeDeadlineSeconds`` bound, 72 h);
- ``error``: the API refused in a way waiting will not fix (RBAC, no Training Operator, connection not
  configured). Unreachable servers, 5xx, 429 and rejected credentials are retried until the deadline.
"""

from __future__ import annotations

from typing import Any

from freestack.kube.trigger import CustomObjectTrigger
from freestack.train import pytorchjobs
from freestack.train.manifests import GROUP, KIND, PLURAL, VERSION


class PyTorchJobFinishedTrigger(CustomObjectTrigger):
    """Waits for a PyTorchJob to be Succeeded or Failed (:func:`freestack.train.pytorchjobs.job_progress`)."""

    group, version, plural, kind = GROUP, VERSION, PLURAL, KIND
    words = pytorchjobs.ANSWER_WORDS
    terminal = frozenset({"succeeded", "failed"})

    def __init__(
        self,
        name: str,
        namespace: str,
        conn_id: str = pytorchjobs.DEFAULT_CONN_ID,
        timeout_seconds: float = pytorchjobs.MAX_WAIT_SECONDS,
        poll_seconds: float = pytorchjobs.POLL_SECONDS,
        deadline: float | None = None,
    ):
        super().__init__(name, namespace, conn_id, timeout_seconds, poll_seconds, deadline)

    def state_of(self, obj: dict[str, Any]) -> tuple[str, str]:
        return pytorchjobs.job_progress(obj)

    def missing(self) -> tuple[str, str]:
        return "failed", (
            f"{self.what} was deleted on {self.host} while the train task awaited it; run the task "
            "again (it resumes from the last checkpoint)"
        )

    def timeout_message(self, last: str) -> str:
        return pytorchjobs.timeout_text(self.ref, self.timeout_seconds, last)

    async def on_kill(self) -> None:
        """A person marked the deferred task failed or succeeded, or cleared it: delete the job and its pods
        (foreground) rather than leave its GPUs busy for nobody. Not called on a triggerer restart, nor on
        the deadline (:func:`freestack.train.pytorchjobs.finish_on_kubernetes` deletes the job then)."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio.client import CustomObjectsApi

        try:
            async with AsyncKubernetesHook(conn_id=self.ref.conn_id).get_conn() as api_client:
                api = CustomObjectsApi(api_client)
                await api.delete_namespaced_custom_object(
                    self.group,
                    self.version,
                    self.ref.namespace,
                    self.plural,
                    self.ref.name,
                    propagation_policy="Foreground",
                )
        except Exception as exc:  # gone already, or the API refused: the job's own deadline still stops it
            self.log.warning("could not delete %s after the task was killed: %s", self.what, exc)
        else:
            self.log.info("deleted %s: the task was killed", self.what)


__all__ = ["PyTorchJobFinishedTrigger"]
