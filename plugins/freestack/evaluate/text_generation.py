"""The evaluation of a text-generation model (``model.task: text-generation``) on the held-out rows.

Both models, the candidate and production, answer the same test conversations: their per-token loss and
perplexity on the reference answers (every test row), and ``model.generation.metric`` over their greedy
answers (at most ``max_rows`` rows, ``max_new_tokens`` tokens each): exact match (the answer equals the
reference, whitespace trimmed) and ROUGE-L F1 (Google's ``rouge-score``). The report puts sample prompts
with the reference and both models' answers side by side; ``smoke.json`` holds the answers the deploy
stage expects a freshly started server to give, one prompt at a time. With ``gate.judge``, the judge
(:mod:`freestack.judging.client`) gives its verdicts on both models' answers to the test prompts and to
its golden set (:func:`judged_by`), and its figures join their metrics. Importing it loads torch (the ML
core's generation); :mod:`freestack.evaluate.measure` and :mod:`freestack.evaluate.report` import it.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from freestack.errors import EvaluationError
from freestack.judging import client as llm_judge
from freestack.judging.client import JudgeError, project_file
from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.causal import token_metrics
from freestack.ml.lm.chat import ChatError, parse_messages
from freestack.ml.lm.prompts import answer_text
from freestack.ml.lm.sampling import generate
from freestack.ml.loop import to_tensors
from freestack.ml.stream import InMemory
from freestack.monitor.core import build_reference

if TYPE_CHECKING:
    from freestack.keys import Keys
    from freestack.spec import PipelineSpec
    from freestack.version import LoadedVersion

log = logging.getLogger(__name__)


@dataclass
class Answers:
    """One model's answers to the test prompts, and its metrics."""

    metrics: dict[str, Any]
    texts: list[str]


def chats_of(pre, frame) -> tuple[list[list[dict[str, str]]], list[str]]:
    """The test rows' prompt conversations and reference answers: their last assistant turn, as the model
    writes it (a turn of tool calls as the chat template lays them out)."""
    chats, refs = [], []
    for i, row in enumerate(frame[pre.columns.columns].to_dict("records")):
        chat = pre.columns.answered(row, i)
        chats.append(chat[:-1])
        refs.append(answer_text(pre.tokenizer, chat, pre.columns.tools))
    return chats, refs


