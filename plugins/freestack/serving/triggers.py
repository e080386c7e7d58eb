"""SeldonDeploymentAvailableTrigger: waits in the triggerer, not in a worker slot, for a SeldonDeployment
to become Available (or Failed), reading it through the cncf.kubernetes provider's AsyncKubernetesHook.

It yields exactly one event::

    {"status": "available" | "failed" | "timeout" | "error", "message": ..., "name": ..., "namespace": ...}

- ``available`` / ``failed``: what Seldon's status says for the current spec (``freestack.serving.manifests.availability``;
  a status left over from the previous generation does not count);
- ``timeout``: not Available by the deadline; the message says what was seen last;
- ``error``: the API refused in a way waiting will not fix (RBAC, CRD not installed, connection not
  configured). Unreachable servers, 5xx, 429 and rejected credentials are retried until the deadline.

The deadline is absolute (``deadline``, epoch seconds, set from ``timeout_seconds`` when the trigger is
made and serialized with it), so a triggerer restart does not extend the wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class SeldonDeploymentAvailableTrigger(BaseTrigger):
    def __init__(
        self,
        name: str,
        namespace: str,
        conn_id: str = "kubernetes_default",
        timeout_seconds: float = 900.0,
        poll_seconds: float = 10.0,
        deadline: float | None = None,
    ):
        super().__init__()
        self.name = name
        self.namespace = namespace
        self.conn_id = conn_id
        self.timeout_seconds = float(timeout_seconds)
        self.poll_seconds = float(poll_seconds)
        self.deadline = float(deadline) if deadline is not None else time.time() + self.timeout_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "freestack.serving.triggers.SeldonDeploymentAvailableTrigger",
            {
                "name": self.name,
                "namespace": self.namespace,
                "conn_id": self.conn_id,
                "timeout_seconds": self.timeout_seconds,
                "poll_seconds": self.poll_seconds,
                "deadline": self.deadline,
            },
        )

    def _event(self, status: str, message: str) -> TriggerEvent:
        return TriggerEvent({"status": status, "message": message, "name": self.name, "namespace": self.namespace})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        status, message = await self._wait()
        yield self._event(status, message)

    async def _wait(self) -> tuple[str, str]:
        import aiohttp
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio.client import CustomObjectsApi
        from kubernetes_asyncio.client.exceptions import ApiException

        from freestack.serving import k8s, manifests

        hook = AsyncKubernetesHook(conn_id=self.conn_id)
        what = f"SeldonDeployment {self.namespace}/{self.name}"
        last = "nothing read yet"
        host = "(not connected)"
        while True:
            try:
                async with hook.get_conn() as api_client:
                    host = api_client.configuration.host
                    obj = await CustomObjectsApi(api_client).get_namespaced_custom_object(
                        manifests.GROUP, manifests.VERSION, self.namespace, manifests.PLURAL, self.name
                    )
            except ApiException as exc:
                where = {"host": host, "conn_id": self.conn_id, "namespace": self.namespace, "name": self.name}
                if k8s.object_missing(exc.status, exc.body):
                    return "failed", f"{what} no longer exists on {host}: it was deleted while being deployed"
                err = k8s.api_error(exc.status, exc.reason, exc.body, action="read", **where)
                if not isinstance(err, k8s.KubernetesUnavailable):
                    return "error", str(err)
                last = str(err)
                self.log.warning("%s; retrying in %ss", err, self.poll_seconds)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                err = k8s.unreachable(exc, host=host, conn_id=self.conn_id, namespace=self.namespace,
                                      name=self.name, action="read")
                last = str(err)
                self.log.warning("%s; retrying in %ss", err, self.poll_seconds)
            except Exception as exc:  # the connection's configuration: waiting will not fix it
                return "error", (
                    f"cannot load the Kubernetes configuration of connection {self.conn_id!r} to watch {what} "
                    f"({type(exc).__name__}: {exc}). Give the connection exactly one of the extras "
                    "kube_config_path, kube_config or in_cluster: true."
                )
            else:
                state, message = manifests.availability(obj)
                if state in ("available", "failed"):
                    return state, message
                last = message
                self.log.info("%s; next look in %ss", message, self.poll_seconds)
            remaining = self.deadline - time.time()
            if remaining <= 0:
                return "timeout", (
                    f"{what} was not Available within {self.timeout_seconds:g}s; last seen: {last}. Look at its "
                    f"pods ('kubectl -n {self.namespace} get pods -l seldon-deployment-id={self.name}', then "
                    "describe/logs: image pull, crash loop, readiness probe) or raise "
                    "deploy.kubernetes.timeout_minutes."
                )
            await asyncio.sleep(min(self.poll_seconds, remaining))
