"""The training loop: AdamW, warm-up + cosine (or constant, or one-cycle) learning rate
(:mod:`~freestack.ml.schedule`), gradient clipping, early stopping on the validation metric, a fixed
seed, automatic device choice (CUDA with mixed precision when present) and a checkpoint every epoch
that a retried run resumes from (:mod:`~freestack.ml.checkpoint`: safetensors, nothing unpickled).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from freestack.ml.checkpoint import CHECKPOINT, CheckpointStore, pack, read
from freestack.ml.distributed import Ranks, full_optimizer_state, full_state, load_full_state
from freestack.ml.metrics import (
    PRIMARY,
    check_kept,
    classification_metrics,
    is_better,
    regression_metrics,
)
from freestack.ml.schedule import lr_factor
from freestack.ml.stream import BatchSource, InMemory, take

log = logging.getLogger(__name__)


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
    grad_accumulation: int = 1  # batches per optimizer step
    #: the validation metric the kept epoch is best on (without ``val_``), and whether higher is better;
    #: None: the task's own (freestack.ml.metrics.PRIMARY). A sweep keeps each trial on its own metric
    keep_metric: str | None = None
    keep_higher: bool | None = None


@dataclass
class TrainResult:
    model: nn.Module
    task: str
    history: list[dict[str, float]] = field(default_factory=list)
    #: what the model kept of each optimiser step (a GRPO rollout's rewards, KL, ...), numbered: ``step``,
    #: ``epoch`` and its figures; checkpointed with the history, so a resumed run keeps the earlier ones
    steps: list[dict[str, float]] = field(default_factory=list)
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
    #: tokens put through training in this attempt, every epoch counted, for a model that counts them
    #: (``seen_tokens``: a language model's batches; GRPO's prompts and sampled completions); else 0
    tokens: int = 0
    world_size: int = 1  # data-parallel ranks (freestack.ml.distributed)
    threads: int = 0  # torch's CPU threads (its intra-op pool) in the process that trained (rank 0's)

    def summary(self) -> dict[str, Any]:
        """Everything but the model, the per-epoch history and the steps (which are saved on their own)."""
        return {k: v for k, v in asdict(self).items() if k not in ("model", "history", "steps")}


def resolve_device(requested: str, ranks: Ranks | None = None) -> torch.device:
    """The device ``requested`` (auto, cpu or cuda) means here; on CUDA, a data-parallel rank's own GPU."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is visible; use auto or cpu")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", ranks.local_rank) if ranks is not None else torch.device("cuda")


def warm_up() -> None:
    """Import what a process's first optimizer imports lazily: torch's compiler stack (``torch._dynamo``,
    seconds of imports). A process that trains many times (a sweep agent) calls it at start-up, so that its
    first trial does not pay it."""
    import torch._dynamo  # noqa: F401


# ---------------------------------------------------------------------------------------------------------
# inputs: one array of numeric features, or a dict of arrays per feature group (freestack.ml.features)

Inputs = np.ndarray | dict[str, np.ndarray]
Tensors = torch.Tensor | dict[str, torch.Tensor]


def to_tensors(x: Inputs, device: torch.device | None = None) -> Tensors:
    """Copies on ``device`` (the inputs may be read-only views)."""
    if isinstance(x, dict):
        return {k: torch.tensor(v, device=device) for k, v in x.items()}
    return torch.tensor(x, device=device)


def rows_of(x: Inputs | Tensors) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


# ---------------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict_outputs(model: nn.Module, x: Tensors, batch: int | None = None, amp_dtype=None) -> torch.Tensor:
    device = next(iter(x.values())).device if isinstance(x, dict) else x.device
    if batch is None:  # large batches help a GPU; on a CPU they only thrash the caches
        batch = 8192 if device.type == "cuda" else 2048
        if isinstance(x, dict) and ("image" in x or "text" in x):
            batch //= 16  # a batch of images or token sequences is much wider than one of numbers
    model.eval()
    outs = []
    for i in range(0, rows_of(x), batch):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outs.append(model(take(x, slice(i, i + batch))).float())
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, x: Tensors, y: torch.Tensor, task: str, amp_dtype=None) -> dict[str, float]:
    return outputs_metrics(model, predict_outputs(model, x, amp_dtype=amp_dtype), y, task)


