"""Fine-tuning benchmark: freestack's loop on a pretrained transformers model vs a minimal hand-written
transformers + peft loop, over the same model, data and batch size, in one run.

    python -m bench.train.finetune [--steps 24] [--batch-size 8] [--seq-len 64] [--repeats 2]
                                   [--size distilbert|tiny] [--out bench/results/train_finetune.json]

1. Builds a DistilBERT-sized sequence classifier (6 layers, width 768, 12 heads, a 30,522-token
   vocabulary; random weights, ``save_pretrained``) and random token ids with a label learnt from them.
2. For LoRA (r 8, alpha 16 on q_lin/v_lin, the head trained in full) and for full fine-tuning, runs,
   interleaved ``--repeats`` times (the best of each is kept):
   - freestack: :func:`freestack.ml.pretrained.build_pretrained` on the saved folder, trained by
     :func:`freestack.ml.loop.fit` (one epoch of ``--steps`` batches; its warm-up, schedule, gradient
     clipping and flat gradient buffer included); samples/s of its training epoch;
   - baseline: the same folder loaded with ``AutoModelForSequenceClassification`` (and ``get_peft_model``),
     ``torch.optim.AdamW`` with ``clip_grad_norm_``, ``model(input_ids, attention_mask).logits``,
     cross-entropy, backward, step: the loop a user writes by hand; samples/s over the same batches.
3. Reports the ratio (target >= 0.95), and for LoRA vs full: trainable parameters and the size on disk
   of what a version holds (the adapter vs ``model.safetensors``).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import host, parser, write_report

SEED = 20261124
TARGET = 0.95
SIZES = {
    "distilbert": {"vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072},
    "tiny": {"vocab_size": 1000, "dim": 64, "n_layers": 2, "n_heads": 2, "hidden_dim": 128},
}
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": ["q_lin", "v_lin"], "merge": False}


def _base(folder: Path, size: str) -> Path:
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(SEED)
    DistilBertForSequenceClassification(
        DistilBertConfig(**SIZES[size], max_position_embeddings=512)
    ).save_pretrained(folder)
    return folder


def _data(n: int, seq_len: int, vocab: int):
    import numpy as np

    rng = np.random.default_rng(SEED)
    ids = rng.integers(5, vocab, size=(n, 1, seq_len), dtype=np.int64)
    lengths = rng.integers(seq_len // 2, seq_len + 1, size=n)
    for i, length in enumerate(lengths):
        ids[i, 0, length:] = 0  # padding, as the encoder gives it
    y = (ids[:, 0, 1] % 2).astype(np.int64)
    return ids, y


def _freestack(folder: Path, ids, y, batch: int, peft: dict[str, Any] | None) -> float:
    import torch

    from freestack.ml.loop import TrainConfig, fit
    from freestack.ml.pretrained import build_pretrained, local_base

    torch.manual_seed(SEED)
    net = build_pretrained(
        local_base(folder, str(folder)), "text-classification", [0, 1], pad_id=0, peft=peft
    )
    config = TrainConfig(epochs=1, batch_size=batch, learning_rate=5e-5, warmup_epochs=0, device="cpu")
    result = fit(net, {"text": ids}, y, {"text": ids[:batch]}, y[:batch], config, task="classification")
    return result.samples_per_s


def _baseline(folder: Path, ids, y, batch: int, peft: dict[str, Any] | None) -> float:
    """The loop a user writes by hand with transformers and peft."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, dtype=torch.float32)
    if peft is not None:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.SEQ_CLS,
                r=peft["r"],
                lora_alpha=peft["alpha"],
                lora_dropout=peft["dropout"],
                target_modules=peft["target_modules"],
            ),
        )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-4)
    x, t = torch.as_tensor(ids[:, 0]), torch.as_tensor(y)
    order = torch.randperm(len(t), generator=torch.Generator().manual_seed(SEED))
    model.train()
    start = time.perf_counter()
    for i in range(0, len(t), batch):
        idx = order[i : i + batch]
        xb = x[idx]
        loss = torch.nn.functional.cross_entropy(
            model(input_ids=xb, attention_mask=(xb != 0).long()).logits, t[idx]
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return len(t) / (time.perf_counter() - start)


def _footprint(folder: Path, peft: dict[str, Any] | None) -> dict[str, Any]:
    """Trainable parameters and the bytes a version holds for them (adapter, or full weights)."""
    from freestack.ml.pretrained import build_pretrained, local_base

    net = build_pretrained(local_base(folder, str(folder)), "text-classification", [0, 1], peft=peft)
    trainable, total = net.trainable_parameters()
    with tempfile.TemporaryDirectory() as out:
        net.save_pretrained(out)
        weights = "adapter_model.safetensors" if peft is not None else "model.safetensors"
        size = os.path.getsize(os.path.join(out, weights))
    return {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "version_weights": weights,
        "version_weights_mib": round(size / 2**20, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser("bench.train.finetune", __doc__, out="train_finetune.json")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--size", choices=sorted(SIZES), default="distilbert")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ids, y = _data(args.steps * args.batch_size, args.seq_len, SIZES[args.size]["vocab_size"])
    modes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = _base(Path(tmp) / "base", args.size)
        for name, peft in (("lora", LORA), ("full", None)):
            runs = {"freestack": [], "baseline": []}
            for _ in range(args.repeats):  # interleaved: drift on the machine hits both alike
                runs["baseline"].append(_baseline(folder, ids, y, args.batch_size, peft))
                runs["freestack"].append(_freestack(folder, ids, y, args.batch_size, peft))
            best = {k: max(v) for k, v in runs.items()}
            modes[name] = {
                "samples_per_s": best,
                "runs": runs,
                "ratio": round(best["freestack"] / best["baseline"], 3),
                **_footprint(folder, peft),
            }
            print(
                f"{name}: freestack {best['freestack']:.1f} samples/s, baseline {best['baseline']:.1f}: "
                f"{modes[name]['ratio']:.3f}; trainable {modes[name]['trainable_parameters']:,}, "
                f"{modes[name]['version_weights']} {modes[name]['version_weights_mib']} MiB",
                flush=True,
            )
    lora, full = modes["lora"], modes["full"]
    report = {
        "name": "train_finetune",
        "machine": host(),
        "params": {
            "size": args.size,
            **SIZES[args.size],
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "repeats": args.repeats,
            "lora": LORA,
            "device": "cpu",
        },
        "baseline": "a minimal hand-written transformers + peft loop (AdamW, clip_grad_norm_, cross-entropy) over "
        "the same model, batches and batch size",
        "modes": modes,
        "summary": {
            "ratio_lora": lora["ratio"],
            "ratio_full": full["ratio"],
            "trainable_lora_vs_full": round(lora["trainable_parameters"] / full["trainable_parameters"], 5),
            "weights_mib_lora_vs_full": [lora["version_weights_mib"], full["version_weights_mib"]],
        },
        "targets": {"ratio_min": TARGET},
    }
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
