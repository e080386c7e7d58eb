"""The learning-rate schedule, per optimizer step: linear warm-up then cosine (or constant), or one-cycle."""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """The factor the base learning rate is multiplied by at ``step`` of ``total``."""
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


__all__ = ["lr_factor"]
