"""The OpenAI API of a text-generation version (``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models``) on the model server's HTTP port, beside the Open Inference Protocol, for every LLM client
(the ``openai`` SDK, LangChain, LlamaIndex, lm-eval, promptfoo ...). The routes are MLServer custom handlers
of the runtime serving the version (:class:`OpenAIRoutes`): MLServer adds them to its REST app, behind
freestack's middleware (the key, the body limit, the refusals), when the model loads, and each finds the
version's model, engine and adapters on the runtime (:class:`Served`). A request is a typed model
(:mod:`.protocol`), its parameters checked against the deployment's bounds as every request's are; the
answers come from :mod:`freestack.ml.lm.engine` as the ``openai`` package's own types, and the request log
keeps each request with its version. Structured outputs, tool calls (:mod:`.tools`), ``n``, ``seed`` and
``logprobs`` are answered as OpenAI defines them; what differs from OpenAI's service (``temperature`` 0 by
default, completions of text prompts without the chat template) is in ``docs/stages/serving.md``. Every
refusal is OpenAI's error JSON with its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
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

from freestack.ml.lm.answers import Completion, GenerationSettings, TokenLogprob
from freestack.ml.lm.constrained import Grammar, GrammarError
from freestack.ml.lm.engine import Busy, Engine, EngineError, needs_apart
from freestack_server.core.generation import Generated, Generator, Prompts
from freestack_server.core.model import ServedModel
from freestack_server.mlserver import metrics as oip_metrics
from freestack_server.mlserver.adapters import Adapters, NotServed
from freestack_server.mlserver.protocol import (
    Asked,
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoraAdapterRequest,
    OpenAIError,
    StreamOptions,
    UnloadLoraAdapterRequest,
    checked,
    read,
)
from freestack_server.mlserver.tools import Call as ToolCall
from freestack_server.mlserver.unbatched import UnbatchedBound

log = logging.getLogger("freestack.serving")

#: a request id a client may give (``X-Request-Id``)
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
#: the answer's header naming the prompts (their indices, comma-separated) cut from the left to fit the
#: context (``generation.truncate: left``); absent when none was
TRUNCATED_HEADER = "x-freestack-truncated-prompts"


@dataclass(frozen=True)
class Served:
    """A text-generation version as its runtime serves it (V2 and the OpenAI API): model, engine, adapters."""

    name: str
    core: ServedModel
    generator: Generator
    engine: Engine
    adapters: Adapters
    unbatched: UnbatchedBound  #: the requests beside the batch, bounded in all and by client


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

    @custom_handler(rest_path="/v1/load_lora_adapter")
    async def load_lora_adapter(self, request: Request) -> Response:
        """vLLM's: an adapter that is not a registered version, loaded from a path as ``<model>:<lora_name>``
        (``deploy.generation.runtime_adapters``; the deployment's key guards it as every route)."""
        try:
            body = read(LoadLoraAdapterRequest, await request.body())
            await self._served().adapters.load_named(body.lora_name, body.lora_path)
        except OpenAIError as exc:
            return exc.response()
        except NotServed as exc:
            return OpenAIError(exc.status, str(exc), "lora_path" if exc.status == 400 else None).response()
        except Exception as exc:  # noqa: BLE001 - this request fails alone, in OpenAI's format, and is logged
            return _failed(exc)
        return JSONResponse({"message": f"Success: LoRA adapter {body.lora_name!r} added successfully."})

    @custom_handler(rest_path="/v1/unload_lora_adapter")
    async def unload_lora_adapter(self, request: Request) -> Response:
        try:
            body = read(UnloadLoraAdapterRequest, await request.body())
            await self._served().adapters.unload_named(body.lora_name)
        except OpenAIError as exc:
            return exc.response()
        except NotServed as exc:
            return OpenAIError(exc.status, str(exc), "lora_name").response()
        return JSONResponse({"message": f"Success: LoRA adapter {body.lora_name!r} removed successfully."})

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
            asked = body.to_settings(served.generator)
            prompts = _prompts(served.generator, body, asked)
            grammar = await _grammar(served.engine, asked) if asked.constrained else None
            kind = ChatCall if isinstance(body, ChatCompletionRequest) else TextCall
            client = request.client.host if request.client else "unknown"
            call = kind(served, prompts, asked, grammar, version, adapter, started, request, client)
            if not body.stream:
                return JSONResponse(await call.whole(), headers=call.headers)
            events = call.events(body.stream_options or StreamOptions())
            first = await anext(events)  # the slots are held from here: a flood is refused before any 200
            return StreamingResponse(
                _chain(first, events), media_type="text/event-stream", headers=call.headers
            )
        except OpenAIError as exc:
            return exc.response()
        except NotServed as exc:  # the version ``model`` names
            code = "model_not_found" if exc.status == 404 else None
            return OpenAIError(exc.status, str(exc), "model", code).response()
        except Exception as exc:  # noqa: BLE001 - this request fails alone, in OpenAI's format, and is logged
            return _failed(exc)


def _failed(exc: Exception) -> Response:
    """A request that failed on what no check foresaw: a 500 in OpenAI's format (a 503 when the engine
    failed it), the error in the server's log; the server and the other requests go on."""
    log.error("a request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    if isinstance(exc, EngineError):
        return OpenAIError(503, str(exc)).response()
    return OpenAIError(
        500, f"the server failed on this request ({type(exc).__name__}); its log says why"
    ).response()


def _model(model_id: str) -> Model:
    return Model(id=model_id, object="model", created=int(time.time()), owned_by="freestack")


def _prompts(generator: Generator, body: ChatCompletionRequest | CompletionRequest, asked: Asked) -> Prompts:
    """A request's prompts, checked against the deployment's bounds: the chat with the model's system prompt
    first (and the tools it may call), or the texts continued as they stand."""
    settings = asked.settings
    if isinstance(body, ChatCompletionRequest):
        chat = generator.columns.with_system([m.model_dump(exclude_none=True) for m in body.messages])
        text, form = json.dumps(chat, ensure_ascii=False), {"kind": "openai-chat"}
        listed = asked.tools.template_tools() if asked.tools else None
        return checked(
            lambda: generator.prompts([chat] * body.n, [text] * body.n, settings, form, tools=listed)
        )
    texts = [t for t in body.prompt for _ in range(body.n)]  # choice prompt * n + j answers prompt's j-th
    decode = generator.tokenizer.decode
    chats = [[{"role": "user", "content": t if isinstance(t, str) else decode(list(t))}] for t in texts]
    form = {"kind": "openai-text"}
    return checked(lambda: generator.prompts(chats, texts, settings, form, continued=True))


async def _grammar(engine: Engine, asked: Asked) -> Grammar:
    """The grammar of the JSON schema the answers follow (``response_format``, or the calls ``tool_choice``
    asks for; :meth:`~.protocol.Asked.grammars`), compiled on a worker thread (a large schema takes a
    while); a schema that cannot be followed is a 400 naming the field it came in."""
    for field, parameters in asked.grammars():
        try:
            grammar = await asyncio.to_thread(engine.grammar, parameters)
        except GrammarError as exc:
            raise OpenAIError(400, f"{field}: {exc}", field) from None
    return grammar


class Call:
    """One request's generation: its prompts' answers, whole or as server-sent events, then logged. Built
    whole from what the request asks (:class:`~.protocol.Asked`) and the ``grammar`` its answers follow
    (``response_format``, forced tool calls); a chat's and a text completion's answers differ in their
    shape only (:class:`ChatCall`, :class:`TextCall`)."""

    prefix = "cmpl"  #: of the call's id
    whole_type: type = TextCompletion
    whole_name = chunk_name = "text_completion"

    def __init__(
        self,
        served: Served,
        prompts: Prompts,
        asked: Asked,
        grammar: Grammar | None,
        version: str,
        adapter: str | None,
        started: float,
        request: Request,
        client: str = "unknown",
    ):
        self.served, self.prompts, self.asked, self.grammar = served, prompts, asked, grammar
        self.client = client  # the client's address (the bound on requests beside the batch is per client)
        self.version, self.adapter, self.model = version, adapter, f"{served.name}:{version}"
        self.started, self.id, self.created = started, self._id(request), int(time.time())
        self.headers = {"x-freestack-version": self.model, "x-request-id": self.id}
        # generation.truncate: left cut these prompts to fit the context (the request log says so too)
        cut = [str(i) for i, (_, truncated) in enumerate(prompts.ids) if truncated]
        if cut:
            self.headers[TRUNCATED_HEADER] = ",".join(cut)

    def _admit(self) -> None:
        engine, n = self.served.engine, len(self.prompts.ids)
        if n > engine.max_requests:  # it would never fit: waiting cannot help
            raise OpenAIError(
                413,
                f"{n} prompts (answers, with n) in one request: the server generates for at most "
                f"{engine.max_requests} at once (deploy.generation.max_requests, which bounds "
                "deploy.generation.max_prompts_per_request), so it could never be answered: send fewer a request",
                "n" if self.asked.n > 1 else "prompt",
            )
        try:
            self.served.engine.admit(len(self.prompts.ids))
        except Busy as exc:
            raise OpenAIError(429, str(exc), None, "rate_limit_exceeded") from None

    def _unbatched(self) -> contextlib.AbstractContextManager:
        """A place beside the batch for a request that needs one (:func:`freestack.ml.lm.engine.needs_apart`):
        OpenAIError 429 past the deployment's or the client's bound."""
        if needs_apart(self.prompts.settings, self.grammar, self.asked.top):
            return self.served.unbatched.hold(self.client)
        return contextlib.nullcontext()

    async def whole(self) -> dict[str, object]:
        with self._unbatched():
            return await self._whole()

    async def _whole(self) -> dict[str, object]:
        self._admit()
        engine, asked = (
            self.served.engine,
            {"adapter": self.adapter, "grammar": self.grammar, "logprobs": self.asked.top},
        )
        try:
            if self.prompts.settings.seed is None:
                answers = await engine.complete_all(
                    self.prompts.ids, self.prompts.settings, admitted=True, **asked
                )
            else:  # each answer from its own seed, as when streamed
                jobs = (
                    engine.complete(ids, self._settings(i), truncated=cut, admitted=True, **asked)
                    for i, (ids, cut) in enumerate(self.prompts.ids)
                )
                answers = list(await asyncio.gather(*jobs))
        except EngineError as exc:
            raise OpenAIError(503, str(exc)) from None
        self._log(answers)
        head = {"id": self.id, "created": self.created, "model": self.model, "usage": self._usage(answers)}
        choices = [self._answered(i, a) for i, a in enumerate(answers)]
        if self.asked.token_ids:  # vLLM's return_token_ids
            for i, (choice, answer) in enumerate(zip(choices, answers, strict=True)):
                choice.update(prompt_token_ids=self.prompts.ids[i][0], token_ids=answer.token_ids or [])
        return self.whole_type(object=self.whole_name, choices=choices, **head).model_dump(exclude_none=True)

    async def events(self, options: StreamOptions) -> AsyncIterator[str]:
        """The answer as server-sent events: OpenAI's chunks, then ``[DONE]``. The first event (the role, or
        an empty text) comes once the request's slots are held (OpenAIError 429 instead, before any
        event); an engine that fails once the stream started is an error event, then the end. With
        ``continuous_usage_stats`` every chunk carries the usage so far."""
        with self._unbatched():  # held until the stream ends (or its client leaves)
            async for event in self._events(options):
                yield event

    async def _events(self, options: StreamOptions) -> AsyncIterator[str]:
        self._admit()
        answers, waiting = [], len(self.prompts.ids)  # the held slots whose streams have not started
        continuous = options.include_usage and options.continuous_usage_stats  # as vLLM takes them
        prompt, done = sum(len(ids) for ids, _ in self.prompts.ids), 0  # done: the finished answers' tokens

        def so_far(generating: int) -> dict[str, int] | None:
            return _tokens(prompt, done + generating) if continuous else None

        try:
            yield self._chunk(self._opening(), usage=so_far(0))
            for i, (ids, cut) in enumerate(self.prompts.ids):
                text, last = [], None  # last: when the stream's last text came
                waiting -= 1
                async for piece in self.served.engine.stream(
                    ids,
                    self._settings(i),
                    admitted=True,
                    adapter=self.adapter,
                    grammar=self.grammar,
                    logprobs=self.asked.top,
                ):
                    text.append(piece.text)
                    last = self._timed(last) if piece.text else last
                    if (piece.text or piece.finish_reason) and self.asked.tools is None:
                        usage = so_far(piece.completion_tokens)
                        yield self._chunk(
                            self._delta(piece.text), i, piece.finish_reason, usage, piece.logprobs
                        )
                done += piece.completion_tokens
                answers.append(
                    Completion(
                        "".join(text),
                        len(ids),
                        piece.completion_tokens,
                        piece.finish_reason,
                        cut,
                        None,
                        piece.queued,
                    )
                )
                if self.asked.tools is not None:  # the calls are read from the whole answer
                    for delta, reason in self._call_deltas(i, answers[-1]):
                        yield self._chunk(delta, i, reason, so_far(0))
        except EngineError as exc:
            yield _event(OpenAIError(503, str(exc)).body())
            yield "data: [DONE]\n\n"
            return
        finally:
            self.served.engine.release(waiting)
        self._log(answers)
        if options.include_usage:
            yield _event(self._chunk_body([], usage=self._usage(answers)))
        yield "data: [DONE]\n\n"

    def _read(self, index: int, answer: Completion) -> tuple[str | None, list[ToolCall], str]:
        """An answer's text, its tool calls and its finish reason (``tool_calls`` when it made any). An
        answer cut at ``max_tokens`` before its calls were complete is text, with ``length``."""
        tokenizer = self.served.generator.tokenizer
        try:
            prompt = tokenizer.decode(self.prompts.ids[index][0])
            content, calls = self.asked.tools.read(answer.text, prompt, tokenizer)
        except ValueError:
            return answer.text, [], answer.finish_reason
        return (
            content,
            calls,
            ("tool_calls" if calls and answer.finish_reason == "stop" else answer.finish_reason),
        )

    def _answered(self, index: int, answer: Completion) -> dict[str, object]:
        """A whole answer's choice: its text, or (with tools) its text and calls."""
        if self.asked.tools is None:
            return self._choice(index, answer.text, answer.finish_reason, "message", answer.logprobs)
        content, calls, reason = self._read(index, answer)
        message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = [c.as_dict() for c in calls]
        return {"index": index, "message": message, "finish_reason": reason}

    def _call_deltas(self, index: int, answer: Completion) -> list[tuple[dict[str, object], str | None]]:
        """A streamed answer's text and calls as chunks' deltas, the last with its finish reason."""
        content, calls, reason = self._read(index, answer)
        deltas = [({"content": content}, None)] if content else []
        deltas += [({"tool_calls": [c.as_dict(k)]}, None) for k, c in enumerate(calls)]
        return [*deltas, ({}, reason)]

    def _chunk(
        self,
        delta: dict[str, object] | str,
        index: int = 0,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> str:
        return _event(self._chunk_body([self._choice(index, delta, finish_reason, "delta", logprobs)], usage))

    def _id(self, request: Request) -> str:
        """The request's id: the client's ``X-Request-Id`` when it is a plain name (the deploy's smoke test
        sends one, so its requests stay out of the request log), else a new one."""
        given = request.headers.get("x-request-id", "")
        if REQUEST_ID_RE.match(given):
            return given
        return f"{self.prefix}-{secrets.token_hex(12)}"

    def _opening(self) -> dict[str, object] | str:
        """The stream's first delta, sent once the request's slots are held: an empty text."""
        return ""

    def _delta(self, text: str) -> dict[str, object] | str:
        """A streamed piece of text: a completion's text itself."""
        return text

    def _choice(
        self,
        index: int,
        content: object,
        finish_reason: str | None,
        key: str,
        logprobs: list[TokenLogprob] | None = None,
    ) -> dict[str, object]:
        """One choice: its ``content`` (``key``: ``message`` for a whole answer, ``delta`` for a streamed
        piece), with its tokens' log-probabilities when asked for."""
        kept = None if self.asked.top is None else self._logprobs(logprobs or [])
        return {
            "index": index,
            **self._content(content, key),
            "finish_reason": finish_reason,
            "logprobs": kept,
        }

    def _content(self, content: object, key: str) -> dict[str, object]:
        """A choice's answer: a completion's ``text``."""
        return {"text": content}

    def _logprobs(self, kept: list[TokenLogprob]) -> dict[str, object]:
        """The legacy completions' ``logprobs``: tokens, their log-probabilities, the likely ones, offsets."""
        word = self._word()
        offsets = list(itertools.accumulate((len(word(k.token)) for k in kept[:-1]), initial=0))
        return {
            "tokens": [word(k.token) for k in kept],
            "token_logprobs": [k.logprob for k in kept],
            "top_logprobs": [{word(t): lp for t, lp in k.top} for k in kept] if self.asked.top else None,
            "text_offset": offsets if kept else [],
        }

    def _word(self) -> Callable[[int], str]:
        """A token's text (each decoded once)."""
        return functools.lru_cache(maxsize=None)(lambda t: self.served.generator.tokenizer.decode([t]))

    def _settings(self, index: int) -> GenerationSettings:
        """The settings of choice ``index``: its own seed (the request's, plus its index) when sampled."""
        settings = self.prompts.settings
        if settings.seed is None or settings.temperature <= 0:
            return settings
        return dataclasses.replace(settings, seed=settings.seed + index)

    def _usage(self, answers: list[Completion]) -> dict[str, int]:
        """The tokens: each prompt once (it is read once, however many answers it has), every answer's."""
        return _tokens(
            sum(a.prompt_tokens for a in answers[:: self.asked.n]), sum(a.completion_tokens for a in answers)
        )

    def _chunk_body(
        self, choices: list[dict[str, object]], usage: dict[str, int] | None = None
    ) -> dict[str, object]:
        body = {
            "id": self.id,
            "object": self.chunk_name,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        return body if usage is None else {**body, "usage": usage}

    def _timed(self, last: float | None) -> float:
        """A stream's text came now: its time to first token (``last`` None), or since its last text."""
        now = time.perf_counter()
        if last is None:
            oip_metrics.first_token(self.version, now - self.started)
        else:
            oip_metrics.between_tokens(self.version, now - last)
        return now

    def _log(self, answers: list[Completion]) -> None:
        """The request log's row: the prompts, their answers and the version that answered."""
        answered = [Generated(a, len(answers)) for a in answers]
        self.served.core.answer_generated(self.prompts, answered, self.id, self.started, self.version)
        oip_metrics.record(self.version, "openai", time.perf_counter() - self.started, len(answers))
        oip_metrics.answered(self.version, answers)


class TextCall(Call):
    """``POST /v1/completions``: each answer a text, its log-probabilities in the legacy columns."""


class ChatCall(Call):
    """``POST /v1/chat/completions``: each answer an assistant message (with its tool calls, when the
    request gave tools), its log-probabilities as chat's ``content`` list."""

    prefix = "chatcmpl"
    whole_type: type = ChatCompletion
    whole_name, chunk_name = "chat.completion", "chat.completion.chunk"

    def _opening(self) -> dict[str, object]:
        return {"role": "assistant", "content": ""}

    def _delta(self, text: str) -> dict[str, object]:
        return {"content": text}

    def _content(self, content: object, key: str) -> dict[str, object]:
        """A chat's answer as ``key``: a whole answer's text as its ``message``, a piece as it is."""
        return {key: {"role": "assistant", "content": content} if key == "message" else content}

    def _logprobs(self, kept: list[TokenLogprob]) -> dict[str, object]:
        word = self._word()

        def entry(t: int, lp: float) -> dict[str, object]:
            return {"token": word(t), "logprob": lp, "bytes": list(word(t).encode())}

        return {
            "content": [
                {**entry(k.token, k.logprob), "top_logprobs": [entry(*t) for t in k.top]} for k in kept
            ]
        }


async def _chain(first: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
    yield first
    async for event in rest:
        yield event


def _tokens(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _event(body: dict[str, object]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


__all__ = ["OpenAIRoutes", "Served"]
