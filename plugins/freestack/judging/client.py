"""An LLM judge of a text-generation model's answers (``gate.judge``, :class:`~freestack.judging.spec.JudgeSpec`).

The judge is any OpenAI-compatible chat endpoint (another freestack deployment included), asked through
the official ``openai`` client at temperature 0. freestack fixes the answer format, one JSON object, in
the system message; the spec's rubric is the user message, with the test prompt, the answer(s) and the
reference filled in:

- ``pointwise``: ``{"score": 1-5, "rationale": "..."}`` for each answer, the candidate's and production's;
  ``judge_score`` is a model's mean score over the prompts judged.
- ``pairwise``: ``{"winner": "A" | "B" | "tie", "rationale": "..."}`` for the candidate against production,
  each prompt asked twice with the answers swapped, so a judge that prefers a position cancels out. A
  prompt scores 1 (the candidate won), 0.5 (tie) or 0 (lost) per order; its mean over both orders above
  0.5 is a win, below a loss, else a tie. ``judge_win_rate`` is (wins + ties / 2) / prompts judged, with
  a 95% Wilson interval.

A prompt whose judging failed (no answer, an HTTP error, an answer that does not parse) is counted in
``judge_failures`` and scored neither way. Past ``max_failures`` (a share of the prompts) the judging
fails: unparsable or refused answers always (the judge is misconfigured), and a judge that did not
answer (an outage) unless ``on_judge_error: pass``, which passes the judge's gate rules with the outage
named. Every answer, score, rationale and raw text goes to ``evaluation/judge.json``.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from freestack.errors import FreestackError
from freestack.judging.spec import Endpoint, JudgeSpec, check_rubric
from freestack.settings import checkout_dir

log = logging.getLogger(__name__)

FORMATS = {
    "pointwise": 'Answer with one JSON object and nothing else: {"score": <an integer from 1 to 5>, '
    '"rationale": "<one or two sentences>"}.',
    "pairwise": 'Answer with one JSON object and nothing else: {"winner": "A" or "B" or "tie", '
    '"rationale": "<one or two sentences>"}.',
}
#: a score at least this reads as "right" when the judge is compared with exact match
RIGHT_SCORE = 4
#: the failure kinds: no answer (an outage), a refused request (4xx: a key or model name), prose
UNREACHABLE, REFUSED, UNPARSABLE = "unreachable", "refused", "unparsable"
Z95 = 1.959963984540054


class JudgeError(FreestackError):
    """The judging failed past the spec's bounds; the message names the field and the figures."""


@dataclass
class Verdict:
    """One judge call: what it answered and what was read from it, or why nothing was."""

    raw: str | None = None
    value: Any = None  # a score (pointwise) or "A" / "B" / "tie" (pairwise)
    rationale: str | None = None
    error: str | None = None
    kind: str | None = None  # None: judged; else UNREACHABLE, REFUSED or UNPARSABLE


@dataclass
class Judged:
    """The judge's figures for the evaluation: each model's metrics, every item, and the judge's identity."""

    status: str  # judged | unavailable (an outage passed by on_judge_error) | skipped
    identity: dict[str, Any]
    candidate: dict[str, Any] = field(default_factory=dict)
    champion: dict[str, Any] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    rubric: str | None = None  # the rubric asked (a rubric_file's text)

    def record(self, spec: JudgeSpec) -> dict[str, Any]:
        """``evaluation/judge.json``: the summary, the rubric and every item."""
        return {
            "status": self.status,
            "reason": self.reason,
            "judge": self.identity,
            "rubric": self.rubric or spec.template,
            "format": FORMATS[spec.mode],
            "candidate": self.candidate,
            "champion": self.champion,
            "items": self.items,
        }

    def samples(self, n: int = 2) -> list[dict[str, str]]:
        """The prompts the judge failed on (at most ``n``, each shown as failed with its error), the ``n``
        worst and the ``n`` best judged prompts side by side, one line of text each (for the approval
        request's table): the prompt, both answers and the judge's verdict."""
        judged = [it for it in self.items if not judging_failed(it)]
        return [_sample(it) for it in worst(self.items, n) + judged[n:][-n:]]


