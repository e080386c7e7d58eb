"""A conversation as freestack reads it (``model: {type: huggingface, task: text-generation}``): which lake
columns hold it (:class:`ChatColumns`), its turns parsed and checked once (:class:`Message`, OpenAI's chat
shape; :func:`parse_messages`), and the one error a conversation, template or request raises
(:class:`ChatError`).

A lake row is a conversation: a ``prompt`` and a ``response`` column (a user turn and the assistant's answer,
after an optional system prompt), or a ``messages`` column holding the chat as JSON
(``[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]``). Every assistant turn of
it is learnt; the rest is context (labels ``-100``, what transformers' loss ignores).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    JsonValue,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from freestack.errors import FreestackError

TASK = "generation"


PIPELINE_TASK = "text-generation"


IGNORE = -100  # the label transformers' loss skips


#: the roles a chat turn may have, and the chat template's role for each (OpenAI's developer turn is a system turn)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class ChatError(FreestackError):
    """A conversation, a chat template or a generation request that cannot be used; the message says what
    is wrong and what to do."""


@dataclass(frozen=True)
class ChatColumns:
    """Which lake columns hold a conversation (``model.data``): ``prompt`` + ``response``, or ``messages``
    (JSON), or ``messages`` with ``response``: the chat so far, ending with a user turn, and its answer
    (text, or JSON ``[{"role": "assistant", "content": ...}]``); ``system`` is a system prompt put first
    in every conversation (training and serving); ``tools`` are the functions every conversation may call
    (OpenAI's ``{"type": "function", "function": {...}}``), which the chat template lays out."""

    prompt: str | None = "prompt"
    response: str | None = "response"
    messages: str | None = None
    system: str | None = None
    tools: list[dict[str, Any]] | None = None

    @property
    def columns(self) -> list[str]:
        if self.messages:
            return [self.messages, *([self.response] if self.response else [])]
        return [c for c in (self.prompt, self.response) if c]

    @property
    def input_column(self) -> str:
        """What a request carries: the prompt, or the conversation so far."""
        return self.messages or self.prompt or "prompt"

    def conversation(self, row: dict[str, Any], index: int = 0) -> list[dict[str, str]]:
        """A row as a chat, with the assistant's answer (the last turn)."""
        if self.messages:
            chat = parse_messages(row.get(self.messages), f"row {index}, column {self.messages!r}")
            if self.response:
                chat = [*chat, self._answer(chat, row.get(self.response), index)]
        else:
            prompt, response = row.get(self.prompt), row.get(self.response)
            for name, v in ((self.prompt, prompt), (self.response, response)):
                if not isinstance(v, str):
                    raise ChatError(f"row {index}, column {name!r}: expected text, got {_kind(v)}")
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if not any(m["role"] == "assistant" for m in chat):
            raise ChatError(f"row {index}: the conversation has no assistant turn to learn from")
        return self.with_system(chat)

    def _answer(self, chat: list[dict[str, str]], value: Any, index: int) -> dict[str, str]:
        """The answer to a chat that ends with the user's turn (``messages`` with ``response``)."""
        if chat[-1]["role"] != "user":
            raise ChatError(
                f"row {index}, column {self.messages!r}: the chat so far ends with the {chat[-1]['role']}'s "
                f"turn; its answer is column {self.response!r}, so the chat must end with the user's turn"
            )
        return answer_turn(value, f"row {index}, column {self.response!r}")

    def with_system(self, chat: list[dict[str, str]]) -> list[dict[str, str]]:
        if self.system and (not chat or chat[0]["role"] != "system"):
            return [{"role": "system", "content": self.system}, *chat]
        return chat

    def answered(self, row: dict[str, Any], index: int = 0) -> list[dict[str, Any]]:
        """A row's chat up to (with) its last assistant turn: what evaluation asks for, and its answer."""
        chat = self.conversation(row, index)
        last = max(i for i, m in enumerate(chat) if m["role"] == "assistant")
        return chat[: last + 1]

    def prompt_of(self, row: dict[str, Any], index: int = 0) -> list[dict[str, str]]:
        """A row's chat up to (without) its last assistant turn: what the model answers at evaluation."""
        return self.answered(row, index)[:-1]

    def answer_of(self, row: dict[str, Any], index: int = 0) -> str:
        return self.answered(row, index)[-1]["content"]


def _kind(v: object) -> str:
    missing = v is None or (isinstance(v, float) and math.isnan(v))
    return "nothing (a missing value)" if missing else type(v).__name__


def refusal(message: str, param: str | None = None) -> PydanticCustomError:
    """A validation error whose text is ``message`` as it stands (no "Value error, " before it); ``param``:
    the field it names, where its place (``loc``) does not (a check across fields)."""
    return PydanticCustomError("freestack", "{message}", {"message": message, "param": param})


def unicode_text(value: str) -> str:
    """``value``, refused unless it is Unicode text: a lone surrogate (the JSON escape \\ud800 without its
    pair) is not, and no tokenizer can encode it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise refusal(
            "the text holds a lone surrogate (an unpaired \\ud800-\\udfff escape): send valid Unicode text"
        ) from None
    return value


class CalledFunction(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    arguments: dict[str, JsonValue]

    @field_validator("arguments", mode="before")
    @classmethod
    def _json(cls, arguments: object) -> object:
        if isinstance(arguments, str):
            try:
                return json.loads(arguments)
            except ValueError:
                raise refusal(
                    "the arguments are not JSON: send the arguments the call was made with"
                ) from None
        return arguments


class ToolCall(BaseModel):
    """A function call an assistant turn made, as chat templates read it: its arguments an object (OpenAI
    sends them as JSON text, which is parsed here)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(BaseModel):
    """One chat turn, wherever a chat comes from (a lake's messages column, a golden set, a request to either
    runtime, the OpenAI API): a role (:data:`ROLES`) and text, or a list of OpenAI's text parts (joined); an
    assistant's turn may carry the function calls it made (``tool_calls``, its text then optional), and a
    ``tool`` turn answers one of them (``tool_call_id``). Text that is not Unicode is refused; other keys
    (``name``) are dropped. The one parser of chat turns: :func:`parse_messages` and the OpenAI API's
    request models use it; a turn is dumped with ``exclude_none`` (a text turn is ``{"role", "content"}``)."""

    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _turn(cls, m: object) -> dict[str, object]:
        if not isinstance(m, dict):
            raise refusal(f'a message is an object {{"role", "content"}}, not {_kind(m)}')
        if m.get("role") == "function" or m.get("function_call"):
            raise refusal("function turns are OpenAI's old form: send tool calls and tool turns")
        turn = {
            k: m.get(k) for k in ("role", "content", "tool_calls", "tool_call_id") if m.get(k) is not None
        }
        if m.get("tool_calls") and m.get("content") is None:
            turn["content"] = ""  # an assistant's turn of calls alone
        if m.get("role") == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise refusal('a tool turn answers a call: send its "tool_call_id"')
        return {"content": None, **turn}

    @field_validator("role", mode="plain")
    @classmethod
    def _role(cls, role: object) -> str:
        if not isinstance(role, str) or role not in ROLES:
            raise refusal(
                f"unknown role {role!r}: each message needs a role (system, developer, user, assistant or "
                "tool) and text content"
            )
        return ROLES[role]

    @field_validator("content", mode="plain")
    @classmethod
    def _content(cls, content: object) -> str:
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise refusal(f"a part of type {kind!r}: this model takes text only (parts of type text)")
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise refusal('no text content: send "content": "..." (text, or a list of text parts)')
        return unicode_text(content)


MESSAGES = TypeAdapter(list[Message])


def parse_messages(value: object, where: str, *, prompt: bool = False) -> list[dict[str, str]]:
    """A chat as JSON text (or already a list) of :class:`Message` turns; with ``prompt``, ``value`` is a
    prompt, the chat's one user turn. ChatError naming ``where`` (and the message) and what to send."""
    if prompt:
        if not isinstance(value, str):
            raise ChatError(f"{where}: a prompt is text, not {_kind(value)}")
        value = [{"role": "user", "content": value}]
    elif isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ChatError(
                f"{where}: not JSON ({exc}); store the chat as a JSON list of "
                '{"role": ..., "content": ...} objects'
            ) from None
    if not isinstance(value, list) or not value:
        raise ChatError(
            f'{where}: expected a non-empty list of {{"role": ..., "content": ...}}, got {_kind(value)}'
        )
    try:
        return [m.model_dump(exclude_none=True) for m in MESSAGES.validate_python(value)]
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        at = "" if prompt else f", message {first['loc'][0]}"
        raise ChatError(f"{where}{at}: {first['msg']}") from None


def answer_turn(value: Any, where: str) -> dict[str, str]:
    """An answer column's value as the assistant's turn: text, or JSON holding the one assistant message
    (``[{"role": "assistant", "content": ...}]``, TRL's conversational completion). Text that is JSON
    but not a list of messages (``[1, 2]``) is an answer as it stands."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
            turns = parse_messages(parsed, where)
            if len(turns) != 1 or turns[0]["role"] != "assistant":
                raise ChatError(f'{where}: expected one {{"role": "assistant", "content": ...}} message')
            return turns[0]
    if not isinstance(value, str):
        raise ChatError(f"{where}: expected text, got {_kind(value)}")
    return {"role": "assistant", "content": value}


__all__ = [
    "CalledFunction",
    "ChatColumns",
    "ChatError",
    "IGNORE",
    "MESSAGES",
    "Message",
    "PIPELINE_TASK",
    "ROLES",
    "TASK",
    "ToolCall",
    "answer_turn",
    "parse_messages",
    "refusal",
    "unicode_text",
]
