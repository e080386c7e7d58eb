"""The train stage: lake window -> split -> preprocessing -> fit -> test metrics -> model version.

Glue between storage (ObjectStoragePath), the plain ML code in ``freestack.ml`` and tracking.
Callable from an Airflow task, a notebook or a script alike.

    candidates/<model>/<version>/                                 a model version folder (its files:
                                                                   freestack.version.files); registered
                                                                   into registry/<model>/<version>/ by
                                                                   the gate, freestack.registry.core
    runs/<pipeline>/<run_key>/train/checkpoint.safetensors        (resumable; removed once the model is
                                                                   written, unless keep_checkpoints)

A retry of a killed training (the same run key) resumes from its checkpoint and records into the same
W&B run (its id is made from the pipeline and the run key; ``resume="allow"``).

Importing this module loads torch, pandas and pyarrow (through ``freestack.ml``): the operators and the
CLI, which the DAG file and the shell load, import it inside the functions that train. The request, its
outcome and its places are :mod:`freestack.train.request`'s, which loads none of them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from freestack import __version__, step_cache
from freestack.errors import FreestackError
from freestack.keys import NO_KEYS, Keys
from freestack.ml.checkpoint import CHECKPOINT
from freestack.ml.contract import CustomModelError, FeatureGroup, ModelInputs
from freestack.ml.custom import build_custom, check_custom
from freestack.ml.distributed import backend_for
from freestack.ml.features import KINDS, TOKENIZER_FILE, EncoderOptions, EncodingError
from freestack.ml.lm.chat import ChatError
from freestack.ml.lm.prompts import save_tokenizer
from freestack.ml.loop import TrainConfig, evaluate_source, fit_source, resolve_device, to_tensors
from freestack.ml.metrics import check_kept
from freestack.ml.models import FreestackNet
from freestack.ml.prep import Preprocessing, infer_task, split_of_keys
from freestack.ml.stream import EncodedSpool, InMemory, Streamed
from freestack.settings import checkout_dir, settings
from freestack.specbase import block_problems
from freestack.storage import join, storage_root, write_bytes
from freestack.tracking.wandb import WandbSettings, start_run
from freestack.train.costs import Meter, TrainCosts
from freestack.train.objectives import (
    Objective,
    build_objective,
    chat_encoding,
    check_objective,
    objective_lineage,
)
from freestack.train.pretrained import (
    build_pretrained_model,
    check_pretrained_model,
    encoder_settings,
    pretrained_base,
    pretrained_lineage,
)
from freestack.train.request import (
    Places,
    TrainingError,
    TrainOutcome,
    TrainRequest,
    places,
    tracking_id,
)
from freestack.train.spec import ModelSpec, TrainSpec
from freestack.train.stream import FrameRows, WindowData, choose_mode, spool_window
from freestack.train.window import Window, WindowError, fix_window, read_window
from freestack.version.write import (
    write_history,
    write_lineage,
    write_metrics,
    write_preprocessing,
    write_steps,
)

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)


@dataclass
class StoreCheckpoints:
    """CheckpointStore over object storage, written atomically."""

    folder: Any  # ObjectStoragePath

    def save(self, name: str, data: bytes) -> None:
        write_bytes(join(self.folder, name), data)

    def load(self, name: str) -> bytes | None:
        p = join(self.folder, name)
        return p.read_bytes() if p.exists() else None


def load_window(
    spec: PipelineSpec,
    end_ds: str,
    window_days: int,
    fixed: dict[str, Any] | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
):
    """The window ending at ``end_ds`` (:class:`~freestack.train.stream.WindowData`): the run's ``fixed``
    window when it has one (:mod:`freestack.train.window`), else the lake as it is; in memory, or
    spooled into ``splits`` when ``train.data`` says so (:func:`~freestack.train.stream.choose_mode`)."""
    try:
        window = Window.from_dict(fixed) if fixed else fix_window(spec, end_ds, window_days)
        mode, reason = choose_mode(spec, window.of_days(window_days))
        log.info("reading the window %s: %s", "into memory" if mode == "memory" else "as a stream", reason)
        if mode == "memory":
            frame, parts = read_window(spec, window, window_days)
            return WindowData(parts, mode, reason, frame=frame)
        spool = spool_window(spec, window, window_days, window_columns(spec), splits)
        return WindowData(spool.partitions, mode, reason, spool=spool)
    except WindowError as exc:
        raise TrainingError(str(exc)) from None


def window_columns(spec: PipelineSpec) -> list[str]:
    """The columns a training reads: the key, the features and the target."""
    schema = spec.source.schema_
    columns = [schema.key, *spec.model_features, schema.target]
    if spec.model.generative and spec.train.objective == "grpo":  # the rewards see every column of a row
        columns += [c.name for c in schema.fields]
    return list(dict.fromkeys(columns))


def effective_spec(spec: PipelineSpec, req: TrainRequest) -> PipelineSpec:
    """The spec with the request's form values and overrides applied, validated like the spec itself."""
    from pydantic import ValidationError

    train_values = spec.train.model_dump()
    for key in ("window_days", "epochs", "learning_rate", "batch_size", "seed"):
        if getattr(req, key) is not None:
            train_values[key] = getattr(req, key)
    train_over = dict(req.overrides.get("train") or {})
    for node in ("dpo", "grpo"):  # a trial's dpo.<setting> is merged into train.dpo (grpo: train.grpo)
        if isinstance(train_over.get(node), dict) and isinstance(train_values.get(node), dict):
            train_over[node] = {**train_values[node], **train_over[node]}
    train_values.update(train_over)
    model_over = dict(req.overrides.get("model") or {})
    model_values = spec.model.model_dump(by_alias=True)
    # a trial's init / LoRA values are merged into the spec's, not put in their place
    for node in ("init", "peft"):
        if node in model_over and isinstance(model_values.get(node), dict):
            model_over[node] = {**model_values[node], **model_over[node]}
    model_values.update(model_over)
    unknown = set(req.overrides) - {"train", "model"}
    if unknown:
        raise TrainingError(
            f"overrides {sorted(unknown)} are not spec blocks; only train and model can change"
        )
    try:
        return spec.model_copy(
            update={
                "train": TrainSpec.model_validate(train_values),
                "model": ModelSpec.model_validate(model_values),
            }
        )
    except ValidationError as exc:
        raise TrainingError(f"the run's hyperparameters are invalid: {block_problems(exc)}") from None


