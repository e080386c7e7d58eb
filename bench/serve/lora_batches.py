"""Many LoRA adapters in one batch or in turns: peft's mixed-adapter batches (``generate(adapter_names=...)``,
each row through its own adapter in one forward) against taking turns (``set_adapter``, then one batch of
that adapter's rows, adapter after adapter), what the model server's engine does, at 2 and 8 active
adapters and, as the reference, 1.

    python -m bench.serve.lora_batches [--adapters 1,2,8] [--prompts 32] [--new-tokens 32] [--threads 2]

The base is bench/serve/lora_memory.py's random-weight Llama (``--size large``: 28M parameters), its
adapters rank 8 on every attention and MLP projection (their B matrices drawn at random, so that each
answers differently). Every prompt has the same length (random token ids: no padding, so both ways see
the same numbers) and is answered greedily; the rows go to the adapters in turn. Rounds alternate the two
ways; reported: each way's median seconds and tokens per second, their ratio (mixed / turns: above 1, the
mixed batch is faster), and how many answers the two ways agree on.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.common import host, parser, write_report
from bench.serve.lora_memory import SIZES, TARGETS


def build(size: str, adapters: int, seed: int = 1):
    """The base with ``adapters`` LoRA adapters ``a0``, ``a1``, ... (a peft model) and its vocabulary size."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**SIZES[size], vocab_size=1024, max_position_embeddings=512)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS)
    model = get_peft_model(LlamaForCausalLM(config).eval(), lora, adapter_name="a0")
    for i in range(1, adapters):
        model.add_adapter(f"a{i}", lora)
    draw = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=draw) * 0.05)
    return model.eval(), config.vocab_size


def mixed(model, ids, names: list[str], new_tokens: int):
    """One batch, each row through its own adapter (peft's ``adapter_names``)."""
    return model.generate(
        input_ids=ids, attention_mask=ids.ne(-1).long(), adapter_names=names, **_greedy(new_tokens)
    )


def turns(model, ids, names: list[str], new_tokens: int):
    """One batch per adapter, adapter after adapter; the answers in the rows' order."""
    import torch

    out = torch.empty((ids.shape[0], ids.shape[1] + new_tokens), dtype=ids.dtype)
    for name in dict.fromkeys(names):
        rows = torch.tensor([i for i, n in enumerate(names) if n == name])
        model.set_adapter(name)
        got = model.generate(
            input_ids=ids[rows], attention_mask=ids[rows].ne(-1).long(), **_greedy(new_tokens)
        )
        out[rows, : got.shape[1]] = got
    return out


def _greedy(new_tokens: int) -> dict[str, Any]:
    # min_new_tokens: every row runs to the same length, so both ways generate the same number of tokens
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}


def measure(adapters: int, args) -> dict[str, Any]:
    import torch

    model, vocab = build(args.size, adapters)
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, vocab, (args.prompts, args.prompt_tokens), generator=gen)
    names = [f"a{i % adapters}" for i in range(args.prompts)]
    ways = {"mixed": mixed, "turns": turns}
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    answers = {}
    with torch.inference_mode():
        for w, run in ways.items():  # a warm-up round each
            answers[w] = run(model, ids, names, args.new_tokens)
        for _ in range(args.rounds):
            for w, run in ways.items():
                t0 = time.perf_counter()
                run(model, ids, names, args.new_tokens)
                seconds[w].append(time.perf_counter() - t0)
    tokens = args.prompts * args.new_tokens
    median = {w: statistics.median(s) for w, s in seconds.items()}
    agree = sum(bool((a == b).all()) for a, b in zip(answers["mixed"], answers["turns"], strict=True))
    return {
        "adapters": adapters,
        "seconds": seconds,
        "median_s": median,
        "tokens_per_s": {w: tokens / m for w, m in median.items()},
        "ratio_mixed_over_turns": median["turns"] / median["mixed"],
        "answers_equal": agree,
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = parser("bench.serve.lora_batches", __doc__, out="lora_batches.json")
    ap.add_argument("--adapters", default="1,2,8", help="the numbers of active adapters, comma-separated")
    ap.add_argument("--size", choices=list(SIZES), default="large")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cells = [measure(int(n), args) for n in args.adapters.split(",")]
    report = {
        "name": "lora_batches",
        "machine": host(),
        "params": {k: getattr(args, k) for k in ("size", "prompts", "prompt_tokens", "new_tokens", "rounds")},
        "threads": args.threads,
        "cells": cells,
        "summary": {f"ratio_{c['adapters']}": c["ratio_mixed_over_turns"] for c in cells},
    }
    write_report(report, args.out)
    for c in cells:
        tps = c["tokens_per_s"]
        print(
            f"{c['adapters']} adapter(s): mixed {tps['mixed']:.0f} tok/s, turns {tps['turns']:.0f} tok/s "
            f"(mixed/turns x{c['ratio_mixed_over_turns']:.2f}); {c['answers_equal']}/{args.prompts} answers equal"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
