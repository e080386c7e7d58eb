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
from freestack.judging import client as judging
from freestack.ml.generation import (
    CausalLMNet,
    ChatColumns,
    ChatEncoding,
    ChatError,
    add_causal_lora,
    fit_vocabulary,
    load_causal_lm,
    load_tokenizer,
    render,
)
from freestack.ml.grpo import GrpoEncoding, GrpoNet, GrpoSettings
from freestack.ml.preference import PreferenceEncoding, PreferenceNet
from freestack.ml.pretrained import (
    Base,
    build_pretrained,
    check_pretrained,
    copy_base,
    fetch_base,
    image_settings,
    local_base,
)
from freestack.ml.rewards import (
    Reward,
    RewardSet,
    call_user,
    exact_match,
    json_schema,
    length,
    regex,
    user_function,
)
from freestack.ml.rollouts import RolloutServer
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


def chat_encoding(spec: PipelineSpec):
    """The generation task's preprocessing (:class:`~freestack.ml.generation.ChatEncoding`)."""
    d, columns = spec.model.chat, chat_encoding_columns(spec)
    if preference_tuned(spec):  # pairs: the chosen answer is the response, the rejected one beside it
        return PreferenceEncoding(
            chat_tokenizer(spec), columns, spec.model.max_length, rejected=d.rejected or "rejected"
        )
    if reward_tuned(spec):  # prompts: the rollouts are sampled from them
        return GrpoEncoding(chat_tokenizer(spec), columns, spec.model.max_length)
    return ChatEncoding(chat_tokenizer(spec), columns, spec.model.max_length, spec.model.packing)


def preference_tuned(spec: PipelineSpec) -> bool:
    """Whether the spec preference-tunes a language model (``train.objective: dpo``)."""
    return spec.model.generative and spec.train.objective == "dpo"


def reward_tuned(spec: PipelineSpec) -> bool:
    """Whether the spec trains a language model on rewards (``train.objective: grpo``)."""
    return spec.model.generative and spec.train.objective == "grpo"


def reward_set(spec: PipelineSpec, judge_key: str | None = None) -> RewardSet:
    """``train.grpo.rewards`` as functions: the built-ins with their settings, the judge (asked with
    ``judge_key``), a user's own loaded from the project (FreestackError naming the reward when it cannot
    be)."""
    out = []
    for r in spec.train.grpo.rewards:
        source: dict[str, Any] = {"function": r.function}
        if r.function == "judge":
            out.append(judge_reward(spec, r, judge_key))
            continue
        if r.function == "exact_match":
            score = exact_match(r.column or spec.model.chat.response or "response")
        elif r.function == "regex":
            score = regex(r.pattern)
        elif r.function == "json_schema":
            score = json_schema(dict(r.schema_))
        elif r.function == "length":
            score = length(r.max_tokens)
        else:
            fn, source = user_function(r.function, Path(checkout_dir()))
            score = call_user(fn, r.function)
        out.append(Reward(r.label, r.weight, score, source))
    return RewardSet(tuple(out))


