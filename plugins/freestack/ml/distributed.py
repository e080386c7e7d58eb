"""Data-parallel training on ``torch.distributed``: what one rank of a training knows and does.

A rank is started by torch's elastic launcher (``torchrun``, :mod:`torch.distributed.run`), which sets the
standard variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). The loop
(:mod:`freestack.ml.loop`) then:

- wraps the model in ``DistributedDataParallel`` (gradients averaged across ranks in backward);
- gives each rank its share of every global batch (:meth:`freestack.ml.stream.InMemory.shard`), or its own
  chunks of a streamed split (:meth:`freestack.ml.stream.Streamed.shard`, uneven ends under DDP's ``Join``);
- lets rank 0 alone validate, checkpoint and report, and broadcasts its stop decision to the others.

Every collective is bounded by the process group's timeout, so a rank that dies fails the others' next
collective instead of hanging them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel training."""

    rank: int
    world: int
    local_rank: int
    backend: str  # gloo | nccl
    find_unused_parameters: bool = False
    strategy: str = "ddp"  # ddp | fsdp

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates, checkpoints, reports to W&B and writes the version."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP: each rank holds a shard of the parameters; every forward gathers them, on every rank."""
        return self.strategy == "fsdp"

    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` (on this rank's device) under DDP: its parameters and buffers start as rank 0's. Under
        FSDP it is sharded in place (:func:`shard`) and returned."""
        from torch.nn.parallel import DistributedDataParallel

        if self.sharded:
            return shard(model)

        ids = [self.local_rank] if self.backend == "nccl" else None
        return DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=self.find_unused_parameters, **_no_buffer_sync()
        )

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        t = torch.tensor(
            values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device
        )
        dist.all_reduce(t)
        return t.tolist()

    def decide(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag``, on every rank."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def share(self, value: float, device: torch.device) -> float:
        """Rank 0's ``value``, on every rank (a metric every rank decides on alike)."""
        t = torch.tensor(
            [value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device
        )
        dist.broadcast(t, src=0)
        return float(t.item())

    def accumulating(self, net: nn.Module):
        """The gradients of the batches that only accumulate stay local (their step's batch syncs them)."""
        if not self.sharded:
            return net.no_sync()
        return _without_gradient_sync(net)


@contextlib.contextmanager
def _without_gradient_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 (``torch.distributed.fsdp.fully_shard``), as transformers models are sharded: each block the
    model names in ``_no_split_modules`` (its layers), else each child module with trainable parameters,
    then the whole model."""
    from torch.distributed.fsdp import fully_shard

    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    if names:
        blocks = [m for m in model.modules() if type(m).__name__ in names]
    else:
        blocks = [m for m in model.children() if any(p.requires_grad for p in m.parameters())]
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A sharded model's whole state, on rank 0's CPU; empty on the others (every rank must call it: it
    gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """A sharded model's optimizer state, whole, keyed by parameter index as ``Optimizer.state_dict``
    keys it; on rank 0 alone (every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    state = get_optimizer_state_dict(
        model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not state:  # gathered on rank 0 alone
        return {}
    order = [fqn for group in state["param_groups"] for fqn in group["params"]]
    index = {fqn: i for i, fqn in enumerate(order)}
    return {"state": {index[k]: v for k, v in state["state"].items()}, "param_groups": state["param_groups"]}


def load_full_state(
    model: nn.Module, opt: torch.optim.Optimizer | None, state: dict, opt_state: dict | None
) -> None:
    """Whole states (a checkpoint's, which every rank read) into a sharded model and its optimizer: each
    rank cuts its own shards out of them, with no collective (``distribute_tensor`` with no source rank)."""
    current = model.state_dict()
    model.load_state_dict({k: _cut(state[k], v) for k, v in current.items()})
    if opt is None or opt_state is None:
        return
    params = [p for group in opt.param_groups for p in group["params"]]
    cut = {
        i: {name: t if name == "step" else _cut(t, params[int(i)]) for name, t in st.items()}
        for i, st in opt_state["state"].items()
    }
    groups = [
        {**saved, "params": group["params"]}
        for saved, group in zip(opt_state["param_groups"], opt.state_dict()["param_groups"], strict=True)
    ]
    opt.load_state_dict({"state": cut, "param_groups": groups})


def _cut(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's shard of ``whole``, placed as ``like`` (a DTensor) is; a plain tensor as it is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    whole = whole.to(like.device, like.dtype) if whole.is_floating_point() else whole.to(like.device)
    if not isinstance(like, DTensor):
        return whole
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def _no_buffer_sync() -> dict[str, bool]:
    """Buffers (batch norm's running statistics) synced once at the start, not before every step: rank 0's
    are the ones it validates with and saves, and the sync would cost one more collective a step. torch
    2.13 names this ``forward_sync_buffers``; earlier releases ``broadcast_buffers`` (now deprecated)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def backend_for(requested: str, device: str) -> str:
    """``auto``: nccl when the training runs on CUDA, gloo on the CPU."""
    if requested != "auto":
        return requested
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def join_group(
    backend: str, timeout_seconds: float, find_unused_parameters: bool = False, strategy: str = "ddp"
) -> Ranks:
    """Join the process group the launcher set up (``env://``), every collective bounded by the timeout."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        if not torch.cuda.is_available() or torch.cuda.device_count() <= local_rank:
            raise RuntimeError(
                f"backend nccl: local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                "use as many processes_per_node as GPUs, or backend gloo"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds))
    return Ranks(
        dist.get_rank(), dist.get_world_size(), local_rank, backend, find_unused_parameters, strategy
    )


def leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_with_parent(interval: float = 1.0) -> None:
    """End this rank when its launcher dies (a ``kill -9`` of the train task): its collectives would
    otherwise go on, and a retry would find a stale rank still writing."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                log.error("the launcher (pid %d) is gone: this rank stops", parent)
                os._exit(1)

    threading.Thread(target=watch, name="freestack-launcher-watch", daemon=True).start()


__all__ = ["Ranks", "backend_for", "exit_with_parent", "join_group", "leave_group"]
