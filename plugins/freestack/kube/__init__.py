"""Kubernetes custom objects, as every stage that runs something on a cluster reaches them: the train
stage's PyTorchJobs and the deploy stage's SeldonDeployments (and KServe InferenceServices).

- :class:`KubeRef` (:mod:`freestack.kube.ref`): which object on which cluster (name, namespace, the
  Airflow connection), the one argument the stages' Kubernetes calls take for it;
- :mod:`freestack.kube.manifests`: pure helpers for manifests (label values, the managed-by label) and
  for checking them against a CRD before they reach a cluster (strict JSON Schema, violations by path);
- :mod:`freestack.kube.api`: one session on a custom object through the cncf.kubernetes provider's
  ``KubernetesHook``, every failure turned into the error its stage words (API server, connection,
  namespace, object and what to check).

Each stage keeps its own kind's manifests and API calls (``<stage>/manifests.py``; ``serving/seldon_deployments.py``,
``train/pytorchjobs.py``); this package sits below both, so neither stage imports the other for them.
"""

from freestack.kube.ref import KubeRef

__all__ = ["KubeRef"]
