"""A registered text-generation version as a training's base (``model.base: registry:<model>@<alias>``), as
TRL starts GRPO or DPO from an SFT model: the alias is resolved when the base is asked for (lineage
records the version and its registration's sha256), a LoRA version's adapter is merged into its base and
written once as a plain transformers folder, and that folder answers exactly as the version does. An
alias that names nothing, LoRA on top of it, or a version that is not a language model is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from freestack.errors import FreestackError
from tests.support.generation_serving import SMOKE_PROMPTS, make_generation_version


def _spec(root: str, base: str, **model):
    from freestack.spec import PipelineSpec
    from tests.dags.test_score_generation_dag import _spec as generation_spec

    spec = generation_spec({"version": "v1"})
    spec.pop("score")
    spec.update(storage_root=root)
    spec["model"].update(base=base, **model)
    return PipelineSpec.model_validate(spec)


def test_a_lora_version_is_the_base_merged_and_answers_as_the_version(tmp_path):
    from freestack.ml.lm.causal import load_causal_lm
    from freestack.ml.lm.prompts import load_tokenizer
    from freestack.registry.core import ModelRegistry
    from freestack.train.pretrained import pretrained_base
    from tests.support.generation_serving import GenerationVersion

    root = (tmp_path / "storage").as_uri()
    version = make_generation_version(root, "sft", "v1", tmp_path, lora=True, adapter_seed=3)
    ModelRegistry(root, "sft").promote("v1")
    base = pretrained_base(_spec(root, "registry:sft@production"))
    assert (base.repo, base.revision) == ("registry:sft@production", "v1") and base.commit.startswith(
        "sha256:"
    )
    assert (Path(base.folder) / "model.safetensors").is_file()
    assert not (Path(base.folder) / "adapter_config.json").exists()

    merged = GenerationVersion(
        "",
        Path(base.folder),
        load_causal_lm(base.folder).eval(),
        load_tokenizer(base.folder),
        version.columns,
        version.max_length,
        {},
    )
    chats = [version.chat(p) for p in SMOKE_PROMPTS]
    assert merged.alone(chats, max_new_tokens=10) == version.alone(chats, max_new_tokens=10)
    again = pretrained_base(_spec(root, "registry:sft:v1"))
    assert again.folder == base.folder and again.commit == base.commit  # written once


def test_what_cannot_be_a_registered_base_is_refused(tmp_path):
    from freestack.train.pretrained import pretrained_base

    root = (tmp_path / "storage").as_uri()
    make_generation_version(root, "sft", "v1", tmp_path)
    with pytest.raises(FreestackError, match="'production' is not registered as a version or alias"):
        pretrained_base(_spec(root, "registry:sft@production"))
    with pytest.raises(FreestackError, match="name a registered version as registry:<model>@<alias>"):
        pretrained_base(_spec(root, "registry:sft"))
    lora = {"peft": {"r": 4, "alpha": 8}}
    with pytest.raises(FreestackError, match="trains full weights: remove model.peft"):
        pretrained_base(_spec(root, "registry:sft:v1", **lora))
