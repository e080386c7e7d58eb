"""Distillation's data: a teacher endpoint answers one day's prompt rows (``score.teacher``).

A text-generation pipeline whose ``score`` block names a teacher (any OpenAI-compatible chat endpoint: a
freestack deployment, a hosted API) has its days answered by it instead of by a registered version. Each
row's chat is built as the model server builds a request's (the prompt column as one user turn, or the
messages column's JSON chat, the pipeline's system prompt first) and sent through the official ``openai``
client, ``concurrency`` at a time; the client retries a request answered 408, 409, 429 or 5xx, or not
answered, with exponential backoff (honouring ``Retry-After``), ``retries`` times. A row still failing, or
whose prompt cannot be read, goes to the day's quarantine with the reason; a day none of whose rows is
answered fails, publishing nothing.

The day is published whole as :func:`freestack.score.core.score` publishes any (the answers in
:mod:`freestack.score.answers_writer`'s layout, the manifest in the part's footer): the manifest names the
teacher (its URL, the model asked and the models that answered), its settings, the tokens, the finish
reasons, the requests (attempts, retries, HTTP statuses) and the failures by reason. With ``land``, the
answers the teacher finished are then written into the student pipeline's landing folder for the day, one
file replaced whole on a rerun, as that pipeline's instruction-tuning rows. The teacher's days are not
cached (the endpoint may answer otherwise tomorrow) and not sampled for the monitor (it judges the
pipeline's own model).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from freestack.errors import ScoreError, SpecError
from freestack.ingest.lake import landing_dir
from freestack.judging.client import openai_client, short
from freestack.keys import NO_KEYS, Keys
from freestack.ml.lm.chat import ChatColumns, ChatError, parse_messages
from freestack.score import core
from freestack.score.answers_writer import COLUMNS, answers_batch, check_cap, output_schema, row_chat
from freestack.score.day import day_record, input_files, input_names, read_day
from freestack.score.published import FOOTER_KEY, output_dir
from freestack.score.rows import Counts, Quarantine
from freestack.spec import load_spec, spec_file
from freestack.storage import AtomicWriter, join

if TYPE_CHECKING:
    from freestack.score.rows import Piece
    from freestack.score.spec import TeacherSpec
    from freestack.spec import PipelineSpec

#: the teacher settings a day's manifest records
SETTINGS = ("max_tokens", "temperature", "seed", "timeout_s", "retries", "concurrency")


@dataclass
class Answer:
    """One row's answer, as :func:`freestack.score.answers_writer.answers_batch` writes it."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    truncated: bool = False


