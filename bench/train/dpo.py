"""DPO throughput: freestack's loop preference-tuning a causal LM with LoRA (``train.objective: dpo``) against
TRL's ``DPOTrainer``, on the same base, pairs, batch, LoRA and beta, in one run.

    python -m bench.train.dpo [--size base|small] [--rows 96] [--batch-size 8] [--max-length 64]
                              [--repeats 3] [--device cpu|cuda] [--threads N] [--out bench/results/dpo_train.json]
    python -m bench.train.dpo --size small --rows 64 --repeats 1 --out /tmp/dpo.json   # smoke run

The base is :mod:`bench.train.sft`'s (a random-weight Llama with the tutorial's ChatML tokenizer; ``base``:
about 98M parameters). The pairs are the instruction-tuning tutorial's prompts with their right answer
(chosen) and a wrong one (rejected: a sum off by one, digits not reversed, a date in the other format).
Each side runs in a fresh process, alternating, ``--repeats`` times, with the same torch threads:

- ``freestack``: ``PreferenceEncoding`` + ``PreferenceNet`` (LoRA), the reference log-probabilities by
  ``score_reference`` (outside the clock), one epoch of ``fit_source(task="preference")``;
- ``trl``: ``DPOTrainer`` with ``precompute_ref_log_probs`` (its reference pass runs before the epoch,
  outside the clock), the same LoRA, batch, learning rate, scheduler, clipping and fused AdamW.

pairs/s = the training pairs / the training epoch's seconds (freestack's ``TrainResult.train_seconds``,
TRL's ``on_epoch_begin`` to ``on_epoch_end``); ratio = median freestack / median TRL (target >= 0.95). The
tokens each side put through (padding excluded) are reported beside it: each side renders the pairs with
its own code, so they may differ by a few tokens per pair.
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
from bench.train.sft import LORA, SEED, SIZES, Clocked, _demo, _sync, make_base

TARGET = 0.95
BETA = 0.1


def preference_rows(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` prompts of the tutorial's tasks with their right answer and a wrong one."""
    import numpy as np

    instruction_pair = _demo("instructions").instruction_pair
    rng, rows = np.random.default_rng(seed), []
    while len(rows) < n:
        prompt, answer = instruction_pair(rng)
        if prompt.startswith("What is"):
            wrong = str(int(answer) + 1)
        elif prompt.startswith("Reverse"):
            wrong = prompt.rsplit(" ", 1)[1]
        else:
            day, month, year = answer.split("/")
            wrong = f"{month}/{day}/{year}"
        if wrong != answer:
            rows.append({"prompt": prompt, "chosen": answer, "rejected": wrong})
    return rows


def run_freestack(args: argparse.Namespace, rows: list[dict[str, str]]) -> dict[str, Any]:
    import torch

    from freestack.ml.lm.causal import add_causal_lora, load_causal_lm
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.preference import PreferenceEncoding, PreferenceNet, score_reference
    from freestack.ml.lm.prompts import load_tokenizer
    from freestack.ml.loop import TrainConfig, fit_source, resolve_device, to_tensors, warm_up
    from freestack.ml.stream import InMemory

    folder = str(Path(args.workdir) / "base")
    columns = ChatColumns(prompt="prompt", response="chosen")
    enc = PreferenceEncoding(load_tokenizer(folder), columns, args.max_length, rejected="rejected")
    train, val = enc.encode_rows(rows[: args.rows]), enc.encode_rows(rows[args.rows :])
    warm_up()
    torch.manual_seed(SEED)
    model = add_causal_lora(load_causal_lm(folder), LORA)
    net = PreferenceNet(model, beta=BETA, base={}, columns=columns, max_length=args.max_length, peft=LORA)
    device = resolve_device(args.device)
    sources = [InMemory(to_tensors(e.x, device), torch.tensor(e.y, device=device)) for e in (train, val)]
    for source in sources:
        score_reference(net, source, device)
    config = TrainConfig(
        epochs=1,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        weight_decay=0.0,
        grad_clip=1.0,
        warmup_epochs=0,
        seed=SEED,
        device=args.device,
    )
    clocked = Clocked(sources[0])
    result = fit_source(net, clocked, sources[1], config, task="preference")
    tokens = int(train.x["attention_mask"].sum())
    return {"train_seconds": result.train_seconds, "cpu_seconds": clocked.cpu_seconds, "tokens": tokens}


def run_trl(args: argparse.Namespace, rows: list[dict[str, str]]) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer

    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.loop import warm_up

    hf_logging.set_verbosity_error()
    folder = str(Path(args.workdir) / "base")
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in rows[: args.rows]
        ]
    )
    warm_up()

    class Clock(TrainerCallback):
        start = end = cpu_start = cpu_end = 0.0

        def on_epoch_begin(self, *_, **__):
            _sync(args.device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, *_, **__):
            _sync(args.device)
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

    cuda = args.device == "cuda"
    config = DPOConfig(
        output_dir=str(Path(args.workdir) / "trl"),
        num_train_epochs=1,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=0.0,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        beta=BETA,
        precompute_ref_log_probs=True,
        max_length=args.max_length,
        bf16=cuda,
        use_cpu=not cuda,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=SEED,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
    )
    clock = Clock()
    trainer = DPOTrainer(
        model=load_causal_lm(folder),
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(folder),
        peft_config=lora,
        callbacks=[clock],
    )
    trainer.train()
    tokens = int(trainer._total_train_tokens)
    return {
        "train_seconds": clock.end - clock.start,
        "cpu_seconds": clock.cpu_end - clock.cpu_start,
        "tokens": tokens,
    }


def child_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    rows = preference_rows(args.rows + args.batch_size, SEED)
    out = (run_freestack if args.child == "freestack" else run_trl)(args, rows)
    out.update(side=args.child, pairs_per_s=args.rows / out["train_seconds"], threads=torch.get_num_threads())
    print(json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.train.dpo", __doc__, out="dpo_train.json", workdir=True)
    ap.add_argument("--size", choices=sorted(SIZES), default="base")
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    add_child_options(ap, experiments=False)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        base = make_base(work / "base", args.size)
        keep = ["--size", args.size, "--rows", str(args.rows), "--batch-size", str(args.batch_size)]
        keep += ["--max-length", str(args.max_length), "--lr", str(args.lr), "--device", args.device]
        keep += ["--threads", str(args.threads), "--workdir", str(work)]
        samples = alternating("bench.train.dpo", keep, args.repeats, timeout=args.timeout)
    median = {s: statistics.median(r["pairs_per_s"] for r in runs) for s, runs in samples.items()}
    report = {
        "name": "dpo_train",  # not a train_* name: bench.report's table does not read this report
        "base": base,
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out", "workdir")},
        "median_pairs_per_s": median,
        "ratio": median["freestack"] / median["trl"],
        "target": TARGET,
        "samples": samples,
    }
    print(json.dumps({k: report[k] for k in ("median_pairs_per_s", "ratio")}))
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
