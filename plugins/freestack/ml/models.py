"""Models in Hugging Face format: ``save_pretrained`` writes config.json + model.safetensors, and
``FreestackNet.from_pretrained(path_or_repo)`` loads them back without Airflow.

The network takes raw feature values: the training split's mean and std are buffers of the model,
so a loaded model needs nothing else to predict.
"""

from __future__ import annotations

import math

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from freestack.ml.scaling import ScaledModel


class FreestackNet(
    ScaledModel,
    PyTorchModelHubMixin,
    library_name="freestack",
    tags=["freestack", "tabular"],
    repo_url="https://github.com/freestack/freestack",
):
    """An MLP over feature vectors, or a small CNN when the features form an image."""

    def __init__(
        self,
        kind: str = "mlp",
        task: str = "classification",
        n_features: int = 1,
        n_outputs: int = 2,
        hidden: list[int] | None = None,
        channels: list[int] | None = None,
        image_shape: list[int] | None = None,
        dropout: float = 0.1,
        features: list[str] | None = None,
        classes: list | None = None,
    ):
        super().__init__()
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"unknown model kind {kind!r}: use 'mlp' or 'cnn'")
        self.kind, self.task = kind, task
        self.features = list(features or [])
        self.classes = list(classes or [])
        self.add_scaling(n_features)
        if kind == "cnn":
            shape = list(image_shape or [])
            if len(shape) == 2:
                shape = [1, *shape]
            if len(shape) != 3 or math.prod(shape) != n_features:
                raise ValueError(f"image_shape {image_shape} does not hold {n_features} features")
            self.shape = tuple(shape)
            chans = list(channels or [16, 32])
            layers: list[nn.Module] = []
            c_in = shape[0]
            for c in chans:
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            layers += [nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Dropout(dropout)]
            layers += [nn.Linear(c_in * 4, 64), nn.ReLU(), nn.Linear(64, n_outputs)]
            self.body = nn.Sequential(*layers)
        else:
            self.shape = None
            dims = [n_features, *(hidden or [128, 64])]
            layers = []
            for a, b in zip(dims[:-1], dims[1:], strict=False):
                layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
            layers.append(nn.Linear(dims[-1], n_outputs))
            self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.shape is not None:
            x = x.reshape(x.shape[0], *self.shape)
        out = self.body(x)
        return out.squeeze(-1) if self.task == "regression" else out


def load_pretrained(folder, map_location: str = "cpu"):
    """The model of a version folder (local): a :class:`FreestackNet`, or a custom model
    (:func:`freestack.ml.custom.load_custom`) when ``config.json`` says so."""
    import json
    import os

    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    if config.get("freestack_model") == "custom":
        from freestack.ml.custom import load_custom

        return load_custom(folder, config, map_location=map_location)
    return FreestackNet.from_pretrained(str(folder), map_location=map_location)


def is_custom(config: dict) -> bool:
    """Whether a version's ``config.json`` describes a custom model (its folder holds ``module.py``)."""
    return config.get("freestack_model") == "custom"