class TeacherClient:
    """The teacher endpoint through the ``openai`` client: one chat completion per row, the client's own
    retries and backoff, every attempt and HTTP status counted (an ``httpx`` event hook)."""

    def __init__(self, teacher: TeacherSpec, api_key: str | None = None):
        self.teacher = teacher
        self.lock = threading.Lock()
        self.asked, self.attempts, self.statuses = 0, 0, Counter()
        self.answered_as: set[str] = set()
        hooks = {"request": [self._sent], "response": [self._got]}
        self.client = openai_client(teacher, api_key, event_hooks=hooks)

    def _sent(self, _request) -> None:
        with self.lock:
            self.attempts += 1

    def _got(self, response) -> None:
        with self.lock:
            self.statuses[str(response.status_code)] += 1

    def check(self) -> None:
        """ScoreError when the endpoint does not answer, refuses the key, or does not list the model (an
        endpoint without ``GET /models`` is taken at its word)."""
        import openai

        t = self.teacher
        try:
            names = [m.id for m in self.client.with_options(max_retries=0).models.list()]
        except openai.NotFoundError:
            return
        except openai.AuthenticationError as exc:
            raise ScoreError(
                f"score.teacher.url {t.url} refused the key ({exc.status_code}): set the password of the "
                "connection score.teacher.api_key.conn_id names to the endpoint's key"
            ) from None
        except openai.APIError as exc:
            raise ScoreError(
                f"score.teacher.url {t.url} does not answer ({type(exc).__name__}: {str(exc)[:200]}): start "
                "the teacher or fix the URL, then clear this task"
            ) from None
        if names and t.model not in names:
            raise ScoreError(
                f"score.teacher.model {t.model!r} is not a model of {t.url} ({', '.join(names[:8])}): name one"
            )

    def answer(self, chat: list[dict[str, str]]) -> Answer | str:
        """The teacher's answer to one chat, or why there is none (after the client's retries)."""
        import openai

        t = self.teacher
        with self.lock:
            self.asked += 1
        extra = {"seed": t.seed} if t.seed is not None else {}
        try:
            done = self.client.chat.completions.create(
                model=t.model, messages=chat, max_tokens=t.max_tokens, temperature=t.temperature, **extra
            )
        except openai.APIStatusError as exc:
            return f"the teacher answered HTTP {exc.status_code}: {short(str(exc.message))}"
        except openai.APIError as exc:  # no answer: refused connection, timeout, a broken response
            return f"the teacher did not answer ({type(exc).__name__}: {short(str(exc))})"
        if not done.choices:
            return "the teacher answered no choice"
        usage, choice = done.usage, done.choices[0]
        with self.lock:
            self.answered_as.add(done.model)
        return Answer(
            text=(choice.message.content or "").strip(),
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            model=done.model,
        )

    def answers(self, chats: list[list[dict[str, str]]]) -> list[Answer | str]:
        with ThreadPoolExecutor(self.teacher.concurrency) as pool:
            return list(pool.map(self.answer, chats))

    def record(self) -> dict[str, Any]:
        """The manifest's ``requests``: rows asked, HTTP attempts, retries and statuses."""
        return {
            "asked": self.asked,
            "attempts": self.attempts,
            "retries": max(self.attempts - self.asked, 0),
            "statuses": dict(sorted(self.statuses.items())),
        }


class Teacher:
    """What :func:`freestack.score.core.score` answers a day with in place of a registered version: the
    client, the pipeline's chat columns, the day's tally, and the rows to land."""

    generative = True

    def __init__(self, spec: PipelineSpec, api_key: str | None = None):
        d = spec.model.chat
        self.settings: TeacherSpec = spec.score.teacher
        self.columns = ChatColumns(d.prompt, d.response, d.messages, d.system)
        self.client = TeacherClient(self.settings, api_key)
        self.tally: Counter[str] = Counter()
        self.landed: list[tuple[Any, Any, str]] = []  # (key, the input column's value, the answer)

    def ask(self, values: list[Any], bad: dict[int, str]) -> dict[int, Answer]:
        """The answers to a piece's rows by position; the rows whose prompt cannot be read or that the
        teacher did not answer go into ``bad`` with why."""
        chats = {}
        for i, value in enumerate(values):
            try:
                chats[i] = row_chat(self.columns, value)
            except ChatError as exc:
                bad[i] = str(exc)[:500]
        rows = sorted(chats)
        answered = {}
        for i, got in zip(rows, self.client.answers([chats[i] for i in rows]), strict=True):
            if isinstance(got, str):
                bad[i] = got
            else:
                answered[i] = got
        return answered

    def keep(self, keys: list[Any], values: list[Any], answers: list[Answer]) -> None:
        """Count the answers (finish reasons, tokens) and note those to land."""
        land = self.settings.land
        for key, value, a in zip(keys, values, answers, strict=True):
            self.tally[f"finish_{a.finish_reason}"] += 1
            self.tally["prompt_tokens"] += a.prompt_tokens
            self.tally["completion_tokens"] += a.completion_tokens
            if land is None:
                continue
            if a.finish_reason == "stop" or not land.finished_only:
                self.landed.append((key, value, a.text))
            else:
                self.tally["left_out_unfinished"] += 1


