"""A text-generation model's text signals: its logged prompts and answers against its evaluation's.

The reference is what the evaluate task kept of the version (``evaluation/smoke.json`` in its folder): up
to 64 test prompts and the version's own greedy answers to them. Against it, per interval and version:

- **embedding drift** of prompts and of completions (``monitor.text.encoder``): a small sentence encoder
  (a transformers model; its last hidden state mean-pooled over the tokens, then L2-normalized) embeds the
  reference and a seeded sample of the interval (``sample_rows``); the statistic is the squared maximum mean
  discrepancy (MMD²; unbiased, RBF kernel, bandwidth the median pairwise distance) with a permutation
  p-value. A kernel test rather than a classifier test: nothing is fitted, it is calibrated at any sample
  size (the reference is small) and costs one kernel matrix and a few matrix products;
- **rates**: empty answers, refusals (answers opening with one of ``refusals``) and truncated answers
  (``finish_reason: length``), each against the evaluation's answers with a one-sided Fisher exact test;
  the stop-reason mix and the prompts cut from the left are reported beside them. The evaluation records
  no finish reasons (its answers stop at its own ``model.generation.max_new_tokens``), so the truncation
  rate is judged against ``max_truncation_rate`` unless the sample names them (``finish_reasons``);
- **judge** (``judge_rows``): ``gate.judge`` scores a seeded sample of the answers pointwise against the
  version's ``judge_score`` at evaluation. A version without one (evaluated pairwise, without a judge or
  while it was down) has the signal off, and its note (the monitor's notes, the report) says why.

Importing this module is light; torch and transformers load when an encoder first embeds.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from freestack.errors import FreestackError
from freestack.judging import client as llm_judge
from freestack.keys import NO_KEYS, Keys
from freestack.registry.core import registry_for
from freestack.storage import join, to_path

if TYPE_CHECKING:
    from freestack.monitor.spec import TextDrift
    from freestack.spec import PipelineSpec

#: the evaluation's sample of a version's test prompts and answers, in its folder
SAMPLE = "evaluation/smoke.json"
_SCHEMES = ("file://", "/", "./", "../", "~")
_TORCH = threading.Lock()  # torch's thread count is process-wide


class TextDriftError(FreestackError):
    """The text signals cannot be computed (an encoder that is missing or cannot be read)."""


@dataclass
class Reference:
    """The evaluation's prompts (their user turns' text) and answers, and their finish reasons if kept."""

    prompts: list[str]
    answers: list[str]
    finish_reasons: list[str] | None = None


# ---------------------------------------------------------------------------------------------------------
# texts


def prompt_text(value: Any) -> str:
    """A logged prompt as text: a chat (a list of turns, or its JSON) as its user turns' contents, one per
    line; plain text as it is. The evaluation's chats and the served requests read alike."""
    chat = value
    if isinstance(value, str):
        if not value.lstrip().startswith("["):
            return value
        try:
            chat = json.loads(value)
        except ValueError:
            return value
    if isinstance(chat, list) and all(isinstance(m, dict) for m in chat):
        return "\n".join(str(m.get("content", "")) for m in chat if m.get("role") == "user")
    return "" if chat is None else str(chat)


def is_refusal(answer: str, openings: list[str]) -> bool:
    start = answer.lstrip().lower()
    return any(start.startswith(o.lower()) for o in openings)


def read_reference(spec: PipelineSpec, version: str) -> Reference | None:
    """The version's evaluation sample (None when it has none: evaluated before it was kept)."""
    path = join(to_path(registry_for(spec).version_uri(version)), SAMPLE)
    if not path.exists():
        return None
    got = json.loads(path.read_text())
    reasons = got.get("finish_reasons")
    return Reference([prompt_text(c) for c in got.get("chats", [])], list(got.get("outputs", [])), reasons)


# ---------------------------------------------------------------------------------------------------------
# the encoder


