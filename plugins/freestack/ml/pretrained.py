"""Pretrained Hugging Face models fine-tuned by freestack (``model: {type: huggingface}``): a
``transformers`` sequence or image classifier, in full or with LoRA adapters (``peft``), wrapped so that
the training loop, evaluation, the registry and the model server treat it like a built-in model.

The base comes as a local folder (:func:`fetch_base` downloads a Hub repo's safetensors, config and
tokenizer or image-processor files at one commit; never a pickled ``.bin``). :class:`PretrainedNet`
takes freestack's batches (token ids of the base's own tokenizer, or uint8 pixels resized to the
processor's size) and answers logits. A version folder is what ``transformers``/``peft`` write:

- full fine-tuning, or LoRA with ``merge: true``: ``config.json`` (with ``id2label``) and
  ``model.safetensors``: ``AutoModelFor...Classification.from_pretrained(folder)``;
- LoRA: ``config.json``, ``adapter_config.json`` (naming the base: a Hub repo and its commit, or a base
  folder's local path) and ``adapter_model.safetensors``: ``PeftModel.from_pretrained(base, folder)``.
  The adapter holds in full every module the task's architecture adds to the base (the classifier, and
  a pooler or ``pre_classifier`` a masked-LM or bare base lacks), so it loads the same on any seed;

plus the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``) or ``preprocessor_config.json``.
``config.json`` carries freestack's own settings under the key ``freestack``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from freestack.errors import FreestackError
from freestack.ml.scaling import ScaledModel

#: the tasks, the feature kind each reads and its transformers auto class
TASKS = {
    "text-classification": ("text", "AutoModelForSequenceClassification"),
    "image-classification": ("image", "AutoModelForImageClassification"),
}
#: what is fetched of a base (the rest of a Hub repo, pickled weights above all, is never downloaded)
BASE_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "preprocessor_config.json",
    "chat_template.jinja",
    "generation_config.json",
)
SHARD_INDEX = "model.safetensors.index.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class PretrainedError(FreestackError):
    """A base model cannot be fetched, read or adapted; the message names it and what to do."""


@dataclass(frozen=True)
class Base:
    """A base model as a local folder: where it came from (``repo``: a Hub repo id, or the path/URI the
    spec gave), the revision asked for and the commit it resolved to (a Hub commit sha, or
    ``sha256:<hex>`` of the config and weights of a folder)."""

    folder: str
    repo: str
    revision: str
    commit: str

    def config(self) -> dict[str, Any]:
        return _read_json(Path(self.folder) / "config.json", self.repo)

    def processor(self) -> dict[str, Any]:
        path = Path(self.folder) / "preprocessor_config.json"
        return _read_json(path, self.repo) if path.exists() else {}

    def tokenizer_json(self) -> str | None:
        path = Path(self.folder) / "tokenizer.json"
        return path.read_text(encoding="utf-8") if path.exists() else None

    def lineage(self) -> dict[str, str]:
        return {"repo": self.repo, "revision": self.revision, "commit": self.commit}


def _read_json(path: Path, repo: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PretrainedError(f"base {repo!r}: {path.name} cannot be read ({exc})") from None


def fetch_base(
    repo: str, revision: str = "main", *, endpoint: str | None = None, token: str | None = None
) -> Base:
    """A Hub repo's model files at ``revision``, through ``huggingface_hub`` (its cache, ``HF_ENDPOINT``
    and token): ``config.json`` first, the rest from the commit it came from, so a branch moving in
    between cannot mix two states."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    endpoint = endpoint or os.environ.get("HF_ENDPOINT")
    kw: dict[str, Any] = {"repo_id": repo, "endpoint": endpoint, "token": token}
    try:
        config = Path(hf_hub_download(filename="config.json", revision=revision, **kw))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise PretrainedError(
            f"model.base {repo!r} (revision {revision}) cannot be fetched from the Hub ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Check the repo id, the revision and the huggingface connection (token, endpoint); "
            "without network, download the model elsewhere (huggingface-cli download) and set model.base to that "
            "folder (a path, or an s3:// or data:// URI of its copy in storage)"
        ) from None
    commit = config.parent.name
    for name in BASE_FILES[1:]:
        with contextlib.suppress(EntryNotFoundError):
            hf_hub_download(filename=name, revision=commit, **kw)
    if not (config.parent / "model.safetensors").exists():
        _fetch_shards(config.parent, commit, kw)
    return Base(
        str(config.parent), repo, revision, commit if _COMMIT.match(commit) else folder_digest(config.parent)
    )


