"""Models in Hugging Face format: ``save_pretrained`` writes config.json + model.safetensors, and
``FreestackNet.from_pretrained(path_or_repo)`` loads them back without Airflow.

The network takes raw feature values: the training split's mean and std are buffers of the model,
so a loaded model needs nothing else to predict numeric columns. Category, text and image columns
come as the codes, token ids and pixels of :mod:`freestack.ml.features` (a batch is then a dict of
tensors per group): each group has its encoder (embeddings per category column, a small convolutional
text encoder, a small CNN), and the MLP takes what they give side by side.
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
        inputs: dict | None = None,
        augment: list[str] | None = None,
    ):
        super().__init__()
        if kind not in ("mlp", "cnn"):
            raise ValueError(f"unknown model kind {kind!r}: use 'mlp' or 'cnn'")
        self.kind, self.task = kind, task
        self.features = list(features or [])
        self.classes = list(classes or [])
        self.add_scaling(n_features)
        #: encoders of the non-numeric groups (category, text, image); None for numeric columns only
        self.encoders = GroupEncoders(inputs, list(channels or [16, 32])) if _non_numeric(inputs) else None
        if self.encoders is not None and "image" in inputs:
            self.add_image_scaling(inputs["image"]["shape"][0], augment)
        if kind == "cnn":
            shape = list(image_shape or [])
            if len(shape) == 2:
                shape = [1, *shape]
            if len(shape) != 3 or math.prod(shape) != n_features:
                raise ValueError(f"image_shape {image_shape} does not hold {n_features} features")
            self.shape = tuple(shape)
            layers: list[nn.Module] = []
            c_in = shape[0]
            for c in channels or [16, 32]:
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            layers += [nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Dropout(dropout)]
            layers += [nn.Linear(c_in * 4, 64), nn.ReLU(), nn.Linear(64, n_outputs)]
            self.body = nn.Sequential(*layers)
        else:
            self.shape = None
            width = n_features + (self.encoders.width if self.encoders is not None else 0)
            dims = [width, *(hidden or [128, 64])]
            layers = []
            for a, b in zip(dims[:-1], dims[1:], strict=False):
                layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
            layers.append(nn.Linear(dims[-1], n_outputs))
            self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if self.encoders is not None:
            batch = self.scaled_inputs(x)
            parts = [batch["numeric"]] if "numeric" in batch else []
            x = torch.cat([*parts, *self.encoders(batch)], dim=1)
        else:
            x = x["numeric"] if isinstance(x, dict) else x
            x = (x - self.mean) / self.std
        if self.shape is not None:
            x = x.reshape(x.shape[0], *self.shape)
        out = self.body(x)
        return out.squeeze(-1) if self.task == "regression" else out


def _non_numeric(inputs: dict | None) -> bool:
    return bool(inputs) and any(g != "numeric" for g in inputs)


def embedding_dim(vocab_size: int) -> int:
    """fast.ai's rule of thumb for a category's embedding width: 1.6 * n^0.56, at most 32."""
    return max(2, min(32, round(1.6 * vocab_size**0.56)))


class GroupEncoders(nn.Module):
    """One vector per row from the category, text and image groups of a batch (see
    :mod:`freestack.ml.features`): an embedding per category column; per text column token embeddings,
    a convolution over neighbouring tokens and a max- and mean-pool over the non-padding ones; a small
    CNN pooled to one value per channel for the image."""

    def __init__(self, groups: dict, channels: list[int], text_dim: int = 64):
        super().__init__()
        self.width = 0
        cat = groups.get("category")
        self.category = nn.ModuleList(
            nn.Embedding(v, embedding_dim(v)) for v in (cat or {}).get("vocab_sizes", [])
        )
        self.width += sum(e.embedding_dim for e in self.category)
        text = groups.get("text")
        self.tokens = self.text_conv = None
        if text:
            self.pad_id = int(text.get("pad_id", 0))
            self.tokens = nn.Embedding(text["vocab_sizes"][0], text_dim, padding_idx=self.pad_id)
            self.text_conv = nn.Conv1d(text_dim, text_dim, 3, padding=1)
            self.width += 2 * text_dim * text["shape"][0]
        image = groups.get("image")
        self.cnn = None
        if image:
            layers: list[nn.Module] = []
            c_in = image["shape"][0]
            for c in channels:
                layers += [
                    nn.Conv2d(c_in, c, 3, padding=1),
                    nn.BatchNorm2d(c),
                    nn.ReLU(),
                    nn.MaxPool2d(2, ceil_mode=True),
                ]
                c_in = c
            self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.width += c_in

    def forward(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = [emb(batch["category"][:, i]) for i, emb in enumerate(self.category)]
        if self.tokens is not None:
            out.append(self._text(batch["text"]))
        if self.cnn is not None:
            out.append(self.cnn(batch["image"]))
        return out

    def _text(self, ids: torch.Tensor) -> torch.Tensor:
        rows, columns, length = ids.shape
        flat = ids.reshape(rows * columns, length)
        keep = (flat != self.pad_id).unsqueeze(-1)  # [n, length, 1]
        h = torch.relu(self.text_conv(self.tokens(flat).transpose(1, 2))).transpose(1, 2)
        count = keep.sum(1).clamp(min=1)
        mean = (h * keep).sum(1) / count
        peak = h.masked_fill(~keep, 0.0).amax(1)  # relu output is >= 0: 0 is the floor
        return torch.cat([mean, peak], 1).reshape(rows, -1)


def load_pretrained(folder, map_location: str = "cpu", *, read_base=None):
    """The model of a version folder (local): a :class:`FreestackNet`, a custom model
    (:func:`freestack.ml.custom.load_custom`) or a fine-tuned transformers model
    (:func:`freestack.ml.pretrained.load_pretrained_version`; ``read_base`` reads an adapter's base
    folder in object storage), as ``config.json`` says."""
    import json
    import os

    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    if config.get("freestack_model") == "custom":
        from freestack.ml.custom import load_custom

        return load_custom(folder, config, map_location=map_location)
    if is_generation(config):
        from freestack.ml.lm.causal import load_generation_version

        return load_generation_version(folder, config, map_location=map_location, read_base=read_base)
    if is_pretrained(config):
        from freestack.ml.pretrained import load_pretrained_version

        return load_pretrained_version(folder, config, map_location=map_location, read_base=read_base)
    return FreestackNet.from_pretrained(str(folder), map_location=map_location)


def is_pretrained(config: dict) -> bool:
    """Whether a version's ``config.json`` describes a fine-tuned transformers model (settings under ``freestack``)."""
    return (config.get("freestack") or {}).get("freestack_model") == "huggingface"


def is_generation(config: dict) -> bool:
    """Whether a version's ``config.json`` describes an instruction-tuned causal LM (task ``generation``)."""
    return is_pretrained(config) and config["freestack"].get("task") == "generation"