def encoder_folder(cfg: TextDrift) -> str:
    """``monitor.text.encoder`` as a local folder: a path or file:// URI that must exist, or a Hub repo
    fetched once (its safetensors, config and tokenizer)."""
    name = str(cfg.encoder)
    if name.startswith(_SCHEMES) or Path(name).expanduser().is_dir():
        folder = Path(name.removeprefix("file://")).expanduser()
        if not (folder / "config.json").is_file():
            raise TextDriftError(
                f"monitor.text.encoder {name!r}: {folder} "
                + ("holds no config.json" if folder.is_dir() else "does not exist")
                + "; point it at a folder written by save_pretrained (config.json, model.safetensors, tokenizer)"
            )
        return str(folder)
    return _hub(name, cfg.revision)


@lru_cache(maxsize=4)
def _hub(repo: str, revision: str) -> str:
    """A Hub repo's encoder files (fetched once per process: the monitor judges every version of an interval)."""
    from freestack.ml.pretrained import PretrainedError, fetch_base

    try:
        return fetch_base(repo, revision).folder
    except PretrainedError as exc:
        raise TextDriftError(str(exc).replace("model.base", "monitor.text.encoder")) from None


@lru_cache(maxsize=2)
def _load(folder: str):
    from transformers import AutoModel, AutoTokenizer

    try:
        tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise TextDriftError(
            f"monitor.text.encoder: {folder} cannot be loaded as a transformers encoder and tokenizer "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    return tok, model.eval()


def embed(folder: str, texts: list[str], cfg: TextDrift, batch: int = 32) -> np.ndarray:
    """The texts' embeddings (rows of unit length): the mean of the last hidden state over each text's
    tokens, at most ``max_tokens`` (and the model's positions), with ``threads`` torch threads."""
    import torch

    tok, model = _load(folder)
    limit = min(
        cfg.max_tokens, getattr(model.config, "max_position_embeddings", cfg.max_tokens) or cfg.max_tokens
    )
    out = []
    with _TORCH:
        before = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            with torch.no_grad():
                for i in range(0, len(texts), batch):
                    enc = tok(
                        texts[i : i + batch],
                        padding=True,
                        truncation=True,
                        max_length=limit,
                        return_tensors="pt",
                    )
                    hidden = model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                    out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        finally:
            torch.set_num_threads(before)
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


# ---------------------------------------------------------------------------------------------------------
# statistics


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int = 0) -> dict[str, float]:
    """The unbiased squared MMD of samples ``x`` and ``y`` (RBF kernel, bandwidth the median pairwise
    distance of both) and its permutation p-value ((1 + permutations at least as large) / (1 + all))."""
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum(z * z, 1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[np.triu_indices(len(z), 1)]
    median = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / (2 * median))
    n, m = len(x), len(y)
    rng = np.random.default_rng(seed)
    first = np.zeros((permutations + 1, n + m), bool)
    first[0, :n] = True
    for p in range(1, permutations + 1):
        first[p, rng.permutation(n + m)[:n]] = True
    a, b = first.astype(np.float64), (~first).astype(np.float64)
    ka = a @ k
    s_xx, s_xy, s_yy = np.sum(ka * a, 1), np.sum(ka * b, 1), np.sum((b @ k) * b, 1)
    stat = (s_xx - n) / (n * (n - 1)) + (s_yy - m) / (m * (m - 1)) - 2 * s_xy / (n * m)
    return {
        "mmd2": float(stat[0]),
        "p_value": float((1 + np.sum(stat[1:] >= stat[0])) / (1 + permutations)),
        "bandwidth": float(np.sqrt(median)),
    }


def rate_test(hits: int, rows: int, ref_hits: int, ref_rows: int) -> float:
    """One-sided Fisher exact p-value that the interval's rate is above the reference's."""
    from scipy.stats import fisher_exact

    if not rows or not ref_rows:
        return 1.0
    return float(
        fisher_exact([[hits, rows - hits], [ref_hits, ref_rows - ref_hits]], alternative="greater")[1]
    )