def student_of(spec: PipelineSpec) -> PipelineSpec | None:
    """The pipeline ``score.teacher.land`` names, checked: a text-generation pipeline of one conversation
    a row (prompt and response, or messages, as this pipeline's input) landing csv or parquet."""
    land = spec.score.teacher.land
    if land is None:
        return None
    field = "score.teacher.land.pipeline"
    try:
        student = load_spec(spec_file(land.pipeline))
    except SpecError as exc:
        raise ScoreError(
            f"{field} {land.pipeline!r} cannot be read ({exc}): name a pipeline of the folder"
        ) from None
    d = student.model.chat if student.model.generative else None
    if d is None or d.chosen is not None or bool(d.messages) != bool(spec.model.chat.messages):
        form = "a messages column" if spec.model.chat.messages else "prompt and response columns"
        raise ScoreError(
            f"{field} {land.pipeline!r} must be a text-generation pipeline whose model.data has {form}, "
            f"as {spec.name}'s input: its answers are landed as those columns"
        )
    if student.source.format not in ("csv", "parquet"):
        raise ScoreError(f"{field} {land.pipeline!r} lands {student.source.format}: land csv or parquet")
    return student


def plan(spec: PipelineSpec, start: datetime, end: datetime, keys: Keys = NO_KEYS) -> dict[str, Any]:
    """:func:`freestack.score.core.plan` for a teacher: the teacher answers (and lists its model), the
    student (``land``) is checked, every input file has the prompt column, one job per day with input."""
    teacher = spec.score.teacher
    TeacherClient(teacher, keys.teacher).check()
    student_of(spec)
    name, key = spec.model.chat.messages or spec.model.chat.prompt, spec.source.schema_.key
    jobs, skipped = [], []
    for ds in core.days_of(start, end):
        files, empty = [], []
        for item in input_files(spec, ds):
            names = input_names(spec, item)
            if names is None:  # 0 bytes, or a CSV without even a header: left out, as core.plan does
                empty.append(item["uri"])
                continue
            missing = [c for c in (name, key) if c and c not in names]
            if missing:
                raise ScoreError(f"{item['uri']} has no column(s) {missing}: the teacher reads them", ds=ds)
            files.append(item)
        if not files:
            skipped.append(ds)
            continue
        job = {"ds": ds, "version": teacher.model, "version_uri": teacher.url, "inputs": files}
        jobs.append({**job, "output": output_dir(spec, ds), "empty": empty})
    return {
        "version": teacher.model,
        "uri": teacher.url,
        "asked": "score.teacher",
        "jobs": jobs,
        "skipped": skipped,
    }


def score(
    spec: PipelineSpec, job: dict[str, Any], run: dict[str, str] | None = None, keys: Keys = NO_KEYS
) -> dict[str, Any]:
    """Answer ``job``'s day by the teacher and publish it whole; then, with ``land``, write the finished
    answers into the student's landing folder (replacing the day's earlier file). Returns the manifest."""
    teacher = Teacher(spec, keys.teacher)
    manifest = core.score(spec, job, run, teacher, write=write_teacher_answers)
    student = student_of(spec)
    if student is not None:
        land_answers(spec, student, job["ds"], teacher)
    return manifest


