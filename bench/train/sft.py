"""SFT throughput: freestack's loop instruction-tuning a causal LM with LoRA against TRL's ``SFTTrainer``, on
the same base, data, batch and LoRA configuration, in one run.

    python -m bench.train.sft [--size base|small] [--rows 96] [--batch-size 8] [--max-length 128]
                              [--repeats 3] [--device cpu|cuda] [--threads N] [--out bench/results/train_sft.json]
    python -m bench.train.sft --threads 1           # the recorded run (a shared 2-core machine)
    python -m bench.train.sft --size small --rows 16 --batch-size 4 --repeats 1 --out /tmp/sft.json   # smoke run

1. Builds a base: a byte-level BPE tokenizer trained with ``tokenizers`` on the instruction-tuning tutorial's
   pairs (``include/demo/instructions.py``), with a ChatML chat template, and a random-weight Llama
   (``--size base``: 12 layers, width 768, 12 heads, MLP 2,304, a 4,096-token embedding: about 98M
   parameters; ``small``: 2 layers, width 64), saved with ``save_pretrained`` so both sides load the same
   weights.
2. Tokenizes ``--rows`` prompt/response pairs once, with freestack's own preprocessing
   (``ChatEncoding(tokenizer, ChatColumns(), max_length).encode_rows``: the chat template, the prompt masked
   with -100), and hands the SAME examples to both sides.
3. Alternating the order, ``--repeats`` times, each side in a fresh process with the same torch threads:
   - ``freestack``: ``load_causal_lm`` + ``add_causal_lora`` + ``CausalLMNet``, one epoch of
     ``freestack.ml.loop.fit_source(task="generation")`` on the split in memory (``InMemory``, what ``fit``
     does with arrays; AdamW, warm-up 0 + cosine, clipping at 1.0, its flat gradient buffer; bfloat16
     autocast on CUDA, float32 on a CPU); no checkpoints, a validation split of ``--batch-size`` rows
     (outside the clock);
   - ``trl``: ``SFTTrainer`` on the base folder with ``peft_config`` = the same LoRA, a pre-tokenized
     ``datasets.Dataset`` (``input_ids`` + ``labels``, ``skip_prepare_dataset``) and its own collator (pads
     to the longest in the batch), ``SFTConfig`` with the same batch, learning rate, weight decay,
     scheduler, clipping and fused AdamW, no packing, no padding-free, no gradient checkpointing, bf16
     only on CUDA, no evaluation, no saving, no logging.
4. tokens/s = the training examples' tokens (padding excluded; the same count on both sides) / the seconds
   of the training epoch: freestack's ``TrainResult.train_seconds`` (its epoch, validation excluded),
   TRL's from ``on_epoch_begin`` to ``on_epoch_end`` (a callback). Ratio = median freestack / median TRL;
   target >= 0.95. The same over the epoch's CPU seconds (``ratio_cpu``) is reported beside it: with one
   thread a run (``--threads 1``) it moves far less with other work on a shared machine than wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    add_child_options,
    busy_cpu_s,
    experiment_flags,
    host,
    install_patch,
    parser,
    profiled,
    run_child,
    usable_cores,
    write_report,
)

SEED = 20261126
TARGET = 0.95
CONTENDED = 0.1  # a run went beside other work when this share of the cores was busy with it
SIDES = ("freestack", "trl")
SIZES = {
    "base": {
        "hidden_size": 768,
        "intermediate_size": 2304,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 12,
        "vocab_size": 4096,
    },
    "small": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 512,
    },
}
#: LoRA on every projection of the blocks, as SFT recipes usually set it
LORA = {
    "r": 16,
    "alpha": 32.0,
    "dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


# ---------------------------------------------------------------------------------------------------------
# the base and the data (made once, by the driver)


def _demo(name: str):
    """A module of the tutorial's ``include/demo`` (its data, its small base's tokenizer)."""
    import importlib

    sys.path.insert(0, str(REPO / "include"))
    try:
        return importlib.import_module(f"demo.{name}")
    finally:
        sys.path.remove(str(REPO / "include"))


def pairs(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` prompt/response rows: the instruction-tuning tutorial's tasks (dates, sums, reversed digits)."""
    import numpy as np

    instruction_pair = _demo("instructions").instruction_pair
    rng = np.random.default_rng(seed)
    return [dict(zip(("prompt", "response"), instruction_pair(rng), strict=True)) for _ in range(n)]