# ---------------------------------------------------------------------------------------------------------
# one version's interval


def judge(spec: PipelineSpec, version: str, rows, seed: int = 0, keys: Keys = NO_KEYS) -> dict[str, Any]:
    """The text signals of one version's logged rows (``input.<prompt>``, ``prediction``, ``finish_reason``,
    ``truncated``) against its evaluation sample: each signal's value, reference, p-value and verdict."""
    cfg = spec.monitor.text
    ref = read_reference(spec, version)
    if ref is None or not ref.prompts:
        note = f"version {version} has no evaluation sample ({SAMPLE}): its text signals are not judged; "
        return {"signals": [], "drifted": [], "note": note + "evaluate it again to keep one"}
    answers = ["" if a is None else str(a) for a in rows["prediction"].tolist()]
    signals = _rates(cfg, answers, rows, ref)
    judging = bool(cfg.judge_rows and spec.gate.judge is not None)
    prompts = _logged_prompts(rows) if cfg.encoder or judging else None
    if cfg.encoder:
        signals = _embedded(spec, prompts or [], answers, ref, seed) + signals
    if judging:
        signals.append(_judged(spec, version, prompts or [""] * len(answers), answers, seed, keys.judge))
    off = [s["note"] for s in signals if s.get("off")]
    for s in signals:
        s["alerts"] = bool(s["drifted"] and s["name"] in cfg.alert_on)
    return {
        "reference": {"source": SAMPLE, "rows": len(ref.prompts)},
        "signals": signals,
        "drifted": [s["name"] for s in signals if s["alerts"]],
        **_endings(rows),
        **({"note": "; ".join(off)} if off else {}),  # the monitor's notes: a signal that is off
    }


def _endings(rows) -> dict[str, Any]:
    """Each logged ``finish_reason``'s share of the rows, and the share of prompts cut (``truncated``)."""
    share = rows["finish_reason"].astype(str).value_counts(normalize=True) if "finish_reason" in rows else {}
    reasons = {str(k): round(float(v), 4) for k, v in dict(share).items()}
    cut = float(rows["truncated"].mean()) if "truncated" in rows and len(rows) else 0.0
    return {"finish_reasons": reasons, "prompts_cut": cut}


def _logged_prompts(rows) -> list[str] | None:
    """The logged prompts as text (the request log's ``input.<prompt>`` column); None without one."""
    prompt = next((c for c in rows.columns if c.startswith("input.")), None)
    return [prompt_text(p) for p in rows[prompt].tolist()] if prompt else None


def _judged(
    spec: PipelineSpec, version: str, prompts: list[str], answers: list[str], seed: int, key: str | None
) -> dict[str, Any]:
    """The judge signal: ``gate.judge`` scores a seeded sample of the interval's answers (at most
    ``judge_rows``, pointwise: a pairwise judge is asked with the default pointwise rubric) against the
    evaluation's ``judge_score``. Without that score (:func:`evaluated_judge`) the signal is off, its note
    saying why, and the judge is not asked. A judge that fails is a note, never a failed monitor."""
    cfg = spec.monitor.text
    evaluated = evaluated_judge(spec, version)
    entry: dict[str, Any] = {"name": "judge", "statistic": "judge_score", "rows": 0, "value": None}
    entry.update(reference=evaluated.score, threshold=cfg.max_judge_drop, drifted=False)
    if evaluated.off is not None:
        return {**entry, "off": True, "note": evaluated.off}
    rows = [i for i, a in enumerate(answers) if a.strip()]
    if len(rows) > cfg.judge_rows:
        rows = sorted(np.random.default_rng(seed).choice(rows, cfg.judge_rows, replace=False).tolist())
    entry["rows"] = len(rows)
    asked = spec.gate.judge
    if asked.mode != "pointwise":
        asked = asked.model_copy(update={"mode": "pointwise", "rubric": None, "rubric_file": None})
    try:
        asked = llm_judge.with_rubric_file(asked)
        chats = [[{"role": "user", "content": prompts[i]}] for i in rows]
        got = llm_judge.run(asked, chats, [None] * len(rows), [answers[i] for i in rows], None, key)
    except llm_judge.JudgeError as exc:
        return {**entry, "note": f"the judge signal was not measured: {exc}"[:1000]}
    if got.status != "judged":
        return {**entry, "note": f"the judge signal was not measured: {got.reason}"}
    c = got.candidate
    entry.update(value=c["judge_score"], judged=c["judge_judged"], failures=c["judge_failures"])
    entry["drifted"] = entry["reference"] - entry["value"] >= cfg.max_judge_drop
    return entry


