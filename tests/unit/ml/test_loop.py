"""freestack.ml: splits, preprocessing, models in HF format, the loop, checkpoints and resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from freestack.ml.loop import TrainConfig, evaluate, fit
from freestack.ml.models import FreestackNet
from freestack.ml.prep import Preprocessing, split_of_keys
from tests.support.checkpoints import MemoryCheckpoints


def _blobs(n=600, d=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (k, d))
    y = rng.integers(0, k, n)
    x = centers[y] + rng.normal(0, 1, (n, d))
    return x.astype(np.float32) * 10 + 5, y.astype(np.int64)


def _net(d=8, k=3, seed=0, kind="mlp", **kw):
    torch.manual_seed(seed)
    return FreestackNet(kind=kind, task="classification", n_features=d, n_outputs=k, hidden=[32], **kw)


def test_split_is_keyed_and_stable_as_data_grows():
    keys = pd.Series([f"row-{i}" for i in range(5000)])
    first = split_of_keys(keys[:3000], 0.15, 0.15)
    grown = split_of_keys(keys, 0.15, 0.15)
    assert (grown[:3000] == first).all()
    share = pd.Series(grown).value_counts(normalize=True)
    assert abs(share["test"] - 0.15) < 0.02 and abs(share["val"] - 0.15) < 0.02


def test_preprocessing_is_fitted_on_train_only_and_round_trips():
    train = pd.DataFrame({"a": [0.0, 2.0], "y": [1, 0]})
    pre = Preprocessing.fit(train, ["a"], "y", "classification")
    assert pre.mean == [1.0] and pre.std == [1.0] and pre.classes == [0, 1]
    assert Preprocessing.from_dict(pre.as_dict()) == pre
    with pytest.raises(ValueError, match="not seen in the training split"):
        pre.target_array(pd.DataFrame({"a": [1.0], "y": [7]}))


def test_same_seed_same_metrics_and_early_stopping():
    x, y = _blobs()
    cfg = TrainConfig(epochs=8, batch_size=32, seed=7, patience=2)
    results = []
    for _ in range(2):
        m = _net(seed=7)
        m.set_scaling(x[:400].mean(0), x[:400].std(0))
        results.append(fit(m, x[:400], y[:400], x[400:], y[400:], cfg, task="classification"))

    def strip(h):
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in h]

    assert strip(results[0].history) == strip(results[1].history)
    assert results[0].best_metric > 0.9


def test_a_kept_metric_other_than_the_tasks_picks_the_epoch_best_on_it():
    """keep_metric (a sweep's metric): the kept epoch, and the weights the model ends with, are the best on
    that metric (val_loss, lower is better), not on the task's (accuracy), where the two disagree."""
    x, y = _blobs()
    noisy = np.where(np.random.default_rng(1).random(len(y)) < 0.3, (y + 1) % 3, y)  # accuracy and loss part
    runs = {}
    for keep in (None, "loss"):
        m = _net(seed=3)
        m.set_scaling(x[:400].mean(0), x[:400].std(0))
        cfg = TrainConfig(epochs=8, batch_size=32, seed=3, patience=8, keep_metric=keep, keep_higher=False)
        runs[keep] = fit(m, x[:400], noisy[:400], x[400:], noisy[400:], cfg, task="classification")
    history = runs["loss"].history
    by_loss = min(history, key=lambda r: r["val_loss"])["epoch"]
    by_accuracy = max(history, key=lambda r: r["val_accuracy"])["epoch"]
    assert (runs["loss"].metric, runs["loss"].best_epoch) == ("loss", by_loss)
    assert (runs[None].metric, runs[None].best_epoch) == ("accuracy", by_accuracy)
    assert by_loss != by_accuracy, history  # the data makes the two metrics disagree
    kept = evaluate(runs["loss"].model, torch.tensor(x[400:]), torch.tensor(noisy[400:]), "classification")
    assert kept["loss"] == pytest.approx(history[by_loss - 1]["val_loss"], rel=1e-5)


def test_killed_training_resumes_at_the_checkpointed_epoch_with_identical_results():
    x, y = _blobs(seed=1)
    cfg = TrainConfig(epochs=6, batch_size=32, seed=3, patience=100)
    whole = _net(seed=3)
    whole.set_scaling(x.mean(0), x.std(0))
    full = fit(whole, x[:400], y[:400], x[400:], y[400:], cfg, task="classification")

    store = MemoryCheckpoints()

    def die_after_3(row):  # killed while epoch 4 is being reported: its checkpoint was not written
        if row["epoch"] == 4:
            raise KeyboardInterrupt("killed")

    first = _net(seed=3)
    first.set_scaling(x.mean(0), x.std(0))
    with pytest.raises(KeyboardInterrupt):
        fit(
            first,
            x[:400],
            y[:400],
            x[400:],
            y[400:],
            cfg,
            task="classification",
            checkpoints=store,
            on_epoch=die_after_3,
        )
    assert store.saves == 3
    retried = _net(seed=99)  # a new process: fresh weights, all state comes from the checkpoint
    retried.set_scaling(x.mean(0), x.std(0))
    again = fit(retried, x[:400], y[:400], x[400:], y[400:], cfg, task="classification", checkpoints=store)
    assert again.resumed_from == 3 and store.saves == 6
    assert [r["epoch"] for r in again.history] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(again.history, full.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    for p, q in zip(retried.parameters(), whole.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_checkpoint_is_safetensors_with_no_pickle():
    x, y = _blobs()
    store = MemoryCheckpoints()
    fit(
        _net(),
        x[:400],
        y[:400],
        x[400:],
        y[400:],
        TrainConfig(epochs=1),
        task="classification",
        checkpoints=store,
    )
    blob = store.blobs["checkpoint.safetensors"]
    from safetensors.torch import load

    tensors = load(blob)
    assert any(k.startswith("model.") for k in tensors) and any(k.startswith("opt.") for k in tensors)
    assert b"\x80\x04" not in blob[:16]  # not a pickle stream


def test_hf_format_round_trip_cnn(tmp_path):
    x, y = _blobs(d=16)
    m = _net(
        d=16,
        kind="cnn",
        image_shape=[4, 4],
        channels=[4, 8],
        features=[f"f{i}" for i in range(16)],
        classes=[0, 1, 2],
    )
    m.set_scaling(x.mean(0), x.std(0))
    fit(m, x[:400], y[:400], x[400:], y[400:], TrainConfig(epochs=2), task="classification")
    m.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = FreestackNet.from_pretrained(tmp_path)
    assert loaded.kind == "cnn" and loaded.classes == [0, 1, 2]
    xt = torch.tensor(x[400:])
    assert torch.equal(loaded.predict(xt), m.to("cpu").predict(xt))


def test_regression_metrics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    yraw = (x @ np.array([1.0, -2.0, 0.5, 3.0]) * 10 + 100).astype(np.float32)
    torch.manual_seed(0)
    m = FreestackNet(kind="mlp", task="regression", n_features=4, n_outputs=1, hidden=[32])
    m.set_scaling(x.mean(0), x.std(0))
    m.set_target_scaling(yraw.mean(), yraw.std())
    ys = (yraw - yraw.mean()) / yraw.std()
    fit(
        m, x[:400], ys[:400], x[400:], ys[400:], TrainConfig(epochs=40, learning_rate=1e-2), task="regression"
    )
    metrics = evaluate(m, torch.tensor(x[400:]), torch.tensor(ys[400:]), "regression")
    assert metrics["r2"] > 0.9 and metrics["rmse"] < 0.35 * yraw.std()
    assert set(metrics) == {"loss", "rmse", "mae", "r2"}


def test_a_requested_stop_ends_training_and_survives_a_resume():
    x, y = _blobs(seed=2)
    cfg = TrainConfig(epochs=10, batch_size=32, seed=5, patience=100)
    store = MemoryCheckpoints()
    m = _net(seed=5)
    m.set_scaling(x.mean(0), x.std(0))
    res = fit(
        m,
        x[:400],
        y[:400],
        x[400:],
        y[400:],
        cfg,
        task="classification",
        checkpoints=store,
        on_epoch=lambda row: row["epoch"] == 2,
    )
    assert res.epochs_run == 2 and res.stopped_early and res.stop_reason == "requested"
    again = fit(
        _net(seed=5), x[:400], y[:400], x[400:], y[400:], cfg, task="classification", checkpoints=store
    )
    assert again.epochs_run == 2 and again.stop_reason == "requested" and again.resumed_from == 2


def test_a_kept_metric_the_training_does_not_record_is_refused_before_any_epoch():
    """keep_metric="val_rmse" (the history's name, not the metric's): refused before an epoch trains, naming
    the metric, the ones a regression records and the name to pass, not a bare KeyError mid-training."""
    from freestack.errors import FreestackError

    x, y = _blobs()
    torch.manual_seed(0)
    m = FreestackNet(kind="mlp", task="regression", n_features=8, n_outputs=1, hidden=[8])
    epochs = []
    cfg = TrainConfig(epochs=2, batch_size=32, keep_metric="val_rmse", keep_higher=False)
    with pytest.raises(FreestackError) as err:
        fit(
            m,
            x[:400],
            y[:400].astype(np.float32),
            x[400:],
            y[400:].astype(np.float32),
            cfg,
            task="regression",
            on_epoch=epochs.append,
        )
    text = str(err.value)
    assert "'val_rmse'" in text and "loss, rmse, mae, r2" in text and "keep_metric='rmse'" in text
    assert epochs == []


def test_a_kept_metric_a_self_scoring_model_lacks_is_named_at_the_first_epoch():
    """A task whose model scores itself (GRPO) is checked against what its epoch recorded."""
    from freestack.ml.metrics import UnknownMetric, check_kept

    check_kept("grpo", "reward", ["reward", "reward_len"])
    check_kept("grpo", "anything")  # nothing known before the model has scored
    with pytest.raises(UnknownMetric, match=r"'rewrd'.*reward, reward_len.*or None for the task's own"):
        check_kept("grpo", "rewrd", ["reward", "reward_len"])
