"""Training benchmark: ``freestack.ml.loop.fit`` against a minimal hand-written PyTorch loop.

    python -m bench.train.run [--rows 100000] [--epochs 3] [--batch-size 64] [--kind mlp|cnn]
                              [--repeats 3] [--device auto|cpu|cuda] [--out bench/results/train.json]

1. Generates a synthetic classification set with numpy (deterministic seed): ``--rows`` rows of 64
   float32 features (an 8x8 "image" for ``--kind cnn``), 10 classes (int64 labels) from a noisy
   linear teacher, so the models learn something. The last 10% of the rows are the validation split
   that ``fit`` gets; both contenders train on the same first 90%.
2. Runs each measurement in a fresh subprocess, alternating the baseline and the candidates:
     - ``baseline``:          a minimal loop: shuffled index batches of in-memory tensors, forward,
                              loss, zero_grad, backward, AdamW step. No validation, no clipping, no
                              learning-rate schedule, no checkpoints.
     - ``freestack``:         ``fit`` as the train stage calls it: validation every epoch, gradient
                              clipping and the warm-up + cosine schedule of ``TrainConfig``'s
                              defaults, and a checkpoint every epoch through a store that writes a
                              local file atomically (temp file, fsync, ``os.replace``, fsync of the
                              folder). This is the configuration the target ratio is judged on.
     - ``freestack_memckpt``: the same with an in-memory (dict) checkpoint store.
     - ``freestack_nockpt``:  the same with ``checkpoints=None``.
     - ``freestack_custom``:  as ``freestack``, the model being the same MLP written as a user's own
                              module (``bench/train/custom_mlp.py``, ``model.type: custom``); its
                              samples/s over ``freestack``'s is ``ratio_custom_vs_builtin`` (``--kind mlp``).
   The same model (``FreestackNet`` built with the same arguments after the same seed), batch size,
   optimizer (AdamW, same learning rate and weight decay), epochs and ``torch.set_num_threads``.
3. samples/s = training rows x epochs / wall seconds of the whole call (data to tensors, every
   epoch, and for ``fit`` its validation and checkpoints). Writes a JSON report (machine, params,
   raw samples, summary, targets) and prints a table.

The comparison is deliberately not like for like: ``fit`` does work the minimal loop skips
(validation, clipping, the schedule, checkpoints, the running loss). The target (ratio >= 0.95) says
that this work should cost at most 5% of the throughput.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    add_child_options,
    add_modes,
    busy_cpu_s,
    chosen_modes,
    experiment_flags,
    host,
    install_patch,
    median,
    parser,
    peak_rss_mib,
    profiled,
    run_child,
    usable_cores,
    write_report,
)

SEED = 20261101  # the data
MODEL_SEED = 42  # TrainConfig's default seed: the model's initial weights
N_FEATURES = 64
N_CLASSES = 10
IMAGE_SHAPE = [8, 8]
VAL_FRACTION = 0.1
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
HIDDEN = [128, 64]
CHANNELS = [16, 32]
DROPOUT = 0.1
MODES = ("baseline", "freestack", "freestack_memckpt", "freestack_nockpt", "freestack_custom")
CANDIDATES = ("freestack", "freestack_memckpt", "freestack_nockpt", "freestack_custom")
CUSTOM_MODULE = "bench/train/custom_mlp.py"  # the MLP as a user's own module (model.type: custom)
TARGET_RATIO = 0.95
CONTENDED = 0.1  # a sample ran beside other work when this fraction of the cores was busy with it

# ---------------------------------------------------------------------------------------------------------
# data


def make_data(rows: int, seed: int = SEED):
    """(x float32 [rows, 64], y int64 [rows]): a noisy linear teacher over smooth-ish 8x8 images."""
    import numpy as np

    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, N_FEATURES), dtype=np.float32)
    # features on their own scales and offsets (the model standardises them with the train split's stats)
    scale = rng.uniform(0.5, 4.0, size=N_FEATURES).astype(np.float32)
    offset = rng.uniform(0.0, 8.0, size=N_FEATURES).astype(np.float32)
    w = (rng.standard_normal((N_FEATURES, N_CLASSES)) / np.sqrt(N_FEATURES)).astype(np.float32)
    logits = 3.0 * (z @ w) + rng.gumbel(size=(rows, N_CLASSES)).astype(np.float32)
    y = logits.argmax(axis=1).astype(np.int64)
    x = (z * scale + offset).astype(np.float32)
    return x, y


def write_data(folder: Path, rows: int) -> dict[str, Any]:
    import numpy as np

    x, y = make_data(rows)
    n_val = max(1, int(round(rows * VAL_FRACTION)))
    n_train = rows - n_val
    if n_train < 1:
        raise ValueError(f"--rows {rows} leaves no training rows")
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"x_train": x[:n_train], "y_train": y[:n_train], "x_val": x[n_train:], "y_val": y[n_train:]}
    h = hashlib.sha256()
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        np.save(folder / f"{name}.npy", a)
        h.update(a.tobytes())
    return {
        "rows": rows,
        "rows_train": n_train,
        "rows_val": n_val,
        "sha256": h.hexdigest(),
        "class_counts_train": np.bincount(y[:n_train], minlength=N_CLASSES).tolist(),
    }


def load_data(folder: Path):
    import numpy as np

    return tuple(np.load(folder / f"{n}.npy") for n in ("x_train", "y_train", "x_val", "y_val"))


# ---------------------------------------------------------------------------------------------------------
# checkpoint stores (freestack.ml.checkpoint.CheckpointStore)


class FileCheckpoints:
    """A local folder, written like freestack's local storage does: temp file, fsync, os.replace."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.bytes_written = 0
        self.saves = 0
        self.save_seconds = 0.0

    def save(self, name: str, data: bytes) -> None:
        t0 = time.perf_counter()
        final = self.folder / name
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.bytes_written += len(data)
        self.saves += 1
        self.save_seconds += time.perf_counter() - t0

    def load(self, name: str) -> bytes | None:
        p = self.folder / name
        return p.read_bytes() if p.exists() else None


