"""Registered text-generation versions for the serving tests: a tiny causal LM (:func:`tests.support.hf_tiny.tiny_causal_lm`)
saved as the trainer saves an instruction-tuned version (``CausalLMNet.save_pretrained``, ``save_tokenizer``,
``preprocessing.json``), with the evaluation's smoke sample (test conversations and the model's greedy answers,
each computed alone), committed by the registry; and what the same version answers in this process."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the system prompt of the tests' chat columns (put first in every conversation, training and serving)
SYSTEM = "Answer briefly."
#: the smoke sample's prompts: what the evaluation's test rows would hold
SMOKE_PROMPTS = [
    "What is 2 + 2?",
    "Reverse the digits: 123",
    "Convert 2026-11-03 to DD/MM/YYYY.",
    "What is 7 + 5?",
]


@dataclass
class GenerationVersion:
    """A registered version and its model, tokenizer and chat columns loaded here (the evaluation's view)."""

    uri: str
    folder: Path
    model: Any  # the transformers causal LM
    tokenizer: Any
    columns: Any  # freestack.ml.lm.chat.ChatColumns
    max_length: int
    sample: dict[str, Any]

    def chat(
        self, prompt: str | None = None, messages: list[dict[str, str]] | None = None
    ) -> list[dict[str, str]]:
        return self.columns.with_system(
            messages if messages is not None else [{"role": "user", "content": prompt}]
        )

    def answer(self, chats: list[list[dict[str, str]]], **settings: Any) -> list:
        """What :func:`freestack.ml.lm.sampling.generate` answers here, in one call (greedy by default), with
        one torch thread as the servers run."""
        import torch

        from freestack.ml.lm.answers import GenerationSettings
        from freestack.ml.lm.sampling import generate

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            settings.setdefault("max_prompt_tokens", self.max_length)
            config = json.loads((self.folder / "generation_config.json").read_text())
            return generate(self.model, self.tokenizer, chats, GenerationSettings(**settings), config)
        finally:
            torch.set_num_threads(threads)

    def alone(self, chats: list[list[dict[str, str]]], **settings: Any) -> list[str]:
        """Each chat's greedy answer computed alone (no padding)."""
        return [self.answer([c], **settings)[0].text for c in chats]


def make_generation_version(
    root: str,
    model: str,
    version: str,
    work: Path,
    *,
    seed: int = 0,
    max_length: int = 96,
    smoke_tokens: int = 10,
    scale: float = 0.5,
    lora: bool = False,
    adapter_seed: int | None = None,
) -> GenerationVersion:
    """Register ``version`` of ``model`` (a tiny Llama, full weights, ChatML template, system prompt
    :data:`SYSTEM`, prompt/response columns) under ``root``, with ``evaluation/smoke.json`` as the evaluate
    stage writes it for generation. Its weights are drawn at random (normal, ``scale``; the norms kept): a
    few seconds of pretraining leave a tiny model answering every prompt alike, while these answer each
    prompt differently (bytes, mostly), with logits far apart, so greedy answers are the same wherever
    they are computed. ``lora``: the version is a LoRA adapter (its B matrices drawn at random too, so that
    it changes the answers) on that base, saved as a base folder the adapter names, as training on a base
    folder records it; ``adapter_seed``: the adapter's own draw, so that versions on one base differ."""
    import torch

    from freestack.ml.lm.causal import add_causal_lora, load_causal_lm
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.prompts import load_tokenizer
    from freestack.registry.core import ModelRegistry
    from tests.support.hf_tiny import LM_BASE, tiny_causal_lm

    base = tiny_causal_lm(work / f"base-{seed}", seed, pretrain_steps=0)
    columns = ChatColumns(prompt="prompt", response="response", system=SYSTEM)
    lm = load_causal_lm(str(base)).eval()
    draw = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=draw) * scale)
    tok = load_tokenizer(base)
    folder = work / f"{model}-{version}"
    lineage, peft = {"repo": LM_BASE, "folder": str(base)}, None
    if lora:
        drawn = work / f"base-{seed}-drawn"  # the adapter's base: these weights, where the adapter says
        lm.save_pretrained(drawn)
        tok.save_pretrained(drawn)
        lineage, peft = {"repo": str(drawn)}, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}
        lm = add_causal_lora(lm, peft).eval()
        if adapter_seed is not None:
            draw = torch.Generator().manual_seed(adapter_seed)
        with torch.no_grad():
            for name, p in lm.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=draw) * scale)
    save_generation(folder, lm, tok, columns, max_length, lineage, peft, pipeline=model)
    out = GenerationVersion("", folder, lm, tok, columns, max_length, {})
    chats = [out.chat(p) for p in SMOKE_PROMPTS]
    answers = out.alone(chats, max_new_tokens=smoke_tokens)
    out.sample = {
        "task": "generation",
        "features": [columns.input_column],
        "keys": [str(i) for i in range(len(chats))],
        "chats": chats,
        "labels": ["4", "321", "03/11/2026", "12"],
        "outputs": answers,
        "max_new_tokens": smoke_tokens,
    }
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "smoke.json").write_text(json.dumps(out.sample))
    out.uri = ModelRegistry(root, model).register(folder.as_uri(), version)
    return out


def save_generation(
    folder: Path,
    lm,
    tok,
    columns,
    max_length: int,
    base: dict[str, str],
    peft: dict | None = None,
    *,
    pipeline: str,
) -> None:
    """``lm`` (a transformers causal LM) and ``tok`` saved in ``folder`` as the trainer saves an
    instruction-tuned version of ``pipeline``: the weights (``CausalLMNet.save_pretrained``), the
    tokenizer, ``preprocessing.json`` (the chat columns) and ``lineage.json``, ready to register."""
    from freestack.ml.lm.causal import CausalLMNet
    from freestack.ml.lm.prompts import save_tokenizer

    net = CausalLMNet(lm, base=base, columns=columns, max_length=max_length, peft=peft)
    net.save_pretrained(folder)
    save_tokenizer(tok, folder)
    chat = {
        "prompt": columns.prompt,
        "response": columns.response,
        "messages": None,
        "system": columns.system,
    }
    pre = {
        "task": "generation",
        "features": [columns.input_column],
        "target": columns.response,
        "classes": [],
        "chat": {"columns": chat, "max_length": max_length, "packing": False},
    }
    (folder / "preprocessing.json").write_text(json.dumps(pre))
    (folder / "lineage.json").write_text(json.dumps({"pipeline": pipeline, "model": pipeline}))


__all__ = ["SMOKE_PROMPTS", "SYSTEM", "GenerationVersion", "make_generation_version", "save_generation"]
