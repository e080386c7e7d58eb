"""The OpenAI API's requests as typed models, in the shape of vLLM's ``entrypoints/openai/protocol.py`` and
``transformers serve``: :class:`ChatCompletionRequest`, whose ``messages`` are the ML core's one chat parser
(:class:`freestack.ml.lm.chat.Message`), and :class:`CompletionRequest`. Each field's rule is its own
validator; a request's first refusal is :class:`OpenAIError`, a 400 in OpenAI's error shape whose ``param``
names the field (``n``, ``messages[0].content``, ``prompt[1]``). The generation parameters are taken as JSON
sends them, for the deployment's bounds to check (:class:`freestack_server.core.generation.GenerationParameters`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    JsonValue,
    PlainValidator,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.types import StrictBool, StrictInt
from starlette.responses import Response

from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.chat import Message, refusal, unicode_text
from freestack_server.core.errors import PayloadError
from freestack_server.mlserver.tools import NamedToolChoice, ToolCalling, ToolDefinition

if TYPE_CHECKING:
    from freestack_server.core.generation import Generator

#: taken at OpenAI's default only (a value that asks for more is refused, naming it)
DEFAULTS: dict[str, JsonValue] = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logit_bias": {},  # no bias (null too)
    "echo": False,
    "best_of": 1,
    "suffix": None,
}
#: the most answers one request may ask for a prompt (``n``); the deployment's prompts bound applies too
MAX_N = 128
#: taken and left unused: they change nothing about an answer
IGNORED = ("user", "metadata", "store", "service_tier")
#: OpenAI's error type of each status (others: invalid_request_error, server_error from 500)
ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_exceeded"}
#: the deployment's names of generation parameters, as OpenAI's API names them
OPENAI_NAMES = {"max_new_tokens": "max_tokens"}


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


#: the most path parts a refusal's ``param`` names (a body nested thousands deep would name them all)
PARAM_PARTS = 8


def _param(loc: Sequence[int | str]) -> str | None:
    """A field's place as OpenAI names it: ``messages[0].content`` (its first :data:`PARAM_PARTS` parts,
    then ``...``)."""
    out = ""
    for part in loc[:PARAM_PARTS]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return (out + ("..." if len(loc) > PARAM_PARTS else "")) or None


PROMPT_FORMS = '"prompt" must be text, a list of texts, token ids or a list of token-id lists'


#: the largest token id a request may send: no tokenizer's table is larger, and past it ids do not fit the
#: 32-bit integers tokenizers decode (the model's own table is checked when the prompt is read)
MAX_TOKEN_ID = 2**31 - 1


def _prompt(value: object) -> str | tuple[int, ...]:
    """One prompt: a text (checked), or token ids (kept as a tuple, each a non-negative 32-bit id)."""
    if isinstance(value, tuple):
        wrong = next((t for t in value if not 0 <= t <= MAX_TOKEN_ID), None)
        if wrong is not None:
            raise refusal(f"the token id {wrong} is not one any vocabulary has (0 to {MAX_TOKEN_ID})")
        return value
    if not isinstance(value, str):
        raise refusal(PROMPT_FORMS)
    return unicode_text(value)


def _token_ids(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


class StreamOptions(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    include_usage: bool = False
    continuous_usage_stats: bool = False  #: vLLM's: with include_usage, every chunk carries the usage so far


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema every answer follows (``strict`` or not: it always does)."""

    model_config = {"extra": "forbid", "frozen": True}

    name: str
    description: str | None = None
    schema_: dict[str, JsonValue] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    """``response_format``: free text, any JSON object, or JSON that follows a schema."""

    model_config = {"extra": "forbid", "frozen": True}

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise refusal(
                '"json_schema" goes with the type "json_schema", and only with it: '
                '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}',
                "response_format.json_schema",
            )
        return self

    @property
    def constrained(self) -> bool:
        return self.type != "text"

    @property
    def schema(self) -> dict[str, JsonValue] | None:
        """The JSON schema to follow; None: any JSON object."""
        return self.json_schema.schema_ if self.json_schema is not None else None


Checked = TypeVar("Checked")