@torch.no_grad()
def evaluate_source(
    model: nn.Module, source: BatchSource, task: str, device: torch.device, amp_dtype=None, batch: int = 2048
) -> dict[str, float]:
    """The metrics over a split: in memory, or read batch by batch (only outputs and targets are kept)."""
    scores = getattr(source, "scores", None)  # a split that scores the model itself (GRPO's rewarded prompts)
    if callable(scores):
        return scores(model, device, amp_dtype)
    own = getattr(model, "split_metrics", None)  # a model that measures a split itself (a language model's)
    if callable(own):
        return own(source, device, amp_dtype)
    if isinstance(source, InMemory):
        return evaluate(model, source.x, source.y, task, amp_dtype)
    model.eval()
    outs, ys = [], []
    for xb, yb in source.ordered(batch, device):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outs.append(model(xb).float())
        ys.append(yb)
    out = torch.cat(outs) if outs else torch.empty(0, device=device)
    return outputs_metrics(model, out, torch.cat(ys) if ys else torch.empty(0, device=device), task)


def outputs_metrics(model: nn.Module, out: torch.Tensor, y: torch.Tensor, task: str) -> dict[str, float]:
    """Loss and metrics of the model's raw outputs against the (scaled) target."""
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
# the loop's parts


@dataclass
class Precision:
    """Mixed precision on CUDA (bfloat16 where supported, else float16 with a loss scaler); none on a CPU."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: Any = None

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        if device.type != "cuda":
            return cls(device)
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(device, amp_dtype, torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


class FlatGradients:
    """All gradients in one flat buffer: zeroing and clipping are one kernel each, not one per parameter
    (backward accumulates into the parameters' ``.grad`` views of it in place)."""

    def __init__(self, params: list[nn.Parameter], device: torch.device):
        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            raise ValueError(
                f"the model's trainable parameters mix dtypes {sorted(map(str, dtypes))}; use one dtype"
            )
        self.buffer = torch.zeros(sum(p.numel() for p in params), device=device, dtype=dtypes.pop())
        offset = 0
        for p in params:
            p.grad = self.buffer[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def zero_(self) -> None:
        self.buffer.zero_()  # never zero_grad(set_to_none=True): .grad must stay views of the buffer

    def clip_(self, max_norm: float) -> None:
        """``clip_grad_norm_`` over the flat buffer: the same arithmetic, without a host sync."""
        norm = torch.linalg.vector_norm(self.buffer)
        self.buffer.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


class ShardedGradients:
    """A sharded (FSDP) model's gradients: its own per-parameter shards, zeroed and clipped by torch."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params

    def zero_(self) -> None:
        for p in self.params:
            p.grad = None

    def clip_(self, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, max_norm)


class EarlyStopping:
    """Tracks the best validation metric (the task's, or ``higher`` saying which way a kept metric of
    another name is better); ``bad_epochs`` counts the epochs since it last improved."""

    def __init__(self, task: str, patience: int, on_cpu: bool = True, higher: bool | None = None):
        self.task, self.patience, self.on_cpu, self.higher = task, patience, on_cpu, higher
        self.bad_epochs = 0
        # the best epoch's weights (a sharded model's: its shards)
        self.best: dict[str, torch.Tensor] | None = None

    def update(self, result: TrainResult, model: nn.Module, epoch: int, value: float) -> None:
        if is_better(self.task, value, result.best_metric, higher=self.higher):
            result.best_metric, result.best_epoch, self.bad_epochs = value, epoch, 0
            self.best = {
                k: (v.detach().cpu() if self.on_cpu else v.detach()).clone()
                for k, v in model.state_dict().items()
            }
        else:
            self.bad_epochs += 1

    def exhausted(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclass
class _Run:
    """What one ``fit`` call works with: ``net`` is the model the steps run through (``model`` under DDP
    on a data-parallel rank, else ``model`` itself)."""

    model: nn.Module
    net: nn.Module
    ranks: Ranks | None
    plain: nn.Module | None  # FSDP: rank 0's unsharded copy, which gets the trained weights at the end
    config: TrainConfig
    task: str
    device: torch.device
    precision: Precision
    grads: FlatGradients
    new_optimizer: Callable[[], torch.optim.Optimizer]
    opt: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    n: int
    steps_per_epoch: int
    stopping: EarlyStopping
    result: TrainResult
    #: the figures of each step since the epoch began, for a model whose loss gives them (GRPO's rewards)
    figures: list[dict[str, float]] = field(default_factory=list)


def _loss_fn(model: nn.Module, task: str, figures: list[dict[str, float]]):
    """The training loss: a model's own ``training_loss(outputs, target)`` when it has one (a custom
    module's, :mod:`freestack.ml.custom`; a language model's), else cross-entropy on class indices or MSE
    on the scaled target. An own loss may come with its step's figures, ``(loss, {name: value})``: they
    go to ``figures``, which the loop numbers into the run's steps."""
    own = getattr(model, "training_loss", None)
    if not callable(own):
        return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()

    def loss(out, target):
        got = own(out, target)
        if isinstance(got, tuple):
            got, step = got
            figures.append(step)
        return got

    return loss


def _setup(model: nn.Module, n: int, config: TrainConfig, task: str, ranks: Ranks | None = None) -> _Run:
    if config.keep_metric:  # refused before any epoch where the task's metrics are known
        check_kept(task, config.keep_metric)
    device = resolve_device(config.device, ranks)
    torch.manual_seed(config.seed)  # every device's generator, CUDA's included
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    precision = Precision.for_device(device)
    model.to(device)
    sharded = ranks is not None and ranks.sharded
    plain = copy.deepcopy(model).to("cpu") if sharded and ranks.main else None
    if sharded:
        ranks.wrap(model)  # in place: the parameters become this rank's shards
    params = [p for p in model.parameters() if p.requires_grad]
    grads = ShardedGradients(params) if sharded else FlatGradients(params, device)

    def new_optimizer() -> torch.optim.Optimizer:
        try:  # the fused kernel: one call per step for all parameters
            return torch.optim.AdamW(
                params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
            )
        except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
            return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)

    result = TrainResult(
        model=model,
        task=task,
        metric=config.keep_metric or PRIMARY[task][0],
        device=str(device),
        amp=str(precision.amp_dtype) if precision.amp_dtype else None,
        world_size=ranks.world if ranks is not None else 1,
        threads=torch.get_num_threads(),
    )
    figures: list[dict[str, float]] = []
    return _Run(
        model=model,
        net=ranks.wrap(model) if ranks is not None and not sharded else model,
        ranks=ranks,
        plain=plain,
        config=config,
        task=task,
        device=device,
        precision=precision,
        grads=grads,
        new_optimizer=new_optimizer,
        opt=new_optimizer(),
        loss_fn=_loss_fn(model, task, figures),
        n=n,
        steps_per_epoch=math.ceil(n / config.batch_size),
        stopping=EarlyStopping(
            task,
            config.patience,
            on_cpu=not sharded,
            higher=config.keep_higher if config.keep_metric else None,
        ),
        result=result,
        figures=figures,
    )


