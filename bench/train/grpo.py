"""GRPO: freestack's loop (``train.objective: grpo``) against TRL's ``GRPOTrainer`` on the same checkable task,
starting model, prompts and hyper-parameters, in one run: the exact match each reaches after the same
steps, and the tokens each puts through per second.

    python -m bench.train.grpo [--prompts 256] [--epochs 2] [--num-generations 8] [--repeats 3]
                               [--threads 1] [--out bench/results/grpo_train.json]
    python -m bench.train.grpo --rollouts continuous --out bench/results/grpo_train_continuous.json
    python -m bench.train.grpo --prompts 32 --epochs 1 --repeats 1 --out /tmp/grpo.json   # smoke run

The task is the instruction-tuning tutorial's (sums, reversed digits, dates: one right answer each), the
reward exact match against it. The starting model is the tutorial's small local base
(``include/demo/tiny_lm.py``, about 100k weights) instruction-tuned carelessly (30% of its answers wrong,
as the DPO tests' start), so that there is something for the reward to correct. Both sides train its
full weights with ``num_generations`` answers sampled per prompt at temperature 1 (``top_k`` 0), at most
12 tokens, 16 prompts per step (one optimiser step per batch of samples), beta 0.04 (the reference: a
frozen copy of the start on both sides), epsilon 0.2, TRL's ``dapo`` loss and group-scaled rewards,
AdamW at 5e-4 with a cosine schedule, no weight decay, gradients clipped to 1, in float32 without
activation checkpointing (TRL's ``bf16`` and ``gradient_checkpointing`` defaults turned off). Each side runs in a fresh
process, alternating, ``--repeats`` times, with the same torch threads:

- ``freestack``: ``GrpoEncoding`` + ``GrpoNet``, its splits from ``grpo_splits``, in ``fit_source(task="grpo")``;
- ``trl``: ``GRPOTrainer`` with the same settings (``per_device_train_batch_size`` = 16 x
  ``num_generations`` completions, ``steps_per_generation`` 1).

``--rollouts`` says what samples the answers on both sides: ``padded`` (default), ``generate`` on the
left-padded batch (freestack's ``train.grpo.rollouts: padded``, TRL's default); ``continuous``, transformers'
continuous batching (freestack's engine, ``rollouts: continuous``; TRL's
``use_transformers_continuous_batching``). The report is ``grpo_train`` or ``grpo_train_continuous``.

exact match = greedy answers (freestack's ``generate``, the same call for both) to 200 held-out prompts
equal to the right answer, before and after; tokens/s = prompt and completion tokens put through (TRL's
``num_input_tokens_seen``) / the training's seconds (freestack's ``TrainResult.train_seconds``, TRL's
``on_train_begin`` to ``on_train_end``); ratio = median freestack / median TRL (target >= 1.0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import add_child_options, alternating, parser, write_report
from bench.train.dpo import preference_rows
from bench.train.sft import SEED, _demo

TARGET = 1.0
BATCH = 16
SETTINGS = {"max_completion_length": 12, "beta": 0.04, "epsilon": 0.2, "loss": "dapo", "temperature": 1.0}
LR = 5e-4


def make_start(work: Path) -> Path:
    """The tutorial's tiny base, instruction-tuned on answers of which 30% are wrong (the DPO tests' start)."""
    import numpy as np
    import torch

    from freestack.ml.lm.causal import CausalLMNet, load_causal_lm
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.prompts import ChatEncoding, load_tokenizer
    from freestack.ml.loop import TrainConfig, fit_source
    from freestack.ml.stream import InMemory

    base = _demo("tiny_lm").tiny_causal_lm(work / "base")
    model, tok = load_causal_lm(str(base)), load_tokenizer(base)
    rows = preference_rows(300, SEED)
    flip = np.random.default_rng(5).random(len(rows)) < 0.3
    rows = [{**r, "chosen": r["rejected"] if f else r["chosen"]} for r, f in zip(rows, flip, strict=True)]
    columns = ChatColumns(prompt="prompt", response="chosen")
    enc = ChatEncoding(tok, columns, 48).encode_rows(rows)
    source = InMemory({k: torch.tensor(v) for k, v in enc.x.items()}, torch.tensor(enc.y))
    config = TrainConfig(epochs=6, learning_rate=3e-3, batch_size=16, warmup_epochs=0, device="cpu")
    fit_source(
        CausalLMNet(model, base={}, columns=columns, max_length=48), source, source, config, task="generation"
    )
    start = work / "start"
    model.save_pretrained(start)
    tok.save_pretrained(start)
    return start


def exact_match(model, tok, rows: list[dict[str, str]]) -> float:
    from freestack.ml.lm.answers import GenerationSettings
    from freestack.ml.lm.sampling import generate

    chats = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    answers = generate(model.eval(), tok, chats, GenerationSettings(max_new_tokens=12))
    return sum(a.text == r["chosen"] for a, r in zip(answers, rows, strict=True)) / len(rows)


def run_freestack(args: argparse.Namespace, train: list[dict], test: list[dict]) -> dict[str, Any]:
    import torch

    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.grpo import GrpoEncoding, GrpoNet, GrpoSettings
    from freestack.ml.lm.prompts import eos_ids, load_tokenizer
    from freestack.ml.lm.rewards import Reward, RewardSet
    from freestack.ml.lm.rewards import exact_match as exact
    from freestack.ml.lm.rollout_sources import grpo_splits
    from freestack.ml.loop import fit_source, warm_up
    from freestack.ml.stream import InMemory

    start = str(Path(args.workdir) / "start")
    tok, model = load_tokenizer(start), load_causal_lm(start)
    columns = ChatColumns(prompt="prompt", response="chosen")
    settings = GrpoSettings(num_generations=args.num_generations, rollouts=args.rollouts, **SETTINGS)
    rewards = RewardSet((Reward("exact_match", 1.0, exact("chosen")),))
    net = GrpoNet(
        model, grpo=settings, reward_names=("exact_match",), base={}, columns=columns, max_length=48
    )
    enc = GrpoEncoding(tok, columns, 48)
    encoded = enc.encode_rows(train)
    source = InMemory({k: torch.tensor(v) for k, v in encoded.x.items()}, torch.tensor(encoded.y))
    splits = grpo_splits(
        net, {"train": source, "val": source}, enc, rewards, eos_ids(tok, model.generation_config.to_dict())
    )
    warm_up()
    torch.manual_seed(SEED)
    result = fit_source(net, splits["train"], splits["val"], train_config(args), task="grpo")
    completions = len(train) * args.num_generations
    prompt_tokens = int(encoded.x["attention_mask"].sum()) * args.num_generations * args.epochs
    sampled = sum(h["train_completion_length"] * completions for h in result.history)
    return {
        "train_seconds": result.train_seconds,
        "tokens": prompt_tokens + round(sampled),
        "exact_match": exact_match(model, tok, test),
    }


def train_config(args: argparse.Namespace):
    """freestack's loop settings of the bench: AdamW at LR, no decay, clipped at 1, every epoch trained."""
    from freestack.ml.loop import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        learning_rate=LR,
        batch_size=BATCH,
        weight_decay=0.0,
        grad_clip=1.0,
        warmup_epochs=0,
        seed=SEED,
        device="cpu",
        patience=args.epochs,
    )