def checked(call: Callable[[], Checked]) -> Checked:
    """The model server's check of a request (its bounds, its prompts), its refusal in OpenAI's format,
    naming the parameter as the client sent it (``context_length_exceeded`` for an over-long prompt)."""
    try:
        return call()
    except PayloadError as exc:
        code = "context_length_exceeded" if exc.reason == "PROMPT_TOO_LONG" else None
        param, message = OPENAI_NAMES.get(exc.param or "", exc.param), exc.message
        if param != exc.param and message.startswith(f"{exc.param} "):
            message = f"{param}{message[len(exc.param or '') :]}"
        raise OpenAIError(exc.status, message, param, code) from None


@dataclass(frozen=True)
class Asked:
    """What one request asks of the engine, whole and immutable (vLLM's ``SamplingParams`` is the anchor):
    the generation settings within the deployment's bounds, how many answers a prompt, each token's
    log-probability with how many likely tokens (``top``; None: none), the token ids, the tools an answer
    may call, and the JSON schema it follows when ``constrained`` (None: any JSON object)."""

    settings: GenerationSettings
    n: int = 1
    top: int | None = None
    token_ids: bool = False
    tools: ToolCalling | None = None
    schema: dict[str, JsonValue] | None = None
    constrained: bool = False

    def grammars(self) -> list[tuple[str, dict[str, JsonValue] | None]]:
        """Each schema the answers' grammar is compiled from, with the field the client sent it in: each
        forced tool's parameters alone first (a refusal then names the tool at fault), then the whole."""
        fields = self.tools.schemas() if self.tools else []
        return [*fields, ("tools" if fields else "response_format.json_schema.schema", self.schema)]


class OpenAIRequest(BaseModel):
    """What both generating routes take; an unknown parameter is refused by name."""

    model_config = {"extra": "forbid", "frozen": True}

    model: str
    max_tokens: JsonValue = None
    temperature: JsonValue = None
    top_p: JsonValue = None
    stop: JsonValue = None
    seed: StrictInt | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    #: vLLM's extension: each choice with its answer's token ids (``token_ids``, the end of turn included)
    #: and its prompt's (``prompt_token_ids``), for a trainer that learns from exactly these tokens
    return_token_ids: StrictBool = False

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

    @model_validator(mode="after")
    def _whole(self) -> OpenAIRequest:
        if self.return_token_ids and self.stream:
            raise refusal("return_token_ids comes with whole answers: leave out stream", "return_token_ids")
        return self

    @field_validator("stream_options", mode="before")
    @classmethod
    def _options(cls, options: object) -> object:
        if options is not None and (
            not isinstance(options, dict) or set(options) - StreamOptions.model_fields.keys()
        ):
            raise refusal(
                'stream_options takes {"include_usage": true|false, "continuous_usage_stats": true|false}'
            )
        return options

    @property
    def limit(self) -> JsonValue:
        return self.max_tokens

    @property
    def top_logprobs(self) -> int | None:
        """How many likely tokens each answer token's log-probability comes with; None: no log-probabilities."""
        return None

    def parameters(self) -> dict[str, JsonValue]:
        """The generation parameters given, under the names the deployment's bounds check."""
        given = {"max_new_tokens": self.limit, "temperature": self.temperature, "top_p": self.top_p}
        return {k: v for k, v in (given | {"stop": self.stop, "seed": self.seed}).items() if v is not None}

    def to_settings(self, generator: Generator) -> Asked:
        """The request as the engine takes it, in this one place (vLLM's ``to_sampling_params``): its
        parameters checked against the deployment's bounds (OpenAIError naming the parameter as sent),
        ``n``, log-probabilities, token ids and ``response_format``."""
        settings = checked(lambda: generator.settings(self.parameters()))
        form = self.response_format
        schema = form.schema if form is not None else None
        constrained = form is not None and form.constrained
        return Asked(settings, self.n, self.top_logprobs, self.return_token_ids, None, schema, constrained)