def _resume(run: _Run, checkpoints: CheckpointStore) -> int:
    """The first epoch to train: after the checkpoint's, when it matches this run's config and data;
    otherwise 1, from a fresh start."""
    blob = checkpoints.load(CHECKPOINT)
    if blob is None:
        return 1
    result, config = run.result, run.config
    state, best, opt_state, meta = read(blob)
    if meta.get("config") != _config_record(config) or meta.get("n_train") != run.n:
        log.warning("checkpoint does not match this run's config or data; starting over")
        return 1
    _load(run, state, best, opt_state)
    run.stopping.bad_epochs = meta["bad_epochs"]
    result.history = meta["history"]
    result.steps = meta.get("steps", [])
    result.best_epoch, result.best_metric = meta["best_epoch"], meta["best_metric"]
    result.resumed_from = meta["epoch"]
    result.stopped_early = meta.get("stopped", False)
    result.stop_reason = meta.get("stop_reason")
    log.info("resuming from the checkpoint of epoch %d/%d", meta["epoch"], config.epochs)
    return meta["epoch"] + 1


def _load(run: _Run, state: dict, best: dict | None, opt_state: dict) -> None:
    """A checkpoint's weights, best weights and optimizer state into the run (a sharded model: each rank
    takes its shards of the whole states)."""
    if run.ranks is None or not run.ranks.sharded:
        run.model.load_state_dict(state)
        for st in opt_state["state"].values():
            for name, v in st.items():
                if name != "step":
                    st[name] = v.to(run.device)
        run.opt.load_state_dict(opt_state)
        run.stopping.best = best
        return

    if best is not None:  # the best weights' shards: loaded, kept, then the checkpoint's own state
        load_full_state(run.model, None, best, None)
        run.stopping.best = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    load_full_state(run.model, run.opt, state, opt_state)


