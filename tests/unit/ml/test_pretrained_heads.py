"""LoRA versions on bases published without the classifier's parts (``*ForMaskedLM``, ``ViTForMaskedImageModeling``
or a bare model): every module the classification architecture adds to the base (BERT's pooler,
DistilBERT's ``pre_classifier``, the classifier) is trained in full and saved with the adapter, so the
version answers the same under any torch seed, loaded by freestack or by plain transformers + peft in
a Python without freestack; a base folder named by a path or a ``file://`` URI is one peft and freestack
both load, checked against its recorded sha256."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.support.hf_tiny import review_text, tiny_image_model, tiny_text_model
from tests.support.plain_hf import plain_probabilities

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None, "merge": False}
#: LoRA's targets when the spec names none (the tests name none): attention's query and value
TARGETS = {"bert": ["query", "value"], "distilbert": ["q_lin", "v_lin"], "vit": ["q_proj", "v_proj"]}
#: (family, head): the modules the classifier adds to such a base
BASES = {
    ("bert", "masked-lm"): ["bert.pooler", "classifier"],
    ("bert", "bare"): ["classifier"],
    ("distilbert", "masked-lm"): ["classifier", "pre_classifier"],
    ("distilbert", "bare"): ["classifier", "pre_classifier"],
    ("vit", "masked-lm"): ["classifier"],
    ("vit", "bare"): ["classifier"],
}


def _base_folder(tmp_path, family: str, head: str):
    folder = tmp_path / f"{family}-{head}"
    if family == "vit":
        return tiny_image_model(folder, head=head), "image-classification"
    return tiny_text_model(folder, family=family, head=head), "text-classification"


def _data(base, task: str, n: int = 48):
    """(model inputs for freestack, the same for plain transformers, labels)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=n)
    if task == "image-classification":
        x = rng.integers(0, 255, size=(n, 3, 16, 16), dtype=np.uint8)
        return {"image": x}, y
    from freestack.ml.features import EncoderOptions, FeatureEncoder

    texts = [review_text("pos" if label else "neg", rng) for label in y]
    opts = EncoderOptions(tokenizer_json=base.tokenizer_json(), text_max_length=16, text_special_tokens=True)
    enc = FeatureEncoder.fit({"review": texts}, {"review": "text"}, opts)
    return enc.encode({"review": texts}), y


def _plain_inputs(net, x) -> dict[str, np.ndarray]:
    if "image" in x:
        return {"pixel_values": net.scaled_inputs({"image": torch.as_tensor(x["image"])})["image"].numpy()}
    ids = x["text"][:, 0, :]
    return {"input_ids": ids, "attention_mask": (ids != net.pad_id).astype(np.int64)}


def _trained(base, task: str, x, y, family: str):
    from freestack.ml.loop import TrainConfig, fit
    from freestack.ml.pretrained import build_pretrained

    net = build_pretrained(base, task, ["neg", "pos"], peft=LORA, pad_id=0)
    fit(net, x, y, x, y, TrainConfig(epochs=2, batch_size=16, learning_rate=0.01), task="classification")
    return net.eval()


@pytest.mark.parametrize(("family", "head"), list(BASES))
def test_an_adapter_holds_every_module_the_head_adds_and_loads_the_same_on_any_seed(tmp_path, family, head):
    from freestack.ml.models import load_pretrained
    from freestack.ml.pretrained import local_base

    folder, task = _base_folder(tmp_path, family, head)
    base = local_base(folder, str(folder))
    x, y = _data(base, task)
    net = _trained(base, task, x, y, family)
    want = net.predict_proba({k: torch.as_tensor(v) for k, v in x.items()}).numpy()
    net.save_pretrained(tmp_path / "version")
    for seed in (0, 1):
        torch.manual_seed(seed)
        again = load_pretrained(tmp_path / "version").predict_proba(
            {k: torch.as_tensor(v) for k, v in x.items()}
        )
        np.testing.assert_allclose(again.numpy(), want, atol=1e-6)
    for got in plain_probabilities(
        tmp_path / "version", _plain_inputs(net, x), tmp_path / "inputs", seeds=(0, 1)
    ):
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert (got.argmax(1) == want.argmax(1)).all()  # the same predictions: the same accuracy
    adapter = json.loads((tmp_path / "version" / "adapter_config.json").read_text())
    assert set(BASES[family, head]) <= set(adapter["modules_to_save"]) and adapter[
        "base_model_name_or_path"
    ] == str(folder)
    assert sorted(adapter["target_modules"]) == sorted(TARGETS[family]), adapter["target_modules"]
    settings = json.loads((tmp_path / "version" / "config.json").read_text())["freestack"]
    assert settings["modules_to_save"] == sorted(adapter["modules_to_save"]), settings


def test_the_first_tasks_check_sees_the_modules_training_adds(tmp_path):
    """The meta-device check adapts the model as training does: LoRA aimed only at modules the head adds
    (trained in full) finds nothing, there as in training."""
    from freestack.ml.pretrained import PretrainedError, build_pretrained, check_pretrained, local_base

    folder, task = _base_folder(tmp_path, "distilbert", "masked-lm")
    base = local_base(folder, str(folder))
    check_pretrained(base, task, LORA)  # no targets named: DistilBERT's attention projections
    only_new = {**LORA, "target_modules": ["pre_classifier"]}
    with pytest.raises(PretrainedError, match="LoRA cannot adapt this distilbert model"):
        check_pretrained(base, task, only_new)
    with pytest.raises(PretrainedError, match="LoRA cannot adapt this distilbert model"):
        build_pretrained(base, task, ["neg", "pos"], peft=only_new)


def test_an_adapter_on_a_file_uri_base_names_a_folder_peft_loads_and_checks_its_hash(tmp_path):
    from freestack.ml.models import load_pretrained
    from freestack.ml.pretrained import PretrainedError, local_base

    folder, task = _base_folder(tmp_path, "bert", "masked-lm")
    base = local_base(folder, folder.as_uri())
    x, y = _data(base, task)
    net = _trained(base, task, x, y, "bert")
    want = net.predict_proba({k: torch.as_tensor(v) for k, v in x.items()}).numpy()
    net.save_pretrained(tmp_path / "version")
    adapter = json.loads((tmp_path / "version" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(folder) and adapter["revision"] is None
    settings = json.loads((tmp_path / "version" / "config.json").read_text())["freestack"]
    assert settings["base"] == {"repo": folder.as_uri(), "revision": "main", "commit": base.commit}
    again = load_pretrained(tmp_path / "version").predict_proba({k: torch.as_tensor(v) for k, v in x.items()})
    np.testing.assert_allclose(again.numpy(), want, atol=1e-6)
    (got,) = plain_probabilities(tmp_path / "version", _plain_inputs(net, x), tmp_path / "inputs", seeds=(3,))
    np.testing.assert_allclose(got, want, atol=1e-5)
    tiny_text_model(folder, seed=1, head="masked-lm")  # another base in the same folder
    with pytest.raises(
        PretrainedError, match=f"the adapter's base {folder.as_uri()} has changed since training"
    ):
        load_pretrained(tmp_path / "version")
