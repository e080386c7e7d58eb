"""The OpenAI API of a text-generation version (``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models``) on the model server's HTTP port, beside the Open Inference Protocol, for every LLM client
(the ``openai`` SDK, LangChain, LlamaIndex, lm-eval, promptfoo ...). The routes are MLServer custom handlers
of the runtime serving the version (:class:`OpenAIRoutes`): MLServer adds them to its REST app, behind
freestack's middleware (the key, the body limit, the refusals), when the model loads, and each finds the
version's model, engine and adapters on the runtime (:class:`Served`). A request is a typed model
(:mod:`.protocol`), its parameters checked against the deployment's bounds as every request's are; the
answers come from :mod:`freestack.ml.engine` as the ``openai`` package's own types, and the request log
keeps each request with its version. What differs from OpenAI's service (``temperature`` 0 by default,
``n`` 1, ``seed`` with temperature 0 only, completions of text prompts without the chat template) is in
``docs/stages/serving.md``. Every refusal is OpenAI's error JSON with its status.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from mlserver.handlers import custom_handler
from openai.types import Completion as TextCompletion
from openai.types import Model
from openai.types.chat import ChatCompletion
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from freestack.ml.engine import Busy, Engine, EngineError
from freestack.ml.generation import Completion
from freestack_server.core.errors import PayloadError
from freestack_server.core.generation import Generated, Generator, Prompts
from freestack_server.core.model import ServedModel
from freestack_server.mlserver import metrics as oip_metrics
from freestack_server.mlserver.adapters import Adapters, NotServed
from freestack_server.mlserver.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError, read

#: a request id a client may give (``X-Request-Id``)
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
#: the answer's header naming the prompts (their indices, comma-separated) cut from the left to fit the
#: context (``generation.truncate: left``); absent when none was
TRUNCATED_HEADER = "x-freestack-truncated-prompts"
#: the deployment's names of generation parameters, as OpenAI's API names them
OPENAI_NAMES = {"max_new_tokens": "max_tokens"}


@dataclass(frozen=True)
class Served:
    """A text-generation version as its runtime serves it (V2 and the OpenAI API): model, engine, adapters."""

    name: str
    core: ServedModel
    generator: Generator
    engine: Engine
    adapters: Adapters


class OpenAIRoutes:
    """The OpenAI API's routes, as MLServer custom handlers of the runtime (``served``: set once its
    text-generation model's engine runs). MLServer removes them when the model unloads."""

    name: str
    served: Served | None = None

    def _served(self) -> Served:
        if self.served is None:
            raise OpenAIError(
                404, f"{self.name!r} does not generate text: the OpenAI API serves text-generation versions"
            )
        return self.served

    @custom_handler(rest_path="/v1/models", rest_method="GET")
    async def openai_models(self) -> Response:
        try:
            adapters = self._served().adapters
        except OpenAIError as exc:
            return exc.response()
        await adapters.refresh()
        return JSONResponse({"object": "list", "data": [_model(i).model_dump() for i in adapters.listed()]})

    @custom_handler(rest_path="/v1/models/{model_id:path}", rest_method="GET")
    async def openai_model(self, model_id: str) -> Response:
        """One of :meth:`openai_models` (the SDK's ``models.retrieve``); 404 for a name it does not list."""
        try:
            adapters = self._served().adapters
            await adapters.refresh()
            if model_id not in adapters.listed():
                raise OpenAIError(
                    404,
                    f"the model {model_id!r} does not exist here: GET /v1/models lists what this deployment serves",
                    "model",
                    "model_not_found",
                )
        except OpenAIError as exc:
            return exc.response()
        return JSONResponse(_model(model_id).model_dump())

    @custom_handler(rest_path="/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(request, ChatCompletionRequest)

    @custom_handler(rest_path="/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._answer(request, CompletionRequest)

    async def _answer(
        self, request: Request, kind: type[ChatCompletionRequest] | type[CompletionRequest]
    ) -> Response:
        started = time.perf_counter()
        try:
            served = self._served()
            body = read(kind, await request.body())
            version, adapter = await served.adapters.answerer(body.model)  # loaded if need be
            prompts = _prompts(served.generator, body)
            chat = isinstance(body, ChatCompletionRequest)
            call = Call(served, prompts, version, adapter, chat, started, _call_id(request, chat))
            if not body.stream:
                return JSONResponse(await call.whole(), headers=call.headers)
            events = call.events(bool(body.stream_options and body.stream_options.include_usage))
            first = await anext(events)  # the slots are held from here: a flood is refused before any 200
            return StreamingResponse(
                _chain(first, events), media_type="text/event-stream", headers=call.headers
            )
        except OpenAIError as exc:
            return exc.response()
        except NotServed as exc:  # the version ``model`` names
            code = "model_not_found" if exc.status == 404 else None
            return OpenAIError(exc.status, str(exc), "model", code).response()


def _model(model_id: str) -> Model:
    return Model(id=model_id, object="model", created=int(time.time()), owned_by="freestack")


def _call_id(request: Request, chat: bool) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is a plain name (the deploy's smoke test sends
    one, so its requests stay out of the request log), else a new one."""
    given = request.headers.get("x-request-id", "")
    if REQUEST_ID_RE.match(given):
        return given
    return f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"


def _checked(call: Callable[[], Prompts]) -> Prompts:
    """The generator's check, its refusal in OpenAI's format, naming the parameter as the client sent it
    (``context_length_exceeded`` for an over-long prompt)."""
    try:
        return call()
    except PayloadError as exc:
        code = "context_length_exceeded" if exc.reason == "PROMPT_TOO_LONG" else None
        param, message = OPENAI_NAMES.get(exc.param or "", exc.param), exc.message
        if param != exc.param and message.startswith(f"{exc.param} "):
            message = f"{param}{message[len(exc.param or '') :]}"
        raise OpenAIError(exc.status, message, param, code) from None


def _prompts(generator: Generator, body: ChatCompletionRequest | CompletionRequest) -> Prompts:
    """A request's prompts, checked against the deployment's bounds: the chat with the model's system prompt
    first, or the texts continued as they stand."""
    params = body.parameters()
    if isinstance(body, ChatCompletionRequest):
        chat = generator.columns.with_system([m.model_dump() for m in body.messages])
        text = json.dumps(chat, ensure_ascii=False)
        return _checked(lambda: generator.prompts([chat], [text], params, {"kind": "openai-chat"}))
    chats = [[{"role": "user", "content": t}] for t in body.prompt]
    form = {"kind": "openai-text"}
    return _checked(lambda: generator.prompts(chats, body.prompt, params, form, continued=True))


class Call:
    """One request's generation: its prompts' answers, whole or as server-sent events, then logged."""

    def __init__(
        self,
        served: Served,
        prompts: Prompts,
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

    async def whole(self) -> dict[str, object]:
        self._admit()
        try:
            answers = await self.served.engine.complete_all(
                self.prompts.ids, self.prompts.settings, admitted=True, adapter=self.adapter
            )
        except EngineError as exc:
            raise OpenAIError(503, str(exc)) from None
        self._log(answers)
        head = {"id": self.id, "created": self.created, "model": self.model, "usage": _usage(answers)}
        if self.chat:
            a = answers[0]
            message = {"role": "assistant", "content": a.text}
            choice = {"index": 0, "finish_reason": a.finish_reason, "message": message}
            out = ChatCompletion(object="chat.completion", choices=[choice], **head)
        else:
            choices = [
                {"index": i, "text": a.text, "finish_reason": a.finish_reason, "logprobs": None}
                for i, a in enumerate(answers)
            ]
            out = TextCompletion(object="text_completion", choices=choices, **head)
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
            yield _event(OpenAIError(503, str(exc)).body())
            yield "data: [DONE]\n\n"
            return
        finally:
            self.served.engine.release(waiting)
        self._log(answers)
        if include_usage:
            yield _event(self._chunk_body([], usage=_usage(answers)))
        yield "data: [DONE]\n\n"

    def _chunk(self, delta: dict[str, str] | str, index: int = 0, finish_reason: str | None = None) -> str:
        if self.chat:
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": delta, "finish_reason": finish_reason, "logprobs": None}
        return _event(self._chunk_body([choice]))

    def _chunk_body(
        self, choices: list[dict[str, object]], usage: dict[str, int] | None = None
    ) -> dict[str, object]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        body = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        return body if usage is None else {**body, "usage": usage}

    def _log(self, answers: list[Completion]) -> None:
        """The request log's row: the prompts, their answers and the version that answered."""
        answered = [Generated(a, len(answers)) for a in answers]
        self.served.core.answer_generated(self.prompts, answered, self.id, self.started, self.version)
        oip_metrics.record(self.version, "openai", time.perf_counter() - self.started, len(answers))


async def _chain(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for event in rest:
        yield event


def _usage(answers: list[Completion]) -> dict[str, int]:
    prompt = sum(a.prompt_tokens for a in answers)
    completion = sum(a.completion_tokens for a in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event(body: dict[str, object]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


__all__ = ["OpenAIRoutes", "Served"]
