"""Fine-tuning from base folders rather than the Hub, through every stage under dag.test(): LoRA on a
BERT-style ``BertForMaskedLM`` base named by a ``file://`` URI (``reviews``) and on a ViT-style
``ViTForMaskedImageModeling`` base named by a plain path (``digits``). Both are trained, evaluated and
registered and served; lineage names the base as a ``file://`` URI with the sha256 of its config and weights,
adapter_config.json names its folder, and the registered version, loaded with plain transformers + peft
in a Python without freestack under two seeds, gives the very accuracy the evaluation reported."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.support.landing_finetune import DIGITS_SPEC, REVIEWS_SPEC, digits_landing, reviews_landing
from tests.support.plain_hf import plain_probabilities
from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("airflow_db"), needs_serving_env]
DAYS, END = 3, "2026-11-03"
GATE = {"metric": "accuracy", "threshold": 0.0}


@pytest.fixture
def pipelines(tmp_path, storage, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from tests.support.hf_tiny import tiny_image_model, tiny_text_model

    bases = tmp_path / "bases"
    text, image = (
        tiny_text_model(bases / "bert-mlm", head="masked-lm"),
        tiny_image_model(bases / "vit-mim", head="masked-lm"),
    )
    reviews = {**REVIEWS_SPEC, "model": {**REVIEWS_SPEC["model"], "base": text.as_uri()}, "gate": GATE}
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    digits = {
        **DIGITS_SPEC,
        "model": {**DIGITS_SPEC["model"], "base": str(image), "peft": lora},
        "gate": GATE,
    }
    specs = tmp_path / "pipelines"
    specs.mkdir()
    for spec in (reviews, digits):
        (specs / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = Path(storage.removeprefix("file://"))
    reviews_landing(root, date(2026, 11, 1), DAYS)
    digits_landing(root, date(2026, 11, 1), DAYS)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return {"bag": bag, "root": root, "bases": {"reviews": text, "digits": image}, "tmp": tmp_path}


def _trained(p, name: str) -> Path:
    """The version the train DAG registered (and deployed: the model server loaded it too)."""
    from freestack.serving.local import stop_local

    dag = p["bag"].get_dag(f"{name}_ingest")
    for d in range(1, DAYS + 1):
        assert dag.test(logical_date=datetime(2026, 11, d, tzinfo=UTC)).state == "success"
    try:
        run = p["bag"].get_dag(f"{name}_train").test(run_conf={"end_ds": END, "sweep": False})
    finally:
        stop_local(p["root"].as_uri(), name, name)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success" and set(states.values()) <= {"success", "skipped"}, states
    versions = sorted(p["root"].glob(f"registry/{name}/v*/_REGISTERED.json"))
    assert versions, states
    return versions[-1].parent


def _test_inputs(version: Path, name: str):
    """(the test rows' model inputs as plain transformers takes them, their labels, the classes, the
    version's own probabilities), read as the evaluation read them."""
    import torch

    from freestack import version as model_version
    from freestack.evaluate.measure import test_split
    from freestack.spec import load_spec

    loaded = model_version.open(version.as_uri()).load()
    model, pre, lineage = loaded.model, loaded.preprocessor, loaded.lineage.as_dict()
    spec = load_spec(Path(os.environ["FREESTACK_PIPELINES_DIR"]) / f"{name}.yaml")
    test, data = test_split(spec, END, spec.train.window_days, lineage)
    try:
        frames = list(test.chunks())
        xs = [{k: torch.as_tensor(v) for k, v in pre.inputs(f).items()} for f in frames]
        y = np.concatenate([f[spec.source.schema_.target].to_numpy() for f in frames])
    finally:
        data.close()
    with torch.no_grad():
        own = np.concatenate([model.predict_proba(x).numpy() for x in xs])
    if model.kind == "image":
        plain = {"pixel_values": np.concatenate([model.scaled_inputs(x)["image"].numpy() for x in xs])}
    else:
        ids = np.concatenate([x["text"][:, 0, :].numpy() for x in xs])
        plain = {"input_ids": ids, "attention_mask": (ids != model.pad_id).astype(np.int64)}
    return plain, y, list(pre.classes), own


@pytest.mark.parametrize("name", ["reviews", "digits"])
def test_a_lora_version_on_a_base_folder_loads_with_plain_peft_to_the_evaluated_accuracy(pipelines, name):
    version = _trained(pipelines, name)
    base = pipelines["bases"][name]
    lineage = json.loads((version / "lineage.json").read_text())
    assert lineage["base"]["repo"] == base.as_uri() and lineage["base"]["commit"].startswith("sha256:"), (
        lineage["base"]
    )
    adapter = json.loads((version / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base) and adapter["revision"] is None, adapter
    if name == "reviews":
        assert "bert.pooler" in adapter["modules_to_save"], adapter["modules_to_save"]
    card = (version / "README.md").read_text()  # its plain-peft recipe reads the base folder, not a Hub repo
    assert f'.from_pretrained("{base}", config=config)' in card and "fetched from the Hub" not in card
    evaluated = json.loads((version / "evaluation" / "metrics.json").read_text())["candidate"]["accuracy"]
    inputs, y, classes, own = _test_inputs(version, name)
    assert np.mean(np.asarray(classes)[own.argmax(1)] == y) == evaluated
    for got in plain_probabilities(version, inputs, pipelines["tmp"] / "inputs", seeds=(0, 1)):
        np.testing.assert_allclose(got, own, atol=1e-5)
        assert np.mean(np.asarray(classes)[got.argmax(1)] == y) == evaluated
