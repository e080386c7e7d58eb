"""Reinforcement on rewards (``train.objective: grpo``): group relative policy optimisation inside
freestack's loop, as TRL's ``GRPOTrainer`` defines it.

A lake row is a prompt (a ``prompt`` column, or a chat so far) with its reference answer and any other
columns the rewards read. :class:`GrpoEncoding` builds each prompt as the model reads it
(:func:`~freestack.ml.lm.prompts.prompt_ids`, the one place prompts are built and cut), left-padded,
with the row's place in its table of rows, so the rewards see every column of it.

A training step, on a batch of prompts:

1. **Rollouts**, by the training split (:class:`~freestack.ml.lm.rollout_sources.RolloutSource`, the loop's
   batch source: the model only computes log-probabilities). ``num_generations`` completions per prompt,
   sampled by the policy as it is now (at ``temperature``/``top_p``, at most ``max_completion_length``
   tokens, up to and with the end of turn): by ``model.generate`` on the left-padded batch
   (``rollouts: padded``), by freestack's continuous-batching engine (``rollouts: continuous``), or by a
   deployed server that loads the LoRA adapter as it is now each step (``rollouts: server``,
   :mod:`freestack.ml.lm.rollouts`).
2. **Rewards and advantages.** Each completion is scored by every reward function
   (:mod:`freestack.ml.lm.rewards`); its reward is their weighted sum, and its advantage is that reward less
   its group's mean, divided by the group's standard deviation (``scale_rewards: group``; ``batch``: the
   batch's; ``none``: not divided).
3. **The clipped objective.** The policy's per-token log-probabilities of the completions (logits divided
   by the temperature, as sampled) against those it sampled with, ``ratio = exp(logp - logp_old)``,
   ``loss_t = -min(ratio x A, clip(ratio, 1 - epsilon, 1 + epsilon) x A) + beta x KL_t``, with the k3
   estimator ``KL_t = exp(ref - logp) - (ref - logp) - 1`` against the starting model. One optimiser
   step per batch of rollouts (TRL's ``num_iterations: 1``), so ``logp_old`` is ``logp`` detached.
   The token losses are averaged as TRL's ``loss_type`` says: ``grpo`` per completion then over them,
   ``bnpo``/``dapo`` over the batch's completion tokens, ``dr_grpo`` over completions x
   ``max_completion_length``.

The reference's log-probabilities (``beta`` > 0) come from the same model with its LoRA adapters
disabled (no second copy); with full weights, from a frozen copy of the starting model, as TRL keeps
one. Each step's statistics (each reward's mean, the reward's mean and standard deviation, the KL, the
clipped share, completion lengths) come with its loss: the loop keeps and numbers them (``TrainResult.steps``, checkpointed,
W&B's ``train_steps`` table, the version's ``steps.json``), and their epoch's means are ``train_*``.

Validation scores one greedy completion per prompt with the same rewards: ``reward`` (the weighted sum's
mean, the run's metric, higher is better), ``reward_<name>`` per function, ``completion_length``, and
``loss`` (minus the reward). The version is a plain text-generation version.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.causal import CausalLMNet
from freestack.ml.lm.prompts import ChatEncoding, Encoded, prompt_ids

#: the loop's task of a GRPO-trained model (its metric: ``reward``, higher is better)
TASK = "grpo"


@dataclass(frozen=True)
class GrpoSettings:
    """``train.grpo``'s settings (TRL's names)."""

    num_generations: int = 4
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0
    epsilon: float = 0.2
    loss: str = "dapo"
    scale_rewards: str = "group"
    rollouts: str = "auto"  # padded: model.generate; continuous: the engine; auto: padded on a CPU; server


def group_advantages(rewards: torch.Tensor, group: int, scale: str = "group") -> torch.Tensor:
    """Each completion's reward less its group's mean (the ``group`` completions of one prompt, in a row),
    divided by the group's standard deviation (``batch``: the whole batch's; ``none``: not divided)."""
    grouped = rewards.view(-1, group)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "none":
        return advantages
    std = (
        grouped.std(dim=1).repeat_interleave(group) if scale == "group" else rewards.std().expand_as(rewards)
    )
    return advantages / (std + 1e-4)


def completion_logps(
    model, ids: torch.Tensor, mask: torch.Tensor, prompt_width: int, temperature: float
) -> torch.Tensor:
    """Each completion token's log-probability ``[rows, completion tokens]`` under ``model``: prompts
    left-padded to ``prompt_width``, the completions after them; positions counted from each row's first
    token (as ``generate`` counts them), logits divided by the sampling temperature."""
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    tokens = ids[:, prompt_width:]
    # the logits of the completion's positions only (transformers' logits_to_keep): a prompt's would
    # take rows x prompt tokens x vocabulary of memory for nothing
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=False,
        logits_to_keep=tokens.shape[1] + 1,
    ).logits
    logits = logits[:, :-1, :].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    settings: GrpoSettings,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped objective with its KL term (see the module's docstring), and the step's KL and clipped
    shares. ``logps``/``old_logps``/``ref_logps``/``mask``: ``[completions, tokens]``."""
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - settings.epsilon, 1 + settings.epsilon)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = torch.zeros_like(logps)
    if ref_logps is not None and settings.beta:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + settings.beta * kl
    tokens = mask.sum().clamp(min=1.0)
    if settings.loss == "grpo":
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).mean()
    elif settings.loss == "dr_grpo":
        loss = (per_token * mask).sum() / (logps.shape[0] * settings.max_completion_length)
    else:  # bnpo, dapo: over the batch's completion tokens
        loss = (per_token * mask).sum() / tokens
    low = ((ratio < 1 - settings.epsilon) & (adv < 0)).to(mask.dtype)
    high = ((ratio > 1 + settings.epsilon) & (adv > 0)).to(mask.dtype)
    stats = {
        "kl": float((kl.detach() * mask).sum() / tokens),
        "clip_ratio": float(((low + high) * mask).sum() / tokens),
    }
    return loss, stats


