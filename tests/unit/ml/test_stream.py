"""Streamed batches (freestack.ml.stream) and preprocessing fitted over chunks: the same result as in memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from freestack.ml.moments import RunningMoments
from freestack.ml.stream import InMemory, Streamed

CPU = torch.device("cpu")


def _chunks(n: int, size: int, fail_at: int | None = None):
    """Chunks of rows 0..n-1 (the target is the row's number), in a seeded order of chunks."""
    starts = list(range(0, n, size))

    def chunks(order_seed):
        order = (
            np.random.default_rng(order_seed).permutation(len(starts))
            if order_seed is not None
            else range(len(starts))
        )
        for i in order:
            if fail_at is not None and i == fail_at:
                raise OSError("the spool file went away")
            rows = np.arange(starts[i], min(starts[i] + size, n))
            yield {"numeric": rows[:, None].astype(np.float32)}, rows.astype(np.int64)

    return chunks


def test_running_moments_merge_chunks_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(1000, 4))
    m = RunningMoments()
    for part in np.array_split(x, [1, 7, 500, 501]):
        m.add(part)
    mean, std = m.result(4)
    assert np.allclose(mean, x.mean(0)) and np.allclose(std, x.std(0))
    images = rng.random((40, 3, 5, 6))
    m = RunningMoments()
    for part in np.array_split(images, 3):
        m.add(part, axes=(0, 2, 3))
    assert np.allclose(m.result(3)[0], images.mean(axis=(0, 2, 3))) and np.allclose(
        m.result(3)[1], images.std(axis=(0, 2, 3))
    )
    assert [a.tolist() for a in RunningMoments().result(2)] == [[0.0, 0.0], [1.0, 1.0]]


def test_a_streamed_epoch_gives_every_row_once_shuffled_and_the_same_order_for_the_same_seed():
    source = Streamed(_chunks(10_000, 700), 10_000, buffer_rows=2_000)
    first = [y for _, y in source.epoch(1, 64, seed=7, device=CPU)]
    seen = torch.cat(first)
    assert sorted(seen.tolist()) == list(range(10_000))  # every row once
    assert all(len(y) == 64 for y in first[:-1])
    assert seen[:2000].tolist() != sorted(seen[:2000].tolist())  # shuffled within the buffer
    # rows travel far: the chunks come in a seeded order and mix in the buffer
    assert np.corrcoef(np.arange(10_000), seen.numpy())[0, 1] < 0.5
    assert torch.equal(
        seen, torch.cat([y for _, y in source.epoch(1, 64, seed=7, device=CPU)])
    )  # a resumed run
    assert not torch.equal(seen, torch.cat([y for _, y in source.epoch(2, 64, seed=7, device=CPU)]))
    x, y = next(source.epoch(1, 64, seed=7, device=CPU))
    assert torch.equal(x["numeric"][:, 0].long(), y)  # inputs and targets stay paired
    ordered = torch.cat([y for _, y in source.ordered(500, CPU)])
    assert ordered.tolist() == list(range(10_000))


def test_wide_rows_get_a_smaller_buffer_and_a_failing_read_is_raised_to_the_loop():
    wide = Streamed(_chunks(3_000, 300), 3_000, buffer_rows=100_000, buffer_bytes=12 * 1000)  # 12 bytes a row
    batches = list(wide.epoch(1, 100, seed=1, device=CPU))
    assert sum(len(y) for _, y in batches) == 3_000
    broken = Streamed(_chunks(3_000, 300, fail_at=4), 3_000)
    with pytest.raises(OSError, match="the spool file went away"):
        list(broken.ordered(100, CPU))


