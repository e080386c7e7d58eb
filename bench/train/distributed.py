"""Data-parallel training: scaling of ``fit`` over ranks, against one process, on the same machine.

    python -m bench.train.distributed [--kinds cnn,text] [--rows 40000] [--epochs 2] [--batch-size 64]
                                      [--repeats 3] [--device cpu|cuda] [--out bench/results/train_distributed.json]

CPU (``--device cpu``), per kind (the digits-shaped CNN over 8x8 images; a text model: token embeddings, a
convolution and pooling over 64 tokens of a 8,000-word vocabulary):

- ``one``: one process of 1 thread, ``fit`` with ``--batch-size`` rows a step;
- ``two``: 2 ranks of 1 thread each, started by torch's elastic launcher as the train task starts them,
  each rank ``fit`` on its share of a global batch of 2 x ``--batch-size`` (the same rows a rank a step);
- scaling efficiency = samples/s of ``two`` / (2 x samples/s of ``one``); target >= 0.85;
- gloo all-reduce time per step: the mean time of an all-reduce of the model's gradient size between the
  2 ranks, timed on its own after training.

CUDA (``--device cuda``, one GPU): ``plain`` (``fit`` without DDP) against ``ddp1`` (``fit`` as rank 0 of a
world of 1 under DDP, nccl); overhead ratio = samples/s of ddp1 / plain, target >= 0.97; both train in
bfloat16 autocast (the loop's mixed precision on CUDA), whose throughput is reported.

samples/s = the training split's rows x epochs / the loop's own training seconds (validation excluded),
the loop's ``TrainResult.samples_per_s``. Each measurement runs in a fresh process; modes alternate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, host, median, parser, write_report

VOCAB, TOKENS = 8000, 64


def make_data(kind: str, rows: int, seed: int = 20261126):
    """(x, y): 8x8 images (cnn) or token ids (text) with 10 classes from a noisy teacher."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, rows).astype(np.int64)
    if kind == "cnn":
        centers = rng.normal(0, 1, (10, 64)).astype(np.float32)
        return (centers[y] + rng.normal(0, 1.5, (rows, 64))).astype(np.float32), y
    ids = rng.integers(1, VOCAB, (rows, 1, TOKENS)).astype(np.int64)
    ids[:, 0, :4] = (y[:, None] * 37 + np.arange(4)) % (VOCAB - 1) + 1  # the label's words at the start
    return {"text": ids}, y


def build_model(kind: str):
    import torch

    from freestack.ml.models import FreestackNet

    torch.manual_seed(42)
    if kind == "cnn":
        return FreestackNet(
            kind="cnn", n_features=64, n_outputs=10, channels=[16, 32], image_shape=[8, 8], hidden=[128, 64]
        )
    text = {"names": ["text"], "size": 1, "vocab_sizes": [VOCAB], "shape": [1, TOKENS], "pad_id": 0}
    return FreestackNet(kind="mlp", n_features=0, n_outputs=10, hidden=[128, 64], inputs={"text": text})


def rank_main(args: argparse.Namespace) -> None:
    """One measured training: a plain process, or a rank that the elastic launcher started."""
    import torch

    from freestack.ml.distributed import join_group
    from freestack.ml.loop import TrainConfig, fit

    torch.set_num_threads(args.threads)
    ranks = join_group(args.backend, 120, strategy=args.strategy) if "RANK" in os.environ else None
    x, y = make_data(args.kind, args.rows)
    n_val = args.rows // 10
    split = (lambda a: (a[n_val:], a[:n_val])) if not isinstance(x, dict) else None
    x_train, x_val = split(x) if split else ({"text": x["text"][n_val:]}, {"text": x["text"][:n_val]})
    model = build_model(args.kind)
    device = "cuda" if args.device == "cuda" else "cpu"
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, patience=100, device=device, warmup_epochs=0
    )
    result = fit(model, x_train, y[n_val:], x_val, y[:n_val], config, task="classification", ranks=ranks)
    out = {
        "samples_per_s": result.samples_per_s,
        "train_seconds": result.train_seconds,
        "amp": result.amp,
        "world_size": result.world_size,
        "device": result.device,
    }
    if ranks is not None:
        out["allreduce_ms"] = _allreduce_ms(model, ranks, result.device)
        torch.distributed.destroy_process_group()
        if ranks.rank != 0:
            return
    Path(args.result).write_text(json.dumps(out))