def judging_failed(item: dict[str, Any]) -> bool:
    """Whether the judging of a ``judge.json`` item failed (pairwise: either order; pointwise: the
    candidate's answer)."""
    if "outcome" in item:
        return item["outcome"] == "failed"
    cand = item.get("candidate")
    return isinstance(cand, dict) and cand.get("score") is None


def worst(items: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The worst prompts of ``judge.json``'s items (worst first): those whose judging failed (at most
    ``n``), then the ``n`` worst judged, so that neither hides the other."""
    return [it for it in items if judging_failed(it)][:n] + [it for it in items if not judging_failed(it)][:n]


def _error(item: dict[str, Any]) -> str:
    """Why a judging failed: its (first) failed call's error."""
    calls = [item.get("candidate_first"), item.get("champion_first"), item.get("candidate")]
    return next((c["error"] for c in calls if isinstance(c, dict) and c.get("error")), "no verdict")


def _sample(item: dict[str, Any]) -> dict[str, str]:
    """One judged prompt as a table row: texts on one line, no ``|``, at most 160 characters."""
    cell = lambda text: short(str(text or ""), 160).replace("|", "/")  # noqa: E731
    cand, champ = item.get("candidate"), item.get("champion")
    if isinstance(cand, dict):  # pointwise: each answer with its score
        theirs = "-" if not isinstance(champ, dict) else champ.get("score") or "failed"
        verdict = f"{cand.get('score') or 'failed'} vs {theirs}"
        cand, champ = cand.get("answer"), (champ or {}).get("answer")
    else:
        verdict = str(item.get("outcome"))
    return {
        "prompt": cell(item.get("prompt")),
        "candidate": cell(cand),
        "champion": cell(champ),
        "verdict": cell(f"{verdict}: {_error(item)}" if judging_failed(item) else verdict),
    }


# ---------------------------------------------------------------------------------------------------------
# reading the judge's answers


def _object_in(text: str) -> dict[str, Any]:
    """The JSON object the judge answered: the first ``{`` from which a JSON object reads, so that code
    fences, prose around it and a brace in that prose are tolerated; ValueError if there is none."""
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the answer")
    decoder, first_error = json.JSONDecoder(), None
    for at in (i for i, c in enumerate(body) if c == "{"):
        try:
            obj, _ = decoder.raw_decode(body, at)
        except json.JSONDecodeError as exc:
            first_error = first_error or exc.msg
            continue
        if isinstance(obj, dict):
            return obj
    raise ValueError(f"not JSON: {first_error}" if first_error else "the JSON is not an object")


def _rationale(obj: dict[str, Any]) -> str:
    r = obj.get("rationale", "")
    return r if isinstance(r, str) else json.dumps(r)


#: a score written as a fraction of 5 ("4/5", "4 out of 5")
OUT_OF_FIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/|out of)\s*5\s*$", re.IGNORECASE)
#: the words around a pairwise winner ("Answer A", "response b.", "(B)")
WINNER_WORDS = re.compile(
    r"^(?:answer|response|assistant|model|candidate|option)\s+|[\s.()\"']", re.IGNORECASE
)
#: the winners a judge writes, each as A, B or tie
WINNERS = {"a": "A", "b": "B", "tie": "tie", "draw": "tie", "none": "tie", "both": "tie", "neither": "tie"}


def parse_pointwise(text: str) -> tuple[float, str]:
    """(score 1-5, rationale) from ``{"score": ..., "rationale": ...}`` (a score may be written ``"4"``,
    ``"4/5"`` or ``"4 out of 5"``); ValueError naming what is wrong."""
    obj = _object_in(text)
    score = obj.get("score")
    if isinstance(score, str):
        fraction = OUT_OF_FIVE.match(score)
        try:
            score = float(fraction.group(1) if fraction else score.strip())
        except ValueError:
            raise ValueError(f"score {score!r} is not a number") from None
    if isinstance(score, bool) or not isinstance(score, int | float) or not 1 <= score <= 5:
        raise ValueError(f"score {score!r} is not a number from 1 to 5")
    return float(score), _rationale(obj)


