"""freestack's Seldon Core model: serves one registered model version.

A Seldon Python model class (seldon-core 1.17.1), which ``python -m freestack_server`` (runtime
``seldon``) serves in every target; ``seldon-core-microservice freestack_server.seldon_model.Model``
would run it too. Parameters come from its constructor or the environment:

- ``model_uri`` / ``FREESTACK_MODEL_URI``: the registry version (``file://``, ``s3://`` or ``data://``),
  or an alias of it, ``<root>/registry/<model>@production``: resolved once, when the model is first
  described, to the version the alias names then (a server keeps serving that version; restart it to
  follow a promotion);
- ``max_batch_rows`` / ``FREESTACK_MAX_BATCH_ROWS``: the most rows one request may carry (413 above);
- ``request_log_uri`` / ``FREESTACK_REQUEST_LOG_URI`` and ``request_log_rate`` /
  ``FREESTACK_REQUEST_LOG_RATE``: the model's monitoring folder (``<root>/monitoring/<model>``) and the
  fraction of requests (0 to 1) whose inputs and predictions go to its request log, in Parquet, for the
  monitor (:mod:`freestack_server.requestlog`); ``deployment`` names the deployment in it;
- ``torch_threads`` / ``FREESTACK_TORCH_THREADS``: intra-op threads per worker (default 1: gunicorn's
  workers already use the cores).

Payloads: ``{"data": {"ndarray": [[...], ...], "names": [...]}}``, ``{"data": {"tensor": {"shape":
[n, f], "values": [...]}}}`` or ``{"jsonData": {"instances": [{feature: value, ...}, ...]}}`` (or one
record). Each answer's ``meta.tags.request_id`` is the request's id (the request's own ``meta.puid`` when
it has one): ``/send-feedback`` with it in ``response.meta.tags`` (or ``request.meta.puid``) and the
true labels in ``truth`` records the ground truth beside the logged request. Every bad payload gets a 4xx JSON answer in Seldon's status format, never an HTML page or a
500: the checks run before Seldon's own parsing (``model_error_handler``'s ``before_app_request``).
Classification answers are class probabilities named by class; regression answers one value per row,
``[[v], ...]`` named ``[target]`` (``{"value": v}`` per record for jsonData). An answer comes in its
request's form (``ndarray``, ``tensor``, ``jsonData``; ``tensor`` for strData and binData): the
metadata's outputs list those three, and ``custom.answers`` says which answers which.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
from flask import Blueprint, jsonify, request
from seldon_core.flask_utils import SeldonMicroserviceException
from werkzeug.exceptions import HTTPException

from freestack.settings import settings
from freestack_server.core import PayloadError, ServedModel
from freestack_server.predict_lane import PREDICT_PATHS

log = logging.getLogger(__name__)

MAX_BODY_BYTES = settings().max_body_bytes


def _bad(message: str, status: int = 400, reason: str = "BAD_PAYLOAD") -> SeldonMicroserviceException:
    return SeldonMicroserviceException(message, status_code=status, reason=reason)


def _error_response(message: str, status: int, reason: str):
    resp = jsonify({"status": {"status": 1, "info": message, "code": -1, "reason": reason}})
    resp.status_code = status
    return resp


# ------------------------------------------------------------------------------------------------------
# request checks that must run before Seldon parses the body (its parser answers 500 on some shapes)

model_error_handler = Blueprint("freestack_payload", __name__)


@model_error_handler.before_app_request
def _check_envelope():
    request_ = request._get_current_object()  # one context lookup instead of one per attribute
    if request_.method != "POST" or request_.path not in PREDICT_PATHS:
        return None
    length = request_.content_length
    if length is not None and length > MAX_BODY_BYTES:
        return _error_response(
            f"the request body is {length} bytes; at most {MAX_BODY_BYTES} are accepted: send fewer rows per request",
            413, "PAYLOAD_TOO_LARGE",
        )  # fmt: skip
    ctype = (request_.mimetype or "").lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raw = request_.form.get("json")
        if raw is None:
            return _error_response("a form request needs a 'json' field holding the Seldon message", 400, "BAD_PAYLOAD")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return _error_response(f"the 'json' field is not valid JSON: {exc}", 400, "INVALID_JSON")
    elif ctype != "application/json" and not ctype.endswith("+json"):
        return _error_response(
            f"Content-Type {request_.mimetype or '(none)'!r} is not supported: send application/json",
            415, "UNSUPPORTED_MEDIA_TYPE",
        )  # fmt: skip
    else:
        data = request_.get_data(cache=True)
        if not data:
            return _error_response("the request body is empty: send a Seldon message such as "
                                   '{"data": {"ndarray": [[...]]}}', 400, "EMPTY_PAYLOAD")  # fmt: skip
        try:
            body = request_.get_json(force=True, cache=True)
        except HTTPException:
            try:
                json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                return _error_response(f"the request body is not valid JSON: {exc}", 400, "INVALID_JSON")
            return _error_response("the request body is not valid JSON", 400, "INVALID_JSON")
    problem = envelope_problem(body)
    if problem:
        return _error_response(problem, 400, "BAD_PAYLOAD")
    return None


@model_error_handler.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    # without this, Seldon's catch-all handler turns a 404/405/413 into a 500
    return _error_response(exc.description or exc.name, exc.code or 400, exc.name.upper().replace(" ", "_"))


#: "strData" / "binData" when the loaded model takes one text / one image column (set by Model.load)
RAW_KINDS: set[str] = set()


def _raw_problem(kind: str, value: Any) -> str | None:
    if kind not in RAW_KINDS:
        return (f'"{kind}" is not accepted by this model: send its features in "data" (ndarray with names) or '
                '"jsonData" records')  # fmt: skip
    if kind == "strData":  # any text, the empty one too: the model reads it as training read empty text
        return None if isinstance(value, str) else f'"strData" must be a string (the text), not {type(value).__name__}'
    if not isinstance(value, str) or not value:
        return '"binData" must be a non-empty string (the image file\'s bytes, base64)'
    if kind == "binData":
        import base64
        import binascii

        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return '"binData" is not valid base64: send the image file\'s bytes base64-encoded'
    return None


def envelope_problem(body: Any) -> str | None:
    """What is structurally wrong with a Seldon message, or None. Values are checked by ``predict``."""
    if not isinstance(body, dict):
        return f"the body must be a JSON object (a Seldon message), not {type(body).__name__}"
    kinds = [k for k in ("data", "jsonData", "strData", "binData") if k in body]
    if not kinds:
        return 'the message has no "data" or "jsonData": send {"data": {"ndarray": [[...], ...]}}'
    if len(kinds) > 1:
        return f"the message carries {kinds}; send exactly one of them"
    if "meta" in body and not isinstance(body["meta"], dict):
        return '"meta" must be an object'
    kind = kinds[0]
    if kind in ("strData", "binData"):
        return _raw_problem(kind, body[kind])
    if kind == "jsonData":
        if not isinstance(body["jsonData"], dict):
            return '"jsonData" must be an object: {"instances": [{feature: value, ...}, ...]} or one record'
        return None
    data = body["data"]
    if not isinstance(data, dict):
        return '"data" must be an object holding "ndarray" or "tensor"'
    names = data.get("names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        return '"data.names" must be a list of feature names (strings)'
    if "tftensor" in data:
        return '"data.tftensor" is not accepted: send "ndarray" or "tensor"'
    if "tensor" in data:
        t = data["tensor"]
        if not isinstance(t, dict):
            return '"data.tensor" must be an object with "shape" and "values"'
        shape, values = t.get("shape"), t.get("values")
        if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool)
                                                              and d >= 0 for d in shape):  # fmt: skip
            return '"data.tensor.shape" must be a list of non-negative integers, e.g. [rows, features]'
        if not isinstance(values, list):
            return '"data.tensor.values" must be a flat list of numbers'
        if math.prod(shape) != len(values):
            return f'"data.tensor.shape" {shape} holds {math.prod(shape)} values but "values" has {len(values)}'
        return None
    if "ndarray" in data:
        arr = data["ndarray"]
        if not isinstance(arr, list):
            return '"data.ndarray" must be a list of rows, e.g. [[0.0, 1.5, ...], ...]'
        if arr and isinstance(arr[0], list):
            width = len(arr[0])
            for i, row in enumerate(arr):
                if not isinstance(row, list) or len(row) != width:
                    return f'"data.ndarray" is ragged: row {i} is not a list of {width} values like row 0'
                if row and isinstance(row[0], list):
                    return f'"data.ndarray" row {i} is nested deeper than [rows, features]'
        return None
    return '"data" must hold "ndarray" or "tensor"'


# ------------------------------------------------------------------------------------------------------


def _input_metadata(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The metadata's inputs: a tensor of numbers, or, for category/text/image columns, rows of raw values
    (each column's kind named; images as base64) and the strData / binData a one-column model takes."""
    encoder = info.get("encoder")
    if not encoder:
        return [{"messagetype": "tensor", "schema": {"names": info["features"], "shape": [n]}},
                {"messagetype": "jsonData", "schema": {"instances": "[{feature: number}]"}}]  # fmt: skip
    kinds = {name: group for name, group in encoder["columns"]}
    out = [{"messagetype": "ndarray", "schema": {"names": info["features"], "shape": [n]}},
           {"messagetype": "jsonData", "schema": {"instances": "[{column: value}]; images as base64",
                                                  "columns": kinds}}]  # fmt: skip
    if list(kinds.values()) == ["text"]:  # Seldon's metadata gives strData and binData no schema
        out.append({"messagetype": "strData"})
    if list(kinds.values()) == ["image"]:
        out.append({"messagetype": "binData"})
    return out


