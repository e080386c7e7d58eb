"""Registered model versions for the serving tests: a small real network, its preprocessing, and the
evaluation's smoke sample (test rows with in-process outputs), committed by the registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from freestack.ml.models import FreestackNet


def make_version(root: str, model: str, version: str, work: Path, *, seed: int = 0, n_features: int = 8,
                 classes: tuple = (0, 1, 2), broken: bool = False) -> str:  # fmt: skip
    """Register ``version`` of ``model`` under ``root``; ``broken``: its config no longer fits its weights,
    so the version is intact in storage but fails to load."""
    from freestack.registry.core import ModelRegistry

    torch.manual_seed(seed)
    features = [f"f{i}" for i in range(n_features)]
    net = FreestackNet(kind="mlp", n_features=n_features, n_outputs=len(classes), hidden=[16], features=features,
                       classes=list(classes))  # fmt: skip
    rng = np.random.default_rng(seed)
    mean, std = rng.normal(size=n_features), rng.uniform(0.5, 2.0, size=n_features)
    net.set_scaling(mean, std)
    folder = work / f"{model}-{version}"
    net.save_pretrained(folder)
    pre = {"task": "classification", "features": features, "mean": mean.tolist(), "std": std.tolist(),
           "classes": list(classes), "target": "label", "target_mean": 0.0, "target_std": 1.0}  # fmt: skip
    (folder / "preprocessing.json").write_text(json.dumps(pre))
    rows = rng.normal(size=(24, n_features)).astype(np.float32) * 3
    out = net.predict_proba(torch.as_tensor(rows))
    smoke = {"task": "classification", "features": features, "keys": [str(i) for i in range(len(rows))],
             "rows": rows.tolist(), "labels": [classes[i % len(classes)] for i in range(len(rows))],
             "outputs": out.tolist(), "classes": [str(c) for c in classes],
             "predicted": [classes[i] for i in out.argmax(-1).tolist()]}  # fmt: skip
    (folder / "evaluation").mkdir()
    (folder / "evaluation" / "smoke.json").write_text(json.dumps(smoke))
    (folder / "lineage.json").write_text(json.dumps({"pipeline": model, "model": model}))
    if broken:
        cfg = json.loads((folder / "config.json").read_text())
        cfg["n_features"] = n_features + 3  # the weights no longer fit: load_state_dict fails in the server
        (folder / "config.json").write_text(json.dumps(cfg))
    return ModelRegistry(root, model).register(folder.as_uri(), version)


def in_process(version_uri: str, rows: np.ndarray) -> np.ndarray:
    """What the version predicts in this process (the evaluation's way)."""
    path = version_uri.removeprefix("file://")
    net = FreestackNet.from_pretrained(path)
    return net.predict_proba(torch.as_tensor(np.asarray(rows, dtype=np.float32))).numpy()