def _fetch_shards(folder: Path, commit: str, kw: dict[str, Any]) -> None:
    """A base whose weights are sharded: the index, then every shard it names."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        index = json.loads(Path(hf_hub_download(filename=SHARD_INDEX, revision=commit, **kw)).read_text())
    except EntryNotFoundError:
        raise PretrainedError(
            f"model.base {kw['repo_id']!r}@{commit} has no model.safetensors (nor a sharded index): "
            "freestack loads safetensors weights only, never pickled .bin files"
        ) from None
    for shard in sorted(set(index.get("weight_map", {}).values())):
        hf_hub_download(filename=shard, revision=commit, **kw)


def local_base(folder: str | os.PathLike, given: str, revision: str = "main") -> Base:
    """A base already in a local ``folder`` (``given`` is how the spec named it)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise PretrainedError(
            f"model.base {given!r}: {folder} holds no config.json; point base at a folder written "
            "by save_pretrained (config.json, model.safetensors, tokenizer or processor files)"
        )
    if not (folder / "model.safetensors").is_file() and not (folder / SHARD_INDEX).is_file():
        raise PretrainedError(
            f"model.base {given!r}: {folder} holds no model.safetensors; freestack loads "
            "safetensors weights only, never pickled .bin files"
        )
    return Base(str(folder), given, revision, folder_digest(folder))


def folder_digest(folder: Path) -> str:
    """``sha256:<hex>`` over a base folder's config and weights (what identifies a base that has no commit)."""
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.name == "config.json" or path.suffix == ".safetensors":
            h.update(path.name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return f"sha256:{h.hexdigest()}"


# -- the model -------------------------------------------------------------------------------------------


def input_kind(task: str) -> str:
    return TASKS[task][0]


def image_settings(processor: dict[str, Any]) -> tuple[tuple[int, int], list[float], list[float]]:
    """(height, width), mean and std of a base's image processor (ViT-style ``size``: height/width, or
    ``shortest_edge`` taken as a square)."""
    size = processor.get("size") or {"height": 224, "width": 224}
    if isinstance(size, int):
        hw = (size, size)
    elif "height" in size and "width" in size:
        hw = (int(size["height"]), int(size["width"]))
    else:
        edge = int(size.get("shortest_edge") or 224)
        hw = (edge, edge)
    normalize = processor.get("do_normalize", True)
    mean = list(processor.get("image_mean") or [0.5, 0.5, 0.5]) if normalize else [0.0, 0.0, 0.0]
    std = list(processor.get("image_std") or [0.5, 0.5, 0.5]) if normalize else [1.0, 1.0, 1.0]
    return hw, [float(v) for v in mean], [float(v) for v in std]


def load_classifier(folder: str, task: str, classes: list[Any], *, meta: bool = False):
    """The base's ``AutoModelFor...Classification`` with a head for ``classes`` (a new head when the base
    has another one), in float32 (mixed precision is the loop's, on CUDA), and the modules it added to
    the base (:func:`new_modules`). ``meta``: an empty copy, no weight read."""
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its loading reports (a newly initialised head): not a page of tables
    auto = getattr(transformers, TASKS[task][1])
    labels = [str(c) for c in classes]
    try:
        model, info = auto.from_pretrained(
            folder,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            output_loading_info=True,
            label2id={c: i for i, c in enumerate(labels)},
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
            **({"device_map": "meta"} if meta else {}),
        )
    except (ValueError, KeyError, OSError) as exc:
        raise PretrainedError(
            f"the base at {folder} cannot be loaded for {task} ({type(exc).__name__}: "
            f"{str(exc)[:300]}); check that model.task fits the base's architecture"
        ) from None
    fresh = [
        *info.get("missing_keys", ()),
        *(k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())),
    ]
    return model, new_modules(model, fresh)


