"""The files that make a model version folder, by name, and which of them a version's model loads from.

    config.json                 the model's settings (what freestack writes, or transformers/peft's own
                                config with freestack's settings under ``freestack``)
    model.safetensors           the weights (or ``adapter_config.json`` + ``adapter_model.safetensors``)
    module.py                   a custom model's own module
    preprocessing.json          how rows are encoded (scaling, encoders, label coding, or the chat columns)
    tokenizer.json              the text columns' tokenizer (and a causal LM's tokenizer files)
    metrics.json, history.json  the training (and evaluation) metrics, the learning curves
    steps.json                  each optimiser step's figures, for a training that keeps them (GRPO)
    lineage.json                what the version was trained on and how
    README.md                   the model card
    evaluation/                 the evaluation's plots, report and smoke sample
    _REGISTERED.json            the registration manifest (sha256 and size of every file): the commit marker

Imports nothing but the standard library: the model server reads these names too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MODULE = "module.py"
PREPROCESSING = "preprocessing.json"
TOKENIZER = "tokenizer.json"
METRICS = "metrics.json"
HISTORY = "history.json"
STEPS = "steps.json"
LINEAGE = "lineage.json"
CARD = "README.md"
SMOKE = "evaluation/smoke.json"
MARKER = "_REGISTERED.json"
GENERATION_CONFIG = "generation_config.json"
#: files that make up a version (the rest describe it: the card may be rendered before the commit); a
#: fine-tuned model with LoRA adapters holds ``adapter_model.safetensors`` (and its config) instead
MODEL_FILES = (CONFIG, WEIGHTS)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
#: what a text-generation version answers with besides its weights (freestack.ml.lm.prompts.save_tokenizer)
GENERATION_FILES = (GENERATION_CONFIG, TOKENIZER, "tokenizer_config.json", "chat_template.jinja")
#: a causal LM's tokenizer files that only some tokenizers write
OPTIONAL_TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json")


def missing_model_files(names: set[str] | frozenset[str]) -> list[str]:
    """What a folder of ``names`` lacks to be a model version: config.json and full weights or an adapter."""
    if WEIGHTS not in names and all(n in names for n in ADAPTER_FILES):
        return [n for n in (CONFIG,) if n not in names]
    return [n for n in MODEL_FILES if n not in names]


def weight_files(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The files beside ``config.json`` that a version's model is loaded from, by its config: a custom
    model's weights and its ``module.py``, a fine-tuned model's weights or adapter (and a text-generation
    model's tokenizer, chat template and generation config), else the weights."""
    if config.get("freestack_model") == "custom":
        return (WEIGHTS, MODULE)
    fine_tuned = config.get("freestack") or {}
    if fine_tuned.get("freestack_model") == "huggingface":
        files = tuple(fine_tuned.get("files") or (WEIGHTS,))
        # a text-generation model answers with its own tokenizer, chat template and generation config
        return files + GENERATION_FILES if fine_tuned.get("task") == "generation" else files
    return (WEIGHTS,)


__all__ = [
    "ADAPTER_FILES",
    "CARD",
    "CONFIG",
    "GENERATION_CONFIG",
    "GENERATION_FILES",
    "HISTORY",
    "LINEAGE",
    "MARKER",
    "METRICS",
    "STEPS",
    "MODEL_FILES",
    "MODULE",
    "OPTIONAL_TOKENIZER_FILES",
    "PREPROCESSING",
    "SMOKE",
    "TOKENIZER",
    "WEIGHTS",
    "missing_model_files",
    "weight_files",
]