def run_trl(args: argparse.Namespace, train: list[dict], test: list[dict]) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.prompts import load_tokenizer
    from freestack.ml.loop import warm_up

    hf_logging.set_verbosity_error()
    start = str(Path(args.workdir) / "start")
    tok, model = load_tokenizer(start), load_causal_lm(start)
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": r["chosen"]} for r in train]
    )

    def exact(completions, chosen, **_):
        return [float(c[0]["content"].strip() == a.strip()) for c, a in zip(completions, chosen, strict=True)]

    class Clock(TrainerCallback):
        start = end = 0.0

        def on_train_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_train_end(self, *_, **__):
            self.end = time.perf_counter()

    config = GRPOConfig(
        output_dir=str(Path(args.workdir) / "trl"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=BATCH * args.num_generations,
        num_generations=args.num_generations,
        steps_per_generation=1,
        max_completion_length=SETTINGS["max_completion_length"],
        temperature=SETTINGS["temperature"],
        top_k=0,
        beta=SETTINGS["beta"],
        epsilon=SETTINGS["epsilon"],
        loss_type=SETTINGS["loss"],
        scale_rewards="group",
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=SEED,
        dataloader_num_workers=0,
        use_transformers_continuous_batching=args.rollouts == "continuous",
        # the KV cache freestack's engine takes (a page of 256 tokens for each answer of a step): TRL's
        # default sizes it from the machine's memory (half of it on a CPU), allocated again every step
        transformers_continuous_batching_config={
            "num_blocks": BATCH * args.num_generations,
            "max_batch_tokens": max(1024, BATCH * args.num_generations),
        },
        bf16=False,  # TRL's defaults (bf16 autocast, activation checkpointing) on a CPU: freestack runs neither
        gradient_checkpointing=False,
    )
    clock = Clock()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[exact],
        args=config,
        train_dataset=data,
        processing_class=tok,
        callbacks=[clock],
    )
    warm_up()
    trainer.train()
    return {
        "train_seconds": clock.end - clock.start,
        "tokens": int(trainer.state.num_input_tokens_seen),
        "exact_match": exact_match(trainer.model, tok, test),
    }


