"""Direct prediction: Seldon's predict for the everyday request, answered by the worker without the
WSGI environ, Flask and its hooks. Runs in the serving environment.

A request is answered directly when it is a ``POST`` to a predict path with no query string, a JSON
body (``Content-Type: application/json``, not compressed) and no ``Origin`` (CORS stays with the
request checks), and its message passes the request checks
(:func:`freestack_server.seldon.request_checks.predict_problem`, the one check of a message's form). The
worker then calls what Seldon's ``Predict`` view calls, ``seldon_core.seldon_methods.predict`` with
the same model and metrics, so the answer, the custom metrics and the request log are those of the app, and writes the
answer as the app's orjson provider does (:func:`freestack_server.seldon.lighter_flask.faster_json`).

Anything else, and any request the model refuses (a :class:`SeldonMicroserviceException`, raised before
the model logs anything), goes the whole way through the request checks and Seldon's app, which
answers it as it always has. Direct prediction keeps one worker's CPU per request near the bare server's
(``bench/serve``); the ``freestack`` worker class uses it (not with an access log, which needs the
WSGI environ).
"""

from __future__ import annotations

import logging
from typing import Any

from freestack_server.seldon.request_checks import Inputs, parse_json, predict_problem, reason_phrase

log = logging.getLogger("freestack.serving")

PREDICT_PATHS = frozenset(("/predict", "/api/v1.0/predictions", "/api/v0.1/predictions"))
#: what Seldon's app sends with a JSON answer (Flask's ``jsonify``), before gunicorn's own headers
JSON_HEADERS = (("Content-Type", "application/json"),)


class DirectPredict:
    """Seldon's predict for ``user_model`` with ``seldon_metrics``, for the requests described above."""

    def __init__(self, user_model: Any, seldon_metrics: Any, *, inputs: Inputs, json_dumps):
        self.model, self.metrics, self.inputs = user_model, seldon_metrics, inputs
        self.json_dumps = json_dumps  # the app's JSON provider: what orjson cannot write

    def answer(self, req) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """(status line, headers, body) for gunicorn's parsed ``req``, or None: the app answers it."""
        message = self._message(req)
        if message is None:
            return None
        from seldon_core.flask_utils import SeldonMicroserviceException
        from seldon_core.seldon_methods import predict

        try:
            response = predict(self.model, message, self.metrics)
        except SeldonMicroserviceException:
            return None  # refused before anything was logged: the app answers it in its own words
        status = 200
        if (
            isinstance(response, dict)
            and isinstance(response.get("status"), dict)
            and "code" in response["status"]
        ):
            status = int(response["status"]["code"])  # as Seldon's Predict view does
        body = self._dumps(response)
        return f"{status} {reason_phrase(status)}", [*JSON_HEADERS, ("Content-Length", str(len(body)))], body

    def _message(self, req) -> dict | None:
        if req.method != "POST" or req.path not in PREDICT_PATHS or req.query:
            return None
        ctype = None
        for name, value in req.headers:  # gunicorn upper-cases the names
            if name == "CONTENT-TYPE":
                ctype = value.split(";", 1)[0].strip().lower()
            elif name == "ORIGIN" or name == "CONTENT-ENCODING" and value.strip().lower() != "identity":
                return None
        if ctype != "application/json":
            return None
        raw = req.body.getvalue()
        message, problem = parse_json(raw) if raw else (None, "empty")
        if problem is None:
            problem = predict_problem(message, raw, self.inputs)
        return None if problem is not None else message

    def _dumps(self, response: Any) -> bytes:
        import orjson

        try:
            return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # what orjson cannot write, Flask's provider writes (as the app would)
            return (self.json_dumps(response) + "\n").encode()


__all__ = ["PREDICT_PATHS", "DirectPredict"]
