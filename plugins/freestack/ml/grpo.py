"""Reinforcement on rewards (``train.objective: grpo``): group relative policy optimisation inside
freestack's loop, as TRL's ``GRPOTrainer`` defines it.

A lake row is a prompt (a ``prompt`` column, or a chat so far) with its reference answer and any other
columns the rewards read. :class:`GrpoEncoding` builds each prompt as the model reads it
(:func:`~freestack.ml.generation.prompt_ids`, the one place prompts are built and cut), left-padded,
with the row's place in its table of rows, so the rewards see every column of it.

A training step of :class:`GrpoNet`, on a batch of prompts:

1. **Rollouts.** ``num_generations`` completions per prompt, sampled by the policy as it is now (at
   ``temperature``/``top_p``, at most ``max_completion_length`` tokens, up to and with the end of turn):
   by ``model.generate`` on the left-padded batch (``rollouts: padded``), or by freestack's
   continuous-batching engine (:class:`freestack.ml.engine.Engine`, ``rollouts: continuous``), kept
   running for the training (:meth:`GrpoNet.close` stops it), or by a deployed server that loads the
   LoRA adapter as it is now each step (``rollouts: server``, :mod:`freestack.ml.rollouts`). transformers switches the model to a paged
   attention while its batching runs; the model's own is set back around each rollout, so the training
   forward never runs the paged kernel without its cache.
2. **Rewards and advantages.** Each completion is scored by every reward function
   (:mod:`freestack.ml.rewards`); its reward is their weighted sum, and its advantage is that reward less
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
clipped share, completion lengths) are kept: the loop numbers them (``TrainResult.steps``, checkpointed,
W&B's ``train_steps`` table, the version's ``steps.json``), and their epoch's means are ``train_*``.

Validation scores one greedy completion per prompt with the same rewards: ``reward`` (the weighted sum's
mean, the run's metric, higher is better), ``reward_<name>`` per function, ``completion_length``, and
``loss`` (minus the reward). The version is a plain text-generation version.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from freestack.ml.engine import PAGE_TOKENS, Engine
from freestack.ml.generation import (
    CausalLMNet,
    ChatEncoding,
    Encoded,
    GenerationSettings,
    prompt_ids,
)
from freestack.ml.rewards import RewardSet, Sample
from freestack.ml.rollouts import RolloutServer, right_padded

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


@dataclass
class Rollouts:
    """A batch's sampled completions: prompt and completion ids side by side, their masks, the rewards
    (per function and weighted) and the advantages."""

    ids: torch.Tensor
    mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_width: int
    rewards: torch.Tensor  # [completions, functions]
    total: torch.Tensor  # [completions]
    advantages: torch.Tensor


class GrpoNet(CausalLMNet):
    """A causal LM trained by GRPO: in training, its forward samples and scores the batch's completions and
    answers with their log-probabilities (:meth:`training_loss` is the clipped objective); it is validated
    by :meth:`grpo_metrics`. It saves as the causal LM it wraps."""

    def __init__(
        self,
        model,
        *,
        grpo: GrpoSettings,
        rewards: RewardSet,
        server: RolloutServer | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.grpo, self.rewards = grpo, rewards
        self.server = server  # rollouts: server: the deployment that samples from the adapter pushed to it
        self.encoding: GrpoEncoding | None = None
        self.eos: list[int] = []
        self.steps: list[dict[str, float]] = []
        # full weights with beta > 0: the starting model, outside the module tree
        self._frozen: list[Any] = []
        self._rollouts: list[Any] = []  # rollouts: continuous: the engine and its event loop
        self._tokens = 0  # the last step's prompts and completions: what it put through the model

    def attach(self, encoding: GrpoEncoding, eos: list[int]) -> None:
        """The prompts' encoding (its tokenizer and table of rows) and the tokens that end an answer; with
        full weights and ``beta`` > 0, a frozen copy of the model as it starts (the reference)."""
        self.encoding, self.eos = encoding, list(eos)
        if self.grpo.beta and self.peft is None and not self._frozen:
            reference = copy.deepcopy(self.model).eval()
            reference.requires_grad_(False)
            self._frozen.append(reference)

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, Any]:
        rollouts = self.rollout(x)
        self._tokens = int(rollouts.mask.sum())
        logps = completion_logps(
            self.model, rollouts.ids, rollouts.mask, rollouts.prompt_width, self.grpo.temperature
        )
        return {"logps": logps, "ref": self.reference_logps(rollouts), "rollouts": rollouts}

    def seen_tokens(self, _x: dict[str, torch.Tensor]) -> int:
        """The last step's tokens: its prompts, once per generation, and their sampled completions."""
        return self._tokens

    def training_loss(self, out: dict[str, Any], _target: torch.Tensor) -> torch.Tensor:
        r = out["rollouts"]
        loss, stats = grpo_loss(
            out["logps"], out["logps"].detach(), out["ref"], r.advantages, r.completion_mask, self.grpo
        )
        self.steps.append({**self.step_stats(r), **stats})
        return loss

    @torch.no_grad()
    def rollout(self, x: dict[str, torch.Tensor]) -> Rollouts:
        """The batch's completions, ``num_generations`` per prompt (one after another), scored."""
        g = self.grpo
        width = int(x["attention_mask"].sum(dim=1).max())
        prompt = x["input_ids"][:, -width:].repeat_interleave(g.num_generations, dim=0)
        pmask = x["attention_mask"][:, -width:].repeat_interleave(g.num_generations, dim=0)
        rows = x["row"].repeat_interleave(g.num_generations)
        sampling = {"do_sample": True, "temperature": g.temperature, "top_p": g.top_p, "top_k": 0}
        new, cmask, rewards, total = self.answered(prompt, pmask, rows, rollout=True, **sampling)
        return Rollouts(
            ids=torch.cat([prompt, new], dim=1),
            mask=torch.cat([pmask, cmask], dim=1),
            completion_mask=cmask,
            prompt_width=width,
            rewards=rewards,
            total=total,
            advantages=group_advantages(total, g.num_generations, g.scale_rewards),
        )

    def answered(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        rows: torch.Tensor,
        rollout: bool = False,
        **sampling: Any,
    ):
        """Completions of left-padded prompts (``rows``: their places in the table), scored: the new
        tokens, their mask up to and with the end of turn, each function's rewards ``[n, functions]`` and
        the weighted sum ``[n]``. A training step's rollouts (``rollout``) come from the engine with
        ``rollouts: continuous``; validation and test answers always from ``generate``, so the engine only
        runs inside the loop, which stops it."""
        if rollout and self.server is not None:
            new = self._served(ids, mask, sampling.get("temperature", 0.0), sampling.get("top_p", 1.0))
        elif rollout and self.continuous(ids.device):
            new = self._batched(ids, mask, sampling.get("temperature", 0.0), sampling.get("top_p", 1.0))
        else:
            new = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=self.grpo.max_completion_length,
                eos_token_id=self.eos,
                pad_token_id=self.encoding.tokenizer.pad_token_id,
                **sampling,
            )[:, ids.shape[1] :]
        cmask = _up_to_end(new, self.eos)
        scores = self.score(rows.tolist(), self._texts(new, cmask), cmask.sum(dim=1).tolist())
        rewards = torch.tensor(scores, dtype=torch.float32, device=ids.device)
        weights = torch.tensor([r.weight for r in self.rewards.rewards], device=ids.device)
        return new, cmask, rewards, (rewards * weights).sum(dim=1)

    def continuous(self, device: torch.device) -> bool:
        """Whether the rollouts come from the continuous-batching engine (``rollouts``; ``auto``: on an
        accelerator, as the score stage picks; on a CPU padded ``generate`` is the faster)."""
        mode = self.grpo.rollouts
        return mode == "continuous" or (mode == "auto" and device.type != "cpu")

    def _batched(self, ids: torch.Tensor, mask: torch.Tensor, temperature: float, top_p: float):
        """The new tokens of every prompt (left-padded ``ids``), generated together by the continuous-batching
        engine on the model as it is now, right-padded."""
        prompts = [(row[m.bool()].tolist(), False) for row, m in zip(ids, mask, strict=True)]
        settings = GenerationSettings(
            max_new_tokens=self.grpo.max_completion_length, temperature=temperature, top_p=top_p
        )
        engine, loop = self._engine(len(prompts), ids.shape[1])
        trained = self.model.config._attn_implementation
        if engine.attention is not None:
            self.model.set_attn_implementation(engine.attention)
        try:
            done = loop.run(engine.complete_all(prompts, settings))
        finally:
            self.model.set_attn_implementation(trained)  # the training forward's own attention
        width = max(1, *(len(d.token_ids) for d in done))
        new = torch.full((len(done), width), self.encoding.tokenizer.pad_token_id, dtype=ids.dtype)
        for row, d in zip(new, done, strict=True):
            row[: len(d.token_ids)] = torch.tensor(d.token_ids, dtype=ids.dtype)
        return new.to(ids.device)

    def _served(
        self, ids: torch.Tensor, mask: torch.Tensor, temperature: float, top_p: float
    ) -> torch.Tensor:
        """The new tokens of every prompt (left-padded ``ids``, each repeated ``num_generations`` times in a
        row), sampled by the rollout server from the adapter as it is now, right-padded."""
        g = self.grpo.num_generations
        prompts = [row[m.bool()].tolist() for row, m in zip(ids[::g], mask[::g], strict=True)]
        done = self.server.sample(
            self.model,
            prompts,
            g,
            max_tokens=self.grpo.max_completion_length,
            temperature=temperature,
            top_p=top_p,
        )
        return right_padded(done, self.encoding.tokenizer.pad_token_id, ids)

    def _engine(self, prompts: int, width: int) -> tuple[Engine, asyncio.Runner]:
        """The rollouts' engine, started at the first rollout and kept until :meth:`close` (its KV cache
        holds the largest rollout's answers at once; a larger one starts it again)."""
        need = prompts * -(-(width + self.grpo.max_completion_length) // PAGE_TOKENS)
        if self._rollouts and self._rollouts[0].pages < need:
            self.close()
        if not self._rollouts:
            trained = self.model.config._attn_implementation
            engine = Engine(
                self.model,
                self.encoding.tokenizer,
                eos=self.eos,
                max_requests=prompts,
                kv_cache_tokens=need * PAGE_TOKENS,
                max_batch_tokens=max(1024, prompts),
                top_k=0,  # as the padded rollouts sample: the whole distribution at the temperature
            )
            engine.start()  # transformers may switch the model to an attention its batching runs
            now = self.model.config._attn_implementation
            engine.attention = now if now != trained else None
            self.model.set_attn_implementation(trained)  # until a rollout runs
            self._rollouts[:] = [engine, asyncio.Runner()]
        return self._rollouts[0], self._rollouts[1]

    def close(self) -> None:
        """Stop the rollouts' engine, if one runs, and unload the adapter pushed to the rollout server (the
        loop calls this when the run ends)."""
        if self.server is not None:
            self.server.close()
        if self._rollouts:
            engine, loop = self._rollouts
            self._rollouts.clear()
            trained = self.model.config._attn_implementation
            engine.stop()
            loop.close()
            self.model.set_attn_implementation(trained)

    def score(self, rows: list[int], texts: list[str], tokens: list[int]) -> list[list[float]]:
        """Each completion's reward by each function (``rows``: their prompts' places in the table)."""
        table = self.encoding.table
        samples = [
            Sample(table[r][0], text, int(n), table[r][1])
            for r, text, n in zip(rows, texts, tokens, strict=True)
        ]
        return self.rewards.score(samples)

    def _texts(self, new: torch.Tensor, cmask: torch.Tensor) -> list[str]:
        tok = self.encoding.tokenizer
        return [
            tok.decode(row[: int(n)].tolist(), skip_special_tokens=True).strip()
            for row, n in zip(new, cmask.sum(dim=1), strict=True)
        ]

    @torch.no_grad()
    def reference_logps(self, r: Rollouts) -> torch.Tensor | None:
        """The starting model's log-probabilities of the completions (``beta`` > 0 only)."""
        if not self.grpo.beta:
            return None
        if self._frozen:
            return completion_logps(self._frozen[0], r.ids, r.mask, r.prompt_width, self.grpo.temperature)
        with self.model.disable_adapter():
            return completion_logps(self.model, r.ids, r.mask, r.prompt_width, self.grpo.temperature)

    def step_stats(self, r: Rollouts) -> dict[str, float]:
        """What one step's rollouts scored: the reward's mean and standard deviation, each function's
        mean, the completions' mean length and the share of groups whose rewards were all equal."""
        grouped = r.total.view(-1, self.grpo.num_generations)
        stats = {
            "reward": float(r.total.mean()),
            "reward_std": float(grouped.std(dim=1).mean()),
            "completion_length": float(r.completion_mask.sum(dim=1).float().mean()),
            "frac_reward_zero_std": float((grouped.std(dim=1) == 0).float().mean()),
        }
        for name, column in zip(self.rewards.names, r.rewards.T, strict=True):
            stats[f"reward_{name}"] = float(column.mean())
        return stats

    def take_steps(self) -> list[dict[str, float]]:
        """Each step's figures since the last call (the loop numbers them and averages an epoch's)."""
        steps, self.steps = self.steps, []
        return steps

    @torch.no_grad()
    def grpo_metrics(self, source, device: torch.device, amp_dtype=None, batch: int = 32) -> dict[str, float]:
        """One greedy completion per prompt of a split, scored by the rewards (the means)."""
        self.eval()
        sums: dict[str, float] = {}
        n = 0
        for xb, _ in source.ordered(batch, device):
            width = int(xb["attention_mask"].sum(dim=1).max())
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                _, cmask, rewards, total = self.answered(
                    xb["input_ids"][:, -width:], xb["attention_mask"][:, -width:], xb["row"], do_sample=False
                )
            values = {"reward": total, "completion_length": cmask.sum(dim=1)}
            values.update({f"reward_{name}": rewards[:, k] for k, name in enumerate(self.rewards.names)})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.float().sum())
            n += len(total)
        means = {k: v / max(n, 1) for k, v in sums.items()}
        return {"loss": -means.get("reward", 0.0), **means}


def _up_to_end(new: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """``[rows, tokens]``: 1 on each completion's tokens up to and with its first end token, 0 after."""
    is_end = torch.isin(new, torch.tensor(eos, dtype=new.dtype, device=new.device))
    first = torch.where(
        is_end.any(dim=1), is_end.int().argmax(dim=1), torch.full_like(new[:, 0], new.shape[1])
    )
    steps = torch.arange(new.shape[1], device=new.device).expand_as(new)
    return (steps <= first.unsqueeze(1)).to(torch.long)


__all__ = [
    "TASK",
    "GrpoEncoding",
    "GrpoNet",
    "GrpoSettings",
    "Rollouts",
    "completion_logps",
    "group_advantages",
    "grpo_loss",
]