@dataclass
class GrpoEncoding(ChatEncoding):
    """The prompts of a GRPO training: each row's chat up to its answer (the reference, which the rewards
    and the evaluation compare with), rendered with the generation prompt and left-padded; ``x["row"]``
    is the row's place in ``table`` (its prompt's text and every column of it, for the rewards). It saves as the chat encoding,
    which is what evaluation and serving read."""

    table: list[tuple[str, dict[str, Any]]] = field(default_factory=list, repr=False)

    def encode_rows(self, rows: Iterable[dict[str, Any]], *, packing: bool | None = None) -> Encoded:
        rows = list(rows)
        chats = [self.columns.prompt_of(row, i) for i, row in enumerate(rows)]
        settings = GenerationSettings(max_prompt_tokens=self.max_length, truncate="left")
        prompts = prompt_ids(self.tokenizer, chats, settings, self.columns.tools)
        width = max((len(ids) for ids, _ in prompts), default=1)
        ids = np.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(prompts), width), dtype=np.int64)
        for r, (p, _) in enumerate(prompts):
            ids[r, width - len(p) :], mask[r, width - len(p) :] = p, 1
        start = len(self.table)
        self.table.extend((chat[-1]["content"], row) for row, chat in zip(rows, chats, strict=True))
        place = np.arange(start, start + len(rows), dtype=np.int64)
        out = Encoded(
            {"input_ids": ids, "attention_mask": mask, "row": place}, np.zeros(len(rows), np.float32)
        )
        out.conversations, out.cut = len(rows), sum(cut for _, cut in prompts)
        return out

    def encode_frame(self, df) -> Encoded:
        key = id(df)
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, self.encode_rows(df.to_dict("records")))
        return self._memo[1]


class GrpoNet(CausalLMNet):
    """A causal LM trained by GRPO: its forward takes a batch of rollouts (sampled and scored by the
    training split, :class:`~freestack.ml.lm.rollout_sources.RolloutSource`) and answers with the
    completions' log-probabilities, and the reference's; :meth:`training_loss` is the clipped objective,
    with the step's figures. It holds no sampler, client or log: it saves as the causal LM it wraps."""

    def __init__(
        self, model, *, grpo: GrpoSettings, reward_names: tuple[str, ...] = (), **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.grpo, self.reward_names = grpo, tuple(reward_names)
        # full weights with beta > 0: the starting model (the reference), outside the module tree
        self._frozen: list[Any] = []
        if grpo.beta and self.peft is None:
            reference = copy.deepcopy(model).eval()
            reference.requires_grad_(False)
            self._frozen.append(reference)

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, Any]:
        width = x["ids"].shape[1] - x["completion_mask"].shape[1]
        logps = completion_logps(self.model, x["ids"], x["mask"], width, self.grpo.temperature)
        return {"logps": logps, "ref": self.reference_logps(x, width), "rollouts": x}

    def seen_tokens(self, x: dict[str, torch.Tensor]) -> int:
        """A step's tokens: its prompts, once per generation, and their sampled completions."""
        return int(x["mask"].sum())

    def training_loss(
        self, out: dict[str, Any], _target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped objective, and the step's figures (the loop keeps them: ``TrainResult.steps``)."""
        r = out["rollouts"]
        loss, stats = grpo_loss(
            out["logps"], out["logps"].detach(), out["ref"], r["advantages"], r["completion_mask"], self.grpo
        )
        return loss, {**self.step_stats(r), **stats}

    @torch.no_grad()
    def reference_logps(self, x: dict[str, torch.Tensor], width: int) -> torch.Tensor | None:
        """The starting model's log-probabilities of the completions (``beta`` > 0 only)."""
        if not self.grpo.beta:
            return None
        if self._frozen:
            return completion_logps(self._frozen[0], x["ids"], x["mask"], width, self.grpo.temperature)
        with self.model.disable_adapter():
            return completion_logps(self.model, x["ids"], x["mask"], width, self.grpo.temperature)

    def step_stats(self, r: dict[str, torch.Tensor]) -> dict[str, float]:
        """What one step's rollouts scored: the reward's mean and standard deviation, each function's
        mean, the completions' mean length and the share of groups whose rewards were all equal."""
        grouped = r["total"].view(-1, self.grpo.num_generations)
        stats = {
            "reward": float(r["total"].mean()),
            "reward_std": float(grouped.std(dim=1).mean()),
            "completion_length": float(r["completion_mask"].sum(dim=1).float().mean()),
            "frac_reward_zero_std": float((grouped.std(dim=1) == 0).float().mean()),
        }
        for name, column in zip(self.reward_names, r["rewards"].T, strict=True):
            stats[f"reward_{name}"] = float(column.mean())
        return stats


__all__ = [
    "TASK",
    "GrpoEncoding",
    "GrpoNet",
    "GrpoSettings",
    "completion_logps",
    "group_advantages",
    "grpo_loss",
]
