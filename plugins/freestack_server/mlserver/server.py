"""The ``mlserver`` runtime of ``python -m freestack_server``: MLServer serving one model with freestack's
runtime (:mod:`.runtime`), as ``mlserver start FOLDER`` does for the folder :func:`folder_of` writes, with
every refusal in the V2 error format. Runs in ``.venv-mlserver`` and ``docker/mlserver.Dockerfile``.

MLServer answers its own errors as ``{"error": "..."}``, but a body its request model cannot parse
(invalid JSON, a missing ``inputs``, a wrong type), an unknown route or a wrong method gets FastAPI's
``{"detail": ...}``; it takes bodies and headers of any size, reads JSON only (Triton's client sends
binary tensors by default), and its model repository API lets anyone who reaches the port unload the
model (REST ``/v2/repository/...``, gRPC ``Repository*``). For the MLServer release this was written for
(:data:`WRITTEN_FOR`), this launcher's :func:`extend` changes, before MLServer builds its servers:

- its exception-handler table (``mlserver.rest.app``): validation errors answered 400 ``{"error": "..."}``
  naming the field; 404 (no such route) and 405 (wrong method) as ``{"error": "..."}`` too;
- its REST app (``create_app``), three ASGI middlewares: the repository API refused 403 and headers over
  :data:`MAX_HEADER_BYTES` 431 (:class:`Refusals`); a body limit (``max_body_bytes``, 413, before the body
  is read, :class:`BodyLimit`); the binary tensor extension (:mod:`.binary`);
- its gRPC servicers: the repository methods answer ``PERMISSION_DENIED``; ``ModelReady`` of an unknown
  model ``NOT_FOUND`` (MLServer's own answers ``UNKNOWN`` with a traceback);
- uvicorn's HTTP protocol (:func:`json_400_protocol`, for the uvicorn release of :data:`UVICORN_WRITTEN_FOR`):
  what its parser cannot read (a garbage request line or header, a bad chunk size or ``Content-Length``,
  binary data, a TLS ClientHello) gets 400 ``{"error": "..."}``, not uvicorn's plain-text 400.

MLServer 1.7 has no setting that turns its repository API off; deploys, rollbacks and stops go through
freestack. On another release the launcher starts MLServer unchanged and says so in one warning line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from freestack.settings import settings
from freestack_server.core.config import BOOT_ERROR, ServerConfig
from freestack_server.core.generation import Bounds
from freestack_server.mlserver.keys import KeyGuard, Refusal, guard_grpc, respond

log = logging.getLogger("freestack.serving")

#: the MLServer releases whose REST app this launcher extends
WRITTEN_FOR = ("1.7.",)
#: the uvicorn releases whose HTTP protocols' ``send_400_response`` this launcher overrides (on another,
#: requests uvicorn's parser cannot read get its own plain-text 400, and the launcher says so once)
UVICORN_WRITTEN_FOR = ("0.54.",)
#: seconds without an open connection the drain waits for before it stops: a connection accepted just before
#: the close reaches uvicorn's count a few loop turns later (on a loaded machine, later than 0.2 s once)
ACCEPTED_S = 0.5
#: seconds an idle keep-alive connection stays open on a deployment's address (uvicorn's default)
KEEP_ALIVE_S = 5.0
#: the most header bytes (names and values) a request may carry; past it, 431 (uvicorn's httptools parser
#: has no limit of its own, so the headers are read before they are refused)
MAX_HEADER_BYTES = 16 * 1024
#: why the model repository API answers 403 (REST) or PERMISSION_DENIED (gRPC)
REPOSITORY_DISABLED = (
    "the model repository API (load, unload, index) is disabled in freestack deployments: "
    "deploy, roll back or stop a model through freestack (`freestack serve deploy`, "
    "`freestack serve stop`)"
)
#: how long ``freestack serve stop`` (and a deploy replacing a server) waits for a stopped server to end
#: (:func:`freestack.serving.processes.stop_servers`' default), said in the stop's log line
STOP_GRACE_S = 15.0
#: MLServer's dotted path of freestack's runtime
IMPLEMENTATION = "freestack_server.mlserver.runtime.FreestackRuntime"


def v2_error(status: int, message: str, path: str = "") -> Refusal:
    """A refusal in the V2 format, or in OpenAI's for the OpenAI API's paths (``/v1/...``)."""
    body = json.dumps(_error_body(message, status, path)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, headers, body


def openai_path(path: str) -> bool:
    """Whether ``path`` is the OpenAI API's: ``/v1/...``, or ``//v1/...`` (a base URL ending in a slash)."""
    return path.lstrip("/").startswith("v1/")


