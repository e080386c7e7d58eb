"""Experiment tracking: Weights & Biases runs that never make training fail.

``start_run`` opens a ``TrackingRun`` (online, offline
or disabled), falling back to offline when the server cannot be reached.

This package imports ``wandb`` only when a run starts.
"""

from __future__ import annotations

from freestack.tracking.wandb import DEFAULT_BASE_URL, TrackingRun, WandbSettings, start_run, wandb_root

__all__ = [
    "DEFAULT_BASE_URL",
    "TrackingRun",
    "WandbSettings",
    "start_run",
    "wandb_root",
]
