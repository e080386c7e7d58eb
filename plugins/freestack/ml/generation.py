"""Causal language models instruction-tuned by freestack (``model: {type: huggingface, task:
text-generation}``): conversations rendered with the base tokenizer's chat template, the loss on the
assistant's tokens only, optional packing, and batched generation with left padding.

A lake row is a conversation (:class:`ChatColumns`): a ``prompt`` and a ``response`` column (a user turn
and the assistant's answer, after an optional system prompt), or a ``messages`` column holding the chat as
JSON (``[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]``). Every assistant
turn of it is learnt; the rest is context (labels ``-100``, what transformers' loss ignores).

:class:`ChatEncoding` turns rows into the loop's batches: ``{"input_ids", "attention_mask"}`` (or, packed,
``{"input_ids", "position_ids"}``: several conversations per row, each restarting its positions, which
transformers' attention masks reads as separate sequences) and the labels. :class:`CausalLMNet` wraps the
``AutoModelForCausalLM`` (maybe a peft model) for the loop: logits in, the mean token loss out.

A version folder is what transformers/peft and the tokenizer write: ``config.json`` (with ``freestack``),
``model.safetensors`` or ``adapter_config.json`` + ``adapter_model.safetensors``, ``generation_config.json``
and the tokenizer files with the chat template, so ``AutoModelForCausalLM`` (+ ``PeftModel``) and
``AutoTokenizer`` load it and ``apply_chat_template`` + ``generate`` answer as freestack's server does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
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
from torch import nn

from freestack.errors import FreestackError
from freestack.ml.pretrained import HubWeights, PretrainedError, adapter_base, add_lora

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


# -- the tokenizer and its chat template --------------------------------------------------------------------


def load_tokenizer(folder: str | os.PathLike, chat_template: str | None = None):
    """The fast tokenizer saved in ``folder`` (a base or a version), with ``chat_template`` when given (it
    wins over the folder's); ChatError when neither has a template."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ChatError(
            f"the tokenizer in {folder} cannot be loaded ({str(exc)[:200]}); save the base with "
            "tokenizer.save_pretrained next to the model"
        ) from None
    if chat_template:
        tok.chat_template = chat_template
    if not tok.chat_template:
        raise ChatError(
            f"the base's tokenizer ({folder}) has no chat template, so conversations cannot be rendered: set "
            "model.chat_template to a Jinja template (e.g. ChatML's), or pick a chat/instruct base"
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def render(
    tokenizer, chat: list[dict[str, str]], *, generation_prompt: bool = False, tools: list | None = None
) -> str:
    """The chat as the template writes it; ``tools``: the functions the model may call (OpenAI's
    ``{"type": "function", "function": {...}}``), which the template lays out its own way."""
    try:
        return tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=generation_prompt, tools=tools
        )
    except Exception as exc:  # jinja2's TemplateError, or a template raising on roles it does not know
        raise ChatError(
            f"the chat template cannot render this conversation ({type(exc).__name__}: {str(exc)[:200]}); "
            "check model.chat_template, or the roles of the messages"
        ) from None


def answer_text(tokenizer, chat: list[dict[str, Any]], tools: list | None = None) -> str:
    """The chat's last turn (the assistant's) as the model writes it: its text, or for a turn of tool
    calls, the calls as the chat template lays them out, up to its end of turn: what a model that learnt
    the turn answers."""
    turn = chat[-1]
    if not turn.get("tool_calls"):
        return turn["content"]
    start = len(render(tokenizer, chat[:-1], generation_prompt=True, tools=tools))
    written = render(tokenizer, chat, tools=tools)[start:]
    end = tokenizer.eos_token
    return (written.split(end)[0] if end else written).strip()


