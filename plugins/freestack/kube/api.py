"""One session on a Kubernetes custom object, shared by the train stage (PyTorchJob) and the deploy stage
(SeldonDeployment): the cncf.kubernetes provider's ``KubernetesHook`` and its connection say which cluster
and which credentials (``ref``: a :class:`~freestack.kube.ref.KubeRef`, the object and its connection), and
every failure inside the session becomes the error its stage words::

    with api_session(ref, session_class=JobSession, words=..., error=..., unavailable=...) as s:
        stored = s.read()                       # None when the object does not exist

:func:`answer_text` words an answer of the API server with the kind's :class:`AnswerWords` (the triggers'
async clients say the same), :func:`unreachable_text` a server that could not be reached; ``unavailable``
is the error of what a later retry may fix (a connection whose configuration cannot be loaded, a server
out of reach or failing), ``error`` the rest. :func:`status_body`, :func:`object_missing` and
:func:`resource_type_missing` read an answer's body.

Light at import: ``kubernetes`` and Airflow are imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict

from freestack.kube.ref import KubeRef


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


def unreachable_text(exc: BaseException, *, kind: str, host: str, ref: KubeRef, action: str) -> str:
    """Why an API server could not be reached to ``action`` the object ``ref``, and what to check."""
    return (
        f"cannot reach the Kubernetes API server {host} (connection {ref.conn_id!r}) to {action} "
        f"{ref.describe(kind)}: {type(exc).__name__}: {exc}. Check that the cluster is up and that the "
        "connection's kube_config points at it ('kubectl cluster-info' with the same kubeconfig)."
    )


class AnswerWords(BaseModel):
    """A kind's own words in :func:`answer_text`'s messages (the rest is the same for every kind)."""

    model_config = ConfigDict(frozen=True)

    kind: str  #: the object's kind (SeldonDeployment)
    crd: str  #: its resource's name (seldondeployments.machinelearning.seldon.io)
    verbs: str  #: what RBAC must let the connection do on it
    namespace_setting: str  #: the pipeline spec's field that names the namespace
    not_installed: str  #: what serves the resource, as "<it> is not installed" says
    install: str  #: how to install it
    gone: str  #: the hint for an object that does not exist
    conflict: str = ""  #: the hint for a conflict (409); none: the answer alone
    refused: str  #: after a refused manifest's causes (422): who refused it and what to fix
    webhook_down: str  #: the hint for an admission webhook that could not be called


def answer_text(
    words: AnswerWords,
    status: int | None,
    reason: str | None,
    body: Any,
    *,
    host: str,
    ref: KubeRef,
    action: str,
) -> tuple[bool, str]:
    """(whether a later retry may help, the message) for an API server's answer about the object ``ref``
    (sync and async clients alike): what happened, where, and what to check."""
    doc, detail = status_body(body) or {}, answer_detail(body, reason)
    head = (
        f"Kubernetes API server {host} (connection {ref.conn_id!r}) answered {status} {reason or ''}".rstrip()
    )
    head += f" to {action} {ref.describe(words.kind)}: {detail}"
    retry, hint = _hint(words, status, body, doc, detail, ref=ref)
    return retry, head + hint


def _hint(
    words: AnswerWords,
    status: int | None,
    body: Any,
    doc: dict[str, Any],
    detail: str,
    *,
    ref: KubeRef,
) -> tuple[bool, str]:
    """What to check after an answer, and whether a later retry may help."""
    crd, details = words.crd, doc.get("details") or {}
    conn_id, namespace = ref.conn_id, ref.namespace
    if status == 401:
        return True, (
            f". The credentials were rejected: check that connection {conn_id!r}'s kube_config (token, client "
            "certificate or exec plugin) is current."
        )
    if status == 403:
        return False, (
            f". RBAC: the identity of connection {conn_id!r} needs {words.verbs} on {crd} in namespace "
            f"{namespace} (a Role and RoleBinding); check with 'kubectl auth can-i create {crd} -n {namespace}'."
        )
    if status == 404 and details.get("kind") == "namespaces":
        return False, (
            f". Namespace {namespace!r} does not exist: create it ('kubectl create namespace {namespace}') or set "
            f"{words.namespace_setting} in the pipeline spec."
        )
    if resource_type_missing(status, body):
        return False, (
            f". The cluster does not serve {crd}: {words.not_installed} is not installed ('kubectl get crd "
            f"{crd}' finds nothing). {words.install}"
        )
    if status == 404:
        return False, words.gone
    if status == 409:
        return False, words.conflict
    if status == 422:
        causes = details.get("causes") or []
        listed = "".join(f"\n  {c.get('field', '?')}: {c.get('message', '')}" for c in causes)
        return False, f"{listed}\n{words.refused}"
    if "webhook" in detail and (status or 0) >= 500:
        return True, words.webhook_down
    if status == 429 or (status or 0) >= 500 or not status:
        return True, ". The API server is overloaded or failing; retry later."
    return False, ""


class Session:
    """One API client for the object ``ref`` of a custom resource (``group``, ``version``, ``plural``, set
    by each kind's subclass); ``action`` names what is being done, for error messages."""

    group = version = plural = ""

    def __init__(self, api_client: Any, ref: KubeRef):
        from kubernetes.client import CustomObjectsApi

        self.api = CustomObjectsApi(api_client)
        self.host = api_client.configuration.host
        self.ref = ref
        self.action = "reach"

    def _args(self) -> tuple[str, str, str, str]:
        return self.group, self.version, self.ref.namespace, self.plural

    def read(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        self.action = "read"
        try:
            return self.api.get_namespaced_custom_object(*self._args(), self.ref.name)
        except ApiException as exc:
            if object_missing(exc.status, exc.body):
                return None
            raise

    def create(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.action = "create"
        return self.api.create_namespaced_custom_object(*self._args(), body, **kw)

    def replace(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.action = "replace"
        return self.api.replace_namespaced_custom_object(*self._args(), self.ref.name, body, **kw)

    def merge_patch(self, body: dict[str, Any]) -> dict[str, Any]:
        self.action = "patch"
        return self.api.patch_namespaced_custom_object(
            *self._args(), self.ref.name, body, _content_type="application/merge-patch+json"
        )

    def delete(self) -> dict[str, Any]:
        self.action = "delete"
        return self.api.delete_namespaced_custom_object(*self._args(), self.ref.name)


@contextmanager
def api_session(
    ref: KubeRef,
    *,
    session_class: type[Session],
    words: AnswerWords,
    error: Callable[..., BaseException],
    unavailable: Callable[..., BaseException],
) -> Iterator[Session]:
    """A session on the connection's cluster for the object ``ref``; every failure inside becomes the caller's
    ``unavailable`` (a later retry may fix it) or ``error``, in its stage's ``words``: ``(message,
    status=)`` for an answer of the API server, ``(message)`` otherwise."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

        api_client = KubernetesHook(conn_id=ref.conn_id).get_conn()
    except Exception as exc:  # connection missing, no kubeconfig, conflicting extras, bad YAML...
        raise unavailable(
            f"cannot load the Kubernetes configuration of connection {ref.conn_id!r} ({type(exc).__name__}: {exc}). "
            "Give the connection (conn_type kubernetes) exactly one of the extras kube_config_path, kube_config "
            "(the kubeconfig inline) or in_cluster: true."
        ) from exc
    session = session_class(api_client, ref)
    where = {"host": session.host, "ref": ref}
    try:
        yield session
    except (ApiException, HTTPError, OSError) as exc:
        if isinstance(exc, ApiException) and exc.status:  # an answer (else the client's own failure: TLS...)
            retry, text = answer_text(words, exc.status, exc.reason, exc.body, action=session.action, **where)
            raise (unavailable if retry else error)(text, status=exc.status) from exc
        raise unavailable(unreachable_text(exc, kind=words.kind, action=session.action, **where)) from exc
    finally:
        api_client.close()


def delete(ref: KubeRef, *, session: Callable[..., Any]) -> bool:
    """Delete the object ``ref`` through ``session`` (its kind's :func:`api_session`); False when there was
    none."""
    from kubernetes.client.exceptions import ApiException

    with session(ref) as s:
        try:
            s.delete()
        except ApiException as exc:
            if object_missing(exc.status, exc.body):
                return False
            raise
        return True


__all__ = [
    "AnswerWords",
    "Session",
    "answer_detail",
    "answer_text",
    "api_session",
    "delete",
    "object_missing",
    "resource_type_missing",
    "status_body",
    "unreachable_text",
]
