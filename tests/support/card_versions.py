"""One registered version of each kind of model freestack trains, built without Airflow (ingest, train,
evaluate, gate and register as the DAG tasks call them) for the tests of what a version's model card
says: the built-in net on numeric columns (``digits``), the built-in net on category, text and image
columns (``shop``), a custom module (``handwriting``), Hub models fine-tuned in full (``vit``) and with
LoRA adapters (``reviews``), and a causal LM instruction-tuned with LoRA and a system prompt (``chat``,
:data:`GENERATION`: the tutorial's ``arith`` spec on the tiny LM the Hub stand-in serves as ``LM_BASE``).
"""

from __future__ import annotations

import copy
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from tests.dags.test_custom_model_dag import DIGITS_NET
from tests.support.landing_finetune import DIGITS_SPEC, IMAGE_BASE, REVIEWS_SPEC, TEXT_BASE, reviews_landing
from tests.support.landing_kinds import SHOP_SPEC, glyphs_landing, shop_landing

ROOT = Path(__file__).resolve().parents[2]
START, DAYS = date(2026, 11, 1), 3
END = (START + timedelta(days=DAYS - 1)).isoformat()
KINDS = ("numeric", "encoded", "custom", "finetuned", "lora")
#: the text-generation kind (its card's recipes generate text rather than predict rows)
GENERATION = "generation"
LM_BASE = "team/tiny-lm"
#: the generation version's system prompt (``model.data.system``): first in every conversation
SYSTEM = "Give the answer only."


def _digits(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "include" / "pipelines" / "digits.yaml").read_text())
    data.pop("sweep", None)
    return {**data, "name": name, "retries": 0, "gate": {"metric": "accuracy", "threshold": 0.0}}


def _chat() -> dict[str, Any]:
    """The instruction-tuning tutorial's spec on the tiny LM, with a system prompt, trained for seconds."""
    data = yaml.safe_load((ROOT / "include" / "pipelines" / "arith.yaml").read_text())
    data.update(name="chat", retries=0)
    chat = {"prompt": "prompt", "response": "response", "system": SYSTEM}
    lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    data["model"].update(
        base=LM_BASE,
        max_length=96,
        data=chat,
        peft=lora,
        generation={"metric": "exact_match", "max_new_tokens": 12, "samples": 4},
    )
    data["train"] = {"learning_rate": 1e-2, "batch_size": 16, "window_days": 30}
    data["gate"] = {"metric": "exact_match", "threshold": 0.0}
    return data


def spec_of(kind: str, folder: Path) -> dict[str, Any]:
    """The pipeline spec of one kind of version (a gate every version passes: the tests are about the card)."""
    if kind == GENERATION:
        return _chat()
    if kind == "numeric":
        return _digits("digits")
    if kind == "custom":
        module = folder / "digits_net.py"
        module.write_text(DIGITS_NET)
        data = _digits("handwriting")
        data["model"] = {
            "type": "custom",
            "module": str(module),
            "class": "DigitsNet",
            "init": {"hidden": 32, "dropout": 0.1},
        }
        return data
    base = {"encoded": SHOP_SPEC, "finetuned": {**DIGITS_SPEC, "name": "vit"}, "lora": REVIEWS_SPEC}[kind]
    return {**copy.deepcopy(base), "gate": {"metric": "accuracy", "threshold": 0.0}}


def land(kind: str, name: str, root: Path) -> None:
    from demo.landing import make_landing

    if kind in ("numeric", "custom"):
        make_landing(root.as_uri(), START, DAYS, pipeline=name)
    elif kind == "encoded":
        shop_landing(root, START, DAYS)
    elif kind == "finetuned":
        glyphs_landing(root, START, DAYS, name=name)
    elif kind == GENERATION:
        from demo.instructions import make_landing as instructions_landing

        instructions_landing(root.as_uri(), START, DAYS, rows=200, pipeline=name)
    else:
        reviews_landing(root, START, DAYS)


def build_version(kind: str, root: Path, specs: Path, epochs: int = 3) -> Path:
    """Ingest, train, evaluate and register one version of ``kind`` under ``root``; its folder."""
    from freestack.evaluate.core import evaluate
    from freestack.evaluate.gate import decide
    from freestack.ingest.core import ingest_partition
    from freestack.registry.candidates import register_candidate
    from freestack.spec import load_spec
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train
    from freestack.train.request import TrainRequest

    data = {**spec_of(kind, specs), "storage_root": root.as_uri()}
    path = specs / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(path)
    land(kind, spec.name, root)
    for d in range(DAYS):
        ingest_partition(spec, (START + timedelta(days=d)).isoformat())
    off = WandbSettings(mode="disabled")
    trained = train(spec, TrainRequest(end_ds=END, epochs=epochs, run_key="cards"), tracking_settings=off)
    ev = evaluate(spec, trained.version_uri, tracking_settings=off)
    ev.update(candidate_version=trained.version, champion_version=None, sweep=None)
    decision = decide(spec.gate, ev["candidate"], None)
    decision.update(candidate_version=trained.version, champion_version=None)
    registered = register_candidate(spec, ev, decision, run_id="cards")
    return Path(registered["version_uri"].removeprefix("file://"))


__all__ = [
    "END",
    "GENERATION",
    "KINDS",
    "LM_BASE",
    "START",
    "SYSTEM",
    "TEXT_BASE",
    "IMAGE_BASE",
    "build_version",
    "spec_of",
]