def _config_record(config: TrainConfig) -> dict[str, Any]:
    """The config as a checkpoint records it (without defaults added later, so older checkpoints match)."""
    record = asdict(config)
    if record["grad_accumulation"] == 1:
        del record["grad_accumulation"]
    if record["keep_metric"] is None:
        del record["keep_metric"], record["keep_higher"]
    return record


def _train_epoch(run: _Run, source: BatchSource, epoch: int) -> tuple[float, float]:
    """One pass over the training split in a seeded order; (mean training loss, the last learning rate).
    With ``grad_accumulation`` k, the gradients of k batches (each loss divided by k) make one step.

    On a data-parallel rank each batch is the rank's share of a global batch; the loss is weighted by
    that share so that DDP's average is the global batch's mean gradient, as one process would compute."""
    config, model = run.config, run.model
    model.train()
    torch.manual_seed(config.seed + epoch)  # dropout: the same masks on a resumed run
    running = torch.zeros((), device=run.device)
    rows = 0
    total_steps = run.steps_per_epoch * config.epochs
    warmup_steps = run.steps_per_epoch * config.warmup_epochs
    step = (epoch - 1) * run.steps_per_epoch
    k = max(1, config.grad_accumulation)
    lr = config.learning_rate
    count = getattr(model, "seen_tokens", None)  # a language model counts its batches' tokens
    tokens = 0
    for i, (xb, yb) in enumerate(_batches(run, source, epoch)):
        if i % k == 0:
            run.grads.zero_()
        last = (i + 1) % k == 0 or i + 1 == run.steps_per_epoch
        with _no_sync(run, last):
            with run.precision.autocast():
                loss = run.loss_fn(run.net(xb), yb)
            weight = _share(run, source, i, len(yb)) / k
            _backward(run, loss * weight if weight != 1.0 else loss)
        if last:
            lr = config.learning_rate * lr_factor(step, total_steps, warmup_steps, config.scheduler)
            _step(run, lr)
        running += loss.detach() * len(yb)
        rows += len(yb)
        tokens += count(xb) if callable(count) else 0
        step += 1
    if run.ranks is not None:
        total, rows, tokens = run.ranks.all_sum([float(running), float(rows), float(tokens)], run.device)
        run.result.tokens += int(tokens)
        return total / max(rows, 1), lr
    run.result.tokens += tokens
    return float(running) / run.n, lr


