"""The registry's names and file layout, shared with the model server (which reads versions without
the registry's code): what a version and an alias may be called, and the files that make a version.

    registry/<model>/<version>/_REGISTERED.json   the commit marker (sha256 and size of every file)
    registry/<model>/aliases.json                 {"production": v, "previous": v, "history": [...]}

Imports nothing but the standard library.
"""

from __future__ import annotations

import re

MARKER = "_REGISTERED.json"
ALIASES = "aliases.json"
KNOWN_ALIASES = ("production", "staging", "previous")
#: a version is one path segment, so an alias file can never point outside its model's folder
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
#: names an alias may not take (``latest`` means the newest version; ``history`` is the move log)
RESERVED = frozenset({"history", "latest"})
#: files that make up a version (the rest describe it: the card may be rendered before the commit); a
#: fine-tuned model with LoRA adapters holds ``adapter_model.safetensors`` (and its config) instead
MODEL_FILES = ("config.json", "model.safetensors")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: what a text-generation version answers with besides its weights (freestack.ml.generation.save_tokenizer)
GENERATION_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def missing_model_files(names: set[str] | frozenset[str]) -> list[str]:
    """What a folder of ``names`` lacks to be a model version: config.json and full weights or an adapter."""
    if "model.safetensors" not in names and all(n in names for n in ADAPTER_FILES):
        return [n for n in ("config.json",) if n not in names]
    return [n for n in MODEL_FILES if n not in names]


def weight_files(config: dict) -> tuple[str, ...]:
    """The files beside ``config.json`` that a version's model is loaded from, by its config: a custom
    model's weights and its ``module.py``, a fine-tuned model's weights or adapter (and a text-generation
    model's tokenizer, chat template and generation config), else the weights."""
    if config.get("freestack_model") == "custom":
        return ("model.safetensors", "module.py")
    fine_tuned = config.get("freestack") or {}
    if fine_tuned.get("freestack_model") == "huggingface":
        files = tuple(fine_tuned.get("files") or ("model.safetensors",))
        # a text-generation model answers with its own tokenizer, chat template and generation config
        return files + GENERATION_FILES if fine_tuned.get("task") == "generation" else files
    return ("model.safetensors",)


def valid_version(name: object) -> bool:
    return isinstance(name, str) and bool(VERSION_RE.match(name))


def valid_alias(name: object) -> bool:
    return isinstance(name, str) and bool(ALIAS_RE.match(name)) and name not in RESERVED


__all__ = [
    "ADAPTER_FILES",
    "ALIASES",
    "GENERATION_FILES",
    "ALIAS_RE",
    "missing_model_files",
    "weight_files",
    "KNOWN_ALIASES",
    "MARKER",
    "MODEL_FILES",
    "RESERVED",
    "VERSION_RE",
    "valid_alias",
    "valid_version",
]