def parse_pairwise(text: str) -> tuple[str, str]:
    """("A" | "B" | "tie", rationale) from ``{"winner": ..., "rationale": ...}`` (``"Answer A"``, ``"both"``
    and ``"neither"`` read as A and tie); ValueError otherwise."""
    obj = _object_in(text)
    winner = str(obj.get("winner", "")).strip()
    norm = WINNERS.get(WINNER_WORDS.sub("", winner).lower())
    if norm is None:
        raise ValueError(f"winner {winner!r} is not A, B or tie")
    return norm, _rationale(obj)


def prompt_text(chat: list[dict[str, str]]) -> str:
    """The test conversation as the rubric shows it: the user's message alone, or every turn by role."""
    turns = [m for m in chat if m.get("role") != "system"]
    if len(turns) == 1 and turns[0].get("role") == "user":
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in chat)


# ---------------------------------------------------------------------------------------------------------
# asking


def openai_client(endpoint: Endpoint, api_key: str | None = None, *, event_hooks: dict | None = None):
    """The ``openai`` client of an endpoint: its URL, key, timeouts and retries (the client's own, with
    exponential backoff honouring ``Retry-After``); ``event_hooks``: httpx's, on its HTTP client."""
    import httpx
    import openai

    extra = {"http_client": openai.DefaultHttpxClient(event_hooks=event_hooks)} if event_hooks else {}
    return openai.OpenAI(
        base_url=endpoint.url,
        api_key=api_key or "none",
        max_retries=endpoint.retries,
        timeout=httpx.Timeout(endpoint.timeout_s, connect=endpoint.connect_timeout_s),
        **extra,
    )


class JudgeClient:
    """The judge endpoint through the ``openai`` client: one chat completion per question, at temperature
    0, with the format in the system message. Remembers the served identity it answers with."""

    def __init__(self, spec: JudgeSpec, api_key: str | None = None):
        self.spec = spec
        self.client = openai_client(spec, api_key)
        self.served_by: str | None = None
        self.answered_as: str | None = None

    def ask(self, question: str, parse) -> Verdict:
        """The judge's verdict on one filled-in rubric (never raises: a failure is a Verdict's kind)."""
        import openai

        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.spec.model,
                messages=[
                    {"role": "system", "content": FORMATS[self.spec.mode]},
                    {"role": "user", "content": question},
                ],
                temperature=0,
                max_tokens=self.spec.max_tokens,
            )
            completion = raw.parse()
        except openai.APIStatusError as exc:
            kind = UNREACHABLE if exc.status_code in (408, 429) or exc.status_code >= 500 else REFUSED
            return Verdict(error=f"HTTP {exc.status_code}: {short(str(exc.message))}", kind=kind)
        except openai.APIError as exc:  # connection refused, timeout, a broken response
            return Verdict(error=f"{type(exc).__name__}: {short(str(exc))}", kind=UNREACHABLE)
        self.served_by = self.served_by or raw.headers.get("x-freestack-version")
        self.answered_as = self.answered_as or completion.model
        text = (completion.choices[0].message.content or "") if completion.choices else ""
        try:
            value, rationale = parse(text)
        except ValueError as exc:
            return Verdict(raw=text, error=f"unparsable: {exc}", kind=UNPARSABLE)
        return Verdict(raw=text, value=value, rationale=rationale)


def failure_kinds(failed: list[Verdict]) -> str:
    """Failed judgings counted by the kind of their error (the exception's class, ``HTTP <status>``,
    ``unparsable``), most first, each with its first error: ``85 APITimeoutError (first: Request timed
    out), 8 HTTP 500 (first: the judge is overloaded)``, so that no kind hides behind another."""
    kinds: dict[str, list[str]] = {}
    for v in failed:
        kind, _, detail = (v.error or "no error given").partition(": ")
        kinds.setdefault(kind, []).append(detail.rstrip(". "))
    ordered = sorted(kinds.items(), key=lambda item: -len(item[1]))  # stable: ties in the order seen
    return ", ".join(f"{len(d)} {k}" + (f" (first: {d[0]})" if d[0] else "") for k, d in ordered)


