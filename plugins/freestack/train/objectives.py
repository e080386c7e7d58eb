"""What a language model's training optimises, assembled from the spec (``train.objective``): SFT on
conversations, DPO on preference pairs, GRPO on rewards. Each is an :class:`Objective`: the model the loop
trains, and what it makes of the splits before the loop reads them (DPO: the starting model's
log-probabilities of every pair, once; GRPO: the training split sampled by the policy each step, the others
scoring greedy answers, :mod:`freestack.ml.lm.rollout_sources`). The clients an objective calls (the judge,
the rollout server) live in its splits, built with the task's :class:`~freestack.keys.Keys`; never on the
model. The checks of the objective's settings, before any data is read, and its lineage are here too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from freestack.errors import FreestackError
from freestack.judging import client as judging
from freestack.keys import NO_KEYS, Keys
from freestack.ml.lm.causal import CausalLMNet, add_causal_lora, fit_vocabulary, load_causal_lm
from freestack.ml.lm.grpo import GrpoEncoding, GrpoNet, GrpoSettings
from freestack.ml.lm.preference import PreferenceEncoding, PreferenceNet, score_reference
from freestack.ml.lm.prompts import ChatEncoding, eos_ids
from freestack.ml.lm.rewards import (
    Reward,
    RewardSet,
    call_user,
    exact_match,
    json_schema,
    length,
    regex,
    user_function,
)
from freestack.ml.lm.rollout_sources import grpo_splits
from freestack.ml.lm.rollouts import RolloutServer
from freestack.settings import checkout_dir
from freestack.spec import PipelineSpec
from freestack.train.pretrained import chat_encoding_columns, chat_tokenizer, peft_settings, pretrained_base

log = logging.getLogger(__name__)


@dataclass
class Objective:
    """SFT (and every model that is not a language model): the model, and the splits as they are."""

    model: Any

    def splits(self, sources: dict[str, Any], device) -> dict[str, Any]:
        """The splits the loop reads (``train``, ``val`` and, on rank 0, ``test``)."""
        return sources


@dataclass
class PreferenceObjective(Objective):
    """DPO: every pair's log-probabilities under the starting model (the reference), once, before the loop."""

    def splits(self, sources: dict[str, Any], device) -> dict[str, Any]:
        for source in sources.values():
            score_reference(self.model, source, device)
        return sources


@dataclass
class GrpoObjective(Objective):
    """GRPO: the training split's batches are rollouts, sampled and scored with the rewards (and the
    rollout server, when the spec names one); the other splits score greedy answers."""

    encoding: GrpoEncoding
    rewards: RewardSet
    server: RolloutServer | None = None

    def splits(self, sources: dict[str, Any], device) -> dict[str, Any]:
        eos = eos_ids(self.encoding.tokenizer, self.model.model.generation_config.to_dict())
        return grpo_splits(self.model, sources, self.encoding, self.rewards, eos, self.server)


def build_objective(spec: PipelineSpec, pre, keys: Keys = NO_KEYS) -> Objective:
    """A language model's objective: its causal LM built here for ``pre``'s conversations, and ``keys``
    for the endpoints the objective calls (the judge's, the rollout server's)."""
    net = build_causal_model(spec, pre)
    if preference_tuned(spec):
        return PreferenceObjective(net)
    if reward_tuned(spec):
        return GrpoObjective(net, pre, reward_set(spec, keys), rollout_server(spec, keys.rollout))
    return Objective(net)


def preference_tuned(spec: PipelineSpec) -> bool:
    """Whether the spec preference-tunes a language model (``train.objective: dpo``)."""
    return spec.model.generative and spec.train.objective == "dpo"


def reward_tuned(spec: PipelineSpec) -> bool:
    """Whether the spec trains a language model on rewards (``train.objective: grpo``)."""
    return spec.model.generative and spec.train.objective == "grpo"