def encode_chat(
    tokenizer, chat: list[dict[str, str]], *, last_turn_only: bool = False, tools: list | None = None
) -> tuple[list[int], list[int]]:
    """(token ids, labels) of a conversation: labels are the ids on the assistant turns (up to and with the
    template's end-of-turn), ``IGNORE`` elsewhere; ``last_turn_only``: on the last assistant turn alone
    (a preference pair's answer, the turns before it being its prompt). Spans are found on the text (each
    assistant turn starts where the chat before it, rendered with the generation prompt, ends), then
    mapped to tokens by their offsets, so tokenization across a boundary cannot shift them. ``tools``: the
    functions the chat may call, laid out by the template."""
    text = render(tokenizer, chat, tools=tools)
    turns = [i for i, m in enumerate(chat) if m["role"] == "assistant"]
    spans = [
        (
            len(render(tokenizer, chat[:i], generation_prompt=True, tools=tools)),
            len(render(tokenizer, chat[: i + 1], tools=tools)),
        )
        for i in (turns[-1:] if last_turn_only else turns)
    ]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = list(enc["input_ids"]), []
    for tok_id, (a, _b) in zip(ids, enc["offset_mapping"], strict=True):
        labels.append(tok_id if any(s <= a < e for s, e in spans) else IGNORE)
    return ids, labels


def eos_ids(tokenizer, generation_config: dict[str, Any] | None = None) -> list[int]:
    """The tokens that end an answer: the generation config's, and the tokenizer's end of sequence."""
    found = (generation_config or {}).get("eos_token_id")
    ids = list(found) if isinstance(found, list) else ([found] if found is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# -- rows into batches ------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """A split as the loop takes it; ``cut`` counts conversations longer than ``max_length`` (cut at the
    end), ``dropped`` those left with no answer token to learn (their answer was cut off)."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    conversations: int = 0
    cut: int = 0
    dropped: int = 0
    tokens: int = 0  # the tokens learnt from (labels that are not IGNORE)


def pad_rows(examples: Sequence[tuple[list[int], list[int]]], max_length: int, pad_id: int) -> Encoded:
    """One conversation per row, right-padded to the longest (at most ``max_length``)."""
    width = max((len(ids) for ids, _ in examples), default=1)
    ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(examples), width), dtype=np.int64)
    labels = np.full((len(examples), width), IGNORE, dtype=np.int64)
    for r, (i, lab) in enumerate(examples):
        ids[r, : len(i)], mask[r, : len(i)], labels[r, : len(i)] = i, 1, lab
    return Encoded({"input_ids": ids, "attention_mask": mask}, labels)


def pack_rows(examples: Sequence[tuple[list[int], list[int]]], max_length: int, pad_id: int) -> Encoded:
    """Conversations packed into rows of ``max_length`` tokens, longest first, each into the first row
    with room (best-fit decreasing, as TRL's ``bfd`` packing); positions restart at each conversation, so
    attention stays within it (transformers reads restarting ``position_ids`` as packed sequences)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i][0]))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i][0])
        fit = min((r for r in range(len(rows)) if room[r] >= n), key=lambda r: room[r], default=None)
        if fit is None:
            rows.append([])
            room.append(max_length)
            fit = len(rows) - 1
        rows[fit].append(i)
        room[fit] -= n
    ids = np.full((len(rows), max_length), pad_id, dtype=np.int64)
    pos = np.zeros((len(rows), max_length), dtype=np.int64)
    labels = np.full((len(rows), max_length), IGNORE, dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            tok, lab = examples[i]
            ids[r, at : at + len(tok)], labels[r, at : at + len(tok)] = tok, lab
            pos[r, at : at + len(tok)] = np.arange(len(tok))
            at += len(tok)
        pos[r, at:] = np.arange(max_length - at)  # the padding: one more sequence, never learnt
    return Encoded({"input_ids": ids, "position_ids": pos}, labels)


@dataclass
class ChatEncoding:
    """The generation task's preprocessing: the chat columns, the template and the token budget. It plays
    :class:`~freestack.ml.prep.Preprocessing`'s part for the train and evaluate stages (``inputs``,
    ``target_array``, ``as_dict``); the tokenizer is the base's (saved in every version)."""

    tokenizer: Any
    columns: ChatColumns
    max_length: int
    packing: bool = False
    task: str = TASK
    classes: list[Any] = field(default_factory=list)
    encoder: Any = None
    tokenizer_json: str | None = None  # the version's tokenizer files are transformers' own
    _memo: tuple[int, Encoded] | None = field(default=None, repr=False)

    @property
    def features(self) -> list[str]:
        return [self.columns.input_column]

    @property
    def target(self) -> str:
        return self.columns.response or self.columns.messages or ""

    def encode_rows(self, rows: Iterable[dict[str, Any]], *, packing: bool | None = None) -> Encoded:
        examples, cut, dropped = [], 0, 0
        for i, row in enumerate(rows):
            chat = self.columns.conversation(row, i)
            ids, labels = encode_chat(self.tokenizer, chat, tools=self.columns.tools)
            if len(ids) > self.max_length:
                ids, labels, cut = ids[: self.max_length], labels[: self.max_length], cut + 1
            if all(lab == IGNORE for lab in labels):
                dropped += 1
                continue
            examples.append((ids, labels))
        pad = self.tokenizer.pad_token_id
        out = (pack_rows if (self.packing if packing is None else packing) else pad_rows)(
            examples, self.max_length, pad
        )
        out.conversations, out.cut, out.dropped = len(examples), cut, dropped
        out.tokens = int((out.y != IGNORE).sum())
        return out

    def encode_frame(self, df) -> Encoded:
        key = id(df)
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, self.encode_rows(df[self.columns.columns].to_dict("records")))
        return self._memo[1]

    def inputs(self, df) -> dict[str, np.ndarray]:
        return self.encode_frame(df).x

    def target_array(self, df) -> np.ndarray:
        return self.encode_frame(df).y

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": TASK,
            "features": self.features,
            "target": self.target,
            "classes": [],
            "chat": {"columns": asdict(self.columns), "max_length": self.max_length, "packing": self.packing},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], folder: str | os.PathLike) -> ChatEncoding:
        chat = d["chat"]
        return cls(
            load_tokenizer(folder),
            ChatColumns(**chat["columns"]),
            int(chat["max_length"]),
            bool(chat.get("packing")),
        )