def _error_body(message: str, status: int, path: str) -> dict[str, Any]:
    if openai_path(path):
        from freestack_server.mlserver.protocol import error_body

        return error_body(message, status)
    return {"error": message}


def validation_message(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors as one sentence: where, and what is wrong."""
    parts = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            return f"the request body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')}): send a V2 inference request"
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "the body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "the request does not follow the V2 inference protocol: " + "; ".join(parts)


#: a refused body up to this size is read and dropped (never kept) before the 413 goes out, so that a client
#: that writes its whole body before it reads (urllib, requests) gets the answer, not a broken pipe
DRAIN_BYTES = 64 * 1024 * 1024


class BodyLimit:
    """ASGI middleware: a request whose body is over ``limit`` bytes is answered 413 in the V2 format, known
    from its Content-Length, or as soon as a chunked body passes the limit. The app never sees the body;
    the rest of it is read and dropped first, up to :data:`DRAIN_BYTES` (past that the connection is cut)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            if int(length) <= DRAIN_BYTES:
                await _drain(receive, 0)
            return await self._refuse(send, int(length), scope["path"])
        if length is not None:
            return await self.app(scope, receive, send)
        # no length (chunked): read the body here, up to the limit, and hand it on whole
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # the client left: the app sees it
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            more = message.get("more_body", False)
            if seen > self.limit:
                if more:
                    await _drain(receive, seen)
                return await self._refuse(send, seen, scope["path"])
        from freestack_server.mlserver.binary import replayed

        return await self.app(scope, replayed(b"".join(chunks), receive), send)

    async def _refuse(self, send, size: int, path: str) -> None:
        message = (
            f"the request body is {size} bytes or more; at most {self.limit} "
            "are accepted: send fewer rows (or shorter prompts) per request"
        )
        await respond(send, v2_error(413, message, path))


async def _drain(receive, seen: int) -> None:
    """Read and drop the rest of a refused body, up to :data:`DRAIN_BYTES` in all."""
    while seen <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        seen += len(message.get("body", b""))


class Refusals:
    """ASGI middleware: the model repository API (``/v2/repository/...``) answered 403, and a request whose
    headers are over :data:`MAX_HEADER_BYTES` 431, both in the V2 format, before MLServer sees them."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = sum(len(k) + len(v) for k, v in scope.get("headers") or [])
        if scope["path"].startswith("/v2/repository"):
            refusal = v2_error(403, REPOSITORY_DISABLED)
        elif size > MAX_HEADER_BYTES:
            refusal = v2_error(
                431,
                f"the request's headers are {size} bytes; at most "
                f"{MAX_HEADER_BYTES} are accepted: send smaller headers",
                scope["path"],
            )
        else:
            return await self.app(scope, receive, send)
        await respond(send, refusal)


def http_error_message(request: Any, exc: Any) -> str:
    """A routing refusal (Starlette's 404 and 405) as one sentence saying what to send instead."""
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404 and openai_path(request.url.path):
        slashes = (
            " (with one slash: check the client's base URL)" if request.url.path.startswith("//") else ""
        )
        return (
            f"{where}: no such OpenAI API endpoint; this server answers POST /v1/chat/completions, "
            f"POST /v1/completions, GET /v1/models and GET /v1/models/<name>{slashes}"
        )
    if exc.status_code == 404:
        return (
            f"{where}: no such V2 endpoint; the model answers POST /v2/models/<name>/infer, GET "
            "/v2/models/<name> (metadata), /v2/models/<name>/ready, /v2/health/ready and /health"
        )
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "another method")
        return f"{where}: this endpoint takes {allowed}"
    return f"{where}: {exc.detail}"


def extend(max_body_bytes: int, api_key: str | None = None) -> bool:
    """Give MLServer's servers freestack's refusals (see the module), and with ``api_key`` the key on every
    route but the probes (:mod:`.keys`); False (and a warning) on a release this was not written for."""
    import mlserver

    if not any(mlserver.__version__.startswith(v) for v in WRITTEN_FOR):
        log.warning(
            "MLServer %s: freestack's V2 error answers, limits, binary tensors and closed repository API "
            "were written for %s; serving with MLServer's own",
            mlserver.__version__,
            ", ".join(WRITTEN_FOR),
        )
        return False
    _extend_rest(max_body_bytes, api_key)
    if api_key:
        guard_grpc(api_key)
    _json_400_everywhere()
    _close_grpc_repository()
    _grpc_model_ready_not_found()
    return True


def _extend_rest(max_body_bytes: int, api_key: str | None) -> None:
    import mlserver.rest.app as rest_app
    import mlserver.rest.server as rest_server
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response

    from freestack_server.mlserver.binary import BinaryTensors

    async def invalid(request, exc: RequestValidationError):
        return JSONResponse({"error": validation_message(exc.errors())}, status_code=400)

    async def refused(request, exc: HTTPException):
        body = _error_body(http_error_message(request, exc), exc.status_code, request.url.path)
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    rest_app._EXCEPTION_HANDLERS[RequestValidationError] = invalid
    rest_app._EXCEPTION_HANDLERS[HTTPException] = refused
    create_app = rest_server.create_app

    def extended_app(settings, data_plane, model_repository_handlers):
        app = create_app(settings, data_plane=data_plane, model_repository_handlers=model_repository_handlers)

        async def health():
            """``GET /health``: the probe of vLLM's and ``transformers serve``'s OpenAI servers (``guidellm``
            asks it first), 200 when every model is ready (``/v2/health/ready``), else 503."""
            return Response(status_code=200 if await data_plane.ready() else 503)

        app.add_api_route("/health", health, methods=["GET"])
        # the runtime's own routes (the OpenAI API of a text-generation version: custom handlers) run behind
        # these too. The last added runs first: Refusals, KeyGuard, BodyLimit, BinaryTensors
        app.add_middleware(BinaryTensors)
        app.add_middleware(BodyLimit, limit=max_body_bytes)
        if api_key:  # the key is asked for before the body is read
            app.add_middleware(KeyGuard, key=api_key, refusal=v2_error)
        app.add_middleware(Refusals)
        return app

    rest_server.create_app = extended_app


def not_http_message(reason: str) -> str:
    """What a request uvicorn's parser refused is told (``reason``: uvicorn's own words)."""
    return (
        f"the request is not HTTP/1.1 this server can read ({reason.rstrip('.')}): send a request line such as "
        "'POST /v2/models/<name>/infer HTTP/1.1', header lines 'Name: value' ending in CRLF, and a body of the "
        "length its Content-Length or chunks give (this server speaks neither TLS nor HTTP/2)"
    )


class JsonBadRequest:
    """Mixin over a uvicorn HTTP protocol class: its ``send_400_response`` (called, with the connection's
    bytes unparsable, just before the connection is closed) writes the 400 in the V2 error format instead
    of uvicorn's plain text. It writes the bytes itself, as uvicorn's httptools protocol does, since the
    parser's state is broken by then."""

    transport: asyncio.Transport
    server_state: Any

    def send_400_response(self, msg: str) -> None:
        status, headers, body = v2_error(400, not_http_message(msg))
        lines = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in [*self.server_state.default_headers, *headers, (b"connection", b"close")]:
            lines.append(name + b": " + value + b"\r\n")
        self.transport.write(b"".join([*lines, b"\r\n", body]))
        self.transport.close()


@functools.cache
def json_400_protocol() -> type[asyncio.Protocol] | None:
    """uvicorn's HTTP protocol class (the one its ``http="auto"`` picks: httptools when installed, else h11)
    with :class:`JsonBadRequest`'s 400; None, with one warning line, on a uvicorn release other than
    :data:`UVICORN_WRITTEN_FOR` (its protocols' ``send_400_response`` is private API)."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    if not any(uvicorn.__version__.startswith(v) for v in UVICORN_WRITTEN_FOR) or not hasattr(
        AutoHTTPProtocol, "send_400_response"
    ):
        log.warning(
            "uvicorn %s: freestack's V2 error answer to requests its HTTP parser cannot read was written for "
            "%s; those get uvicorn's own plain-text 400",
            uvicorn.__version__,
            ", ".join(UVICORN_WRITTEN_FOR),
        )
        return None
    return type(f"JsonBadRequest{AutoHTTPProtocol.__name__}", (JsonBadRequest, AutoHTTPProtocol), {})


def _json_400_everywhere() -> None:
    """MLServer's REST server (its ``uvicorn.Config``, built in ``RESTServer._get_config``) runs
    :func:`json_400_protocol`'s class; the deployment's address server does too (:class:`AddressServer`)."""
    import mlserver.rest.server as rest_server

    protocol = json_400_protocol()
    if protocol is None:
        return
    get_config = rest_server.RESTServer._get_config

    def json_400_config(self: Any) -> Any:
        config = get_config(self)
        config.http = protocol  # read by Config.load(), when the server starts
        return config

    rest_server.RESTServer._get_config = json_400_config


def _close_grpc_repository() -> None:
    """MLServer's gRPC repository methods (on both services that carry them) answer PERMISSION_DENIED."""
    import grpc
    from mlserver.grpc.model_repository import ModelRepositoryServicer
    from mlserver.grpc.servicers import InferenceServicer

    async def refuse(self: Any, request: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, REPOSITORY_DISABLED)

    for servicer in (InferenceServicer, ModelRepositoryServicer):
        for method in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"):
            setattr(servicer, method, refuse)


def _grpc_model_ready_not_found() -> None:
    """MLServer's gRPC ``ModelReady`` of a model it does not serve answers ``NOT_FOUND`` naming the model (as
    REST answers 404), not ``UNKNOWN`` with the exception's traceback: unlike the other model methods it has
    no error handler. A client's unknown model is not the server's error: nothing is logged."""
    import grpc
    from mlserver.errors import MLServerError
    from mlserver.grpc.servicers import InferenceServicer
    from mlserver.grpc.utils import STATUS_CODE_MAPPING

    model_ready = InferenceServicer.ModelReady
    if getattr(model_ready, "freestack", False):
        return

    async def ready(self: Any, request: Any, context: Any) -> Any:
        try:
            return await model_ready(self, request, context)
        except MLServerError as err:
            await context.abort(STATUS_CODE_MAPPING.get(err.status_code, grpc.StatusCode.INTERNAL), str(err))

    ready.freestack = True  # type: ignore[attr-defined]
    InferenceServicer.ModelReady = ready


# ------------------------------------------------------------------------------------------------------
# the server (what ``python -m freestack_server run`` runs for FREESTACK_SERVER_RUNTIME=mlserver)


def folder_of(cfg: ServerConfig) -> Path:
    """MLServer's folder for this server, in ``FREESTACK_SERVER_WORKDIR``, named after the predictor:
    ``settings.json`` (every listener on the server's host; ``parallel_workers`` 0 runs the model in the
    server's own process) and ``<model>/model-settings.json``
    (:class:`freestack_server.mlserver.runtime.FreestackRuntime` loading the model URI; ``extra``: its
    batching, request log and limits). MLServer's own adaptive batching stays off (see the runtime)."""
    config = settings()
    extra = {
        "max_batch_rows": config.max_batch_rows,
        "request_log_uri": config.request_log_uri or "",
        "request_log_rate": config.request_log_rate,
        "deployment": cfg.name,
        "batch_rows": cfg.batch_rows,
        "generation": Bounds.from_settings().as_dict(),  # a text-generation model's bounds
    }
    if not config.model_uri:
        raise SystemExit("no model to serve: set FREESTACK_MODEL_URI")
    folder = Path(cfg.workdir or ".") / f"{cfg.predictor}.mlserver"
    folder.mkdir(parents=True, exist_ok=True)
    server = {
        "host": cfg.host,
        "http_port": cfg.port,
        "grpc_port": cfg.grpc_port,
        "metrics_port": cfg.metrics_port,
        "parallel_workers": 0,
        "debug": False,
        "load_models_at_startup": True,
        "gzip_enabled": False,
        "metrics_dir": str(folder / ".metrics"),
        "metrics_endpoint": "/metrics" if cfg.metrics_port else None,
    }
    (folder / "settings.json").write_text(json.dumps(server, indent=2))
    (folder / cfg.model).mkdir(exist_ok=True)
    model = {
        "name": cfg.model,
        "implementation": IMPLEMENTATION,
        "max_batch_size": 0,
        "parameters": {"uri": config.model_uri, "extra": extra},
    }
    (folder / cfg.model / "model-settings.json").write_text(json.dumps(model, indent=2))
    return folder


#: what must stop with the server besides MLServer's own servers: each generation engine's loop thread
#: (:class:`freestack_server.mlserver.runtime.FreestackRuntime` adds its engine's ``stop``). MLServer's stop unloads no
#: model, and that thread would keep the process alive after SIGTERM
AT_STOP: list[Callable[[], None]] = []
#: why a generation engine died, once one did (:meth:`freestack_server.mlserver.runtime.FreestackRuntime._engine_died`):
#: the server stops as on SIGTERM, then exits 1 so that its supervisor (or Kubernetes) starts it again
ENGINE_DIED: list[str] = []


async def run(cfg: ServerConfig, address_fd: int | None) -> None:
    """MLServer on the server's own ports; with ``address_fd`` (the deployment's listening socket), once
    the deploy opens the gate it also answers there (:class:`AddressServer`). SIGTERM first stops taking
    connections on the deployment's address and answers what they hold, then stops MLServer."""
    from mlserver.cli.serve import load_settings
    from mlserver.server import MLServer

    key = cfg.api_key.get_secret_value() if cfg.api_key else None
    if not extend(settings().max_body_bytes, key) and (address_fd is not None or key):
        raise SystemExit(
            "this MLServer release cannot serve a deployment's address or ask for its key: install the one "
            "in plugins/freestack_server/requirements-mlserver.txt (`make mlserver-venv`)"
        )
    server_settings, models = await load_settings(str(folder_of(cfg)))
    server = MLServer(server_settings)  # installs its signal handlers: ours replace them below
    gate = cfg.address.gate if cfg.address else None
    address = AddressServer(server, address_fd, gate) if address_fd is not None else None
    loop = asyncio.get_running_loop()
    asked: list[int] = []  # the stop signal, once one came

    def stop(sig: int) -> None:
        if not asked:
            log.info(
                "%s: stopping; the requests in flight are answered first (a stream to its end, at most "
                "max_new_tokens), for as long as the stopper waits: %.0f s for `freestack serve stop`, the "
                "pod's terminationGracePeriodSeconds (30 s by default) on Kubernetes; then it is killed",
                signal.Signals(sig).name,
                STOP_GRACE_S,
            )
        asked.append(sig)
        asyncio.ensure_future(_stop(server, address, sig))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig)
    joining = asyncio.ensure_future(address.join_when_open()) if address is not None else None
    try:
        await server.start(models)
    except Exception:  # noqa: BLE001 - the model did not load: a broken version, not to be restarted
        log.exception("MLServer could not start %s", cfg.model)
        raise SystemExit(BOOT_ERROR) from None
    finally:
        if joining is not None:
            joining.cancel()
    if not asked:  # MLServer logs a model that fails to load and stops by itself: the same broken version
        log.error("MLServer stopped without being asked: %s did not load (its log is above)", cfg.model)
        raise SystemExit(BOOT_ERROR)
    if ENGINE_DIED:
        raise SystemExit(
            f"the generation engine of {cfg.model} died ({ENGINE_DIED[0]}): start the server again"
        )