def judge_reward(spec: PipelineSpec, r, api_key: str | None) -> Reward:
    """The judge of ``gate.judge`` as a reward (:class:`~freestack.judging.client.JudgeClient`, pointwise
    whatever the gate's mode, its rubric when the gate's is pointwise): each completion's score 1-5 read
    as ``(score - 1) / 4``, the reference from ``column`` (default the response column). A judging that
    failed scores 0; a batch with more failed than ``gate.judge.max_failures`` allows fails the training
    with the judge's error."""
    judge = judging.with_rubric_file(spec.gate.judge)
    if judge.mode != "pointwise":
        judge = judge.model_copy(update={"mode": "pointwise", "rubric": None})
    column = r.column or spec.model.chat.response or "response"
    client: list[judging.JudgeClient] = []  # made when first asked: lineage reads the reward keyless

    def batch(samples) -> list[float]:
        if not client:
            client.append(judging.JudgeClient(judge, api_key))
        refs = [str(s.row.get(column) or "") for s in samples]
        verdicts = judging.pointwise(
            client[0], [s.prompt for s in samples], refs, [s.completion for s in samples]
        )
        failed = [v for v in verdicts if v.value is None]
        if failed and len(failed) > judge.max_failures * len(samples):
            raise FreestackError(
                f"train.grpo.rewards {r.label}: {len(failed)} of {len(samples)} judgings failed, over "
                f"gate.judge.max_failures {judge.max_failures:g} (gate.judge.url {judge.url}, model "
                f"{judge.model}): {judging.failure_kinds(failed)}. Fix the judge (or its key), then clear "
                "the task"
            )
        return [0.0 if v.value is None else (float(v.value) - 1) / 4 for v in verdicts]

    source = {"function": "judge", "url": judge.url, "model": judge.model, "rubric": judge.template}
    return Reward(r.label, r.weight, lambda s: batch([s])[0], source, batch=batch)


def grpo_settings(spec: PipelineSpec) -> GrpoSettings:
    g = spec.train.grpo
    return GrpoSettings(
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        epsilon=g.epsilon,
        loss=g.loss,
        scale_rewards=g.scale_rewards,
        rollouts=g.rollouts,
    )


def check_objective(spec: PipelineSpec) -> None:
    """``train.objective: dpo`` goes with a text-generation model reading preference pairs (``model.data``
    with chosen and rejected columns), and such pairs with it (FreestackError naming the setting)."""
    if spec.train.objective == "dpo" and not spec.model.generative:
        raise FreestackError(
            "train.objective dpo preference-tunes a language model: it needs model.type huggingface "
            "and model.task text-generation"
        )
    pairs = spec.model.chat.preference
    if preference_tuned(spec) and not pairs:
        raise FreestackError(
            "train.objective dpo reads preference pairs: set model.data: {prompt: <column>, chosen: "
            "<column of the preferred answer>, rejected: <column of the worse one>} (or messages: <column "
            "of the chat so far> instead of prompt, or prompt: null for whole chats in chosen and rejected)"
        )
    if spec.model.generative and pairs and spec.train.objective != "dpo":
        raise FreestackError(
            "model.data names chosen and rejected columns (preference pairs), which train.objective "
            "dpo learns from; set train.objective: dpo, or give prompt and response for sft"
        )
    if preference_tuned(spec) and spec.model.packing:
        raise FreestackError("model.packing is for train.objective sft: a preference pair is not packed")
    check_grpo(spec)


def check_grpo(spec: PipelineSpec) -> None:
    """``train.objective: grpo`` goes with a language model, ``train.grpo``'s rewards, prompts (not pairs,
    not packed) read into memory, in one process or data-parallel ranks (FreestackError naming the
    setting)."""
    if spec.train.objective != "grpo":
        return
    problems = {
        "train.objective grpo trains a language model on rewards: it needs model.type huggingface and "
        "model.task text-generation": not spec.model.generative,
        "train.objective grpo needs train.grpo.rewards: the functions that score the sampled answers, e.g. "
        "[{function: exact_match}]": spec.train.grpo is None,
        "train.objective grpo samples answers to prompts: give model.data prompt and response (the "
        "reference) columns, not chosen and rejected": spec.model.chat.preference,
        "model.packing is for train.objective sft: GRPO's prompts are not packed": spec.model.packing,
        "train.objective grpo samples answers on each rank alone, which FSDP's sharded forward cannot "
        "(every rank must run each forward): use train.distributed.strategy ddp": (
            spec.train.distributed.world_size > 1 and spec.train.distributed.strategy == "fsdp"
        ),
        "the judge reward trains in one process: its key is read by the task and never handed to ranks "
        "(remove train.distributed, or the judge reward)": (
            spec.train.distributed.world_size > 1 and spec.judge_rewarded
        ),
    }
    for message, wrong in problems.items():
        if wrong:
            raise FreestackError(message)