#: train fields that say when or where a training runs, not what it learns: not in :func:`keyed_spec`
NOT_INPUTS = {"cache", "schedule", "ingest_wait_minutes", "ingest_poke_seconds", "queue"}


def keyed_spec(run_spec: PipelineSpec) -> str:
    """The digest of what in a run's spec (:func:`effective_spec`) decides the trained weights: its name,
    ``source``, ``model`` and ``train`` blocks less :data:`NOT_INPUTS`. ``train.cache`` keys on it
    (:mod:`freestack.train.reuse`), and lineage records it (``keyed_spec``), so that a cache entry naming a
    version can be checked against what the version was trained with."""
    blocks = {"source": run_spec.source, "model": run_spec.model, "train": run_spec.train}
    return step_cache.spec_digest({"name": run_spec.name, **blocks}, {"train": NOT_INPUTS})


@dataclass
class Prepared:
    """A window split and preprocessed for one training: what the loop and the test need."""

    task: str
    features: list[str]
    pre: Any  # freestack.ml.prep.Preprocessing
    train: Any  # the splits: freestack.train.stream.FrameRows (in memory) or SpoolRows (streamed)
    val: Any
    test: Any
    partitions: list[dict[str, Any]]
    data: dict[str, Any] = field(default_factory=dict)  # how the window was read: mode, reason
    shuffle_buffer: int = 65_536
    chunk_rows: int = 16_384
    objective: str = "sft"  # a language model's: sft, dpo (preference pairs) or grpo (rewards)

    def rows(self) -> dict[str, int]:
        return {"train": self.train.rows, "val": self.val.rows, "test": self.test.rows}

    @property
    def loop_task(self) -> str:
        """The task the loop trains and scores: a preference-tuned model's pairs are scored by DPO's
        rewards (freestack.ml.lm.preference), a GRPO-trained one's prompts by its reward functions
        (freestack.ml.lm.grpo); the version stays a text-generation one (``task``)."""
        return {"dpo": "preference", "grpo": "grpo"}.get(self.objective, self.task)


def check_trainable(spec: PipelineSpec) -> None:
    """TrainingError unless the spec names a target, a key and at least one feature."""
    schema = spec.source.schema_
    if schema.target is None:
        raise TrainingError(f"pipeline {spec.name!r} has no source.schema.target: training needs one")
    if schema.key is None:
        raise TrainingError(f"pipeline {spec.name!r} has no source.schema.key: the split is keyed on it")
    if not spec.model_features:
        raise TrainingError(
            f"pipeline {spec.name!r} has no feature columns (int, float, bool, category, text or "
            "image) but its key and target; declare some in source.schema or list model.features"
        )
    if spec.model.type == "custom":
        check_custom_model(spec)
    if spec.train.distributed.strategy == "fsdp" and spec.model.peft is not None:
        raise TrainingError(
            f"pipeline {spec.name!r}: train.distributed.strategy fsdp shards a full fine-tune; LoRA "
            "trains a few parameters of a base that fits one device: use strategy ddp"
        )
    try:
        check_objective(spec)
    except FreestackError as exc:
        raise TrainingError(f"pipeline {spec.name!r}: {exc}") from None
    if spec.model.type == "huggingface":
        check_hub_model(spec)