def short(text: str, n: int = 300) -> str:
    """``text`` on one line, cut to ``n`` characters (an endpoint's error, quoted in a message)."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------------------
# the two modes


def _fill(spec: JudgeSpec, prompt: str, reference: str | None, **answers: str) -> str:
    return spec.template.format(prompt=prompt, reference=reference or "(none)", **answers)


def _pool_map(spec: JudgeSpec, fn, jobs: list) -> list:
    with ThreadPoolExecutor(max_workers=spec.concurrency, thread_name_prefix="judge") as pool:
        return list(pool.map(fn, jobs))


def pointwise(client: JudgeClient, prompts: list[str], refs: list[str], answers: list[str]) -> list[Verdict]:
    """A score 1-5 per answer."""
    spec = client.spec
    return _pool_map(
        spec,
        lambda i: client.ask(_fill(spec, prompts[i], refs[i], answer=answers[i]), parse_pointwise),
        list(range(len(answers))),
    )


def pairwise(
    client: JudgeClient, prompts: list[str], refs: list[str], cand: list[str], champ: list[str]
) -> list[tuple[Verdict, Verdict]]:
    """Per prompt, (candidate as A, production as B) then (production as A, candidate as B)."""
    spec = client.spec

    def ask(job: tuple[int, bool]) -> Verdict:
        i, swapped = job
        a, b = (champ[i], cand[i]) if swapped else (cand[i], champ[i])
        return client.ask(_fill(spec, prompts[i], refs[i], answer_a=a, answer_b=b), parse_pairwise)

    asked = _pool_map(spec, ask, [(i, s) for i in range(len(cand)) for s in (False, True)])
    return [(asked[2 * i], asked[2 * i + 1]) for i in range(len(cand))]


def outcome(first: Verdict, second: Verdict) -> str:
    """win, loss or tie of the candidate over both orders (first: candidate as A; second: as B)."""
    points = {"A": 1.0, "B": 0.0, "tie": 0.5}
    mine = (points[first.value] + 1.0 - points[second.value]) / 2
    return "win" if mine > 0.5 else "loss" if mine < 0.5 else "tie"


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (``successes`` may hold halves: ties)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def agreement(scores: list[float | None], refs: list[str], answers: list[str]) -> float | None:
    """The share of judged answers where the judge (score >= RIGHT_SCORE) and exact match agree."""
    pairs = [
        (s >= RIGHT_SCORE, r.strip() == a.strip())
        for s, r, a in zip(scores, refs, answers, strict=True)
        if s is not None and r is not None  # a golden prompt without a reference has no exact match
    ]
    return sum(j == e for j, e in pairs) / len(pairs) if pairs else None


# ---------------------------------------------------------------------------------------------------------
# the evaluation's judging


def project_file(path: str, field: str) -> Path:
    """A file of the project a judge setting names (relative to the checkout, or absolute); JudgeError
    naming ``gate.judge.<field>`` when it is not there."""
    found = Path(path) if Path(path).is_absolute() else checkout_dir() / path
    if not found.is_file():
        raise JudgeError(
            f"gate.judge.{field}: {path} is not a file (looked for {found}); give a path relative to the "
            "project's checkout"
        )
    return found


def with_rubric_file(spec: JudgeSpec) -> JudgeSpec:
    """``spec`` with the rubric ``rubric_file`` holds, checked as an inline rubric is (JudgeError naming
    ``gate.judge.rubric_file``)."""
    if spec.rubric_file is None:
        return spec
    text = project_file(spec.rubric_file, "rubric_file").read_text()
    try:
        check_rubric(text, spec.mode)
    except ValueError as exc:
        raise JudgeError(f"gate.judge.rubric_file ({spec.rubric_file}): {exc}") from None
    return spec.model_copy(update={"rubric": text, "rubric_file": None})


def run(
    spec: JudgeSpec,
    chats: list[list[dict[str, str]]],
    refs: list[str],
    candidate: list[str],
    champion: list[str] | None,
    api_key: str | None = None,
) -> Judged:
    """Judge the candidate's answers (and production's, on the same prompts) as ``spec`` says: every
    answer given (the caller picks which: the evaluation its first ``max_rows``, the monitor a sample).
    Raises JudgeError past ``max_failures``, or on an outage unless ``on_judge_error: pass``."""
    n = min(len(chats), len(candidate))
    prompts, refs, cand = [prompt_text(c) for c in chats[:n]], refs[:n], candidate[:n]
    champ = champion[:n] if champion is not None else None
    identity = {"url": spec.url, "model": spec.model, "mode": spec.mode}
    if n == 0:
        return Judged("skipped", identity, reason="no answers to judge")
    if spec.mode == "pairwise" and champ is None:
        return Judged("skipped", identity, reason="no production model to compare the candidate with")
    client = JudgeClient(spec, api_key)
    try:
        judged = _judged(spec, client, identity, prompts, refs, cand, champ)
    finally:
        client.client.close()
    judged.rubric = spec.template
    return judged


def _judged(spec: JudgeSpec, client: JudgeClient, identity, prompts, refs, cand, champ) -> Judged:
    """The judging itself: each model's share of failed prompts is bounded on its own."""
    if spec.mode == "pointwise":
        mine = pointwise(client, prompts, refs, cand)
        theirs = pointwise(client, prompts, refs, champ) if champ is not None else None
        sides = [mine, *([theirs] if theirs is not None else [])]
    else:
        pairs = pairwise(client, prompts, refs, cand, champ or [])
        sides = [[next((v for v in pair if v.kind), pair[0]) for pair in pairs]]
    identity.update(served_by=client.served_by, answered_as=client.answered_as)
    problem = None
    for verdicts in sides:
        problem = problem or _bounds(spec, [v for v in verdicts if v.kind], len(verdicts))
    if problem:
        log.warning("judge %s: %s (on_judge_error: pass)", spec.url, problem)
        return Judged("unavailable", identity, reason=problem)
    if spec.mode == "pointwise":
        judged = _pointwise_figures(identity, prompts, refs, cand, mine, champ, theirs)
    else:
        judged = _pairwise_figures(identity, prompts, refs, cand, champ or [], pairs)
    log.info("judge %s (%s, %s): %s", spec.url, spec.model, spec.mode, judged.candidate)
    return judged


