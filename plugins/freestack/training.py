"""The train stage: lake window -> split -> preprocessing -> fit -> test metrics -> model version.

Glue between storage (ObjectStoragePath), the plain ML code in ``freestack.ml`` and tracking.
Callable from an Airflow task, a notebook or a script alike.

    registry/<model>/<version>/config.json, model.safetensors   (Hugging Face layout)
                              preprocessing.json, metrics.json, lineage.json, history.json
    runs/<pipeline>/<run_key>/train/checkpoint.safetensors        (resumable)
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from freestack import __version__
from freestack.config import PipelineSpec
from freestack.errors import FreestackError

log = logging.getLogger(__name__)


class TrainingError(FreestackError):
    """The window or the spec cannot produce a model; the message says why."""


@dataclass
class StoreCheckpoints:
    """CheckpointStore over object storage, written atomically."""

    folder: Any  # ObjectStoragePath

    def save(self, name: str, data: bytes) -> None:
        from freestack.storage import join, write_bytes

        write_bytes(join(self.folder, name), data)

    def load(self, name: str) -> bytes | None:
        from freestack.storage import join

        p = join(self.folder, name)
        return p.read_bytes() if p.exists() else None


@dataclass
class TrainRequest:
    """What to train on and how; ``None`` fields take the spec's ``train:`` defaults."""

    end_ds: str
    window_days: int | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    seed: int | None = None
    run_key: str = "manual"
    airflow: dict[str, Any] = field(default_factory=dict)  # dag_id, run_id, data interval
    #: per-run changes to the spec's ``train:`` and ``model:`` blocks (a sweep trial's parameters);
    #: they win over the fields above and are validated like the spec itself
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: where the model folder goes (default ``registry/<model>/<version>``) and the checkpoints
    #: (default ``runs/<pipeline>/<run_key>/train``)
    output_uri: str | None = None
    checkpoint_uri: str | None = None
    #: W&B run options: name, group, job_type, extra tags, extra config
    tracking: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainOutcome:
    version: str
    version_uri: str
    metrics: dict[str, float]
    partitions: list[dict[str, Any]]
    summary: dict[str, Any]
    tracking: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "version_uri": self.version_uri,
            "metrics": self.metrics,
            "partitions": self.partitions,
            "train": self.summary,
            "wandb": self.tracking,
        }


def window_partitions(spec: PipelineSpec, end_ds: str, window_days: int) -> list[str]:
    """The lake partitions of the window (end_ds - window_days, end_ds]: never one after end_ds."""
    from freestack.ingest.core import lake_partitions

    start = (date.fromisoformat(end_ds) - timedelta(days=window_days)).isoformat()
    return [ds for ds in lake_partitions(spec, until=end_ds) if ds > start]


def load_window(spec: PipelineSpec, end_ds: str, window_days: int):
    """(DataFrame, partitions with their content hashes) for the window ending at ``end_ds``."""
    import pandas as pd
    import pyarrow.parquet as pq

    from freestack.ingest.core import PART, partition_dir, read_manifest
    from freestack.storage import join

    days = window_partitions(spec, end_ds, window_days)
    if not days:
        raise TrainingError(
            f"no lake partitions of {spec.name!r} in the {window_days} days up to {end_ds}: run "
            f"{spec.name}_ingest for those days first (or widen window_days)"
        )
    frames, parts = [], []
    for ds in days:
        path = join(partition_dir(spec, ds), PART)
        with path.open("rb") as f:
            frames.append(pq.read_table(f).to_pandas())
        manifest = read_manifest(spec, ds) or {}
        parts.append(
            {
                "ds": ds,
                "uri": str(path),
                "sha256": (manifest.get("part") or {}).get("sha256"),
                "rows": len(frames[-1]),
            }
        )
    return pd.concat(frames, ignore_index=True), parts