def check_hub_model(spec: PipelineSpec) -> None:
    """A pretrained base is fetched and checked against the task and LoRA settings before any data is
    read (TrainingError naming the base and what to do)."""
    try:
        check_pretrained_model(spec)
    except FreestackError as exc:
        raise TrainingError(f"pipeline {spec.name!r}: {exc}") from None


def model_inputs(spec: PipelineSpec, task: str, classes: list, pre=None):
    """What a custom model's constructor is told about the data (:class:`~freestack.ml.contract.ModelInputs`):
    from the fitted preprocessing ``pre``, or, before any data is read, from the spec alone."""
    n_outputs = len(classes) if task == "classification" else 1
    sizes = group_sizes(pre.encoder if pre is not None else None, spec)
    groups = {g: FeatureGroup(g, **v) for g, v in sizes.items()}
    target = spec.source.schema_.target or ""
    return ModelInputs(task, n_outputs, groups, list(classes), target, list(spec.model.image.augment))


def group_sizes(encoder, spec: PipelineSpec) -> dict[str, dict[str, Any]]:
    """The feature groups' sizes: the fitted ``encoder``'s, else the spec's guess (vocabularies of a
    category's ``allowed`` values or 8, the text settings' vocabulary size) for a check before data."""
    if encoder is not None:
        return encoder.group_sizes()
    if all(KINDS[t] == "numeric" for t in spec.feature_kinds.values()):
        return {"numeric": {"names": spec.model_features, "size": len(spec.model_features)}}
    columns = {c.name: c for c in spec.source.schema_.fields}
    sizes: dict[str, dict[str, Any]] = {}
    for name, kind in spec.feature_kinds.items():
        group = sizes.setdefault(
            KINDS[kind], {"names": [], "size": 0, "vocab_sizes": [], "shape": [], "pad_id": 0}
        )
        group["names"].append(name)
        group["size"] += 1
        if kind == "category":
            group["vocab_sizes"].append(len(columns[name].allowed or []) + 1 if columns[name].allowed else 8)
    m = spec.model
    if "text" in sizes:
        sizes["text"].update(
            vocab_sizes=[m.text.vocab_size], shape=[sizes["text"]["size"], m.text.max_length]
        )
    if "image" in sizes:
        sizes["image"]["shape"] = [m.image.channels, *m.image.size]
    return sizes


def check_custom_model(spec: PipelineSpec) -> None:
    """Import the spec's custom model, build it and pass a batch through it before any data is read:
    a module that fails to import, has the wrong signature or answers the wrong shape fails here,
    with the file, the line and the contract (TrainingError)."""
    task = spec.task or "classification"
    target = next((c for c in spec.source.schema_.fields if c.name == spec.source.schema_.target), None)
    classes = list(getattr(target, "allowed", None) or [0, 1, 2]) if task == "classification" else []
    model = _build_custom(spec, model_inputs(spec, task, classes))
    try:
        check_custom(model)
    except CustomModelError as exc:
        raise TrainingError(f"pipeline {spec.name!r}: {exc}") from None


def prepare(spec: PipelineSpec, end_ds: str, window=None, fixed: dict[str, Any] | None = None) -> Prepared:
    """The window (loaded, or ``window``: a ``load_window`` result) split on the row key, with
    preprocessing fitted on the train split (in one streaming pass when the window is spooled)."""
    schema, t = spec.source.schema_, spec.train
    data = window if window is not None else load_window(spec, end_ds, t.window_days, fixed)
    splits = _splits(spec, data)
    sizes = {s: rows.rows for s, rows in splits.items()}
    if min(sizes.values()) == 0:
        raise TrainingError(
            f"the window up to {end_ds} has {sum(sizes.values())} rows: too few for train/val/test splits "
            f"({sizes['train']}/{sizes['val']}/{sizes['test']}); widen window_days"
        )
    val, test = splits["val"], splits["test"]
    if spec.model.generative:
        task, (pre, summary) = "generation", _prepare_chats(spec, data, splits)
    else:
        task = spec.task or _infer_task(spec, splits.values())
        try:
            pre = Preprocessing.fit_chunks(
                splits["train"].chunks,
                spec.model_features,
                schema.target,
                task,
                spec.feature_kinds,
                encoder_options(spec),
            )
        except EncodingError as exc:
            raise TrainingError(
                f"pipeline {spec.name!r}: the training split cannot be encoded: {exc}"
            ) from None
        if task == "classification":  # labels the training split never saw cannot be scored
            val, test = val.where_in(schema.target, pre.classes), test.where_in(schema.target, pre.classes)
        summary = data.summary()
    return Prepared(
        task,
        spec.model_features,
        pre,
        splits["train"],
        val,
        test,
        data.partitions,
        summary,
        t.data.shuffle_buffer,
        t.data.chunk_rows,
        objective=t.objective,  # a language model's (check_trainable: sft for every other model)
    )


