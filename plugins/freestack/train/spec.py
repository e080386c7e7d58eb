"""The ``model:`` and ``train:`` blocks of a pipeline spec: what to train, and how.

    model: {type: auto, hidden: [128, 64], dropout: 0.1}
    train: {window_days: 30, epochs: 30, learning_rate: 3.0e-3, batch_size: 64}

The train DAG's Params form (and a sweep trial's parameters) override ``train:`` per run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from freestack.specbase import SpecModel as _Model


class ModelSpec(_Model):
    """What to train (``model:``). ``type: auto`` picks a CNN when ``image_shape`` is given."""

    name: str | None = Field(default=None, description="registry name; default: the pipeline name")
    type: Literal["auto", "mlp", "cnn"] = "auto"
    task: Literal["auto", "classification", "regression"] = "auto"
    features: list[str] | None = Field(default=None, description="default: every numeric/bool column")
    image_shape: list[int] | None = Field(default=None, min_length=2, max_length=3)
    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    channels: list[int] = Field(default_factory=lambda: [16, 32])
    dropout: float = Field(default=0.1, ge=0, lt=1)
    hub_repo: str | None = Field(
        default=None, description="Hugging Face Hub repo (org/name) registered versions are pushed to"
    )

    @field_validator("image_shape")
    @classmethod
    def _shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(d < 1 for d in v):
            raise ValueError(f"image_shape {v} must have positive sizes")
        return v

    @model_validator(mode="after")
    def _cnn(self) -> ModelSpec:
        if self.type == "cnn" and self.image_shape is None:
            raise ValueError("type: cnn needs image_shape (e.g. [8, 8] or [channels, height, width])")
        return self


class TrainSpec(_Model):
    """Training defaults (``train:``); the train DAG's Params form overrides them per run."""

    schedule: str | None = Field(default=None, description="a cron; default: run on each lake update")
    window_days: int = Field(default=30, ge=1, le=3660)
    epochs: int = Field(default=30, ge=1, le=10_000)
    learning_rate: float = Field(default=3e-3, gt=0, le=10)
    batch_size: int = Field(default=64, ge=1, le=1_000_000)
    weight_decay: float = Field(default=1e-4, ge=0)
    patience: int = Field(default=5, ge=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    scheduler: Literal["cosine", "constant", "onecycle"] = "cosine"
    warmup_epochs: int = Field(default=1, ge=0)
    seed: int = 42
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # the executor queue of the training tasks (``train`` and the sweep's ``agent``s): ``gpu`` sends them
    # to GPU workers (a Celery worker consuming ``gpu``, or the Helm values' GPU pod template)
    queue: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")


__all__ = ["ModelSpec", "TrainSpec"]
