"""Preference tuning (DPO) of a full-weight causal LM under FSDP (``train.distributed.strategy: fsdp``) on
2 gloo ranks: each rank scores the reference of its pairs with the whole starting model, then trains on
its share of every global batch with the parameters sharded (FSDP2), every rank validating (a sharded
forward needs them all). The losses and validation metrics are one process's, step for step, and rank 0
ends with the same whole model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.support.ports import free_port

EPOCHS, ROWS, VAL = 2, 48, 16


def _tune(base: Path, out: Path, ranks=None) -> None:
    """DPO (beta 0.1, sft term 0.5) for :data:`EPOCHS` epochs from ``base``; the history and the final
    weights (rank 0's whole model) into ``out``."""
    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.chat import ChatColumns
    from freestack.ml.lm.preference import PreferenceEncoding, PreferenceNet, score_reference
    from freestack.ml.lm.prompts import load_tokenizer
    from freestack.ml.loop import TrainConfig, fit_source
    from freestack.ml.stream import InMemory
    from tests.support.preference import preference_pairs

    columns = ChatColumns(prompt="prompt", response="chosen")
    tok, model = load_tokenizer(base), load_causal_lm(str(base))
    net = PreferenceNet(model, beta=0.1, sft_weight=0.5, base={}, columns=columns, max_length=48)
    enc = PreferenceEncoding(tok, columns, 48, rejected="rejected")
    pairs = preference_pairs(ROWS + VAL, seed=3).to_dict("records")
    sources = {}
    for name, rows in (("train", pairs[:ROWS]), ("val", pairs[ROWS:])):
        encoded = enc.encode_rows(rows)
        sources[name] = InMemory({k: torch.tensor(v) for k, v in encoded.x.items()}, torch.tensor(encoded.y))
    if ranks is not None:
        sources["train"] = sources["train"].shard(ranks.rank, ranks.world)
    for source in sources.values():
        score_reference(net, source, torch.device("cpu"))
    config = TrainConfig(
        epochs=EPOCHS, learning_rate=1e-3, batch_size=16, warmup_epochs=0, device="cpu", patience=100
    )
    result = fit_source(net, sources["train"], sources["val"], config, task="preference", ranks=ranks)
    if ranks is None or ranks.main:
        (out / "history.json").write_text(json.dumps(result.history))
        torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, out / "model.pt")


def _rank(rank: int, base: str, out: str, port: int) -> None:
    from freestack.ml.distributed import join_group, leave_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    os.environ.update(LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ranks = join_group("gloo", 120, strategy="fsdp")
    try:
        _tune(Path(base), Path(out), ranks)
    finally:
        leave_group()


def test_dpo_under_fsdp_on_two_ranks_takes_one_process_steps(tmp_path):
    from tests.support.hf_tiny import tiny_causal_lm

    base = tiny_causal_lm(tmp_path / "lm")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _tune(base, one)
    torch.multiprocessing.spawn(_rank, args=(str(base), str(two), free_port()), nprocs=2, join=True)
    single, sharded = (json.loads((d / "history.json").read_text()) for d in (one, two))
    keys = ("train_loss", "val_loss", "val_reward_margin", "val_reward_accuracy")
    print({k: ([r[k] for r in single], [r[k] for r in sharded]) for k in keys})
    for a, b in zip(single, sharded, strict=True):
        assert {k: b[k] for k in keys} == pytest.approx({k: a[k] for k in keys}, rel=1e-3, abs=1e-4)
    assert sharded[-1]["val_reward_margin"] > 0
    a, b = (torch.load(d / "model.pt") for d in (one, two))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