async def _stop(server, address: AddressServer | None, sig: int) -> None:
    if address is not None:
        await address.drain()
    await server.stop(sig=sig)
    for stop_one in AT_STOP:
        await asyncio.to_thread(stop_one)


class AddressServer:
    """MLServer's REST app on the deployment's address too, once the gate file exists: a second uvicorn
    server on the held socket (the other server behind the address holds it as well). Its pid goes into
    the gate file, which is how the deploy knows it takes connections before it stops the old server."""

    def __init__(self, server, fd: int, gate: str | None):
        self.server, self.fd, self.gate = server, fd, gate
        self.uvicorn = None
        self.task: asyncio.Future | None = None

    async def join_when_open(self) -> None:
        import socket

        import uvicorn

        while (
            not (self.gate and os.path.exists(self.gate))
            or getattr(self.server._rest_server, "_app", None) is None
        ):
            await asyncio.sleep(0.1)
        while not getattr(getattr(self.server._rest_server, "_server", None), "started", False):
            await asyncio.sleep(0.05)  # MLServer's own REST server is up (its models loaded first)
        sock = socket.socket(fileno=self.fd)
        config = uvicorn.Config(
            _CloseWhenDraining(self.server._rest_server._app, self),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S,
            http=json_400_protocol() or "auto",
        )
        self.uvicorn = _quiet_uvicorn(config)
        self.task = asyncio.ensure_future(self.uvicorn.serve(sockets=[sock]))
        while not self.uvicorn.started:
            await asyncio.sleep(0.02)
        with open(self.gate, "a") as f:
            f.write(f"{os.getpid()}\n")
        log.info("accepting on the deployment's address too (%s)", sock.getsockname())

    draining = False

    async def drain(self) -> None:
        """Stop accepting on the deployment's address (connections waiting in its queue go to the other
        server holding it); answer every request the open connections send, each with ``Connection:
        close``, until none is left or their keep-alive time is up; then stop."""
        if self.uvicorn is None or self.task is None:
            return
        self.draining = True
        # stop accepting first, and let the connections accepted in this loop turn get their transports
        # before the server closes: on Python 3.11, a transport made after its server closed is dropped
        # (``Server._attach`` asserts the server is open) and its client is reset
        loop = asyncio.get_running_loop()
        for listener in self.uvicorn.servers:
            for sock in listener.sockets:
                loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)
        for listener in self.uvicorn.servers:
            listener.close()
        # a connection accepted just before the close is registered with uvicorn a few loop turns later
        # (asyncio builds its transport in a task), and the stop below would reset it as idle: stop only
        # once no connection has been open for ACCEPTED_S on end (or their keep-alive time is up)
        deadline = loop.time() + ACCEPTED_S + KEEP_ALIVE_S + 1.0
        quiet_since = loop.time()
        while loop.time() < deadline and loop.time() - quiet_since < ACCEPTED_S:
            if self.uvicorn.server_state.connections:
                quiet_since = loop.time()
            await asyncio.sleep(0.05)
        self.uvicorn.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, timeout=20)


class _CloseWhenDraining:
    """ASGI middleware: while the address server drains, every answer says ``Connection: close``, so a
    keep-alive client reconnects (to the other server) instead of sending on a connection about to close."""

    def __init__(self, app, address: AddressServer):
        self.app, self.address = app, address

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def closing(message):
            if message["type"] == "http.response.start" and self.address.draining:
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, closing)


def _quiet_uvicorn(config):
    """uvicorn's server without its own signal handlers (the launcher's stop it)."""
    import uvicorn

    class Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            yield

    return Quiet(config)
