"""Feature columns of every kind in a pipeline spec: which columns are features, what a spec may not
ask (a string column as a feature, two image columns, a CNN over an image column), and a custom module
checked against the groups the spec's columns make before any data is read."""

from __future__ import annotations

import copy

import pytest

from freestack.errors import SpecError
from freestack.spec import parse_spec
from tests.unit.ml.test_features import MIXED_MODULE

COLUMNS = [
    {"name": "id", "type": "string", "nullable": False},
    {"name": "price", "type": "float"},
    {"name": "colour", "type": "category", "allowed": ["red", "blue"]},
    {"name": "review", "type": "text"},
    {"name": "photo", "type": "image"},
    {"name": "note", "type": "string"},
    {"name": "label", "type": "string", "allowed": ["no", "yes"]},
]
SPEC = {"name": "shop", "source": {"schema": {"key": "id", "target": "label", "columns": COLUMNS}}}


def _spec(**model):
    data = copy.deepcopy(SPEC)
    data["model"] = model
    return parse_spec(data, "shop.yaml")


def test_every_kind_of_column_but_strings_is_a_feature_by_default():
    spec = _spec()
    assert spec.model_features == ["price", "colour", "review", "photo"]
    assert spec.feature_kinds == {"price": "float", "colour": "category", "review": "text", "photo": "image"}
    assert spec.task == "classification"


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"features": ["price", "note"]}, "model.features ['note'] are ['string'] columns"),
        (
            {"type": "cnn", "image_shape": [8, 8]},
            "type: cnn and image_shape are for pixels held in numeric columns",
        ),
        ({"image": {"size": [2, 2]}}, "between 4 and 1024 pixels"),
        ({"text": {"max_length": 0}}, "max_length"),
    ],
)
def test_what_a_model_cannot_take_is_refused_naming_the_field(model, words):
    with pytest.raises(SpecError) as err:
        _spec(**model)
    assert words in str(err.value), err.value


def test_two_image_columns_are_refused():
    data = copy.deepcopy(SPEC)
    data["source"]["schema"]["columns"].insert(1, {"name": "back", "type": "image"})
    with pytest.raises(SpecError, match=r"one image column per model, not \['back', 'photo'\]"):
        parse_spec(data, "shop.yaml")


def test_a_custom_module_is_checked_against_the_spec_s_groups_before_any_data(tmp_path):
    from freestack.train.core import check_trainable, group_sizes
    from freestack.train.request import TrainingError

    module = tmp_path / "mixed_net.py"
    module.write_text(MIXED_MODULE)
    spec = _spec(type="custom", module=str(module), **{"class": "MixedNet"}, text={"max_length": 10})
    sizes = group_sizes(None, spec)
    assert sizes["category"]["vocab_sizes"] == [3]  # the allowed values and the unknown bucket
    assert sizes["text"]["shape"] == [1, 10] and sizes["image"]["shape"] == [3, 32, 32]
    check_trainable(spec)  # builds MixedNet and passes a batch of every group through it
    module.write_text(MIXED_MODULE.replace('g["image"].shape[0]', 'g["audio"].shape[0]'))
    spec = _spec(type="custom", module=str(module), **{"class": "MixedNet"})
    with pytest.raises(
        TrainingError, match=r"mixed_net.py, line \d+: MixedNet\(inputs, \*\*model.init\) failed: KeyError"
    ):
        check_trainable(spec)


def test_a_named_hub_tokenizer_is_fetched_and_used_for_the_text_columns(tmp_path, monkeypatch):
    """model.text.tokenizer names a Hub repo: its tokenizer.json comes through huggingface_hub (the
    local Hub stand-in here), and the encoder tokenizes with it; an unknown repo says what to do."""
    from huggingface_hub import HfApi
    from tokenizers import Tokenizer, models, pre_tokenizers

    from freestack.ml.features import FeatureEncoder
    from freestack.train.core import encoder_options
    from freestack.train.request import TrainingError
    from tests.fakes.hub import FakeHub

    vocab = {"[PAD]": 0, "[UNK]": 1, "great": 2, "value": 3, "broke": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "tokenizer.json").write_text(tok.to_str())
    hub = FakeHub().start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        api = HfApi(endpoint=hub.endpoint, token="hf_fake")
        api.create_repo("team/words")
        commit = api.upload_file(
            path_or_fileobj=str(tmp_path / "tokenizer.json"),
            path_in_repo="tokenizer.json",
            repo_id="team/words",
        ).oid
        spec = _spec(text={"tokenizer": "team/words", "max_length": 4})
        opts = encoder_options(spec)
        assert len(commit) == 40 and opts.tokenizer_source == f"team/words@{commit}"  # the revision, pinned
        enc = FeatureEncoder.fit({"review": ["great value", "it broke"]}, {"review": "text"}, opts)
        assert enc.text.vocab_size == 5 and enc.text.source == f"team/words@{commit}"
        from freestack.ml.prep import Preprocessing
        from freestack.train.core import _tokenizer_lineage

        pre = Preprocessing("classification", ["review"], [], [], encoder=enc)
        assert _tokenizer_lineage(spec, pre) == {
            "tokenizer": {"repo": "team/words", "revision": "main", "commit": commit}
        }
        assert enc.encode({"review": ["great value", "broke broke broke broke broke"]})["text"][
            :, 0
        ].tolist() == [[2, 3, 0, 0], [4, 4, 4, 4]]
        with pytest.raises(
            TrainingError,
            match=r"model.text.tokenizer 'team/nothing' \(revision main\): its tokenizer.json cannot be fetched",
        ):
            encoder_options(_spec(text={"tokenizer": "team/nothing"}))
    finally:
        hub.stop()