def effective_spec(spec: PipelineSpec, req: TrainRequest) -> PipelineSpec:
    """The spec with the request's form values and overrides applied, validated like the spec itself."""
    from pydantic import ValidationError

    from freestack.config import ModelSpec, TrainSpec

    train_values = spec.train.model_dump()
    for key in ("window_days", "epochs", "learning_rate", "batch_size", "seed"):
        if getattr(req, key) is not None:
            train_values[key] = getattr(req, key)
    train_values.update(req.overrides.get("train") or {})
    model_values = {**spec.model.model_dump(), **(req.overrides.get("model") or {})}
    unknown = set(req.overrides) - {"train", "model"}
    if unknown:
        raise TrainingError(f"overrides {sorted(unknown)} are not spec blocks; only train and model can change")
    try:
        return spec.model_copy(
            update={"train": TrainSpec.model_validate(train_values), "model": ModelSpec.model_validate(model_values)}
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise TrainingError(f"the run's hyperparameters are invalid: {problems}") from None


def _version_name(spec: PipelineSpec, req: TrainRequest) -> str:
    digest = hashlib.sha256(f"{spec.name}|{req.run_key}|{req.end_ds}".encode()).hexdigest()[:8]
    return f"v{req.end_ds.replace('-', '')}-{digest}"


def _safe_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)[:120]


