"""freestack's Seldon Core model: serves one registered model version.

A Seldon Python model class (seldon-core 1.17.1): ``seldon-core-microservice Model`` runs it as is,
and so does freestack's local launcher (``freestack.serving.server``). Parameters come from Seldon's
``--parameters`` or the environment:

- ``model_uri`` / ``FREESTACK_MODEL_URI``: the registry version (``file://``, ``s3://`` or ``data://``),
  or an alias of it, ``<root>/registry/<model>@production``: resolved once, when the model is first
  described, to the version the alias names then (a server keeps serving that version; restart it to
  follow a promotion);
- ``max_batch_rows`` / ``FREESTACK_MAX_BATCH_ROWS``: the most rows one request may carry (413 above);
- ``request_log_uri`` / ``FREESTACK_REQUEST_LOG_URI`` and ``request_log_rate`` /
  ``FREESTACK_REQUEST_LOG_RATE``: the model's monitoring folder (``<root>/monitoring/<model>``) and the
  fraction of requests (0 to 1) whose inputs and predictions go to its request log, in Parquet, for the
  monitor (:mod:`freestack.serving.server.requestlog`); ``deployment`` names the deployment in it;
- ``torch_threads`` / ``FREESTACK_TORCH_THREADS``: intra-op threads per worker (default 1: gunicorn's
  workers already use the cores).

Payloads: ``{"data": {"ndarray": [[...], ...], "names": [...]}}``, ``{"data": {"tensor": {"shape":
[n, f], "values": [...]}}}`` or ``{"jsonData": {"instances": [{feature: value, ...}, ...]}}`` (or one
record). Each answer's ``meta.tags.request_id`` is the request's id (the request's own ``meta.puid`` when
it has one): ``/send-feedback`` with it in ``response.meta.tags`` (or ``request.meta.puid``) and the
true labels in ``truth`` records the ground truth beside the logged request. Every bad payload gets a 4xx JSON answer in Seldon's status format, never an HTML page or a
500: the checks run before Seldon's own parsing (``model_error_handler``'s ``before_app_request``).
Classification answers are class probabilities named by class; regression answers one value per row,
``[[v], ...]`` named ``[target]`` (``{"value": v}`` per record for jsonData); the metadata's outputs say
the same.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from typing import Any

import numpy as np
from flask import Blueprint, jsonify, request
from seldon_core.flask_utils import SeldonMicroserviceException
from werkzeug.exceptions import HTTPException

from freestack.serving.server.requestlog import SMOKE_ID
from freestack.settings import settings

log = logging.getLogger(__name__)

PREDICT_PATHS = frozenset(("/predict", "/api/v1.0/predictions", "/api/v0.1/predictions"))
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
    if not isinstance(value, str) or not value:
        return f'"{kind}" must be a non-empty string' + (" (the image file's bytes, base64)" if kind == "binData" else "")
    if kind == "binData":
        import base64
        import binascii

        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return '"binData" is not valid base64: send the image file\'s bytes base64-encoded'
    return None


_ids: tuple[int, str, Any] = (0, "", None)  # (pid, the process's random prefix, its counter)


def _new_request_id() -> str:
    """A request id unique across workers and restarts: 16 random hex digits per process, then a counter
    (cheaper on the request path than a uuid4 per request)."""
    global _ids
    pid = os.getpid()
    if _ids[0] != pid:  # first request in this (forked) worker
        _ids = (pid, uuid.uuid4().hex[:16], itertools.count())
    return f"{_ids[1]}{next(_ids[2]):016x}"


def _label_text(v: Any) -> str:
    """A label as the request log keeps it: a class name (3.0 -> "3"), or a value as text."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


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


