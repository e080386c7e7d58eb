"""Typed records of a version folder's JSON files: ``config.json`` (what freestack writes),
``preprocessing.json``, ``lineage.json``, ``metrics.json`` and the registration manifest
``_REGISTERED.json``.

Every record keeps the keys it does not name (``extra="allow"``): a version written by earlier code, or
holding more than these fields say, still reads, and :meth:`Record.as_dict` gives back what was there.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    """A JSON file of a version folder: the named fields typed, every other key kept as it is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def as_dict(self) -> dict[str, Any]:
        """The file's content: the named fields that were set or have a value, and every other key."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)


class FineTuned(Record):
    """freestack's settings of a fine-tuned transformers model (``config.json["freestack"]``)."""

    freestack_model: str | None = Field(None, description="huggingface for a fine-tuned transformers model")
    task: str | None = Field(None, description="classification, regression or generation")
    files: list[str] | None = Field(None, description="the weight files the model loads from")


class ModelConfig(Record):
    """``config.json``: a freestack network's settings (the Hub mixin's init values), a custom model's
    wrapper settings (``freestack_model: custom``), or transformers'/peft's own config carrying
    freestack's settings under ``freestack``."""

    freestack_model: str | None = Field(None, description="custom for the user's own module")
    kind: str | None = Field(None, description="mlp or cnn (freestack's own network)")
    task: str | None = Field(None, description="classification or regression")
    n_features: int | None = Field(None, description="how many numeric inputs the network takes")
    features: list[str] | None = Field(None, description="the feature columns, in order")
    classes: list[Any] | None = Field(None, description="the class labels (classification)")
    freestack: FineTuned | None = Field(None, description="a fine-tuned transformers model's settings")

    @property
    def custom(self) -> bool:
        return self.freestack_model == "custom"

    @property
    def pretrained(self) -> bool:
        return self.freestack is not None and self.freestack.freestack_model == "huggingface"

    @property
    def generation(self) -> bool:
        return self.pretrained and self.freestack is not None and self.freestack.task == "generation"


class Preprocessing(Record):
    """``preprocessing.json``: how rows become the model's inputs (:class:`freestack.ml.prep.Preprocessing`)
    or, for a text-generation model, its chat columns (``task: generation``, ``chat``)."""

    task: str | None = Field(None, description="classification, regression or generation")
    features: list[str] = Field([], description="the feature columns the model reads")
    mean: list[float] | None = Field(None, description="the numeric features' means (training split)")
    std: list[float] | None = Field(None, description="the numeric features' standard deviations")
    classes: list[Any] = Field([], description="the class labels, in the model's output order")
    target: str = Field("", description="the label column")
    target_mean: float | None = Field(None, description="regression: the target's mean")
    target_std: float | None = Field(None, description="regression: the target's standard deviation")
    encoder: dict[str, Any] | None = Field(None, description="the category/text/image columns' encoder")
    chat: dict[str, Any] | None = Field(None, description="a text-generation model's chat columns")


class Lineage(Record):
    """``lineage.json``: what the version was trained on (partitions and their sha256, the window), from
    which spec and code, with which settings, and the gate's decision once it was registered."""

    pipeline: str | None = None
    model: str | None = None
    version: str | None = None
    partitions: list[dict[str, Any]] = Field([], description="ds, uri, sha256 and bytes of each partition")
    window: dict[str, Any] | None = Field(None, description="end_ds and days of the training window")
    spec_hash: str | None = None
    keyed_spec: str | None = Field(
        None, description="the digest of the spec blocks that decide the weights (train.cache's spec input)"
    )
    code_version: str | None = None
    hyperparameters: dict[str, Any] | None = None
    gate: dict[str, Any] | None = Field(None, description="the gate's decision, added at registration")
    costs: dict[str, Any] | None = Field(
        None, description="model_mb (the saved model's files) and train: freestack.train.costs.TrainCosts"
    )
    registered_from: str | None = Field(None, description="the candidate folder it was registered from")


class Metrics(Record):
    """``metrics.json``: the training metrics (``test_*``, ``best_val_*``), the training run's summary
    (``train``), and after evaluation the evaluation's own (and its plots)."""

    task: str | None = None
    train: dict[str, Any] | None = None
    costs: dict[str, Any] | None = Field(None, description="as lineage's costs")
    plots: dict[str, str] | None = None


class ManifestFile(Record):
    """One file of a registered version as it was registered."""

    sha256: str
    size: int | None = None


class Manifest(Record):
    """``_REGISTERED.json``: the registration's commit marker, with the sha256 and size of every file."""

    model: str | None = None
    version: str | None = None
    registered_at: str | None = None
    source: str | None = None
    files: dict[str, ManifestFile] = {}


__all__ = [
    "FineTuned",
    "Lineage",
    "Manifest",
    "ManifestFile",
    "Metrics",
    "ModelConfig",
    "Preprocessing",
    "Record",
]
