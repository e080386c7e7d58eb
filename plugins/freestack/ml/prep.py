"""Deterministic splits keyed on the row key, and preprocessing fitted on the training split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

Split = Literal["train", "val", "test"]


def split_of_keys(keys: pd.Series, val_fraction: float, test_fraction: float, salt: str = "") -> np.ndarray:
    """'train' / 'val' / 'test' per key, from a hash of the key alone.

    A row keeps its split forever, whatever else arrives: new days never move old rows between
    train and test, so a test score stays honest as the window grows.
    """
    out = np.empty(len(keys), dtype=object)
    for i, k in enumerate(keys.astype(str)):
        h = hashlib.blake2b(f"{salt}{k}".encode(), digest_size=8).digest()
        u = int.from_bytes(h, "big") / 2**64
        out[i] = "test" if u < test_fraction else ("val" if u < test_fraction + val_fraction else "train")
    return out


@dataclass
class Preprocessing:
    """Feature scaling and label coding, fitted on the training split only; JSON round-trips."""

    task: Literal["classification", "regression"]
    features: list[str]
    mean: list[float]
    std: list[float]
    classes: list[Any] = field(default_factory=list)
    target: str = ""
    target_mean: float = 0.0
    target_std: float = 1.0

    @classmethod
    def fit(cls, train: pd.DataFrame, features: list[str], target: str, task: str) -> Preprocessing:
        x = train[features].to_numpy(dtype=np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std < 1e-12] = 1.0
        if task == "classification":
            classes = sorted(pd.unique(train[target]).tolist())
            return cls(task, features, mean.tolist(), std.tolist(), classes, target)
        y = train[target].to_numpy(dtype=np.float64)
        return cls(task, features, mean.tolist(), std.tolist(), [], target, float(y.mean()), float(y.std() or 1.0))

    def features_array(self, df: pd.DataFrame) -> np.ndarray:
        missing = [f for f in self.features if f not in df.columns]
        if missing:
            raise ValueError(f"missing feature column(s) {missing}")
        return _writable(df[self.features].to_numpy(dtype=np.float32))

    def target_array(self, df: pd.DataFrame) -> np.ndarray:
        y = df[self.target]
        if self.task == "classification":
            index = {c: i for i, c in enumerate(self.classes)}
            codes = y.map(index)
            if codes.isna().any():
                unknown = sorted(set(y[codes.isna()].tolist()))[:10]
                raise ValueError(f"labels {unknown} were not seen in the training split")
            return _writable(codes.to_numpy(dtype=np.int64))
        return ((y.to_numpy(dtype=np.float64) - self.target_mean) / self.target_std).astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "features": self.features,
            "mean": self.mean,
            "std": self.std,
            "classes": self.classes,
            "target": self.target,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(**d)


def _writable(a: np.ndarray) -> np.ndarray:
    """``a``, copied if it is read-only. Under pandas' copy-on-write, ``to_numpy`` hands out read-only
    views of the frame's memory; a tensor made from one with ``torch.as_tensor`` would share memory
    torch may write to, and torch warns about it. A copy is the array the caller owns."""
    return a if a.flags.writeable else a.copy()


def infer_task(y: pd.Series, declared_type: str) -> str:
    """Classification for int/bool/string targets with few distinct values, else regression."""
    if declared_type in ("string", "bool"):
        return "classification"
    if declared_type == "int" and y.nunique() <= max(50, int(0.05 * len(y))):
        return "classification"
    return "regression"
