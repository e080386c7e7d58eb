"""Checkpoints of the training loop: one safetensors object with the model, the best weights so far and
the optimizer's tensors, and the loop's state as JSON in the safetensors metadata. Written atomically
by the caller's store; nothing is ever unpickled."""

from __future__ import annotations

import json
from typing import Any, Protocol

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

CHECKPOINT = "checkpoint.safetensors"


class CheckpointStore(Protocol):
    def save(self, name: str, data: bytes) -> None: ...

    def load(self, name: str) -> bytes | None: ...


def pack(
    model: nn.Module | dict[str, torch.Tensor],
    best: dict[str, torch.Tensor] | None,
    opt: torch.optim.Optimizer | dict[str, Any],
    meta: dict,
) -> bytes:
    """The checkpoint's bytes: ``model.*``, ``best.*`` and ``opt.<param>.<state>`` tensors, ``meta`` as JSON.
    ``model`` and ``opt`` may be given as their state dicts (a sharded model's, gathered whole)."""
    state_dict = model if isinstance(model, dict) else model.state_dict()
    seen: set[int] = set()  # tied weights (a language model's embeddings and head) are saved as copies
    tensors = {f"model.{k}": _own(v, seen) for k, v in state_dict.items()}
    tensors |= {f"best.{k}": _own(v, seen) for k, v in (best or {}).items()}
    state = opt if isinstance(opt, dict) else opt.state_dict()
    for pid, st in state["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"opt.{pid}.{k}"] = t.detach().cpu().contiguous()
    meta = {**meta, "param_groups": state["param_groups"]}
    return st_save(tensors, metadata={"freestack": json.dumps(meta)})


def _own(v: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """``v`` on the CPU, contiguous; a copy when another tensor of the checkpoint shares its memory."""
    t = v.detach().cpu().contiguous()
    ptr = t.untyped_storage().data_ptr()
    if ptr in seen:
        return t.clone()
    seen.add(ptr)
    return t


def read(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, Any], dict]:
    """A checkpoint's parts: the model's state, the best weights (or None), the optimizer's state dict
    (keyed by parameter index, as ``Optimizer.state_dict`` gives it) and the loop's state."""
    tensors = st_load(data)
    header_len = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["freestack"])
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    return model, best, {"state": opt_state, "param_groups": meta.pop("param_groups")}, meta


__all__ = ["CHECKPOINT", "CheckpointStore", "pack", "read"]