def _prepare_chats(spec: PipelineSpec, data, splits: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """A text-generation window's preprocessing and summary: the splits' conversations tokenized with the
    base's chat template (held in memory: an instruction set is small next to the model). How many were
    cut to ``max_length``, or dropped for having no answer token left, goes into the version's lineage."""
    pre = chat_encoding(spec)
    counts: dict[str, dict[str, int]] = {}
    for name, rows in splits.items():
        try:
            enc = pre.encode_frame(rows.frame)
        except ChatError as exc:
            raise TrainingError(f"pipeline {spec.name!r}, {name} split: {exc}") from None
        counts[name] = {
            "conversations": enc.conversations,
            "tokens": enc.tokens,
            "cut": enc.cut,
            "dropped": enc.dropped,
            "rows": len(enc.y),
        }
        if enc.cut or enc.dropped:
            log.warning(
                "%s split: %d conversations over model.max_length %d were cut, %d dropped with no answer left",
                name,
                enc.cut,
                spec.model.max_length,
                enc.dropped,
            )
    return pre, {**data.summary(), "conversations": counts}


def _splits(spec: PipelineSpec, data) -> dict[str, Any]:
    """The train/val/test rows of a loaded window: masks of the frame, or the spooled files."""
    t = spec.train
    if data.spool is not None:
        if data.spool.fractions != (t.val_fraction, t.test_fraction):
            raise TrainingError(
                f"the spooled window was split {data.spool.fractions} (val, test) but this run asks for "
                f"{(t.val_fraction, t.test_fraction)}; load the window for this run"
            )
        return dict(data.spool.splits)
    df = data.frame
    split = split_of_keys(df[spec.source.schema_.key], t.val_fraction, t.test_fraction, salt=spec.model_name)
    return {s: FrameRows(df[split == s]) for s in ("train", "val", "test")}


def _infer_task(spec: PipelineSpec, splits) -> str:
    """The task from the window's target column (only that column is gathered)."""
    import pandas as pd

    schema = spec.source.schema_
    target_type = next(c.type for c in schema.fields if c.name == schema.target)
    y = pd.concat([rows.values(schema.target) for rows in splits], ignore_index=True)
    return infer_task(y, target_type)


def encoder_options(spec: PipelineSpec):
    """The spec's ``model.category``/``text``/``image`` settings for :mod:`freestack.ml.features` (a
    named Hub tokenizer is fetched here)."""
    m = spec.model
    tokenizer, source = None, m.text.tokenizer
    if (
        m.text.tokenizer != "train"
        and any(t == "text" for t in spec.feature_kinds.values())
        and m.type != "huggingface"
    ):
        tokenizer, commit = hub_tokenizer(m.text.tokenizer, m.text.revision)
        source = f"{m.text.tokenizer}@{commit}" if commit else m.text.tokenizer
    options: dict[str, Any] = dict(
        category_max_size=m.category.max_size,
        category_min_count=m.category.min_count,
        text_vocab_size=m.text.vocab_size,
        text_max_length=m.text.max_length,
        tokenizer_json=tokenizer,
        tokenizer_source=source,
        image_size=(m.image.size[0], m.image.size[1]),
        image_channels=m.image.channels,
        augment=tuple(m.image.augment),
    )
    if m.type == "huggingface":  # the base's own tokenizer, or its image processor's size
        options.update(encoder_settings(spec))
    return EncoderOptions(**options)


def hub_tokenizer(repo: str, revision: str, endpoint: str | None = None) -> tuple[str, str]:
    """(the ``tokenizer.json`` of a Hub repo, the commit ``revision`` resolved to), through
    ``huggingface_hub`` (its token and cache; the endpoint given, else huggingface_hub's own
    ``HF_ENDPOINT``, read now: the library reads it once, at import). The commit is what the cache
    filed it under (``snapshots/<commit>/``), so a branch that moves later does not change the record."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(
            repo, "tokenizer.json", revision=revision, endpoint=endpoint or os.environ.get("HF_ENDPOINT")
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise TrainingError(
            f"model.text.tokenizer {repo!r} (revision {revision}): its tokenizer.json cannot be "
            f"fetched from the Hub ({type(exc).__name__}: {str(exc)[:200]}); check the repo id and "
            "the huggingface connection, or use tokenizer: train"
        ) from None
    commit = os.path.basename(os.path.dirname(path))
    with open(path, encoding="utf-8") as f:
        return f.read(), commit if re.fullmatch(r"[0-9a-f]{40}", commit) else ""


def model_kind(spec: PipelineSpec) -> str:
    """``model.type``, with ``auto`` meaning a CNN when the features form an image, else an MLP."""
    if spec.model.type != "auto":
        return spec.model.type
    return "cnn" if spec.model.image_shape else "mlp"


def train_objective(spec: PipelineSpec, data: Prepared, keys: Keys = NO_KEYS) -> Objective:
    """What the loop trains: the spec's model, from the seed, with its objective (a language model's:
    ``keys`` for the endpoints it calls, the judge's and the rollout server's)."""
    import torch

    torch.manual_seed(spec.train.seed)
    if spec.model.generative:
        return build_objective(spec, data.pre, keys)
    return Objective(build_model(spec, data))


def build_model(spec: PipelineSpec, data: Prepared):
    """The spec's network (an MLP, a CNN when the features form an image, a fine-tuned classifier, or the
    user's own module), scaled for the data; seeded by :func:`train_objective`."""
    if spec.model.type == "huggingface":  # the base's weights; pixels normalised as its processor says
        return build_pretrained_model(spec, data)
    if spec.model.type == "custom":
        model = _build_custom(spec, model_inputs(spec, data.task, data.pre.classes, data.pre))
    else:
        model = FreestackNet(
            kind=model_kind(spec),
            task=data.task,
            n_features=len(data.pre.numeric),
            n_outputs=len(data.pre.classes) if data.task == "classification" else 1,
            hidden=list(spec.model.hidden),
            channels=list(spec.model.channels),
            image_shape=list(spec.model.image_shape) if spec.model.image_shape else None,
            dropout=spec.model.dropout,
            features=data.features,
            classes=data.pre.classes,
            **_group_args(spec, data.pre),
        )
    model.set_scaling(data.pre.mean, data.pre.std)
    model.set_target_scaling(data.pre.target_mean, data.pre.target_std)
    image = data.pre.encoder.image if data.pre.encoder is not None else None
    if image is not None:
        model.set_image_scaling(image.mean, image.std)
    return model