def new_modules(model, keys) -> list[str]:
    """The outermost modules all of whose parameters are among ``keys`` (the parameters the base did not
    have, newly initialised: a pooler, DistilBERT's ``pre_classifier``, the classifier)."""
    params = [n for n, _ in model.named_parameters()]
    fresh = set(keys) & set(params)
    found: set[str] = set()
    for key in sorted(fresh):
        parts = key.split(".")[:-1]
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i]) + "."
            if all(n in fresh for n in params if n.startswith(prefix)):
                found.add(prefix[:-1])
                break
    return sorted(found)


def head_modules(model, new: list[str] = ()) -> list[str]:
    """The modules trained in full and saved beside LoRA adapters: the classification head and every
    module the task's architecture added to the base (``new``), whose weights the base does not hold."""
    head = [
        n for n in ("classifier", "score", "head") if isinstance(getattr(model, n, None), torch.nn.Module)
    ]
    return sorted({*head, *new})


#: attention's query and value projections, by the names transformers' architectures give them
_ATTENTION_PAIRS = (("query", "value"), ("q_proj", "v_proj"), ("q_lin", "v_lin"), ("q", "v"))


def default_targets(model) -> list[str] | None:
    """LoRA's targets when the spec names none: peft's own default for the architecture, else the
    attention's query and value projections found by name (DistilBERT's ``q_lin``/``v_lin``, ViT's
    ``q_proj``/``v_proj``); None (peft's error, which lists the linear layers) when neither fits."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    known = DEFAULTS.get(getattr(model.config, "model_type", ""))
    if known:
        return list(known)
    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return next((list(pair) for pair in _ATTENTION_PAIRS if linear.issuperset(pair)), None)


def add_lora(model, task: str, peft: dict[str, Any], new: list[str] = ()):
    """``model`` with LoRA adapters (peft) on ``peft["target_modules"]``, the head and ``new`` modules
    trained in full (and so saved with the adapter); PretrainedError naming the modules when none match."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type={"text-classification": TaskType.SEQ_CLS, "text-generation": TaskType.CAUSAL_LM}.get(task),
        r=int(peft["r"]),
        lora_alpha=float(peft["alpha"]),
        lora_dropout=float(peft["dropout"]),
        target_modules=peft.get("target_modules") or default_targets(model),
        modules_to_save=head_modules(model, new) or None,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        )
        raise PretrainedError(
            f"LoRA cannot adapt this {model.config.model_type} model: {str(exc)[:300]}. Set "
            f"model.peft.target_modules to some of its linear layers: {', '.join(linear)}"
        ) from None


class HubWeights:
    """What freestack's wrappers of a transformers model share: ``model`` (maybe a peft model) fine-tuned
    from ``base``, with LoRA when ``peft`` is set; its parameter counts, weight files and saving (with the
    wrapper's own ``config()``)."""

    model: Any
    base: dict[str, str]
    peft: dict[str, Any] | None

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    @property
    def adapter(self) -> bool:
        """Whether a version holds LoRA adapters (rather than full weights, merged or fine-tuned)."""
        return self.peft is not None and not self.peft.get("merge")

    def weight_files(self) -> list[str]:
        return list(ADAPTER_FILES) if self.adapter else ["model.safetensors"]

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """transformers'/peft's own files: config.json (with ``freestack``) and the weights (the adapter, or
        full weights; LoRA merged into them with ``peft.merge``)."""
        save_hf_weights(self.model, folder, self.base, self.adapter, self.peft is not None, self.config())


