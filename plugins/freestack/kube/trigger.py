"""The trigger that waits in the triggerer, not in a worker slot, for one Kubernetes custom object to reach a
final state, reading it through the cncf.kubernetes provider's AsyncKubernetesHook: the train stage's
PyTorchJobs (:mod:`freestack.train.triggers`) and the deploy stage's SeldonDeployments
(:mod:`freestack.serving.triggers`) each subclass it.

:class:`CustomObjectTrigger` is the loop (read, judge, sleep, until a deadline); a subclass names the
object's API (group, version, plural, kind), how to judge a read (``state_of``: (state, message), done
when the state is in ``terminal``) and the messages for what went wrong (an API server's answer in its
stage's ``words``). Each yields exactly one event::

    {"status": <a terminal state> | "timeout" | "error", "message": ..., "name": ..., "namespace": ...}

- a terminal state: what ``state_of`` said; an object deleted meanwhile is ``failed``;
- ``timeout``: not done by the deadline; the message says what was seen last;
- ``error``: the API refused in a way waiting will not fix (RBAC, CRD not installed, connection not
  configured). Unreachable servers, 5xx, 429 and rejected credentials are retried until the deadline.

The deadline is absolute (``deadline``, epoch seconds, set from ``timeout_seconds`` when the trigger is
made and serialized with it), so a triggerer restart does not extend the wait. The object is the trigger's
``ref`` (:class:`~freestack.kube.ref.KubeRef`); it is serialized as plain strings, the kwargs ``name``,
``namespace`` and ``conn_id`` that earlier versions wrote too, so a task they deferred still resumes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Self

from airflow.triggers.base import BaseTrigger, TriggerEvent

from freestack.kube.api import AnswerWords, answer_text, object_missing, unreachable_text
from freestack.kube.ref import KubeRef

NOT_CONNECTED = "(not connected)"


class CustomObjectTrigger(BaseTrigger):
    """Read one custom object every ``poll_seconds`` until ``state_of`` says it is done, it is gone, the API
    refuses, or the deadline passes; one event either way. Subclasses set the class attributes and the
    message methods; the loop, the error triage and the serialization are shared."""

    group: ClassVar[str]
    version: ClassVar[str]
    plural: ClassVar[str]
    kind: ClassVar[str]
    #: what the API server's answers about the object say to check (its stage's :class:`AnswerWords`)
    words: ClassVar[AnswerWords]
    #: the states of ``state_of`` that end the wait (each becomes the event's status)
    terminal: ClassVar[frozenset[str]]

    def __init__(
        self,
        name: str,
        namespace: str,
        conn_id: str = "kubernetes_default",
        timeout_seconds: float = 900.0,
        poll_seconds: float = 10.0,
        deadline: float | None = None,
    ):
        """``name``, ``namespace``, ``conn_id``: the object's :class:`KubeRef` as the plain strings
        :meth:`serialize` writes (the triggerer rebuilds a trigger from them); :meth:`for_ref` takes the ref."""
        super().__init__()
        self.ref = KubeRef(name, namespace, conn_id)
        self.timeout_seconds = float(timeout_seconds)
        self.poll_seconds = float(poll_seconds)
        self.deadline = float(deadline) if deadline is not None else time.time() + self.timeout_seconds
        self.host = NOT_CONNECTED  # the API server, once a connection was made (for messages)

    @classmethod
    def for_ref(cls, ref: KubeRef, **kwargs: Any) -> Self:
        """The wait for the object ``ref`` (``kwargs``: the timeout, the poll interval)."""
        return cls(**ref.plain(), **kwargs)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class's own import path and the arguments that rebuild it, the absolute deadline included;
        plain values only (the ref as its strings)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                **self.ref.plain(),
                "timeout_seconds": self.timeout_seconds,
                "poll_seconds": self.poll_seconds,
                "deadline": self.deadline,
            },
        )

    @property
    def what(self) -> str:
        return self.ref.describe(self.kind)

    def _where(self) -> dict[str, Any]:
        """Where the object is, as the stages' error factories take it."""
        return {"host": self.host, "ref": self.ref}

    # what a subclass says ----------------------------------------------------------------------------

    def state_of(self, obj: dict[str, Any]) -> tuple[str, str]:
        """(state, message) of the object as read; the wait ends when the state is in ``terminal``."""
        raise NotImplementedError

    def missing(self) -> tuple[str, str]:
        """The event when the object no longer exists: someone deleted it while it was awaited."""
        return "failed", f"{self.what} no longer exists on {self.host}: it was deleted while being awaited"

    def api_error(self, status: int | None, reason: str | None, body: Any) -> tuple[bool, str]:
        """(whether waiting may fix it, the message) for an API server's answer other than the object."""
        return answer_text(self.words, status, reason, body, action="read", **self._where())

    def unreachable(self, exc: BaseException) -> str:
        """The message when the API server could not be reached (retried until the deadline)."""
        return unreachable_text(exc, kind=self.kind, action="read", **self._where())

    def timeout_message(self, last: str) -> str:
        """The message when the deadline passed; ``last``: what was seen last."""
        return f"{self.what} was not done within {self.timeout_seconds:g}s; last seen: {last}"

    def config_error(self, exc: BaseException) -> str:
        """The connection's configuration could not be loaded: waiting will not fix it."""
        return (
            f"cannot load the Kubernetes configuration of connection {self.ref.conn_id!r} to watch {self.what} "
            f"({type(exc).__name__}: {exc}). Give the connection exactly one of the extras "
            "kube_config_path, kube_config or in_cluster: true."
        )

    # the loop ---------------------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        status, message = await self._wait()
        yield TriggerEvent(
            {"status": status, "message": message, "name": self.ref.name, "namespace": self.ref.namespace}
        )

    async def _wait(self) -> tuple[str, str]:
        """Look until done or the deadline: the deadline is checked after each look, so a deadline already
        past still reads the object once."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook

        hook = AsyncKubernetesHook(conn_id=self.ref.conn_id)
        last = "nothing read yet"
        while True:
            done, seen = await self._look(hook)
            if done is not None:
                return done
            last = seen or last
            remaining = self.deadline - time.time()
            if remaining <= 0:
                return "timeout", self.timeout_message(last)
            await asyncio.sleep(min(self.poll_seconds, remaining))

    async def _look(self, hook: Any) -> tuple[tuple[str, str] | None, str]:
        """One read: (the final (status, message), or None to look again; what was seen, for a timeout)."""
        import aiohttp
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            obj = await self._read(hook)
        except ApiException as exc:
            if object_missing(exc.status, exc.body):
                return self.missing(), ""
            retry, message = self.api_error(exc.status, exc.reason, exc.body)
            return (None, self._retrying(message)) if retry else (("error", message), "")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return None, self._retrying(self.unreachable(exc))
        except Exception as exc:  # the connection's configuration: waiting will not fix it
            return ("error", self.config_error(exc)), ""
        state, message = self.state_of(obj)
        if state in self.terminal:
            return (state, message), ""
        self.log.info("%s; next look in %ss", message, self.poll_seconds)
        return None, message

    async def _read(self, hook: Any) -> dict[str, Any]:
        from kubernetes_asyncio.client import CustomObjectsApi

        async with hook.get_conn() as api_client:
            self.host = api_client.configuration.host
            return await CustomObjectsApi(api_client).get_namespaced_custom_object(
                self.group, self.version, self.ref.namespace, self.plural, self.ref.name
            )

    def _retrying(self, message: str) -> str:
        self.log.warning("%s; retrying in %ss", message, self.poll_seconds)
        return message


__all__ = ["CustomObjectTrigger"]