class Model:
    """One registered freestack model version behind Seldon's protocol."""

    #: Seldon registers this blueprint on its Flask app: the envelope checks and 4xx error handler
    model_error_handler = model_error_handler

    def __init__(
        self,
        model_uri: str = "",
        max_batch_rows: int = 0,
        request_log_uri: str = "",
        request_log_rate: float = -1.0,
        torch_threads: int = 0,
        deployment: str = "",
    ):
        config = settings()
        self.model_uri = (model_uri or config.model_uri or "").rstrip("/")
        if not self.model_uri:
            raise ValueError("no model to serve: pass the model_uri parameter or set FREESTACK_MODEL_URI")
        #: what was asked for: the version URI, or an alias URI that ``model_uri`` is resolved from
        self.requested_uri = self.model_uri
        self.max_batch_rows = int(max_batch_rows or config.max_batch_rows)
        self.request_log_uri = request_log_uri or config.request_log_uri or ""
        rate = float(request_log_rate) if float(request_log_rate) >= 0 else config.request_log_rate
        self.request_log_rate = min(max(rate, 0.0), 1.0)
        self.torch_threads = int(torch_threads or config.torch_threads)
        self.deployment = deployment or os.environ.get("SELDON_DEPLOYMENT_ID", "")
        self.cache_dir = str(config.serving_cache or tempfile.mkdtemp(prefix="freestack-model-"))
        self.net = None
        self.ready = False
        self._described: dict[str, Any] | None = None
        self._local = threading.local()
        self._log = None  # the request log (RequestLog), once loaded with request_log_uri and a rate above 0

    # -- loading --------------------------------------------------------------------------------------
    def _describe(self) -> dict[str, Any]:
        """Model name, version, features and classes from the small JSON files: no torch involved, so it
        is safe in gunicorn's master before workers fork."""
        if self._described is None:
            from freestack.serving.server.fetch import fetch_version, resolve_uri

            # an alias (registry/<model>@production) is read once: every later fetch, in this process and
            # in the workers forked from it, uses the one version it named, never a mix of two
            self.model_uri = resolve_uri(self.model_uri)
            marker = fetch_version(self.model_uri, self.cache_dir, names=("config.json", "preprocessing.json"))
            config = json.loads(open(os.path.join(self.cache_dir, "config.json")).read())
            pre = json.loads(open(os.path.join(self.cache_dir, "preprocessing.json")).read())
            self._described = {
                "model": marker.get("model") or "model",
                "version": marker.get("version") or "unknown",
                "task": pre.get("task") or config.get("task", "classification"),
                "features": list(pre.get("features") or config.get("features") or []),
                "classes": list(pre.get("classes") or config.get("classes") or []),
                "target": pre.get("target") or "",
                "config": config,
                # category / text / image columns: requests carry raw values (freestack.ml.features)
                "encoder": pre.get("encoder"),
            }
        return self._described

    def takes_raw_values(self) -> bool:
        """Whether requests carry raw category/text/image values rather than numbers only."""
        return bool(self._describe().get("encoder"))

    def load(self) -> None:
        import torch

        from freestack.ml.features import TOKENIZER_FILE
        from freestack.ml.models import load_pretrained
        from freestack.registry.names import weight_files
        from freestack.serving.server.fetch import fetch_version

        torch.set_num_threads(max(1, self.torch_threads))
        info = self._describe()
        # the weights (or a fine-tuned model's adapter), and a custom model's own module.py, all checked
        # against the registration manifest: the server imports that copy of the module
        text = (TOKENIZER_FILE,) if (info["encoder"] or {}).get("text") else ()
        fetch_version(self.model_uri, self.cache_dir, names=(*weight_files(info["config"]), *text))
        net = load_pretrained(self.cache_dir)
        net.eval()
        self.net = net
        self.version = info["version"]
        self.features = info["features"]
        self.n_features = len(self.features) or int(info["config"].get("n_features", 0))
        self._feature_index = {f: i for i, f in enumerate(self.features)}
        self.task = info["task"]
        self.classes = info["classes"]
        self._class_names = [str(c) for c in self.classes] if self.task == "classification" else [info["target"] or "prediction"]
        self._torch = torch
        self._encoder = self._raw = None
        if info["encoder"]:
            self._load_encoder()
        # one real forward pass before answering health checks: a broken model fails here, not on traffic
        out = self._forward(self._zero_row())
        if not np.all(np.isfinite(out)):
            raise RuntimeError(f"{self.model_uri}: the model answers non-finite values on a zero row")
        if self.request_log_uri and self.request_log_rate > 0:
            self._log = self._request_log(info)
        self.ready = True
        log.info("serving %s %s from %s (%d features, task %s)", info["model"], self.version, self.model_uri,
                 self.n_features, self.task)  # fmt: skip

    def _request_log(self, info: dict[str, Any]):
        from freestack.serving.server.requestlog import RequestLog

        config = settings()
        columns = list(self._encoder.columns) if self._encoder is not None else [(f, "numeric") for f in self.features]
        return RequestLog(
            self.request_log_uri, rate=self.request_log_rate, model=info["model"], version=self.version,
            deployment=self.deployment, columns=columns,
            classes=self._class_names if self.task == "classification" else [],
            flush_seconds=config.request_log_flush_seconds, max_rows_per_request=config.request_log_max_rows,
        )  # fmt: skip

    def _load_encoder(self) -> None:
        """The version's encoder, from the fetched preprocessing.json and tokenizer.json (as training saved them)."""
        from freestack.ml.features import load_encoder
        from freestack.serving.server.raw import RawInputs

        self._encoder = load_encoder(self.cache_dir)
        self._raw = RawInputs(self._encoder.columns, self.max_batch_rows)
        self.n_features = len(self._encoder.numeric)
        kinds = [k for _, k in self._encoder.columns]
        RAW_KINDS.clear()
        RAW_KINDS.update({"strData"} if kinds == ["text"] else {"binData"} if kinds == ["image"] else set())

    def _zero_row(self) -> np.ndarray | dict[str, np.ndarray]:
        """One row of zeros (numbers), unknown categories, empty text and a black image."""
        if self._encoder is None:
            return np.zeros((1, self.n_features), dtype=np.float32)
        from freestack.ml.contract import ModelInputs
        from freestack.ml.custom import zero_batch

        sizes = self._encoder.group_sizes()
        inputs = ModelInputs.from_dict({"task": self.task, "n_outputs": 1, "groups": {
            g: {"kind": g, **v} for g, v in sizes.items()}})  # fmt: skip
        return {k: v.numpy() for k, v in zero_batch(inputs, 1).items()}

    # -- Seldon's hooks -------------------------------------------------------------------------------
    def class_names(self) -> list[str]:
        return self._class_names

    def init_metadata(self) -> dict[str, Any]:
        info = self._describe()
        n = len(info["features"])
        outputs = info["classes"] if info["task"] == "classification" else [info["target"] or "prediction"]
        return {
            "name": info["model"],
            "versions": [info["version"]],
            "platform": "freestack",
            "inputs": _input_metadata(info, n),
            "outputs": [{"messagetype": "tensor", "schema": {"names": [str(c) for c in outputs],
                                                             "shape": [len(outputs)]}}],
            "custom": {"task": info["task"], "model_uri": self.model_uri, "dtype": "float32",
                       "max_batch_rows": str(self.max_batch_rows),
                       # a custom model runs the version's own module.py: which one, by its sha256
                       **({"module_sha256": info["config"]["custom"]["sha256"],
                           "module_class": info["config"]["custom"]["class"]} if "custom" in info["config"] else {}),
                       **({"requested_uri": self.requested_uri} if self.requested_uri != self.model_uri else {})},
        }  # fmt: skip

    def health_status(self) -> list[float]:
        if not self.ready:
            raise _bad("the model is still loading", 503, "NOT_READY")
        return self._forward(self._zero_row()).tolist()

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

        if self._log is None:
            raise _bad("this server keeps no request log (deploy.local.log_sample_rate is 0), so feedback cannot "
                       "be joined to a request: turn the request log on", 400, "NO_REQUEST_LOG")  # fmt: skip
        tags = feedback.response.meta.tags
        request_id = (tags["request_id"].string_value if "request_id" in tags else "") or feedback.request.meta.puid \
            or feedback.response.meta.puid  # fmt: skip
        if not request_id:
            raise _bad('the feedback names no request: send the answer\'s meta as "response" ({"meta": {"tags": '
                       '{"request_id": ...}}}) or the request\'s "meta": {"puid": ...}')  # fmt: skip
        if feedback.truth.WhichOneof("data_oneof") != "data":
            raise _bad('the feedback carries no "truth": send {"truth": {"data": {"ndarray": [label, ...]}}}, one '
                       "label per row of the request")  # fmt: skip
        labels = self._truth_labels(feedback.truth.data)
        self._log.add_labels(request_id, labels, float(feedback.reward))
        answer = prediction_pb2.SeldonMessage()
        answer.meta.tags["request_id"].string_value = request_id
        answer.meta.tags["labels"].number_value = len(labels)
        return answer

    def _truth_labels(self, datadef) -> list[str]:
        """One label per row: values, or one row of class probabilities (one-hot) per row."""
        from seldon_core.utils import grpc_datadef_to_array

        truth = np.asarray(grpc_datadef_to_array(datadef))
        if truth.size == 0:
            raise _bad('"truth" holds no labels: send one label per row of the request')
        if self.task == "classification" and truth.ndim == 2 and truth.shape[1] == len(self._class_names) > 1:
            return [self._class_names[i] for i in truth.astype(np.float64).argmax(axis=1).tolist()]
        if truth.ndim > 2 or (truth.ndim == 2 and truth.shape[1] != 1):
            raise _bad(f'"truth" has shape {list(truth.shape)}: send one label per row, [[label], ...] or [label, ...]')
        return [_label_text(v) for v in truth.reshape(-1).tolist()]

    # -- predict --------------------------------------------------------------------------------------
    def _forward(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = {k: torch.from_numpy(v) for k, v in x.items()} if isinstance(x, dict) else torch.from_numpy(x)
            if self.task == "classification":
                return torch.softmax(self.net(t), dim=-1).numpy()
            return self.net.predict(t).numpy()

    def _matrix(self, X: Any, names: list[str] | None) -> np.ndarray:
        if isinstance(X, dict):
            X, names = self._records(X)
        if not isinstance(X, np.ndarray):
            raise _bad("expected numeric features (data.ndarray, data.tensor or jsonData records)")
        if X.dtype.kind not in "iuf":
            kind = {"U": "strings", "S": "bytes", "O": "mixed or non-numeric values", "b": "booleans"}.get(
                X.dtype.kind, f"dtype {X.dtype}")  # fmt: skip
            raise _bad(f"features must be numbers; the payload holds {kind}")
        if X.ndim == 1:
            if X.size == 0:
                raise _bad("the payload holds no rows: send at least one row of features")
            X = X.reshape(1, -1)
        if X.ndim != 2:
            raise _bad(f"features must be a 2-D array [rows, {self.n_features}], got shape {list(X.shape)}")
        rows, width = X.shape
        if rows == 0:
            raise _bad("the payload holds no rows: send at least one row of features")
        if rows > self.max_batch_rows:
            raise _bad(f"{rows} rows in one request; at most {self.max_batch_rows}: split the batch", 413,
                       "PAYLOAD_TOO_LARGE")  # fmt: skip
        if names:
            if len(names) != width:
                raise _bad(f"data.names lists {len(names)} names for {width} columns")
            if names != self.features:
                unknown = [n for n in names if n not in self._feature_index]
                missing = [f for f in self.features if f not in set(names)]
                if unknown or missing:
                    raise _bad(f"feature names do not match the model's: unknown {unknown[:10]}, missing {missing[:10]}")
                X = X[:, [names.index(f) for f in self.features]]
        if X.shape[1] != self.n_features:
            raise _bad(f"each row must hold {self.n_features} features ({', '.join(self.features[:4])}, ...), "
                       f"got {width}")  # fmt: skip
        X = np.ascontiguousarray(X, dtype=np.float32)
        # one pass for the common case: the largest magnitude is NaN if any value is NaN
        if not np.abs(X).max(initial=0.0) <= 3.0e38:
            if not np.isfinite(X).all():
                r, c = np.argwhere(~np.isfinite(X))[0]
                raise _bad(f"row {r}, feature {self.features[c] if self.features else c}: NaN or infinite values "
                           "are not accepted; impute them first")  # fmt: skip
            raise _bad("feature values overflow float32")
        return X

    def _encoded(self, X: Any, names: list[str] | None) -> tuple[dict[str, list], dict[str, np.ndarray]]:
        """A request of raw values (category, text, base64 images): its columns, and them encoded as the
        training split was."""
        from freestack.ml.features import EncodingError
        from freestack.serving.server.raw import RawInputError

        try:
            columns = self._raw.from_any(X, names)
            return columns, self._encoder.encode(columns)
        except RawInputError as exc:
            status = 413 if "at most" in str(exc) else 400
            raise _bad(str(exc), status, "PAYLOAD_TOO_LARGE" if status == 413 else "BAD_PAYLOAD") from None
        except EncodingError as exc:
            raise _bad(f"{exc}; send the image file's bytes (PNG, JPEG, ...) base64-encoded") from None

    def _records(self, payload: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
        records = payload.get("instances", payload if "instances" not in payload else None)
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list) or not records:
            raise _bad('jsonData must be {"instances": [{feature: value, ...}, ...]} with at least one record')
        if len(records) > self.max_batch_rows:
            raise _bad(f"{len(records)} records in one request; at most {self.max_batch_rows}", 413, "PAYLOAD_TOO_LARGE")
        out = np.empty((len(records), self.n_features), dtype=np.float64)
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise _bad(f"jsonData record {i} must be an object of feature: value")
            missing = [f for f in self.features if f not in rec]
            if missing:
                raise _bad(f"jsonData record {i} lacks features {missing[:10]}")
            for j, f in enumerate(self.features):
                v = rec[f]
                if not _is_number(v):
                    raise _bad(f"jsonData record {i}, feature {f}: expected a number, got {type(v).__name__}")
                out[i, j] = v
        return out, list(self.features)

    def predict(self, X: Any, features_names: list[str] | None = None, meta: dict | None = None):
        if not self.ready:
            raise _bad("the model is still loading", 503, "NOT_READY")
        started = time.perf_counter()
        json_request = isinstance(X, dict)
        if self._encoder is not None:
            raw, x = self._encoded(X, features_names)
        else:
            raw = x = self._matrix(X, features_names)
        out = self._forward(x)
        if self.task == "classification":
            idx = out.argmax(axis=1)
            if len(idx) == 1:
                per_class = [(self._class_names[int(idx[0])], 1)]
            else:
                counts = np.bincount(idx, minlength=len(self._class_names)).tolist()
                per_class = [(self._class_names[i], n) for i, n in enumerate(counts) if n]
        else:
            idx, per_class = None, []
        ms = (time.perf_counter() - started) * 1000.0
        self._local.last = (len(out), ms, per_class)
        puid = meta.get("puid") if isinstance(meta, dict) else None
        request_id = self._local.request_id = puid if isinstance(puid, str) and puid else _new_request_id()
        if self._log is not None and self._log.sampled() and not request_id.startswith(SMOKE_ID):
            self._log.add(request_id, raw, out)  # the deploy's smoke test is not traffic
        if json_request:
            if self.task == "classification":
                preds = [{"label": self.classes[i], "probabilities": dict(zip(self._class_names, p.tolist(), strict=True))}
                         for i, p in zip(idx.tolist(), out, strict=True)]  # fmt: skip
            else:
                preds = [{"value": float(v)} for v in out.tolist()]
            return {"predictions": preds, "model_version": self.version}
        if self.task != "classification":
            # one value per row, as a column: Seldon names the columns of a 2-D answer by class_names()
            # (the target), while a flat array would go out with no names at all
            return out.reshape(-1, 1)
        return out