def check_objective(spec: PipelineSpec) -> None:
    """``train.objective: dpo`` goes with a text-generation model reading preference pairs (``model.data``
    with chosen and rejected columns), and such pairs with it (FreestackError naming the setting)."""
    if spec.train.objective == "dpo" and not spec.model.generative:
        raise FreestackError(
            "train.objective dpo preference-tunes a language model: it needs model.type huggingface "
            "and model.task text-generation"
        )
    pairs = spec.model.chat.preference
    if preference_tuned(spec) and not pairs:
        raise FreestackError(
            "train.objective dpo reads preference pairs: set model.data: {prompt: <column>, chosen: "
            "<column of the preferred answer>, rejected: <column of the worse one>} (or messages: <column "
            "of the chat so far> instead of prompt, or prompt: null for whole chats in chosen and rejected)"
        )
    if spec.model.generative and pairs and spec.train.objective != "dpo":
        raise FreestackError(
            "model.data names chosen and rejected columns (preference pairs), which train.objective "
            "dpo learns from; set train.objective: dpo, or give prompt and response for sft"
        )
    if preference_tuned(spec) and spec.model.packing:
        raise FreestackError("model.packing is for train.objective sft: a preference pair is not packed")
    check_grpo(spec)


def check_grpo(spec: PipelineSpec) -> None:
    """``train.objective: grpo`` goes with a language model, ``train.grpo``'s rewards, prompts (not pairs,
    not packed) read into memory, in one process or data-parallel ranks (FreestackError naming the
    setting)."""
    if spec.train.objective != "grpo":
        return
    problems = {
        "train.objective grpo trains a language model on rewards: it needs model.type huggingface and "
        "model.task text-generation": not spec.model.generative,
        "train.objective grpo needs train.grpo.rewards: the functions that score the sampled answers, e.g. "
        "[{function: exact_match}]": spec.train.grpo is None,
        "train.objective grpo samples answers to prompts: give model.data prompt and response (the "
        "reference) columns, not chosen and rejected": spec.model.chat.preference,
        "model.packing is for train.objective sft: GRPO's prompts are not packed": spec.model.packing,
        "train.objective grpo samples answers on each rank alone, which FSDP's sharded forward cannot "
        "(every rank must run each forward): use train.distributed.strategy ddp": (
            spec.train.distributed.world_size > 1 and spec.train.distributed.strategy == "fsdp"
        ),
        "the judge reward trains in one process: its key is read by the task and never handed to ranks "
        "(remove train.distributed, or the judge reward)": (
            spec.train.distributed.world_size > 1 and spec.judge_rewarded
        ),
    }
    for message, wrong in problems.items():
        if wrong:
            raise FreestackError(message)


def chat_encoding(spec: PipelineSpec):
    """The generation task's preprocessing (:class:`~freestack.ml.lm.prompts.ChatEncoding`)."""
    d, columns = spec.model.chat, chat_encoding_columns(spec)
    if preference_tuned(spec):  # pairs: the chosen answer is the response, the rejected one beside it
        return PreferenceEncoding(
            chat_tokenizer(spec), columns, spec.model.max_length, rejected=d.rejected or "rejected"
        )
    if reward_tuned(spec):  # prompts: the rollouts are sampled from them
        return GrpoEncoding(chat_tokenizer(spec), columns, spec.model.max_length)
    return ChatEncoding(chat_tokenizer(spec), columns, spec.model.max_length, spec.model.packing)


def build_causal_model(spec: PipelineSpec, pre) -> Any:
    """The base causal LM (with LoRA adapters when the spec asks for them), for ``pre``'s conversations,
    as its objective trains it (a DPO or GRPO net computes that objective's log-probabilities)."""
    model = load_causal_lm(pretrained_base(spec).folder)
    peft = peft_settings(spec)
    resized = fit_vocabulary(model, chat_tokenizer(spec), lora=peft is not None)
    if resized:
        log.warning("model.base: %s", resized)
    if peft is not None:
        model = add_causal_lora(model, peft)
    common: dict[str, Any] = {  # what the net is told either way
        "base": pretrained_base(spec).lineage(),
        "columns": pre.columns,
        "max_length": spec.model.max_length,
        "peft": peft,
    }
    if preference_tuned(spec):
        return PreferenceNet(model, beta=spec.train.dpo.beta, sft_weight=spec.train.dpo.sft_weight, **common)
    if reward_tuned(spec):
        names = tuple(r.label for r in spec.train.grpo.rewards)
        return GrpoNet(model, grpo=grpo_settings(spec), reward_names=names, **common)
    return CausalLMNet(model, packing=spec.model.packing, **common)