def _bounds(spec: JudgeSpec, failed: list[Verdict], asked: int) -> str | None:
    """None when the failures are within ``max_failures``; the outage's description when they are past it
    by calls that got no answer and ``on_judge_error: pass``; else raises JudgeError."""
    kinds = Counter(v.kind for v in failed)
    limit = spec.max_failures * asked
    if len(failed) <= limit and len(failed) < asked:
        return None
    counts = ", ".join(f"{k} {kinds[k]}" for k in (UNREACHABLE, REFUSED, UNPARSABLE) if kinds[k])
    share = (
        f"{len(failed)} of {asked} judgings failed ({counts}; gate.judge.max_failures {spec.max_failures:g})"
    )
    unreachable = [v for v in failed if v.kind == UNREACHABLE]
    if len(failed) - len(unreachable) > limit or len(failed) - len(unreachable) == asked:
        first = next(v for v in failed if v.kind != UNREACHABLE)
        at = f"the judge at gate.judge.url {spec.url} (model {spec.model})"
        if first.kind == REFUSED:
            raise JudgeError(
                f"{at} refused the requests: {share}; e.g. {first.error}. Check gate.judge.model and "
                "gate.judge.api_key (the connection's password is the key)"
            )
        raise JudgeError(
            f"{at} answered in a way freestack cannot read: {share}; e.g. {first.error}"
            + (f"; it answered: {short(first.raw, 200)!r}" if first.raw else "")
            + f". The judge must answer one JSON object as asked: {FORMATS[spec.mode]}"
        )
    outage = (
        f"the judge at gate.judge.url {spec.url} (model {spec.model}) did not answer: {share}; "
        f"e.g. {unreachable[0].error}"
    )
    if spec.on_judge_error == "pass":
        return outage
    raise JudgeError(
        f"{outage}. Start the judge (or fix gate.judge.url), then run evaluate again; or set "
        "gate.judge.on_judge_error: pass to let the gate decide on its other rules during an outage"
    )


