"""What the reusable operators know of a registered model without a pipeline spec: its registry under a
storage root, the version an argument names (or why none, with the versions that exist), and the spec a
version's own records describe (:func:`version_spec`), which the score stage's core scores with and the
deploy stage rolls out to Kubernetes with.

A version records what it was trained on, not the spec file whole: its lineage holds the pipeline's name,
the feature columns and their types, the row key and the model block; its preprocessing the target and
the classes. :func:`version_spec` assembles those into a :class:`~freestack.spec.PipelineSpec` held in
memory, with the block a stage reads set from an operator's arguments (``score``: the score stage's
core; ``deploy``: the deploy stage's Kubernetes rollout); the schema's own rules (``nullable``, ``allowed``, ``min``, ``max``) are not recorded, so a row
is checked for its columns' types only, and the key is read as text.

No Airflow here, and nothing heavy: DAG files import it through :mod:`freestack.providers.operators`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from freestack.errors import FreestackError
from freestack.registry.core import ModelRegistry, VersionNotFound
from freestack.spec import PipelineSpec
from freestack.specbase import problems
from freestack.storage import join, storage_root
from freestack.version import ModelVersion

#: the most versions an error lists (the newest)
LISTED = 20
_PIPELINE = re.compile(r"[^a-z0-9_]")


class UnknownVersion(FreestackError):
    """An argument names no registered version or alias of the model; the message lists what exists."""


class UnscorableVersion(FreestackError):
    """A version's records do not describe a model the score stage can score with (or, given a deploy
    block, one the deploy stage can serve)."""


def registry_of(model: str, storage: str | None = None) -> ModelRegistry:
    """The registry of ``model`` under ``storage`` (default: the storage_root setting)."""
    return ModelRegistry(storage_root(storage), model)


def where(uri: str, storage: str | None) -> str:
    """A URI as given, or a path under the storage root as a URI."""
    return uri if "://" in uri else str(join(storage_root(storage), uri.strip("/")))


def known(reg: ModelRegistry) -> str:
    """The model's versions (the newest :data:`LISTED`) and aliases, in words."""
    names = [v["version"] for v in reg.versions()]
    shown = ", ".join(names[-LISTED:]) or "none registered"
    more = f" (and {len(names) - LISTED} older)" if len(names) > LISTED else ""
    aliases = {a: v for a, v in reg.aliases().items() if a != "history"}
    named = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
    return f"versions: {shown}{more}; aliases: {named}"


def resolve(reg: ModelRegistry, value: str, argument: str) -> str:
    """The registered version ``value`` (a version, an alias or ``latest``: the newest version the gate did
    not block) names; :class:`UnknownVersion` naming ``argument`` and listing the versions that exist when
    it names none (for ``latest``, with the registry's word on why)."""
    try:
        return reg.resolve(value.strip())
    except VersionNotFound as exc:
        if value.strip() == "latest":
            raise UnknownVersion(f"{argument}='latest': {exc}; {known(reg)}") from None
        raise UnknownVersion(
            f"{argument}={value!r} is not a registered version or alias of model {reg.model!r} under "
            f"{reg.root}; {known(reg)}"
        ) from None


def version_spec(
    opened: ModelVersion,
    model: str,
    storage: str | None,
    score: dict[str, Any] | None = None,
    *,
    deploy: dict[str, Any] | None = None,
) -> PipelineSpec:
    """The in-memory spec of a registered version (see the module's docstring), with ``score`` as its
    score block, ``deploy`` as its deploy block (each None: the spec's default) and ``storage`` (None:
    the storage_root setting) as its root."""
    lineage, pre = opened.lineage.as_dict(), opened.preprocessing
    if pre is None:
        raise UnscorableVersion(f"{opened.uri} has no preprocessing.json: it was not trained by freestack")
    generative = pre.task == "generation"
    kinds = lineage.get("features") or dict.fromkeys(pre.features, "text" if generative else "float")
    key, target = (lineage.get("split") or {}).get("keyed_on"), pre.target or "target"
    columns = [{"name": key, "type": "string", "nullable": False}] if key and key not in kinds else []
    features = [f for f in kinds if f != target]
    columns += [{"name": f, "type": kinds[f]} for f in features]
    columns.append(_target(pre.task, pre.classes, target))
    data = {
        "name": _PIPELINE.sub("_", str(lineage.get("pipeline") or model).lower()).lstrip("_0123456789")
        or "model",
        "storage_root": storage,
        "retries": 0,
        "source": {"schema": {"key": key, "target": target, "columns": columns}},
        "model": {**(_chat_model(opened) if generative else {"features": features}), "name": model},
    }
    data.update({k: v for k, v in (("score", score), ("deploy", deploy)) if v is not None})
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        found = "; ".join(f"{field}: {msg}" for field, msg in problems(exc)[:3])
        purpose = "serve" if deploy is not None else "score"
        raise UnscorableVersion(
            f"{opened.uri}: its records do not describe a model to {purpose} ({found})"
        ) from None


def _chat_model(opened: ModelVersion) -> dict[str, Any]:
    """A text-generation version's model block as scoring reads it: its chat columns (as trained, else
    as its preprocessing records them). The base is the version itself: what it was fine-tuned from is
    the version's own to load, and is not looked up where the task runs."""
    recorded = ((opened.lineage.as_dict().get("hyperparameters") or {}).get("model") or {}).get("data")
    columns = ((opened.preprocessing.chat if opened.preprocessing else None) or {}).get("columns") or {}
    chat = recorded or {k: v for k, v in columns.items() if v is not None}
    return {"type": "huggingface", "task": "text-generation", "base": opened.uri, "data": chat}


def _target(task: str | None, classes: list[Any], name: str) -> dict[str, Any]:
    """The target column the version's preprocessing describes: its classes (int, bool or text), a
    regression's number, or a text-generation version's answer."""
    if task == "generation":
        return {"name": name, "type": "text"}
    if task == "regression":
        return {"name": name, "type": "float"}
    if classes and all(isinstance(c, bool) for c in classes):
        return {"name": name, "type": "bool"}
    if classes and all(isinstance(c, int) for c in classes):
        return {"name": name, "type": "int", "allowed": classes}
    return {"name": name, "type": "string"}


__all__ = [
    "LISTED",
    "UnknownVersion",
    "UnscorableVersion",
    "known",
    "registry_of",
    "resolve",
    "version_spec",
    "where",
]
