"""Batch generation: a text-generation version answers one day's prompt rows into the day's part.

    <output>/part.parquet   key, ds, completion, finish_reason, prompt_tokens, completion_tokens, truncated,
                            version, scored_at (the manifest in its footer, as :mod:`freestack.score.published`)

The day is read, quarantined, published whole and recorded as :func:`freestack.score.core.score` does for
every version; this module is what differs for a text-generation one. Each row's prompt is built as the
model server builds it: the version's chat columns (a prompt column is one user turn; a messages column
is a JSON chat), its system prompt first (``ChatColumns.with_system``), the chat template's token ids
(:func:`freestack.ml.lm.prompts.prompt_ids`, cut from the left or refused over the prompt budget). The
answers come from the server's own continuous batching (:class:`freestack.ml.lm.engine.Engine`: one engine
for the task, started once, every row's ``complete`` awaited on one event loop, at most
``score.generation.max_requests`` at a time, stopped at the end whatever happens) or from ``generate`` in
length-sorted, left-padded batches (faster on a CPU: ``score.generation.batching``). Decoding is greedy,
so each answer (its text stripped, as the server answers) equals the served one at temperature 0.

A row with no prompt (null, empty), a messages value that is not a JSON chat, or a prompt over the budget
when ``truncate`` is ``refuse`` goes to the day's quarantine with the reason; the others are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from freestack.errors import ScoreError
from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.chat import ChatError, parse_messages
from freestack.ml.lm.engine import Engine
from freestack.ml.lm.prompts import PromptTooLong, eos_ids, prompt_ids
from freestack.ml.lm.sampling import generate_ids
from freestack.score import core
from freestack.score.day import SAMPLE_ROWS, key_type, manifest_of, read_day
from freestack.score.published import FOOTER_KEY
from freestack.score.rows import Counts, Quarantine
from freestack.score.spec import GenerationScore

if TYPE_CHECKING:
    import pyarrow as pa

    from freestack.score.model import ScoringModel
    from freestack.score.rows import Piece
    from freestack.spec import PipelineSpec

#: what a text-generation version's scores hold beside the key and ds (then version, scored_at)
COLUMNS = ("completion", "finish_reason", "prompt_tokens", "completion_tokens", "truncated")


def generation_of(spec: PipelineSpec) -> GenerationScore:
    """The spec's ``score.generation`` (its defaults when the block leaves it out)."""
    return spec.score.generation or GenerationScore()


def settings_for(spec: PipelineSpec, model: ScoringModel):
    """The :class:`freestack.ml.lm.answers.GenerationSettings` of every row: greedy, ``max_new_tokens``, and
    the prompt budget the model server gives the same request (``max_prompt_tokens``, else the version's
    max_length, and room for the answer within the model's positions)."""
    g = generation_of(spec)
    budget = g.max_prompt_tokens or int(model.model.max_length)
    context = _context(getattr(model.model.model, "config", None))
    if context is not None:
        if context - g.max_new_tokens < 1:
            raise ScoreError(
                f"score.generation.max_new_tokens {g.max_new_tokens} leaves no room for a prompt in the "
                f"model's context of {context} tokens: ask for fewer"
            )
        budget = min(budget, context - g.max_new_tokens)
    return GenerationSettings(
        max_new_tokens=g.max_new_tokens, temperature=0.0, max_prompt_tokens=budget, truncate=g.truncate
    )


def _context(config: Any) -> int | None:
    """The model's position limit (``n_positions`` or ``max_position_embeddings``); None: no limit."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class _Tally:
    """What the manifest says of a day's answers beside the rows: why they ended, their tokens."""

    def __init__(self) -> None:
        self.finish: Counter[str] = Counter()
        self.prompt_tokens = self.completion_tokens = self.truncated = 0

    def add(self, completions: list) -> None:
        for c in completions:
            self.finish[c.finish_reason] += 1
            self.prompt_tokens += c.prompt_tokens
            self.completion_tokens += c.completion_tokens
            self.truncated += bool(c.truncated)

    def as_dict(self) -> dict[str, Any]:
        return {
            "finish_reasons": dict(self.finish),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "truncated": self.truncated,
        }


def score(
    spec: PipelineSpec,
    job: dict[str, Any],
    run: dict[str, str] | None = None,
    model: ScoringModel | None = None,
) -> dict[str, Any]:
    """Answer ``job``'s day (from :func:`freestack.score.core.plan`) and publish it whole, as
    :func:`freestack.score.core.score` publishes a scored day; returns the manifest."""
    return core.score(spec, job, run, model, write=write_answers)