def train(
    spec: PipelineSpec,
    req: TrainRequest,
    *,
    tracking_settings=None,
    on_epoch=None,
    window=None,
) -> TrainOutcome:
    """Train one model. ``on_epoch(row)`` sees each epoch's metrics and may return True to stop;
    ``window`` is a ``load_window`` result to reuse (an agent running several trials loads it once)."""
    import torch

    from freestack.ml.models import FreestackNet
    from freestack.ml.prep import Preprocessing, infer_task, split_of_keys
    from freestack.ml.train import TrainConfig, evaluate, fit
    from freestack.storage import join, storage_root, to_path, write_bytes, write_json

    schema = spec.source.schema_
    if schema.target is None:
        raise TrainingError(f"pipeline {spec.name!r} has no source.schema.target: training needs one")
    if schema.key is None:
        raise TrainingError(f"pipeline {spec.name!r} has no source.schema.key: the split is keyed on it")
    features = spec.model_features
    if not features:
        raise TrainingError(f"pipeline {spec.name!r} has no numeric feature columns; list model.features")
    spec = effective_spec(spec, req)
    t = spec.train
    cfg = TrainConfig(
        epochs=t.epochs,
        learning_rate=t.learning_rate,
        batch_size=t.batch_size,
        weight_decay=t.weight_decay,
        patience=t.patience,
        grad_clip=t.grad_clip,
        scheduler=t.scheduler,
        warmup_epochs=t.warmup_epochs,
        seed=t.seed,
        device=t.device,
    )
    days = t.window_days
    df, parts = window if window is not None else load_window(spec, req.end_ds, days)
    target_type = next(c.type for c in schema.fields if c.name == schema.target)
    task = spec.model.task if spec.model.task != "auto" else infer_task(df[schema.target], target_type)
    split = split_of_keys(df[schema.key], t.val_fraction, t.test_fraction, salt=spec.name)
    train_df, val_df, test_df = (df[split == s] for s in ("train", "val", "test"))
    if min(len(train_df), len(val_df), len(test_df)) == 0:
        raise TrainingError(
            f"the window up to {req.end_ds} has {len(df)} rows: too few for train/val/test splits "
            f"({len(train_df)}/{len(val_df)}/{len(test_df)}); widen window_days"
        )
    pre = Preprocessing.fit(train_df, features, schema.target, task)
    if task == "classification":
        seen = set(pre.classes)
        val_df = val_df[val_df[schema.target].isin(seen)]
        test_df = test_df[test_df[schema.target].isin(seen)]
    kind = spec.model.type
    if kind == "auto":
        kind = "cnn" if spec.model.image_shape else "mlp"
    torch.manual_seed(cfg.seed)
    model = FreestackNet(
        kind=kind,
        task=task,
        n_features=len(features),
        n_outputs=len(pre.classes) if task == "classification" else 1,
        hidden=list(spec.model.hidden),
        channels=list(spec.model.channels),
        image_shape=list(spec.model.image_shape) if spec.model.image_shape else None,
        dropout=spec.model.dropout,
        features=features,
        classes=pre.classes,
    )
    model.set_scaling(pre.mean, pre.std)
    model.set_target_scaling(pre.target_mean, pre.target_std)

    root = storage_root(spec.storage_root)
    if req.checkpoint_uri:
        run_dir = to_path(req.checkpoint_uri)
    else:
        run_dir = join(root, "runs", spec.name, _safe_key(req.run_key), "train")
    version = _version_name(spec, req)
    version_dir = to_path(req.output_uri) if req.output_uri else join(root, "registry", spec.model_name, version)
    config_for_tracking = {
        "pipeline": spec.name,
        "model": spec.model.model_dump(),
        "train": {**cfg.__dict__, "window_days": days},
        "task": task,
        "kind": kind,
        "features": len(features),
        "rows": {"train": len(train_df), "val": len(val_df), "test": len(test_df)},
        "end_ds": req.end_ds,
        **(req.tracking.get("config") or {}),
    }
    from freestack.tracking.wandb import WandbHook, start_run

    if tracking_settings is None:
        tracking_settings = WandbHook().settings()

    tags = [f"pipeline:{spec.name}", f"interval:{req.end_ds}"]
    if req.airflow.get("run_id"):
        tags.append(f"airflow_run:{req.airflow['run_id']}"[:64])
    tags.extend(req.tracking.get("tags") or [])

    def epoch_done(row: dict[str, float]) -> bool:
        run.log({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        return bool(on_epoch(row)) if on_epoch is not None else False

    with start_run(
        tracking_settings,
        project=spec.name,
        name=req.tracking.get("name") or f"{spec.name}-{version}",
        config=config_for_tracking,
        tags=tags,
        group=req.tracking.get("group"),
        job_type=req.tracking.get("job_type", "train"),
        existing=req.tracking.get("run"),
    ) as run:
        result = fit(
            model,
            pre.features_array(train_df),
            pre.target_array(train_df),
            pre.features_array(val_df),
            pre.target_array(val_df),
            cfg,
            task=task,
            checkpoints=StoreCheckpoints(run_dir),
            on_epoch=epoch_done,
        )
        device = next(model.parameters()).device
        test = evaluate(
            model,
            torch.as_tensor(pre.features_array(test_df), device=device),
            torch.as_tensor(pre.target_array(test_df), device=device),
            task,
        )
        metrics = {f"test_{k}": v for k, v in test.items()}
        metrics.update({f"best_val_{result.metric}": result.best_metric, "best_epoch": result.best_epoch})
        run.summary_update(metrics)
        lineage = {
            "pipeline": spec.name,
            "model": spec.model_name,
            "version": version,
            "partitions": parts,
            "window": {"end_ds": req.end_ds, "days": days},
            "spec_hash": spec.spec_hash(),
            "code_version": __version__,
            "wandb": run.as_dict(),
            "airflow": req.airflow,
            "split": {"val_fraction": t.val_fraction, "test_fraction": t.test_fraction, "keyed_on": schema.key},
            "hyperparameters": {"train": {**cfg.__dict__, "window_days": days}, "model": spec.model.model_dump()},
            "overrides": req.overrides,
            **({"sweep": req.tracking["sweep"]} if req.tracking.get("sweep") else {}),
        }
        with tempfile.TemporaryDirectory() as tmp:
            model.to("cpu").save_pretrained(tmp)
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    write_bytes(join(version_dir, name), f.read())
        write_json(join(version_dir, "preprocessing.json"), pre.as_dict())
        write_json(join(version_dir, "history.json"), result.history)
        write_json(join(version_dir, "metrics.json"), {"task": task, **metrics, "train": result.summary()})
        write_json(join(version_dir, "lineage.json"), lineage)
        run.log_artifact_reference(
            name=f"{spec.model_name}", type="model", uri=str(version_dir), metadata={"version": version, **metrics}
        )
        tracking = run.as_dict()
    summary = result.summary()
    log.info(
        "model %s %s: %s; test %s; files in %s",
        spec.model_name,
        version,
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
        task,
        version_dir,
    )
    return TrainOutcome(
        version=version,
        version_uri=str(version_dir),
        metrics=metrics,
        partitions=parts,
        summary=summary,
        tracking=tracking,
    )


__all__ = [
    "TrainOutcome", "TrainRequest", "TrainingError", "effective_spec", "load_window", "train", "window_partitions",
]  # fmt: skip
