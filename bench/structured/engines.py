"""One grammar library measured in this interpreter: ``python -m bench.structured.engines --engine NAME
--tokenizer FILE`` prints one JSON object (:class:`EngineResult`). ``bench.structured.run`` starts it with
the Python of the environment that has the library: freestack's own for llguidance, a separate one for
xgrammar and outlines-core (they are not freestack dependencies).

Every library gets the same fast tokenizer and is asked for the same thing, the model server's settings:
compact JSON (no whitespace between tokens), an object's properties in the schema's order (its keys sorted,
as freestack compiles it), the end-of-text token allowed once the text is complete. For each schema of :mod:`bench.structured.schemas`:

- compile: the schema's text to a matcher ready for the first step, each time from scratch (no cache);
- matcher: a new matcher from the compiled grammar (what each request costs once the grammar is kept);
- mask: the walk over the instance's tokens on a new matcher: at each step the next-token bitmask (one bit
  a token, int32 words, the layout all three write) is filled, the instance's token is checked against it
  and the matcher advanced with it; only the fill is timed. The last step's mask must allow end-of-text.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import time
from pathlib import Path

from pydantic import BaseModel

from bench.structured.schemas import Case, cases
from bench.structured.tokenizer import load

COMPACT = {"whitespace_flexible": False}
ANY_OBJECT = {"type": "object"}


class Llguidance:
    """llguidance: ``LLMatcher`` over the JSON schema's grammar, as ``freestack.ml.lm.constrained`` uses it."""

    dist = "llguidance"

    def __init__(self, tok, eos: int):
        from llguidance.hf import from_tokenizer

        self.table = from_tokenizer(tok, n_vocab=len(tok), eos_token=[eos])

    def compile(self, schema: str):
        from llguidance import LLMatcher

        text = LLMatcher.grammar_from_json_schema(schema, defaults=COMPACT)
        error = LLMatcher.validate_grammar(text, self.table)
        if error:
            raise ValueError(error)
        return text

    def matcher(self, compiled):
        from llguidance import LLMatcher

        return LLMatcher(self.table, compiled)

    def fill(self, matcher, mask) -> None:
        # the library's own call: freestack's (llguidance.torch.fill_next_token_bitmask) checks the tensor
        # in Python first, about 3 us more
        matcher.unsafe_compute_mask_ptr(mask.data_ptr(), mask.numel() * 4)

    def advance(self, matcher, token: int) -> bool:
        return matcher.consume_token(token)


class Xgrammar:
    """xgrammar: ``GrammarCompiler.compile_json_schema`` (its cache off) and ``GrammarMatcher``."""

    dist = "xgrammar"

    def __init__(self, tok, eos: int):
        import xgrammar as xgr

        self.xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok), stop_token_ids=[eos])
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)

    def compile(self, schema: str):
        # strict_mode off: JSON Schema's meaning, where an object without "additionalProperties" takes any
        # other property (strict, {"type": "object"} would only allow {}). Its rules for an open value write
        # ", " between items whatever the separators: compact JSON there needs any_whitespace (which lets
        # blanks in between too)
        compact = json.loads(schema) != ANY_OBJECT
        return self.compiler.compile_json_schema(
            schema, any_whitespace=not compact, separators=(",", ":") if compact else None, strict_mode=False
        )

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def fill(self, matcher, mask) -> None:
        matcher.fill_next_token_bitmask(mask, 0)

    def advance(self, matcher, token: int) -> bool:
        return matcher.accept_token(token)


