"""Pretrained Hugging Face models fine-tuned through every stage under dag.test(): a tiny BERT-style text
classifier with LoRA adapters (``reviews``) and a tiny ViT-style image classifier in full (``digits``),
both fetched from the local Hub stand-in through huggingface_hub, trained, evaluated, gated,
registered and served on raw text / base64 images; the version loads with plain transformers/peft."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from tests.support.landing_finetune import (
    DIGITS_SPEC,
    IMAGE_BASE,
    REVIEWS_SPEC,
    TEXT_BASE,
    digits_landing,
    reviews_landing,
)
from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("airflow_db"), needs_serving_env]
DAYS = 3


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The Hub stand-in with the two tiny bases published on it."""
    from tests.fakes.hub import FakeHub
    from tests.support.hf_tiny import publish, tiny_image_model, tiny_text_model

    hub = FakeHub().start()
    folder = tmp_path_factory.mktemp("bases")
    commits = {
        TEXT_BASE: publish(hub.endpoint, TEXT_BASE, tiny_text_model(folder / "text")),
        IMAGE_BASE: publish(hub.endpoint, IMAGE_BASE, tiny_image_model(folder / "image")),
    }
    yield hub, commits
    hub.stop()


@pytest.fixture
def pipelines(tmp_path, storage, monkeypatch, hub):
    from airflow.dag_processing.dagbag import DagBag

    specs = tmp_path / "pipelines"
    specs.mkdir()
    lost = {**REVIEWS_SPEC, "name": "lost", "model": {**REVIEWS_SPEC["model"], "base": "team/not-on-the-hub"}}
    for spec in (REVIEWS_SPEC, DIGITS_SPEC, lost):
        (specs / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    monkeypatch.setenv("HF_ENDPOINT", hub[0].endpoint)
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = Path(storage.removeprefix("file://"))
    reviews_landing(root, date(2026, 11, 1), DAYS)
    digits_landing(root, date(2026, 11, 1), DAYS)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return {"bag": bag, "root": root, "commits": hub[1], "hub": hub[0]}


def _ingest(p, name: str) -> None:
    dag = p["bag"].get_dag(f"{name}_ingest")
    for d in range(1, DAYS + 1):
        assert dag.test(logical_date=datetime(2026, 11, d, tzinfo=UTC)).state == "success"


def _served(p, name: str, run) -> tuple[Path, dict]:
    from freestack.serving.records import Deployments

    assert run.state == "success"
    rec = Deployments(p["root"].as_uri(), name).get(name)
    version = p["root"] / "registry" / name / rec["version"]
    assert (version / "_REGISTERED.json").exists()
    return version, rec


def test_a_hub_text_model_is_fine_tuned_with_lora_and_served_on_raw_text(pipelines):
    import pandas as pd
    import torch

    from freestack.ml.features import load_encoder
    from freestack.ml.models import load_pretrained
    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json

    _ingest(pipelines, "reviews")
    root = pipelines["root"].as_uri()
    try:
        run = (
            pipelines["bag"].get_dag("reviews_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False})
        )
        version, rec = _served(pipelines, "reviews", run)
        names = {p.name for p in version.iterdir()}
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        } <= names and "model.safetensors" not in names, names
        adapter = json.loads((version / "adapter_config.json").read_text())
        commit = pipelines["commits"][TEXT_BASE]
        assert (adapter["base_model_name_or_path"], adapter["revision"]) == (TEXT_BASE, commit)
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["base"] == {
            "repo": TEXT_BASE,
            "revision": "main",
            "commit": commit,
            "task": "text-classification",
        }
        assert 0 < lineage["parameters"]["trainable"] < lineage["parameters"]["total"] / 4, lineage[
            "parameters"
        ]
        evaluation = json.loads((version / "evaluation" / "metrics.json").read_text())
        assert evaluation["candidate"]["accuracy"] >= 0.8, evaluation
        config = json.loads((version / "config.json").read_text())
        assert config["id2label"] == {"0": "neg", "1": "pos"}

        texts = pd.read_csv(pipelines["root"] / "landing" / "reviews" / "2026-11-03" / "reviews.csv")[
            "review"
        ][:6].tolist()
        code, body = http_json(
            rec["predict_url"], {"data": {"ndarray": [[t] for t in texts], "names": ["review"]}}
        )
        assert code == 200, body
        model, encoder = load_pretrained(version), load_encoder(version)
        batch = encoder.encode({"review": texts})
        want = model.predict_proba({g: torch.as_tensor(v) for g, v in batch.items()}).tolist()
        got = body["data"]["ndarray"]
        assert (
            max(abs(a - b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)) < 1e-5
        )
        code, body = http_json(rec["predict_url"], {"strData": texts[0]})
        assert code == 200, body
        _loads_with_plain_transformers(pipelines, version, texts, want)
    finally:
        stop_local(root, "reviews", "reviews")


PLAIN_LOAD = """
import json, sys
try:
    import freestack  # noqa: F401
    sys.exit("freestack is importable here; the check needs an environment without it")
except ImportError:
    pass
from peft import PeftModel
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

repo, version, base, commit, texts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
config = AutoConfig.from_pretrained(repo, revision=version)
model = PeftModel.from_pretrained(
    AutoModelForSequenceClassification.from_pretrained(base, revision=commit, config=config), repo, revision=version
).eval()
tokenizer = AutoTokenizer.from_pretrained(repo, revision=version)
batch = tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True, max_length=16)
print(json.dumps(model(**batch).logits.softmax(-1).tolist()))
"""


def _loads_with_plain_transformers(p, version: Path, texts: list[str], want: list[list[float]]) -> None:
    """The version pushed to the Hub loads with transformers + peft alone (the serving environment, where
    freestack is not installed), as its model card says, and answers what freestack's model answers."""
    import os
    import subprocess

    from freestack.registry.core import ModelRegistry
    from freestack.registry.hub import push_to_hub

    card = (version / "README.md").read_text()
    assert (
        f"base_model: {TEXT_BASE}" in card
        and "library_name: peft" in card
        and "pipeline_tag: text-classification" in card
    )
    pushed = push_to_hub(
        ModelRegistry(p["root"].as_uri(), "reviews"),
        version.name,
        "team/reviews-lora",
        "hf_fake",
        endpoint=p["hub"].endpoint,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)} | {
        "HF_ENDPOINT": p["hub"].endpoint
    }
    python = os.environ.get("FREESTACK_SERVING_PYTHON") or str(ROOT / ".venv-serving" / "bin" / "python")
    out = subprocess.run(
        [
            python,
            "-c",
            PLAIN_LOAD,
            "team/reviews-lora",
            pushed["tag"],
            TEXT_BASE,
            p["commits"][TEXT_BASE],
            json.dumps(texts),
        ],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert max(abs(a - b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)) < 1e-5
    # freestack's own Hub loader fetches the adapter (not full weights) and answers the same
    import torch

    from freestack.ml.features import load_encoder
    from freestack.registry.hub import load_from_hub

    batch = load_encoder(version).encode({"review": texts})
    again = load_from_hub("team/reviews-lora", pushed["tag"], endpoint=p["hub"].endpoint).model
    assert torch.allclose(
        again.predict_proba({g: torch.as_tensor(v) for g, v in batch.items()}), torch.tensor(want), atol=1e-5
    )


def test_a_hub_image_model_is_fine_tuned_in_full_and_served_on_bindata(pipelines):
    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json

    _ingest(pipelines, "digits")
    root = pipelines["root"].as_uri()
    try:
        run = pipelines["bag"].get_dag("digits_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False})
        version, rec = _served(pipelines, "digits", run)
        names = {p.name for p in version.iterdir()}
        assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= names, names
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["base"]["commit"] == pipelines["commits"][IMAGE_BASE] and lineage["peft"] is None
        evaluation = json.loads((version / "evaluation" / "metrics.json").read_text())
        assert evaluation["candidate"]["accuracy"] >= 0.5, evaluation
        files = sorted((pipelines["root"] / "landing" / "digits" / "2026-11-03").glob("*/*.png"))[-3:]
        for f in files:
            code, body = http_json(rec["predict_url"], {"binData": base64.b64encode(f.read_bytes()).decode()})
            assert code == 200, body
            assert abs(sum(body["data"]["tensor"]["values"]) - 1) < 1e-4
    finally:
        stop_local(root, "digits", "digits")


def test_a_base_the_hub_does_not_have_fails_the_first_task_before_any_data_is_read(pipelines, capfd):
    run = pipelines["bag"].get_dag("lost_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed" and states["window"] == "failed", states
    assert states["train"] in ("upstream_failed", None), states
    out, err = capfd.readouterr()
    assert "model.base 'team/not-on-the-hub' (revision main) cannot be fetched from the Hub" in out + err


def _on_two_ranks(p, name: str, strategy: str) -> None:
    """The pipeline's spec with ``train.distributed.processes_per_node: 2`` (gloo on this CPU)."""
    path = p["root"].parent / "pipelines" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data["train"]["distributed"] = {"processes_per_node": 2, "threads_per_process": 1, "strategy": strategy}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_lora_and_full_fine_tunes_train_on_two_ranks_and_serve(pipelines):
    """A LoRA text fine-tune (with gradient accumulation) on 2 DDP ranks, and a full image fine-tune sharded
    across 2 ranks with FSDP (the base's layers, then the whole model), each rank fetching the base from the
    Hub itself: versions that gate, register and serve."""
    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json

    root = pipelines["root"].as_uri()
    for name, threshold, strategy in (("reviews", 0.8, "ddp"), ("digits", 0.5, "fsdp")):
        _ingest(pipelines, name)
        _on_two_ranks(pipelines, name, strategy)
        try:
            run = (
                pipelines["bag"]
                .get_dag(f"{name}_train")
                .test(run_conf={"end_ds": "2026-11-03", "sweep": False})
            )
            version, rec = _served(pipelines, name, run)
            lineage = json.loads((version / "lineage.json").read_text())
            assert lineage["distributed"]["world_size"] == 2 and lineage["distributed"]["backend"] == "gloo"
            assert lineage["distributed"]["strategy"] == strategy
            assert (lineage["peft"] is None) == (name == "digits"), lineage["peft"]
            evaluation = json.loads((version / "evaluation" / "metrics.json").read_text())
            assert evaluation["candidate"]["accuracy"] >= threshold, evaluation
            code, body = http_json(
                rec["predict_url"],
                {"strData": "a fine film"}
                if name == "reviews"
                else {
                    "binData": base64.b64encode(
                        next((pipelines["root"] / "landing" / "digits").rglob("*.png")).read_bytes()
                    ).decode()
                },
            )
            assert code == 200, body
        finally:
            stop_local(root, name, name)
