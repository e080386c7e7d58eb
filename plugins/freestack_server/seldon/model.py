"""freestack's Seldon Core model: serves one registered model version.

A Seldon Python model class (seldon-core 1.17.1), which ``python -m freestack_server`` (runtime
``seldon``) serves in every target; ``seldon-core-microservice freestack_server.seldon.model.Model``
would run it too. Parameters come from its constructor or the environment:

- ``model_uri`` / ``FREESTACK_MODEL_URI``: the registry version (``file://``, ``s3://`` or ``data://``),
  or an alias of it, ``<root>/registry/<model>@production``: resolved once, when the model is first
  described, to the version the alias names then (a server keeps serving that version; restart it to
  follow a promotion);
- ``max_batch_rows`` / ``FREESTACK_MAX_BATCH_ROWS``: the most rows one request may carry (413 above);
- ``request_log_uri`` / ``FREESTACK_REQUEST_LOG_URI`` and ``request_log_rate`` /
  ``FREESTACK_REQUEST_LOG_RATE``: the model's monitoring folder (``<root>/monitoring/<model>``) and the
  fraction of requests (0 to 1) whose inputs and predictions go to its request log, in Parquet, for the
  monitor (:mod:`freestack_server.core.requestlog`); ``deployment`` names the deployment in it;
- ``torch_threads`` / ``FREESTACK_TORCH_THREADS``: intra-op threads per worker (default 1: gunicorn's
  workers already use the cores).

Payloads: ``{"data": {"ndarray": [[...], ...], "names": [...]}}``, ``{"data": {"tensor": {"shape":
[n, f], "values": [...]}}}`` or ``{"jsonData": {"instances": [{feature: value, ...}, ...]}}`` (or one
record). Each answer's ``meta.tags.request_id`` is the request's id (the request's own ``meta.puid`` when
it has one): ``/send-feedback`` with it in ``response.meta.tags`` (or ``request.meta.puid``) and the
true labels in ``truth`` records the ground truth beside the logged request. Every bad payload gets a 4xx
JSON answer in Seldon's status format, never an HTML page or a 500: the server's request checks check each
message's form before Seldon parses it (:mod:`freestack_server.seldon.request_checks`, told what this model
takes by :meth:`Model.inputs`); the model checks the values against its columns.
A text-generation model (``model.task: text-generation``) takes ``strData`` (a prompt; answered as ``strData``,
the completion) or ``jsonData`` ``{"prompt": ...}``, ``{"messages": [...]}`` or ``{"instances": [...]}`` with
``"parameters": {"max_new_tokens", "temperature", "top_p", "stop"}`` (answered as ``{"completions": [{"text",
"finish_reason", "prompt_tokens", "completion_tokens", "truncated"}], "model_version"}``; ``meta.tags`` adds
``generate_batch``, the prompts of the ``generate`` call that answered it): :mod:`freestack_server.core.generation`.
Classification answers are class probabilities named by class; regression answers one value per row,
``[[v], ...]`` named ``[target]`` (``{"value": v}`` per record for jsonData). An answer comes in its
request's form (``ndarray``, ``tensor``, ``jsonData``; ``tensor`` for strData and binData): the
metadata's outputs list those three, and ``custom.answers`` says which answers which.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flask import Blueprint, jsonify
from seldon_core.flask_utils import SeldonMicroserviceException
from werkzeug.exceptions import HTTPException

from freestack_server.core.errors import PayloadError, kind_of
from freestack_server.core.generation import PARAMETERS, Bounds, Generated, Generator, Prompts
from freestack_server.core.generation import describe as describe_generation
from freestack_server.core.model import ServedModel
from freestack_server.seldon.request_checks import GENERATION_HINT, Inputs

log = logging.getLogger(__name__)


def _bad(message: str, status: int = 400, reason: str = "BAD_PAYLOAD") -> SeldonMicroserviceException:
    return SeldonMicroserviceException(message, status_code=status, reason=reason)


# ------------------------------------------------------------------------------------------------------
# the form of every message is checked once, before Seldon's app sees it (freestack_server.seldon.request_checks)

model_error_handler = Blueprint("freestack_errors", __name__)


@model_error_handler.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    # without this, Seldon's catch-all handler turns a 404/405/413 into a 500
    reason = exc.name.upper().replace(" ", "_")
    status = {"status": 1, "info": exc.description or exc.name, "code": -1, "reason": reason}
    return jsonify({"status": status}), exc.code or 400


def _input_metadata(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The metadata's inputs: a tensor of numbers, or, for category/text/image columns, rows of raw values
    (each column's kind named; images as base64) and the strData / binData a one-column model takes."""
    encoder = info.get("encoder")
    if not encoder:
        return [
            {"messagetype": "tensor", "schema": {"names": info["features"], "shape": [n]}},
            {"messagetype": "jsonData", "schema": {"instances": "[{feature: number}]"}},
        ]
    kinds = {name: group for name, group in encoder["columns"]}
    out = [
        {"messagetype": "ndarray", "schema": {"names": info["features"], "shape": [n]}},
        {
            "messagetype": "jsonData",
            "schema": {"instances": "[{column: value}]; images as base64", "columns": kinds},
        },
    ]
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
    return [
        {"messagetype": "ndarray", "schema": schema},
        {"messagetype": "tensor", "schema": schema},
        {"messagetype": "jsonData", "schema": {"predictions": records, "model_version": "string"}},
    ]


