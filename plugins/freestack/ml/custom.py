"""A model the user wrote (``model: {type: custom}``), wrapped so that training, evaluation, the
registry and the model server treat it like a built-in one (:mod:`freestack.ml.contract` is the
contract).

:class:`CustomNet` holds the user's module as ``net`` and does freestack's part around it: feature
scaling in, the check of what comes out, target scaling, ``predict``/``predict_proba``. A version
folder holds ``config.json`` (the wrapper's settings, the class, its ``init`` values and the
:class:`~freestack.ml.contract.ModelInputs`), ``model.safetensors`` and ``module.py``, the module's
own source: :func:`load_custom` rebuilds the model from the folder alone, importing that copy, so a
server needs neither the project nor the file the model was trained from. Nothing is unpickled.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import linecache
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

from freestack.ml.contract import (
    CONTRACT,
    MODULE_FILE,
    CustomModelError,
    ModelInputs,
    is_dotted,
    module_path,
    sha256_of,
)
from freestack.ml.scaling import ScaledModel

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def _where(exc: BaseException, path: str) -> str:
    """``<file>, line N`` of the deepest frame of ``exc`` in ``path`` (else in any file)."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"{exc.filename or path}, line {exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(path)] or frames[-1:]
    return f"{mine[-1].filename}, line {mine[-1].lineno}" if mine else path


