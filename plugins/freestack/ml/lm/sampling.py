"""Batched generation with ``model.generate``: prompts left-padded, greedy or sampled, the new tokens
decoded and cut at a stop string, OpenAI's ``logprobs`` kept by a logits processor (:class:`Logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from freestack.ml.lm.answers import Completion, GenerationSettings, TokenLogprob
from freestack.ml.lm.causal import token_rows
from freestack.ml.lm.prompts import eos_ids, prompt_ids


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    chats: Sequence[list[dict[str, str]]],
    settings: GenerationSettings,
    generation_config: dict[str, Any] | None = None,
    tools: list | None = None,
) -> list[Completion]:
    """Answers to ``chats`` in one batch: prompts left-padded, ``model.generate`` (greedy, or sampled with
    ``temperature``/``top_p``), the new tokens decoded without special tokens and cut at a stop string;
    ``tools``: the functions the chats may call (the version's, ``ChatColumns.tools``)."""
    if not chats:
        return []
    prompts = prompt_ids(tokenizer, chats, settings, tools, token_rows(model))
    return generate_ids(model, tokenizer, prompts, settings, eos_ids(tokenizer, generation_config))


class Logprobs:
    """A logits processor that keeps what OpenAI's ``logprobs`` report: at each step, each row's
    log-probability (the log-softmax of the model's logits, before sampling settings) of the token chosen,
    and of its ``top`` most likely tokens. Put first, it sees the model's own distribution."""

    def __init__(self, top: int):
        self.top, self.chosen, self.tops, self.last = top, [], [], None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.last is not None:  # the token each row chose at the last step
            self.chosen.append(
                self.last.gather(1, input_ids[:, -1:].to(self.last.device)).squeeze(1).tolist()
            )
        self.last = torch.log_softmax(scores.float(), dim=-1)
        if self.top:
            values, ids = self.last.topk(self.top, dim=-1)
            self.tops.append((ids.tolist(), values.tolist()))
        return scores

    def at(self, row: int, step: int, token: int) -> TokenLogprob:
        """The token ``row`` chose at ``step``."""
        lp = self.chosen[step][row] if step < len(self.chosen) else float(self.last[row, token])
        top = tuple(zip(*(t[row] for t in self.tops[step]), strict=True)) if self.top else ()
        return TokenLogprob(token, lp, top)


def generate_ids(
    model,
    tokenizer,
    prompts: Sequence[tuple[list[int], bool]],
    settings: GenerationSettings,
    eos: list[int],
    logprobs: Logprobs | None = None,
    *,
    strip: bool = True,
    **extra: Any,
) -> list[Completion]:
    """:func:`generate` of prompts already tokenized (token ids, and whether they were cut from the left);
    ``logprobs``: the answers' log-probabilities are kept there and given with each answer; ``strip``:
    each answer's text without its surrounding whitespace (false: as the tokens read, as the engine's batch
    answers, so a continued text keeps its leading space); ``extra``: more of ``model.generate``'s
    arguments (a logits processor, a streamer). Each answer carries its token ids (its end of turn
    included)."""
    if logprobs is not None:
        extra["logits_processor"] = [logprobs, *extra.get("logits_processor", [])]
    width = max(len(ids) for ids, _ in prompts)
    pad = tokenizer.pad_token_id
    device = next(model.parameters()).device
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, (p, _) in enumerate(prompts):
        ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1
    sample = settings.temperature > 0
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    kw: dict[str, Any] = {
        "do_sample": sample,
        "max_new_tokens": settings.max_new_tokens,
        "eos_token_id": eos,
        "pad_token_id": pad,
    }
    kw.update(
        {"temperature": settings.temperature, "top_p": settings.top_p}
        if sample
        else {"temperature": None, "top_p": None, "top_k": None}
    )
    if settings.stop:
        kw.update(stop_strings=list(settings.stop), tokenizer=tokenizer)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw, **extra)
    out = out[:, width:].cpu()
    answers = [
        _completion(tokenizer, row.tolist(), eos, pad, len(p), cut, settings, strip)
        for row, (p, cut) in zip(out, prompts, strict=True)
    ]
    for r, answer in enumerate(answers):
        answer.token_ids = out[r, : answer.completion_tokens].tolist()
        if logprobs is not None:
            answer.logprobs = [logprobs.at(r, step, t) for step, t in enumerate(answer.token_ids)]
    return answers


def _completion(
    tokenizer,
    new: list[int],
    eos: list[int],
    pad: int,
    prompt_tokens: int,
    cut: bool,
    settings: GenerationSettings,
    strip: bool = True,
) -> Completion:
    end = next((i for i, t in enumerate(new) if t in eos), None)
    tokens = new[:end] if end is not None else [t for t in new if t != pad] if pad not in eos else new
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    reason = "stop" if end is not None else "length"
    for s in settings.stop:
        if s and s in text:
            text, reason = text[: text.index(s)], "stop"
    # its end-of-turn token counts, as generate and OpenAI's usage count it
    return Completion(
        text.strip() if strip else text, prompt_tokens, len(tokens) + (end is not None), reason, cut
    )


__all__ = [
    "Logprobs",
    "generate",
    "generate_ids",
]
