"""Preference tuning of a causal LM (``train.objective: dpo``): direct preference optimisation inside
freestack's loop, with TRL's loss and metrics.

A lake row is a preference pair: a prompt and two answers to it, the ``chosen`` one (preferred, and the
response evaluation compares answers with) and the ``rejected`` one; the prompt is a column of text, a
chat so far, or implicit in two whole chats (TRL's preference formats). :class:`PreferenceEncoding`
renders both as conversations with the chat template (:func:`~freestack.ml.lm.prompts.encode_chat`, so
only the answer's tokens count, as TRL's completion mask: not a chat's earlier assistant turns) into
``x = {"input_ids", "attention_mask", "labels"}`` of shape ``[rows, 2, L]`` (chosen, rejected). The target
``y`` is ``[rows, 2]``: the reference model's summed log-probabilities of the two answers, computed once
before training by the starting model (:func:`score_reference`, as TRL's ``precompute_ref_log_probs``),
so no second model is held in memory, for LoRA and full weights alike.

:class:`PreferenceNet` answers a batch with the policy's summed log-probabilities ``[rows, 2]`` and its
``training_loss`` is DPO's sigmoid loss (Rafailov et al. 2023, TRL's ``loss_type="sigmoid"``)::

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

The validation metrics are TRL's: ``reward_chosen`` (``rewards/chosen``: beta x the chosen log-ratio),
``reward_rejected``, ``reward_margin`` (their difference; the run's metric, higher is better),
``reward_accuracy`` (the share of pairs whose chosen reward is higher) and ``logps_chosen/rejected``.
The version is a plain text-generation version (:class:`~freestack.ml.lm.causal.CausalLMNet`'s files).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from freestack.ml.lm.causal import CausalLMNet
from freestack.ml.lm.chat import IGNORE, ChatColumns, ChatError
from freestack.ml.lm.prompts import ChatEncoding, Encoded, encode_chat, pad_rows
from freestack.ml.loop import Precision

#: the loop's task of a preference-tuned model (its metrics: :data:`METRICS`)
TASK = "preference"
METRICS = (
    "loss",
    "reward_margin",
    "reward_accuracy",
    "reward_chosen",
    "reward_rejected",
    "logps_chosen",
    "logps_rejected",
)


def dpo_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's sigmoid loss per pair, and the chosen and rejected rewards (beta x log-ratio), from summed
    log-probabilities ``[rows, 2]`` (chosen, rejected) of the policy and of the reference."""
    ratios = policy.float() - reference.float()
    chosen, rejected = ratios[:, 0], ratios[:, 1]
    losses = -nn.functional.logsigmoid(beta * (chosen - rejected))
    return losses, beta * chosen.detach(), beta * rejected.detach()


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's summed log-probability of its learnt tokens (labels other than ``IGNORE``)."""
    labels = labels[:, 1 : logits.shape[1]]
    nll = nn.functional.cross_entropy(
        logits[:, :-1, :].float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )
    return -nll.sum(dim=1)


def preference_loss(outputs: torch.Tensor, reference: torch.Tensor, beta: float, sft_weight: float = 0.0):
    """The training loss of a batch: DPO's mean sigmoid loss, plus ``sft_weight`` x the chosen answers'
    mean token loss (TRL's ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, sft_weight]``).
    ``outputs``: :class:`PreferenceNet`'s (log-probabilities, then the answers' token counts).

    On data-parallel ranks (DDP, FSDP) the token count is the mean over the ranks' shares of the global
    batch: the ranks' gradients are averaged, so the sft term is the global batch's token mean, as one
    process training on the whole batch has it (the DPO term's per-pair mean is already)."""
    loss = dpo_loss(outputs[:, :2], reference, beta)[0].mean()
    if sft_weight:
        loss = loss + sft_weight * -outputs[:, 0].sum() / _rank_mean(outputs[:, 2].sum()).clamp(min=1)
    return loss


