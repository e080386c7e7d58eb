"""What a training is asked and where it writes: the request, its outcome, and the places of its
model version and checkpoints.

Without torch, pandas or pyarrow at import (unlike :mod:`freestack.train.core`, which trains): the code that starts a training elsewhere, in a Kubernetes job or in ranks of its own,
and reads its outcome imports this module at the top.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError
from freestack.keys import NO_KEYS, Keys
from freestack.storage import join, storage_root, to_path

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec


class TrainingError(FreestackError):
    """The window or the spec cannot produce a model; the message says why."""


@dataclass
class TrainRequest:
    """What to train on and how; ``None`` fields take the spec's ``train:`` defaults."""

    end_ds: str
    window_days: int | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    seed: int | None = None
    run_key: str = "manual"
    airflow: dict[str, Any] = field(default_factory=dict)  # dag_id, run_id, data interval
    #: per-run changes to the spec's ``train:`` and ``model:`` blocks (a sweep trial's parameters);
    #: they win over the fields above and are validated like the spec itself
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: where the model folder goes (default ``candidates/<model>/<version>``) and the checkpoints
    #: (default ``runs/<pipeline>/<run_key>/train``)
    output_uri: str | None = None
    checkpoint_uri: str | None = None
    #: W&B run options: name, group, job_type, extra tags, extra config
    tracking: dict[str, Any] = field(default_factory=dict)
    #: the partitions the run fixed (``freestack.train.window.Window.as_dict()``); None: fix them now
    window: dict[str, Any] | None = None
    #: the validation metric the kept epoch is best on (without ``val_``) and whether higher is better;
    #: None: the task's. A sweep trial keeps the epoch best on the sweep's metric
    keep_metric: str | None = None
    keep_higher: bool | None = None
    #: the endpoints' API keys (the judge's, for a GRPO training rewarded by the judge; the rollout
    #: server's, ``train.grpo.server.api_key``): read from their connections by the task that trains, never
    #: written down (left out of a launch's request and of every repr)
    keys: Keys = field(default=NO_KEYS, repr=False)


@dataclass
class TrainOutcome:
    version: str
    version_uri: str
    metrics: dict[str, float]
    partitions: list[dict[str, Any]]
    summary: dict[str, Any]
    tracking: dict[str, Any]
    costs: dict[str, Any] | None = None  # what the training cost and the model's size (lineage's costs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "version_uri": self.version_uri,
            "metrics": self.metrics,
            "partitions": self.partitions,
            "train": self.summary,
            "wandb": self.tracking,
        }


def _version_name(spec: PipelineSpec, req: TrainRequest) -> str:
    digest = hashlib.sha256(f"{spec.name}|{req.run_key}|{req.end_ds}".encode()).hexdigest()[:8]
    return f"v{req.end_ds.replace('-', '')}-{digest}"


def _safe_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:120]


@dataclass
class Places:
    """Where one training writes: its version name, the version folder and the checkpoint folder."""

    version: str
    version_dir: Any  # ObjectStoragePath
    run_dir: Any


def places(spec: PipelineSpec, req: TrainRequest) -> Places:
    root = storage_root(spec.storage_root)
    run_dir = (
        to_path(req.checkpoint_uri)
        if req.checkpoint_uri
        else join(root, "runs", spec.name, _safe_key(req.run_key), "train")
    )
    version = _version_name(spec, req)
    version_dir = (
        to_path(req.output_uri) if req.output_uri else join(root, "candidates", spec.model_name, version)
    )
    return Places(version, version_dir, run_dir)


def tracking_id(spec: PipelineSpec, req: TrainRequest) -> str:
    """The W&B run id of a training: the same for every attempt of one run key, so a retry after a
    kill resumes the run instead of starting another."""
    return hashlib.sha256(f"{spec.name}|{req.run_key}".encode()).hexdigest()[:16]