def table_html(items: list[dict[str, Any]], n: int = 10) -> str:
    """The report's table of the judge's worst prompts (:func:`worst`): those it failed on (at most ``n``,
    with the error), then the ``n`` worst judged."""
    if not items:
        return ""
    rows = []
    for it in worst(items, n):
        if "outcome" in it:  # pairwise
            first, second = it["candidate_first"], it["champion_first"]
            verdict = f"{it['outcome']} (A={first.get('value')}, then A={second.get('value')})"
            why = _error(it) if judging_failed(it) else first.get("rationale") or ""
            cells = [it["prompt"], it["reference"], it["candidate"], it["champion"], verdict, why]
        else:
            c = it["candidate"]
            score = "failed" if c["score"] is None else f"{c['score']:g}"
            cells = [
                it["prompt"],
                it["reference"],
                c["answer"],
                score,
                c.get("rationale") or c.get("error") or "",
            ]
        rows.append("<tr>" + "".join(f"<td><pre>{html.escape(str(x))}</pre></td>" for x in cells) + "</tr>")
    heads = (
        ["prompt", "reference", "candidate", "production", "verdict", "rationale"]
        if "outcome" in items[0]
        else ["prompt", "reference", "answer", "score", "rationale"]
    )
    return (
        "<h2>judge: worst prompts first (any it failed on, then the worst judged)</h2><table><tr>"
        + "".join(f"<th>{h}</th>" for h in heads)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _side(v: Verdict, answer: str) -> dict[str, Any]:
    return {"answer": answer, **{k: x for k, x in asdict(v).items() if k != "value"}, "score": v.value}


def _mean_score(verdicts: list[Verdict]) -> dict[str, Any]:
    scores = [v.value for v in verdicts if v.kind is None]
    return {
        "judge_score": sum(scores) / len(scores),
        "judge_judged": len(scores),
        "judge_failures": len(verdicts) - len(scores),
    }


def _pointwise_figures(identity, prompts, refs, cand, mine, champ, theirs) -> Judged:
    items = [
        {
            "index": i,
            "prompt": prompts[i],
            "reference": refs[i],
            "candidate": _side(mine[i], cand[i]),
            **({"champion": _side(theirs[i], champ[i])} if theirs is not None else {}),
        }
        for i in range(len(mine))
    ]
    items.sort(key=lambda it: (it["candidate"]["score"] is not None, it["candidate"]["score"] or 0))
    figures = _mean_score(mine)
    agree = agreement([v.value if v.kind is None else None for v in mine], refs, cand)
    if agree is not None:
        figures["judge_exact_agreement"] = agree
    return Judged(
        "judged",
        identity,
        candidate=figures,
        champion=_mean_score(theirs) if theirs is not None else None,
        items=items,
    )


def _pairwise_figures(identity, prompts, refs, cand, champ, pairs) -> Judged:
    items, tally = [], Counter()
    for i, (first, second) in enumerate(pairs):
        result = outcome(first, second) if first.kind is None and second.kind is None else "failed"
        tally[result] += 1
        consistent = result != "failed" and first.value == {"A": "B", "B": "A", "tie": "tie"}[second.value]
        tally["consistent"] += consistent
        items.append(
            {
                "index": i,
                "prompt": prompts[i],
                "reference": refs[i],
                "candidate": cand[i],
                "champion": champ[i],
                "outcome": result,
                "orders_agree": consistent,
                "candidate_first": asdict(first),
                "champion_first": asdict(second),
            }
        )
    judged = tally["win"] + tally["tie"] + tally["loss"]
    won = tally["win"] + tally["tie"] / 2
    low, high = wilson(won, judged)
    order = {"loss": 0, "failed": 1, "tie": 2, "win": 3}
    items.sort(key=lambda it: order[it["outcome"]])
    figures = {
        "judge_win_rate": won / judged,
        "judge_win_rate_low": low,
        "judge_win_rate_high": high,
        "judge_wins": tally["win"],
        "judge_ties": tally["tie"],
        "judge_losses": tally["loss"],
        "judge_judged": judged,
        "judge_failures": tally["failed"],
        "judge_orders_agree": tally["consistent"] / judged,
    }
    return Judged("judged", identity, candidate=figures, items=items)


__all__ = [
    "FORMATS",
    "JudgeClient",
    "JudgeError",
    "Judged",
    "Verdict",
    "agreement",
    "failure_kinds",
    "judging_failed",
    "openai_client",
    "outcome",
    "pairwise",
    "parse_pairwise",
    "parse_pointwise",
    "pointwise",
    "prompt_text",
    "run",
    "short",
    "table_html",
    "wilson",
    "worst",
]