def write_teacher_answers(
    spec: PipelineSpec, job: dict[str, Any], teacher: Teacher, part_w, quar_w, run: dict[str, str] | None
) -> tuple[Counts, dict[str, Any]]:
    """:func:`freestack.score.core.score`'s writer for a teacher: every row's answer into the part, the rows
    not answered into the quarantine, the manifest in the part's footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts, at = Counts(), datetime.now(UTC)
    quar = Quarantine(quar_w, spec, counts)
    writer = pq.ParquetWriter(part_w, output_schema(spec, job), compression="zstd")

    def answer(piece: Piece) -> None:
        values, bad = piece.batch.column(teacher.columns.input_column).to_pylist(), {}
        answered = teacher.ask(values, bad)
        if bad:
            quar.write(piece.refused(bad))
        if not answered:
            return
        rows = sorted(answered)
        keys = piece.keys.take(pa.array(rows)) if bad else piece.keys
        done = [answered[i] for i in rows]
        writer.write_batch(answers_batch(keys, done, job, at, writer.schema))
        counts.rows_scored += len(done)
        teacher.keep(keys.to_pylist(), [values[i] for i in rows], done)

    try:
        cap = lambda n: check_cap(job["ds"], n, teacher.settings.max_rows, "score.teacher.max_rows")  # noqa: E731
        read_day(spec, job, counts, quar, answer, cap)
        if not counts.rows_scored:
            common = "; ".join(f"{why} ({n} rows)" for why, n in counts.reasons.most_common(3))
            raise ScoreError(
                f"{job['ds']}: the teacher answered none of the day's {counts.rows_in} rows: {common}. "
                "Nothing was published; fix the teacher or the rows, then clear this task",
                ds=job["ds"],
            )
        manifest = manifest_of(spec, job, teacher, counts, at, run, part_w.path.parent)
        writer.add_key_value_metadata({FOOTER_KEY: json.dumps(manifest).encode()})
    finally:
        writer.close()
        quar.close()
    return counts, manifest


def manifest_of(
    spec: PipelineSpec,
    job: dict[str, Any],
    teacher: Teacher,
    counts: Counts,
    at: datetime,
    run: dict[str, str] | None,
    folder,
) -> dict[str, Any]:
    """A teacher's day: the :func:`~freestack.score.day.day_record`, the teacher (URL, model asked, models
    that answered, settings), the answers' finish reasons and tokens, the requests and the failures by
    reason."""
    t, tally = teacher.settings, teacher.tally
    finish = {k.removeprefix("finish_"): n for k, n in tally.items() if k.startswith("finish_")}
    land = None
    if t.land is not None:
        land = {"pipeline": t.land.pipeline, "rows": len(teacher.landed)}
        land["left_out_unfinished"] = tally["left_out_unfinished"]
    return {
        **day_record(spec, job, counts, at, run, folder),
        "lineage": None,
        "trained_on": [],
        "teacher": {
            "url": t.url,
            "model": t.model,
            "answered_as": sorted(teacher.client.answered_as),
            "settings": {k: getattr(t, k) for k in SETTINGS},
        },
        "failures": dict(counts.reasons.most_common(10)),
        "predictions": {},
        "columns": list(COLUMNS),
        "task": "generation",
        "answers": {
            "finish_reasons": finish,
            "prompt_tokens": tally["prompt_tokens"],
            "completion_tokens": tally["completion_tokens"],
            "truncated": 0,
        },
        "requests": teacher.client.record(),
        "land": land,
    }


def land_answers(spec: PipelineSpec, student: PipelineSpec, ds: str, teacher: Teacher) -> str | None:
    """The day's landed rows, written whole into the student's landing folder as
    ``<pipeline>-teacher.<csv|parquet>`` (its key and model.data columns); an earlier file of the day is
    replaced, or removed when no answer is landed. Returns its URI."""
    import pyarrow as pa

    d, key = student.model.chat, student.source.schema_.key
    path = join(landing_dir(student, ds), f"{spec.name}-teacher.{student.source.format}")
    if not teacher.landed:
        path.unlink(missing_ok=True)
        return None
    keys, values, texts = zip(*teacher.landed, strict=True)
    if d.messages:  # the chat so far and the teacher's turn, as one JSON chat
        chats = [
            [*parse_messages(v, "the messages column"), {"role": "assistant", "content": t}]
            for v, t in zip(values, texts, strict=True)
        ]
        columns = {d.messages: [json.dumps(c) for c in chats]}
    else:
        columns = {d.prompt: list(values), d.response: list(texts)}
    table = pa.table({**({key: [str(k) for k in keys]} if key else {}), **columns})
    with AtomicWriter(path) as f:
        if student.source.format == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, f)
        else:
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, f)
    return str(path)


__all__ = ["Answer", "Teacher", "TeacherClient", "land_answers", "plan", "score", "student_of"]
