"""Deterministic splits keyed on the row key, and preprocessing fitted on the training split."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import pandas as pd

from freestack.ml.features import KINDS, EncoderOptions, FeatureEncoder
from freestack.ml.moments import RunningMoments

Split = Literal["train", "val", "test"]


def split_of_key(key: Any, val_fraction: float, test_fraction: float, salt: str = "") -> Split:
    """'train', 'val' or 'test' for one row key: the rule every training and evaluation of a model uses.

    ``u = int.from_bytes(blake2b(f"{salt}{key}".encode(), digest_size=8).digest(), "big") / 2**64``
    (the key as text, ``salt`` the model's name: ``model.name``, by default the pipeline's), then
    ``test`` when ``u < test_fraction``, ``val`` when ``u < test_fraction + val_fraction``, else
    ``train`` (the fractions are the spec's
    ``train.test_fraction`` and ``train.val_fraction``, 0.15 each by default)."""
    h = hashlib.blake2b(f"{salt}{key}".encode(), digest_size=8).digest()
    u = int.from_bytes(h, "big") / 2**64
    return "test" if u < test_fraction else ("val" if u < test_fraction + val_fraction else "train")


def split_of_keys(keys: pd.Series, val_fraction: float, test_fraction: float, salt: str = "") -> np.ndarray:
    """'train' / 'val' / 'test' per key, from a hash of the key alone (:func:`split_of_key`).

    A row keeps its split forever, whatever else arrives: new days never move old rows between
    train and test, so a test score stays honest as the window grows. To rebuild a pipeline's split
    outside freestack: ``split_of_keys(frame[key_column], spec.train.val_fraction,
    spec.train.test_fraction, salt=spec.model_name)``, or ``freestack split PIPELINE``.
    """
    splits = [split_of_key(k, val_fraction, test_fraction, salt) for k in keys.astype(str)]
    return np.array(splits, dtype=object)


@dataclass
class Preprocessing:
    """Feature scaling, the encoding of category/text/image columns (:mod:`freestack.ml.features`) and
    label coding, fitted on the training split only; JSON round-trips (a trained tokenizer is its own
    ``tokenizer.json``)."""

    task: Literal["classification", "regression"]
    features: list[str]
    mean: list[float]
    std: list[float]
    classes: list[Any] = field(default_factory=list)
    target: str = ""
    target_mean: float = 0.0
    target_std: float = 1.0
    #: the encoder of every feature column when some are not numeric; None: ``features`` are all numeric
    encoder: FeatureEncoder | None = None

    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        features: list[str],
        target: str,
        task: str,
        kinds: dict[str, str] | None = None,
        options: EncoderOptions | None = None,
    ) -> Preprocessing:
        """``kinds`` are the feature columns' types (int, float, bool, category, text, image)."""
        return cls.fit_chunks(lambda: iter([train]), features, target, task, kinds, options)

    @classmethod
    def fit_chunks(
        cls,
        chunks: Callable[[], Iterable[pd.DataFrame]],
        features: list[str],
        target: str,
        task: str,
        kinds: dict[str, str] | None = None,
        options: EncoderOptions | None = None,
    ) -> Preprocessing:
        """Fitted on the training split read as frames (``chunks()`` starts a pass; a streamed window
        gives its row groups, an in-memory one the whole split): the same result either way."""
        encoder = None
        numeric = features
        if kinds and any(KINDS.get(kinds[f]) != "numeric" for f in features):
            columns = lambda: ({f: _values(c[f]) for f in features} for c in chunks())  # noqa: E731
            encoder = FeatureEncoder.fit_chunks(columns, features, kinds, options or EncoderOptions())
            numeric = encoder.numeric
        x_moments, y_moments, classes = RunningMoments(), RunningMoments(), set()
        for chunk in chunks():
            if numeric:
                x_moments.add(chunk[numeric].to_numpy(dtype=np.float64))
            if task == "classification":
                classes.update(pd.unique(chunk[target]).tolist())
            else:
                y_moments.add(chunk[target].to_numpy(dtype=np.float64))
        mean, std = x_moments.result(len(numeric))
        std = np.where(std < 1e-12, 1.0, std)
        if task == "classification":
            return cls(task, features, mean.tolist(), std.tolist(), sorted(classes), target, encoder=encoder)
        y_mean, y_std = (float(np.ravel(v)[0]) for v in y_moments.result(1))
        return cls(task, features, mean.tolist(), std.tolist(), [], target, y_mean, y_std or 1.0, encoder)

    @property
    def numeric(self) -> list[str]:
        return self.encoder.numeric if self.encoder is not None else self.features

    def features_array(self, df: pd.DataFrame) -> np.ndarray:
        """The numeric feature columns as one float32 matrix."""
        missing = [f for f in self.numeric if f not in df.columns]
        if missing:
            raise ValueError(f"missing feature column(s) {missing}")
        return _writable(df[self.numeric].to_numpy(dtype=np.float32))

    def inputs(self, df: pd.DataFrame) -> np.ndarray | dict[str, np.ndarray]:
        """What the model takes for ``df``'s rows: the numeric matrix, or a dict per feature group."""
        if self.encoder is None:
            return self.features_array(df)
        missing = [f for f in self.features if f not in df.columns]
        if missing:
            raise ValueError(f"missing feature column(s) {missing}")
        return self.encoder.encode({f: _values(df[f]) for f in self.features})

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
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "encoder"}
        return {**({"encoder": self.encoder.as_dict()} if self.encoder is not None else {}), **own}

    @classmethod
    def from_dict(cls, d: dict[str, Any], tokenizer_json: str = "") -> Preprocessing:
        d = dict(d)
        encoder = d.pop("encoder", None)
        return cls(**d, encoder=FeatureEncoder.from_dict(encoder, tokenizer_json) if encoder else None)

    @property
    def tokenizer_json(self) -> str | None:
        """The text columns' tokenizer, saved beside the model as ``tokenizer.json``; None without text."""
        text = self.encoder.text if self.encoder is not None else None
        return text.tokenizer_json if text is not None else None


def _values(column: pd.Series) -> np.ndarray | list:
    """A column as the encoder takes it: numbers as a numpy array, anything else as a list."""
    return column.to_numpy() if column.dtype.kind in "iufb" else column.tolist()


def _writable(a: np.ndarray) -> np.ndarray:
    """``a``, copied if it is read-only. Under pandas' copy-on-write, ``to_numpy`` hands out read-only
    views of the frame's memory; a tensor made from one with ``torch.as_tensor`` would share memory
    torch may write to, and torch warns about it. A copy is the array the caller owns."""
    return a if a.flags.writeable else a.copy()


def infer_task(y: pd.Series, declared_type: str) -> str:
    """Classification for string/bool/category targets and int targets with few distinct values, else
    regression."""
    if declared_type in ("string", "bool", "category"):
        return "classification"
    if declared_type == "int" and y.nunique() <= max(50, int(0.05 * len(y))):
        return "classification"
    return "regression"