def _batches(run: _Run, source: BatchSource, epoch: int):
    """The epoch's batches. A rank's streamed share may end a batch before another's: the ranks agree on
    each step (one small all-reduce) and stop together at the first rank's end."""
    batches = source.epoch(epoch, run.config.batch_size, run.config.seed, run.device)
    if run.ranks is None or _in_memory(source):
        yield from batches
        return
    it = iter(batches)
    while True:
        batch = next(it, None)
        have = torch.tensor([0 if batch is None else 1], dtype=torch.int32, device=run.device)
        torch.distributed.all_reduce(have, op=torch.distributed.ReduceOp.MIN)
        if batch is None or not have.item():
            return
        yield batch


def _share(run: _Run, source: BatchSource, i: int, rows: int) -> float:
    """The weight of batch ``i``'s mean loss: 1 in one process; on a rank of an in-memory split its rows x
    ranks / the global batch's rows (ranks' shares differ by a row when the batch does not divide)."""
    if run.ranks is None or not _in_memory(source):
        return 1.0
    batch = run.config.batch_size
    return rows * run.ranks.world / min(batch, source.n - i * batch)


def _in_memory(source: BatchSource) -> bool:
    """Whether a split is held in memory (its ranks' shards are all as long), seen through a source that
    transforms another's batches and names it ``inner`` (GRPO's rollouts)."""
    return isinstance(getattr(source, "inner", source), InMemory)


def _no_sync(run: _Run, last: bool):
    """DDP's ``no_sync`` (FSDP's gradient sync off) on the batches that only accumulate: their gradients are
    averaged with the last's."""
    if run.ranks is None or last:
        return contextlib.nullcontext()
    return run.ranks.accumulating(run.net)


def _backward(run: _Run, loss: torch.Tensor) -> None:
    scaler = run.precision.scaler
    (loss if scaler is None else scaler.scale(loss)).backward()  # float16 on CUDA: scaled against underflow


def _step(run: _Run, lr: float) -> None:
    """One optimizer step at learning rate ``lr`` over the gradients gathered since the last one."""
    opt, scaler, clip = run.opt, run.precision.scaler, run.config.grad_clip
    for g in opt.param_groups:
        g["lr"] = lr
    if scaler is None:
        if clip:
            run.grads.clip_(clip)
        opt.step()
        return
    if clip:
        scaler.unscale_(opt)
        run.grads.clip_(clip)
    scaler.step(opt)
    scaler.update()


def _checkpoint(run: _Run, checkpoints: CheckpointStore, epoch: int) -> None:
    """Rank 0 writes the checkpoint; a sharded model's states are first gathered whole, by every rank."""
    result = run.result
    meta = {
        "epoch": epoch,
        "bad_epochs": run.stopping.bad_epochs,
        "history": result.history,
        "steps": result.steps,
        "best_epoch": result.best_epoch,
        "best_metric": result.best_metric,
        "stopped": result.stopped_early,
        "stop_reason": result.stop_reason,
        "config": _config_record(run.config),
        "n_train": run.n,
    }
    if run.ranks is None or not run.ranks.sharded:
        checkpoints.save(CHECKPOINT, pack(run.model, run.stopping.best, run.opt, meta))
        return

    state, opt_state = full_state(run.model), full_optimizer_state(run.model, run.opt)
    best = {k: _whole(v) for k, v in run.stopping.best.items()} if run.stopping.best else None
    if run.ranks.main:
        checkpoints.save(CHECKPOINT, pack(state, best, opt_state, meta))


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A shard's whole tensor, on the CPU (every rank must ask: it gathers)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).cpu()


