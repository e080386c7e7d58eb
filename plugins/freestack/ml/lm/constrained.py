"""Grammar-constrained decoding: the answer always parses as the JSON a request asks for (OpenAI's
``response_format``), by llguidance, a maintained grammar engine (it computes, at each step, which tokens
keep the text inside the grammar), through transformers' public ``LogitsProcessor`` API.

llguidance was chosen over xgrammar and outlines-core because it installs as one wheel with no other
dependency (xgrammar brings triton and a second FFI runtime, gigabytes on a CPU machine), compiles a JSON
schema in milliseconds and builds its token table from the fast tokenizer every version ships.

transformers' continuous-batching manager takes per-request temperature, top-k and top-p only, not a
per-request processor: a constrained request is answered by the library's ``generate`` with
:class:`GrammarProcessor` beside the running batch (:class:`freestack.ml.lm.engine.GenerateJob`). No Airflow
here.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

#: JSON mode: any JSON object (OpenAI's ``{"type": "json_object"}``)
ANY_OBJECT = {"type": "object"}
#: the JSON as OpenAI writes it, with no whitespace between tokens (whitespace anywhere would let a model
#: spend its tokens on blanks); a schema's own ``x-guidance`` options win
COMPACT = {"whitespace_flexible": False}
#: the most symbols a schema's grammar may hold (llguidance's ``max_grammar_size``)
MAX_GRAMMAR_SIZE = 200_000
#: the lexer's work (llguidance's fuel, about 50 a microsecond) to build a grammar's regular expressions,
#: and at each token
INITIAL_LEXER_FUEL, STEP_LEXER_FUEL = 1_000_000, 200_000
#: the seconds a schema may take to compile and to take its first tokens (:data:`PROBE_STEPS`)
MAX_COMPILE_SECONDS = 5.0
#: the tokens a new grammar is led through when compiled: a schema that fails there (no finite instance,
#: a pattern past the lexer's bounds) fails every answer, so it is refused before any is generated
PROBE_STEPS = 8


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
    if schema is not None and not _Finite(schema).of(schema):
        raise GrammarError(
            "the schema has no finite instance: a value it requires (a required property, an array's "
            "minimum items, every branch of an anyOf) holds itself again, with no way to end"
        )
    given = json.dumps(ANY_OBJECT if schema is None else schema)  # its keys in the client's order
    return _compiled(given, tokenizer, n_vocab, tuple(eos))


@functools.lru_cache(maxsize=64)
def _compiled(given: str, tokenizer, n_vocab: int, eos: tuple[int, ...]) -> Grammar:
    from llguidance import LLMatcher

    began = time.perf_counter()
    try:
        text = LLMatcher.grammar_from_json_schema(given, defaults=COMPACT)
    except ValueError as exc:
        raise GrammarError(f"the schema is not a JSON object ({exc})") from None
    table = _tokenizer(tokenizer, n_vocab, tuple(eos))
    error = LLMatcher.validate_grammar(text, table, limits=limits()) or _probe(text, table, n_vocab)
    if error:
        raise GrammarError(f"the schema cannot be followed: {error.splitlines()[0]}")
    if (took := time.perf_counter() - began) > MAX_COMPILE_SECONDS:
        raise GrammarError(
            f"the schema's grammar took {took:.1f} s to compile, over the bound of {MAX_COMPILE_SECONDS:g} s"
        )
    return Grammar(text, tuple(eos))


class _Finite:
    """Which parts of a JSON schema have a finite instance: the least fixed point over its local ``$ref``
    targets (each starts without one, and gets one once its required parts have). What a value requires:
    its ``required`` properties, an array's first ``minItems`` items, one ``anyOf``/``oneOf`` branch and
    every ``allOf`` one; other keywords (types, patterns, bounds) are left to the grammar."""

    def __init__(self, root: dict):
        self.root, self.known = root, {}  # a $ref's target -> whether it has a finite instance
        self.seen: set[str] = set()
        while True:  # each round finds the targets reached so far, and gives one a finite instance, or ends
            before, reached = dict(self.known), len(self.seen)
            self.of(root)
            for ref in sorted(self.seen):
                self.known[ref] = self.of(self._target(ref))
            if self.known == before and len(self.seen) == reached:
                return

    def of(self, node: object) -> bool:
        """Whether ``node`` (a schema) has a finite instance, with its ``$ref`` targets as known so far."""
        if not isinstance(node, dict):
            return node is not False
        if isinstance(ref := node.get("$ref"), str) and ref.startswith("#"):
            self.seen.add(ref)
            if not self.known.get(ref, False):
                return False
        branches = [node.get(k) for k in ("anyOf", "oneOf") if isinstance(node.get(k), list)]
        return (
            all(any(self.of(b) for b in bs) for bs in branches)
            and all(self.of(b) for b in (node["allOf"] if isinstance(node.get("allOf"), list) else []))
            and all(self.of(part) for part in self._required(node))
        )

    @staticmethod
    def _required(node: dict) -> list[object]:
        """The schemas of what a value of ``node`` must hold: its required properties, its first items."""
        props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
        other = node.get("additionalProperties", True)
        names = node.get("required") if isinstance(node.get("required"), list) else []
        parts = [props.get(n, other) for n in names if isinstance(n, str)]
        least = node.get("minItems", 0)
        if isinstance(least, int) and least > 0:
            first = node.get("prefixItems") if isinstance(node.get("prefixItems"), list) else []
            parts += first[:least] + ([node.get("items", True)] if least > len(first) else [])
        return parts

    def _target(self, ref: str) -> object:
        """The schema a local ``$ref`` points to (True, as anything, where it points nowhere)."""
        node: object = self.root
        for key in [k.replace("~1", "/").replace("~0", "~") for k in ref[1:].split("/") if k]:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return True
        return node


def limits():
    """llguidance's bounds on a grammar (:data:`MAX_GRAMMAR_SIZE`, the lexer's fuel)."""
    from llguidance import LLParserLimits

    return LLParserLimits(
        max_grammar_size=MAX_GRAMMAR_SIZE,
        initial_lexer_fuel=INITIAL_LEXER_FUEL,
        step_lexer_fuel=STEP_LEXER_FUEL,
        verbose_errors=False,
    )


def _probe(text: str, table, n_vocab: int) -> str:
    """What goes wrong (empty: nothing) when a matcher of grammar ``text`` takes, :data:`PROBE_STEPS`
    times, the first token it allows that does not end the answer: a value that can never end (a required
    property that holds itself) or a pattern past the lexer's bounds fails at its first tokens. It stops
    where only the end is left."""
    from llguidance import LLMatcher
    from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

    matcher, mask = (
        LLMatcher(table, text, log_level=0, limits=limits()),
        allocate_token_bitmask(1, table.vocab_size),
    )
    ends = set(table.eos_tokens)
    for _ in range(PROBE_STEPS):
        fill_next_token_bitmask(matcher, mask, 0)
        step = next((t for t in _allowed(mask[0]) if t not in ends), None)
        if matcher.is_error() or step is None:
            break
        matcher.consume_token(step)
    return matcher.get_error() if matcher.is_error() else ""


def _allowed(row: torch.Tensor) -> list[int]:
    """The tokens a bitmask's row allows, in order."""
    return (
        (((row.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten() != 0)
        .nonzero()[:, 0]
        .tolist()
    )


class GrammarProcessor(LogitsProcessor):
    """Each row of a ``generate`` batch kept inside ``grammar``: the tokens it rules out get -inf, and
    once the text is complete only an end-of-sequence token is left."""

    def __init__(self, grammar: Grammar, tokenizer, n_vocab: int, rows: int, prompt_width: int):
        from llguidance import LLMatcher
        from llguidance.torch import allocate_token_bitmask

        table = _tokenizer(tokenizer, n_vocab, grammar.eos)
        self.matchers = [LLMatcher(table, grammar.text, limits=limits()) for _ in range(rows)]
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

    def accepted(self) -> list[bool]:
        """Whether each row's text is a whole value of the grammar (its matcher accepts and never failed):
        an answer that ended otherwise did not complete its value."""
        return [m.is_accepting() and not m.is_error() for m in self.matchers]

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
