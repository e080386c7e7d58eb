"""``freestack data-api``: the Data API app under uvicorn, on 127.0.0.1 unless told otherwise.

uvicorn's httptools parser (the fast one) has no limit on the size of a request's head: a client
sending endless headers would make the server buffer them. The protocol below counts the bytes a
request's head has taken so far and, over ``max_head_bytes``, answers 431 with a JSON error and
closes the connection. (The app itself also refuses heads over 16 KiB with 431, which is what
applies when the Airflow API server hosts it.)
"""

from __future__ import annotations

import json
import logging
import sys

from freestack.dataapi.app import DataApiSettings, create_app, resolve_root

MAX_HEAD_BYTES = 64 * 1024
log = logging.getLogger("freestack.dataapi")


def head_limited_protocol(max_head_bytes: int = MAX_HEAD_BYTES):
    """uvicorn's HttpToolsProtocol with a cap on the bytes buffered before a request's headers end."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    body = json.dumps(
        {"error": {"message": f"request headers too large: over {max_head_bytes} bytes before the body"}}
    ).encode()
    refusal = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"x-error-message: request headers too large\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )

    class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
        _in_head = True
        _head_bytes = 0

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_bytes = 0

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_head and self.transport is not None and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    log.warning("refused a request whose headers exceed %d bytes", max_head_bytes)
                    self.transport.write(refusal)
                    self.transport.close()

    return HeadLimitedHttpToolsProtocol


def make_config(
    host: str = "127.0.0.1",
    port: int = 8765,
    settings: DataApiSettings | None = None,
    *,
    log_level: str = "info",
    access_log: bool = True,
):
    import uvicorn

    app = create_app(settings)
    try:
        import httptools  # noqa: F401

        http: object = head_limited_protocol()
        extra = {}
    except ImportError:  # h11 has its own limit on an incomplete request head
        http = "h11"
        extra = {"h11_max_incomplete_event_size": MAX_HEAD_BYTES}
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http,
        log_level=log_level,
        access_log=access_log,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=30,
        **extra,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    settings: DataApiSettings | None = None,
    *,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Run the service until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    import uvicorn

    settings = settings or DataApiSettings()
    root = resolve_root(settings.root)  # fail now, with the message, rather than on the first request
    settings.root = root
    config = make_config(host, port, settings, log_level=log_level, access_log=access_log)
    try:  # set up now: stale temporaries of a previous run are swept from the start, not the first request
        config.app.state.freestack_data.ensure()
    except Exception as exc:  # the first request tries again, and answers with the reason
        log.warning("the Data API could not set up before serving: %s", exc)
    if access_log:
        _keep_access_log()
    if hasattr(sys.stdout, "reconfigure"):  # access log lines go to stdout: one at a time, even into a file
        sys.stdout.reconfigure(line_buffering=True)
    print(f"freestack Data API on http://{host}:{port}/v1/data/  (data: {root})", flush=True)
    uvicorn.Server(config).run()


def _keep_access_log() -> None:
    """Setting up touches the store, and so Airflow, whose logging configuration drops the handler uvicorn
    gave its access log: its lines then go where the service's other lines go."""
    access = logging.getLogger("uvicorn.access")
    if not access.handlers:
        access.propagate = True


__all__ = ["MAX_HEAD_BYTES", "head_limited_protocol", "make_config", "serve"]