def _log_epoch(run: _Run, row: dict[str, float], epoch: int, eta_seconds: float) -> None:
    config, result = run.config, run.result
    if f"val_{result.metric}" not in row:  # a rank other than 0: its share of the epoch
        log.info(
            "epoch %d/%d  train_loss %.4f (all ranks)  lr %.2e  %s samples/s (all ranks)",
            epoch,
            config.epochs,
            row["train_loss"],
            row["lr"],
            f"{row['samples_per_s']:,.0f}",
        )
        return
    stop = {
        None: "",
        "patience": f"  (early stop: no improvement in {config.patience} epochs)",
        "requested": "  (stopped: early termination requested)",
    }[result.stop_reason]
    log.info(
        "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_%s %.4f  lr %.2e  %s samples/s  ETA %s%s",
        epoch,
        config.epochs,
        row["train_loss"],
        row["val_loss"],
        result.metric,
        row[f"val_{result.metric}"],
        row["lr"],
        f"{row['samples_per_s']:,.0f}",
        _fmt_eta(0 if result.stopped_early else eta_seconds),
        stop,
    )


# ---------------------------------------------------------------------------------------------------------
# the loop


def fit(
    model: nn.Module,
    x_train: Inputs,
    y_train: np.ndarray,
    x_val: Inputs,
    y_val: np.ndarray,
    config: TrainConfig,
    *,
    task: str,
    checkpoints: CheckpointStore | None = None,
    on_epoch: Callable[[dict[str, float]], bool | None] | None = None,
    ranks: Ranks | None = None,
) -> TrainResult:
    """Train ``model`` in place on arrays held in memory (:func:`fit_source` with :class:`InMemory`)."""
    if rows_of(x_train) == 0:
        raise ValueError("the training split is empty: the window holds no rows for training")
    device = resolve_device(config.device, ranks)
    train = InMemory(to_tensors(x_train, device), torch.tensor(y_train, device=device))
    if ranks is not None:
        train = train.shard(ranks.rank, ranks.world)
    val = InMemory(to_tensors(x_val, device), torch.tensor(y_val, device=device))
    return fit_source(
        model, train, val, config, task=task, checkpoints=checkpoints, on_epoch=on_epoch, ranks=ranks
    )


