"""The causal LM as the loop trains it: :class:`CausalLMNet` wraps the ``AutoModelForCausalLM`` (maybe a
peft model), logits in, the mean token loss out, and reports a split's loss and perplexity
(:func:`token_metrics`) through the loop's ``split_metrics`` hook.

A version folder is what transformers/peft and the tokenizer write: ``config.json`` (with ``freestack``),
``model.safetensors`` or ``adapter_config.json`` + ``adapter_model.safetensors``, ``generation_config.json``
and the tokenizer files with the chat template, so ``AutoModelForCausalLM`` (+ ``PeftModel``) and
``AutoTokenizer`` load it and ``apply_chat_template`` + ``generate`` answer as freestack's server does.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from freestack.ml.lm.chat import IGNORE, PIPELINE_TASK, TASK, ChatColumns
from freestack.ml.pretrained import HubWeights, PretrainedError, adapter_base, add_lora
from freestack.ml.stream import BatchSource


def token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each next token (logits at t predict the label at t + 1), ``IGNORE`` skipped."""
    shifted = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    labels = labels[:, 1 : logits.shape[1]]  # a batch cut to its longest row: its labels past it are IGNORE
    return nn.functional.cross_entropy(shifted, labels.reshape(-1), ignore_index=IGNORE, reduction=reduction)


@torch.no_grad()
def token_metrics(
    model: nn.Module, source: BatchSource, device: torch.device, amp_dtype=None, batch: int = 64
) -> dict[str, float]:
    """A language model's mean loss per learnt token over a split, and its perplexity (exp of the loss):
    summed batch by batch, never holding more than one batch's logits."""
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    tokens = 0
    for xb, yb in source.ordered(batch, device):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(xb)
        total += token_loss(logits, yb, reduction="sum").double()
        tokens += int((yb[:, 1:] != IGNORE).sum())
    loss = float(total) / max(tokens, 1)
    return {"loss": loss, "perplexity": perplexity(loss), "tokens": float(tokens)}


