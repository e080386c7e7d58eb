"""The contract between freestack and a model the user wrote (``model: {type: custom}``), and the
checks that need no PyTorch (a spec is parsed by the DAG processor; see :mod:`freestack.ml.custom` for
the rest).

A custom model is a ``torch.nn.Module`` class in a file of the project or an importable module::

    class MyNet(nn.Module):
        def __init__(self, inputs: ModelInputs, hidden: int = 64, dropout: float = 0.1): ...
        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...
        def loss(self, outputs, target) -> torch.Tensor: ...   # optional

- the constructor gets :class:`ModelInputs` first (what the data looks like), then the spec's
  ``model.init`` values as keyword arguments (sweepable);
- ``forward`` gets one batch as a dict of tensors, one per feature group the data has (:data:`GROUPS`):
  ``numeric`` float32 ``[batch, n]`` (the numeric and bool columns, standardised with the training
  split's mean and std), ``category`` int64 ``[batch, n]`` (one code per column, 0 the unknown
  bucket, ``vocab_sizes`` per column), ``text`` int64 ``[batch, n_text, max_length]`` (token ids,
  ``pad_id`` padding, ``vocab_sizes[0]`` tokens) and ``image`` float32 ``[batch, channels, height,
  width]`` (normalised with the training split's per-channel mean and std, augmented in training);
  it returns float logits ``[batch, n_outputs]`` for classification, or ``[batch]`` / ``[batch, 1]``
  predictions of the standardised target for regression;
- ``loss(outputs, target)``, when the class defines it, replaces the training loss (cross-entropy on
  class indices, or mean squared error on the standardised target). Validation and test metrics are
  freestack's, so that versions stay comparable.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from freestack.errors import FreestackError

#: the feature groups a batch can hold, in order (:mod:`freestack.ml.features` encodes them)
GROUPS = ("numeric", "category", "text", "image")
CONTRACT = (
    "a custom model is a torch.nn.Module class whose __init__(self, inputs, **init) takes freestack's "
    "ModelInputs first and the spec's model.init values as keyword arguments, and whose forward(self, batch) "
    "takes a dict of tensors per feature group (numeric float32 [batch, n], category int64 [batch, n], text int64 "
    "[batch, n_text, max_length], image float32 [batch, C, H, W]; only the groups the data has) and returns logits "
    "[batch, n_outputs] (classification) or [batch] / [batch, 1] (regression); see docs/stages/train.md"
)
#: where the module's source is kept in a model version
MODULE_FILE = "module.py"
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class CustomModelError(FreestackError):
    """A custom model breaks the contract; the message names the file, the line and the contract."""


@dataclass(frozen=True)
class FeatureGroup:
    """One entry of a batch: ``names`` of its columns and ``size``, their number; for ``category`` the
    ``vocab_sizes`` per column (the unknown bucket included), for ``text`` ``vocab_sizes == [tokens]``,
    ``shape == [n_text, max_length]`` and ``pad_id``, for ``image`` ``shape == [channels, height, width]``."""

    kind: str
    names: list[str]
    size: int
    vocab_sizes: list[int] = field(default_factory=list)
    shape: list[int] = field(default_factory=list)
    pad_id: int = 0


@dataclass(frozen=True)
class ModelInputs:
    """What a custom model's constructor learns about its data."""

    task: str  # classification | regression
    n_outputs: int  # classes, or 1 for regression
    groups: dict[str, FeatureGroup]
    classes: list[Any] = field(default_factory=list)
    target: str = ""
    #: the augmentations freestack applies to the image group in training (``flip``, ``shift``)
    augment: list[str] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return [n for g in self.groups.values() for n in g.names]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInputs:
        groups = {k: FeatureGroup(**v) for k, v in d["groups"].items()}
        return cls(
            d["task"],
            int(d["n_outputs"]),
            groups,
            list(d.get("classes") or []),
            d.get("target", ""),
            list(d.get("augment") or []),
        )


def is_dotted(module: str) -> bool:
    """Whether ``model.module`` names an importable module (``pkg.nets``) rather than a file."""
    return not module.endswith(".py") and "/" not in module and bool(_DOTTED.match(module))


def module_path(module: str, base: Path) -> Path:
    """The file a ``model.module`` path names: absolute, or relative to the project ``base``."""
    path = Path(module).expanduser()
    return path if path.is_absolute() else base / path


def static_check(module: str, class_name: str, base: Path) -> str | None:
    """What is wrong with a custom model's file that can be seen without running it (missing, not
    Python, no such top-level class); None when nothing is. Dotted modules are checked when imported."""
    if is_dotted(module):
        return None
    path = module_path(module, base)
    if path.suffix != ".py":
        return f"model.module {module!r} must be a .py file of the project or a dotted import path (pkg.nets)"
    if not path.is_file():
        return f"model.module {module!r}: no such file ({path}); paths are relative to the project ({base})"
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        return f"{path}, line {exc.lineno}: {exc.msg} (model.module does not parse)"
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    if class_name not in classes:
        return (
            f"{path} has no top-level class {class_name!r} (model.class); it defines "
            f"{', '.join(classes) or 'no class'}"
        )
    return None


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = [
    "CONTRACT",
    "GROUPS",
    "MODULE_FILE",
    "CustomModelError",
    "FeatureGroup",
    "ModelInputs",
    "is_dotted",
    "module_path",
    "sha256_of",
    "static_check",
]
