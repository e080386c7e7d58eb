"""The OpenAI API's requests as typed models, in the shape of vLLM's ``entrypoints/openai/protocol.py`` and
``transformers serve``: :class:`ChatCompletionRequest`, whose ``messages`` are the ML core's one chat parser
(:class:`freestack.ml.generation.Message`), and :class:`CompletionRequest`. Each field's rule is its own
validator; a request's first refusal is :class:`OpenAIError`, a 400 in OpenAI's error shape whose ``param``
names the field (``n``, ``messages[0].content``, ``prompt[1]``). The generation parameters are taken as JSON
sends them, for the deployment's bounds to check (:class:`freestack_server.core.generation.GenerationParameters`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, JsonValue, PlainValidator, ValidationError, field_validator, model_validator
from pydantic.types import StrictBool, StrictInt
from starlette.responses import Response

from freestack.ml.generation import Message, refusal, unicode_text

#: taken at OpenAI's default only (a value that asks for more is refused, naming it)
DEFAULTS: dict[str, JsonValue] = {
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
#: taken and left unused: they change nothing about an answer
IGNORED = ("user", "metadata", "store", "service_tier")
#: OpenAI's error type of each status (others: invalid_request_error, server_error from 500)
ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_exceeded"}


class OpenAIError(Exception):
    """A refusal in OpenAI's error format."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, dict[str, str | None]]:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> Response:
        """The JSON answer (escaped: a field name that is not Unicode text cannot break it)."""
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return Response(json.dumps(self.body()), self.status, headers, "application/json")


def error_body(message: str, status: int) -> dict[str, dict[str, str | None]]:
    """A refusal made before the app (a missing key, body or header limits, an unknown route)."""
    return OpenAIError(status, message, None, "invalid_api_key" if status == 401 else None).body()


def _param(loc: Sequence[int | str]) -> str | None:
    """A field's place as OpenAI names it: ``messages[0].content``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise refusal('"prompt" must be text or a list of texts (token ids are not taken)')
    return unicode_text(value)


class StreamOptions(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    include_usage: bool = False


class OpenAIRequest(BaseModel):
    """What both generating routes take; an unknown parameter is refused by name."""

    model_config = {"extra": "forbid", "frozen": True}

    model: str
    max_tokens: JsonValue = None
    temperature: JsonValue = None
    top_p: JsonValue = None
    stop: JsonValue = None
    seed: StrictInt | None = None
    n: Literal[1] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _taken(cls, body: object) -> dict[str, JsonValue]:
        """The body less what is ignored and what is taken at its default; required fields null until
        their validators say what to send."""
        if not isinstance(body, dict):
            raise refusal("the request body must be a JSON object")
        for key, value in body.items():
            if key in DEFAULTS and value not in (DEFAULTS[key], None):
                raise refusal(f"{key!r} is not supported by this server: leave it out", key)
        required = {name: None for name, f in cls.model_fields.items() if f.is_required()}
        return required | {k: v for k, v in body.items() if k not in DEFAULTS and k not in IGNORED}

    @field_validator("model", mode="plain")
    @classmethod
    def _model(cls, model: object) -> str:
        if model is None:
            raise refusal('"model" is required: the deployment\'s name (GET /v1/models)')
        if not isinstance(model, str):
            raise refusal('"model" must be text naming a version (GET /v1/models)')
        return model

    @field_validator("n", mode="plain")
    @classmethod
    def _n(cls, n: object) -> int:
        if n != 1:
            several = f": send {n} requests" if type(n) is int and n > 1 else ""
            raise refusal(f'"n" must be 1 here, not {n!r}{several}')
        return 1

    @field_validator("stream_options", mode="before")
    @classmethod
    def _options(cls, options: object) -> object:
        if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
            raise refusal('stream_options takes {"include_usage": true|false}')
        return options

    @model_validator(mode="after")
    def _seeded(self) -> OpenAIRequest:
        if self.seed is not None and self.temperature not in (None, 0, 0.0):
            raise refusal(
                "seed is taken with temperature 0 only: this server batches requests together, so a sampled "
                "answer cannot be replayed; send temperature 0 for the same answer every time",
                "seed",
            )
        return self

    @property
    def limit(self) -> JsonValue:
        return self.max_tokens

    def parameters(self) -> dict[str, JsonValue]:
        """The generation parameters given, under the names the deployment's bounds check."""
        given = {"max_new_tokens": self.limit, "temperature": self.temperature, "top_p": self.top_p}
        return {k: v for k, v in (given | {"stop": self.stop}).items() if v is not None}


class ChatCompletionRequest(OpenAIRequest):
    """``POST /v1/chat/completions``: a conversation of text turns."""

    max_completion_tokens: JsonValue = None
    messages: list[Message]

    @field_validator("messages", mode="before")
    @classmethod
    def _listed(cls, messages: object) -> object:
        if not isinstance(messages, list) or not messages:
            raise refusal('"messages" must be a non-empty list of {"role", "content"}')
        return messages

    @model_validator(mode="after")
    def _one_limit(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None and self.max_tokens not in (
            None,
            self.max_completion_tokens,
        ):
            raise refusal("max_tokens and max_completion_tokens differ: send one", "max_tokens")
        return self

    @property
    def limit(self) -> JsonValue:
        return self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens


class CompletionRequest(OpenAIRequest):
    """``POST /v1/completions``: text prompts continued as they stand (no chat template)."""

    prompt: list[Annotated[str, PlainValidator(_text)]]

    @field_validator("prompt", mode="before")
    @classmethod
    def _listed(cls, prompt: object) -> object:
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not texts:
            raise refusal('"prompt" must be text or a list of texts (token ids are not taken)')
        return texts


Body = TypeVar("Body", bound=OpenAIRequest)


def read(kind: type[Body], body: bytes) -> Body:
    """The request ``body`` holds, validated; OpenAIError (400) naming the first field refused."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise OpenAIError(400, f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise OpenAIError(
            400, "the request body's JSON is nested too deep to read: send a flatter body"
        ) from None
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = (first.get("ctx") or {}).get("param") or _param(first["loc"])
        if first["type"] == "extra_forbidden":
            known = ", ".join(sorted(kind.model_fields))
            raise OpenAIError(
                400, f"unknown parameter {param!r}: this endpoint takes {known}", param
            ) from None
        named = first["type"] == "freestack" and len(first["loc"]) < 2  # a field's own refusal names it
        raise OpenAIError(400, first["msg"] if named else f"{param}: {first['msg']}", param) from None


__all__ = ["ChatCompletionRequest", "CompletionRequest", "OpenAIError", "error_body", "read"]