class CausalLMNet(HubWeights, nn.Module):
    """A transformers causal LM (``model``, maybe a peft model) taking freestack's batches; its tokenizer is
    saved beside its weights by :func:`save_tokenizer`."""

    task = TASK

    def __init__(
        self,
        model,
        *,
        base: dict[str, str],
        columns: ChatColumns,
        max_length: int,
        peft: dict[str, Any] | None = None,
        packing: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.base, self.columns = model, dict(base), columns
        self.max_length, self.peft, self.packing = int(max_length), peft, packing
        self.pipeline_task = PIPELINE_TASK
        self.classes: list[Any] = []

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        if "position_ids" in x:  # packed: no mask, restarting positions separate the conversations
            return self.model(
                input_ids=x["input_ids"], position_ids=x["position_ids"], use_cache=False
            ).logits
        mask = x["attention_mask"]
        width = int(mask.sum(dim=1).max())  # rows are right-padded to the split's longest: cut to the batch's
        return self.model(
            input_ids=x["input_ids"][:, :width], attention_mask=mask[:, :width], use_cache=False
        ).logits

    def training_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return token_loss(logits, labels)

    def split_metrics(self, source, device: torch.device, amp_dtype=None) -> dict[str, float]:
        """The loop's hook for a split's metrics: loss per learnt token and perplexity (:func:`token_metrics`)."""
        return token_metrics(self, source, device, amp_dtype, batch=64)

    def token_rows(self) -> int:
        """The token ids the model has rows for (:func:`token_rows`)."""
        return token_rows(self.model)

    def seen_tokens(self, x: dict[str, torch.Tensor]) -> int:
        """The tokens a training batch put through the model (its mask's; packed rows: all of them)."""
        return int(x["attention_mask"].sum()) if "attention_mask" in x else x["input_ids"].numel()

    def config(self) -> dict[str, Any]:
        return {
            "freestack_model": "huggingface",
            "task": TASK,
            "pipeline_task": PIPELINE_TASK,
            "classes": [],
            "base": self.base,
            "peft": self.peft,
            "files": self.weight_files(),
            "max_length": self.max_length,
            "chat": asdict(self.columns),
            "packing": self.packing,
        }


def load_causal_lm(folder: str, *, meta: bool = False):
    """The base's ``AutoModelForCausalLM`` in float32 (mixed precision is the loop's, on CUDA)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        return AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, **({"device_map": "meta"} if meta else {})
        )
    except (ValueError, KeyError, OSError) as exc:
        raise PretrainedError(
            f"the base at {folder} cannot be loaded as a causal language model ({type(exc).__name__}: "
            f"{str(exc)[:300]}); text-generation needs a decoder (GPT-2, Llama, Qwen, SmolLM ...)"
        ) from None


def fit_vocabulary(model, tokenizer, *, lora: bool, resize: bool = True) -> str | None:
    """Give ``model`` a row for every token ``tokenizer`` knows, when it knows more (a token added to the
    tokenizer after the model was saved): its embeddings resized (transformers' ``resize_token_embeddings``,
    the new rows drawn around the old ones' mean), and what was done, for the log. A LoRA adapter cannot
    add rows to its base: PretrainedError saying what to do. ``resize`` false: check only (a meta model).
    None when every token has its row."""
    rows, known = token_rows(model), len(tokenizer)
    if known <= rows:
        return None
    added = tokenizer.convert_ids_to_tokens(list(range(rows, min(known, rows + 3))))
    where = f"the base's tokenizer knows {known} tokens but its model has rows for {rows} (ids {rows} and up: {added})"
    if lora:
        raise PretrainedError(
            f"{where}: an id past the rows would fail training and serving, and a LoRA adapter cannot add rows "
            "to its base; train full weights (leave out model.peft), which gives each token a row, or use a "
            "base whose tokenizer fits its model"
        )
    if resize:
        model.resize_token_embeddings(known)
    return f"{where}: the embeddings were resized to {known} rows, the new ones trained from their mean"


def add_causal_lora(model, peft: dict[str, Any]):
    """LoRA adapters (peft, ``CAUSAL_LM``) on ``peft["target_modules"]`` or peft's default for the
    architecture: :func:`~freestack.ml.pretrained.add_lora` for the text-generation task."""
    return add_lora(model, PIPELINE_TASK, peft)


def load_generation_version(
    folder: str | os.PathLike,
    config: dict[str, Any],
    map_location: str = "cpu",
    *,
    endpoint: str | None = None,
    token: str | None = None,
    read_base=None,
) -> CausalLMNet:
    """A version's causal LM: full weights as they are, or the adapter on its recorded base."""
    info = config["freestack"]
    if "model.safetensors" in info["files"]:
        model = load_causal_lm(str(folder))
    else:
        from peft import PeftModel

        base = adapter_base(info["base"], endpoint=endpoint, token=token, read_base=read_base)
        model = PeftModel.from_pretrained(load_causal_lm(base.folder), str(folder))
    net = CausalLMNet(
        model,
        base=info["base"],
        columns=ChatColumns(**info["chat"]),
        max_length=info["max_length"],
        peft=info.get("peft"),
        packing=bool(info.get("packing")),
    )
    return net.to(map_location).eval()


def token_rows(model) -> int:
    """How many token ids ``model`` can read and write: its input embeddings' rows and its output's width,
    the fewer (a tokenizer may know more tokens than a model has rows, after tokens were added)."""
    rows = model.get_input_embeddings().weight.shape[0]
    out = model.get_output_embeddings()
    return int(min(rows, out.weight.shape[0]) if out is not None else rows)


def perplexity(loss: float) -> float:
    return float(math.exp(min(loss, 50.0)))


__all__ = [
    "CausalLMNet",
    "add_causal_lora",
    "fit_vocabulary",
    "load_causal_lm",
    "load_generation_version",
    "perplexity",
    "token_loss",
    "token_metrics",
    "token_rows",
]
