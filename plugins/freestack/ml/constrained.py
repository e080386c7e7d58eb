"""Grammar-constrained decoding: the answer always parses as the JSON a request asks for (OpenAI's
``response_format``), by llguidance, a maintained grammar engine (it computes, at each step, which tokens
keep the text inside the grammar), through transformers' public ``LogitsProcessor`` API.

llguidance was chosen over xgrammar and outlines-core because it installs as one wheel with no other
dependency (xgrammar brings triton and a second FFI runtime, gigabytes on a CPU machine), compiles a JSON
schema in milliseconds and builds its token table from the fast tokenizer every version ships.

transformers' continuous-batching manager takes per-request temperature, top-k and top-p only, not a
per-request processor: a constrained request is answered by the library's ``generate`` with
:class:`GrammarProcessor` beside the running batch (:class:`freestack.ml.engine.GenerateJob`). No Airflow
here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

#: JSON mode: any JSON object (OpenAI's ``{"type": "json_object"}``)
ANY_OBJECT = {"type": "object"}
#: the JSON as OpenAI writes it, with no whitespace between tokens (whitespace anywhere would let a model
#: spend its tokens on blanks); a schema's own ``x-guidance`` options win
COMPACT = {"whitespace_flexible": False}


class GrammarError(ValueError):
    """A schema that cannot be compiled to a grammar (the message says why)."""


@dataclass(frozen=True)
class Grammar:
    """A compiled grammar (llguidance's JSON form), checked against the tokenizer it will run with."""

    text: str
    eos: tuple[int, ...]  #: the tokens that end an answer


@functools.cache
def _tokenizer(tokenizer, n_vocab: int, eos: tuple[int, ...]):
    """llguidance's token table of a fast tokenizer (about a second to build: once per model); ``eos``:
    the tokens that end an answer, the only ones left once the text is complete. The table spans the
    tokenizer's tokens even where the model has fewer rows (``n_vocab``): :class:`GrammarProcessor` rules
    out every token past the model's width, so an answer only holds tokens the model has."""
    from llguidance.hf import from_tokenizer

    return from_tokenizer(tokenizer, n_vocab=_width(tokenizer, n_vocab), eos_token=list(eos))


def _width(tokenizer, n_vocab: int) -> int:
    """The token table's width: the model's output, or the tokenizer's tokens when it knows more."""
    return max(n_vocab, len(tokenizer))


def json_grammar(schema: dict | None, tokenizer, n_vocab: int, eos: Sequence[int]) -> Grammar:
    """The grammar of the JSON ``schema`` (None: any object); GrammarError saying what is wrong. The
    last schemas compiled are kept (a client sends the same one again and again)."""
    given = json.dumps(ANY_OBJECT if schema is None else schema)  # its keys in the client's order
    return _compiled(given, tokenizer, n_vocab, tuple(eos))


@functools.lru_cache(maxsize=64)
def _compiled(given: str, tokenizer, n_vocab: int, eos: tuple[int, ...]) -> Grammar:
    from llguidance import LLMatcher

    try:
        text = LLMatcher.grammar_from_json_schema(given, defaults=COMPACT)
    except ValueError as exc:
        raise GrammarError(f"the schema is not a JSON object ({exc})") from None
    error = LLMatcher.validate_grammar(text, _tokenizer(tokenizer, n_vocab, tuple(eos)))
    if error:
        raise GrammarError(f"the schema cannot be followed: {error.splitlines()[0]}")
    return Grammar(text, tuple(eos))


class GrammarProcessor(LogitsProcessor):
    """Each row of a ``generate`` batch kept inside ``grammar``: the tokens it rules out get -inf, and
    once the text is complete only an end-of-sequence token is left."""

    def __init__(self, grammar: Grammar, tokenizer, n_vocab: int, rows: int, prompt_width: int):
        from llguidance import LLMatcher
        from llguidance.torch import allocate_token_bitmask

        table = _tokenizer(tokenizer, n_vocab, grammar.eos)
        self.matchers = [LLMatcher(table, grammar.text) for _ in range(rows)]
        self.mask = allocate_token_bitmask(rows, _width(tokenizer, n_vocab))
        self.width = prompt_width
        self.bits = torch.arange(32, dtype=torch.int32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from llguidance.torch import fill_next_token_bitmask

        if input_ids.shape[1] > self.width:  # the tokens chosen at the last step
            for matcher, token in zip(self.matchers, input_ids[:, -1].tolist(), strict=True):
                if not matcher.is_stopped():  # a finished row is padded from here on
                    matcher.consume_token(token)
        for row, matcher in enumerate(self.matchers):
            fill_next_token_bitmask(matcher, self.mask, row)
        # the bitmask unpacked with plain torch (llguidance's own helper compiles with torch.compile, which
        # on a CPU machine needs a C++ compiler at its first call)
        allowed = ((self.mask.unsqueeze(-1) >> self.bits) & 1).flatten(1)
        n = min(allowed.shape[-1], scores.shape[-1])
        scores[:, n:] = float("-inf")  # the output's tokens past the tokenizer's table (the model's width
        # past the table's: the mask's columns past the scores' are never looked at)
        scores[:, :n].masked_fill_(allowed[:, :n] == 0, float("-inf"))
        return scores

    def errors(self) -> list[str]:
        """What went wrong in a matcher (none, when the model only chose allowed tokens)."""
        return [m.get_error() for m in self.matchers if m.is_error()]


def vocab_of(model) -> int:
    """The width of the model's output (its logits), which a grammar's token mask must cover."""
    return int(model.get_output_embeddings().weight.shape[0])


__all__ = [
    "ANY_OBJECT",
    "Grammar",
    "GrammarError",
    "GrammarProcessor",
    "json_grammar",
    "vocab_of",
]
