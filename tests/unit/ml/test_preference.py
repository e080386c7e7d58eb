"""freestack.ml.lm.preference: DPO's loss and metrics equal TRL's DPOTrainer on the same log-probabilities,
preference pairs are encoded so that only the answers count, bad pairs are refused naming the row and
the column, and preference tuning on a checkable task (chosen the right answer, rejected a wrong one)
raises a tiny instruction-tuned model's exact match."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from freestack.ml.lm.chat import IGNORE, ChatColumns, ChatError
from freestack.ml.lm.preference import PreferenceEncoding, dpo_loss, preference_loss, sequence_logps
from freestack.ml.lm.prompts import load_tokenizer
from tests.support.checkpoints import MemoryCheckpoints

COLUMNS = ChatColumns(prompt="prompt", response="chosen")


def _trl_loss(policy: torch.Tensor, reference: torch.Tensor, beta: float, sft_weight: float = 0.0):
    """TRL's own DPOTrainer._compute_loss (loss_type sigmoid, precomputed reference) on fixed summed
    log-probabilities: a stand-in model returns per-token log-probs whose sums are ``policy``."""
    from trl import DPOTrainer

    rows = len(policy)
    per_token = torch.cat([policy[:, 0], policy[:, 1]]).unsqueeze(1).repeat(1, 2) / 2  # [2 rows, 2 tokens]
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.zeros_like(per_token),
        mean_logits=torch.zeros_like(per_token),
        is_top1=torch.zeros_like(per_token, dtype=torch.bool),
    )
    accelerator = SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=accelerator,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=["sigmoid", "sft"] if sft_weight else ["sigmoid"],
        loss_weights=[1.0, sft_weight] if sft_weight else [1.0],
        beta=beta,
        use_weighting=False,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones(2 * rows, 3, dtype=torch.long),
        "attention_mask": torch.ones(2 * rows, 3, dtype=torch.long),
        "completion_mask": torch.ones(2 * rows, 3, dtype=torch.long),
        "ref_chosen_logps": reference[:, 0],
        "ref_rejected_logps": reference[:, 1],
    }
    loss = DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, return_outputs=False)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_the_loss_and_rewards_are_trls(beta):
    g = torch.Generator().manual_seed(0)
    policy, reference = -10 * torch.rand(8, 2, generator=g), -10 * torch.rand(8, 2, generator=g)
    losses, chosen, rejected = dpo_loss(policy, reference, beta)
    loss, trl = _trl_loss(policy, reference, beta)
    assert float(losses.mean()) == pytest.approx(float(loss), rel=1e-6)
    assert float(chosen.mean()) == pytest.approx(trl["rewards/chosen"], rel=1e-6)
    assert float(rejected.mean()) == pytest.approx(trl["rewards/rejected"], rel=1e-6)
    assert float((chosen - rejected).mean()) == pytest.approx(trl["rewards/margins"], rel=1e-6)
    assert float((chosen > rejected).float().mean()) == pytest.approx(trl["rewards/accuracies"])
    # no move from the reference: rewards 0 and the loss log 2
    same, zero, _ = dpo_loss(reference, reference, beta)
    assert torch.allclose(same, torch.full_like(same, np.log(2))) and not zero.any()


def test_the_sft_term_is_trls():
    """sft_weight: TRL's loss_type [sigmoid, sft] with loss_weights [1, sft_weight] (2 tokens per answer)."""
    g = torch.Generator().manual_seed(1)
    policy, reference = -10 * torch.rand(8, 2, generator=g), -10 * torch.rand(8, 2, generator=g)
    outputs = torch.cat([policy, torch.full((8, 2), 2.0)], dim=1)
    loss, _ = _trl_loss(policy, reference, 0.1, sft_weight=0.5)
    assert float(preference_loss(outputs, reference, 0.1, 0.5)) == pytest.approx(float(loss), rel=1e-6)