def write_answers(
    spec: PipelineSpec, job: dict[str, Any], model: ScoringModel, part_w, quar_w, run: dict[str, str] | None
) -> tuple[Counts, dict[str, Any]]:
    """Answer every input row into the part's and the quarantine's temporaries (their Parquet writers
    closed, the part's footer holding the manifest): :func:`freestack.score.core.score`'s writer for a
    text-generation version. The engine is started once and stopped at the end, also on an error."""
    import pyarrow.parquet as pq

    if not model.generative:
        raise ScoreError(
            f"{job['version']} is not a text-generation version ({model.pre.task}), but {spec.name}'s model "
            "is: name a version this pipeline trained in score.version",
            ds=job["ds"],
        )
    g, settings = generation_of(spec), settings_for(spec, model)
    counts, tally, at = Counts(), _Tally(), datetime.now(UTC)
    quar = Quarantine(quar_w, spec, counts)
    writer = pq.ParquetWriter(part_w, output_schema(spec, job), compression="zstd")
    with answerer(g, model, settings) as (complete, ran):

        def answer(piece: Piece) -> None:
            answered = _answer_piece(complete, model, settings, piece, quar)
            if answered is not None:
                keys, rows, done = answered
                writer.write_batch(answers_batch(keys, done, job, at, writer.schema))
                counts.rows_scored += len(done)
                tally.add(done)
                if spec.score.monitor:
                    _keep_sample(counts, model, piece, rows, done, job["ds"])

        try:
            cap = lambda n: check_cap(job["ds"], n, g.max_rows, "score.generation.max_rows")  # noqa: E731
            read_day(spec, job, counts, quar, answer, cap)
            manifest = manifest_of(spec, job, counts, model, at, run, part_w.path.parent)
            budget = {"max_prompt_tokens": settings.max_prompt_tokens, "batching_ran": ran}
            manifest.update(
                columns=list(COLUMNS), generation={**g.model_dump(), **budget}, answers=tally.as_dict()
            )
            writer.add_key_value_metadata({FOOTER_KEY: json.dumps(manifest).encode()})
        finally:
            writer.close()
            quar.close()
    return counts, manifest


def check_cap(ds: str, rows: int, cap: int, field: str) -> None:
    """A day over its cap of prompt rows (the spec's ``field``) fails before its rows past the cap are
    answered (and nothing of it is published)."""
    if rows > cap:
        raise ScoreError(
            f"{ds}: more than {cap} prompt rows, over {field}: nothing was published. "
            "Raise the cap, or split the day's input",
            ds=ds,
        )


def row_chat(columns, value: Any) -> list[dict[str, str]]:
    """A row's chat as the model server builds a request's: its ``messages`` column's JSON chat, or its
    prompt as one user turn, the system prompt first; ChatError for a value that is neither."""
    name = columns.input_column
    if columns.messages:
        return columns.with_system(parse_messages(value, f"column {name!r}"))
    if not isinstance(value, str) or not value.strip():
        raise ChatError(f"column {name!r}: no prompt (a missing or empty value)")
    return columns.with_system([{"role": "user", "content": value}])


