"""The OpenAI API for a text-generation version: ``POST /v1/chat/completions``, ``POST /v1/completions`` and
``GET /v1/models``, on the model server's HTTP port beside the Open Inference Protocol (the ``mlserver``
runtime mounts :data:`router` on MLServer's app). Runs in the serving environment.

Every LLM client speaks this API (the ``openai`` SDK, LangChain, LlamaIndex, lm-eval, promptfoo ...). The
answers come from :mod:`freestack.ml.engine` (transformers' continuous batching); the request's
parameters are checked against the deployment's bounds as every other request is
(:class:`freestack_server.generation.Generator`), and the request log keeps each request with its
version. The answers are built with the ``openai`` package's own response types.

What differs from OpenAI's service, and is in ``docs/stages/serving-openai.md``: ``temperature`` defaults
to the deployment's (0, greedy), not 1; ``n`` is 1; ``seed`` is taken with temperature 0 only (a batch
shared with other requests cannot replay a sampled answer); ``/v1/completions`` continues the prompt as
text (no chat template), and takes text prompts only. Every refusal is OpenAI's error JSON
(``{"error": {"message", "type", "param", "code"}}``) with its status.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from freestack.ml.engine import Busy, EngineError
from freestack.ml.generation import Completion
from freestack_server import oip_metrics
from freestack_server.adapters import NotServed
from freestack_server.errors import PayloadError
from freestack_server.generation import Generated, check_text

log = logging.getLogger("freestack.serving")

router = APIRouter(prefix="/v1")

#: what a request may send, each a name OpenAI's API gives it; others are refused (400) by name
COMMON = {"model", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options"}
CHAT = COMMON | {"messages", "max_completion_tokens"}
COMPLETION = COMMON | {"prompt"}
#: taken and left unused: they change nothing about an answer
IGNORED = {"user", "metadata", "store", "service_tier"}
#: a request id a client may give (``X-Request-Id``)
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
#: taken at OpenAI's default only (a value that asks for more is refused, naming it)
DEFAULTS: dict[str, Any] = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": {},  # no bias (null too)
    "echo": False,
    "best_of": 1,
    "suffix": None,
    "response_format": {"type": "text"},
    "tools": None,
    "tool_choice": "none",
    "parallel_tool_calls": None,
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


#: the answer's header naming the prompts (their indices, comma-separated) cut from the left to fit the
#: context (``generation.truncate: left``); absent when none was
TRUNCATED_HEADER = "x-freestack-truncated-prompts"


class OpenAIError(Exception):
    """A refusal in OpenAI's error format."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_exceeded"}
        body = {
            "error": {
                "message": self.message,
                "type": kind.get(
                    self.status, "server_error" if self.status >= 500 else "invalid_request_error"
                ),
                "param": self.param,
                "code": self.code,
            }
        }
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def error_body(message: str, status: int) -> dict[str, Any]:
    """A refusal made before the app (a missing key, body or header limits, an unknown route) in OpenAI's
    format."""
    code = "invalid_api_key" if status == 401 else None
    return json.loads(OpenAIError(status, message, None, code).response().body)


@dataclass
class Served:
    """The deployment this server answers for: its runtime (``core``: a ServedModel; ``engine``), the
    adapter versions it serves (:class:`freestack_server.adapters.Adapters`)."""

    name: str
    core: Any  # freestack_server.core.ServedModel
    engine: Any  # freestack.ml.engine.Engine
    adapters: Any  # freestack_server.adapters.Adapters

    async def version(self, model: Any) -> tuple[str, str | None]:
        """The version ``model`` names, and the adapter that answers for it (loaded if need be)."""
        try:
            return await self.adapters.answerer(model)
        except NotServed as exc:
            code = "model_not_found" if exc.status == 404 else None
            raise OpenAIError(exc.status, str(exc), "model", code) from None


#: the version this process serves, set when its runtime loads (one model a server)
SERVED: dict[str, Served] = {}


