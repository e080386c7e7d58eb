"""The train stage's side of ``model: {type: huggingface}``: where the base comes from (a Hub repo, or a
folder in storage), the checks before any data is read, and what the feature encoder takes from the base
(its tokenizer, or its image processor's size). The model itself is :mod:`freestack.ml.pretrained`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freestack import version as versions
from freestack.errors import FreestackError
from freestack.ml.lm.causal import add_causal_lora, fit_vocabulary, load_causal_lm
from freestack.ml.lm.chat import ChatColumns, ChatError
from freestack.ml.lm.prompts import load_tokenizer, render
from freestack.ml.pretrained import (
    Base,
    build_pretrained,
    check_pretrained,
    copy_base,
    fetch_base,
    image_settings,
    local_base,
)
from freestack.registry.core import ModelRegistry, RegistryError
from freestack.settings import checkout_dir
from freestack.storage import storage_root, to_path
from freestack.storage.objects import local_os_path
from freestack.version.files import MARKER
from freestack.version.stored import read_storage_file

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

_SCHEMES = ("file://", "s3://", "data://")


def is_storage_base(base: str) -> bool:
    """Whether ``model.base`` names a folder (a path or a storage URI) rather than a Hub repo id."""
    return base.startswith((*_SCHEMES, "/", "./", "~")) or os.path.isdir(os.path.expanduser(base))


def pretrained_task(spec: PipelineSpec) -> str:
    """``model.task``, or (auto) the task of the one feature column's kind."""
    if spec.model.pretrained_task:
        return spec.model.pretrained_task
    kinds = set(spec.feature_kinds.values())
    return "image-classification" if "image" in kinds else "text-classification"


#: ``model.base: registry:<model>@<alias>`` or ``registry:<model>:<version>``: a registered version
REGISTERED = "registry:"


def pretrained_base(spec: PipelineSpec) -> Base:
    """The spec's base as a local folder (fetched once per process and revision)."""
    if spec.model.base.startswith(REGISTERED):
        return registered_base(spec)
    return _base(spec.model.base, spec.model.revision, os.environ.get("HF_ENDPOINT"))


def registered_base(spec: PipelineSpec) -> Base:
    """``model.base: registry:<model>@<alias>`` (or ``:<version>``): a registered text-generation version
    of this storage root as the base, the alias resolved now (lineage records the version in
    ``revision`` and its registration's sha256 in ``commit``): an instruction-tuned version trained on by
    GRPO or DPO, as TRL starts from an SFT model."""
    ref = spec.model.base.removeprefix(REGISTERED)
    model, sep, asked = ref.partition("@") if "@" in ref else ref.partition(":")
    if not sep or not model or not asked:
        raise FreestackError(
            f"model.base {spec.model.base!r}: name a registered version as registry:<model>@<alias> "
            "(registry:arith_tiny@production) or registry:<model>:<version>"
        )
    if spec.model.peft is not None:
        raise FreestackError(
            f"model.base {spec.model.base!r} trains full weights: remove model.peft (an adapter would name "
            "the merged copy of the version that only this machine holds)"
        )
    registry = ModelRegistry(storage_root(spec.storage_root), model)
    try:
        version = registry.resolve(asked)
    except RegistryError as exc:
        raise FreestackError(f"model.base {spec.model.base!r}: {exc}") from None
    return _version_base(registry.version_uri(version), spec.model.base, version)


@lru_cache(maxsize=4)
def _version_base(uri: str, given: str, version: str) -> Base:
    """A registered text-generation version written once as a plain transformers folder (its files
    checked against the registration; LoRA adapters merged into their base) with its tokenizer and chat
    template, in the temporary folder named after its registration's sha256."""

    try:
        stored = versions.open(uri)
        if stored.kind != "generation":
            raise FreestackError(f"model.base {given!r}: {uri} is not a text-generation version")
        digest = "sha256:" + hashlib.sha256(stored.source.read(MARKER)).hexdigest()
        folder = Path(tempfile.gettempdir()) / f"freestack-base-{digest[7:23]}"
        if (folder / "model.safetensors").is_file():
            return Base(str(folder), given, version, digest)
        loaded = stored.load()
    except (versions.VersionError, OSError, ValueError, KeyError) as exc:
        raise FreestackError(f"model.base {given!r}: {uri} cannot be loaded ({exc})") from None
    lm = loaded.model.model
    lm = lm.merge_and_unload() if hasattr(lm, "merge_and_unload") else lm
    part = folder.with_name(f"{folder.name}.part-{os.getpid()}")
    lm.save_pretrained(part)
    loaded.tokenizer.save_pretrained(part)
    os.replace(part, folder)
    return Base(str(folder), given, version, digest)


def storage_base_uri(base: str) -> str:
    """``model.base`` naming a folder, as a storage URI: a path becomes the ``file://`` URI of its
    absolute form (what lineage records, and what every stage resolves the same way)."""
    if "://" in base:
        return base
    return Path(os.path.expanduser(base)).resolve().as_uri()


@lru_cache(maxsize=8)
def _base(base: str, revision: str, endpoint: str | None) -> Base:
    if not is_storage_base(base):
        return fetch_base(base, revision, endpoint=endpoint)  # the token: huggingface_hub's own (HF_TOKEN)
    uri = storage_base_uri(base)
    local = local_os_path(to_path(uri))
    return local_base(local if local is not None else copy_base(uri, read_storage_file), uri, revision)