# -- the model --------------------------------------------------------------------------------------------


def token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each next token (logits at t predict the label at t + 1), ``IGNORE`` skipped."""
    shifted = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    labels = labels[:, 1 : logits.shape[1]]  # a batch cut to its longest row: its labels past it are IGNORE
    return nn.functional.cross_entropy(shifted, labels.reshape(-1), ignore_index=IGNORE, reduction=reduction)


class CausalLMNet(HubWeights, nn.Module):
    """A transformers causal LM (``model``, maybe a peft model) taking freestack's batches; its tokenizer is
    saved beside its weights by :func:`save_tokenizer`."""

    task = TASK

    def __init__(
        self,
        model,
        *,
        base: dict[str, str],
        columns: ChatColumns,
        max_length: int,
        peft: dict[str, Any] | None = None,
        packing: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.base, self.columns = model, dict(base), columns
        self.max_length, self.peft, self.packing = int(max_length), peft, packing
        self.pipeline_task = PIPELINE_TASK
        self.classes: list[Any] = []

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        if "position_ids" in x:  # packed: no mask, restarting positions separate the conversations
            return self.model(
                input_ids=x["input_ids"], position_ids=x["position_ids"], use_cache=False
            ).logits
        mask = x["attention_mask"]
        width = int(mask.sum(dim=1).max())  # rows are right-padded to the split's longest: cut to the batch's
        return self.model(
            input_ids=x["input_ids"][:, :width], attention_mask=mask[:, :width], use_cache=False
        ).logits

    def training_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return token_loss(logits, labels)

    def token_rows(self) -> int:
        """The token ids the model has rows for (:func:`token_rows`)."""
        return token_rows(self.model)

    def seen_tokens(self, x: dict[str, torch.Tensor]) -> int:
        """The tokens a training batch put through the model (its mask's; packed rows: all of them)."""
        return int(x["attention_mask"].sum()) if "attention_mask" in x else x["input_ids"].numel()

    def config(self) -> dict[str, Any]:
        return {
            "freestack_model": "huggingface",
            "task": TASK,
            "pipeline_task": PIPELINE_TASK,
            "classes": [],
            "base": self.base,
            "peft": self.peft,
            "files": self.weight_files(),
            "max_length": self.max_length,
            "chat": asdict(self.columns),
            "packing": self.packing,
        }


def save_tokenizer(
    tokenizer, folder: str | os.PathLike, generation: dict[str, Any] | None = None
) -> list[str]:
    """The tokenizer (its chat template included) and ``generation_config.json`` into ``folder``; the
    files written."""
    from transformers import GenerationConfig

    folder = Path(folder)
    before = set(os.listdir(folder)) if folder.exists() else set()
    tokenizer.save_pretrained(str(folder))
    ids = eos_ids(tokenizer)
    GenerationConfig(
        eos_token_id=ids if len(ids) > 1 else ids[0],
        pad_token_id=tokenizer.pad_token_id,
        **(generation or {}),
    ).save_pretrained(str(folder))
    return sorted(set(os.listdir(folder)) - before)


def load_causal_lm(folder: str, *, meta: bool = False):
    """The base's ``AutoModelForCausalLM`` in float32 (mixed precision is the loop's, on CUDA)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, **({"device_map": "meta"} if meta else {})
        )
    except (ValueError, KeyError, OSError) as exc:
        raise PretrainedError(
            f"the base at {folder} cannot be loaded as a causal language model ({type(exc).__name__}: "
            f"{str(exc)[:300]}); text-generation needs a decoder (GPT-2, Llama, Qwen, SmolLM ...)"
        ) from None


def fit_vocabulary(model, tokenizer, *, lora: bool, resize: bool = True) -> str | None:
    """Give ``model`` a row for every token ``tokenizer`` knows, when it knows more (a token added to the
    tokenizer after the model was saved): its embeddings resized (transformers' ``resize_token_embeddings``,
    the new rows drawn around the old ones' mean), and what was done, for the log. A LoRA adapter cannot
    add rows to its base: PretrainedError saying what to do. ``resize`` false: check only (a meta model).
    None when every token has its row."""
    rows, known = token_rows(model), len(tokenizer)
    if known <= rows:
        return None
    added = tokenizer.convert_ids_to_tokens(list(range(rows, min(known, rows + 3))))
    where = f"the base's tokenizer knows {known} tokens but its model has rows for {rows} (ids {rows} and up: {added})"
    if lora:
        raise PretrainedError(
            f"{where}: an id past the rows would fail training and serving, and a LoRA adapter cannot add rows "
            "to its base; train full weights (leave out model.peft), which gives each token a row, or use a "
            "base whose tokenizer fits its model"
        )
    if resize:
        model.resize_token_embeddings(known)
    return f"{where}: the embeddings were resized to {known} rows, the new ones trained from their mean"


def add_causal_lora(model, peft: dict[str, Any]):
    """LoRA adapters (peft, ``CAUSAL_LM``) on ``peft["target_modules"]`` or peft's default for the
    architecture: :func:`~freestack.ml.pretrained.add_lora` for the text-generation task."""
    return add_lora(model, PIPELINE_TASK, peft)


def load_generation_version(
    folder: str | os.PathLike,
    config: dict[str, Any],
    map_location: str = "cpu",
    *,
    endpoint: str | None = None,
    token: str | None = None,
    read_base=None,
) -> CausalLMNet:
    """A version's causal LM: full weights as they are, or the adapter on its recorded base."""
    info = config["freestack"]
    if "model.safetensors" in info["files"]:
        model = load_causal_lm(str(folder))
    else:
        from peft import PeftModel

        base = adapter_base(info["base"], endpoint=endpoint, token=token, read_base=read_base)
        model = PeftModel.from_pretrained(load_causal_lm(base.folder), str(folder))
    net = CausalLMNet(
        model,
        base=info["base"],
        columns=ChatColumns(**info["chat"]),
        max_length=info["max_length"],
        peft=info.get("peft"),
        packing=bool(info.get("packing")),
    )
    return net.to(map_location).eval()


# -- generation -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated: greedy when ``temperature`` is 0; ``stop`` strings end an answer early;
    a prompt over ``max_prompt_tokens`` is cut from the left (``truncate: left``) or refused."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    max_prompt_tokens: int = 1024
    truncate: str = "left"  # left | refuse
    seed: int | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and the most likely tokens at its step."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop (end of turn or a stop string) | length
    truncated: bool = False  # the prompt was cut from the left
    logprobs: list[TokenLogprob] | None = None  # each answer token's, when asked for
    queued: float | None = None  # seconds from its request's arrival to the model starting on it (served)
    token_ids: list[int] | None = None  # the answer's tokens, its end of turn included (the engine's)


class PromptTooLong(ChatError):
    def __init__(self, index: int, tokens: int, limit: int, chat: bool = True):
        super().__init__(
            f"prompt {index} is {tokens} tokens, over the limit of {limit}: shorten it, or deploy with "
            "generation.truncate: left to keep its last tokens"
        )
        self.index, self.tokens, self.limit, self.chat = index, tokens, limit, chat


class EmptyPrompt(ChatError):
    def __init__(self, index: int, chat: bool = True):
        super().__init__(
            f"prompt {index} is empty: it has no tokens to "
            f"{'answer, even with the chat template' if chat else 'continue'}; send text"
        )
        self.index, self.chat = index, chat


def prompt_ids(
    tokenizer,
    prompts: Sequence[list[dict[str, str]] | str | tuple[int, ...]],
    settings: GenerationSettings,
    tools: list | None = None,
    rows: int | None = None,
) -> list[tuple[list[int], bool]]:
    """Each prompt as the model reads it, in token ids, and whether it was cut: a chat rendered with the
    generation prompt, a text continued as it stands (no chat template: the OpenAI API's completions), or
    token ids (a tuple: the completions' array of tokens) as given; every id checked against the
    vocabulary (``rows``: the ids the model has rows for, :func:`token_rows`, when fewer than the
    tokenizer's); cut from the left, or refused, when over ``max_prompt_tokens``. The one place prompts are
    built and cut: the model server's routes, ``generate``, the score stage and the evaluation use it."""
    out, size = [], min(len(tokenizer), rows or len(tokenizer))
    for i, prompt in enumerate(prompts):
        chat = isinstance(prompt, list)
        if chat:
            text = render(tokenizer, prompt, generation_prompt=True, tools=tools)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        elif isinstance(prompt, tuple):
            ids = list(prompt)
        else:
            ids = tokenizer(prompt)["input_ids"]
        _in_vocabulary(i, ids, size, len(tokenizer))
        if not ids:  # nothing to generate from (and the engine's batch cannot hold an empty prompt)
            raise EmptyPrompt(i, chat)
        cut = len(ids) > settings.max_prompt_tokens
        if cut and settings.truncate != "left":
            raise PromptTooLong(i, len(ids), settings.max_prompt_tokens, chat)
        out.append((ids[-settings.max_prompt_tokens :] if cut else ids, cut))
    return out


class OutOfVocabulary(ChatError):
    """A prompt's token id the model has no row for (an id the tokenizer knows past the model's rows too:
    embedding it would fail the whole batch)."""


def _in_vocabulary(index: int, ids: list[int], size: int, known: int) -> None:
    wrong = next((t for t in ids if not 0 <= t < size), None)
    if wrong is None:
        return
    beyond = f" (the tokenizer knows {known} tokens, the model has rows for {size})" if known > size else ""
    raise OutOfVocabulary(
        f"prompt {index} holds the token id {wrong}, outside the model's vocabulary (0 to {size - 1}){beyond}"
    )


def token_rows(model) -> int:
    """How many token ids ``model`` can read and write: its input embeddings' rows and its output's width,
    the fewer (a tokenizer may know more tokens than a model has rows, after tokens were added)."""
    rows = model.get_input_embeddings().weight.shape[0]
    out = model.get_output_embeddings()
    return int(min(rows, out.weight.shape[0]) if out is not None else rows)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    chats: Sequence[list[dict[str, str]]],
    settings: GenerationSettings,
    generation_config: dict[str, Any] | None = None,
    tools: list | None = None,
) -> list[Completion]:
    """Answers to ``chats`` in one batch: prompts left-padded, ``model.generate`` (greedy, or sampled with
    ``temperature``/``top_p``), the new tokens decoded without special tokens and cut at a stop string;
    ``tools``: the functions the chats may call (the version's, ``ChatColumns.tools``)."""
    if not chats:
        return []
    prompts = prompt_ids(tokenizer, chats, settings, tools, token_rows(model))
    return generate_ids(model, tokenizer, prompts, settings, eos_ids(tokenizer, generation_config))


class Logprobs:
    """A logits processor that keeps what OpenAI's ``logprobs`` report: at each step, each row's
    log-probability (the log-softmax of the model's logits, before sampling settings) of the token chosen,
    and of its ``top`` most likely tokens. Put first, it sees the model's own distribution."""

    def __init__(self, top: int):
        self.top, self.chosen, self.tops, self.last = top, [], [], None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.last is not None:  # the token each row chose at the last step
            self.chosen.append(
                self.last.gather(1, input_ids[:, -1:].to(self.last.device)).squeeze(1).tolist()
            )
        self.last = torch.log_softmax(scores.float(), dim=-1)
        if self.top:
            values, ids = self.last.topk(self.top, dim=-1)
            self.tops.append((ids.tolist(), values.tolist()))
        return scores

    def at(self, row: int, step: int, token: int) -> TokenLogprob:
        """The token ``row`` chose at ``step``."""
        lp = self.chosen[step][row] if step < len(self.chosen) else float(self.last[row, token])
        top = tuple(zip(*(t[row] for t in self.tops[step]), strict=True)) if self.top else ()
        return TokenLogprob(token, lp, top)


def generate_ids(
    model,
    tokenizer,
    prompts: Sequence[tuple[list[int], bool]],
    settings: GenerationSettings,
    eos: list[int],
    logprobs: Logprobs | None = None,
    *,
    strip: bool = True,
    **extra: Any,
) -> list[Completion]:
    """:func:`generate` of prompts already tokenized (token ids, and whether they were cut from the left);
    ``logprobs``: the answers' log-probabilities are kept there and given with each answer; ``strip``:
    each answer's text without its surrounding whitespace (false: as the tokens read, as the engine's batch
    answers, so a continued text keeps its leading space); ``extra``: more of ``model.generate``'s
    arguments (a logits processor, a streamer). Each answer carries its token ids (its end of turn
    included)."""
    if logprobs is not None:
        extra["logits_processor"] = [logprobs, *extra.get("logits_processor", [])]
    width = max(len(ids) for ids, _ in prompts)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, (p, _) in enumerate(prompts):
        ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1
    sample = settings.temperature > 0
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    kw: dict[str, Any] = {
        "do_sample": sample,
        "max_new_tokens": settings.max_new_tokens,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    kw.update(
        {"temperature": settings.temperature, "top_p": settings.top_p}
        if sample
        else {"temperature": None, "top_p": None, "top_k": None}
    )
    if settings.stop:
        kw.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw, **extra)
    out = out[:, width:].cpu()
    answers = [
        _completion(tokenizer, row.tolist(), eos, pad, len(p), cut, settings, strip)
        for row, (p, cut) in zip(out, prompts, strict=True)
    ]
    for r, answer in enumerate(answers):
        answer.token_ids = out[r, : answer.completion_tokens].tolist()
        if logprobs is not None:
            answer.logprobs = [logprobs.at(r, step, t) for step, t in enumerate(answer.token_ids)]
    return answers


def _completion(
    tokenizer,
    new: list[int],
    eos: list[int],
    pad: int,
    prompt_tokens: int,
    cut: bool,
    settings: GenerationSettings,
    strip: bool = True,
) -> Completion:
    end = next((i for i, t in enumerate(new) if t in eos), None)
    tokens = new[:end] if end is not None else [t for t in new if t != pad] if pad not in eos else new
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    reason = "stop" if end is not None else "length"
    for s in settings.stop:
        if s and s in text:
            text, reason = text[: text.index(s)], "stop"
    # its end-of-turn token counts, as generate and OpenAI's usage count it
    return Completion(
        text.strip() if strip else text, prompt_tokens, len(tokens) + (end is not None), reason, cut
    )


def perplexity(loss: float) -> float:
    return float(math.exp(min(loss, 50.0)))


__all__ = [
    "IGNORE",
    "MESSAGES",
    "PIPELINE_TASK",
    "ROLES",
    "TASK",
    "CausalLMNet",
    "ChatColumns",
    "ChatEncoding",
    "ChatError",
    "Completion",
    "EmptyPrompt",
    "Encoded",
    "GenerationSettings",
    "Message",
    "PromptTooLong",
    "add_causal_lora",
    "answer_text",
    "encode_chat",
    "eos_ids",
    "generate",
    "fit_vocabulary",
    "load_causal_lm",
    "token_rows",
    "OutOfVocabulary",
    "load_generation_version",
    "load_tokenizer",
    "pack_rows",
    "pad_rows",
    "parse_messages",
    "perplexity",
    "prompt_ids",
    "refusal",
    "render",
    "save_tokenizer",
    "token_loss",
    "unicode_text",
]