def _allreduce_ms(model, ranks, device: str) -> float:
    """The mean milliseconds of one all-reduce of the model's gradient size (what DDP reduces a step)."""
    import torch
    import torch.distributed as dist

    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    buf = torch.zeros(n, device=device)
    for _ in range(5):
        dist.all_reduce(buf)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(50):
        dist.all_reduce(buf)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 50 * 1000


def measure(mode: str, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode in fresh processes: ``one``/``plain`` as one process; ``two``/``ddp1`` under the elastic launcher."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        batch = args.batch_size * (2 if mode == "two" else 1)
        child = [
            "-m",
            "bench.train.distributed",
            "--rank-child",
            "--kind",
            kind,
            "--rows",
            str(args.rows),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(batch),
            "--device",
            args.device,
            "--threads",
            "1" if args.device == "cpu" else str(args.threads),
            "--result",
            str(result),
            "--backend",
            "nccl" if args.device == "cuda" else "gloo",
            "--strategy",
            args.strategy,
        ]
        ranks = {"one": 0, "plain": 0, "two": 2, "ddp1": 1}[mode]
        if ranks:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={ranks}",
                *child,
            ]
        else:
            cmd = [sys.executable, *child]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
            "OMP_NUM_THREADS": "1",
        }
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} {kind} failed:\n{proc.stderr[-3000:]}")
        return {"mode": mode, "kind": kind, **json.loads(result.read_text())}


def summarise(samples: list[dict[str, Any]], device: str, kinds: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in kinds:

        def pick(mode: str, kind: str = kind) -> list[dict[str, Any]]:
            return [s for s in samples if s["kind"] == kind and s["mode"] == mode]

        if device == "cpu":
            one, two = median(pick("one"), "samples_per_s"), median(pick("two"), "samples_per_s")
            out[kind] = {
                "one_samples_per_s": one,
                "two_ranks_samples_per_s": two,
                "scaling_efficiency": round(two / (2 * one), 3) if one and two else None,
                "gloo_allreduce_ms_per_step": median(pick("two"), "allreduce_ms", 3),
            }
        else:
            plain, ddp = median(pick("plain"), "samples_per_s"), median(pick("ddp1"), "samples_per_s")
            out[kind] = {
                "plain_samples_per_s": plain,
                "ddp1_samples_per_s": ddp,
                "ddp_overhead_ratio": round(ddp / plain, 3) if plain and ddp else None,
                "amp": pick("plain")[0]["amp"] if pick("plain") else None,
                "nccl_allreduce_ms_per_step": median(pick("ddp1"), "allreduce_ms", 3),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.train.distributed", __doc__, out="train_distributed.json")
    ap.add_argument("--kinds", default="cnn,text")
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp", help="how the ranks hold the model")
    ap.add_argument("--rank-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="cnn", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="gloo", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank_child:
        rank_main(args)
        return 0
    kinds = args.kinds.split(",")
    modes = ("one", "two") if args.device == "cpu" else ("plain", "ddp1")
    samples = []
    for r in range(args.repeats):
        for kind in kinds:
            for mode in modes if r % 2 == 0 else modes[::-1]:
                samples.append(measure(mode, kind, args))
                print(json.dumps(samples[-1]), flush=True)
    summary = summarise(samples, args.device, kinds)
    targets = {
        "scaling_efficiency": ">= 0.85 (cpu, 2 ranks of 1 thread)",
        "ddp_overhead_ratio": ">= 0.97 (one GPU)",
    }
    params = {
        k: getattr(args, k)
        for k in ("kinds", "rows", "epochs", "batch_size", "repeats", "device", "threads", "strategy")
    }
    write_report(
        {
            "name": "train_distributed",
            "machine": host(),
            "params": params,
            "samples": samples,
            "summary": summary,
            "targets": targets,
        },
        args.out,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
