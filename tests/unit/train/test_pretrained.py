"""Pretrained Hugging Face models (``model: {type: huggingface}``) before and around training: what a
spec may not ask (checked when it is read), what fails at the first task (a base the Hub does not have,
LoRA on a model without matching modules, a task the base cannot do), versions as transformers and
peft write them (an adapter, or merged weights answering the same), and the loop's gradient
accumulation and restart from a checkpoint that does not match."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from freestack.errors import SpecError
from freestack.spec import parse_spec
from tests.support.checkpoints import MemoryCheckpoints
from tests.support.hf_tiny import review_text, tiny_image_model, tiny_text_model

COLUMNS = [
    {"name": "id", "type": "string", "nullable": False},
    {"name": "review", "type": "text"},
    {"name": "price", "type": "float"},
    {"name": "label", "type": "string", "allowed": ["neg", "pos"]},
]
SPEC = {"name": "reviews", "source": {"schema": {"key": "id", "target": "label", "columns": COLUMNS}}}


def _spec(sweep=None, **model):
    data = copy.deepcopy(SPEC)
    data["model"] = {"type": "huggingface", "base": "team/tiny-bert", "features": ["review"], **model}
    if sweep is not None:
        data["sweep"] = sweep
    return parse_spec(data, "reviews.yaml")


def test_a_text_spec_names_its_task_base_and_lora_settings():
    spec = _spec(task="text-classification", peft={"r": 4})
    assert spec.task == "classification" and spec.uses_hub
    assert spec.model.peft.r == 4 and spec.model.peft.alpha == 16 and not spec.model.peft.merge


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"task": "token-classification"}, "model.task"),
        ({"base": None}, "type: huggingface needs base"),
        ({"task": "regression"}, "takes task text-classification or image-classification"),
        ({"features": ["review", "price"]}, "type: huggingface reads one text column"),
        ({"task": "image-classification"}, "reads one image column"),
        ({"peft": {"method": "ia3"}}, "model.peft.method"),
        ({"peft": {"r": 0}}, "model.peft.r"),
    ],
)
def test_what_a_pretrained_model_cannot_take_is_refused_when_the_spec_is_read(model, words):
    with pytest.raises(SpecError) as err:
        _spec(**model)
    assert words in str(err.value), err.value


def test_base_and_peft_belong_to_type_huggingface():
    data = copy.deepcopy(SPEC)
    data["model"] = {"base": "team/tiny-bert"}
    with pytest.raises(
        SpecError,
        match="base, peft and the tasks text-classification / image-classification are for type: huggingface",
    ):
        parse_spec(data, "reviews.yaml")


def test_a_sweep_may_change_lora_settings_of_a_lora_model_only():
    sweep = {
        "method": "grid",
        "metric": {"name": "val_loss", "goal": "minimize"},
        "parameters": {
            "peft": {"parameters": {"r": {"values": [2, 4]}}},
            "learning_rate": {"values": [0.01]},
        },
    }
    spec = _spec(sweep=sweep, peft={"r": 8})
    from freestack.sweeps.config import to_overrides

    assert to_overrides({"peft": {"value": {"r": 2}}, "learning_rate": {"value": 0.01}}) == {
        "train": {"learning_rate": 0.01},
        "model": {"peft": {"r": 2}},
    }
    from freestack.train.core import effective_spec
    from freestack.train.request import TrainRequest

    trial = effective_spec(spec, TrainRequest(end_ds="2026-11-03", overrides={"model": {"peft": {"r": 2}}}))
    assert (trial.model.peft.r, trial.model.peft.alpha) == (2, 16)  # merged into the spec's block
    with pytest.raises(
        SpecError, match="peft.<setting> parameters are for model.type: huggingface with a peft block"
    ):
        _spec(sweep=sweep)
    bad = copy.deepcopy(sweep)
    bad["parameters"]["peft"]["parameters"] = {"target_modules": {"values": [["query"]]}}
    with pytest.raises(SpecError, match="'target_modules' is not a LoRA setting a sweep can change"):
        _spec(sweep=bad, peft={"r": 8})


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from tests.fakes.hub import FakeHub
    from tests.support.hf_tiny import publish

    hub = FakeHub().start()
    folder = tmp_path_factory.mktemp("bases")
    commit = publish(hub.endpoint, "team/tiny-bert", tiny_text_model(folder / "text"))
    yield hub, commit, folder
    hub.stop()


def test_the_first_task_fetches_the_base_at_a_commit_and_checks_it(hub, monkeypatch):
    from freestack.train.core import check_trainable
    from freestack.train.pretrained import _base, pretrained_base
    from freestack.train.request import TrainingError

    server, commit, _ = hub
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    _base.cache_clear()
    check_trainable(_spec(peft={"r": 2}))
    assert pretrained_base(_spec()).commit == commit
    assert not server.calls("GET", r"\.bin$")  # safetensors only
    with pytest.raises(TrainingError) as err:
        check_trainable(_spec(base="team/missing"))
    assert "model.base 'team/missing' (revision main) cannot be fetched from the Hub" in str(err.value)
    assert "set model.base to that folder" in str(err.value)
    with pytest.raises(TrainingError) as err:
        check_trainable(_spec(peft={"target_modules": ["q_proj", "v_proj"]}))
    assert "LoRA cannot adapt this bert model" in str(err.value) and "query" in str(err.value), err.value


def test_a_base_that_cannot_do_the_task_is_named(tmp_path):
    from freestack.ml.pretrained import PretrainedError, check_pretrained, local_base

    base = local_base(tiny_text_model(tmp_path / "bert"), "bert")
    with pytest.raises(
        PretrainedError, match="'bert' model, which transformers cannot use for image-classification"
    ):
        check_pretrained(base, "image-classification", None)
    with pytest.raises(PretrainedError, match="holds no config.json"):
        local_base(tmp_path, "empty")


def _texts(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = ["pos" if rng.random() < 0.5 else "neg" for _ in range(n)]
    return [review_text(label, rng) for label in labels], np.array(
        [label == "pos" for label in labels], dtype=np.int64
    )


def _encoded(base, texts):
    from freestack.ml.features import EncoderOptions, FeatureEncoder

    opts = EncoderOptions(tokenizer_json=base.tokenizer_json(), text_max_length=16, text_special_tokens=True)
    enc = FeatureEncoder.fit({"review": texts}, {"review": "text"}, opts)
    return enc, enc.encode({"review": texts})["text"]


def test_merged_lora_weights_answer_as_the_adapter_and_load_with_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from freestack.ml.loop import TrainConfig, fit
    from freestack.ml.models import load_pretrained
    from freestack.ml.pretrained import build_pretrained, local_base

    base = local_base(tiny_text_model(tmp_path / "bert"), str(tmp_path / "bert"))
    texts, y = _texts(120)
    enc, ids = _encoded(base, texts)
    assert ids[0, 0, 0] == 2  # [CLS] first: the base's special tokens are added
    peft = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query", "value"], "merge": False}
    net = build_pretrained(base, "text-classification", ["neg", "pos"], pad_id=enc.text.pad_id, peft=peft)
    fit(
        net,
        {"text": ids[:100]},
        y[:100],
        {"text": ids[100:]},
        y[100:],
        TrainConfig(epochs=2, batch_size=16),
        task="classification",
    )
    want = net.predict_proba({"text": torch.as_tensor(ids[100:])})
    net.save_pretrained(tmp_path / "adapter")
    net.peft = {**peft, "merge": True}
    net.save_pretrained(tmp_path / "merged")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {
        "config.json",
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    assert {p.name for p in (tmp_path / "merged").iterdir()} == {"config.json", "model.safetensors"}
    for folder in ("adapter", "merged"):
        again = load_pretrained(tmp_path / folder).predict_proba({"text": torch.as_tensor(ids[100:])})
        assert torch.allclose(again, want, atol=1e-5), folder
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    mask = torch.as_tensor(ids[100:, 0] != enc.text.pad_id).long()
    logits = plain(input_ids=torch.as_tensor(ids[100:, 0]), attention_mask=mask).logits
    assert torch.allclose(logits.softmax(-1), want, atol=1e-5)
    assert plain.config.id2label == {0: "neg", 1: "pos"}
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["freestack"]["files"] == [
        "model.safetensors"
    ]


def test_gradient_accumulation_of_two_half_batches_steps_as_one_whole_batch(tmp_path):
    from freestack.ml.loop import TrainConfig, fit
    from freestack.ml.pretrained import build_pretrained, local_base

    base = local_base(tiny_image_model(tmp_path / "vit"), "vit")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(64, 3, 16, 16), dtype=np.uint8)
    y = rng.integers(0, 3, size=64)
    weights = []
    for batch, k in ((32, 1), (16, 2), (16, 1)):
        torch.manual_seed(0)
        net = build_pretrained(base, "image-classification", [0, 1, 2])
        net.model.config.hidden_dropout_prob = 0.0
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        fit(
            net,
            {"image": x},
            y,
            {"image": x[:8]},
            y[:8],
            TrainConfig(
                epochs=1, batch_size=batch, grad_accumulation=k, warmup_epochs=0, scheduler="constant"
            ),
            task="classification",
        )
        weights.append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    # AdamW divides by the gradients' own scale, so float rounding in near-zero gradients shows in the
    # weights: accumulating is the whole batch up to that, 16-row steps are another trajectory
    accumulated, halves = (weights[0] - weights[1]).abs().max(), (weights[0] - weights[2]).abs().max()
    assert accumulated < 2e-3 and accumulated < halves / 10, (accumulated, halves)


def test_a_checkpoint_of_another_config_restarts_from_the_pretrained_weights(tmp_path):
    from freestack.ml.loop import TrainConfig, fit
    from freestack.ml.pretrained import build_pretrained, local_base

    base = local_base(tiny_image_model(tmp_path / "vit"), "vit")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 255, size=(32, 3, 16, 16), dtype=np.uint8), rng.integers(0, 2, size=32)
    store = MemoryCheckpoints()
    fit(
        build_pretrained(base, "image-classification", [0, 1]),
        {"image": x},
        y,
        {"image": x},
        y,
        TrainConfig(epochs=1, batch_size=8),
        task="classification",
        checkpoints=store,
    )
    torch.manual_seed(0)
    fresh = build_pretrained(base, "image-classification", [0, 1])
    start = {k: v.clone() for k, v in fresh.state_dict().items()}
    result = fit(
        fresh,
        {"image": x},
        y,
        {"image": x},
        y,
        TrainConfig(epochs=0 + 1, batch_size=4),
        task="classification",
        checkpoints=store,
    )
    assert result.resumed_from is None  # another batch size: not resumed
    embeddings = "model.vit.embeddings.patch_embeddings.projection.weight"
    assert not torch.equal(fresh.state_dict()[embeddings], start[embeddings])  # trained one epoch from ...
    torch.manual_seed(0)
    again = build_pretrained(base, "image-classification", [0, 1])
    fit(again, {"image": x}, y, {"image": x}, y, TrainConfig(epochs=1, batch_size=4), task="classification")
    assert torch.allclose(
        fresh.state_dict()[embeddings], again.state_dict()[embeddings], atol=1e-6
    )  # ... the base
