"""The tokenizer and its chat template: conversations rendered and encoded for training
(:class:`ChatEncoding`: ``{"input_ids", "attention_mask"}``, or, packed, ``{"input_ids", "position_ids"}``,
several conversations a row, each restarting its positions, which transformers' attention masks reads as
separate sequences, and the labels), and prompts built and cut for generation (:func:`prompt_ids`, the one
place prompts are built: the model server's routes, ``generate``, the score stage and the evaluation use it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.chat import IGNORE, TASK, ChatColumns, ChatError


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


__all__ = [
    "ChatEncoding",
    "EmptyPrompt",
    "Encoded",
    "OutOfVocabulary",
    "PromptTooLong",
    "answer_text",
    "encode_chat",
    "eos_ids",
    "load_tokenizer",
    "pack_rows",
    "pad_rows",
    "prompt_ids",
    "render",
    "save_tokenizer",
]