def _served() -> Served:
    if not SERVED:
        raise OpenAIError(503, "the model is loading: try again shortly")
    return next(iter(SERVED.values()))  # the key, if any, was asked for first (freestack_server.keys)


async def _body(request: Request, known: set[str]) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise OpenAIError(400, f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise OpenAIError(
            400, "the request body's JSON is nested too deep to read: send a flatter body"
        ) from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    for key, value in body.items():
        if key in known or key in IGNORED:
            continue
        if key in DEFAULTS:
            if value not in (DEFAULTS[key], None):
                raise OpenAIError(400, f"{key!r} is not supported by this server: leave it out", key)
            continue
        raise OpenAIError(
            400, f"unknown parameter {key!r}: this endpoint takes {', '.join(sorted(known))}", key
        )
    if "model" not in body:
        raise OpenAIError(400, '"model" is required: the deployment\'s name (GET /v1/models)', "model")
    return body


def _params(body: dict[str, Any], *, chat: bool) -> dict[str, Any]:
    """The generation parameters under the names the deployment's bounds check."""
    n = body.get("n", 1)
    if n != 1:
        several = f": send {n} requests" if type(n) is int and n > 1 else ""
        raise OpenAIError(400, f'"n" must be 1 here, not {n!r}{several}', "n")
    limit = body.get("max_tokens")
    if chat and body.get("max_completion_tokens") is not None:
        if limit is not None and limit != body["max_completion_tokens"]:
            raise OpenAIError(400, "max_tokens and max_completion_tokens differ: send one", "max_tokens")
        limit = body["max_completion_tokens"]
    params = {"max_new_tokens": limit, "temperature": body.get("temperature"), "top_p": body.get("top_p")}
    params["stop"] = body.get("stop")
    params = {k: v for k, v in params.items() if v is not None}
    seed = body.get("seed")
    if seed is not None and (type(seed) is not int):
        raise OpenAIError(400, f'"seed" must be a whole number, not {seed!r}', "seed")
    if seed is not None and params.get("temperature", 0) not in (0, 0.0):
        raise OpenAIError(
            400,
            "seed is taken with temperature 0 only: this server batches requests together, so a sampled "
            "answer cannot be replayed; send temperature 0 for the same answer every time",
            "seed",
        )
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise OpenAIError(400, 'stream_options takes {"include_usage": true|false}', "stream_options")
    if type(body.get("stream", False)) is not bool:
        raise OpenAIError(400, '"stream" must be true or false', "stream")
    return params


def _messages(value: Any) -> list[dict[str, str]]:
    """OpenAI's messages as the model's chat: text content only (a list of text parts is joined)."""
    if not isinstance(value, list) or not value:
        raise OpenAIError(400, '"messages" must be a non-empty list of {"role", "content"}', "messages")
    chat = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise OpenAIError(400, f'{where} must be an object {{"role", "content"}}', "messages")
        role = m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            raise OpenAIError(
                400, f"{where}: tools and function calls are not supported: send text turns", "messages"
            )
        if not isinstance(role, str) or role not in ROLES:
            raise OpenAIError(
                400, f"{where}: unknown role {role!r}: send system, developer, user or assistant", "messages"
            )
        content = _content(m.get("content"), where)
        try:
            check_text(content, where)
        except PayloadError as exc:
            raise OpenAIError(400, exc.message, "messages") from None
        chat.append({"role": ROLES[role], "content": content})
    return chat


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(
                    400,
                    f"{where}: a {kind or 'non-text'} part: this model takes text only (parts of type text)",
                    "messages",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise OpenAIError(400, f'{where} has no text content: send "content": "..."', "messages")


#: the deployment's names of generation parameters, as OpenAI's API names them
OPENAI_NAMES = {"max_new_tokens": "max_tokens"}


def _checked(call, *args):
    """The generator's check, its refusal in OpenAI's format, naming the parameter as the client sent it
    (``context_length_exceeded`` for an over-long prompt)."""
    try:
        return call(*args)
    except PayloadError as exc:
        code = "context_length_exceeded" if exc.reason == "PROMPT_TOO_LONG" else None
        param, message = OPENAI_NAMES.get(exc.param or "", exc.param), exc.message
        if param != exc.param and message.startswith(f"{exc.param} "):
            message = f"{param}{message[len(exc.param or '') :]}"
        raise OpenAIError(exc.status, message, param, code) from None


def _model(model_id: str):
    from openai.types import Model

    return Model(id=model_id, object="model", created=int(time.time()), owned_by="freestack")


@router.get("/models")
async def models(request: Request) -> Response:
    try:
        served = _served()
    except OpenAIError as exc:
        return exc.response()
    await served.adapters.refresh()
    data = [_model(i).model_dump() for i in served.adapters.listed()]
    return JSONResponse({"object": "list", "data": data})


@router.get("/models/{model_id:path}")
async def model(model_id: str, request: Request) -> Response:
    """One of :func:`models` (the SDK's ``models.retrieve``); 404 for a name this deployment does not list."""
    try:
        served = _served()
        await served.adapters.refresh()
        if model_id not in served.adapters.listed():
            raise OpenAIError(
                404,
                f"the model {model_id!r} does not exist here: GET /v1/models lists what this deployment serves",
                "model",
                "model_not_found",
            )
    except OpenAIError as exc:
        return exc.response()
    return JSONResponse(_model(model_id).model_dump())


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _answer(request, chat=True)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await _answer(request, chat=False)


async def _answer(request: Request, *, chat: bool) -> Response:
    started = time.perf_counter()
    try:
        served = _served()
        body = await _body(request, CHAT if chat else COMPLETION)
        params = _params(body, chat=chat)
        version, adapter = await served.version(body["model"])
        prompts = _prompts(served, body, params, chat=chat)
    except OpenAIError as exc:
        return exc.response()
    call = Call(served, prompts, version, adapter, chat, started, _call_id(request, chat))
    try:
        if not body.get("stream"):
            return JSONResponse(await call.whole(), headers=call.headers)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = call.events(usage)
        first = await anext(events)  # the slots are held from here: a flood is refused before any 200
        return StreamingResponse(_chain(first, events), media_type="text/event-stream", headers=call.headers)
    except OpenAIError as exc:
        return exc.response()


def _call_id(request: Request, chat: bool) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is a plain name (the deploy's smoke test sends
    one, so its requests stay out of the request log), else a new one."""
    given = request.headers.get("x-request-id", "")
    if REQUEST_ID_RE.match(given):
        return given
    return f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"


def _prompts(served: Served, body: dict[str, Any], params: dict[str, Any], *, chat: bool):
    generator = served.core.generator
    if chat:
        chat_ = generator.columns.with_system(_messages(body.get("messages")))
        text = json.dumps(chat_, ensure_ascii=False)
        return _checked(generator.prompts, [chat_], [text], params, {"kind": "openai-chat"})
    prompt = body.get("prompt")
    texts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise OpenAIError(400, '"prompt" must be text or a list of texts (token ids are not taken)', "prompt")
    return _checked(generator.text_prompts, texts, params)


class Call:
    """One request's generation: its prompts' answers, whole or as server-sent events, then logged."""

    def __init__(
        self,
        served: Served,
        prompts,
        version: str,
        adapter: str | None,
        chat: bool,
        started: float,
        call_id: str,
    ):
        self.served, self.prompts, self.chat = served, prompts, chat
        self.version, self.adapter, self.model = version, adapter, f"{served.name}:{version}"
        self.started, self.id, self.created = started, call_id, int(time.time())
        self.headers = {"x-freestack-version": self.model, "x-request-id": call_id}
        cut = [str(i) for i, (_, truncated) in enumerate(prompts.ids) if truncated]
        if (
            cut
        ):  # generation.truncate: left cut these prompts to fit the context (the request log says so too)
            self.headers[TRUNCATED_HEADER] = ",".join(cut)

    def _admit(self) -> None:
        try:
            self.served.engine.admit(len(self.prompts.ids))
        except Busy as exc:
            raise OpenAIError(429, str(exc), None, "rate_limit_exceeded") from None

    async def whole(self) -> dict[str, Any]:
        engine, settings = self.served.engine, self.prompts.settings
        self._admit()
        try:
            answers = await engine.complete_all(
                self.prompts.ids, settings, admitted=True, adapter=self.adapter
            )
        except EngineError as exc:
            raise OpenAIError(503, str(exc)) from None
        self._log(answers)
        usage = _usage(answers)
        if self.chat:
            from openai.types.chat import ChatCompletion

            a = answers[0]
            choice = {
                "index": 0,
                "finish_reason": a.finish_reason,
                "message": {"role": "assistant", "content": a.text},
            }
            out = ChatCompletion(
                id=self.id,
                object="chat.completion",
                created=self.created,
                model=self.model,
                choices=[choice],
                usage=usage,
            )
        else:
            from openai.types import Completion

            choices = [
                {"index": i, "text": a.text, "finish_reason": a.finish_reason, "logprobs": None}
                for i, a in enumerate(answers)
            ]
            out = Completion(
                id=self.id,
                object="text_completion",
                created=self.created,
                model=self.model,
                choices=choices,
                usage=usage,
            )
        return out.model_dump(exclude_none=True)

    async def events(self, include_usage: bool) -> AsyncIterator[str]:
        """The answer as server-sent events: OpenAI's chunks, then ``[DONE]``. The first event (the role, or
        an empty text) comes once the request's slots are held (OpenAIError 429 instead, before any
        event); an engine that fails once the stream started is an error event, then the end."""
        self._admit()
        answers, waiting = [], len(self.prompts.ids)  # the held slots whose streams have not started
        try:
            yield self._chunk({"role": "assistant", "content": ""} if self.chat else "")
            for i, (ids, cut) in enumerate(self.prompts.ids):
                text = []
                waiting -= 1
                async for piece in self.served.engine.stream(
                    ids, self.prompts.settings, admitted=True, adapter=self.adapter
                ):
                    text.append(piece.text)
                    if piece.text or piece.finish_reason:
                        delta = {"content": piece.text} if self.chat else piece.text
                        yield self._chunk(delta, i, piece.finish_reason)
                answers.append(
                    Completion("".join(text), len(ids), piece.completion_tokens, piece.finish_reason, cut)
                )
        except EngineError as exc:
            yield _event(error_body(str(exc), 503))
            yield "data: [DONE]\n\n"
            return
        finally:
            self.served.engine.release(waiting)
        self._log(answers)
        if include_usage:
            yield _event(self._chunk_body([], usage=_usage(answers)))
        yield "data: [DONE]\n\n"

    def _chunk(self, delta: Any, index: int = 0, finish_reason: str | None = None) -> str:
        if self.chat:
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": delta, "finish_reason": finish_reason, "logprobs": None}
        return _event(self._chunk_body([choice]))

    def _chunk_body(
        self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None
    ) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        body = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return body

    def _log(self, answers: list) -> None:
        """The request log's row: the prompts, their answers and the version that answered."""
        core = self.served.core
        answered = [Generated(a, len(answers)) for a in answers]
        core.answer_generated(self.prompts, answered, self.id, self.started, self.version)
        oip_metrics.record(self.version, "openai", time.perf_counter() - self.started, len(answers))


async def _chain(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for event in rest:
        yield event


def _usage(answers: list) -> dict[str, int]:
    prompt = sum(a.prompt_tokens for a in answers)
    completion = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


__all__ = ["SERVED", "OpenAIError", "Served", "error_body", "router"]