def _group_args(spec: PipelineSpec, pre) -> dict[str, Any]:
    """FreestackNet's arguments for category/text/image inputs; none for numeric columns only (so the
    config of such a model is what it always was)."""
    if pre.encoder is None:
        return {}
    return {"inputs": pre.encoder.group_sizes(), "augment": list(spec.model.image.augment)}


def _build_custom(spec: PipelineSpec, inputs: ModelInputs):
    """The spec's custom module built for ``inputs`` (TrainingError naming the file and the contract)."""
    try:
        return build_custom(
            spec.model.module, spec.model.class_, dict(spec.model.init), inputs, checkout_dir()
        )
    except CustomModelError as exc:
        raise TrainingError(f"pipeline {spec.name!r}: {exc}") from None


def loop_config(spec: PipelineSpec, req: TrainRequest | None = None):
    """The training loop's settings: the spec's ``train:`` block, and the request's kept metric."""
    names = {f.name for f in fields(TrainConfig)}  # the loop's settings of the same names
    return TrainConfig(
        **spec.train.model_dump(include=names),
        keep_metric=req.keep_metric if req is not None else None,
        keep_higher=req.keep_higher if req is not None else None,
    )


def train(
    spec: PipelineSpec,
    req: TrainRequest,
    *,
    tracking_settings=None,
    on_epoch=None,
    window=None,
    ranks=None,
) -> TrainOutcome | None:
    """Train one model. ``on_epoch(row)`` sees each epoch's metrics and may return True to stop;
    ``window`` is a ``load_window`` result to reuse (an agent running several trials loads it once);
    ``tracking_settings`` are the W&B settings (default: :meth:`WandbSettings.from_environment`).

    ``ranks``: this process is one rank of a data-parallel training (:mod:`freestack.train.distributed`
    starts them); rank 0 returns the outcome, the others None."""
    check_trainable(spec)
    spec = effective_spec(spec, req)
    _check_kept_metric(spec, req)
    loaded = (
        window if window is not None else load_window(spec, req.end_ds, spec.train.window_days, req.window)
    )
    try:
        return _train(spec, req, prepare(spec, req.end_ds, loaded), tracking_settings, on_epoch, ranks)
    finally:
        if window is None:  # a window loaded here (a spool folder) goes; a caller's stays for its next trial
            loaded.close()