class MemoryCheckpoints:
    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.bytes_written = 0
        self.saves = 0
        self.save_seconds = 0.0

    def save(self, name: str, data: bytes) -> None:
        self.blobs[name] = bytes(data)
        self.bytes_written += len(data)
        self.saves += 1

    def load(self, name: str) -> bytes | None:
        return self.blobs.get(name)


# ---------------------------------------------------------------------------------------------------------
# the contenders (run in a fresh child process)


def build_model(kind: str, x_train, custom: bool = False):
    import torch

    from freestack.ml.models import FreestackNet

    torch.manual_seed(MODEL_SEED)
    if custom:  # the same layers from the same seed, through the custom-model path
        from freestack.ml.contract import FeatureGroup, ModelInputs
        from freestack.ml.custom import build_custom

        group = FeatureGroup("numeric", [f"x{i}" for i in range(N_FEATURES)], N_FEATURES)
        inputs = ModelInputs("classification", N_CLASSES, {"numeric": group}, list(range(N_CLASSES)))
        model = build_custom(
            CUSTOM_MODULE, "CustomMLP", {"hidden": list(HIDDEN), "dropout": DROPOUT}, inputs, REPO
        )
        model.set_scaling(x_train.mean(axis=0), x_train.std(axis=0) + 1e-6)
        return model
    model = FreestackNet(
        kind=kind,
        task="classification",
        n_features=N_FEATURES,
        n_outputs=N_CLASSES,
        hidden=list(HIDDEN),
        channels=list(CHANNELS),
        image_shape=list(IMAGE_SHAPE) if kind == "cnn" else None,
        dropout=DROPOUT,
    )
    # as the train stage does: the training split's scaling is part of the model
    model.set_scaling(x_train.mean(axis=0), x_train.std(axis=0) + 1e-6)
    return model


