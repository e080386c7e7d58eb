"""The training loop: AdamW, warm-up + cosine (or constant, or one-cycle) learning rate, gradient
clipping, early stopping on the validation metric, a fixed seed, automatic device choice (CUDA with
mixed precision when present) and a checkpoint every epoch that a retried run resumes from.

Checkpoints are safetensors (tensors) with the loop's state as JSON in the safetensors metadata:
one object, written atomically by the caller's store, and nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from freestack.ml.metrics import PRIMARY, classification_metrics, is_better, regression_metrics

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    learning_rate: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    patience: int = 5
    grad_clip: float | None = 1.0
    scheduler: str = "cosine"  # cosine | constant | onecycle
    warmup_epochs: int = 1
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda


class CheckpointStore(Protocol):
    def save(self, name: str, data: bytes) -> None: ...

    def load(self, name: str) -> bytes | None: ...


@dataclass
class TrainResult:
    model: nn.Module
    task: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float | None = None
    metric: str = ""
    epochs_run: int = 0
    resumed_from: int | None = None
    stopped_early: bool = False
    stop_reason: str | None = None  # "patience" (no improvement) or "requested" (on_epoch said stop)
    device: str = "cpu"
    amp: str | None = None
    train_seconds: float = 0.0
    samples_per_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """Everything but the model and the per-epoch history (which is saved on its own)."""
        return {k: v for k, v in asdict(self).items() if k not in ("model", "history")}


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is visible; use auto or cpu")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    if kind == "onecycle":
        peak = max(1, int(0.3 * total))
        if step < peak:
            return 0.04 + 0.96 * step / peak
        return 0.5 * (1 + math.cos(math.pi * (step - peak) / max(1, total - peak)))
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def _pack(model: nn.Module, best: dict[str, torch.Tensor] | None, opt: torch.optim.Optimizer, meta: dict) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    for k, v in (best or {}).items():
        tensors[f"best.{k}"] = v.contiguous()
    state = opt.state_dict()
    for pid, st in state["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"opt.{pid}.{k}"] = t.detach().cpu().contiguous()
    meta = {**meta, "param_groups": state["param_groups"]}
    return st_save(tensors, metadata={"freestack": json.dumps(meta)})


def _unpack(data: bytes, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device):
    from safetensors import safe_open  # noqa: F401  (metadata is read below through the header)

    tensors = st_load(data)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["freestack"])
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v.to(device) if name != "step" else v
    opt.load_state_dict({"state": opt_state, "param_groups": meta.pop("param_groups")})
    return best, meta


# ---------------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict_outputs(model: nn.Module, x: torch.Tensor, batch: int | None = None, amp_dtype=None) -> torch.Tensor:
    if batch is None:  # large batches help a GPU; on a CPU they only thrash the caches
        batch = 8192 if x.device.type == "cuda" else 2048
    model.eval()
    outs = []
    for i in range(0, len(x), batch):
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outs.append(model(x[i : i + batch]).float())
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, amp_dtype=None) -> dict[str, float]:
    out = predict_outputs(model, x, amp_dtype=amp_dtype)
    if task == "classification":
        loss = float(nn.functional.cross_entropy(out, y)) if len(y) else 0.0
        proba = torch.softmax(out, dim=-1).cpu().numpy()
        return {"loss": loss, **classification_metrics(y.cpu().numpy(), proba)}
    loss = float(nn.functional.mse_loss(out, y)) if len(y) else 0.0
    y_std = float(getattr(model, "y_std", torch.tensor(1.0)))
    y_mean = float(getattr(model, "y_mean", torch.tensor(0.0)))
    pred = out.cpu().numpy() * y_std + y_mean
    true = y.cpu().numpy() * y_std + y_mean
    return {"loss": loss, **regression_metrics(true, pred)}


# ---------------------------------------------------------------------------------------------------------
# the loop


def fit(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig,
    *,
    task: str,
    checkpoints: CheckpointStore | None = None,
    on_epoch: Callable[[dict[str, float]], bool | None] | None = None,
) -> TrainResult:
    """Train ``model`` in place; return it with the best validation weights loaded.

    ``on_epoch(row)`` sees each epoch's metrics; a true return stops training after that epoch (a
    sweep's early termination). The decision is saved in the checkpoint, so a resumed run stays stopped.
    """
    device = resolve_device(config.device)
    _seed_all(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    model.to(device)
    xt = torch.tensor(x_train, device=device)  # copies: the inputs may be read-only views
    yt = torch.tensor(y_train, device=device)
    xv = torch.tensor(x_val, device=device)
    yv = torch.tensor(y_val, device=device)
    n = len(xt)
    if n == 0:
        raise ValueError("the training split is empty: the window holds no rows for training")
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = steps_per_epoch * config.warmup_epochs
    params = [p for p in model.parameters() if p.requires_grad]
    # all gradients live in one flat buffer: zeroing and clipping are one kernel each, not one
    # per parameter (backward accumulates into these views in place)
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise ValueError(f"the model's trainable parameters mix dtypes {sorted(map(str, dtypes))}; use one dtype")
    flat_grad = torch.zeros(sum(p.numel() for p in params), device=device, dtype=dtypes.pop())
    offset = 0
    for p in params:
        p.grad = flat_grad[offset : offset + p.numel()].view_as(p)
        offset += p.numel()

    def new_optimizer() -> torch.optim.Optimizer:
        try:  # the fused kernel: one call per step for all parameters
            return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
        except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
            return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)

    opt = new_optimizer()
    loss_fn = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
    metric, _ = PRIMARY[task]

    result = TrainResult(model=model, task=task, metric=metric, device=str(device), amp=str(amp_dtype) if amp_dtype else None)
    best: dict[str, torch.Tensor] | None = None
    start_epoch, bad_epochs = 1, 0
    if checkpoints is not None and (blob := checkpoints.load(CHECKPOINT)) is not None:
        best, meta = _unpack(blob, model, opt, device)
        if meta.get("config") != asdict(config) or meta.get("n_train") != n:
            log.warning("checkpoint does not match this run's config or data; starting over")
            _seed_all(config.seed)
            best = None
            model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
            opt = new_optimizer()
        else:
            start_epoch = meta["epoch"] + 1
            bad_epochs = meta["bad_epochs"]
            result.history = meta["history"]
            result.best_epoch, result.best_metric = meta["best_epoch"], meta["best_metric"]
            result.resumed_from = meta["epoch"]
            result.stopped_early = meta.get("stopped", False)
            result.stop_reason = meta.get("stop_reason")
            log.info("resuming from the checkpoint of epoch %d/%d", meta["epoch"], config.epochs)

    epoch_seconds: list[float] = []
    for epoch in range(start_epoch, config.epochs + 1):
        if result.stopped_early:
            break
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + epoch)
        torch.manual_seed(config.seed + epoch)  # dropout: the same masks on a resumed run
        perm = torch.randperm(n, generator=gen, device=device)
        running = torch.zeros((), device=device)
        step = (epoch - 1) * steps_per_epoch
        for i in range(0, n, config.batch_size):
            lr = config.learning_rate * lr_factor(step, total_steps, warmup_steps, config.scheduler)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[i : i + config.batch_size]
            xb, yb = xt[idx], yt[idx]
            with autocast():
                loss = loss_fn(model(xb), yb)
            flat_grad.zero_()  # never zero_grad(set_to_none=True): .grad must stay views of flat_grad
            if scaler is None:
                loss.backward()
                if config.grad_clip:
                    _clip_(flat_grad, config.grad_clip)
                opt.step()
            else:  # float16 on CUDA: scale the loss against underflow
                scaler.scale(loss).backward()
                if config.grad_clip:
                    scaler.unscale_(opt)
                    _clip_(flat_grad, config.grad_clip)
                scaler.step(opt)
                scaler.update()
            running += loss.detach() * len(idx)
            step += 1
        train_seconds = time.perf_counter() - t0
        val = evaluate(model, xv, yv, task, amp_dtype)
        row = {
            "epoch": epoch,
            "train_loss": float(running) / n,
            **{f"val_{k}": v for k, v in val.items()},
            "lr": lr,
            "samples_per_s": n / train_seconds if train_seconds > 0 else 0.0,
        }
        if is_better(task, val[metric], result.best_metric):
            result.best_metric, result.best_epoch, bad_epochs = val[metric], epoch, 0
            best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        result.history.append(row)
        if bad_epochs >= config.patience and epoch < config.epochs:
            result.stopped_early, result.stop_reason = True, "patience"
        if on_epoch is not None and on_epoch(row) and epoch < config.epochs:
            result.stopped_early, result.stop_reason = True, "requested"
        if checkpoints is not None:
            meta = {
                "epoch": epoch,
                "bad_epochs": bad_epochs,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_metric": result.best_metric,
                "stopped": result.stopped_early,
                "stop_reason": result.stop_reason,
                "config": asdict(config),
                "n_train": n,
            }
            checkpoints.save(CHECKPOINT, _pack(model, best, opt, meta))
        epoch_seconds.append(time.perf_counter() - t0)
        result.train_seconds += train_seconds
        remaining = (config.epochs - epoch) * (sum(epoch_seconds) / len(epoch_seconds))
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_%s %.4f  lr %.2e  %s samples/s  ETA %s%s",
            epoch,
            config.epochs,
            row["train_loss"],
            row["val_loss"],
            metric,
            val[metric],
            lr,
            f"{row['samples_per_s']:,.0f}",
            _fmt_eta(0 if result.stopped_early else remaining),
            {
                None: "",
                "patience": f"  (early stop: no improvement in {config.patience} epochs)",
                "requested": "  (stopped: early termination requested)",
            }[result.stop_reason],
        )
    result.epochs_run = len(result.history)
    trained = [r for r in result.history if r["epoch"] >= start_epoch]
    if result.train_seconds > 0 and trained:
        result.samples_per_s = n * len(trained) / result.train_seconds
    if best is not None:
        model.load_state_dict({k: v.to(device) for k, v in best.items()})
    model.eval()
    return result


def _clip_(flat_grad: torch.Tensor, max_norm: float) -> None:
    """``clip_grad_norm_`` over the flat gradient buffer: the same arithmetic, without a host sync."""
    norm = torch.linalg.vector_norm(flat_grad)
    flat_grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def _fmt_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
