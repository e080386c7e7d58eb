"""The model server's generation engine (freestack.ml.lm.engine) on transformers' continuous batching,
with a registered tiny generation version (tests.support.generation_serving): greedy answers equal plain
``generate``'s, requests with other settings share the running batch, stop strings cut the answer and its
stream, a short request is answered while a long one runs, a client that leaves frees its slot, and the
limit refuses the request past it."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import torch

from bench.structured.schemas import SCHEMAS as BENCH_SCHEMAS
from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.engine import Busy, Engine, StopText
from freestack.ml.lm.prompts import eos_ids, prompt_ids
from freestack.ml.lm.sampling import _completion
from tests.support.generation_serving import SMOKE_PROMPTS, make_generation_version

PROMPTS = [*SMOKE_PROMPTS, "Name a colour.", "Count to three.", "What is 9 - 4?", "Spell cat."]


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    work = tmp_path_factory.mktemp("engine")
    return make_generation_version((work / "storage").as_uri(), "chat", "v1", work)


@pytest.fixture(scope="module")
def run():
    """One event loop for the module, as a server has (the manager's thread answers on it until it stops)."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


@pytest.fixture(scope="module")
def engine(version, run):
    torch.set_num_threads(1)
    e = Engine(version.model, version.tokenizer, eos=eos_ids(version.tokenizer), max_requests=64)
    e.start()
    yield e
    e.stop()  # before the loop closes


def _ids(version, prompt: str, settings: GenerationSettings) -> list[int]:
    return prompt_ids(version.tokenizer, [version.chat(prompt)], settings)[0][0]


def _settings(**kw) -> GenerationSettings:
    return GenerationSettings(max_prompt_tokens=96, **kw)


async def _all(engine, version, settings_of):
    jobs = [engine.complete(_ids(version, p, settings_of(i)), settings_of(i)) for i, p in enumerate(PROMPTS)]
    return await asyncio.gather(*jobs)


def test_greedy_answers_equal_plain_generate_while_sampled_requests_share_the_batch(engine, version, run):
    greedy = _settings(max_new_tokens=12)
    sampled = _settings(max_new_tokens=12, temperature=1.5, top_p=0.9)
    answers = run(_all(engine, version, lambda i: greedy if i % 2 == 0 else sampled))
    expected = version.alone([version.chat(p) for p in PROMPTS], max_new_tokens=12)
    plain = version.answer([version.chat(p) for p in PROMPTS], max_new_tokens=12)
    for i, (got, want, one) in enumerate(zip(answers, expected, plain, strict=True)):
        if i % 2 == 0:  # greedy, in a batch with sampled requests
            assert got.text.strip() == want
            assert (got.completion_tokens, got.finish_reason) == (one.completion_tokens, one.finish_reason)
        assert got.prompt_tokens == one.prompt_tokens


def test_the_end_of_turn_token_counts_as_generate_counts_it(version):
    """completion_tokens counts the end-of-turn token the model produced, as ``generate`` (whose output holds
    it) and OpenAI's usage count it, in the engine and in the batch path alike; the text ends before it."""
    tok, eos = version.tokenizer, eos_ids(version.tokenizer)[0]
    word = tok.encode("cat", add_special_tokens=False)
    said = tok.decode(word, skip_special_tokens=True).strip()
    text = StopText(tok, (), [eos])
    assert (text.count([*word, eos, eos]), text.count(word)) == (len(word) + 1, len(word))
    assert text.add([*word, eos]).strip() == said
    done = _completion(tok, [*word, eos, eos], [eos], eos, 3, False, _settings())
    assert (done.completion_tokens, done.finish_reason, done.text) == (len(word) + 1, "stop", said)


def test_a_stop_string_ends_the_answer_and_the_stream_never_shows_part_of_it(engine, version, run):
    full = run(engine.complete(_ids(version, PROMPTS[0], _settings()), _settings(max_new_tokens=16)))
    assert len(full.text) > 4
    stop = full.text[3:5]
    settings = _settings(max_new_tokens=16, stop=(stop,))

    async def pieces():
        return [p async for p in engine.stream(_ids(version, PROMPTS[0], settings), settings)]

    got = run(pieces())
    text = "".join(p.text for p in got)
    assert text == full.text[: full.text.index(stop)]
    assert got[-1].finish_reason == "stop" and all(p.finish_reason is None for p in got[:-1])
    assert engine.active == 0


def test_a_short_request_is_answered_while_a_long_one_runs(engine, version, run):
    """The short request is sent once the long one has its first token (not after a fixed sleep, which a
    fast machine outran: the long answer was done before the short one was sent); it ends before the
    long one's last token arrives."""
    long, short = _settings(max_new_tokens=60), _settings(max_new_tokens=2)

    async def race():
        started, arrivals = asyncio.Event(), []

        async def read_long():
            async for piece in engine.stream(_ids(version, PROMPTS[1], long), long):
                arrivals.append((time.perf_counter(), piece.finish_reason))
                started.set()

        task = asyncio.create_task(read_long())
        await started.wait()
        await engine.complete(_ids(version, PROMPTS[1], short), short)
        short_end = time.perf_counter()
        await task
        return short_end, arrivals

    short_end, arrivals = run(race())
    assert arrivals[-1][1] == "length"  # the long answer ran its 60 tokens
    assert short_end < arrivals[-1][0]


def test_a_client_that_leaves_frees_its_slot_and_the_log_says_so(engine, version, run, caplog):
    settings = _settings(max_new_tokens=60)

    async def leave():
        stream = engine.stream(_ids(version, PROMPTS[2], settings), settings)
        await anext(stream)
        assert engine.active == 1
        await stream.aclose()

    with caplog.at_level(logging.INFO, logger="freestack.serving"):
        run(leave())
    assert engine.active == 0
    assert "its client left" in caplog.text
    answer = run(engine.complete(_ids(version, PROMPTS[0], _settings()), _settings(max_new_tokens=4)))
    assert answer.completion_tokens >= 1  # the engine goes on serving


def test_the_request_past_the_limit_is_refused_with_the_limit(version, run):
    e = Engine(version.model, version.tokenizer, eos=eos_ids(version.tokenizer), max_requests=2)
    e.start()
    settings = _settings(max_new_tokens=40)

    async def crowd():
        streams = [e.stream(_ids(version, p, settings), settings) for p in PROMPTS[:3]]
        await anext(streams[0])
        await anext(streams[1])
        with pytest.raises(Busy, match="limit"):
            await anext(streams[2])
        for s in streams[:2]:
            await s.aclose()

    try:
        run(crowd())
        assert e.active == 0
    finally:
        e.stop()


def test_a_prompt_of_no_tokens_never_reaches_the_manager(engine, version, run):
    """The server refuses it first (a 400); the engine too, and goes on answering."""
    with pytest.raises(ValueError, match="0 tokens"):
        run(engine.complete([], _settings(max_new_tokens=4)))
    assert engine.active == 0 and engine.alive() and engine.failure() is None
    assert run(engine.complete(_ids(version, PROMPTS[0], _settings()), _settings(max_new_tokens=4))).text


def test_the_librarys_log_lines_keep_their_level(engine, caplog):
    """transformers' continuous-batching logger prints to stderr by itself (a task's log shows that as
    errors): a started engine routes it through logging, where its INFO lines stay INFO."""
    from freestack.ml.lm.engine import LIBRARY_LOGGER

    library = logging.getLogger(LIBRARY_LOGGER)
    assert library.propagate and not library.handlers
    with caplog.at_level(logging.INFO, logger=LIBRARY_LOGGER):
        library.info("a line of the library")
    (record,) = [r for r in caplog.records if r.name == LIBRARY_LOGGER]
    assert record.levelname == "INFO"


def test_stop_text_holds_back_what_could_become_a_stop_string(version):
    tok = version.tokenizer
    text = StopText(tok, ["END"], eos=[])
    ids = tok("abc EN", add_special_tokens=False)["input_ids"]
    sent = text.add(ids)
    assert sent == "abc " and not text.stopped
    more = tok("abc END tail", add_special_tokens=False)["input_ids"]
    assert sent + text.add(more) == "abc " and text.stopped


def test_requests_of_other_adapters_take_turns_and_leave_nothing_running(engine, version, run):
    switched: list[str] = []
    engine.activate, engine.adapter = switched.append, "a"
    settings = _settings(max_new_tokens=6)

    async def mixed():
        jobs = [
            engine.complete(_ids(version, p, settings), settings, adapter="a" if i % 2 else "b")
            for i, p in enumerate(PROMPTS)
        ]
        return await asyncio.gather(*jobs)

    try:
        answers = run(mixed())
        assert all(a.completion_tokens >= 1 for a in answers)
        # turns, not a switch a request
        assert switched and switched[0] == "b" and len(switched) <= 3, switched
        assert (engine.running, len(engine.waiting), engine.active) == (0, 0, 0)
        run(engine.complete(_ids(version, PROMPTS[0], settings), settings, adapter="a"))
        assert engine.running == 0
    finally:
        engine.activate, engine.adapter = None, None


#: five schemas whose answers are bounded (strings and lists capped, numbers ranged), so that a random
#: model finishes each within MAX_JSON_TOKENS: validity then has nothing to do with the weights (the same
#: schemas bench/structured compiles and walks)
SCHEMAS = [schema for name, schema in BENCH_SCHEMAS.items() if name != "any_object"]
MAX_JSON_TOKENS = 64


def test_every_constrained_answer_validates_against_its_schema_beside_free_requests(engine, version, run):
    """100 prompts under each of 5 schemas, greedy and sampled, while unconstrained requests share the
    engine: every answer parses and validates against its schema, ends with "stop", and the free requests
    still get plain ``generate``'s answers."""
    import json

    import jsonschema

    prompts = [f"Tell me about thing number {i}." for i in range(100)]
    greedy, sampled = (
        _settings(max_new_tokens=MAX_JSON_TOKENS),
        _settings(max_new_tokens=MAX_JSON_TOKENS, temperature=1.0, top_p=0.95),
    )

    async def everything():  # 50 prompts a request: the engine's limit is 64 requests
        free = [engine.complete(_ids(version, p, greedy), _settings(max_new_tokens=12)) for p in PROMPTS]
        answers, free = [], asyncio.gather(*free)
        for schema in SCHEMAS:
            for half, settings in ((prompts[:50], greedy), (prompts[50:], sampled)):
                ids = [(_ids(version, p, settings), False) for p in half]
                got = await engine.complete_all(ids, settings, grammar=engine.grammar(schema))
                answers += [(schema, a) for a in got]
        return answers, await free

    t0 = time.perf_counter()
    constrained, free = run(everything())
    print(f"500 constrained answers in {time.perf_counter() - t0:.1f} s")
    assert len(constrained) == 500
    for schema, answer in constrained:
        jsonschema.validate(json.loads(answer.text), schema)
        assert list(json.loads(answer.text)) == list(schema["properties"])  # in the order the schema gives
        assert answer.finish_reason == "stop", answer
        assert answer.queued is not None and answer.queued >= 0  # its wait for generate beside the batch
    expected = version.alone([version.chat(p) for p in PROMPTS], max_new_tokens=12)
    assert [a.text.strip() for a in free] == expected
    assert engine.active == 0


def test_a_request_of_many_prompts_runs_a_few_at_a_time_with_the_same_answers(engine, version, run):
    """max_running_per_request: one request's prompts join the batch a few at a time (the others as those
    end), so a small request beside it shares the batch with a few of them, not all; the answers are the
    same."""
    settings = _settings(max_new_tokens=6)
    ids = [(_ids(version, p, settings), False) for p in PROMPTS + PROMPTS]
    alone = run(engine.complete_all(ids, settings))
    engine.share, seen = 3, []

    async def watched():
        async def watch():
            while True:
                seen.append(engine.running)
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        try:
            return await engine.complete_all(ids, settings)
        finally:
            watcher.cancel()

    try:
        shared = run(watched())
    finally:
        engine.share = None
    assert [a.text for a in shared] == [a.text for a in alone] and max(seen) == 3
    # each answer says how long it queued: the last prompts waited for their share of the batch
    assert all(a.queued is not None and a.queued >= 0 for a in shared + alone)
    assert shared[-1].queued > max(a.queued for a in shared[:3])