def _check_kept_metric(spec: PipelineSpec, req: TrainRequest) -> None:
    """Refuse, before the window is read, a ``keep_metric`` the spec's task does not record (UnknownMetric).
    A task the data decides, or a DPO or GRPO model that scores itself, is checked at the first epoch."""
    if req.keep_metric and spec.task and spec.train.objective not in ("dpo", "grpo"):
        check_kept(spec.task, req.keep_metric)


def _train(
    spec: PipelineSpec, req: TrainRequest, data: Prepared, tracking_settings, on_epoch, ranks=None
) -> TrainOutcome | None:
    meter = Meter.start()
    objective = train_objective(spec, data, req.keys)
    cfg = loop_config(spec, req)
    where = places(spec, req)
    if ranks is not None and not ranks.main:  # its share of the steps; rank 0 validates, reports and writes
        _fit_and_test(objective, data, cfg, None, where, None, ranks)
        return None
    settings = tracking_settings if tracking_settings is not None else WandbSettings.from_environment()
    with _tracking_run(spec, req, data, where, cfg, settings) as run:
        result, metrics = _fit_and_test(objective, data, cfg, run, where, on_epoch, ranks)
        p = spec.prices
        costs = meter.read(result, p.cpu_hour, p.gpu_hour, p.currency)
        recorded = _write_version(spec, req, data, where, cfg, result, metrics, run, costs)
        tracking = run.as_dict()
    _drop_checkpoint(where)
    log.info(
        "model %s %s: %s; test %s; files in %s",
        spec.model_name,
        where.version,
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
        data.task,
        where.version_dir,
    )
    return TrainOutcome(
        version=where.version,
        version_uri=str(where.version_dir),
        metrics=metrics,
        partitions=data.partitions,
        summary=result.summary(),
        tracking=tracking,
        costs=recorded,
    )


def _tracking_run(spec: PipelineSpec, req: TrainRequest, data: Prepared, where: Places, cfg, settings):
    """The W&B run of one training: its config, tags and group."""
    config = {
        "pipeline": spec.name,
        "model": spec.model.model_dump(by_alias=True),
        "train": {**cfg.__dict__, "window_days": spec.train.window_days},
        "task": data.task,
        "kind": model_kind(spec),
        "features": len(data.features),
        "rows": data.rows(),
        "data": data.data,
        **({"objective": objective_lineage(spec)} if spec.model.generative else {}),
        "end_ds": req.end_ds,
        **(req.tracking.get("config") or {}),
    }
    tags = [f"pipeline:{spec.name}", f"interval:{req.end_ds}"]
    if req.airflow.get("run_id"):
        tags.append(f"airflow_run:{req.airflow['run_id']}"[:64])
    tags.extend(req.tracking.get("tags") or [])
    return start_run(
        settings,
        project=spec.name,
        name=req.tracking.get("name") or f"{spec.name}-{where.version}",
        config=config,
        tags=tags,
        group=req.tracking.get("group"),
        job_type=req.tracking.get("job_type", "train"),
        existing=req.tracking.get("run"),
        run_id=tracking_id(spec, req),
    )