#: a text-generation model's ``custom.answers``
GENERATION_ANSWERS = "strData for strData (the completion), jsonData {completions: [...]} for jsonData"

#: the metadata's ``custom.answers``: which output answers which input
ANSWERS = "in the request's form: ndarray for data.ndarray, tensor for data.tensor, strData and binData, jsonData for jsonData"


class Model(ServedModel):
    """One registered freestack model version behind Seldon's protocol (:class:`ServedModel` does the
    work; this class turns Seldon's calls into its calls, and a :class:`PayloadError` into Seldon's
    status format)."""

    #: Seldon registers this blueprint on its Flask app: its 4xx errors in Seldon's format
    model_error_handler = model_error_handler

    def inputs(self) -> Inputs:
        """What the model takes besides rows of numbers, for the request checks of each message: raw values
        for category/text/image columns; strData for one text column, binData for one image column; a
        text-generation model, prompts (strData, jsonData) only."""
        info = self.describe()
        if info["task"] == "generation":
            return Inputs(raw_kinds=frozenset({"strData"}), generation=True)
        groups = [g for _, g in (info.get("encoder") or {}).get("columns", [])]
        kinds = {"strData"} if groups == ["text"] else {"binData"} if groups == ["image"] else set()
        return Inputs(raw_values=self.takes_raw_values(), raw_kinds=frozenset(kinds))

    # -- Seldon's hooks -------------------------------------------------------------------------------
    def class_names(self) -> list[str]:
        return self.output_names

    def init_metadata(self) -> dict[str, Any]:
        info = self.describe()
        model = {"name": info["model"], "versions": [info["version"]], "platform": "freestack"}
        if info["task"] == "generation":
            return {**model, **self._generation_metadata(info)}
        n = len(info["features"])
        outputs = info["classes"] if info["task"] == "classification" else [info["target"] or "prediction"]
        module = info["config"].get("custom")
        return {
            **model,
            "inputs": _input_metadata(info, n),
            "outputs": _output_metadata(info, [str(c) for c in outputs]),
            "custom": {
                "task": info["task"],
                "model_uri": self.model_uri,
                "dtype": "float32",
                "answers": ANSWERS,
                "max_batch_rows": str(self.max_batch_rows),
                # a custom model runs the version's own module.py: which one, by its sha256
                **({"module_sha256": module["sha256"], "module_class": module["class"]} if module else {}),
                **({"requested_uri": self.requested_uri} if self.requested_uri != self.model_uri else {}),
            },
        }

    def _generation_metadata(self, info: dict[str, Any]) -> dict[str, Any]:
        """A text-generation model's inputs, outputs and custom fields (its bounds among them)."""
        bounds = describe_generation(
            self.generator.bounds if self.generator else Bounds.from_settings(), info
        )
        return {
            "inputs": [
                {"messagetype": "strData"},
                {
                    "messagetype": "jsonData",
                    "schema": {
                        "prompt": "string",
                        "messages": "[{role: system|user|assistant, content: string}]",
                        "instances": "[{prompt: string} | {messages: [...]}]",
                        "parameters": "{max_new_tokens: int, temperature: number, top_p: number, stop: string | [string]}",
                    },
                },
            ],
            "outputs": [
                {"messagetype": "strData"},
                {
                    "messagetype": "jsonData",
                    "schema": {
                        "completions": "[{text, finish_reason: stop|length, prompt_tokens, completion_tokens, truncated}]",
                        "model_version": "string",
                    },
                },
            ],
            "custom": {
                "task": "generation",
                "model_uri": self.model_uri,
                "answers": GENERATION_ANSWERS,
                "max_batch_rows": str(self.max_batch_rows),
                **{k: str(v) for k, v in bounds.items()},
            },
        }

    def health_status(self) -> list[float]:
        if not self.ready:
            raise _bad("the model is still loading", 503, "NOT_READY")
        if self.generator is not None:  # no generate call per probe: the load answered one token
            return [1.0]
        return self.forward(self.zero_row()).tolist()

    def tags(self) -> dict[str, Any]:
        tags = {"model": self._described["model"] if self._described else "", "model_version": self.version}
        # the request's id and the prompts of the generate call that answered it, each taken once
        for name in ("request_id", "generate_batch"):
            value = getattr(self._local, name, None)
            if value is not None:
                setattr(self._local, name, None)
                tags[name] = value
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
        out += [
            {"type": "COUNTER", "key": "freestack_predictions_total", "value": n, "tags": {"class": label}}
            for label, n in counts
        ]
        # a text-generation request's tokens, and whether it shared its generate call
        generated = getattr(self._local, "generated", None)
        if generated is not None:
            self._local.generated = None
            prompt, completion, batched = generated
            out += [
                {"type": "COUNTER", "key": "freestack_prompt_tokens_total", "value": prompt},
                {"type": "COUNTER", "key": "freestack_completion_tokens_total", "value": completion},
                {"type": "COUNTER", "key": "freestack_generate_batched_requests_total", "value": batched},
            ]
        return out

    # -- ground truth, later ------------------------------------------------------------------------------
    def send_feedback_raw(self, feedback):
        """Seldon's ``/send-feedback``: the true labels of an earlier request, kept in the request log's
        labels beside it (joined by request id and row)."""
        from seldon_core.proto import prediction_pb2
        from seldon_core.utils import grpc_datadef_to_array

        try:
            self.require_request_log()  # before looking at the message: the answer is the same whatever it holds
            tags = feedback.response.meta.tags
            request_id = (
                (tags["request_id"].string_value if "request_id" in tags else "")
                or feedback.request.meta.puid
                or feedback.response.meta.puid
            )
            if not request_id:
                raise _bad(
                    'the feedback names no request: send the answer\'s meta as "response" ({"meta": {"tags": '
                    '{"request_id": ...}}}) or the request\'s "meta": {"puid": ...}'
                )
            if feedback.truth.WhichOneof("data_oneof") != "data":
                raise _bad(
                    'the feedback carries no "truth": send {"truth": {"data": {"ndarray": [label, ...]}}}, '
                    "one label per row of the request"
                )
            truth = np.asarray(grpc_datadef_to_array(feedback.truth.data))
            n = self.add_feedback(request_id, truth, feedback.reward)
        except PayloadError as exc:
            raise _bad(exc.message, exc.status, exc.reason) from None
        answer = prediction_pb2.SeldonMessage()
        answer.meta.tags["request_id"].string_value = request_id
        answer.meta.tags["labels"].number_value = n
        return answer

    # -- predict --------------------------------------------------------------------------------------
    def predict(self, X: Any, features_names: list[str] | None = None, meta: dict | None = None):
        puid = meta.get("puid") if isinstance(meta, dict) else None
        puid = puid if isinstance(puid, str) and puid else None
        if self.generator is not None:
            return self._generate(X, puid)
        try:
            p = self.predict_rows(X, features_names, puid)
        except PayloadError as exc:
            raise _bad(exc.message, exc.status, exc.reason) from None
        self._local.last = (len(p.out), p.ms, p.per_class)
        self._local.request_id = p.request_id
        if isinstance(X, dict):  # jsonData
            if self.task == "classification":
                predictions = [
                    {
                        "label": self.classes[i],
                        "probabilities": dict(zip(self.output_names, row.tolist(), strict=True)),
                    }
                    for i, row in zip(p.idx.tolist(), p.out, strict=True)
                ]
            else:
                predictions = [{"value": float(v)} for v in p.out.tolist()]
            return {"predictions": predictions, "model_version": self.version}
        if self.task != "classification":
            # one value per row, as a column: Seldon names the columns of a 2-D answer by class_names()
            # (the target), while a flat array would go out with no names at all
            return p.out.reshape(-1, 1)
        return p.out

    def _generate(self, X: Any, puid: str | None):
        """A text-generation request: strData (a prompt) or jsonData (prompts or conversations, parameters)."""
        if isinstance(X, np.ndarray):  # data.ndarray / data.tensor (the request checks refuse them first)
            raise _bad(f"this model generates text: send {GENERATION_HINT}")
        try:
            prompts = prompts_of(self.generator, X)
            g = self.generate(prompts, puid)
        except PayloadError as exc:
            raise _bad(exc.message, exc.status, exc.reason) from None
        done = [a.completion for a in g.answers]
        self._local.last = (len(done), g.ms, [])
        self._local.generated = (
            sum(c.prompt_tokens for c in done),
            sum(c.completion_tokens for c in done),
            int(g.batch > len(prompts)),
        )
        self._local.request_id = g.request_id
        self._local.generate_batch = g.batch
        return answer_of(prompts, g.answers, self.version)


