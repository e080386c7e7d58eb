"""The deploy stage's trigger: :class:`SeldonDeploymentAvailableTrigger` waits in the triggerer for a
SeldonDeployment to become Available (or Failed), on the shared loop of
:class:`freestack.kube.trigger.CustomObjectTrigger`. ``available`` / ``failed`` are what Seldon's status says
for the current spec (``freestack.serving.manifests.availability``; a status left over from the previous
generation does not count). The train stage's PyTorchJob trigger is :mod:`freestack.train.triggers`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from freestack.kube import KubeRef
from freestack.kube.trigger import CustomObjectTrigger
from freestack.serving import manifests, seldon_deployments

if TYPE_CHECKING:
    from freestack.serving.spec import KubernetesTarget


class SeldonDeploymentAvailableTrigger(CustomObjectTrigger):
    """Waits for a SeldonDeployment to be ``available`` (or ``failed``) for its current spec."""

    group, version, plural, kind = manifests.GROUP, manifests.VERSION, manifests.PLURAL, "SeldonDeployment"
    words = seldon_deployments.ANSWER_WORDS
    terminal = frozenset({"available", "failed"})

    @classmethod
    def of(cls, name: str, target: KubernetesTarget) -> SeldonDeploymentAvailableTrigger:
        """The wait for the SeldonDeployment ``name`` of a deploy target: its namespace and connection,
        within its ``timeout_minutes``, polling every ``poll_seconds``."""
        return cls.for_ref(
            KubeRef(name, target.namespace, target.conn_id),
            timeout_seconds=target.timeout_minutes * 60,
            poll_seconds=target.poll_seconds,
        )

    def deferral_timeout(self) -> timedelta:
        """The deferred task's own bound: past the trigger's, so its timeout event comes first."""
        return timedelta(seconds=self.timeout_seconds + 300)

    def defer_task(self, task: Any, **kwargs: Any) -> NoReturn:
        """Defer ``task`` to this wait, within :meth:`deferral_timeout`: its ``execute_complete`` then
        takes the event (and ``kwargs``)."""
        task.defer(
            trigger=self,
            method_name="execute_complete",
            kwargs=kwargs or None,
            timeout=self.deferral_timeout(),
        )

    def state_of(self, obj: dict[str, Any]) -> tuple[str, str]:
        return manifests.availability(obj)

    def missing(self) -> tuple[str, str]:
        return "failed", f"{self.what} no longer exists on {self.host}: it was deleted while being deployed"

    def timeout_message(self, last: str) -> str:
        return (
            f"{self.what} was not Available within {self.timeout_seconds:g}s; last seen: {last}. Look at its "
            f"pods ('kubectl -n {self.ref.namespace} get pods -l seldon-deployment-id={self.ref.name}', then "
            "describe/logs: image pull, crash loop, readiness probe) or raise "
            "deploy.kubernetes.timeout_minutes."
        )


__all__ = ["SeldonDeploymentAvailableTrigger"]
