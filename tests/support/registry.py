"""A small model folder in Hugging Face layout, as train() writes one, for the registry tests."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from freestack.ml.models import FreestackNet

N_FEATURES = 6
PARTITIONS = [
    {"ds": "2024-01-01", "uri": "file:///lake/ds=2024-01-01/part.parquet", "sha256": "a" * 64, "rows": 100},
    {"ds": "2024-01-02", "uri": "file:///lake/ds=2024-01-02/part.parquet", "sha256": "b" * 64, "rows": 120},
]


def make_model_folder(folder: Path, *, seed: int = 0, accuracy: float = 0.9) -> Path:
    """config.json + model.safetensors + README.md (the mixin's generic card) + the JSON sidecars,
    and an ``evaluation/`` subfolder like the Evaluate step writes."""
    torch.manual_seed(seed)
    net = FreestackNet(n_features=N_FEATURES, n_outputs=3, hidden=[16], features=[f"f{i}" for i in range(6)])
    net.set_scaling(torch.arange(N_FEATURES, dtype=torch.float32), torch.full((N_FEATURES,), 2.0))
    folder.mkdir(parents=True, exist_ok=True)
    net.save_pretrained(folder)
    metrics = {
        "task": "classification",
        "test_accuracy": accuracy,
        "test_f1_macro": accuracy - 0.05,
        "test_loss": 0.3,
        "best_val_accuracy": accuracy + 0.01,
        "best_epoch": 4,
        "train": {"epochs": 5, "seconds": 1.5},
    }
    lineage = {
        "pipeline": "digits",
        "model": "digits",
        "version": "candidate",
        "partitions": PARTITIONS,
        "window": {"end_ds": "2024-01-02", "days": 2},
        "spec_hash": "c" * 64,
        "code_version": "0.1.0",
        "wandb": {"id": "run123", "project": "digits", "mode": "offline"},
        "airflow": {
            "dag_id": "digits_train",
            "run_id": "manual__2024-01-02",
            "interval": ["2024-01-01", "2024-01-02"],
        },
        "hyperparameters": {
            "train": {"learning_rate": 0.01, "epochs": 5},
            "model": {"kind": "mlp", "hidden": [16]},
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "lineage.json").write_text(json.dumps(lineage))
    (folder / "preprocessing.json").write_text(json.dumps({"features": [f"f{i}" for i in range(6)]}))
    (folder / "history.json").write_text(json.dumps([{"epoch": 1, "val_accuracy": 0.8}]))
    (folder / "evaluation").mkdir(exist_ok=True)
    (folder / "evaluation" / "metrics.json").write_text(json.dumps({"accuracy": accuracy}))
    return folder


def sample_input(n: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, N_FEATURES, generator=g) * 3


def source_predictions(folder: Path, x: torch.Tensor) -> torch.Tensor:
    return FreestackNet.from_pretrained(str(folder)).predict_proba(x)


def race_promotions(reg, a: str, b: str, *, timeout: float = 30.0) -> None:
    """Promote ``a`` and ``b`` from two threads that both read ``aliases.json`` before either
    writes it (a barrier inside the alias move): a real race, which the compare-and-swap settles."""
    barrier = threading.Barrier(2)
    real_move = reg._move

    def move(change, **kw):
        first = [True]

        def gated(cur):
            if first[0]:
                first[0] = False
                barrier.wait(timeout)
            return change(cur)

        return real_move(gated, **kw)

    reg._move = move
    try:
        threads = [threading.Thread(target=reg.promote, args=(v,)) for v in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del reg._move
