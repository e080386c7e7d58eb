"""Which object on which cluster: :class:`KubeRef`, the one argument every Kubernetes call of the train and
deploy stages takes for the object it reaches (a PyTorchJob, a SeldonDeployment)::

    ref = KubeRef("digits", "models", "kubernetes_default")
    get(ref); promote_canary(ref, version="4")
    ref.describe("SeldonDeployment")            # "SeldonDeployment models/digits", as messages name it

A trigger serializes it as plain strings (:meth:`KubeRef.plain`, the kwargs ``name``, ``namespace``,
``conn_id`` its earlier versions wrote too) and rebuilds it with ``KubeRef(**plain)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KubeRef:
    """The object ``name`` in ``namespace``, on the cluster the Airflow kubernetes connection ``conn_id``
    reaches (with its credentials). Immutable."""

    name: str
    namespace: str
    conn_id: str

    def describe(self, kind: str = "") -> str:
        """``namespace/name``, after ``kind`` when given: how messages name the object."""
        path = f"{self.namespace}/{self.name}"
        return f"{kind} {path}" if kind else path

    def plain(self) -> dict[str, str]:
        """``name``, ``namespace`` and ``conn_id`` as plain strings (``KubeRef(**plain)`` rebuilds it)."""
        return {"name": self.name, "namespace": self.namespace, "conn_id": self.conn_id}


__all__ = ["KubeRef"]