def _figure(value: Any) -> bool:
    """A number W&B's summary can chart (not a flag, not text, not None)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _drop_checkpoint(where: Places) -> None:
    """The model is written: its checkpoint is dead weight (kept with the ``keep_checkpoints`` setting)."""
    if settings().keep_checkpoints:
        return
    with contextlib.suppress(FileNotFoundError):
        join(where.run_dir, CHECKPOINT).unlink()


def prune_checkpoints(spec: PipelineSpec) -> list[str]:
    """Remove the checkpoints under ``runs/<pipeline>/`` older than ``checkpoint_retention_days``: trainings
    that were killed and never retried. Best effort (a listing that fails is logged, never raised);
    returns the URIs removed."""
    import time

    folder = join(storage_root(spec.storage_root), "runs", spec.name)
    cutoff = time.time() - settings().checkpoint_retention_days * 86400
    removed = []
    try:
        found = folder.fs.find(folder.path, detail=True) if folder.exists() else {}
        for path, info in found.items():
            modified = _modified(info)
            if str(path).rsplit("/", 1)[-1] == CHECKPOINT and modified is not None and modified < cutoff:
                folder.fs.rm_file(path)
                removed.append(str(path))
    except Exception as exc:  # a cleanup must never fail a training
        log.warning("could not prune old checkpoints under %s: %s", folder, exc)
    if removed:
        log.info(
            "removed %d checkpoint(s) older than %g days under %s",
            len(removed),
            settings().checkpoint_retention_days,
            folder,
        )
    return removed


def _modified(info: dict[str, Any]) -> float | None:
    """An fsspec listing entry's modification time in seconds (local: ``mtime``; S3: ``LastModified``);
    None when the backend gives none (such a checkpoint is kept)."""
    value = info.get("mtime") or info.get("LastModified") or info.get("modified")
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def _fit_and_test(objective: Objective, data: Prepared, cfg, run, where: Places, on_epoch, ranks=None):
    """The loop (each epoch logged to W&B and offered to ``on_epoch``), then the test split's metrics.
    A rank other than 0 trains on its shard only (``run`` None) and returns None."""

    def epoch_done(row: dict[str, float]) -> bool:
        run.log({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        return bool(on_epoch(row)) if on_epoch is not None else False

    def steps_done(steps: list[dict[str, float]]) -> None:  # every step so far, as one W&B table
        columns = list(steps[-1])
        run.log_table("train_steps", columns, [[s.get(c) for c in columns] for s in steps])

    device = resolve_device(cfg.device)
    if ranks is not None and device.type == "cuda":
        device = ranks.device()
    with contextlib.ExitStack() as stack:
        splits = ("train", "val", "test") if ranks is None or ranks.main else ("train", "val")
        # the objective's view of them: DPO's reference log-probabilities, GRPO's rollouts
        sources = objective.splits({s: batch_source(data, s, device, stack, ranks) for s in splits}, device)
        result = fit_source(
            objective.model,
            sources["train"],
            sources["val"],
            cfg,
            task=data.loop_task,
            ranks=ranks,
            checkpoints=StoreCheckpoints(where.run_dir),
            on_epoch=epoch_done if run is not None else None,
            on_steps=steps_done if run is not None else None,
        )
        if run is None:
            return None
        # FSDP: rank 0's whole copy
        test = evaluate_source(result.model, sources["test"], data.loop_task, device)
    metrics = {f"test_{k}": v for k, v in test.items()}
    metrics.update({f"best_val_{result.metric}": result.best_metric, "best_epoch": result.best_epoch})
    run.summary_update(metrics)
    return result, metrics


def batch_source(data: Prepared, split: str, device, stack: contextlib.ExitStack, ranks=None):
    """What the loop reads a split from: its tensors on ``device`` (in memory), or its spooled rows encoded
    once into raw arrays on local disk (removed when ``stack`` closes) and streamed from there, shuffled
    through ``train.data.shuffle_buffer`` rows. On a data-parallel rank, the train split is the rank's
    shard: its share of each global batch (in memory), or its own chunks (streamed)."""
    import functools

    import torch

    pre, rows = data.pre, getattr(data, split)
    shard = ranks is not None and split == "train"
    if isinstance(rows, FrameRows):
        source = InMemory(
            to_tensors(pre.inputs(rows.frame), device),
            torch.tensor(pre.target_array(rows.frame), device=device),
        )
        return source.shard(ranks.rank, ranks.world) if shard else source
    folder = stack.enter_context(
        tempfile.TemporaryDirectory(prefix=f"encoded-{split}-", dir=os.path.dirname(rows.path))
    )
    encoded = EncodedSpool.write(
        folder, ((pre.inputs(f), pre.target_array(f)) for f in rows.chunks()), data.chunk_rows
    )
    source = Streamed(encoded.chunks, encoded.n, buffer_rows=data.shuffle_buffer)
    if shard:
        return source.shard(functools.partial(encoded.chunks, shard=(ranks.rank, ranks.world)), ranks.world)
    return source


def _tokenizer_lineage(spec: PipelineSpec, pre) -> dict[str, Any]:
    """A Hub tokenizer's repo, the revision asked for and the commit it resolved to; nothing otherwise."""
    text = pre.encoder.text if pre.encoder is not None else None
    if text is None or spec.model.text.tokenizer == "train":
        return {}
    commit = text.source.rpartition("@")[2] if "@" in text.source else None
    asked = spec.model.text
    return {"tokenizer": {"repo": asked.tokenizer, "revision": asked.revision, "commit": commit}}


def _upload(folder: str, names, where: Places) -> None:
    """The files ``names`` of the local ``folder`` written into the version folder."""
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            write_bytes(join(where.version_dir, name), f.read())


