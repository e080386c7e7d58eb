"""Category, text and image features: fitted on the training split, encoded the same way later, and
learnt by the built-in net and by a user's module."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from freestack.ml.features import EncoderOptions, EncodingError, FeatureEncoder, fit_vocabulary
from freestack.ml.loop import TrainConfig, evaluate, fit, to_tensors
from freestack.ml.models import FreestackNet, load_pretrained
from freestack.ml.prep import Preprocessing

KINDS = {"size": "float", "colour": "category", "review": "text", "photo": "image"}


def png(value: int, size=(12, 10), mode="RGB") -> bytes:
    img = Image.new(mode, size, (value, 255 - value, value // 2) if mode == "RGB" else value)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    """The label is decided by the colour, the words of the review and the brightness of the photo."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    colour = np.where(label == 1, rng.choice(["red", "orange"], n), rng.choice(["blue", "green"], n))
    good = ["great value, works well", "love it", "excellent quality"]
    bad = ["broke after a day", "terrible, do not buy", "awful smell"]
    review = [good[i % 3] if y else bad[i % 3] for i, y in enumerate(label)]
    photo = [png(220 if y else 30) for y in label]
    return pd.DataFrame(
        {
            "size": rng.normal(size=n),
            "colour": colour,
            "review": review,
            "photo": photo,
            "label": np.where(label == 1, "yes", "no"),
        }
    )


def test_vocabulary_is_most_frequent_first_and_unknown_is_zero():
    vocab = fit_vocabulary(["b", "a", "b", "c", None, float("nan"), "a", "b"], max_size=2, min_count=1)
    assert vocab == ["b", "a"]
    enc = FeatureEncoder.fit(
        {"c": ["b", "a", "b", "c"]}, {"c": "category"}, EncoderOptions(category_max_size=2)
    )
    assert enc.encode({"c": ["a", "b", "zebra", None]})["category"][:, 0].tolist() == [2, 1, 0, 0]


def test_every_group_is_encoded_with_its_shape_and_round_trips_through_json():
    df = frame(40)
    opts = EncoderOptions(text_vocab_size=60, text_max_length=6, image_size=(8, 8))
    enc = FeatureEncoder.fit({c: df[c].tolist() for c in KINDS}, KINDS, opts)
    batch = enc.encode({c: df[c].tolist() for c in KINDS})
    assert batch["numeric"].shape == (40, 1) and batch["numeric"].dtype == np.float32
    assert batch["category"].shape == (40, 1) and batch["category"].min() >= 1
    assert batch["text"].shape == (40, 1, 6) and batch["text"].dtype == np.int64
    assert batch["image"].shape == (40, 3, 8, 8) and batch["image"].dtype == np.uint8
    again = FeatureEncoder.from_dict(json.loads(json.dumps(enc.as_dict())), enc.text.tokenizer_json)
    for k, v in again.encode({c: df[c].tolist() for c in KINDS}).items():
        np.testing.assert_array_equal(v, batch[k])
    sizes = enc.group_sizes()
    assert sizes["category"]["vocab_sizes"] == [5] and sizes["text"]["shape"] == [1, 6]
    assert sizes["image"]["shape"] == [3, 8, 8]


def test_a_corrupt_image_names_the_row_and_the_column():
    df = frame(6)
    enc = FeatureEncoder.fit(
        {"photo": df["photo"].tolist()}, {"photo": "image"}, EncoderOptions(image_size=(8, 8))
    )
    with pytest.raises(EncodingError, match=r"row 1, photo: not a decodable image"):
        enc.encode({"photo": [png(3), b"\x89PNG\r\n\x1a\nnot really"]})


