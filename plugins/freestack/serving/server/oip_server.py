"""``python -m freestack.serving.server.oip_server FOLDER``: MLServer serving FOLDER (its ``settings.json``
and one ``model-settings.json`` a model, :mod:`.oip`), as ``mlserver start FOLDER`` does, with every
refusal in the V2 error format. Runs in ``.venv-mlserver``.

MLServer answers its own errors as ``{"error": "..."}``, but a body its request model cannot parse
(invalid JSON, a missing ``inputs``, a wrong type) gets FastAPI's ``{"detail": [...]}``, and it takes
bodies of any size. For the MLServer release this was written for (:data:`WRITTEN_FOR`), this launcher
adds, before MLServer builds its app (its exception-handler table, ``mlserver.rest.app``): validation
errors answered 400 ``{"error": "..."}`` naming the field, and a body limit (``max_body_bytes``,
413 ``{"error": "..."}``, before the body is read). On another release it starts MLServer unchanged and
says so in one warning line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("freestack.serving")

#: the MLServer releases whose REST app this launcher extends
WRITTEN_FOR = ("1.7.",)
#: MLServer's dotted path of freestack's runtime
IMPLEMENTATION = "freestack.serving.server.oip.FreestackRuntime"


def write_folder(folder: Path, *, name: str, model_uri: str, host: str, http_port: int, grpc_port: int,
                 metrics_port: int, workers: int, extra: dict[str, Any]) -> Path:  # fmt: skip
    """The folder MLServer serves: ``settings.json`` (every listener on ``host``; ``workers`` 0 runs
    the model in the server's own process, n > 0 in n worker processes) and ``<name>/model-settings.json``
    (:class:`freestack.serving.server.oip.FreestackRuntime` loading ``model_uri``; ``extra``: its
    batching, request log and limits). MLServer's own adaptive batching stays off (see the runtime)."""
    folder.mkdir(parents=True, exist_ok=True)
    server = {"host": host, "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
              "parallel_workers": workers, "debug": False, "load_models_at_startup": True, "gzip_enabled": False,
              "metrics_dir": str(folder / ".metrics")}  # fmt: skip
    (folder / "settings.json").write_text(json.dumps(server, indent=2))
    (folder / name).mkdir(exist_ok=True)
    model = {"name": name, "implementation": IMPLEMENTATION, "max_batch_size": 0,
             "parameters": {"uri": model_uri, "extra": extra}}  # fmt: skip
    (folder / name / "model-settings.json").write_text(json.dumps(model, indent=2))
    return folder


def v2_error(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": message}).encode()
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


def validation_message(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors as one sentence: where, and what is wrong."""
    parts = []
    for e in errors[:5]:
        if e.get("type") == "json_invalid":
            return f"the request body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')}): send a V2 inference request"
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "the body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "the request does not follow the V2 inference protocol: " + "; ".join(parts)


class BodyLimit:
    """ASGI middleware: a request whose body is over ``limit`` bytes is answered 413 in the V2 format,
    from its Content-Length before reading it, or as soon as a chunked body passes the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send, int(length))
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
                return await self._refuse(send, seen)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send, size: int) -> None:
        status, headers, body = v2_error(413, f"the request body is {size} bytes or more; at most {self.limit} "
                                              "are accepted: send fewer rows per request")  # fmt: skip
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def extend(max_body_bytes: int) -> bool:
    """Give MLServer's REST app V2-format validation errors and the body limit; False (and a warning)
    on a release this was not written for."""
    import mlserver
    import mlserver.rest.app as rest_app
    import mlserver.rest.server as rest_server
    from fastapi.exceptions import RequestValidationError
    from starlette.responses import JSONResponse

    if not any(mlserver.__version__.startswith(v) for v in WRITTEN_FOR):
        log.warning("MLServer %s: freestack's V2 error answers and body limit were written for %s; serving "
                    "with MLServer's own", mlserver.__version__, ", ".join(WRITTEN_FOR))  # fmt: skip
        return False

    async def invalid(request, exc: RequestValidationError):
        return JSONResponse({"error": validation_message(exc.errors())}, status_code=400)

    rest_app._EXCEPTION_HANDLERS[RequestValidationError] = invalid
    create_app = rest_server.create_app

    def limited_app(*args, **kwargs):
        app = create_app(*args, **kwargs)
        app.add_middleware(BodyLimit, limit=max_body_bytes)
        return app

    rest_server.create_app = limited_app
    return True


async def serve(folder: str) -> None:
    from mlserver.cli.serve import load_settings
    from mlserver.server import MLServer

    from freestack.settings import settings

    extend(settings().max_body_bytes)
    server_settings, models = await load_settings(folder)
    await MLServer(server_settings).start(models)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m freestack.serving.server.oip_server FOLDER", file=sys.stderr)
        return 2
    asyncio.run(serve(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