def golden_set(path: str) -> tuple[list[list[dict[str, str]]], list[str | None]]:
    """The judge's golden set (``gate.judge.golden``): each line's conversation and reference (None without
    one). A line that is not a JSON object with a prompt, or has a bad chat, fails naming the line."""
    chats, refs = [], []
    for n, line in enumerate(project_file(path, "golden").read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"gate.judge.golden ({path}) line {n}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or ("prompt" in row) == ("messages" in row):
                raise ValueError('one JSON object with "prompt" (text) or "messages" (a chat), not both')
            if "messages" in row:
                chat = parse_messages(row["messages"], where)
            elif isinstance(row["prompt"], str) and row["prompt"].strip():
                chat = [{"role": "user", "content": row["prompt"]}]
            else:
                raise ValueError('"prompt" must be non-empty text')
            ref = row.get("reference")
            if ref is not None and not isinstance(ref, str):
                raise ValueError('"reference" must be text')
        except (ValueError, ChatError) as exc:
            raise JudgeError(f"{where}: {exc}") from None
        chats.append(chat)
        refs.append(ref)
    if not chats:
        raise JudgeError(f"gate.judge.golden ({path}) holds no prompts")
    return chats, refs


def texts_of(model, pre, chats: list[list[dict[str, str]]], spec: PipelineSpec) -> list[str]:
    """A model's greedy answers to ``chats``, ``model.generation.batch_size`` at a time."""
    lm = model.model if hasattr(model, "model") else model
    size = spec.model.generation.batch_size
    out: list[str] = []
    for i in range(0, len(chats), size):
        batch = chats[i : i + size]
        out += [
            c.text for c in generate(lm, pre.tokenizer, batch, settings_for(spec), tools=pre.columns.tools)
        ]
    return out


def rouge_l(references: list[str], answers: list[str]) -> float:
    """The mean ROUGE-L F1 of ``answers`` against ``references`` (``rouge-score``, no stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score(r, a)["rougeL"].fmeasure for r, a in zip(references, answers, strict=True)]
    return float(sum(scores) / len(scores)) if scores else 0.0


def exact_match(references: list[str], answers: list[str]) -> float:
    hits = [r.strip() == a.strip() for r, a in zip(references, answers, strict=True)]
    return float(sum(hits) / len(hits)) if hits else 0.0


def settings_for(spec: PipelineSpec):
    g = spec.model.generation
    return GenerationSettings(
        max_new_tokens=g.max_new_tokens, max_prompt_tokens=spec.model.max_length, truncate="left"
    )


def answer(model, pre, frame, spec: PipelineSpec) -> Answers:
    """One model's loss/perplexity on every test row and its greedy answers to the first ``max_rows``."""
    import torch

    g = spec.model.generation
    enc = pre.encode_rows(frame[pre.columns.columns].to_dict("records"), packing=False)
    source = InMemory(to_tensors(enc.x), torch.as_tensor(enc.y))
    metrics: dict[str, Any] = {
        "task": "generation",
        "rows": int(len(frame)),
        **token_metrics(model, source, torch.device("cpu")),
    }
    chats, refs = chats_of(pre, frame.head(g.max_rows))
    texts = texts_of(model, pre, chats, spec)
    metrics.update(
        exact_match=exact_match(refs, texts), rouge_l=rouge_l(refs, texts), generated_rows=len(texts)
    )
    return Answers(metrics, texts)


def smoke_sample(model, pre, frame, spec: PipelineSpec, key: str, n: int = 64) -> dict[str, Any]:
    """The lowest-keyed test rows' prompts and the model's greedy answers, one prompt at a time (no
    padding): what a freshly started server must answer to the same requests."""
    rows = frame.sort_values(key, kind="stable").head(n) if key in frame.columns else frame.head(n)
    chats, refs = chats_of(pre, rows)
    lm = model.model if hasattr(model, "model") else model
    tools = pre.columns.tools
    done = [generate(lm, pre.tokenizer, [chat], settings_for(spec), tools=tools)[0] for chat in chats]
    return {
        "task": "generation",
        "features": list(pre.features),
        "keys": rows[key].astype(str).tolist() if key in rows.columns else [],
        "chats": chats,
        "labels": refs,
        "outputs": [c.text for c in done],
        "finish_reasons": [
            c.finish_reason for c in done
        ],  # the monitor's truncation rate is judged against them
        "max_new_tokens": spec.model.generation.max_new_tokens,
    }


def samples_table(
    chats, refs: list[str], cand: list[str], champ: list[str] | None, n: int
) -> list[dict[str, str]]:
    """The first ``n`` test prompts with the reference and both models' answers."""
    return [
        {
            "prompt": "\n".join(f"{m['role']}: {m['content']}" for m in chats[i]),
            "reference": refs[i],
            "candidate": cand[i],
            **({"champion": champ[i]} if champ else {}),
        }
        for i in range(min(n, len(cand)))
    ]


def samples_html(samples: list[dict[str, str]]) -> str:
    if not samples:
        return ""
    heads = list(samples[0])
    rows = "".join(
        "<tr>" + "".join(f"<td><pre>{html.escape(s[h])}</pre></td>" for h in heads) + "</tr>" for s in samples
    )
    return (
        "<h2>sample answers</h2><table><tr>"
        + "".join(f"<th>{h}</th>" for h in heads)
        + f"</tr>{rows}</table>"
    )


def reference_of(
    spec: PipelineSpec, frame, answers: list[str], version: str, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The monitor's reference: the window's prompts (text statistics) and the answers' lengths in
    characters (the served answers' lengths are compared with them)."""
    n = spec.monitor.reference_rows
    sample = frame.sample(n, random_state=0) if len(frame) > n else frame
    metric = spec.gate.metric if isinstance(metrics.get(spec.gate.metric or ""), float) else None
    return build_reference(
        spec,
        sample,
        [float(len(a)) for a in answers],
        version=version,
        source="window",
        metric=(metric, metrics[metric]) if metric else None,
    )


def both_answers(spec: PipelineSpec, model, pre, champion: LoadedVersion | None, frame) -> tuple:
    """(the candidate's :class:`Answers` to the test rows, the champion's or None, the
    prompts as chats and their references, at most ``max_rows`` of each)."""
    mine = answer(model, pre, frame, spec)
    theirs = answer(champion.model, champion.preprocessor, frame, spec) if champion else None
    return mine, theirs, *chats_of(pre, frame.head(spec.model.generation.max_rows))


def golden_answers(spec: PipelineSpec, model, pre, champion: LoadedVersion | None) -> tuple | None:
    """The judge's golden set (``gate.judge.golden``) and both models' answers to it: (chats, references,
    the candidate's answers, production's or None); None without one."""
    judge = spec.gate.judge
    if judge is None or judge.golden is None:
        return None
    try:
        chats, refs = golden_set(judge.golden)
    except JudgeError as exc:
        raise EvaluationError(str(exc)) from None
    theirs = texts_of(champion.model, champion.preprocessor, chats, spec) if champion else None
    return chats, refs, texts_of(model, pre, chats, spec), theirs


def judged_by(spec: PipelineSpec, chats, refs, cand: Answers, champ: Answers | None, keys: Keys, golden=None):
    """The judge's verdicts on both models' answers to the test prompts (at most ``max_rows``) and the
    golden set's (:func:`golden_answers`), each item naming its ``source``; None without ``gate.judge``.
    Its figures are added to the models' metrics, its status and identity to the candidate's (``judge``:
    what lineage keeps)."""
    if spec.gate.judge is None:
        return None
    mine, theirs = list(cand.texts), (list(champ.texts) if champ else None)
    try:
        judge = llm_judge.with_rubric_file(spec.gate.judge)
        n = min(len(chats), len(mine), judge.max_rows or len(mine))
        chats, refs, mine = list(chats[:n]), list(refs[:n]), mine[:n]
        theirs = theirs[:n] if theirs is not None else None
        if golden is not None:
            chats, refs, mine = chats + golden[0], refs + golden[1], mine + golden[2]
            theirs = theirs + golden[3] if theirs is not None and golden[3] is not None else theirs
        judged = llm_judge.run(judge, chats, refs, mine, theirs, keys.judge)
    except JudgeError as exc:
        raise EvaluationError(str(exc)) from None
    for item in judged.items:
        item["source"] = "test" if item["index"] < n else "golden"
    judged.candidate["judge_golden_rows"] = len(golden[0]) if golden is not None else 0
    cand.metrics.update(
        judged.candidate, judge={"status": judged.status, **judged.identity, "reason": judged.reason}
    )
    if champ is not None and judged.champion:
        champ.metrics.update(judged.champion)
    return judged


__all__ = [
    "Answers",
    "answer",
    "both_answers",
    "chats_of",
    "exact_match",
    "golden_answers",
    "judged_by",
    "reference_of",
    "rouge_l",
    "samples_html",
    "samples_table",
    "smoke_sample",
]