def import_source(source: bytes, path: str, class_name: str) -> type[nn.Module]:
    """The class ``class_name`` of a module's ``source`` (executed as a fresh module named after its
    sha256, so two versions of one file can be loaded side by side)."""
    name = f"freestack_custom_{sha256_of(source)[:16]}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_loader(name, loader=None, origin=path)
        module = importlib.util.module_from_spec(spec)
        module.__file__ = path
        # tracebacks and inspect read the lines of the source that ran, wherever the file is now
        text = source.decode("utf-8", errors="replace")
        linecache.cache[path] = (len(text), None, text.splitlines(keepends=True), path)
        try:
            code = compile(source, path, "exec")
            sys.modules[name] = module  # dataclasses and typing look their module up while it runs
            exec(code, module.__dict__)
        except SyntaxError as exc:
            raise CustomModelError(
                f"{_where(exc, path)}: the module does not parse: {exc.msg}. {CONTRACT}"
            ) from None
        except Exception as exc:
            sys.modules.pop(name, None)
            raise CustomModelError(
                f"{_where(exc, path)}: importing the custom model failed: "
                f"{type(exc).__name__}: {exc}. {CONTRACT}"
            ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = "not defined" if cls is None else f"a {type(cls).__name__}, not a torch.nn.Module class"
        raise CustomModelError(f"{path}: {class_name} is {found}. {CONTRACT}")
    return cls


def read_module(module: str, base: Path) -> tuple[bytes, str]:
    """(source bytes, file path) of a ``model.module``: a project file, or a dotted module's file."""
    if is_dotted(module):
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            found, why = None, str(exc)
        else:
            why = "not found on the Python path"
        if found is None or not found.origin or not found.origin.endswith(".py"):
            raise CustomModelError(
                f"model.module {module!r}: {why if found is None else 'not a single .py file'}; "
                "name a file of the project or a module importable in the task's environment"
            )
        path = found.origin
    else:
        path = str(module_path(module, base))
    try:
        return Path(path).read_bytes(), path
    except OSError as exc:
        raise CustomModelError(f"model.module {module!r}: cannot read {path}: {exc.strerror}") from None


def construct(cls: type[nn.Module], inputs: ModelInputs, init: dict[str, Any], path: str) -> nn.Module:
    """``cls(inputs, **init)``, its signature checked first so that a mismatch names the parameters."""
    if problem := _init_problem(cls, init):
        line = getattr(getattr(cls.__init__, "__code__", None), "co_firstlineno", "?")
        raise CustomModelError(f"{path}, line {line}: {cls.__name__}: {problem}. {CONTRACT}")
    try:
        return cls(inputs, **init)
    except Exception as exc:
        raise CustomModelError(
            f"{_where(exc, path)}: {cls.__name__}(inputs, **model.init) failed: "
            f"{type(exc).__name__}: {exc}. {CONTRACT}"
        ) from None


def _init_problem(cls: type[nn.Module], init: dict[str, Any]) -> str | None:
    """Why ``cls.__init__`` does not take ``(inputs, **init)``; None when it does or has no signature."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # self
    except (TypeError, ValueError):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(k for k in init if k not in named) if not takes_any else []
    required = [
        p.name
        for p in params[1:]
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in init
    ]
    if not positional:
        return "__init__ takes no inputs argument"
    if unknown:
        return f"model.init {unknown} are not parameters of __init__ ({', '.join(sorted(named - {positional[0].name}))})"
    return f"__init__ needs {required}, which model.init does not give" if required else None


class CustomNet(ScaledModel):
    """The user's module (``net``) with freestack's scaling around it; the interface of FreestackNet."""

    def __init__(
        self,
        net: nn.Module,
        inputs: ModelInputs,
        *,
        class_name: str,
        init: dict[str, Any],
        source: bytes,
        source_path: str,
        origin: str | None = None,
    ) -> None:
        super().__init__()
        self.net, self.inputs = net, inputs
        self.task, self.classes = inputs.task, list(inputs.classes)
        self.features = inputs.feature_names
        self.class_name, self.init = class_name, dict(init)
        self.source, self.source_path = source, source_path
        self.origin = origin or source_path  # model.module as the spec gave it
        self.add_scaling(inputs.groups["numeric"].size if "numeric" in inputs.groups else 0)
        if "image" in inputs.groups:
            self.add_image_scaling(inputs.groups["image"].shape[0], list(inputs.augment))
        user_loss = getattr(net, "loss", None)
        self.training_loss = user_loss if callable(user_loss) else None

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        batch = self.scaled_inputs(x)
        return self.checked(self.net(batch), len(next(iter(batch.values()))))

    def checked(self, out: Any, rows: int) -> torch.Tensor:
        """The module's answer if it keeps the contract (regression squeezed to ``[batch]``)."""
        want = [rows, self.inputs.n_outputs] if self.task == "classification" else [rows]
        if not torch.is_tensor(out) or not out.is_floating_point():
            got = type(out).__name__ if not torch.is_tensor(out) else f"a {out.dtype} tensor"
            raise CustomModelError(
                f"{self.source_path}: {self.class_name}.forward returned {got}; "
                f"it must return a float tensor of shape {want}. {CONTRACT}"
            )
        if self.task == "regression" and out.dim() == 2 and out.shape[1] == 1:
            out = out.squeeze(-1)
        if list(out.shape) != want:
            raise CustomModelError(
                f"{self.source_path}: {self.class_name}.forward returned shape {list(out.shape)} for "
                f"{rows} rows; the contract wants {want}. {CONTRACT}"
            )
        return out

    def config(self) -> dict[str, Any]:
        return {
            "freestack_model": "custom",
            "task": self.task,
            "features": self.features,
            "classes": self.classes,
            "n_features": int(self.mean.numel()),
            "custom": {
                "class": self.class_name,
                "init": self.init,
                "file": MODULE_FILE,
                "source": self.origin,
                "sha256": sha256_of(self.source),
            },
            "inputs": self.inputs.as_dict(),
        }

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """``config.json``, ``model.safetensors`` and ``module.py`` (the module's source) into ``folder``."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG).write_text(json.dumps(self.config(), indent=2, default=str))
        (folder / MODULE_FILE).write_bytes(self.source)
        save_model(self, str(folder / WEIGHTS))


def build_custom(
    module: str, class_name: str, init: dict[str, Any], inputs: ModelInputs, base: Path
) -> CustomNet:
    """A fresh :class:`CustomNet` of the user's class (read from the project or the Python path)."""
    source, path = read_module(module, base)
    return _wrapped(source, path, class_name, init, inputs, module)


def _wrapped(
    source: bytes, path: str, class_name: str, init: dict[str, Any], inputs: ModelInputs, origin: str | None
) -> CustomNet:
    """The class ``class_name`` of the module ``source`` (read from ``path``), built and wrapped."""
    net = construct(import_source(source, path, class_name), inputs, init, path)
    return CustomNet(
        net, inputs, class_name=class_name, init=init, source=source, source_path=path, origin=origin
    )


def check_custom(net: CustomNet, rows: int = 2) -> None:
    """One forward and backward pass on a zero batch: the answer's shape and type, and a loss that
    gradients flow through (CustomModelError naming the file and the contract otherwise)."""
    try:
        out = net(zero_batch(net.inputs, rows))
    except CustomModelError:
        raise
    except Exception as exc:
        raise CustomModelError(
            f"{_where(exc, net.source_path)}: {net.class_name}.forward failed on a batch of "
            f"{rows} rows: {type(exc).__name__}: {exc}. {CONTRACT}"
        ) from None
    out = net.checked(out, rows)
    if not out.requires_grad:
        raise CustomModelError(
            f"{net.source_path}: {net.class_name}.forward's answer has no gradient (no trainable "
            f"parameter reached it, or it ran under no_grad). {CONTRACT}"
        )


def zero_batch(inputs: ModelInputs, rows: int) -> dict[str, torch.Tensor]:
    """A batch of ``rows`` zero rows with every group of ``inputs`` (padding tokens for text)."""
    batch: dict[str, torch.Tensor] = {}
    for name, group in inputs.groups.items():
        if name == "numeric":
            batch[name] = torch.zeros(rows, group.size)
        elif name == "category":
            batch[name] = torch.zeros(rows, group.size, dtype=torch.int64)
        elif name == "text":
            batch[name] = torch.full((rows, *group.shape), group.pad_id, dtype=torch.int64)
        elif name == "image":
            batch[name] = torch.zeros(rows, *group.shape, dtype=torch.uint8)
    return batch


def load_custom(folder: str | os.PathLike, config: dict[str, Any], map_location: str = "cpu") -> CustomNet:
    """A trained custom model from its version folder (its own ``module.py``, checked against the sha256
    recorded in ``config.json``)."""
    from safetensors.torch import load_model

    folder = Path(folder)
    info = config["custom"]
    source = (folder / info.get("file", MODULE_FILE)).read_bytes()
    if sha256_of(source) != info["sha256"]:
        raise CustomModelError(
            f"{folder / MODULE_FILE} does not match the sha256 in config.json; the version was changed"
        )
    path = str(folder / MODULE_FILE)
    inputs = ModelInputs.from_dict(config["inputs"])
    net = _wrapped(source, path, info["class"], dict(info.get("init") or {}), inputs, info.get("source"))
    load_model(net, str(folder / WEIGHTS), device=str(map_location))
    return net


__all__ = [
    "CustomNet",
    "build_custom",
    "check_custom",
    "construct",
    "import_source",
    "load_custom",
    "read_module",
]