def build_causal_model(
    spec: PipelineSpec, pre, judge_key: str | None = None, rollout_key: str | None = None
) -> Any:
    """The base causal LM (with LoRA adapters when the spec asks for them), for ``pre``'s conversations;
    ``judge_key``: the judge's key, for a GRPO training the judge rewards; ``rollout_key``: the rollout
    server's, for one that server samples (``train.grpo.rollouts: server``)."""
    model = load_causal_lm(pretrained_base(spec).folder)
    peft = peft_settings(spec)
    resized = fit_vocabulary(model, chat_tokenizer(spec), lora=peft is not None)
    if resized:
        log.warning("model.base: %s", resized)
    if peft is not None:
        model = add_causal_lora(model, peft)
    common: dict[str, Any] = {  # what the net is told either way
        "base": pretrained_base(spec).lineage(),
        "columns": pre.columns,
        "max_length": spec.model.max_length,
        "peft": peft,
    }
    if preference_tuned(spec):
        return PreferenceNet(model, beta=spec.train.dpo.beta, sft_weight=spec.train.dpo.sft_weight, **common)
    if reward_tuned(spec):
        return GrpoNet(
            model,
            grpo=grpo_settings(spec),
            rewards=reward_set(spec, judge_key),
            server=rollout_server(spec, rollout_key),
            **common,
        )
    return CausalLMNet(model, packing=spec.model.packing, **common)


def rollout_server(spec: PipelineSpec, key: str | None) -> RolloutServer | None:
    """The deployment that samples a GRPO training's rollouts (``train.grpo.rollouts: server``), or None."""
    s = spec.train.grpo.server
    if s is None:
        return None
    return RolloutServer(
        s.url, s.model, key, adapter_dir=s.adapter_dir, concurrency=s.concurrency, timeout=s.timeout_s
    )


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


def build_pretrained_model(
    spec: PipelineSpec, data, judge_key: str | None = None, rollout_key: str | None = None
) -> Any:
    """The base with a head for the data's classes (and LoRA adapters when the spec asks for them); a
    causal LM for a text-generation spec (the keys: as :func:`build_causal_model` takes them)."""
    if spec.model.generative:
        return build_causal_model(spec, data.pre, judge_key, rollout_key)
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
        out["objective"] = objective_lineage(spec)
    return out


def objective_lineage(spec: PipelineSpec) -> dict[str, Any]:
    """What the language model was trained to do: sft, or dpo with its beta and loss (the reference being
    the starting model, its log-probabilities computed once before training)."""
    if reward_tuned(spec):
        return {
            "name": "grpo",
            **spec.train.grpo.model_dump(exclude={"rewards"}),
            "rewards": reward_set(spec).lineage(),
            "reference": "the starting model (its LoRA adapters disabled, or a frozen copy)"
            if spec.train.grpo.beta
            else "none (beta 0)",
        }
    if not preference_tuned(spec):
        return {"name": "sft"}
    return {
        "name": "dpo",
        "beta": spec.train.dpo.beta,
        "loss": spec.train.dpo.loss,
        "sft_weight": spec.train.dpo.sft_weight,
        "reference": "the starting model (log-probabilities computed once before training)",
        "rejected": spec.model.chat.rejected,
    }


__all__ = [
    "build_causal_model",
    "build_pretrained_model",
    "chat_encoding",
    "chat_template",
    "chat_tokenizer",
    "check_causal_base",
    "check_objective",
    "check_pretrained_model",
    "encoder_settings",
    "is_storage_base",
    "objective_lineage",
    "peft_settings",
    "preference_tuned",
    "reward_set",
    "reward_tuned",
    "pretrained_base",
    "pretrained_lineage",
    "pretrained_task",
    "storage_base_uri",
]
