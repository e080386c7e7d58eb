"""What a training cost, measured in the process that trains: from the model being built to the test
split's metrics. No Airflow here.

- ``wall_s``: wall-clock seconds.
- ``cpu_s``: CPU seconds, user and system, of the process and of the children it waited for
  (``getrusage``). On data-parallel ranks this is rank 0's: every rank does the same work, so the cost
  counts it ``ranks`` times.
- ``gpu_s``: accelerator seconds, the wall seconds times the GPUs the run held (0 on a CPU).
- ``peak_memory_mb``: the process's peak resident memory (``ru_maxrss``); on a GPU, also
  ``peak_gpu_memory_mb``, torch's peak allocation.
- ``samples``: the rows put through training, every epoch counted.
- ``tokens``: a language model's tokens put through training, every epoch counted (each batch's
  attention mask; GRPO: its prompts once per generation and their sampled completions); None for
  other models.
- ``cost``: with ``prices`` (``cpu_hour``, ``gpu_hour``; 0 by default, since the stack is free),
  ``cpu_s x ranks / 3600 x cpu_hour + gpu_s / 3600 x gpu_hour``, in ``currency``.

A run resumed from its checkpoint measures the attempt that finished it (``resumed_from`` says which
epoch it started at).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field


class TrainCosts(BaseModel):
    """A version's training costs, as lineage and ``metrics.json`` record them (``costs.train``)."""

    model_config = ConfigDict(extra="forbid")

    wall_s: float = Field(description="wall-clock seconds, model built to test metrics")
    cpu_s: float = Field(description="CPU seconds of the process that trained (rank 0's)")
    gpu_s: float = Field(description="wall seconds x the GPUs held")
    peak_memory_mb: float = Field(description="the training process's peak resident memory")
    peak_gpu_memory_mb: float | None = Field(default=None, description="torch's peak GPU allocation")
    samples: int = Field(description="rows put through training, every epoch counted")
    tokens: int | None = Field(default=None, description="a language model's tokens, every epoch counted")
    epochs: int = Field(description="epochs trained in this attempt")
    resumed_from: int | None = Field(default=None, description="the checkpoint's epoch it resumed from")
    ranks: int = Field(description="data-parallel processes")
    device: str
    cost: float = Field(description="what the seconds cost at the spec's prices (0 without prices)")
    currency: str


@dataclass
class Meter:
    """Started where a training starts; :meth:`read` once it has its test metrics."""

    started: float
    cpu: float

    @classmethod
    def start(cls) -> Meter:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return cls(time.perf_counter(), _cpu_seconds())

    def read(self, result, cpu_hour: float = 0.0, gpu_hour: float = 0.0, currency: str = "USD") -> TrainCosts:
        """The costs so far of a training whose loop returned ``result`` (a ``TrainResult``)."""
        wall = time.perf_counter() - self.started
        cpu = _cpu_seconds() - self.cpu
        on_gpu = result.device.startswith("cuda")
        gpu = wall * result.world_size if on_gpu else 0.0
        trained = result.epochs_run - (result.resumed_from or 0)
        return TrainCosts(
            wall_s=round(wall, 3),
            cpu_s=round(cpu, 3),
            gpu_s=round(gpu, 3),
            peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            peak_gpu_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_gpu else None,
            samples=round(result.samples_per_s * result.train_seconds),
            tokens=result.tokens or None,
            epochs=trained,
            resumed_from=result.resumed_from,
            ranks=result.world_size,
            device=result.device,
            cost=round(cpu * result.world_size / 3600 * cpu_hour + gpu / 3600 * gpu_hour, 6),
            currency=currency,
        )


def _cpu_seconds() -> float:
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


__all__ = ["Meter", "TrainCosts"]