def output_schema(spec: PipelineSpec, job: dict[str, Any]) -> pa.Schema:
    import pyarrow as pa

    key = spec.source.schema_.key or "row"
    return pa.schema(
        [
            pa.field(key, key_type(spec, job)),
            pa.field("ds", pa.string()),
            pa.field("completion", pa.string()),
            pa.field("finish_reason", pa.string()),
            pa.field("prompt_tokens", pa.int32()),
            pa.field("completion_tokens", pa.int32()),
            pa.field("truncated", pa.bool_()),
            pa.field("version", pa.string()),
            pa.field("scored_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def prompts_of(model: ScoringModel, settings, batch: pa.RecordBatch) -> tuple[dict[int, Any], dict[int, str]]:
    """Each row's prompt token ids and whether they were cut (by position), and the other rows' reasons:
    the row's chat as the model server builds a request's (the system prompt first), rendered with the
    chat template (and the version's tools) and checked against the prompt budget."""
    columns = model.model.columns
    good, bad = {}, {}
    for i, value in enumerate(batch.column(columns.input_column).to_pylist()):
        try:
            good[i] = prompt_ids(model.tokenizer, [row_chat(columns, value)], settings, columns.tools)[0]
        except PromptTooLong as exc:
            bad[i] = (
                f"the prompt is {exc.tokens} tokens with the chat template, over the limit of {exc.limit} "
                "(score.generation.max_prompt_tokens, truncate: refuse)"
            )
        except ChatError as exc:
            bad[i] = str(exc)[:500]
    return good, bad


@contextlib.contextmanager
def answerer(g: GenerationScore, model: ScoringModel, settings) -> Iterator[tuple[Callable, str]]:
    """What answers a list of prompts (token ids, cut), and which batching it is (``score.generation.
    batching``; ``auto``: padded on a CPU, where plain ``generate`` is faster than continuous batching,
    continuous on an accelerator). The continuous engine is started once, stopped at the end whatever
    happens."""
    lm, tok = model.model.model, model.tokenizer
    eos = eos_ids(tok, model.generation_config)
    ran = g.batching if g.batching != "auto" else ("padded" if lm.device.type == "cpu" else "continuous")
    if ran == "padded":
        yield (lambda prompts: _padded(lm, tok, prompts, settings, eos, g.batch_size)), ran
        return
    engine = Engine(
        lm,
        tok,
        eos=eos,
        max_requests=g.max_requests,
        kv_cache_tokens=g.kv_cache_tokens,
        max_batch_tokens=g.max_batch_tokens,
    )
    engine.start()
    try:
        with asyncio.Runner() as loop:  # one event loop for the engine's life
            yield (lambda prompts: loop.run(_complete(engine, prompts, settings, g.max_requests))), ran
    finally:
        engine.stop()


def _padded(lm, tok, prompts: list[tuple[list[int], bool]], settings, eos: list[int], size: int) -> list:
    """Every prompt's answer by ``generate``, in left-padded batches of ``size`` prompts of near lengths
    (sorted by length: less padding), in the prompts' order."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][0]))
    done: list = [None] * len(prompts)
    with torch.inference_mode():
        for k in range(0, len(order), size):
            batch = order[k : k + size]
            for i, answer in zip(
                batch, generate_ids(lm, tok, [prompts[i] for i in batch], settings, eos), strict=True
            ):
                done[i] = answer
    return done


def _answer_piece(complete: Callable, model, settings, piece: Piece, quar: Quarantine):
    """The answers to a piece's rows (their keys and completions, in row order), the rows refused
    quarantined; None when no row of it is answered."""
    import numpy as np

    good, bad = prompts_of(model, settings, piece.batch)
    if bad:
        quar.write(piece.refused(bad))
    if not good:
        return None
    rows = sorted(good)
    done = complete([good[i] for i in rows])
    keys = piece.keys.take(np.asarray(rows)) if bad else piece.keys
    return keys, rows, done


def _keep_sample(
    counts: Counts, model: ScoringModel, piece: Piece, rows: list[int], done: list, ds: str
) -> None:
    """Up to :data:`SAMPLE_ROWS` evenly spaced answered rows of a piece, as the model server logs a request
    (the prompt column's value, its answer stripped as served), stamped with the day: ``<p>_monitor`` judges
    batch-generated days as it judges served traffic."""
    import numpy as np

    values = piece.batch.column(model.model.columns.input_column).to_pylist()
    picked = np.linspace(0, len(rows) - 1, min(len(rows), SAMPLE_ROWS)).astype(int).tolist()
    prompts = [v if isinstance(v, str) else json.dumps(v) for v in (values[rows[i]] for i in picked)]
    answers = [replace(done[i], text=done[i].text.strip()) for i in picked]
    at = datetime.fromisoformat(ds).replace(tzinfo=UTC) + timedelta(seconds=len(counts.sample))
    counts.sample.append((at, f"score-{ds}-{len(counts.sample)}", prompts, answers))


async def _complete(engine, prompts: list[tuple[list[int], bool]], settings, limit: int) -> list:
    """Every prompt's whole answer from the engine, at most ``limit`` generating at once."""
    gate = asyncio.Semaphore(limit)

    async def one(ids: list[int], cut: bool):
        async with gate:
            return await engine.complete(ids, settings, truncated=cut)

    return list(await asyncio.gather(*(one(ids, cut) for ids, cut in prompts)))


def answers_batch(
    keys: pa.Array, done: list, job: dict[str, Any], at: datetime, schema: pa.Schema
) -> pa.RecordBatch:
    """The output batch: each answer's text stripped of surrounding whitespace, as the model server
    answers it."""
    import pyarrow as pa

    n = len(done)
    cols = {
        schema.names[0]: keys,
        "ds": pa.repeat(job["ds"], n),
        "completion": pa.array([c.text.strip() for c in done], pa.string()),
        "finish_reason": pa.array([c.finish_reason for c in done], pa.string()),
        "prompt_tokens": pa.array([c.prompt_tokens for c in done], pa.int32()),
        "completion_tokens": pa.array([c.completion_tokens for c in done], pa.int32()),
        "truncated": pa.array([bool(c.truncated) for c in done], pa.bool_()),
        "version": pa.repeat(job["version"], n),
        "scored_at": pa.repeat(pa.scalar(at, pa.timestamp("us", tz="UTC")), n),
    }
    return pa.RecordBatch.from_pydict(cols, schema=schema)


__all__ = [
    "COLUMNS",
    "answerer",
    "answers_batch",
    "check_cap",
    "generation_of",
    "score",
    "output_schema",
    "prompts_of",
    "row_chat",
    "settings_for",
    "write_answers",
]
