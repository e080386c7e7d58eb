"""What every freestack model does around its network: the training split's feature scaling (numeric
columns, and image pixels per channel, with augmentation in training) and the regression target's
scaling as buffers of the model, and predictions in the target's own units. The
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

    def add_image_scaling(self, channels: int, augment: list[str] | None = None) -> None:
        """Per-channel ``image_mean``/``image_std`` of the training split's pixels (0..1), and the
        augmentations applied in training: ``flip`` (horizontal) and ``shift`` (up to 1/8 of the size)."""
        self.register_buffer("image_mean", torch.full((channels, 1, 1), 0.5))
        self.register_buffer("image_std", torch.full((channels, 1, 1), 0.25))
        self.augment = [a for a in (augment or []) if a in AUGMENTATIONS]

    def set_image_scaling(self, mean, std) -> None:
        self.image_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1))
        self.image_std.copy_(torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1))

    def scaled_inputs(self, x: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch as the network takes it: numeric columns standardised, images in 0..1, augmented in
        training, normalised; category codes and token ids as they are."""
        batch = {"numeric": x} if torch.is_tensor(x) else dict(x)
        if "numeric" in batch:
            batch["numeric"] = (batch["numeric"] - self.mean) / self.std
        if "image" in batch:
            image = batch["image"].float() / 255.0
            if self.training and getattr(self, "augment", None):
                image = augmented(image, self.augment)
            batch["image"] = (image - self.image_mean) / self.image_std
        return batch

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


AUGMENTATIONS = ("flip", "shift")


def augmented(image: torch.Tensor, kinds: list[str]) -> torch.Tensor:
    """A random horizontal flip (half the images) and/or a random shift of up to 1/8 of the size (the
    border reflected), drawn per image from torch's generator (seeded by the training loop)."""
    if "flip" in kinds:
        flip = torch.rand(image.shape[0], device=image.device) < 0.5
        image = torch.where(flip[:, None, None, None], image.flip(-1), image)
    if "shift" in kinds:
        n = image.shape[0]
        theta = torch.zeros(n, 2, 3, device=image.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = (torch.rand(n, 2, device=image.device) - 0.5) * 0.5  # +-1/8 of the size
        grid = torch.nn.functional.affine_grid(theta, list(image.shape), align_corners=False)
        image = torch.nn.functional.grid_sample(image, grid, padding_mode="reflection", align_corners=False)
    return image


__all__ = ["AUGMENTATIONS", "ScaledModel", "augmented"]