# -- a generating model's Seldon messages -----------------------------------------------------------------
def prompts_of(gen: Generator, X: Any) -> Prompts:
    """``strData`` (``X`` a string: one prompt, default parameters) or ``jsonData``: ``{"prompt": ...}``,
    ``{"messages": [...]}`` or ``{"instances": [{"prompt"|"messages": ...}, ...]}`` (a string instance is
    a prompt), with ``"parameters": {...}``. The model's own input column names a prompt or a
    conversation too."""
    if isinstance(X, str):
        chat, text = gen.chat(X, "strData", messages=False)
        return gen.prompts([chat], [text], gen.settings(None), {"kind": "strData"}, tools=gen.columns.tools)
    if not isinstance(X, dict):
        raise PayloadError(f"this model generates text: send {GENERATION_HINT}")
    unknown = sorted(set(X) - {"prompt", "messages", "instances", "parameters", *_record_keys(gen)})
    if unknown:
        raise PayloadError(f"jsonData holds {unknown}: send {GENERATION_HINT}")
    params = X.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise PayloadError(
            f'"parameters" must be an object of {", ".join(PARAMETERS)}, not {kind_of(params)}'
        )
    if "instances" in X:
        records = X["instances"]
        if any(k in X for k in _record_keys(gen)):
            raise PayloadError('jsonData holds "instances" and a prompt beside them: send one or the other')
        if not isinstance(records, list) or not records:
            raise PayloadError(
                '"instances" must be a non-empty list of {"prompt": ...} or {"messages": [...]}'
            )
        gen.check_count(len(records))
    else:
        records = [{k: v for k, v in X.items() if k != "parameters"}]
    pairs = [
        _record(gen, rec, f"instance {i}" if "instances" in X else "jsonData")
        for i, rec in enumerate(records)
    ]
    chats, texts = [c for c, _ in pairs], [t for _, t in pairs]
    return gen.prompts(chats, texts, gen.settings(params), {"kind": "jsonData"}, tools=gen.columns.tools)