def test_sequence_logps_sums_the_learnt_tokens_only():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1]])
    want = torch.log_softmax(logits, -1)[0, 1, 3] + torch.log_softmax(logits, -1)[0, 2, 1]
    assert float(sequence_logps(logits, labels)[0]) == pytest.approx(float(want), rel=1e-5)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tests.support.hf_tiny import tiny_causal_lm

    return load_tokenizer(tiny_causal_lm(tmp_path_factory.mktemp("lm"), pretrain_steps=0))


def test_pairs_are_encoded_chosen_then_rejected_with_only_the_answers_learnt(tok):
    enc = PreferenceEncoding(tok, COLUMNS, 48, rejected="rejected")
    out = enc.encode_frame(pd.DataFrame([{"prompt": "What is 3 + 4?", "chosen": "7", "rejected": "8"}]))
    ids, labels = out.x["input_ids"][0], out.x["labels"][0]
    learnt = [
        tok.decode([t for t, lab in zip(ids[k], labels[k], strict=True) if lab != IGNORE]) for k in (0, 1)
    ]
    assert [s.strip() for s in learnt] == ["7<|im_end|>", "8<|im_end|>"]
    assert out.y.shape == (1, 2) and out.conversations == 1
    assert enc.as_dict()["chat"]["columns"]["response"] == "chosen"  # what evaluation compares with


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"chosen": "7", "rejected": "7"}, "row 1: columns 'chosen' and 'rejected' hold the same answer"),
        ({"chosen": " ", "rejected": "8"}, "row 1, column 'chosen': .* this one is empty"),
        ({"chosen": "7", "rejected": None}, "row 1, column 'rejected': .* this one is missing"),
    ],
)
def test_a_bad_pair_is_refused_naming_the_row_and_column(tok, row, match):
    enc = PreferenceEncoding(tok, COLUMNS, 48, rejected="rejected")
    rows = [{"prompt": "What is 1 + 1?", "chosen": "2", "rejected": "3"}, {"prompt": "What is 3 + 4?", **row}]
    with pytest.raises(ChatError, match=match):
        enc.encode_frame(pd.DataFrame(rows))


# -- DPO moves a model: chosen the right answer, rejected a wrong one ------------------------------------


def _exact_match(model, tok, rows: pd.DataFrame) -> float:
    from freestack.ml.lm.answers import GenerationSettings
    from freestack.ml.lm.sampling import generate

    chats = [COLUMNS.prompt_of(r) for r in rows.to_dict("records")]
    answers = generate(model.eval(), tok, chats, GenerationSettings(max_new_tokens=12))
    return float(np.mean([a.text == c for a, c in zip(answers, rows["chosen"], strict=True)]))


def _source(encoded):
    from freestack.ml.stream import InMemory

    return InMemory({k: torch.tensor(v) for k, v in encoded.x.items()}, torch.tensor(encoded.y))


def _fit(net, train, val, task: str, epochs: int, lr: float):
    from freestack.ml.loop import TrainConfig, fit_source

    config = TrainConfig(epochs=epochs, learning_rate=lr, batch_size=16, warmup_epochs=0, device="cpu")
    return fit_source(net, train, val, config, task=task)