def baseline_fit(model, x_train, y_train, *, epochs: int, batch_size: int, device, amp_dtype) -> float:
    """The minimal loop. Returns the last batch's loss (read after the clock stops)."""
    import torch
    from torch import nn

    model.to(device)
    xt = torch.from_numpy(x_train).to(device)
    yt = torch.from_numpy(y_train).to(device)
    n = len(xt)
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator(device=device).manual_seed(MODEL_SEED)
    model.train()
    loss = None
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            if amp_dtype is not None:  # CUDA only: the precision fit uses, so only the loop differs
                with torch.autocast(device.type, dtype=amp_dtype):
                    loss = loss_fn(model(xt[idx]), yt[idx])
            else:
                loss = loss_fn(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return loss


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    import freestack.ml.loop as train_mod

    install_patch(args.patch)

    x_train, y_train, x_val, y_val = load_data(Path(args.data))
    device = train_mod.resolve_device(args.device)
    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    mode = args.child
    model = build_model(args.kind, x_train, custom=mode == "freestack_custom")
    out: dict[str, Any] = {"mode": mode}
    store = None
    if mode in ("freestack", "freestack_custom"):
        store = FileCheckpoints(Path(args.scratch) / f"ckpt-{os.getpid()}")
    elif mode == "freestack_memckpt":
        store = MemoryCheckpoints()
    cfg = train_mod.TrainConfig(
        epochs=args.epochs,
        learning_rate=LEARNING_RATE,
        batch_size=args.batch_size,
        weight_decay=WEIGHT_DECAY,
        patience=args.epochs + 1,  # never stops early: every contender runs every epoch
        seed=MODEL_SEED,
        device=args.device,
    )  # grad_clip, scheduler, warmup_epochs: TrainConfig's defaults (those of the train: spec section)

    # one-time process costs outside the clock, the same for every contender: AdamW's first
    # construction imports torch._dynamo (1-2 s on a small machine)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=LEARNING_RATE)

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with profiled(args.profile and mode != "baseline", f"{mode} ({args.kind})"):
        if mode == "baseline":
            last = baseline_fit(
                model,
                x_train,
                y_train,
                epochs=args.epochs,
                batch_size=args.batch_size,
                device=device,
                amp_dtype=amp_dtype,
            )
            result = None
        else:
            result = train_mod.fit(
                model,
                x_train,
                y_train,
                x_val,
                y_val,
                cfg,
                task="classification",
                checkpoints=store,
                on_epoch=lambda row: None,  # the train stage logs each row to W&B (a no-op when it is off)
            )
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0

    # outside the clock: the same evaluation of both models (fit restores its best epoch's weights)
    xv = torch.as_tensor(x_val, device=device)
    yv = torch.as_tensor(y_val, device=device)
    val = train_mod.evaluate(model, xv, yv, "classification")
    rows_train = len(x_train)
    out.update(
        {
            "wall_s": wall,
            "cpu_s": cpu,
            "rows_train": rows_train,
            "epochs": args.epochs,
            "samples_per_s": rows_train * args.epochs / wall,
            "val_accuracy": val["accuracy"],
            "val_loss": val["loss"],
            "threads": torch.get_num_threads(),
            "device": str(device),
            "peak_rss_mib": peak_rss_mib(),
        }
    )
    if mode == "baseline":
        out["last_batch_loss"] = float(last) if last is not None else None
    else:
        out.update(
            {
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "amp": result.amp,
                # fit's own clock covers the batch loops only; the rest of the wall time is setup,
                # validation, best-weights copies, checkpoints and logging
                "fit_train_seconds": result.train_seconds,
                "fit_samples_per_s": result.samples_per_s,
                "outside_batch_loops_s": wall - result.train_seconds,
                "final_train_loss": result.history[-1]["train_loss"] if result.history else None,
                "checkpoint_saves": store.saves if store is not None else 0,
                "checkpoint_bytes": (store.bytes_written // store.saves)
                if store is not None and store.saves
                else 0,
                "checkpoint_save_s": store.save_seconds if store is not None else 0.0,
            }
        )
    if isinstance(store, FileCheckpoints):
        shutil.rmtree(store.folder, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# the parent


def machine(device: str) -> dict[str, Any]:
    import numpy as np
    import torch

    out = {
        **host(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
    }
    if device == "cuda":
        out["cuda_device"] = torch.cuda.get_device_name(0)
        out["cuda_version"] = torch.version.cuda
    return out


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def fit_source() -> dict[str, Any]:
    """Which freestack.ml.loop was measured: its sha256, and the git commit with a dirty flag."""
    import freestack.ml.loop as train_mod

    path = Path(train_mod.__file__)
    out: dict[str, Any] = {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    try:
        rel = path.resolve().relative_to(REPO)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", str(rel)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode == 0:
            out["git_head"] = head.stdout.strip()
            out["modified_since_head"] = bool(dirty.stdout.strip())
    except (ValueError, OSError, subprocess.SubprocessError):
        pass
    return out


def _run_child(mode: str, ctx: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    argv = [
        "--child",
        mode,
        "--data",
        ctx["data"],
        "--scratch",
        ctx["scratch"],
        "--kind",
        ctx["kind"],
        "--epochs",
        str(ctx["epochs"]),
        "--batch-size",
        str(ctx["batch_size"]),
        "--threads",
        str(ctx["threads"]),
        "--device",
        ctx["device"],
    ]
    if mode != "baseline":
        argv += experiment_flags(ctx["profile"], ctx["patch"])
    busy0, child0 = busy_cpu_s(), _children_cpu_s()
    sample = {
        "mode": mode,
        **run_child(
            "bench.train.run", argv, timeout=timeout, echo_stderr=bool(ctx["profile"] or ctx["patch"])
        ),
    }
    if "error" in sample:
        return sample
    busy1, child1 = busy_cpu_s(), _children_cpu_s()
    elapsed = sample["process_s"]
    # other work on the machine while the child ran: CPU seconds the machine was busy minus the child's
    # own, as a fraction of the cores' capacity. torch's OpenMP threads wait for each other at every
    # operation, so a contended core slows a run far more than the CPU it loses
    if busy0 is not None and busy1 is not None and elapsed > 0:
        others = max(0.0, (busy1 - busy0) - (child1 - child0))
        sample["others_cpu_s"] = others
        sample["others_busy_fraction"] = others / (elapsed * ctx["cores"])
    for k, v in list(sample.items()):
        if isinstance(v, float):
            sample[k] = round(v, 6 if k in ("val_loss", "final_train_loss", "last_batch_loss") else 4)
    return sample


def summarise(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def ok(mode):
        return [s for s in samples.get(mode, []) if "error" not in s]

    per_mode: dict[str, Any] = {}
    for mode in MODES:
        ss = ok(mode)
        sps = [s["samples_per_s"] for s in ss]
        per_mode[mode] = {
            "samples_per_s": round(statistics.median(sps), 1) if sps else None,
            "samples_per_s_min": round(min(sps), 1) if sps else None,
            "samples_per_s_max": round(max(sps), 1) if sps else None,
            "wall_s": median(ss, "wall_s"),
            "cpu_s": median(ss, "cpu_s"),
            "val_accuracy": median(ss, "val_accuracy"),
            "runs": len(ss),
            "errors": len(samples.get(mode, [])) - len(ss),
        }
        if mode != "baseline":
            per_mode[mode]["outside_batch_loops_s"] = median(ss, "outside_batch_loops_s")
            per_mode[mode]["fit_samples_per_s"] = median(ss, "fit_samples_per_s")
            per_mode[mode]["checkpoint_save_s"] = median(ss, "checkpoint_save_s")
    base = per_mode["baseline"]["samples_per_s"]

    def ratio(mode):
        v = per_mode[mode]["samples_per_s"]
        return round(v / base, 4) if (v and base) else None

    fs = per_mode["freestack"]["samples_per_s"]
    r = ratio("freestack")
    # fit's own samples/s counts the batch loops only: against the baseline it says how much of the gap
    # is inside the loop (clipping, schedule, ...) rather than around it (validation, checkpoints)
    loop_only = per_mode["freestack"].get("fit_samples_per_s")
    return {
        "baseline_samples_per_s": base,
        "freestack_samples_per_s": fs,
        "ratio": r,
        "ratio_memckpt": ratio("freestack_memckpt"),
        "ratio_nockpt": ratio("freestack_nockpt"),
        "ratio_batch_loops_only": round(loop_only / base, 4) if (loop_only and base) else None,
        # the custom-model path (the same MLP as a user's module) against the built-in net, both through fit
        "ratio_custom_vs_builtin": round(per_mode["freestack_custom"]["samples_per_s"] / fs, 4)
        if (per_mode["freestack_custom"]["samples_per_s"] and fs)
        else None,
        "ratio_of": "freestack (fit with a file checkpoint store, as the train stage calls it) / baseline",
        "statistic": "samples/s = rows_train * epochs / wall seconds of the call; median over samples",
        "modes": per_mode,
        "contended_samples": [
            f"{m}#{s.get('repeat')}"
            for m in MODES
            for s in samples.get(m, [])
            if (s.get("others_busy_fraction") or 0) > CONTENDED
        ],
        "contended_rule": f"other processes kept more than {CONTENDED:.0%} of the cores busy during the run; "
        "such samples are kept in the medians but the ratio is only trustworthy without them",
        "checks": {
            "ratio_ok": None if r is None else r >= TARGET_RATIO,
            "custom_ok": None
            if not per_mode["freestack_custom"]["samples_per_s"] or not fs
            else per_mode["freestack_custom"]["samples_per_s"] / fs >= TARGET_RATIO,
        },
    }


def print_table(report: dict[str, Any]) -> None:
    p = report["params"]
    print(
        f"\ntrain benchmark: {p['kind']}, {p['rows_train']:,} train rows (+{p['rows_val']:,} val for fit), "
        f"{p['epochs']} epochs, batch {p['batch_size']}, {p['threads']} threads, {p['device']}, "
        f"{p['repeats']} repeat(s)"
    )
    print(
        f"{'mode':<18} {'wall s':>8} {'cpu s':>8} {'samples/s':>11} {'outside loops s':>16} {'val acc':>8} "
        f"{'others busy':>12}"
    )
    for mode in MODES:
        for s in report["samples"].get(mode, []):
            if "error" in s:
                print(f"{mode:<18} error: {s['error']}")
                continue
            outside = s.get("outside_batch_loops_s")
            busy = s.get("others_busy_fraction")
            print(
                f"{mode:<18} {s['wall_s']:>8.2f} {s['cpu_s']:>8.2f} {s['samples_per_s']:>11,.0f} "
                f"{'' if outside is None else f'{outside:.3f}':>16} {s['val_accuracy']:>8.4f} "
                f"{'' if busy is None else f'{busy:.0%}':>12}"
            )
    sm = report["summary"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    print(
        f"ratio freestack/baseline: {f(sm['ratio'])} (target >= {report['targets']['ratio_min']}); "
        f"in-memory checkpoints: {f(sm['ratio_memckpt'])}; no checkpoints: {f(sm['ratio_nockpt'])}; "
        f"batch loops only: {f(sm['ratio_batch_loops_only'])}"
    )
    if sm["contended_samples"]:
        print(
            f"warning: samples run beside other work (not trustworthy): {', '.join(sm['contended_samples'])}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.train.run", __doc__, out="train.json")
    ap.add_argument(
        "--rows", type=int, default=100_000, help="rows generated, 10%% of them validation (default 100000)"
    )
    ap.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size (default 64, the train: default)")
    ap.add_argument("--kind", choices=("mlp", "cnn"), default="mlp", help="FreestackNet kind (default mlp)")
    ap.add_argument("--repeats", type=int, default=3, help="samples per mode (default 3)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="default cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: usable cores)")
    add_modes(ap, MODES)
    add_child_options(ap)
    # child-only arguments
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.threads is None:
        args.threads = usable_cores()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0

    modes = chosen_modes(ap, args.modes, MODES)
    for name in ("rows", "epochs", "batch_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")

    import torch

    from freestack.ml.loop import TrainConfig, resolve_device

    device = resolve_device(args.device).type  # fail here, not in a child, if cuda is missing
    defaults = TrainConfig()
    workdir = Path(tempfile.mkdtemp(prefix="freestack-bench-train-"))
    try:
        print(f"generating {args.rows:,} rows under {workdir} ...", flush=True)
        data = write_data(workdir / "data", args.rows)
        ctx = {
            "data": str(workdir / "data"),
            "scratch": str(workdir / "scratch"),
            "kind": args.kind,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "cores": usable_cores(),
            "device": args.device,
            "profile": args.profile,
            "patch": str(Path(args.patch).resolve()) if args.patch else None,
        }
        samples: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        # the custom module is the MLP: compared with the built-in MLP only
        order = [m for m in MODES if m in modes and (m != "freestack_custom" or args.kind == "mlp")]
        for r in range(args.repeats):
            for mode in order:
                print(f"  repeat {r + 1}/{args.repeats}: {mode} ...", end="", flush=True)
                s = _run_child(mode, ctx, args.timeout)
                s["repeat"] = r
                samples[mode].append(s)
                if "error" in s:
                    print(f" error: {s['error']}", flush=True)
                    if s.get("stderr_tail"):
                        print(s["stderr_tail"], file=sys.stderr)
                else:
                    print(f" {s['wall_s']:.2f}s, {s['samples_per_s']:,.0f} samples/s", flush=True)

        report = {
            "name": "train",
            "machine": machine(device),
            "params": {
                "kind": args.kind,
                "rows": data["rows"],
                "rows_train": data["rows_train"],
                "rows_val": data["rows_val"],
                "val_fraction": VAL_FRACTION,
                "n_features": N_FEATURES,
                "n_classes": N_CLASSES,
                "image_shape": IMAGE_SHAPE if args.kind == "cnn" else None,
                "data_seed": SEED,
                "data_sha256": data["sha256"],
                "class_counts_train": data["class_counts_train"],
                "model": {
                    "class": "freestack.ml.models.FreestackNet",
                    "kind": args.kind,
                    "hidden": HIDDEN,
                    "channels": CHANNELS,
                    "dropout": DROPOUT,
                    "seed": MODEL_SEED,
                },
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "optimizer": {"name": "AdamW", "lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY},
                "fit_config": {
                    "grad_clip": defaults.grad_clip,
                    "scheduler": defaults.scheduler,
                    "warmup_epochs": defaults.warmup_epochs,
                    "patience": args.epochs + 1,
                },
                "threads": args.threads,
                "device": device,
                "repeats": args.repeats,
                "order": order,
                "torch_version": torch.__version__,
                "baseline": "a minimal loop over the same in-memory tensors: per epoch a randperm, then per "
                "batch index, forward, cross-entropy, zero_grad(set_to_none), backward, AdamW step; "
                "no validation, clipping, schedule or checkpoints"
                + ("; autocast bf16 like fit" if device == "cuda" else ""),
                "candidates": {
                    "freestack": "freestack.ml.loop.fit with a local-file checkpoint store (temp file, "
                    "fsync, os.replace, fsync of the folder), as the train stage calls it; the target",
                    "freestack_memckpt": "fit with an in-memory dict checkpoint store",
                    "freestack_nockpt": "fit with checkpoints=None",
                    "freestack_custom": f"as freestack, the model the same MLP written as a custom module "
                    f"({CUSTOM_MODULE}, model.type: custom); ratio_custom_vs_builtin = it / freestack (MLP only)",
                },
                "not_like_for_like": "fit also validates on the val split every epoch, clips gradients, sets "
                "the learning rate every step, accumulates the running loss and checkpoints; the "
                "baseline does none of it. Both train on the same rows_train rows.",
                "units": "samples/s = rows_train * epochs / wall seconds of the call (tensors from the "
                "arrays, all epochs, fit's validation and checkpoints); model construction, imports "
                "(torch._dynamo included: AdamW's first construction imports it) and data loading are "
                "outside the clock; val_accuracy is measured after the clock for both",
                "patch": ctx["patch"],
                "fit_source": fit_source(),
            },
            "samples": {m: samples[m] for m in MODES},
            "summary": summarise(samples),
            "targets": {"ratio_min": TARGET_RATIO},
        }
        out = write_report(report, args.out)
        print_table(report)
        print(f"wrote {out}")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
