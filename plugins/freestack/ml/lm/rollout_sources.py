"""GRPO's rollouts as the loop's batch source (TRL's shape: the trainer prepares the rollouts, the model
computes log-probabilities): :class:`RolloutSource` wraps a training split of prompts and gives the loop,
for each batch of them, ``num_generations`` completions a prompt sampled by the policy as it is now, scored
by the reward functions, with their advantages: :class:`~freestack.ml.lm.grpo.GrpoNet`'s inputs.
:class:`RewardedSplit` wraps a validation or test split: it scores one greedy answer a prompt.

The completions come from one of three samplers, each holding what it needs for the run: ``model.generate``
on the left-padded batch (:class:`PaddedSampler`, ``rollouts: padded``), freestack's continuous-batching
engine (:class:`EngineSampler`, ``rollouts: continuous``; ``auto``: on an accelerator), started at the first
rollout and kept until the source is closed, or a deployed server that loads the LoRA adapter as it is now
each step (:class:`ServerSampler`, ``rollouts: server``, :mod:`freestack.ml.lm.rollouts`). transformers
switches the model to a paged attention while its batching runs; the model's own is set back around each
rollout, so the training forward never runs the paged kernel without its cache. The loop closes the
training source when the run ends (the engine stopped, the server's last adapter unloaded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.engine import PAGE_TOKENS, Engine
from freestack.ml.lm.grpo import GrpoEncoding, GrpoNet, GrpoSettings, group_advantages
from freestack.ml.lm.rewards import RewardSet, Sample
from freestack.ml.lm.rollouts import RolloutServer, right_padded
from freestack.ml.stream import BatchSource


class Sampler(Protocol):
    """Completions of left-padded prompts (each repeated ``num_generations`` times in a row, at training),
    right-padded: ``[rows, new tokens]``."""

    def sample(
        self, ids: torch.Tensor, mask: torch.Tensor, temperature: float, top_p: float
    ) -> torch.Tensor: ...

    def close(self) -> None: ...


@dataclass
class PaddedSampler:
    """``model.generate`` on the left-padded batch: sampled at ``temperature``/``top_p`` (the whole
    distribution, ``top_k`` 0), or greedy at temperature 0."""

    model: Any  #: the transformers model being trained
    max_new_tokens: int
    eos: list[int]
    pad: int

    def sample(self, ids: torch.Tensor, mask: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            if temperature > 0
            else {"do_sample": False}
        )
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            **sampling,
        )
        return out[:, ids.shape[1] :]

    def close(self) -> None:
        pass


@dataclass
class EngineSampler:
    """The continuous-batching engine on the model as it is now, started at the first rollout and kept
    until :meth:`close` (its KV cache holds the largest rollout's answers at once; a larger one starts it
    again)."""

    model: Any
    tokenizer: Any
    max_new_tokens: int
    eos: list[int]
    running: list[Any] = field(default_factory=list)  # the engine and its event loop, while one runs

    def sample(self, ids: torch.Tensor, mask: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
        prompts = [(row[m.bool()].tolist(), False) for row, m in zip(ids, mask, strict=True)]
        settings = GenerationSettings(
            max_new_tokens=self.max_new_tokens, temperature=temperature, top_p=top_p
        )
        engine, loop = self.engine(len(prompts), ids.shape[1])
        trained = self.model.config._attn_implementation
        if engine.attention is not None:
            self.model.set_attn_implementation(engine.attention)
        try:
            done = loop.run(engine.complete_all(prompts, settings))
        finally:
            self.model.set_attn_implementation(trained)  # the training forward's own attention
        width = max(1, *(len(d.token_ids) for d in done))
        new = torch.full((len(done), width), self.tokenizer.pad_token_id, dtype=ids.dtype)
        for row, d in zip(new, done, strict=True):
            row[: len(d.token_ids)] = torch.tensor(d.token_ids, dtype=ids.dtype)
        return new.to(ids.device)

    def engine(self, prompts: int, width: int) -> tuple[Engine, asyncio.Runner]:
        need = prompts * -(-(width + self.max_new_tokens) // PAGE_TOKENS)
        if self.running and self.running[0].pages < need:
            self.close()
        if not self.running:
            trained = self.model.config._attn_implementation
            engine = Engine(
                self.model,
                self.tokenizer,
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
            self.running[:] = [engine, asyncio.Runner()]
        return self.running[0], self.running[1]

    def close(self) -> None:
        if self.running:
            engine, loop = self.running
            self.running.clear()
            trained = self.model.config._attn_implementation
            engine.stop()
            loop.close()
            self.model.set_attn_implementation(trained)


@dataclass
class ServerSampler:
    """The rollout server, sampling from the adapter as it is now (pushed to it each step): one request a
    prompt, its group as ``n``."""

    server: RolloutServer
    model: Any
    group: int
    max_new_tokens: int
    pad: int

    def sample(self, ids: torch.Tensor, mask: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
        g = self.group
        prompts = [row[m.bool()].tolist() for row, m in zip(ids[::g], mask[::g], strict=True)]
        done = self.server.sample(
            self.model, prompts, g, max_tokens=self.max_new_tokens, temperature=temperature, top_p=top_p
        )
        return right_padded(done, self.pad, ids)

    def close(self) -> None:
        self.server.close()


@dataclass
class Scorer:
    """Completions scored by the reward functions, each with its prompt's row of the table."""

    encoding: GrpoEncoding
    rewards: RewardSet
    eos: list[int]

    def __call__(
        self, new: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The completions' mask (up to and with the end of turn), each function's rewards
        ``[n, functions]`` and their weighted sum ``[n]``."""
        cmask = up_to_end(new, self.eos)
        tok, table, lengths = self.encoding.tokenizer, self.encoding.table, cmask.sum(dim=1).tolist()
        samples = [
            Sample(
                table[r][0], tok.decode(row[:n].tolist(), skip_special_tokens=True).strip(), n, table[r][1]
            )
            for r, row, n in zip(rows.tolist(), new, lengths, strict=True)
        ]
        rewards = torch.tensor(self.rewards.score(samples), dtype=torch.float32, device=new.device)
        weights = torch.tensor([r.weight for r in self.rewards.rewards], device=new.device)
        return cmask, rewards, (rewards * weights).sum(dim=1)


class RolloutSource:
    """A GRPO training split as the loop reads it: each batch of prompts (``inner``'s), sampled
    ``num_generations`` times a prompt and scored; the batch the loop gets is the rollouts (``ids``,
    ``mask``, ``completion_mask``, ``rewards``, ``total``, ``advantages``) and the prompts' targets."""

    def __init__(self, inner: BatchSource, grpo: GrpoSettings, scorer: Scorer, samplers: dict[str, Sampler]):
        self.inner, self.grpo, self.scorer, self.samplers = inner, grpo, scorer, samplers

    @property
    def n(self) -> int:
        return self.inner.n

    def epoch(self, epoch: int, batch_size: int, seed: int, device: torch.device) -> Iterator:
        for xb, yb in self.inner.epoch(epoch, batch_size, seed, device):
            yield self.rollout(xb), yb

    def ordered(self, batch_size: int, device: torch.device) -> Iterator:
        for xb, yb in self.inner.ordered(batch_size, device):
            yield self.rollout(xb), yb

    def sampler(self, device: torch.device) -> Sampler:
        """The server when the run has one; the engine with ``rollouts: continuous`` (``auto``: on an
        accelerator, as the score stage picks; on a CPU padded ``generate`` is the faster); else padded."""
        mode = self.grpo.rollouts
        if "server" in self.samplers:
            return self.samplers["server"]
        continuous = mode == "continuous" or (mode == "auto" and device.type != "cpu")
        return self.samplers["continuous" if continuous else "padded"]

    @torch.no_grad()
    def rollout(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's completions, ``num_generations`` per prompt (one after another), scored."""
        g = self.grpo
        width = int(x["attention_mask"].sum(dim=1).max())
        prompt = x["input_ids"][:, -width:].repeat_interleave(g.num_generations, dim=0)
        pmask = x["attention_mask"][:, -width:].repeat_interleave(g.num_generations, dim=0)
        rows = x["row"].repeat_interleave(g.num_generations)
        new = self.sampler(prompt.device).sample(prompt, pmask, g.temperature, g.top_p)
        cmask, rewards, total = self.scorer(new, rows)
        return {
            "ids": torch.cat([prompt, new], dim=1),
            "mask": torch.cat([pmask, cmask], dim=1),
            "completion_mask": cmask,
            "rewards": rewards,
            "total": total,
            "advantages": group_advantages(total, g.num_generations, g.scale_rewards),
        }

    def close(self) -> None:
        """Stop the engine, if one runs, and unload the adapter pushed to the rollout server."""
        for sampler in self.samplers.values():
            sampler.close()


class RewardedSplit:
    """A GRPO run's validation or test split: it scores the model itself (the loop asks it, ``scores``),
    one greedy completion a prompt by ``generate``, with the rewards; its metrics are their means:
    ``reward`` (the weighted sum, the run's metric), ``reward_<name>``, ``completion_length``, and ``loss``
    (minus the reward)."""

    def __init__(self, inner: BatchSource, scorer: Scorer, sampler: PaddedSampler):
        self.inner, self.scorer, self.sampler = inner, scorer, sampler

    @property
    def n(self) -> int:
        return self.inner.n

    def epoch(self, epoch: int, batch_size: int, seed: int, device: torch.device) -> Iterator:
        return self.inner.epoch(epoch, batch_size, seed, device)

    def ordered(self, batch_size: int, device: torch.device) -> Iterator:
        return self.inner.ordered(batch_size, device)

    @torch.no_grad()
    def scores(
        self, model: GrpoNet, device: torch.device, amp_dtype=None, batch: int = 32
    ) -> dict[str, float]:
        model.eval()
        sums: dict[str, float] = {}
        n = 0
        for xb, _ in self.inner.ordered(batch, device):
            width = int(xb["attention_mask"].sum(dim=1).max())
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                new = self.sampler.sample(
                    xb["input_ids"][:, -width:], xb["attention_mask"][:, -width:], 0.0, 1.0
                )
                cmask, rewards, total = self.scorer(new, xb["row"])
            values = {"reward": total, "completion_length": cmask.sum(dim=1)}
            values.update(
                {f"reward_{name}": rewards[:, k] for k, name in enumerate(self.scorer.rewards.names)}
            )
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v.float().sum())
            n += len(total)
        means = {k: v / max(n, 1) for k, v in sums.items()}
        return {"loss": -means.get("reward", 0.0), **means}


def grpo_splits(
    net: GrpoNet,
    splits: dict[str, BatchSource],
    encoding: GrpoEncoding,
    rewards: RewardSet,
    eos: list[int],
    server: RolloutServer | None = None,
) -> dict[str, BatchSource]:
    """A GRPO run's splits as the loop reads them: ``train`` sampled by ``net`` as it is now (by
    ``generate``, the engine, or ``server``, as ``net.grpo.rollouts`` says), the others scoring greedy
    answers; ``eos``: the tokens that end an answer."""
    g, pad = net.grpo, encoding.tokenizer.pad_token_id
    scorer = Scorer(encoding, rewards, list(eos))
    padded = PaddedSampler(net.model, g.max_completion_length, list(eos), pad)
    samplers: dict[str, Sampler] = {"padded": padded}
    if server is not None:
        samplers["server"] = ServerSampler(server, net.model, g.num_generations, g.max_completion_length, pad)
    else:
        samplers["continuous"] = EngineSampler(
            net.model, encoding.tokenizer, g.max_completion_length, list(eos)
        )
    out: dict[str, BatchSource] = {
        name: RewardedSplit(split, scorer, padded) for name, split in splits.items() if name != "train"
    }
    if "train" in splits:
        out["train"] = RolloutSource(splits["train"], g, scorer, samplers)
    return out


def up_to_end(new: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """``[rows, tokens]``: 1 on each completion's tokens up to and with its first end token, 0 after."""
    is_end = torch.isin(new, torch.tensor(eos, dtype=new.dtype, device=new.device))
    first = torch.where(
        is_end.any(dim=1), is_end.int().argmax(dim=1), torch.full_like(new[:, 0], new.shape[1])
    )
    steps = torch.arange(new.shape[1], device=new.device).expand_as(new)
    return (steps <= first.unsqueeze(1)).to(torch.long)


__all__ = [
    "EngineSampler",
    "PaddedSampler",
    "RewardedSplit",
    "RolloutSource",
    "Scorer",
    "ServerSampler",
    "grpo_splits",
    "up_to_end",
]
