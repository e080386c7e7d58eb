"""What every freestack model does around its network: the training split's feature scaling and the
regression target's scaling as buffers of the model, and predictions in the target's own units. The
built-in :class:`~freestack.ml.models.FreestackNet` and a user's module wrapped in
:class:`~freestack.ml.custom.CustomNet` share it."""

from __future__ import annotations

import torch
from torch import nn


class ScaledModel(nn.Module):
    """A model whose ``forward`` answers logits (classification) or the standardised target
    (regression); ``task`` is set by the subclass."""

    task: str

    def add_scaling(self, n_features: int) -> None:
        """The scaling buffers: features' ``mean``/``std`` and the target's ``y_mean``/``y_std``."""
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.register_buffer("y_mean", torch.zeros(()))  # regression targets are learnt standardised
        self.register_buffer("y_std", torch.ones(()))

    def set_scaling(self, mean, std) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=self.mean.dtype))
        self.std.copy_(torch.as_tensor(std, dtype=self.std.dtype))

    def set_target_scaling(self, mean: float, std: float) -> None:
        self.y_mean.fill_(float(mean))
        self.y_std.fill_(float(std))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class indices (into ``classes``), or regression values in the target's own units."""
        self.eval()
        out = self(x)
        if self.task == "regression":
            return out * self.y_std + self.y_mean
        return out.argmax(dim=-1)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        self.eval()
        return torch.softmax(self(x), dim=-1)


__all__ = ["ScaledModel"]
