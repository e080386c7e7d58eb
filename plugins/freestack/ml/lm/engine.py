"""Continuous batching for a text-generation version: transformers' own ``ContinuousBatchingManager``
(``model.init_continuous_batching``, what ``transformers serve`` builds on), kept running for the life of
the model server, or of a scoring task (the same answers in both). No Airflow here.

A request joins the running batch between two decoding steps, so a long answer no longer holds a short
one back: the manager schedules every request's tokens itself (paged attention, one KV cache). What
this module adds around the library is what a server needs and the manager does not do:

- **Greedy and sampled requests in one batch.** The manager samples or not for all its requests
  (``do_sample`` is one setting), so it samples, with per-request processors
  (``ContinuousBatchingConfig(per_request_processors=True)``): a request at temperature 0 sends
  ``top_p`` :data:`GREEDY_TOP_P`, which keeps the most likely token alone, so its answer is the greedy
  one (equal to plain ``generate``'s at temperature 0, as the tests check).
- **Stop strings.** The manager stops at end-of-turn tokens and ``max_new_tokens`` only: the answer's
  text is decoded as tokens come (:class:`StopText`), cut at the first stop string, and the request
  is cancelled there. Streamed text never shows part of a stop string or half a character.
- **Adapters, one at a time.** The model may carry several LoRA adapters (peft's multi-adapter API): the
  manager runs one forward for all its requests, and peft's active adapter is the model's, not a
  request's, so requests of one adapter run together. A request for another adapter waits its turn
  (:meth:`Engine.stream`'s ``adapter``): once other adapters have requests waiting, new requests of the
  active one wait too; when the running ones are done, the adapter with the oldest waiting request is
  made active (``activate``, with the manager paused) and its requests start. A deployment that serves
  one version never waits.
- **A dead loop is started again, not hidden.** An error in transformers' generation thread ends its loop
  and fails the requests in it: each caller gets an :class:`EngineError` that says so (a 503), and
  :meth:`Engine.watch` starts a new loop on the same model at once (the model's weights are untouched),
  so the requests that come next are answered. Only a loop that keeps dying (:data:`RESTARTS` times in
  :data:`RESTART_WINDOW_S`) is told to the server, which stops being ready and restarts.
- **Fair to small requests.** The prompts of one request of many (:meth:`Engine.complete_all`) join the
  batch ``max_running_per_request`` at a time, the others as those end: every step of the batch costs
  each request in it, so a request of many prompts would otherwise slow every other client's tokens.
- **Bounds.** At most ``max_requests`` requests at once (:class:`Busy` past it: the server's 429 that says
  the limit); a caller that leaves has its request cancelled and its slot freed. The KV cache holds
  ``kv_cache_tokens`` (the manager would size it from the device's free memory: on a CPU, most of the
  machine's); requests past it wait in the manager's queue.

:meth:`Engine.stream` gives a request's text as it is generated; :meth:`Engine.complete`, the whole
answer (a :class:`freestack.ml.lm.answers.Completion`). Each call runs on the caller's event loop (one
loop for the engine's life); the manager's thread runs the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import torch

from freestack.ml.lm.answers import Completion, GenerationSettings, TokenLogprob
from freestack.ml.lm.constrained import Grammar, GrammarProcessor, json_grammar, vocab_of
from freestack.ml.lm.sampling import Logprobs, generate_ids

log = logging.getLogger("freestack.serving")

#: transformers' continuous-batching logger, which prints to stderr through a handler of its own (and a
#: task's log shows whatever reaches stderr as an error): routed through ``logging`` instead, at its levels
LIBRARY_LOGGER = "ContinuousBatchingLogger"
#: the ``top_p`` of a greedy request: only the most likely token is left to sample
GREEDY_TOP_P = 1e-9
#: the tokens of one page of the KV cache (transformers' default)
PAGE_TOKENS = 256
#: how many times a dying generation loop is started again within RESTART_WINDOW_S seconds before the engine
#: gives up (and the server restarts)
RESTARTS, RESTART_WINDOW_S = 3, 60.0
#: the sampling settings the manager is built with (a processor exists only for a setting away from its
#: neutral value); each request sends its own
_BUILT_WITH = {"temperature": 0.5, "top_p": 0.5}


class Busy(Exception):
    """The engine holds its most requests: the client should try again (429)."""

    def __init__(self, limit: int):
        super().__init__(
            f"the server is generating for {limit} requests, its limit (deploy.generation.max_requests): "
            "try again shortly"
        )
        self.limit = limit


class EngineError(Exception):
    """The manager failed a request (its thread died, or the request failed in it): a 503."""


@dataclass
class Piece:
    """Text to send as it comes (``text``), and at the end of an answer why it ended and its token counts."""

    text: str
    finish_reason: str | None = None  # stop | length, on the last piece
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None  # the new tokens', when asked for
    queued: float | None = None  # seconds from the request's arrival to the model starting on it
    tokens: list[int] | None = None  # on the last piece: the answer's tokens, its end of turn included


class StopText:
    """An answer's text as its tokens come: decoded whole each time (a token can end half a character),
    cut at the first stop string. :meth:`add` gives the text that is safe to send: never a tail that could
    still become a stop string, never a half character."""

    def __init__(self, tokenizer, stop: Sequence[str], eos: Sequence[int]):
        self.tokenizer, self.stop, self.eos = tokenizer, tuple(s for s in stop if s), set(eos)
        self.text, self.sent, self.stopped = "", 0, False

    def add(self, tokens: list[int]) -> str:
        """The new text to send, given every token generated so far."""
        self.text = self.tokenizer.decode(self._answer(tokens), skip_special_tokens=True)
        at = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if at >= 0:
            self.text, self.stopped = self.text[:at], True
            return self._send(len(self.text))
        safe = len(self.text) - self._held()
        return self._send(safe)

    def rest(self) -> str:
        """The text held back, at the end of the answer."""
        return self._send(len(self.text))

    def count(self, tokens: list[int]) -> int:
        """The answer's tokens, its end-of-turn token included (as ``generate`` and OpenAI count them)."""
        end = self.end(tokens)
        return len(tokens) if end is None else end + 1

    def end(self, tokens: list[int]) -> int | None:
        """Where the answer's end-of-turn token is, if it came."""
        return next((i for i, t in enumerate(tokens) if t in self.eos), None)

    def _answer(self, tokens: list[int]) -> list[int]:
        """The answer's text tokens: up to its end-of-turn token."""
        end = self.end(tokens)
        return tokens if end is None else tokens[:end]

    def _held(self) -> int:
        """How many characters at the end to hold back: a half character, or the start of a stop string."""
        if self.text.endswith("\ufffd"):
            return len(self.text) - self.sent
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _send(self, end: int) -> str:
        end = max(end, self.sent)
        out, self.sent = self.text[self.sent : end], end
        return out