class EvaluatedJudge(BaseModel):
    """What the judge signal compares with: the version's ``judge_score`` at evaluation, or why it has none
    (``off``: the signal's note)."""

    model_config = ConfigDict(frozen=True)

    score: float | None = None
    off: str | None = None


def evaluated_judge(spec: PipelineSpec, version: str) -> EvaluatedJudge:
    """The version's ``judge_score`` at evaluation (``evaluation/metrics.json``), or why the judge signal
    is off without one: the version was evaluated without a judge, while it was down, or pairwise (a win
    rate against production; judging the served answers pairwise would need production's answers to the
    same prompts, which the request log does not hold, so the monitor scores them pointwise)."""
    path = join(to_path(registry_for(spec).version_uri(version)), "evaluation", "metrics.json")
    summary = json.loads(path.read_text()) if path.exists() else {}
    cand = summary.get("candidate") or {}
    score = cand.get("judge_score")
    if isinstance(score, int | float) and not isinstance(score, bool):
        return EvaluatedJudge(score=float(score))
    judge = cand.get("judge") if isinstance(cand.get("judge"), dict) else {}
    status, reason = judge.get("status"), judge.get("reason") or judge.get("status")
    again = f"Evaluate {version} again with gate.judge answering to record one"
    if not path.exists():
        why, fix = "it has no evaluation/metrics.json", f"Evaluate {version} again"
    elif not judge:
        why, fix = "it was evaluated without gate.judge", again
    elif status == "unavailable":
        why, fix = f"the judge did not answer when it was evaluated ({reason})", again
    elif judge.get("mode") == "pairwise":
        won = cand.get("judge_win_rate")
        why = "the gate judged it pairwise" + (
            f" (win rate {won:.2f} against {summary.get('champion_version') or 'production'})"
            if isinstance(won, int | float)
            else f" and judged nothing ({reason})"
        )
        why += (
            ", and judging the served answers so would need production's answers to the same prompts, "
            "which the request log does not hold"
        )
        fix = "With gate.judge.mode: pointwise each evaluation records one"
    else:
        why, fix = f"its evaluation by gate.judge recorded none ({reason})", again
    return EvaluatedJudge(
        off=f"version {version}: the judge signal is off: it compares the served answers' mean score "
        f"(pointwise) with the version's judge_score at evaluation, and {version} has none: {why}. {fix}, "
        "or set monitor.text.judge_rows: 0 to stop asking"
    )


def _embedded(spec: PipelineSpec, prompts: list[str], answers: list[str], ref: Reference, seed: int) -> list:
    """The prompts' and the completions' embedding drift (a seeded sample of at most ``sample_rows``)."""
    cfg = spec.monitor.text
    folder = encoder_folder(cfg)
    rng = np.random.default_rng(seed)
    out = []
    for name, current, reference in (
        ("prompts", prompts, ref.prompts),
        ("completions", [a for a in answers if a.strip()], [a for a in ref.answers if a.strip()]),
    ):
        if len(current) > cfg.sample_rows:
            current = [current[i] for i in sorted(rng.choice(len(current), cfg.sample_rows, replace=False))]
        entry = {"name": name, "statistic": "mmd2", "rows": len(current), "reference_rows": len(reference)}
        if min(len(current), len(reference)) < 5:
            out.append({**entry, "value": None, "drifted": False, "note": "fewer than 5 texts on a side"})
            continue
        got = mmd_test(embed(folder, reference, cfg), embed(folder, current, cfg), cfg.permutations, seed)
        drifted = got["p_value"] < cfg.p_value and got["mmd2"] >= cfg.min_mmd
        out.append({**entry, "value": got["mmd2"], "p_value": got["p_value"], "threshold": cfg.min_mmd})
        out[-1].update(bandwidth=got["bandwidth"], drifted=bool(drifted))
    return out