class PretrainedNet(HubWeights, ScaledModel):
    """A transformers classifier (``model``, maybe a peft model) taking freestack's batches."""

    task = "classification"

    def __init__(
        self,
        model,
        *,
        pipeline_task: str,
        classes: list[Any],
        base: dict[str, str],
        pad_id: int = 0,
        image: dict[str, Any] | None = None,
        peft: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model, self.pipeline_task, self.classes = model, pipeline_task, list(classes)
        self.base, self.pad_id, self.peft, self.image = dict(base), int(pad_id), peft, image
        self.kind = input_kind(pipeline_task)
        self.add_scaling(0)
        if self.kind == "image":
            image = image or {}
            self.add_image_scaling(3, list(image.get("augment") or []))
            self.set_image_scaling(image.get("mean", [0.5] * 3), image.get("std", [0.5] * 3))

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "text":
            ids = x["text"][:, 0, :]  # one text column: [batch, max_length]
            return self.model(input_ids=ids, attention_mask=(ids != self.pad_id).long()).logits
        pixels = self.scaled_inputs(x)["image"]
        return self.model(pixel_values=pixels).logits

    def config(self) -> dict[str, Any]:
        """freestack's settings of the version (``config.json["freestack"]``)."""
        return {
            "freestack_model": "huggingface",
            "task": "classification",
            "pipeline_task": self.pipeline_task,
            "classes": self.classes,
            "base": self.base,
            "pad_id": self.pad_id,
            "peft": self.peft,
            "image": self.image,
            "files": self.weight_files(),
            "modules_to_save": self.modules_to_save(),
        }

    def modules_to_save(self) -> list[str] | None:
        """The modules an adapter version holds in full beside LoRA's (the head, and what the task's
        architecture added to the base, such as a pooler)."""
        if not self.adapter:
            return None
        return sorted(self.model.peft_config["default"].modules_to_save or [])


def save_hf_weights(
    model,
    folder: str | os.PathLike,
    base: dict[str, str],
    adapter: bool,
    peft: bool,
    freestack: dict[str, Any],
) -> None:
    """A transformers model's files as transformers/peft write them: the ``adapter`` (naming its base's Hub
    repo and commit, or its folder), else full weights (LoRA merged into them when ``peft``), and
    ``config.json`` with freestack's settings under ``freestack``."""
    import copy

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if adapter:
        settings = model.peft_config["default"]
        settings.base_model_name_or_path, settings.revision = _peft_base_name(base), _hub_revision(base)
        model.save_pretrained(str(folder))
        (folder / "README.md").unlink(missing_ok=True)  # the registry renders the model card
        model = model.get_base_model()  # its config: the labels
    else:
        if peft:  # merge: true
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(str(folder), safe_serialization=True)
    data = json.loads(model.config.to_json_string(use_diff=False))
    data["freestack"] = freestack
    (folder / "config.json").write_text(json.dumps(data, indent=2, default=str))


def _hub_revision(base: dict[str, str]) -> str | None:
    """The commit a Hub base resolved to (None for a base folder: its path names it)."""
    commit = base.get("commit") or ""
    return commit if _COMMIT.match(commit) else None


def build_pretrained(
    base: Base,
    task: str,
    classes: list[Any],
    *,
    pad_id: int = 0,
    peft: dict[str, Any] | None = None,
    augment: list[str] | None = None,
) -> PretrainedNet:
    """A fresh :class:`PretrainedNet` on ``base`` for ``classes`` (LoRA adapters when ``peft`` is given)."""
    model, new = load_classifier(base.folder, task, classes)
    if peft is not None:
        model = add_lora(model, task, peft, new)
    image = None
    if input_kind(task) == "image":
        _, mean, std = image_settings(base.processor())
        image = {"mean": mean, "std": std, "augment": list(augment or [])}
    return PretrainedNet(
        model, pipeline_task=task, classes=classes, base=base.lineage(), pad_id=pad_id, image=image, peft=peft
    )


def check_pretrained(base: Base, task: str, peft: dict[str, Any] | None) -> None:
    """The base fits the task and LoRA finds modules to adapt: checked on an empty (meta) copy of the
    model as training loads it, before any weight or data is read (PretrainedError otherwise)."""
    config = base.config()
    try:
        model, new = load_classifier(base.folder, task, ["0", "1"], meta=True)
    except PretrainedError as exc:
        raise PretrainedError(
            f"model.base {base.repo!r} is a {config.get('model_type', 'unknown')!r} model, which "
            f"transformers cannot use for {task} ({str(exc)[:200]}); pick a base with a "
            f"{task} architecture, or the other task"
        ) from None
    if peft is not None:
        add_lora(model, task, peft, new)


#: reads one file of a base folder in storage: ``read(uri, name) -> bytes`` (FileNotFoundError when absent)
BaseReader = Callable[[str, str], bytes]


def load_pretrained_version(
    folder: str | os.PathLike,
    config: dict[str, Any],
    map_location: str = "cpu",
    *,
    endpoint: str | None = None,
    token: str | None = None,
    read_base: BaseReader | None = None,
) -> PretrainedNet:
    """A version's model from its folder: full weights as they are; an adapter on its base, fetched
    from the Hub at the recorded commit, or read from the recorded base folder (a path or ``file://``
    URI; another storage URI through ``read_base``) and checked against its recorded sha256."""
    info = config["freestack"]
    task = info["pipeline_task"]
    if "model.safetensors" in info["files"]:
        model, _ = load_classifier(str(folder), task, info["classes"])
    else:
        from peft import PeftModel

        base = adapter_base(info["base"], endpoint=endpoint, token=token, read_base=read_base)
        model = PeftModel.from_pretrained(load_classifier(base.folder, task, info["classes"])[0], str(folder))
    net = PretrainedNet(
        model,
        pipeline_task=task,
        classes=info["classes"],
        base=info["base"],
        pad_id=info.get("pad_id", 0),
        image=info.get("image"),
        peft=info.get("peft"),
    )
    return net.to(map_location).eval()


def adapter_base(
    base: dict[str, str],
    *,
    endpoint: str | None = None,
    token: str | None = None,
    read_base: BaseReader | None = None,
) -> Base:
    """The base an adapter was trained on, as lineage names it: a Hub repo at its commit, or a folder
    whose config and weights still hash to the recorded ``sha256:``."""
    commit = _hub_revision(base)
    if commit is not None:
        return fetch_base(base["repo"], commit, endpoint=endpoint, token=token)
    uri = base["repo"]
    folder = local_folder(uri)
    if folder is None:
        if read_base is None:
            raise PretrainedError(
                f"the adapter's base {uri} is in object storage, which this loader cannot read: load "
                "the version with freestack's registry, or copy the base to a local folder and load it "
                "with transformers, then the adapter with peft"
            )
        folder = copy_base(uri, read_base)
    found = local_base(folder, uri, base.get("revision", "main"))
    if base.get("commit") and found.commit != base["commit"]:
        raise PretrainedError(
            f"the adapter's base {uri} has changed since training: its config and weights hash to "
            f"{found.commit}, the version was trained on {base['commit']}; restore that base"
        )
    return found


def local_folder(uri: str) -> str | None:
    """The local folder a base path or ``file://`` URI names (None for a Hub repo id or another scheme)."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    if "://" in uri:
        return None
    return os.path.abspath(os.path.expanduser(uri))


def copy_base(uri: str, read: BaseReader) -> str:
    """A base folder in storage copied to a local one named after its URI: its config, weights (a
    sharded base's index and shards) and tokenizer or processor files."""
    dest = Path(tempfile.gettempdir()) / f"freestack-base-{hashlib.sha256(uri.encode()).hexdigest()[:16]}"
    dest.mkdir(parents=True, exist_ok=True)
    names = list(BASE_FILES)
    with contextlib.suppress(FileNotFoundError):
        index = json.loads(read(uri, SHARD_INDEX))
        names += [SHARD_INDEX, *sorted(set(index.get("weight_map", {}).values()))]
    for name in names:
        try:
            data = read(uri, name)
        except FileNotFoundError:
            continue
        tmp = dest / f".{name}.part"
        tmp.write_bytes(data)
        tmp.replace(dest / name)
    return str(dest)


def _peft_base_name(base: dict[str, str]) -> str:
    """What adapter_config.json names as the base: the Hub repo id, or the local folder of a path /
    ``file://`` base (what ``from_pretrained`` takes); a base in object storage keeps its URI (lineage
    has the URI and the sha256 of its config and weights)."""
    if _hub_revision(base) is not None:
        return base["repo"]
    return local_folder(base["repo"]) or base["repo"]


__all__ = [
    "ADAPTER_FILES",
    "BASE_FILES",
    "TASKS",
    "Base",
    "BaseReader",
    "HubWeights",
    "PretrainedError",
    "PretrainedNet",
    "adapter_base",
    "add_lora",
    "build_pretrained",
    "check_pretrained",
    "copy_base",
    "fetch_base",
    "folder_digest",
    "image_settings",
    "default_targets",
    "load_classifier",
    "load_pretrained_version",
    "local_base",
    "local_folder",
    "new_modules",
]