def _copy_base_files(spec: PipelineSpec, where: Places) -> None:
    folder = pretrained_base(spec).folder
    names = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "preprocessor_config.json")
    _upload(folder, [n for n in names if os.path.exists(os.path.join(folder, n))], where)


def distributed_lineage(spec: PipelineSpec, world_size: int) -> dict[str, Any]:
    """How the version was trained: ranks, nodes, backend and strategy (one process: world size 1)."""
    d = spec.train.distributed
    if world_size <= 1:
        return {"world_size": 1}
    return {
        "world_size": world_size,
        "nodes": d.nodes,
        "processes_per_node": d.processes_per_node,
        "backend": backend_for(d.backend, spec.train.device),
        "strategy": d.strategy,
        "launcher": d.launcher,
    }


def _write_version(
    spec: PipelineSpec,
    req: TrainRequest,
    data: Prepared,
    where: Places,
    cfg,
    result,
    metrics: dict[str, Any],
    run,
    costs: TrainCosts,
) -> dict[str, Any]:
    """The model folder: Hugging Face files, preprocessing, history, metrics (with the training's costs)
    and lineage; returns the costs recorded."""
    t, model = spec.train, result.model
    lineage = {
        "pipeline": spec.name,
        "model": spec.model_name,
        "version": where.version,
        "partitions": data.partitions,
        "window": {
            "end_ds": req.end_ds,
            "days": t.window_days,
            "fixed_by": (req.window or {}).get("chosen", "read"),
        },
        "spec_hash": spec.spec_hash(),
        "spec_file_sha256": spec.file_sha256,
        "spec_normalized_hash": spec.normalized_hash(),
        "keyed_spec": keyed_spec(spec),
        "code_version": __version__,
        "wandb": run.as_dict(),
        "airflow": req.airflow,
        "split": {
            "val_fraction": t.val_fraction,
            "test_fraction": t.test_fraction,
            "keyed_on": spec.source.schema_.key,
        },
        "hyperparameters": {
            "train": {**cfg.__dict__, "window_days": t.window_days},
            "model": spec.model.model_dump(by_alias=True),
        },
        "overrides": req.overrides,
        "features": spec.feature_kinds,
        "data": {**data.data, "rows": data.rows()},
        **({"sweep": req.tracking["sweep"]} if req.tracking.get("sweep") else {}),
        **({"module": model.config()["custom"]} if spec.model.type == "custom" else {}),
        **_tokenizer_lineage(spec, data.pre),
        **(pretrained_lineage(spec, model) if spec.model.type == "huggingface" else {}),
        **({"objective": objective_lineage(spec)} if spec.model.generative else {}),
        "distributed": distributed_lineage(spec, result.world_size),
    }
    with tempfile.TemporaryDirectory() as tmp:
        model.to("cpu").save_pretrained(tmp)
        files = sorted(os.listdir(tmp))
        _upload(tmp, files, where)
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in files)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lineage["costs"] = recorded = {
        "model_mb": round(size / 2**20, 3),
        "trainable_params": trainable,
        "train": costs.model_dump(),
    }
    figures = {f"costs/train_{k}": v for k, v in recorded["train"].items() if _figure(v)}
    run.summary_update(
        {**figures, "costs/model_mb": recorded["model_mb"], "costs/trainable_params": trainable}
    )
    write_preprocessing(where.version_dir, data.pre.as_dict())
    if spec.model.generative:  # the tokenizer with its chat template, and how generation stops
        with tempfile.TemporaryDirectory() as tmp:
            _upload(tmp, save_tokenizer(data.pre.tokenizer, tmp), where)
    elif spec.model.type == "huggingface":
        # the base's tokenizer or image processor files, as transformers reads them
        _copy_base_files(spec, where)
    if data.pre.tokenizer_json is not None:
        # the text columns' tokenizer, a plain Hugging Face tokenizers file
        write_bytes(join(where.version_dir, TOKENIZER_FILE), data.pre.tokenizer_json.encode())
    write_history(where.version_dir, result.history)
    if result.steps:
        write_steps(where.version_dir, result.steps)
    summary = {"task": data.task, **metrics, "train": result.summary()}
    write_metrics(where.version_dir, {**summary, "costs": recorded})
    write_lineage(where.version_dir, lineage)
    run.log_artifact_reference(
        name=f"{spec.model_name}",
        type="model",
        uri=str(where.version_dir),
        metadata={"version": where.version, **metrics},
    )
    return recorded


__all__ = [
    "NOT_INPUTS",
    "Prepared",
    "build_model",
    "train_objective",
    "check_trainable",
    "effective_spec",
    "keyed_spec",
    "load_window",
    "loop_config",
    "prepare",
    "train",
]