def fit_source(
    model: nn.Module,
    train: BatchSource,
    val: BatchSource,
    config: TrainConfig,
    *,
    task: str,
    checkpoints: CheckpointStore | None = None,
    on_epoch: Callable[[dict[str, float]], bool | None] | None = None,
    ranks: Ranks | None = None,
    on_steps: Callable[[list[dict[str, float]]], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place; return it with the best validation weights loaded. ``train`` and ``val``
    are in memory or streamed (:mod:`freestack.ml.stream`).

    ``on_epoch(row)`` sees each epoch's metrics; a true return stops training after that epoch (a
    sweep's early termination). The decision is saved in the checkpoint, so a resumed run stays stopped.
    ``on_steps(steps)``, for a model whose loss gives its step's figures (``training_loss`` answering
    ``(loss, figures)``), sees every step so far (``TrainResult.steps``) after each epoch.

    ``ranks``: this process is one rank of a data-parallel training (:mod:`freestack.ml.distributed`);
    ``train`` is its shard (``InMemory.shard``, ``Streamed.shard``). Rank 0 alone validates, checkpoints
    and calls ``on_epoch``; its stop decision reaches every rank. Every rank resumes from the checkpoint.
    """
    if train.n == 0:
        raise ValueError("the training split is empty: the window holds no rows for training")
    close = getattr(train, "close", None)  # what a split holds for the run (GRPO's rollout engine)
    try:
        result = _fit(model, train, val, config, task, checkpoints, on_epoch, ranks, on_steps)
    finally:
        if callable(close):
            close()
    return result


def _fit(model, train, val, config, task, checkpoints, on_epoch, ranks, on_steps) -> TrainResult:
    run = _setup(model, train.n, config, task, ranks)
    result = run.result
    start_epoch = _resume(run, checkpoints) if checkpoints is not None else 1
    epoch_seconds: list[float] = []
    for epoch in range(start_epoch, config.epochs + 1):
        if result.stopped_early:
            break
        t0 = time.perf_counter()
        train_loss, lr = _train_epoch(run, train, epoch)
        train_seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": lr,
            "samples_per_s": run.n / train_seconds if train_seconds > 0 else 0.0,
            **_epoch_stats(run, epoch),
        }
        if ranks is None or ranks.main or ranks.sharded:  # a sharded model's forward needs every rank
            _judge(run, val, row, on_epoch if ranks is None or ranks.main else None)
            if checkpoints is not None:
                _checkpoint(run, checkpoints, epoch)
        if on_steps is not None and result.steps and (ranks is None or ranks.main):
            on_steps(result.steps)  # after on_epoch: W&B's table joins the epoch's row
        if ranks is not None:
            result.stopped_early = ranks.decide(result.stopped_early, run.device)
        epoch_seconds.append(time.perf_counter() - t0)
        result.train_seconds += train_seconds
        _log_epoch(run, row, epoch, (config.epochs - epoch) * (sum(epoch_seconds) / len(epoch_seconds)))
    _finish(run, start_epoch)
    return result


def _epoch_stats(run: _Run, epoch: int) -> dict[str, float]:
    """The figures the epoch's steps gave with their losses, when they give some (a GRPO rollout's
    rewards): each step numbered into the run's ``steps``, and their means, the epoch's ``train_*``. On
    data-parallel ranks (each its share of every batch), a step's figures are the ranks' mean."""
    steps, run.figures[:] = list(run.figures), []
    if not steps:
        return {}
    if run.ranks is not None:
        keys = list(steps[0])
        summed = run.ranks.all_sum([s[k] for s in steps for k in keys], run.device)
        means = iter(v / run.ranks.world for v in summed)
        steps = [{k: next(means) for k in keys} for _ in steps]
    first = len(run.result.steps) + 1
    run.result.steps.extend({"step": first + i, "epoch": epoch, **s} for i, s in enumerate(steps))
    return {f"train_{k}": float(np.mean([s[k] for s in steps])) for k in steps[0]}


def _judge(run: _Run, val: BatchSource, row: dict[str, float], on_epoch) -> None:
    """The epoch's validation metrics into ``row`` and the history, and whether to stop (patience, or
    ``on_epoch``'s request)."""
    result, config, epoch = run.result, run.config, int(row["epoch"])
    val_metrics = evaluate_source(run.model, val, run.task, run.device, run.precision.amp_dtype)
    row.update({f"val_{k}": v for k, v in val_metrics.items()})
    check_kept(run.task, result.metric, list(val_metrics))  # a model that scores itself: known only now
    value = val_metrics[result.metric]
    if run.ranks is not None and run.ranks.sharded:  # every rank keeps the same best epoch: rank 0's view
        value = run.ranks.share(value, run.device)
    run.stopping.update(result, run.model, epoch, value)
    result.history.append(row)
    if run.stopping.exhausted() and epoch < config.epochs:
        result.stopped_early, result.stop_reason = True, "patience"
    if on_epoch is not None and on_epoch(row) and epoch < config.epochs:
        result.stopped_early, result.stop_reason = True, "requested"


def _finish(run: _Run, start_epoch: int) -> None:
    """Throughput over the epochs trained here, and the best epoch's weights back in the model."""
    result = run.result
    result.epochs_run = len(result.history)
    trained = [r for r in result.history if r["epoch"] >= start_epoch]
    if result.train_seconds > 0 and trained:
        result.samples_per_s = run.n * len(trained) / result.train_seconds
    if run.stopping.best is not None:
        run.model.load_state_dict({k: v.to(run.device) for k, v in run.stopping.best.items()})
    if run.ranks is not None and run.ranks.sharded:
        whole = full_state(run.model)  # every rank gathers; rank 0's unsharded copy takes the weights
        if run.plain is not None:
            run.plain.load_state_dict(whole)
            result.model = run.plain.to(run.device)
    result.model.eval()


def _fmt_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


__all__ = [
    "EarlyStopping",
    "FlatGradients",
    "Precision",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "evaluate_source",
    "fit",
    "fit_source",
    "outputs_metrics",
    "predict_outputs",
    "resolve_device",
    "rows_of",
    "to_tensors",
    "warm_up",
]