def chat_tokenizer(vocab_size: int, model_max_length: int, seed: int = SEED + 1):
    """The tutorial base's kind of tokenizer (:func:`demo.tiny_lm.chatml_tokenizer`) trained on 4,000 pairs."""
    text = [t for row in pairs(4000, seed) for t in row.values()]
    return _demo("tiny_lm").chatml_tokenizer(text, vocab_size=vocab_size, model_max_length=model_max_length)


def make_base(folder: Path, size: str) -> dict[str, Any]:
    """A trained tokenizer (ChatML template) and a random-weight Llama saved in ``folder``; its figures."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = chat_tokenizer(SIZES[size]["vocab_size"], 2048)
    fast.save_pretrained(folder)
    torch.manual_seed(SEED)
    ids = {
        "pad_token_id": fast.pad_token_id,
        "eos_token_id": fast.eos_token_id,
        "bos_token_id": fast.pad_token_id,
    }
    config = LlamaConfig(**SIZES[size], max_position_embeddings=2048, tie_word_embeddings=False, **ids)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer_tokens": len(fast),
        "config": SIZES[size],
    }


def make_data(folder: Path, work: Path, rows: int, batch: int, max_length: int) -> dict[str, Any]:
    """The training split and a validation split of ``batch`` rows, tokenized once by freestack's
    preprocessing, as ``.npz``; their token counts, and the mean width of a shuffled batch of the training
    split padded to its longest (TRL's collator) against the split's own width (freestack's rows)."""
    import numpy as np

    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.prompts import ChatEncoding, load_tokenizer

    encoding = ChatEncoding(load_tokenizer(folder), ChatColumns(), max_length)
    data = pairs(rows + batch, SEED)
    out: dict[str, Any] = {}
    for name, part in (("train", data[:rows]), ("val", data[rows:])):
        enc = encoding.encode_rows(part)
        np.savez(work / f"{name}.npz", labels=enc.y, **enc.x)
        lengths = enc.x["attention_mask"].sum(1)
        out[name] = {
            "rows": len(enc.y),
            "tokens": int(lengths.sum()),
            "learnt_tokens": enc.tokens,
            "cut": enc.cut,
            "dropped": enc.dropped,
            "width": int(enc.y.shape[1]),
            "mean_length": round(float(lengths.mean()), 2),
            "max_length": int(lengths.max()),
            "min_length": int(lengths.min()),
        }
        if name == "train":
            rng = np.random.default_rng(SEED)
            widths = [
                lengths[perm[i : i + batch]].max()
                for perm in (rng.permutation(len(lengths)) for _ in range(50))
                for i in range(0, len(lengths), batch)
            ]
            out[name]["mean_batch_longest"] = round(float(np.mean(widths)), 2)
    return out


def load_split(work: Path, name: str) -> tuple[dict[str, Any], Any]:
    import numpy as np

    with np.load(work / f"{name}.npz") as z:
        return {"input_ids": z["input_ids"], "attention_mask": z["attention_mask"]}, z["labels"]


# ---------------------------------------------------------------------------------------------------------
# the two sides (each in a fresh process)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class Clocked:
    """A BatchSource read through: the CPU seconds of this process from the epoch's first batch asked for
    to the loop asking past its last one (TRL's side: ``on_epoch_begin`` to ``on_epoch_end``)."""

    def __init__(self, source):
        self.source, self.cpu_seconds = source, 0.0

    @property
    def n(self) -> int:
        return self.source.n

    def epoch(self, *args, **kwargs):
        start = time.process_time()
        yield from self.source.epoch(*args, **kwargs)
        self.cpu_seconds += time.process_time() - start

    def ordered(self, *args, **kwargs):
        return self.source.ordered(*args, **kwargs)


def run_freestack(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from freestack.ml.lm.causal import CausalLMNet, add_causal_lora, load_causal_lm
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.loop import TrainConfig, fit_source, resolve_device, to_tensors, warm_up
    from freestack.ml.stream import InMemory

    work, folder = Path(args.workdir), str(Path(args.workdir) / "base")
    x, y = load_split(work, "train")
    xv, yv = load_split(work, "val")
    warm_up()  # AdamW's first step imports torch._dynamo: outside the clock, as on the TRL side
    install_patch(args.patch)
    torch.manual_seed(SEED)
    model = add_causal_lora(load_causal_lm(folder), LORA)
    net = CausalLMNet(
        model,
        base={"name": "bench", "folder": folder},
        columns=ChatColumns(),
        max_length=args.max_length,
        peft=LORA,
    )
    config = TrainConfig(
        epochs=1,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        weight_decay=0.0,
        patience=100,
        grad_clip=1.0,
        scheduler="cosine",
        warmup_epochs=0,
        seed=SEED,
        device=args.device,
    )
    device = resolve_device(args.device)
    # what fit() does with arrays; the training split read through Clocked for the epoch's CPU seconds
    train = Clocked(InMemory(to_tensors(x, device), torch.tensor(y, device=device)))
    val = InMemory(to_tensors(xv, device), torch.tensor(yv, device=device))
    with profiled(args.profile, "freestack fit"):
        result = fit_source(net, train, val, config, task="generation")
    trainable, total = net.trainable_parameters()
    return {
        "train_seconds": result.train_seconds,
        "cpu_seconds": train.cpu_seconds,
        "steps": math.ceil(len(y) / args.batch_size),
        "train_loss": result.history[-1]["train_loss"],
        "device": result.device,
        "dtype": result.amp or "torch.float32",
        "trainable_parameters": trainable,
        "parameters": total,
    }


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from freestack.ml.loop import warm_up

    hf_logging.set_verbosity_error()
    work, folder = Path(args.workdir), str(Path(args.workdir) / "base")
    x, y = load_split(work, "train")
    lengths = x["attention_mask"].sum(1)
    dataset = Dataset.from_dict(
        {
            "input_ids": [ids[:n].tolist() for ids, n in zip(x["input_ids"], lengths, strict=True)],
            "labels": [lab[:n].tolist() for lab, n in zip(y, lengths, strict=True)],
        }
    )
    warm_up()
    cuda = args.device == "cuda"

    class Clock(TrainerCallback):
        """The training epoch's seconds: from its start to its end (the loop's own epoch, like freestack's)."""

        start = end = cpu_start = cpu_end = 0.0

        def on_epoch_begin(self, *_, **__):
            _sync(args.device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, *_, **__):
            _sync(args.device)
            self.end, self.cpu_end = time.perf_counter(), time.process_time()

    config = SFTConfig(
        output_dir=str(work / "trl"),
        num_train_epochs=1,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=0.0,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        bf16=cuda,
        fp16=False,
        use_cpu=not cuda,
        gradient_checkpointing=False,
        max_length=args.max_length,
        packing=False,
        padding_free=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=SEED,
        data_seed=SEED,
        dataloader_num_workers=0,
    )
    peft = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
    )
    clock = Clock()
    trainer = SFTTrainer(
        model=folder,
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(folder),
        peft_config=peft,
        callbacks=[clock],
    )
    out = trainer.train()
    params = list(trainer.model.parameters())
    dtype = "torch.bfloat16" if cuda else str(next(p for p in params if p.requires_grad).dtype)
    return {
        "train_seconds": clock.end - clock.start,
        "cpu_seconds": clock.cpu_end - clock.cpu_start,
        "steps": out.global_step,
        "train_loss": out.training_loss,
        "device": str(trainer.args.device),
        "dtype": dtype,
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "parameters": sum(p.numel() for p in params),
    }


def child_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    out = (run_freestack if args.child == "freestack" else run_trl)(args)
    x, _ = load_split(Path(args.workdir), "train")
    tokens = int(x["attention_mask"].sum())
    out.update(
        side=args.child,
        tokens=tokens,
        tokens_per_s=tokens / out["train_seconds"],
        tokens_per_cpu_s=tokens / out["cpu_seconds"],
        threads=torch.get_num_threads(),
    )
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------------------
# the driver


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(side: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    argv = [
        "--child",
        side,
        "--workdir",
        str(work),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--lr",
        str(args.lr),
    ]
    if side == "freestack":
        argv += experiment_flags(args.profile, args.patch)
    busy0, child0, t0 = busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    sample = {
        "side": side,
        **run_child(
            "bench.train.sft", argv, timeout=args.timeout, echo_stderr=bool(args.profile or args.patch)
        ),
    }
    if "error" in sample:
        raise RuntimeError(f"{side} failed: {sample['error']}\n{sample.get('stderr_tail', '')}")
    busy1, child1, elapsed = busy_cpu_s(), _children_cpu_s(), time.perf_counter() - t0
    # other work on the machine while the run went: the CPU seconds the machine was busy minus the run's own,
    # as a share of the cores (torch's threads wait for each other, so a busy core slows a run a lot)
    if busy0 is not None and busy1 is not None:
        others = max(0.0, (busy1 - busy0) - (child1 - child0))
        sample["others_busy_fraction"] = round(others / (elapsed * usable_cores()), 3)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in sample.items()}


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of each side, their ratio (the target's), the ratio within each repeat, and the same over
    the epoch's CPU seconds (less moved by other work on the machine, with one thread a run)."""

    def med(side: str, key: str) -> float:
        return statistics.median(s[key] for s in samples if s["side"] == side)

    fs, trl = med("freestack", "tokens_per_s"), med("trl", "tokens_per_s")
    ratio = round(fs / trl, 3)
    by_repeat: dict[int, dict[str, float]] = {}
    for s in samples:
        by_repeat.setdefault(s["repeat"], {})[s["side"]] = s["tokens_per_s"]
    per_repeat = [round(r["freestack"] / r["trl"], 3) for r in by_repeat.values() if len(r) == 2]
    fs_cpu, trl_cpu = med("freestack", "tokens_per_cpu_s"), med("trl", "tokens_per_cpu_s")
    busy = {f"{s['side']} #{s['repeat']}": s.get("others_busy_fraction") or 0 for s in samples}
    contended = [name for name, share in busy.items() if share > CONTENDED]
    return {
        "freestack_tokens_per_s": round(fs, 1),
        "trl_tokens_per_s": round(trl, 1),
        "ratio": ratio,
        "ratio_per_repeat": per_repeat,
        "target": TARGET,
        "met": ratio >= TARGET,
        "freestack_tokens_per_cpu_s": round(fs_cpu, 1),
        "trl_tokens_per_cpu_s": round(trl_cpu, 1),
        "ratio_cpu": round(fs_cpu / trl_cpu, 3),
        "contended_samples": contended,
        "contended_rule": f"other processes kept more than {CONTENDED:.0%} of the cores busy during the run",
    }


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.train.sft", __doc__, out="train_sft.json")
    ap.add_argument("--size", choices=list(SIZES), default="base")
    ap.add_argument("--rows", type=int, default=96, help="training conversations (one epoch)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=usable_cores(), help="torch threads (default: all cores)")
    ap.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    add_child_options(ap)
    args = ap.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        work = Path(tmp)
        (work / "base").mkdir()
        base = make_base(work / "base", args.size)
        data = make_data(work / "base", work, args.rows, args.batch_size, args.max_length)
        print(json.dumps({"base": base, "data": data}), flush=True)
        samples = []
        for r in range(args.repeats):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                samples.append({"repeat": r, **measure(side, args, work)})
                print(json.dumps(samples[-1]), flush=True)
    summary = summarise(samples)
    first = samples[0]
    params = {
        "size": args.size,
        "model": f"LlamaForCausalLM, random weights, {base['parameters'] / 1e6:.1f}M parameters",
        "parameters": base["parameters"],
        "trainable_parameters": first["trainable_parameters"],
        "config": base["config"],
        "tokenizer_tokens": base["tokenizer_tokens"],
        "lora": LORA,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "steps": first["steps"],
        "max_length": args.max_length,
        "padding": "right: TRL to the longest in each batch (its collator), freestack to the split's longest "
        "(encode_rows' arrays, as the train stage holds them)",
        "learning_rate": args.lr,
        "optimizer": "AdamW (fused), weight decay 0, cosine, no warm-up, clip 1.0",
        "device": args.device,
        "dtype": first["dtype"],
        "threads": args.threads,
        "repeats": args.repeats,
        "data": data,
        "data_source": "include/demo/instructions.py instruction_pair, ChatML",
    }
    libs = {}
    for name in ("torch", "transformers", "peft", "trl", "datasets"):
        try:
            libs[name] = __import__(name).__version__
        except ImportError:
            pass
    write_report(
        {
            "name": "train_sft",
            "machine": {**host(), **libs},
            "params": params,
            "samples": samples,
            "summary": summary,
            "targets": {"ratio_min": TARGET},
        },
        args.out,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