def child_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rows = preference_rows(args.prompts + 200, SEED + 7)
    train, test = rows[: args.prompts], rows[args.prompts :]
    out = (run_freestack if args.child == "freestack" else run_trl)(args, train, test)
    out.update(
        side=args.child, tokens_per_s=out["tokens"] / out["train_seconds"], threads=torch.get_num_threads()
    )
    print(json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.train.grpo", __doc__, out="grpo_train.json", workdir=True)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rollouts", choices=("padded", "continuous"), default="padded")
    add_child_options(ap, experiments=False)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        make_start(work)
        before = _start_exact_match(work, args)
        keep = ["--prompts", str(args.prompts), "--epochs", str(args.epochs)]
        keep += [
            "--num-generations",
            str(args.num_generations),
            "--threads",
            str(args.threads),
            "--rollouts",
            args.rollouts,
            "--workdir",
            str(work),
        ]
        samples = alternating("bench.train.grpo", keep, args.repeats, timeout=args.timeout)
    median = {s: statistics.median(r["tokens_per_s"] for r in runs) for s, runs in samples.items()}
    exact = {s: statistics.median(r["exact_match"] for r in runs) for s, runs in samples.items()}
    report = {
        # not a train_* name: bench.report's table does not read this report
        "name": "grpo_train" if args.rollouts == "padded" else "grpo_train_continuous",
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out", "workdir")},
        "grpo": {**SETTINGS, "learning_rate": LR, "prompts_per_step": BATCH},
        "exact_match_start": before,
        "median_exact_match": exact,
        "median_tokens_per_s": median,
        "ratio": median["freestack"] / median["trl"],
        "target": TARGET,
        "samples": samples,
    }
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("exact_match_start", "median_exact_match", "median_tokens_per_s", "ratio")
            }
        )
    )
    write_report(report, args.out)
    return 0


def _start_exact_match(work: Path, args: argparse.Namespace) -> float:
    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.prompts import load_tokenizer

    rows = preference_rows(args.prompts + 200, SEED + 7)[args.prompts :]
    start = str(work / "start")
    return exact_match(load_causal_lm(start), load_tokenizer(start), rows)


if __name__ == "__main__":
    raise SystemExit(main())