class ChatCompletionRequest(OpenAIRequest):
    """``POST /v1/chat/completions``: a conversation of text turns, tool calls and their results."""

    max_completion_tokens: JsonValue = None
    messages: list[Message]
    logprobs: StrictBool = False
    top_logprobs_: Annotated[StrictInt, Field(ge=0, le=20)] | None = Field(None, alias="top_logprobs")
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None

    @model_validator(mode="after")
    def _callable(self) -> ChatCompletionRequest:
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) < len(names):
            raise refusal("two tools have the same name: name each function once", "tools")
        choice = self.tool_choice
        named = choice.function.name if isinstance(choice, NamedToolChoice) else None
        if named is not None and named not in names:
            raise refusal(
                f"tool_choice names {named!r}, which is not one of the tools {names}", "tool_choice"
            )
        if (choice == "required" or named) and not names:
            raise refusal(
                f'tool_choice {choice if named is None else named!r} needs "tools" to call', "tool_choice"
            )
        if self.top_logprobs_ is not None and not self.logprobs:
            raise refusal('top_logprobs goes with "logprobs": true', "top_logprobs")
        calling = (choice or ("auto" if names else "none")) != "none"
        if calling and self.response_format is not None and self.response_format.constrained:
            raise refusal("tools and response_format both shape the answer: send one", "response_format")
        return self

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

    @property
    def top_logprobs(self) -> int | None:
        return (self.top_logprobs_ or 0) if self.logprobs else None

    def to_settings(self, generator: Generator) -> Asked:
        """:meth:`OpenAIRequest.to_settings`, with the tools an answer may call: generated under their
        schema when ``tool_choice`` forces calls, free and then read for ``auto``."""
        asked = super().to_settings(generator)
        tools = self.tool_calling(generator.tokenizer)
        if tools is None:
            return asked
        schema = tools.schema()
        return dataclasses.replace(asked, tools=tools, schema=schema, constrained=schema is not None)

    def tool_calling(self, tokenizer) -> ToolCalling | None:
        """The request's tool calling; None for a text answer (no tools, or ``tool_choice: "none"``). A 400
        when ``auto`` cannot read this version's calls."""
        choice = self.tool_choice or ("auto" if self.tools else "none")
        if choice == "none":
            return None
        if choice == "auto" and getattr(tokenizer, "response_template", None) is None:
            raise OpenAIError(
                400,
                'tool_choice "auto": this version\'s tokenizer has no response_template, so the calls in its '
                'answers cannot be read; send tool_choice "required" or {"type": "function", "function": '
                '{"name": ...}} (the answer is then constrained to a call), or serve a version whose '
                "tokenizer has a response_template",
                "tool_choice",
            )
        return ToolCalling(tuple(self.tools or ()), choice, self.parallel_tool_calls is not False)


class CompletionRequest(OpenAIRequest):
    """``POST /v1/completions``: prompts continued as they stand (no chat template): texts, or token ids
    (an array of tokens, or of token arrays, as OpenAI's API takes them)."""

    prompt: list[Annotated[str | tuple[int, ...], PlainValidator(_prompt)]]
    logprobs: Annotated[StrictInt, Field(ge=0, le=5)] | None = (
        None  #: the legacy API's: how many likely tokens
    )

    @property
    def top_logprobs(self) -> int | None:
        return self.logprobs

    @field_validator("prompt", mode="before")
    @classmethod
    def _listed(cls, prompt: object) -> object:
        if _token_ids(prompt):
            return [tuple(prompt)]  # one prompt's tokens
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(texts, list) or not texts:
            raise refusal(PROMPT_FORMS)
        return [tuple(t) if _token_ids(t) else t for t in texts]


#: an adapter's name, and where it is (text with a lone surrogate is refused by pydantic's own str)
LoraName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
LoraPath = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class LoadLoraAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter``: an adapter's folder or URI, and the name requests call it by."""

    model_config = {"extra": "forbid", "frozen": True}

    lora_name: LoraName
    lora_path: LoraPath


class UnloadLoraAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/unload_lora_adapter``."""

    model_config = {"extra": "forbid", "frozen": True}

    lora_name: LoraName


Body = TypeVar("Body", bound=BaseModel)


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
            known = ", ".join(sorted(f.alias or name for name, f in kind.model_fields.items()))
            raise OpenAIError(
                400, f"unknown parameter {param!r}: this endpoint takes {known}", param
            ) from None
        named = first["type"] == "freestack" and len(first["loc"]) < 2  # a field's own refusal names it
        raise OpenAIError(400, first["msg"] if named else f"{param}: {first['msg']}", param) from None


__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "OpenAIError",
    "ResponseFormat",
    "error_body",
    "read",
]