def _output_metadata(info: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """The metadata's outputs: an answer comes in its request's form (Seldon's rule): ``ndarray`` for an
    ndarray, ``tensor`` for a tensor (and for strData / binData), ``jsonData`` for jsonData records."""
    schema = {"names": names, "shape": [len(names)]}
    if info["task"] == "classification":
        records = "[{label: class, probabilities: {class: probability}}]"
    else:
        records = "[{value: number}]"
    return [{"messagetype": "ndarray", "schema": schema}, {"messagetype": "tensor", "schema": schema},
            {"messagetype": "jsonData", "schema": {"predictions": records, "model_version": "string"}}]  # fmt: skip


#: the metadata's ``custom.answers``: which output answers which input
ANSWERS = "in the request's form: ndarray for data.ndarray, tensor for data.tensor, strData and binData, jsonData for jsonData"


class Model(ServedModel):
    """One registered freestack model version behind Seldon's protocol (:class:`ServedModel` does the
    work; this class turns Seldon's calls into its calls, and a :class:`PayloadError` into Seldon's
    status format)."""

    #: Seldon registers this blueprint on its Flask app: the envelope checks and 4xx error handler
    model_error_handler = model_error_handler

    def __init__(self, model_uri: str = "", max_batch_rows: int = 0, request_log_uri: str = "",
                 request_log_rate: float = -1.0, torch_threads: int = 0, deployment: str = ""):  # fmt: skip
        super().__init__(model_uri, max_batch_rows, request_log_uri, request_log_rate, torch_threads, deployment)

    def _load_encoder(self) -> None:
        super()._load_encoder()
        kinds = [k for _, k in self._encoder.columns]
        RAW_KINDS.clear()
        RAW_KINDS.update({"strData"} if kinds == ["text"] else {"binData"} if kinds == ["image"] else set())

    def message_problem(self, body: Any) -> str | None:
        """What the envelope check refuses in ``body`` (a parsed Seldon message), or None: how the model
        server's prediction lane (:mod:`freestack_server.predict_lane`) asks before it answers without Flask."""
        return envelope_problem(body)

    # -- Seldon's hooks -------------------------------------------------------------------------------
    def class_names(self) -> list[str]:
        return self.output_names

    def init_metadata(self) -> dict[str, Any]:
        info = self.describe()
        n = len(info["features"])
        outputs = info["classes"] if info["task"] == "classification" else [info["target"] or "prediction"]
        return {
            "name": info["model"],
            "versions": [info["version"]],
            "platform": "freestack",
            "inputs": _input_metadata(info, n),
            "outputs": _output_metadata(info, [str(c) for c in outputs]),
            "custom": {"task": info["task"], "model_uri": self.model_uri, "dtype": "float32", "answers": ANSWERS,
                       "max_batch_rows": str(self.max_batch_rows),
                       # a custom model runs the version's own module.py: which one, by its sha256
                       **({"module_sha256": info["config"]["custom"]["sha256"],
                           "module_class": info["config"]["custom"]["class"]} if "custom" in info["config"] else {}),
                       **({"requested_uri": self.requested_uri} if self.requested_uri != self.model_uri else {})},
        }  # fmt: skip

    def health_status(self) -> list[float]:
        if not self.ready:
            raise _bad("the model is still loading", 503, "NOT_READY")
        return self.forward(self.zero_row()).tolist()

    def tags(self) -> dict[str, Any]:
        tags = {"model": self._described["model"] if self._described else "", "model_version": self.version}
        request_id = getattr(self._local, "request_id", None)
        if request_id is not None:
            self._local.request_id = None
            tags["request_id"] = request_id
        return tags

    def metrics(self) -> list[dict[str, Any]]:
        last = getattr(self._local, "last", None)
        if last is None:
            return []
        self._local.last = None
        rows, ms, counts = last
        out = [
            {"type": "COUNTER", "key": "freestack_prediction_rows_total", "value": rows},
            {"type": "TIMER", "key": "freestack_model_predict_seconds", "value": ms},
        ]
        for label, n in counts:
            out.append({"type": "COUNTER", "key": "freestack_predictions_total", "value": n, "tags": {"class": label}})
        return out

    # -- ground truth, later ------------------------------------------------------------------------------
    def send_feedback_raw(self, feedback):
        """Seldon's ``/send-feedback``: the true labels of an earlier request, kept in the request log's
        labels beside it (joined by request id and row)."""
        from seldon_core.proto import prediction_pb2
        from seldon_core.utils import grpc_datadef_to_array

        try:
            self.require_request_log()  # before looking at the message: the answer is the same whatever it holds
        except PayloadError as exc:
            raise _bad(exc.message, exc.status, exc.reason) from None
        tags = feedback.response.meta.tags
        request_id = (tags["request_id"].string_value if "request_id" in tags else "") or feedback.request.meta.puid \
            or feedback.response.meta.puid  # fmt: skip
        if not request_id:
            raise _bad('the feedback names no request: send the answer\'s meta as "response" ({"meta": {"tags": '
                       '{"request_id": ...}}}) or the request\'s "meta": {"puid": ...}')  # fmt: skip
        if feedback.truth.WhichOneof("data_oneof") != "data":
            raise _bad('the feedback carries no "truth": send {"truth": {"data": {"ndarray": [label, ...]}}}, one '
                       "label per row of the request")  # fmt: skip
        try:
            n = self.add_feedback(request_id, np.asarray(grpc_datadef_to_array(feedback.truth.data)), feedback.reward)
        except PayloadError as exc:
            raise _bad(exc.message, exc.status, exc.reason) from None
        answer = prediction_pb2.SeldonMessage()
        answer.meta.tags["request_id"].string_value = request_id
        answer.meta.tags["labels"].number_value = n
        return answer

    # -- predict --------------------------------------------------------------------------------------
    def predict(self, X: Any, features_names: list[str] | None = None, meta: dict | None = None):
        puid = meta.get("puid") if isinstance(meta, dict) else None
        try:
            p = self.predict_rows(X, features_names, puid if isinstance(puid, str) and puid else None)
        except PayloadError as exc:
            raise _bad(exc.message, exc.status, exc.reason) from None
        self._local.last = (len(p.out), p.ms, p.per_class)
        self._local.request_id = p.request_id
        if isinstance(X, dict):  # jsonData
            if self.task == "classification":
                return {"predictions": [{"label": self.classes[i], "probabilities": dict(zip(self.output_names, row.tolist(), strict=True))}
                                        for i, row in zip(p.idx.tolist(), p.out, strict=True)],
                        "model_version": self.version}  # fmt: skip
            return {"predictions": [{"value": float(v)} for v in p.out.tolist()], "model_version": self.version}
        if self.task != "classification":
            # one value per row, as a column: Seldon names the columns of a 2-D answer by class_names()
            # (the target), while a flat array would go out with no names at all
            return p.out.reshape(-1, 1)
        return p.out
