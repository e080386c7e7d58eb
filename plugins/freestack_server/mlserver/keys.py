"""A deployment's key (``FREESTACK_SERVER_API_KEY``) on every route of the ``mlserver`` runtime that reads or
runs the model: the OpenAI API (``/v1/...``), V2 inference and metadata (REST and gRPC), the server's
metadata, and the generated API docs (``/v2/docs``, ``/openapi.json`` and each model's). Only the probes stay
open, so that Kubernetes and the deploy can ask whether the server is up: ``/health``, ``/v2/health/live``,
``/v2/health/ready`` and ``/v2/models/<name>[/versions/<v>]/ready`` (gRPC ``ServerLive``, ``ServerReady``,
``ModelReady``). The metrics port answers without the key: it binds where the HTTP port does
(``FREESTACK_SERVER_HOST``), and says how many requests were answered, never what they held.

A client sends the key as ``Authorization: Bearer <key>`` (the ``openai`` client's ``api_key``; tritonclient's
and MLServer's clients take the header as ``headers=``), or as ``api-key: <key>``, Azure OpenAI's header (the
``openai`` package's ``AzureOpenAI`` client sends it). The Kubernetes API server's service proxy, which the
rollout's smoke test goes through, drops ``Authorization`` (it is the proxy's own credential), not ``api-key``.
A request without the key, or with another, gets a 401 in the route's error format, with
``WWW-Authenticate: Bearer``; gRPC answers ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

#: an answer made before the app: (status, headers, body)
Refusal = tuple[int, list[tuple[bytes, bytes]], bytes]

#: the routes a key leaves open: the probes, which say whether the server is up and nothing of the model
OPEN_PATHS = re.compile(r"/health|/v2/health/(live|ready)|/v2/models/[^/]+(/versions/[^/]+)?/ready")
#: the gRPC methods a key leaves open (``inference.GRPCInferenceService``)
OPEN_GRPC = ("ServerLive", "ServerReady", "ModelReady")
#: the gRPC methods a key guards (the repository methods are refused to everyone)
GUARDED_GRPC = ("ServerMetadata", "ModelMetadata", "ModelInfer")
MISSING = (
    "a missing or wrong API key: this deployment asks for one on every route but its health probes; send "
    "'Authorization: Bearer <key>' (or 'api-key: <key>') with the deployment's key"
)


def given(headers: dict[str, str]) -> str:
    """The key a request sent: ``Authorization: Bearer <key>``, else ``api-key: <key>`` (lower-case names)."""
    bearer = headers.get("authorization", "")
    if bearer[:7].lower() == "bearer ":
        return bearer[7:].strip()
    return headers.get("api-key", "").strip()


def matches(sent: str, key: str) -> bool:
    return secrets.compare_digest(sent.encode(errors="replace"), key.encode())


async def respond(send, refusal: Refusal) -> None:
    """Send ``refusal`` (status, headers, body) as an ASGI answer, without the app."""
    status, headers, body = refusal
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class KeyGuard:
    """ASGI middleware: every route but :data:`OPEN_PATHS` answered 401 without the key, before the body is
    read; OpenAI's error format on ``/v1/...``, the V2 format elsewhere."""

    def __init__(self, app, key: str, refusal: Callable[[int, str, str], Refusal]):
        self.app, self.key, self.refusal = app, key, refusal  # refusal(status, message, path)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or OPEN_PATHS.fullmatch(scope["path"]):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        if matches(given(headers), self.key):
            return await self.app(scope, receive, send)
        status, head, body = self.refusal(401, MISSING, scope["path"])
        await respond(send, (status, [*head, (b"www-authenticate", b"Bearer")], body))


def guard_grpc(key: str) -> None:
    """MLServer's gRPC methods of :data:`GUARDED_GRPC` (and ``ModelStreamInfer``) answer ``UNAUTHENTICATED``
    without the key in the call's metadata (``authorization: Bearer <key>`` or ``api-key: <key>``)."""
    import grpc
    from mlserver.grpc.servicers import InferenceServicer

    async def check(context: Any) -> None:
        sent = given({k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        if not matches(sent, key):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, MISSING)

    def unary(method):
        async def checked(self: Any, request: Any, context: Any) -> Any:
            await check(context)
            return await method(self, request, context)

        return checked

    def streaming(method):
        async def checked(self: Any, requests: Any, context: Any) -> Any:
            await check(context)
            async for answer in method(self, requests, context):
                yield answer

        return checked

    for name in GUARDED_GRPC:
        setattr(InferenceServicer, name, unary(getattr(InferenceServicer, name)))
    InferenceServicer.ModelStreamInfer = streaming(InferenceServicer.ModelStreamInfer)


__all__ = ["GUARDED_GRPC", "MISSING", "OPEN_GRPC", "OPEN_PATHS", "KeyGuard", "given", "guard_grpc", "matches"]