@pytest.mark.parametrize(
    ("beta", "sft_weight", "lr", "gain"),
    [
        (0.1, 1.0, 1e-3, 0.08),  # with TRL's sft term (0.27 -> 0.365 in one CI run, by more in others)
        # DPO alone: at beta 0.1 and 1e-3 it lowers this small model's exact match (docs/stages/train.md);
        # a larger beta (closer to the reference) and a smaller learning rate raise it, by less
        (2.0, 0.0, 3e-4, 0.02),
    ],
)
def test_preference_tuning_raises_the_exact_match_of_an_instruction_tuned_model(
    tmp_path, beta, sft_weight, lr, gain
):
    """The starting point is the tiny base instruction-tuned (sft) on answers of which 30% are the wrong
    one (a careless annotator); preference tuning on pairs of the right and the wrong answer raises its
    exact match on 200 held-out prompts, and DPO's validation reward margin and accuracy with it."""
    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.preference import PreferenceNet, score_reference
    from tests.support.hf_tiny import tiny_causal_lm
    from tests.support.preference import careless_sft, preference_pairs

    base = tiny_causal_lm(tmp_path / "lm")
    tok, model = load_tokenizer(base), load_causal_lm(str(base))
    pairs = preference_pairs(500, seed=1)
    train, held_out = pairs.iloc[:300], pairs.iloc[300:]
    careless_sft(model, tok, train)
    before = _exact_match(model, tok, held_out)

    net = PreferenceNet(model, beta=beta, sft_weight=sft_weight, base={}, columns=COLUMNS, max_length=48)
    enc = PreferenceEncoding(tok, COLUMNS, 48, rejected="rejected")
    splits = {
        name: _source(enc.encode_rows(rows.to_dict("records")))
        for name, rows in (("train", train), ("val", held_out))
    }
    for source in splits.values():
        score_reference(net, source, torch.device("cpu"))
    assert float(splits["val"].y.abs().sum()) > 0  # the starting model's log-probabilities
    start = net.split_metrics(splits["val"], torch.device("cpu"))
    result = _fit(net, splits["train"], splits["val"], "preference", 4, lr)
    after = _exact_match(model, tok, held_out)
    print(
        f"exact match on 200 held-out prompts: sft {before:.3f}, after dpo {after:.3f} ({beta=}, {sft_weight=})"
    )
    assert start["reward_margin"] == pytest.approx(0.0, abs=1e-4) and start["loss"] == pytest.approx(
        np.log(2)
    )
    assert result.metric == "reward_margin" and result.best_metric > 0.5
    assert result.history[-1]["val_reward_accuracy"] > 0.8
    assert {"val_reward_chosen", "val_reward_rejected", "val_reward_accuracy"} <= set(result.history[-1])
    assert after >= before + gain, (before, after)


def test_a_retry_scores_the_same_reference_and_resumes_where_the_run_stopped(tmp_path):
    """A run killed after its first epoch's checkpoint is retried: the fresh starting model scores the same
    reference log-probabilities, the loop resumes from the checkpoint, and the history and weights equal
    those of a run never killed."""
    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.preference import PreferenceNet, score_reference
    from freestack.ml.loop import TrainConfig, fit_source
    from tests.support.hf_tiny import tiny_causal_lm
    from tests.support.preference import preference_pairs

    base = tiny_causal_lm(tmp_path / "lm", pretrain_steps=0)
    tok = load_tokenizer(base)
    enc = PreferenceEncoding(tok, COLUMNS, 48, rejected="rejected").encode_frame(preference_pairs(24, seed=3))
    config = TrainConfig(epochs=3, batch_size=8, learning_rate=1e-3, warmup_epochs=0, device="cpu")

    def run(store, kill_at=None):
        net = PreferenceNet(load_causal_lm(str(base)), beta=0.1, base={}, columns=COLUMNS, max_length=48)
        train, val = _source(enc), _source(enc)
        for source in (train, val):
            score_reference(net, source, torch.device("cpu"))

        def killed(row):
            if row["epoch"] == kill_at:
                raise RuntimeError("killed")

        return fit_source(
            net, train, val, config, task="preference", checkpoints=store, on_epoch=killed
        ), train.y

    whole, reference = run(MemoryCheckpoints())
    store = MemoryCheckpoints()
    with pytest.raises(RuntimeError, match="killed"):
        run(store, kill_at=2)
    again, retried_reference = run(store)
    assert torch.equal(reference, retried_reference) and again.resumed_from == 1
    assert [r["val_reward_margin"] for r in again.history] == [r["val_reward_margin"] for r in whole.history]
    want, got = whole.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
