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


def pack(model: nn.Module, best: dict[str, torch.Tensor] | None, opt: torch.optim.Optimizer, meta: dict) -> bytes:
    """The checkpoint's bytes: ``model.*``, ``best.*`` and ``opt.<param>.<state>`` tensors, ``meta`` as JSON."""
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


def unpack(data: bytes, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> tuple[Any, dict]:
    """Load a checkpoint into ``model`` and ``opt``; return the best weights (or None) and the loop's state."""
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


__all__ = ["CHECKPOINT", "CheckpointStore", "pack", "unpack"]