def check_pretrained_model(spec: PipelineSpec) -> None:
    """The base is reachable, fits the task, and LoRA (when asked for) finds modules to adapt; a
    text-generation base is a causal LM whose tokenizer (or the spec) has a chat template."""
    if spec.model.generative:
        check_causal_base(spec)
        return
    check_pretrained(pretrained_base(spec), pretrained_task(spec), peft_settings(spec))


def check_causal_base(spec: PipelineSpec) -> None:
    """On an empty (meta) copy of the base, before any data is read: it loads as a causal LM, LoRA finds its
    modules, and the chat template renders a conversation (and lays out ``model.data.tools``)."""
    base = pretrained_base(spec)
    model = load_causal_lm(base.folder, meta=True)
    chat, tokenizer = (
        [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
        chat_tokenizer(spec),
    )
    fit_vocabulary(model, tokenizer, lora=spec.model.peft is not None, resize=False)
    if spec.model.peft is not None:
        add_causal_lora(model, peft_settings(spec))
    tools = chat_encoding_columns(spec).tools
    if tools and render(tokenizer, chat) == render(tokenizer, chat, tools=tools):
        raise ChatError(
            "model.data.tools: the chat template lays out no tools, so the model would never see them; "
            "give model.chat_template a template that renders `tools` (as Qwen's or Llama 3's do)"
        )


def chat_template(spec: PipelineSpec) -> str | None:
    """``model.chat_template``: the Jinja text, or a ``.jinja`` file of the project read as it."""
    template = spec.model.chat_template
    if template and template.endswith((".jinja", ".j2")) and "\n" not in template:
        path = Path(checkout_dir()) / template
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FreestackError(
                f"model.chat_template {template!r} cannot be read ({exc}); give a file of the project "
                "(relative to the checkout) or the template itself"
            ) from None
    return template


def chat_tokenizer(spec: PipelineSpec):
    """The base's tokenizer, with the spec's chat template when it gives one."""
    return load_tokenizer(pretrained_base(spec).folder, chat_template(spec))


def chat_encoding_columns(spec: PipelineSpec) -> ChatColumns:
    """Where the conversations are (``model.data``), and the tools they may call."""
    d = spec.model.chat
    tools = [t.model_dump(exclude_none=True) for t in d.tools] if d.tools else None
    return ChatColumns(d.prompt, d.response, d.messages, d.system, tools)


def peft_settings(spec: PipelineSpec) -> dict[str, Any] | None:
    return spec.model.peft.model_dump() if spec.model.peft is not None else None


def encoder_settings(spec: PipelineSpec) -> dict[str, Any]:
    """What :class:`~freestack.ml.features.EncoderOptions` takes from the base: its tokenizer (with its
    special tokens) and ``model.max_length``, or its image processor's size (RGB)."""
    base = pretrained_base(spec)
    if pretrained_task(spec) == "text-classification":
        tokenizer = base.tokenizer_json()
        if tokenizer is None:
            raise FreestackError(
                f"model.base {spec.model.base!r} has no tokenizer.json (a fast tokenizer): save the "
                "base with its tokenizer (tokenizer.save_pretrained) next to the model"
            )
        return {
            "tokenizer_json": tokenizer,
            "tokenizer_source": f"{base.repo}@{base.commit}",
            "text_max_length": spec.model.max_length,
            "text_special_tokens": True,
        }
    (height, width), _, _ = image_settings(base.processor())
    return {"image_size": (height, width), "image_channels": 3}


def build_pretrained_model(spec: PipelineSpec, data) -> Any:
    """The base with a head for the data's classes (and LoRA adapters when the spec asks for them); a
    text-generation spec's causal LM is its objective's (:func:`freestack.train.objectives.build_objective`)."""
    text = data.pre.encoder.text if data.pre.encoder is not None else None
    return build_pretrained(
        pretrained_base(spec),
        pretrained_task(spec),
        list(data.pre.classes),
        pad_id=text.pad_id if text is not None else 0,
        peft=peft_settings(spec),
        augment=list(spec.model.image.augment),
    )


def pretrained_lineage(spec: PipelineSpec, model) -> dict[str, Any]:
    """The base (repo, revision, commit), the task, LoRA's settings and the trainable parameter count."""
    trainable, total = model.trainable_parameters()
    out = {
        "base": {**pretrained_base(spec).lineage(), "task": pretrained_task(spec)},
        "peft": peft_settings(spec),
        "parameters": {"trainable": trainable, "total": total},
    }
    if spec.model.generative:  # how conversations were rendered: the template's source, its columns, packing
        out["chat"] = {
            "template": "model.chat_template" if spec.model.chat_template else "base tokenizer",
            "data": spec.model.chat.model_dump(),
            "max_length": spec.model.max_length,
            "packing": spec.model.packing,
        }
    return out


__all__ = [
    "build_pretrained_model",
    "chat_template",
    "chat_tokenizer",
    "check_causal_base",
    "check_pretrained_model",
    "encoder_settings",
    "is_storage_base",
    "peft_settings",
    "pretrained_base",
    "pretrained_lineage",
    "pretrained_task",
    "storage_base_uri",
]
