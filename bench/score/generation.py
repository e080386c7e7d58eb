"""Score-stage batch generation against a plain ``generate`` loop: tokens/s of the score task's answering
of a text-generation version (``freestack.score.answers_writer.answerer``, both of its batchings) and of a
plain transformers loop, on the same version, prompts, threads and machine, in one run.

    python -m bench.score.generation [--size base|small] [--prompts 256] [--max-new-tokens 32]
                                     [--batch-size 16] [--repeats 3] [--threads 1]
                                     [--out bench/results/score_generation.json]
    python -m bench.score.generation --size small --prompts 16 --max-new-tokens 4 --repeats 1 \\
        --out /tmp/sg.json                                                        # smoke run

The version and prompts are bench/serve/generation.py's (a random-weight Llama whose end token never wins,
so every answer runs to ``--max-new-tokens`` on every side). Sides, in one process, greedy:

- ``padded``: the score task's ``batching: padded``: prompts built as the task builds them (the version's
  chat template, its prompt budget), sorted by length, left-padded batches of ``--batch-size`` through
  ``freestack.ml.lm.sampling.generate_ids``.
- ``continuous``: the score task's ``batching: continuous``: the model server's continuous batching
  (``freestack.ml.lm.engine.Engine``), every prompt's answer awaited on one event loop.
- ``plain`` (the baseline): ``AutoModelForCausalLM`` and ``AutoTokenizer`` from the version's folder,
  ``apply_chat_template``, prompts sorted by length, tokenized with left padding in batches of
  ``--batch-size``, ``model.generate`` (greedy), decoded.

``--repeats`` rounds, the sides' order rotating. tokens/s = completion tokens / wall seconds; per side the
median over rounds and ``ratio`` = side / plain (target: ``padded`` >= 0.9). The answers of every side are
compared with the plain loop's (``answers_equal``: greedy on the same weights).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import host, parser, write_report
from bench.serve.generation import make_prompts, make_version

TARGET = 0.9
SIDES = ("padded", "continuous", "plain")


def freestack_side(uri: str, batching: str, prompts: list[str], args) -> tuple[list[str], int, float]:
    """The score task's answers to ``prompts`` with ``batching``: their texts, the tokens generated, and the
    seconds from the prompts' building to the last answer (the model's loading not counted)."""
    from freestack.ml.lm.answers import GenerationSettings
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.prompts import prompt_ids
    from freestack.score.answers_writer import answerer
    from freestack.score.model import ScoringModel
    from freestack.score.spec import GenerationScore

    model = ScoringModel(uri, "cpu")
    g = GenerationScore(max_new_tokens=args.max_new_tokens, batching=batching, batch_size=args.batch_size)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, max_prompt_tokens=int(model.model.max_length)
    )
    columns: ChatColumns = model.model.columns
    with answerer(g, model, settings) as (complete, ran):
        assert ran == batching, ran
        started = time.perf_counter()
        chats = [columns.with_system([{"role": "user", "content": p}]) for p in prompts]
        done = complete([prompt_ids(model.tokenizer, [chat], settings)[0] for chat in chats])
        wall = time.perf_counter() - started
    return [c.text.strip() for c in done], sum(c.completion_tokens for c in done), wall


def plain_side(folder: Path, prompts: list[str], args) -> tuple[list[str], int, float]:
    """A plain transformers loop over the same prompts: length-sorted, left-padded batches, greedy (timed
    as the score side is: from the prompts' building to the last answer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    started = time.perf_counter()
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    order = sorted(range(len(texts)), key=lambda i: len(tok(texts[i], add_special_tokens=False)["input_ids"]))
    answers, tokens = [""] * len(texts), 0
    with torch.inference_mode():
        for k in range(0, len(order), args.batch_size):
            batch = order[k : k + args.batch_size]
            enc = tok([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            out = lm.generate(
                **enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )[:, enc["input_ids"].shape[1] :]
            for i, row in zip(batch, out, strict=True):
                answers[i] = tok.decode(row, skip_special_tokens=True).strip()
                tokens += int((row != tok.pad_token_id).sum())
    return answers, tokens, time.perf_counter() - started


def measure(side: str, uri: str, folder: Path, prompts: list[str], args) -> dict[str, Any]:
    if side == "plain":
        texts, tokens, wall = plain_side(folder, prompts, args)
    else:
        texts, tokens, wall = freestack_side(uri, side, prompts, args)
    return {
        "side": side,
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "texts": texts,
    }


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    rates = {s: statistics.median(x["tokens_per_s"] for x in samples if x["side"] == s) for s in SIDES}
    plain = [x for x in samples if x["side"] == "plain"][0]["texts"]
    summary: dict[str, Any] = {"tokens_per_s": rates, "answers_equal": {}}
    for side in ("padded", "continuous"):
        summary[f"{side}_ratio"] = round(rates[side] / rates["plain"], 3)
        texts = [x["texts"] for x in samples if x["side"] == side][0]
        summary["answers_equal"][side] = sum(a == b for a, b in zip(texts, plain, strict=True)) / len(plain)
    summary["target"], summary["met"] = TARGET, summary["padded_ratio"] >= TARGET
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.score.generation", __doc__, out="score_generation.json")
    ap.add_argument("--size", choices=["base", "small"], default="base")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="freestack-bench-score-gen-"))
    uri, folder, figures = make_version(work, args.size)
    prompts = make_prompts(args.prompts)
    samples = []
    for k in range(args.repeats):
        for side in SIDES[k % 3 :] + SIDES[: k % 3]:  # the order rotates between rounds
            samples.append({**measure(side, uri, folder, prompts, args), "round": k})
            print(f"round {k} {side}: {samples[-1]['tokens_per_s']} tokens/s", flush=True)
    summary = summarise(samples)
    for s in samples:
        del s["texts"]
    params = {k: v for k, v in vars(args).items() if k != "out"} | {"model": figures}
    report = {
        "name": "score_generation",
        "machine": host(),
        "params": params,
        "samples": samples,
        "summary": summary,
    }
    out = write_report(report, args.out, indent=1)
    print(summary, f"\nreport: {out}", sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