class Engine:
    """One causal LM's continuous batching: started at load, stopped at shutdown."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        eos: Sequence[int],
        max_requests: int = 256,
        max_running_per_request: int | None = None,
        kv_cache_tokens: int = 16384,
        max_batch_tokens: int = 1024,
        top_k: int | None = None,
    ):
        self.model, self.tokenizer, self.eos = model, tokenizer, list(eos)
        self.max_requests, self.active = max(1, int(max_requests)), 0
        #: the most prompts of one :meth:`complete_all` in the batch at once (None: all)
        self.share = max_running_per_request
        #: the KV cache in pages of PAGE_TOKENS (the manager sizes it from the device's free memory otherwise:
        #: on a CPU, most of the machine's)
        self.pages = max(1, -(-int(kv_cache_tokens) // PAGE_TOKENS))
        self.max_batch_tokens = int(max_batch_tokens)
        #: sampled requests' top-k (None: the generation config's default, as ``generate``'s; 0: none)
        self.top_k = top_k
        self.manager = None
        #: the attention the manager switched the model to (its GRPO rollouts set it while they run)
        self.attention: str | None = None
        #: makes an adapter the model's active one (peft's ``set_adapter``); None: a model of one
        self.activate: Callable[[str], None] | None = None
        self.adapter: str | None = None  # the active adapter
        self.running = 0  # requests of the active adapter in the manager
        self.waiting: deque[tuple[str, asyncio.Future]] = deque()  # requests of other adapters, oldest first
        self.restarts: deque[float] = deque(maxlen=RESTARTS)  # when the loop was last started again
        self.watching = False  # a watch starts a dead loop again (requests wait for it a moment)
        self.stopped = False  # stop() was called: a loop that ends now is not started again
        self._swap = threading.Lock()  # one of stop() and a watch's restart() at a time

    def start(self) -> None:
        from transformers import ContinuousBatchingConfig, GenerationConfig

        _route_library_logs()
        self.stopped = False

        config = GenerationConfig(
            do_sample=True,
            eos_token_id=self.eos,
            pad_token_id=self.tokenizer.pad_token_id,
            max_new_tokens=16,
            **_BUILT_WITH,
            **({} if self.top_k is None else {"top_k": self.top_k}),
        )
        self.manager = self.model.init_continuous_batching(
            generation_config=config,
            continuous_batching_config=ContinuousBatchingConfig(
                per_request_processors=True,
                page_size=PAGE_TOKENS,
                num_blocks=self.pages,
                max_batch_tokens=self.max_batch_tokens,
            ),
        )
        self.manager.start()

    def stop(self) -> None:
        """Stop the loop for good (the server stopping, a run ending): a watch does not start it again."""
        self.stopped = True
        with self._swap:
            if self.manager is not None:
                self.manager.stop(block=True)
                self.manager = None

    def paused(self) -> contextlib.AbstractContextManager:
        """The generation loop paused while the model is used or changed on another thread (the library's
        ``manager.pause()``); nothing to pause while no loop runs (a dead one is being started again)."""
        return self.manager.pause() if self.alive() else contextlib.nullcontext()

    def admit(self, n: int) -> None:
        """Hold ``n`` of the limit's slots for requests about to start (:meth:`stream` with ``admitted``
        frees one each as it ends; :meth:`release` frees those that never started); Busy past the limit."""
        if self.active + n > self.max_requests:
            raise Busy(self.max_requests)
        self.active += n

    def release(self, n: int) -> None:
        self.active -= n

    def alive(self) -> bool:
        m = self.manager
        return m is not None and m.is_running() and m.background_thread_status.fatal_error is None

    def failure(self) -> str | None:
        """Why the engine stopped generating while it should run; None while it runs (or once stopped)."""
        m = self.manager
        if m is None:
            return None
        fatal = m.background_thread_status.fatal_error
        if fatal is not None:
            return f"{type(fatal).__name__}: {fatal}"
        return None if m.is_running() else "its generation thread ended"

    async def watch(self, on_failure: Callable[[str], None], every: float = 0.1) -> None:
        """Start the engine's loop again as soon as it has died while it should run (the requests in it
        have then been failed); call ``on_failure(why)`` once instead when it died :data:`RESTARTS` times
        within :data:`RESTART_WINDOW_S`. Return when the engine is stopped."""
        self.watching = True
        try:
            await self._watch(on_failure, every)
        finally:
            self.watching = False

    async def _watch(self, on_failure: Callable[[str], None], every: float) -> None:
        while self.manager is not None and not self.stopped:
            why = self.failure()
            if why is None:
                await asyncio.sleep(every)
                continue
            now = time.monotonic()
            if len(self.restarts) == RESTARTS and now - self.restarts[0] < RESTART_WINDOW_S:
                log.error(
                    "the generation engine died %d times in %.0f s: %s", RESTARTS + 1, RESTART_WINDOW_S, why
                )
                on_failure(why)
                return
            if self.stopped:  # the loop ended because the engine is stopping
                return
            log.error("the generation loop died (%s): its requests failed; starting it again", why)
            self.restarts.append(now)
            self.restart()

    async def _running(self, wait: float = 2.0) -> bool:
        """Whether the loop runs; while a watch is starting a dead one again, waited for (``wait`` s at most)."""
        deadline = time.monotonic() + wait
        while not self.alive() and self.watching and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.alive()

    def restart(self) -> None:
        """A new generation loop on the same model, in place of a dead one; none once :meth:`stop` was
        called (a loop that ends while the server stops is not dead)."""
        with self._swap:
            if self.stopped or self.manager is None:
                return
            dead, self.manager = self.manager, None
            try:
                dead.stop(block=True, timeout=5)
            except Exception as exc:  # noqa: BLE001 - a dead loop's own stop may fail: it is dropped all the same
                log.warning("stopping the dead generation loop: %s: %s", type(exc).__name__, exc)
            self.start()

    async def stream(
        self,
        ids: list[int],
        settings: GenerationSettings,
        request_id: str | None = None,
        *,
        live: bool = True,
        admitted: bool = False,
        adapter: str | None = None,
        grammar: Grammar | None = None,
        logprobs: int | None = None,
        arrived: float | None = None,
    ) -> AsyncIterator[Piece]:
        """The answer to one prompt's token ids (``settings``: :class:`freestack.ml.lm.
        GenerationSettings`) as it is generated; the last piece says why it ended. A caller that stops
        iterating (a client that left) cancels the request. ``live`` false: the manager hands over the
        whole answer only (stop strings still need every token). ``admitted``: its slot is held already.
        ``adapter``: the LoRA adapter to answer with (None: the active one). ``grammar``: the answer
        follows it (:meth:`grammar`); ``logprobs``: each token's log-probability and its step's most
        likely ``logprobs`` tokens come with the pieces. Those, and a sampled answer with a seed, are
        generated beside the batch (:class:`GenerateJob`). ``arrived``: when the request came
        (``time.perf_counter()``; now when not given): the pieces say how long it queued."""
        if not ids:  # the server refuses such a prompt first (400): one in the manager's batch ends its loop
            raise ValueError("a prompt of 0 tokens: there is nothing to generate from")
        if not admitted:
            self.admit(1)
        rid, arrived = request_id or uuid.uuid4().hex, (arrived, time.perf_counter())
        outputs: asyncio.Queue = asyncio.Queue()
        text, tokens = StopText(self.tokenizer, settings.stop, self.eos), []
        finished = done = started = failed = False
        delta, cancel, sent, queued = "", None, 0, None  # sent: the tokens whose log-probabilities went out
        try:
            await self._turn(adapter)
            started = True
            if not await self._running():
                failed = True
                raise EngineError("the generation engine is not running: the server is stopping or failed")
            job = GenerateJob(self, grammar, logprobs) if needs_apart(settings, grammar, logprobs) else None
            cancel = self._submit(ids, settings, rid, outputs.put_nowait, live, job)
            while not finished:
                out = await outputs.get()
                if out.error is not None:
                    failed = True
                    raise EngineError(f"generation failed in the engine: {out.error}")
                tokens, finished = out.generated_tokens, out.is_finished()
                queued = _queued(out, arrived, queued)
                delta = text.add(tokens)
                if text.stopped or finished:
                    break
                if delta:
                    yield Piece(delta, None, text.count(tokens), _new(out, sent), queued)
                    sent = len(tokens)
            ended = text.stopped or _turn_ended(text, tokens, job)  # a stop string or end of turn
            done, count = True, text.count(tokens)
            rest = None if job is None or logprobs is None else job.logprobs_of(sent, count)
            end = Piece(delta + text.rest(), "stop" if ended else "length", count, rest, queued)
            end.tokens = list(tokens[:count])
            yield end
        finally:
            self.active -= 1
            if started:
                self.running -= 1
                self._next()
            if not finished and cancel is not None:  # a stop string, or a client that left
                cancel()
                if failed:
                    log.warning("generation %s failed after %d tokens in the engine", rid, len(tokens))
                elif not done:
                    log.info("generation %s stopped after %d tokens: its client left", rid, len(tokens))

    def _submit(
        self,
        ids: list[int],
        settings: GenerationSettings,
        rid: str,
        put: Callable[[object], None],
        live: bool,
        job: GenerateJob | None,
    ) -> Callable[[], None]:
        """Start one request: in the manager's batch, or as ``job`` beside it; its outputs go to ``put``.
        Returns what cancels it."""
        if job is not None:
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, job.stream, ids, settings, loop, put)
            return job.cancelled.set
        manager = self.manager
        manager.register_result_handler(rid, put)
        manager.add_request(
            list(ids),
            request_id=rid,
            max_new_tokens=settings.max_new_tokens,
            streaming=live or bool(settings.stop),
            eos_token_id=self.eos,
            **_sampling(settings),
        )
        return lambda: manager.cancel_request(rid)

    def grammar(self, schema: dict | None) -> Grammar:
        """The grammar of a JSON ``schema`` (None: any JSON object) for this model's tokenizer;
        :class:`freestack.ml.lm.constrained.GrammarError` saying why a schema cannot be followed."""
        return json_grammar(schema, self.tokenizer, vocab_of(self.model), self.eos)

    async def _turn(self, adapter: str | None) -> None:
        """Wait until ``adapter`` is the active one (at once when it is and no other waits)."""
        if adapter is None or self.activate is None:
            adapter = self.adapter
        if adapter == self.adapter and not self.waiting:
            self.running += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append((adapter, turn))
        self._next()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # its turn came as it left: it ran, and is done
                self.running -= 1
                self._next()
            else:
                self.waiting = deque(w for w in self.waiting if w[1] is not turn)
            raise

    def _next(self) -> None:
        """Once the active adapter's requests are done, the adapter of the oldest waiting request runs."""
        if self.running or not self.waiting:
            return
        adapter = self.waiting[0][0]
        if adapter != self.adapter:
            with self.paused():
                self.activate(adapter)
            self.adapter = adapter
            log.info("generation now answers with adapter %s", adapter)
        ready = [turn for a, turn in self.waiting if a == adapter]
        self.waiting = deque(w for w in self.waiting if w[0] != adapter)
        for turn in ready:
            if not turn.done():
                self.running += 1
                turn.set_result(None)

    async def complete(
        self,
        ids: list[int],
        settings: GenerationSettings,
        *,
        truncated: bool = False,
        admitted: bool = False,
        adapter: str | None = None,
        grammar: Grammar | None = None,
        logprobs: int | None = None,
        arrived: float | None = None,
    ) -> Completion:
        """One prompt's whole answer, as :func:`freestack.ml.lm.sampling.generate` gives it."""
        parts, kept, last = [], [], None
        asked = {"adapter": adapter, "grammar": grammar, "logprobs": logprobs, "arrived": arrived}
        answer = self.stream(ids, settings, live=False, admitted=admitted, **asked)
        async for piece in answer:
            parts.append(piece.text)
            kept += piece.logprobs or []
            last = piece
        done = Completion("".join(parts), len(ids), last.completion_tokens, last.finish_reason, truncated)
        done.logprobs, done.queued = (kept if logprobs is not None else None), last.queued
        done.token_ids = last.tokens
        return done

    async def complete_all(
        self,
        prompts: Sequence[tuple[list[int], bool]],
        settings: GenerationSettings,
        *,
        admitted: bool = False,
        adapter: str | None = None,
        grammar: Grammar | None = None,
        logprobs: int | None = None,
    ) -> list[Completion]:
        """Every prompt's whole answer, generated together (``prompts``: token ids, and whether they were
        cut from the left); those the batch cannot answer as asked (:meth:`stream`), in one ``generate``
        beside it (:meth:`_apart`). Each answer's ``queued`` counts from now: a prompt's wait for its
        share of the batch too."""
        arrived = time.perf_counter()
        if needs_apart(settings, grammar, logprobs):
            job = GenerateJob(self, grammar, logprobs)
            answers = await self._apart(list(prompts), settings, admitted, adapter, job)
            for a in answers:
                a.queued = job.began - arrived
            return answers
        gate = asyncio.Semaphore(self.share or len(prompts) or 1)
        asked = {"admitted": admitted, "adapter": adapter, "arrived": arrived}

        async def one(ids: list[int], cut: bool) -> Completion:
            async with gate:  # a few at a time: one request's prompts never fill the batch
                return await self.complete(ids, settings, truncated=cut, **asked)

        return list(await asyncio.gather(*(one(ids, cut) for ids, cut in prompts)))

    async def _apart(
        self,
        prompts: list[tuple[list[int], bool]],
        settings: GenerationSettings,
        admitted: bool,
        adapter: str | None,
        job: GenerateJob,
    ) -> list[Completion]:
        if not admitted:
            self.admit(len(prompts))
        started = False
        try:
            await self._turn(adapter)
            started = True
            if not await self._running():
                raise EngineError("the generation engine is not running: the server is stopping or failed")
            return await asyncio.get_running_loop().run_in_executor(None, job.answers, prompts, settings)
        except asyncio.CancelledError:
            job.cancelled.set()
            raise
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"generation failed beside the batch: {type(exc).__name__}: {exc}") from None
        finally:
            self.active -= len(prompts)
            if started:
                self.running -= 1
                self._next()


def needs_apart(settings: GenerationSettings, grammar: Grammar | None, logprobs: int | None) -> bool:
    """Whether a request needs what the batch cannot do: a grammar, log-probabilities, or a seed that
    makes a sampled answer the same every time."""
    return (
        grammar is not None
        or logprobs is not None
        or (settings.seed is not None and settings.temperature > 0)
    )


def _turn_ended(text: StopText, tokens: list[int], job: GenerateJob | None) -> bool:
    """Whether an answer ended at its end-of-turn token with its grammar's value whole (a value cut off
    there is ``length``, never ``stop``); read once its job is done."""
    return text.end(tokens) is not None and (job is None or job.completed(0))


def _queued(out, arrived: tuple[float | None, float], known: float | None) -> float | None:
    """Seconds from the request's arrival (``arrived``: when it came, if told, and when it reached the
    engine) to the model starting on it (the manager's ``lifespan`` starts when it leaves the queue):
    ``known`` once known, None while it has not started."""
    start = out.lifespan[0]
    if known is not None or start < 0:
        return known
    return max(0.0, start - (arrived[0] if arrived[0] is not None else arrived[1]))


def _new(out, sent: int) -> list[TokenLogprob] | None:
    """The log-probabilities of an output's tokens from ``sent`` on (a job's outputs carry them)."""
    kept = getattr(out, "token_logprobs", None)
    return None if kept is None else kept[sent:]


@dataclass
class _Output:
    """A job's tokens so far (and their log-probabilities), in the shape of the manager's outputs."""

    generated_tokens: list[int]
    token_logprobs: list[TokenLogprob] | None = None
    finished: bool = False
    error: str | None = None
    lifespan: tuple[float, float] = (-1, -1)  # when its job started (as the manager's outputs say it)

    def is_finished(self) -> bool:
        return self.finished


class GenerateJob:
    """A request the running batch cannot answer as asked (:func:`needs_apart`), answered by transformers'
    ``generate`` (a request's prompts in one padded batch, :func:`freestack.ml.lm.sampling.generate_ids`)
    on a worker thread, with the manager's loop paused meanwhile (``manager.pause()``, the library's way
    to let another thread use the model: the batch resumes where it was); with a :class:`freestack.ml.
    constrained.GrammarProcessor` for a grammar, :class:`freestack.ml.lm.sampling.Logprobs` for
    log-probabilities. Jobs run one at a time, so a seed's sampling is not shared with another job. The
    request's adapter is held active by its turn (:meth:`Engine._turn`)."""

    one_at_a_time = threading.Lock()

    def __init__(self, engine: Engine, grammar: Grammar | None, top_logprobs: int | None):
        self.engine, self.grammar, self.top = engine, grammar, top_logprobs
        self.cancelled = threading.Event()  # the caller left, or a stop string came
        self.tokens: list[int] = []
        self.kept: Logprobs | None = None
        self.prompted = False  # a streamer's first value is the prompt
        self.loop = self.deliver = None
        self.began = -1.0  # when generate started on it (time.perf_counter())
        self.processor: GrammarProcessor | None = None  # the grammar's matchers, once generate started

    def answers(
        self, prompts: list[tuple[list[int], bool]], settings: GenerationSettings, **extra: object
    ) -> list[Completion]:
        """Every prompt's :class:`freestack.ml.lm.answers.Completion` (blocking: run it on a worker thread)."""
        e, rows = self.engine, len(prompts)
        width = max(len(ids) for ids, _ in prompts)
        grammar = (
            [GrammarProcessor(self.grammar, e.tokenizer, vocab_of(e.model), rows, width)]
            if self.grammar
            else []
        )
        self.kept = Logprobs(self.top) if self.top is not None else None
        self.processor = grammar[0] if grammar else None
        with self.one_at_a_time, e.paused(), torch.inference_mode():
            self.began = time.perf_counter()
            done = generate_ids(
                e.model,
                e.tokenizer,
                prompts,
                settings,
                e.eos,
                self.kept,
                logits_processor=grammar,
                stopping_criteria=[self._stop],
                strip=False,  # as the batch answers: a continued text keeps its leading space
                **extra,
            )
        for row, answer in enumerate(done):
            if answer.finish_reason == "stop" and not self.completed(row):
                answer.finish_reason = "length"
        return done

    def completed(self, row: int) -> bool:
        """Whether prompt ``row``'s answer completed its grammar's value (True without a grammar): one that
        ended before it did reports ``length``, never ``stop``."""
        return self.processor is None or self.processor.accepted()[row]

    def stream(self, ids: list[int], settings: GenerationSettings, loop, put: Callable) -> None:
        """One prompt's tokens as they come, each time all of them so far, to ``put`` on ``loop`` (in the
        shape of the manager's outputs)."""
        self.loop, self.deliver = loop, put
        try:
            self.answers([(ids, False)], settings, streamer=self)
        except Exception as exc:  # noqa: BLE001 - the request's failure, told to its caller
            self._emit(_Output(list(self.tokens), error=f"{type(exc).__name__}: {exc}"))
            return
        self._emit(_Output(list(self.tokens), self._logprobs(), finished=True))

    def logprobs_of(self, start: int, end: int) -> list[TokenLogprob]:
        return (self._logprobs() or [])[start:end]

    def _logprobs(self) -> list[TokenLogprob] | None:
        if self.kept is None:
            return None
        return [self.kept.at(0, step, t) for step, t in enumerate(self.tokens)]

    def _emit(self, out: _Output) -> None:
        out.lifespan = (self.began, -1)
        self.loop.call_soon_threadsafe(self.deliver, out)

    def _stop(self, input_ids, scores, **kwargs):
        """``generate``'s stopping criterion: the caller left."""
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool)

    def put(self, value) -> None:
        """transformers' streamer API: the prompt first, then each new token."""
        if self.prompted:
            self.tokens.extend(value.flatten().tolist())
            self._emit(_Output(list(self.tokens), self._logprobs()))
        self.prompted = True

    def end(self) -> None:
        """transformers' streamer API: generation ended (:meth:`stream` sends the last output)."""


def _route_library_logs() -> None:
    """The library's records reach this process's logging (a task's log, the server's) at their own
    level: its stderr handler goes, and they propagate."""
    library = logging.getLogger(LIBRARY_LOGGER)
    for handler in list(library.handlers):
        library.removeHandler(handler)
    library.propagate = True


def _sampling(settings) -> dict[str, float]:
    """The per-request sampling settings: greedy at temperature 0."""
    if settings.temperature <= 0:
        return {"temperature": 1.0, "top_p": GREEDY_TOP_P}
    return {"temperature": float(settings.temperature), "top_p": float(settings.top_p)}


__all__ = ["GREEDY_TOP_P", "Busy", "Engine", "EngineError", "Piece", "StopText", "needs_apart"]