def _record_keys(gen: Generator) -> set[str]:
    return {"prompt", "messages", gen.columns.input_column}


def _record(gen: Generator, rec: Any, where: str) -> tuple[list[dict[str, str]], str]:
    if isinstance(rec, str):
        return gen.chat(rec, where, messages=False)
    if not isinstance(rec, dict):
        raise PayloadError(f'{where} is {kind_of(rec)}: send {{"prompt": ...}} or {{"messages": [...]}}')
    keys = [k for k in rec if k in _record_keys(gen)]
    extra = sorted(set(rec) - _record_keys(gen))
    if len(keys) != 1 or extra:
        raise PayloadError(
            f'{where} must hold one of "prompt" and "messages" (and nothing else), got {sorted(rec)}'
        )
    key = keys[0]
    messages = key == "messages" or (key == gen.columns.messages and key != "prompt")
    return gen.chat(rec[key], f"{where}, {key!r}", messages=messages)


def answer_of(prompts: Prompts, answers: list[Generated], version: str) -> str | dict[str, Any]:
    """A strData request's answer is its completion (strData); a jsonData request's, ``{"completions":
    [...], "model_version": ...}``."""
    if prompts.form.get("kind") == "strData":
        return answers[0].completion.text
    return {"completions": [a.as_dict() for a in answers], "model_version": version}
