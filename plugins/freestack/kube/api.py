"""One session on a Kubernetes custom object, shared by the train stage (PyTorchJob) and the deploy stage
(SeldonDeployment): the cncf.kubernetes provider's ``KubernetesHook`` and its connection say which cluster
and which credentials, and every failure inside the session becomes the error its stage words::

    with api_session(conn_id, namespace, name, session_class=JobSession, unavailable=...,
                     on_unreachable=..., on_answer=...) as s:
        stored = s.read()                       # None when the object does not exist

``on_answer(status, reason, body, host=, conn_id=, namespace=, name=, action=)`` words an answer of the API
server, ``on_unreachable(exc, host=, ...)`` a server that could not be reached, ``unavailable(message)`` a
connection whose configuration cannot be loaded. :func:`status_body`, :func:`object_missing` and
:func:`resource_type_missing` read an answer's body for them (and for the triggers' async clients).

Light at import: ``kubernetes`` and Airflow are imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def status_body(body: Any) -> dict[str, Any] | None:
    """An answer's body as the API server's ``Status`` document, or None when it is not JSON."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    return body if isinstance(body, dict) else None


def resource_type_missing(status: int | None, body: Any) -> bool:
    """A 404 that is about the resource type (its CRD not installed), not about one object."""
    if status != 404:
        return False
    doc = status_body(body)
    if doc is None:  # "404 page not found": the API group is not served at all
        return True
    details = doc.get("details") or {}
    return not details.get("name") and details.get("kind") != "namespaces"


def object_missing(status: int | None, body: Any) -> bool:
    """A 404 about the object itself (the type and the namespace exist)."""
    if status != 404:
        return False
    details = (status_body(body) or {}).get("details") or {}
    return bool(details.get("name")) and details.get("kind") != "namespaces"


def answer_detail(body: Any, reason: str | None) -> str:
    """What an answer says went wrong: its Status message, else its body, else its HTTP reason."""
    raw = body.decode() if isinstance(body, bytes) else body
    return str((status_body(body) or {}).get("message") or raw or reason or "").strip()


def unreachable_text(
    exc: BaseException, *, kind: str, host: str, conn_id: str, namespace: str, name: str, action: str
) -> str:
    """Why an API server could not be reached to ``action`` an object, and what to check."""
    return (
        f"cannot reach the Kubernetes API server {host} (connection {conn_id!r}) to {action} {kind} "
        f"{namespace}/{name}: {type(exc).__name__}: {exc}. Check that the cluster is up and that the "
        "connection's kube_config points at it ('kubectl cluster-info' with the same kubeconfig)."
    )


class Session:
    """One API client for one object of a custom resource (``group``, ``version``, ``plural``, set by each
    kind's subclass); ``action`` names what is being done, for error messages."""

    group = version = plural = ""

    def __init__(self, api_client: Any, conn_id: str, namespace: str, name: str):
        from kubernetes.client import CustomObjectsApi

        self.api = CustomObjectsApi(api_client)
        self.host = api_client.configuration.host
        self.conn_id, self.namespace, self.name = conn_id, namespace, name
        self.action = "reach"

    def _args(self) -> tuple[str, str, str, str]:
        return self.group, self.version, self.namespace, self.plural

    def read(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        self.action = "read"
        try:
            return self.api.get_namespaced_custom_object(*self._args(), self.name)
        except ApiException as exc:
            if object_missing(exc.status, exc.body):
                return None
            raise

    def create(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.action = "create"
        return self.api.create_namespaced_custom_object(*self._args(), body, **kw)

    def replace(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.action = "replace"
        return self.api.replace_namespaced_custom_object(*self._args(), self.name, body, **kw)

    def merge_patch(self, body: dict[str, Any]) -> dict[str, Any]:
        self.action = "patch"
        return self.api.patch_namespaced_custom_object(
            *self._args(), self.name, body, _content_type="application/merge-patch+json"
        )

    def delete(self) -> dict[str, Any]:
        self.action = "delete"
        return self.api.delete_namespaced_custom_object(*self._args(), self.name)


@contextmanager
def api_session(
    conn_id: str,
    namespace: str,
    name: str,
    *,
    session_class: type[Session],
    unavailable: Callable[[str], BaseException],
    on_unreachable: Callable[..., BaseException],
    on_answer: Callable[..., BaseException],
) -> Iterator[Session]:
    """A session on the connection's cluster for one object; every failure inside becomes the error the
    caller's factories make (its stage's words for its kind)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        api_client = KubernetesHook(conn_id=conn_id).get_conn()
    except Exception as exc:  # connection missing, no kubeconfig, conflicting extras, bad YAML...
        raise unavailable(
            f"cannot load the Kubernetes configuration of connection {conn_id!r} ({type(exc).__name__}: {exc}). "
            "Give the connection (conn_type kubernetes) exactly one of the extras kube_config_path, kube_config "
            "(the kubeconfig inline) or in_cluster: true."
        ) from exc
    session = session_class(api_client, conn_id, namespace, name)
    where = {"host": session.host, "conn_id": conn_id, "namespace": namespace, "name": name}
    try:
        yield session
    except ApiException as exc:
        if not exc.status:  # the client's own failure (TLS handshake, ...), not an answer
            raise on_unreachable(exc, action=session.action, **where) from exc
        raise on_answer(exc.status, exc.reason, exc.body, action=session.action, **where) from exc
    except (HTTPError, OSError) as exc:
        raise on_unreachable(exc, action=session.action, **where) from exc
    finally:
        api_client.close()


def delete(name: str, namespace: str, conn_id: str, *, session: Callable[..., Any]) -> bool:
    """Delete an object through ``session`` (its kind's :func:`api_session`); False when there was none."""
    from kubernetes.client.exceptions import ApiException

    with session(conn_id, namespace, name) as s:
        try:
            s.delete()
        except ApiException as exc:
            if object_missing(exc.status, exc.body):
                return False
            raise
        return True


__all__ = [
    "Session",
    "answer_detail",
    "api_session",
    "delete",
    "object_missing",
    "resource_type_missing",
    "status_body",
    "unreachable_text",
]