def _rank_mean(value: torch.Tensor) -> torch.Tensor:
    """``value``'s mean over the data-parallel ranks (itself in one process); no gradient flows through it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value.detach()
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


@dataclass
class PreferenceEncoding(ChatEncoding):
    """The preprocessing of preference pairs: ``columns`` holds the prompt and the chosen answer (as the
    response), ``rejected`` the other answer's column, in the chosen one's form (TRL's preference
    formats): text after a ``prompt`` column; the final assistant turn after a ``messages`` column (the
    chat so far); or, when ``columns.messages`` is the chosen column, a whole chat sharing every turn
    but the last with the chosen one (an implicit prompt). Both conversations are read by
    :meth:`~freestack.ml.lm.chat.ChatColumns.conversation`, as instruction tuning reads its rows. It
    saves as the chat encoding of prompt and chosen answer, which is what evaluation and serving read."""

    rejected: str = "rejected"

    def encode_rows(self, rows: Iterable[dict[str, Any]], *, packing: bool | None = None) -> Encoded:
        pairs, cut, dropped = [], 0, 0
        for i, row in enumerate(rows):
            chats = self.pair(row, i)
            tools = self.columns.tools
            encoded = [encode_chat(self.tokenizer, chat, last_turn_only=True, tools=tools) for chat in chats]
            if any(len(ids) > self.max_length for ids, _ in encoded):
                cut += 1
                encoded = [(ids[: self.max_length], lab[: self.max_length]) for ids, lab in encoded]
            if any(all(lab == IGNORE for lab in labels) for _, labels in encoded):
                dropped += 1
                continue
            pairs.append(encoded)
        out = pad_pairs(pairs, self.tokenizer.pad_token_id)
        out.conversations, out.cut, out.dropped = len(pairs), cut, dropped
        out.tokens = int((out.x["labels"] != IGNORE).sum())
        return out

    @property
    def chosen(self) -> str:
        """The chosen answer's column (the response, or the whole chats' column)."""
        return self.columns.response or self.columns.messages or "chosen"

    @property
    def rejected_columns(self) -> ChatColumns:
        """Where the rejected conversation is: the chosen one's columns, the rejected column in its place."""
        if self.columns.response:
            return replace(self.columns, response=self.rejected)
        return replace(self.columns, messages=self.rejected)

    def pair(self, row: dict[str, Any], index: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """The row's chosen and rejected conversations; ChatError naming the row and column for a missing
        or empty answer, two equal ones, or (whole chats) chats that differ before their last turn."""
        for name in (self.chosen, self.rejected):
            _answer_given(row.get(name), name, index)
        chosen = self.columns.conversation(row, index)
        rejected = self.rejected_columns.conversation(row, index)
        for name, chat in ((self.chosen, chosen), (self.rejected, rejected)):
            _answer_last(chat, name, index)
        if chosen[:-1] != rejected[:-1]:
            turn = next(
                (k for k, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b),
                min(len(chosen), len(rejected)) - 1,
            )
            raise ChatError(
                f"row {index}: the chats in columns {self.chosen!r} and {self.rejected!r} differ at turn "
                f"{turn}, before their last one; a pair shares its prompt (every turn but the answer), "
                "so fix the row or leave it out"
            )
        answer = chosen[-1]["content"].strip()
        if answer == rejected[-1]["content"].strip():
            raise ChatError(
                f"row {index}: columns {self.chosen!r} and {self.rejected!r} hold the same answer "
                f"({answer[:60]!r}), which teaches no preference; fix the row or leave it out"
            )
        return chosen, rejected

    def target_array(self, df) -> np.ndarray:
        """Zeros until :func:`score_reference` puts the reference's log-probabilities there."""
        return self.encode_frame(df).y

    def encode_frame(self, df) -> Encoded:
        key = id(df)
        if self._memo is None or self._memo[0] != key:
            cols = [*self.columns.columns, self.rejected]
            self._memo = (key, self.encode_rows(df[cols].to_dict("records")))
        return self._memo[1]


def _answer_given(value: Any, name: str, index: int) -> None:
    """ChatError unless a pair's answer column holds text that is not blank."""
    if not isinstance(value, str) or not value.strip():
        raise ChatError(
            f"row {index}, column {name!r}: a preference pair needs two answers, this one is "
            f"{'empty' if isinstance(value, str) else 'missing'}; fix the row or leave it out of the lake"
        )


def _answer_last(chat: list[dict[str, str]], name: str, index: int) -> None:
    """ChatError unless a pair's conversation ends with an assistant turn that says something."""
    if chat[-1]["role"] != "assistant":
        raise ChatError(
            f"row {index}, column {name!r}: a preference pair's chat ends with its answer (the "
            f"assistant's turn), this one with the {chat[-1]['role']}'s; fix the row or leave it out"
        )
    if not chat[-1]["content"].strip():
        raise ChatError(
            f"row {index}, column {name!r}: a preference pair needs two answers, this one is empty; fix "
            "the row or leave it out of the lake"
        )


def pad_pairs(pairs: list[list[tuple[list[int], list[int]]]], pad_id: int) -> Encoded:
    """Pairs right-padded to the longest answer of all: ``[rows, 2, width]`` ids, mask and labels."""
    rows = pad_rows([answer for pair in pairs for answer in pair], 0, pad_id)  # chosen, rejected, chosen...
    width = rows.y.shape[1]
    x = {k: v.reshape(len(pairs), 2, width) for k, v in {**rows.x, "labels": rows.y}.items()}
    return Encoded(x, np.zeros((len(pairs), 2), dtype=np.float32))


class PreferenceNet(CausalLMNet):
    """A causal LM answering preference pairs with its summed answer log-probabilities ``[rows, 2]``;
    trained with DPO's loss against the reference log-probabilities in the target. It saves as the
    causal LM it wraps."""

    def __init__(self, model, *, beta: float, sft_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.beta, self.sft_weight = float(beta), float(sft_weight)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[rows, 4]``: the chosen and rejected answers' summed log-probabilities, then their token
        counts (what the ``sft`` term averages over)."""
        rows, width = x["input_ids"].shape[0], int(x["attention_mask"].sum(dim=-1).max())
        flat = {k: x[k][:, :, :width].transpose(0, 1).reshape(2 * rows, width) for k in x}
        logits = self.model(
            input_ids=flat["input_ids"], attention_mask=flat["attention_mask"], use_cache=False
        ).logits
        logps = sequence_logps(logits, flat["labels"]).view(2, rows).T  # chosen rows, then rejected
        tokens = (flat["labels"][:, 1:] != IGNORE).sum(dim=1).view(2, rows).T.to(logps.dtype)
        return torch.cat([logps, tokens], dim=1)

    def training_loss(self, outputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return preference_loss(outputs, reference, self.beta, self.sft_weight)

    @torch.no_grad()
    def split_metrics(self, source, device: torch.device, amp_dtype=None, batch: int = 32):
        """TRL's DPO metrics over a split (:data:`METRICS`), means over its pairs."""
        self.eval()
        sums = dict.fromkeys(METRICS, 0.0)
        n = 0
        for xb, ref in source.ordered(batch, device):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                policy = self(xb).float()[:, :2]
            losses, chosen, rejected = dpo_loss(policy, ref, self.beta)
            for name, v in (
                ("loss", losses),
                ("reward_margin", chosen - rejected),
                ("reward_accuracy", (chosen > rejected).float()),
                ("reward_chosen", chosen),
                ("reward_rejected", rejected),
                ("logps_chosen", policy[:, 0]),
                ("logps_rejected", policy[:, 1]),
            ):
                sums[name] += float(v.sum())
            n += len(ref)
        return {k: v / max(n, 1) for k, v in sums.items()}


@torch.no_grad()
def score_reference(model: PreferenceNet, source, device: torch.device, batch: int = 32) -> None:
    """The reference log-probabilities of an in-memory split's pairs, by ``model`` as it is now (the
    starting model: fresh LoRA adapters change nothing), put in the split's target: computed once, in
    the precision the loop trains in, so the policy starts with rewards of zero."""
    if not hasattr(source, "x"):
        raise ChatError("preference tuning reads its window into memory; set train.data.mode: memory")
    was_training = model.training
    model.to(device).eval()
    precision = Precision.for_device(device)
    out = []
    for xb, _ in source.ordered(batch, device):
        with precision.autocast():
            out.append(model(xb).float()[:, :2])
    source.y = torch.cat(out) if out else source.y
    model.train(was_training)


__all__ = [
    "METRICS",
    "TASK",
    "PreferenceEncoding",
    "PreferenceNet",
    "dpo_loss",
    "pad_pairs",
    "preference_loss",
    "score_reference",
    "sequence_logps",
]