def reward_set(spec: PipelineSpec, keys: Keys = NO_KEYS) -> RewardSet:
    """``train.grpo.rewards`` as functions: the built-ins with their settings, the judge (asked with
    ``keys.judge``), a user's own loaded from the project (FreestackError naming the reward when it cannot
    be)."""
    out = []
    for r in spec.train.grpo.rewards:
        source: dict[str, Any] = {"function": r.function}
        if r.function == "judge":
            out.append(judge_reward(spec, r, keys.judge))
            continue
        if r.function == "exact_match":
            score = exact_match(r.column or spec.model.chat.response or "response")
        elif r.function == "regex":
            score = regex(r.pattern)
        elif r.function == "json_schema":
            score = json_schema(dict(r.schema_))
        elif r.function == "length":
            score = length(r.max_tokens)
        else:
            fn, source = user_function(r.function, Path(checkout_dir()))
            score = call_user(fn, r.function)
        out.append(Reward(r.label, r.weight, score, source))
    return RewardSet(tuple(out))


def judge_reward(spec: PipelineSpec, r, api_key: str | None) -> Reward:
    """The judge of ``gate.judge`` as a reward (:class:`~freestack.judging.client.JudgeClient`, pointwise
    whatever the gate's mode, its rubric when the gate's is pointwise): each completion's score 1-5 read
    as ``(score - 1) / 4``, the reference from ``column`` (default the response column). A judging that
    failed scores 0; a batch with more failed than ``gate.judge.max_failures`` allows fails the training
    with the judge's error."""
    judge = judging.with_rubric_file(spec.gate.judge)
    if judge.mode != "pointwise":
        judge = judge.model_copy(update={"mode": "pointwise", "rubric": None})
    column = r.column or spec.model.chat.response or "response"
    client: list[judging.JudgeClient] = []  # made when first asked: lineage reads the reward keyless

    def batch(samples) -> list[float]:
        if not client:
            client.append(judging.JudgeClient(judge, api_key))
        refs = [str(s.row.get(column) or "") for s in samples]
        verdicts = judging.pointwise(
            client[0], [s.prompt for s in samples], refs, [s.completion for s in samples]
        )
        failed = [v for v in verdicts if v.value is None]
        if failed and len(failed) > judge.max_failures * len(samples):
            raise FreestackError(
                f"train.grpo.rewards {r.label}: {len(failed)} of {len(samples)} judgings failed, over "
                f"gate.judge.max_failures {judge.max_failures:g} (gate.judge.url {judge.url}, model "
                f"{judge.model}): {judging.failure_kinds(failed)}. Fix the judge (or its key), then clear "
                "the task"
            )
        return [0.0 if v.value is None else (float(v.value) - 1) / 4 for v in verdicts]

    source = {"function": "judge", "url": judge.url, "model": judge.model, "rubric": judge.template}
    return Reward(r.label, r.weight, lambda s: batch([s])[0], source, batch=batch)


def grpo_settings(spec: PipelineSpec) -> GrpoSettings:
    """``train.grpo``'s settings of the same names (TRL's)."""
    names = {f.name for f in fields(GrpoSettings)}
    return GrpoSettings(**spec.train.grpo.model_dump(include=names))


def rollout_server(spec: PipelineSpec, key: str | None) -> RolloutServer | None:
    """The deployment that samples a GRPO training's rollouts (``train.grpo.rollouts: server``), or None."""
    s = spec.train.grpo.server
    if s is None:
        return None
    return RolloutServer(
        s.url, s.model, key, adapter_dir=s.adapter_dir, concurrency=s.concurrency, timeout=s.timeout_s
    )


def objective_lineage(spec: PipelineSpec) -> dict[str, Any]:
    """What the language model was trained to do: sft, or dpo with its beta and loss (the reference being
    the starting model, its log-probabilities computed once before training)."""
    if reward_tuned(spec):
        return {
            "name": "grpo",
            **spec.train.grpo.model_dump(exclude={"rewards"}),
            "rewards": reward_set(spec).lineage(),
            "reference": "the starting model (its LoRA adapters disabled, or a frozen copy)"
            if spec.train.grpo.beta
            else "none (beta 0)",
        }
    if not preference_tuned(spec):
        return {"name": "sft"}
    return {
        "name": "dpo",
        "beta": spec.train.dpo.beta,
        "loss": spec.train.dpo.loss,
        "sft_weight": spec.train.dpo.sft_weight,
        "reference": "the starting model (log-probabilities computed once before training)",
        "rejected": spec.model.chat.rejected,
    }


__all__ = [
    "GrpoObjective",
    "Objective",
    "PreferenceObjective",
    "build_causal_model",
    "build_objective",
    "chat_encoding",
    "check_grpo",
    "check_objective",
    "grpo_settings",
    "judge_reward",
    "objective_lineage",
    "preference_tuned",
    "reward_set",
    "reward_tuned",
    "rollout_server",
]