def _rates(cfg: TextDrift, answers: list[str], rows, ref: Reference) -> list[dict[str, Any]]:
    """The empty, refusal and truncation rates against the evaluation's (truncation: against the ceiling
    ``max_truncation_rate`` when the evaluation kept no finish reasons)."""
    length = [str(r) == "length" for r in rows["finish_reason"]] if "finish_reason" in rows else []
    ref_length = [str(r) == "length" for r in ref.finish_reasons] if ref.finish_reasons else None
    counted = [
        ("empty", [not a.strip() for a in answers], [not a.strip() for a in ref.answers]),
        (
            "refusal",
            [is_refusal(a, cfg.refusals) for a in answers],
            [is_refusal(a, cfg.refusals) for a in ref.answers],
        ),
        ("truncation", length, ref_length),
    ]
    out = []
    for name, hits, ref_hits in counted:
        rate = float(np.mean(hits)) if hits else 0.0
        entry: dict[str, Any] = {"name": name, "statistic": "rate", "rows": len(hits), "value": rate}
        if ref_hits is None:
            entry.update(reference=None, threshold=cfg.max_truncation_rate, p_value=None)
            entry["drifted"] = bool(hits and rate > cfg.max_truncation_rate)
        else:
            before = float(np.mean(ref_hits)) if ref_hits else 0.0
            p = rate_test(sum(hits), len(hits), sum(ref_hits), len(ref_hits))
            entry.update(
                reference=before, reference_rows=len(ref_hits), threshold=cfg.rate_increase, p_value=p
            )
            entry["drifted"] = bool(rate - before >= cfg.rate_increase and p < cfg.p_value)
        out.append(entry)
    return out


def alert_lines(model: str, version: str, text: dict[str, Any], report: str) -> list[dict[str, Any]]:
    """The monitor's alert lines of a version's text signals that drifted and may alert."""
    out = []
    for s in text.get("signals", []):
        if not s.get("alerts"):
            continue
        if s["statistic"] == "judge_score":
            why = (
                f"judge score {s['value']:.2f} against {s['reference']:.2f} at evaluation ({s['threshold']:g} "
                f"or more lower; {s['rows']} answers judged by gate.judge)"
            )
        elif s["statistic"] == "mmd2":
            why = f"MMD² {s['value']:.4f} >= {s['threshold']:g} and permutation p-value {s['p_value']:.3g}"
        elif s.get("reference") is None:
            why = f"rate {s['value']:.3f} > {s['threshold']:g} (monitor.text.max_truncation_rate)"
        else:
            why = (
                f"rate {s['value']:.3f} against {s['reference']:.3f} at evaluation (+{s['threshold']:g} or more, "
                f"Fisher p-value {s['p_value']:.3g})"
            )
        out.append(
            {
                "version": version,
                "series": f"text.{s['name']}",
                "statistic": s["statistic"],
                "value": None if s["value"] is None else round(s["value"], 4),
                "threshold": s["threshold"],
                "p_value": s.get("p_value"),
                "message": f"{model} {version}: text {s['name']} drifted: {why}; report {report}",
            }
        )
    return out


__all__ = [
    "SAMPLE",
    "EvaluatedJudge",
    "Reference",
    "TextDriftError",
    "alert_lines",
    "embed",
    "encoder_folder",
    "evaluated_judge",
    "is_refusal",
    "judge",
    "mmd_test",
    "prompt_text",
    "rate_test",
    "read_reference",
]