def byte_decoder() -> dict[str, int]:
    """The byte each character of a byte-level BPE token stands for (GPT-2's printable mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


class OutlinesCore:
    """outlines-core: the schema's regex (``build_regex_from_schema``) compiled to an ``Index`` over the
    vocabulary (the token bytes of each token), walked by a ``Guide``."""

    dist = "outlines_core"

    def __init__(self, tok, eos: int):
        from outlines_core import Vocabulary

        decode, tokens = byte_decoder(), {}
        for text, token in tok.get_vocab().items():
            if token != eos:
                tokens.setdefault(bytes(decode[c] for c in text), []).append(token)
        self.vocabulary = Vocabulary(eos, tokens)

    def compile(self, schema: str):
        from outlines_core import Index
        from outlines_core.json_schema import build_regex_from_schema

        return Index(build_regex_from_schema(schema, whitespace_pattern=""), self.vocabulary)

    def matcher(self, compiled):
        from outlines_core import Guide

        return Guide(compiled)

    def fill(self, matcher, mask) -> None:
        matcher.write_mask_into(mask.data_ptr(), mask.numel(), 4)

    def advance(self, matcher, token: int) -> bool:
        matcher.advance(token, return_tokens=False)
        return True


ENGINES = {"llguidance": Llguidance, "xgrammar": Xgrammar, "outlines_core": OutlinesCore}


class SchemaResult(BaseModel):
    """One schema's samples: compile and matcher milliseconds per repeat; the mask fill's microseconds at
    each step of the walk (the median over the walks) and pooled over every step of every walk."""

    tokens: int
    compile_ms: list[float]
    matcher_ms: list[float]
    mask_us_by_step: list[float]
    mask_us_median: float
    mask_us_mean: float
    mask_us_p99: float
    answer_ms: float  #: the fills of one walk added up (the median over the walks)
    steps: int  #: mask fills timed (walks x (tokens + 1))


class Pooled(BaseModel):
    """The mask fill over every step of every walk of some schemas."""

    median_us: float
    mean_us: float
    p99_us: float
    steps: int


class Footprint(BaseModel):
    """Size on disk of the library and of what it pulls in (its requirements, all the way down), as
    installed in this environment; ``added_mib``: what it adds to an environment that has torch and
    transformers already (the model server's)."""

    own_mib: float
    requires: dict[str, float]  #: each distribution it pulls in, MiB
    total_mib: float
    added: list[str]
    added_mib: float


class EngineResult(BaseModel):
    engine: str
    version: str
    table_s: float  #: the tokenizer's token table, built once
    first_mask_s: float  #: the first mask of the process (a throwaway grammar): what is left of the table
    schemas: dict[str, SchemaResult]
    pooled: dict[str, Pooled]  #: "all" schemas, the five "fixed" ones, and "any_object"
    footprint: Footprint


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest rank."""
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, max(0, round(q * len(ranked)) - 1))]


def walk(engine, compiled, tokens: list[int], eos: int, mask) -> list[float]:
    """The mask fill's microseconds at each step of one walk over ``tokens``, then the end."""
    matcher, took = engine.matcher(compiled), []
    for step, token in enumerate([*tokens, eos]):
        started = time.perf_counter_ns()
        engine.fill(matcher, mask)
        took.append((time.perf_counter_ns() - started) / 1000)
        if not (int(mask[0, token >> 5]) >> (token & 31)) & 1:
            raise RuntimeError(f"{engine.dist}: token {token} (step {step}) is not allowed by its mask")
        if token != eos and not engine.advance(matcher, token):
            raise RuntimeError(f"{engine.dist}: token {token} (step {step}) was refused")
    return took


def measure(engine, case: Case, tok, repeats: int, walks: int) -> tuple[SchemaResult, list[float]]:
    """One schema: ``repeats`` compiles and matchers, ``walks`` walks; its result and every fill time."""
    import torch

    compile_ms, matcher_ms = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        compiled = engine.compile(case.schema_text)
        engine.matcher(compiled)
        compiled_at = time.perf_counter()
        engine.matcher(compiled)
        compile_ms.append(round((compiled_at - started) * 1000, 3))
        matcher_ms.append(round((time.perf_counter() - compiled_at) * 1000, 3))
    tokens = tok.encode(case.instance_text, add_special_tokens=False)
    mask = torch.zeros((1, (len(tok) + 31) // 32), dtype=torch.int32)
    runs = [walk(engine, compiled, tokens, tok.eos_token_id, mask) for _ in range(walks)]
    every = [t for run in runs for t in run]
    return SchemaResult(
        tokens=len(tokens),
        compile_ms=compile_ms,
        matcher_ms=matcher_ms,
        mask_us_by_step=[round(statistics.median(step), 2) for step in zip(*runs, strict=True)],
        mask_us_median=round(statistics.median(every), 2),
        mask_us_mean=round(statistics.fmean(every), 2),
        mask_us_p99=round(percentile(every, 0.99), 2),
        answer_ms=round(statistics.median(sum(run) for run in runs) / 1000, 3),
        steps=len(every),
    ), every


def pooled(times: list[float]) -> Pooled:
    return Pooled(
        median_us=round(statistics.median(times), 2),
        mean_us=round(statistics.fmean(times), 2),
        p99_us=round(percentile(times, 0.99), 2),
        steps=len(times),
    )


def _dist_mib(dist: importlib.metadata.Distribution) -> float:
    paths = (Path(dist.locate_file(f)) for f in dist.files or [])
    return sum(p.stat().st_size for p in paths if p.is_file()) / (1 << 20)


def requirements(names: list[str]) -> set[str]:
    """``names`` and every distribution they require, all the way down (extras left out), normalized."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in importlib.metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def footprint(dist: str, base: tuple[str, ...] = ("torch", "transformers")) -> Footprint:
    """The library's :class:`Footprint` in this environment."""
    from packaging.utils import canonicalize_name

    own = canonicalize_name(dist)
    sizes = {
        name: round(_dist_mib(importlib.metadata.distribution(name)), 1) for name in requirements([dist])
    }
    added = sorted(sizes.keys() - requirements(list(base)))
    return Footprint(
        own_mib=sizes[own],
        requires={name: mib for name, mib in sorted(sizes.items()) if name != own},
        total_mib=round(sum(sizes.values()), 1),
        added=added,
        added_mib=round(sum(sizes[name] for name in added), 1),
    )


def warm_up(engine, tok) -> float:
    """Seconds of the process's first mask fill, on a grammar of its own: work a library defers from
    building its token table to its first use (llguidance), paid once per tokenizer, not per step."""
    import torch

    mask = torch.zeros((1, (len(tok) + 31) // 32), dtype=torch.int32)
    matcher = engine.matcher(engine.compile('{"type": "array", "items": {"type": "integer"}}'))
    started = time.perf_counter()
    engine.fill(matcher, mask)
    return time.perf_counter() - started


def run(name: str, tokenizer: str, repeats: int, walks: int) -> EngineResult:
    tok = load(tokenizer)
    started = time.perf_counter()
    engine = ENGINES[name](tok, tok.eos_token_id)
    table_s = time.perf_counter() - started
    first_mask_s = warm_up(engine, tok)
    schemas, times = {}, {}
    for case in cases():
        schemas[case.name], times[case.name] = measure(engine, case, tok, repeats, walks)
    fixed = [t for name, each in times.items() if name != "any_object" for t in each]
    return EngineResult(
        engine=name,
        version=importlib.metadata.version(engine.dist),
        table_s=round(table_s, 3),
        first_mask_s=round(first_mask_s, 3),
        schemas=schemas,
        pooled={
            "all": pooled([t for each in times.values() for t in each]),
            "fixed": pooled(fixed),
            "any_object": pooled(times["any_object"]),
        },
        footprint=footprint(engine.dist),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.structured.engines", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--engine", choices=sorted(ENGINES), required=True)
    ap.add_argument("--tokenizer", required=True, help="the tokenizer.json to load")
    ap.add_argument("--repeats", type=int, default=10, help="compiles per schema")
    ap.add_argument("--walks", type=int, default=20, help="walks over each instance")
    args = ap.parse_args(argv)
    print(run(args.engine, args.tokenizer, args.repeats, args.walks).model_dump_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