def test_the_built_in_net_learns_from_category_text_and_image_and_reloads(tmp_path):
    train, val = frame(240, 1), frame(80, 2)
    opts = EncoderOptions(text_vocab_size=60, text_max_length=8, image_size=(8, 8), augment=("flip", "shift"))
    pre = Preprocessing.fit(train, list(KINDS), "label", "classification", KINDS, opts)
    net = FreestackNet(
        task="classification",
        n_features=len(pre.numeric),
        n_outputs=2,
        hidden=[32],
        channels=[8],
        features=pre.features,
        classes=pre.classes,
        inputs=pre.encoder.group_sizes(),
        augment=["flip", "shift"],
    )
    net.set_scaling(pre.mean, pre.std)
    net.set_image_scaling(pre.encoder.image.mean, pre.encoder.image.std)
    cfg = TrainConfig(epochs=6, learning_rate=1e-2, batch_size=32, patience=10)
    fit(
        net,
        pre.inputs(train),
        pre.target_array(train),
        pre.inputs(val),
        pre.target_array(val),
        cfg,
        task="classification",
    )
    scores = evaluate(
        net, to_tensors(pre.inputs(val)), torch.as_tensor(pre.target_array(val)), "classification"
    )
    assert scores["accuracy"] >= 0.95, scores
    net.save_pretrained(tmp_path)
    again = load_pretrained(tmp_path)
    x = to_tensors(pre.inputs(val))
    torch.testing.assert_close(again.predict_proba(x), net.predict_proba(x))


MIXED_MODULE = '''
import torch
from torch import nn


class MixedNet(nn.Module):
    """One embedding per category column, mean token embeddings per text column, a pooled image."""

    def __init__(self, inputs, width: int = 8):
        super().__init__()
        g = inputs.groups
        self.cats = nn.ModuleList(nn.Embedding(v, 4) for v in g["category"].vocab_sizes)
        self.tokens = nn.EmbeddingBag(g["text"].vocab_sizes[0], 8, padding_idx=g["text"].pad_id)
        channels = g["image"].shape[0]
        n = g["numeric"].size + 4 * len(self.cats) + 8 * g["text"].shape[0] + channels
        self.head = nn.Sequential(nn.Linear(n, width), nn.ReLU(), nn.Linear(width, inputs.n_outputs))

    def forward(self, batch):
        text = batch["text"]
        words = self.tokens(text.reshape(-1, text.shape[-1])).reshape(text.shape[0], -1)
        cats = [e(batch["category"][:, i]) for i, e in enumerate(self.cats)]
        image = batch["image"].mean(dim=(2, 3))
        return self.head(torch.cat([batch["numeric"], *cats, words, image], 1))
'''


def test_a_custom_module_gets_a_tensor_per_group_and_learns_from_them(tmp_path):
    from freestack.ml.contract import FeatureGroup, ModelInputs
    from freestack.ml.custom import build_custom, check_custom

    (tmp_path / "mixed_net.py").write_text(MIXED_MODULE)
    train, val = frame(240, 3), frame(80, 4)
    opts = EncoderOptions(text_vocab_size=60, text_max_length=8, image_size=(8, 8), augment=("flip",))
    pre = Preprocessing.fit(train, list(KINDS), "label", "classification", KINDS, opts)
    groups = {g: FeatureGroup(g, **v) for g, v in pre.encoder.group_sizes().items()}
    inputs = ModelInputs("classification", 2, groups, pre.classes, "label", ["flip"])
    net = build_custom("mixed_net.py", "MixedNet", {"width": 16}, inputs, tmp_path)
    net.set_scaling(pre.mean, pre.std)
    net.set_image_scaling(pre.encoder.image.mean, pre.encoder.image.std)
    check_custom(net)
    cfg = TrainConfig(epochs=8, learning_rate=2e-2, batch_size=32, patience=10)
    fit(
        net,
        pre.inputs(train),
        pre.target_array(train),
        pre.inputs(val),
        pre.target_array(val),
        cfg,
        task="classification",
    )
    scores = evaluate(
        net, to_tensors(pre.inputs(val)), torch.as_tensor(pre.target_array(val)), "classification"
    )
    assert scores["accuracy"] >= 0.9, scores
    net.save_pretrained(tmp_path / "version")
    again = load_pretrained(tmp_path / "version")
    x = to_tensors(pre.inputs(val))
    torch.testing.assert_close(again.predict_proba(x), net.predict_proba(x))