def test_in_memory_and_streamed_training_learn_the_same_task():
    from freestack.ml.loop import TrainConfig, fit_source
    from freestack.ml.models import FreestackNet

    rng = np.random.default_rng(3)
    x = rng.normal(size=(6_000, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)

    def chunks(order_seed, lo=0, hi=5_000):
        starts = list(range(lo, hi, 512))
        order = (
            np.random.default_rng(order_seed).permutation(len(starts))
            if order_seed is not None
            else range(len(starts))
        )
        for i in order:
            yield x[starts[i] : min(starts[i] + 512, hi)], y[starts[i] : min(starts[i] + 512, hi)]

    cfg = TrainConfig(epochs=3, batch_size=64, learning_rate=1e-2)
    results = {}
    for name, train, val in (
        (
            "memory",
            InMemory(torch.tensor(x[:5000]), torch.tensor(y[:5000])),
            InMemory(torch.tensor(x[5000:]), torch.tensor(y[5000:])),
        ),
        (
            "stream",
            Streamed(chunks, 5_000, buffer_rows=1_000),
            Streamed(lambda s: chunks(s, 5_000, 6_000), 1_000),
        ),
    ):
        net = FreestackNet(
            kind="mlp", task="classification", n_features=8, n_outputs=2, hidden=[16], classes=[0, 1]
        )
        results[name] = fit_source(net, train, val, cfg, task="classification")
    for result in results.values():
        assert result.best_metric > 0.9 and result.epochs_run == 3
    assert results["stream"].best_metric == pytest.approx(results["memory"].best_metric, abs=0.03)


def test_preprocessing_fitted_over_chunks_equals_the_fit_in_memory(tmp_path):
    from freestack.ml.features import EncoderOptions
    from freestack.ml.prep import Preprocessing
    from tests.unit.ml.test_features import png

    rng = np.random.default_rng(5)
    n = 300
    frame = pd.DataFrame(
        {
            "x": rng.normal(10, 3, n),
            "n": rng.integers(0, 5, n).astype(float),
            "colour": rng.choice(["red", "green", "blue", None], n),
            "note": rng.choice(["a fine day", "rain again", "sun and wind", "snow"], n),
            "pic": [png(int(v)) for v in rng.integers(0, 255, n)],
            "y": rng.normal(100, 20, n),
        }
    )
    kinds = {"x": "float", "n": "int", "colour": "category", "note": "text", "pic": "image"}
    options = EncoderOptions(text_vocab_size=40, image_size=(8, 8))
    whole = Preprocessing.fit(frame, list(kinds), "y", "regression", kinds, options)
    parts = [frame.iloc[i : i + 37] for i in range(0, n, 37)]
    chunked = Preprocessing.fit_chunks(lambda: iter(parts), list(kinds), "y", "regression", kinds, options)
    a, b = whole.as_dict(), chunked.as_dict()
    for key in ("mean", "std", "target_mean", "target_std"):
        assert np.allclose(a.pop(key), b.pop(key))
    ia, ib = a["encoder"].pop("image"), b["encoder"].pop("image")
    assert (
        np.allclose(ia.pop("mean"), ib.pop("mean")) and np.allclose(ia.pop("std"), ib.pop("std")) and ia == ib
    )
    assert a == b  # vocabularies, the tokenizer's settings, features, task
    assert whole.tokenizer_json == chunked.tokenizer_json and '"rain"' in whole.tokenizer_json
    labels = Preprocessing.fit_chunks(lambda: iter(parts), ["x"], "n", "classification", {"x": "float"})
    assert labels.classes == sorted(frame["n"].unique().tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_an_encoded_spool_gives_back_every_row_in_ranges_of_a_seeded_order(tmp_path):
    from freestack.ml.stream import EncodedSpool

    rng = np.random.default_rng(1)
    parts = [
        (
            {"numeric": rng.random((n, 3)).astype(np.float32), "text": rng.integers(0, 9, (n, 2, 5))},
            rng.integers(0, 4, n),
        )
        for n in (70, 5, 100)
    ]
    spool = EncodedSpool.write(str(tmp_path), iter(parts), chunk_rows=32)
    assert spool.n == 175 and spool.groups == {"numeric": ("float32", (3,)), "text": ("int64", (2, 5))}
    ordered = list(spool.chunks(None))
    assert [len(y) for _, y in ordered] == [32] * 5 + [15]
    for group in ("numeric", "text"):
        assert np.array_equal(
            np.concatenate([x[group] for x, _ in ordered]), np.concatenate([x[group] for x, _ in parts])
        )
    shuffled = [y for _, y in spool.chunks(3)]
    assert sorted(np.concatenate(shuffled).tolist()) == sorted(np.concatenate([y for _, y in parts]).tolist())
    assert [len(y) for y in shuffled] != [len(y) for _, y in ordered]  # the ranges come in another order
    (tmp_path / "plain").mkdir()
    plain = EncodedSpool.write(str(tmp_path / "plain"), iter([(np.ones((4, 2), np.float32), np.zeros(4))]), 8)
    x, y = next(plain.chunks(None))
    assert x.shape == (4, 2) and y.shape == (4,)  # a numeric-only split is one matrix, as in memory
