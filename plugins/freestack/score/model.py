"""The registered version a day is scored with: :class:`ScoringModel` loads it (its model on the scoring
device, its preprocessing and lineage), encodes a batch of input rows (the rows it cannot encode set apart,
each with its reason) and predicts. :func:`freestack.score.core.plan` loads one to check the version;
:func:`freestack.score.core.score` hands one to the day's writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from freestack import version
from freestack.errors import ScoreError

if TYPE_CHECKING:
    import pyarrow as pa


class ScoringModel:
    """A registered version ready to score: its model on the scoring device, its preprocessing and
    lineage (:meth:`freestack.version.ModelVersion.load`, which refuses a version whose files changed
    since registration)."""

    def __init__(self, uri: str, device: str = "auto"):
        from freestack.ml.loop import resolve_device

        try:
            loaded = version.open(uri).load()
            self.pre = loaded.preprocessor
        except (version.VersionError, OSError, ValueError, KeyError) as exc:
            raise ScoreError(
                f"version {uri} cannot be loaded: {exc}. Name another version in score.version, or retrain"
            ) from None
        import pyarrow as pa

        self.uri = uri
        self.model, self.lineage = loaded.model, loaded.lineage.as_dict()
        #: a text-generation version's tokenizer (with its chat template) and generation config
        self.tokenizer, self.generation_config = loaded.tokenizer, loaded.generation_config
        self.device = resolve_device(device)  # a GPU worker (score.queue) scores on its GPU, as training does
        self.model.to(self.device).eval()
        self.classes = pa.array(self.pre.classes) if self.classification else None

    @property
    def classification(self) -> bool:
        return self.pre.task == "classification"

    @property
    def generative(self) -> bool:
        """A text-generation version: it answers prompt rows (:mod:`freestack.score.answers_writer`)."""
        return self.pre.task == "generation"

    def encode(self, batch: pa.RecordBatch) -> tuple[Any, np.ndarray, dict[int, str]]:
        """(the model's inputs for the rows of ``batch`` that encode, those rows' positions, the other
        rows' reasons), each row encoded once: a numbers-only version's float32 matrix straight from the
        Arrow columns; a version with an encoder (category, text, image) through its preprocessing, a
        batch it refuses tried row by row to find the rows at fault."""
        if self.pre.encoder is None:
            try:
                return _without_gaps(_matrix(batch, self.pre.numeric), self.pre.numeric)
            except (TypeError, ValueError):  # not numbers (a text in a number column): tried row by row below
                pass
        bad = _missing_numbers(self.pre.numeric, batch)
        good = np.setdiff1d(np.arange(batch.num_rows), np.fromiter(bad, int, len(bad)))
        frame = (batch.take(good) if bad else batch).to_pandas()
        try:
            return self.pre.inputs(frame), good, bad
        except (ValueError, TypeError, KeyError):
            pass
        refused = {}
        for k, i in enumerate(good.tolist()):
            try:
                self.pre.inputs(frame.iloc[k : k + 1])
            except (ValueError, TypeError, KeyError) as exc:
                refused[i] = str(exc)[:500]
        kept = np.array([k for k, i in enumerate(good.tolist()) if i not in refused], dtype=int)
        inputs = self.pre.inputs(frame.iloc[kept]) if len(kept) else None
        return inputs, good[kept], {**bad, **refused}

    def forward(self, inputs: Any) -> np.ndarray:
        """Class probabilities ``[rows, classes]`` or values ``[rows]`` of encoded rows."""
        import torch

        from freestack.ml.loop import to_tensors

        with torch.no_grad():  # the float32 matrix encode() built is this batch's own: no copy of it
            own = isinstance(inputs, np.ndarray) and inputs.flags.writeable and self.device.type == "cpu"
            x = torch.from_numpy(inputs) if own else to_tensors(inputs, self.device)
            out = self.model.predict_proba(x) if self.classification else self.model.predict(x)
        return out.cpu().numpy()


def _missing_numbers(numeric: list[str], batch: pa.RecordBatch) -> dict[int, str]:
    """Rows (by position) with no value (null, NaN) in a numeric feature, and which."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = [c for c in numeric if c in batch.schema.names]
    if not cols or not any(
        batch.column(c).null_count or pa.types.is_floating(batch.column(c).type) for c in cols
    ):
        return {}
    missing = np.column_stack(
        [pc.is_null(batch.column(c), nan_is_null=True).to_numpy(zero_copy_only=False) for c in cols]
    )
    return {
        int(i): f"no value in {[c for c, m in zip(cols, missing[i], strict=True) if m][:5]}"
        for i in np.flatnonzero(missing.any(axis=1))
    }


def _without_gaps(x: np.ndarray, columns: list[str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """:meth:`ScoringModel.encode` of a numbers matrix: the rows with no value (NaN, a null) set apart."""
    gaps = np.isnan(x)
    missing = np.flatnonzero(gaps.any(axis=1))
    if not len(missing):
        return x, np.arange(len(x)), {}
    bad = {
        int(i): f"no value in {[c for c, m in zip(columns, gaps[i], strict=True) if m][:5]}" for i in missing
    }
    good = np.setdiff1d(np.arange(len(x)), missing)
    return x[good], good, bad


def _matrix(batch: pa.RecordBatch, columns: list[str]) -> np.ndarray:
    """The numeric feature columns as one float32 matrix (what ``Preprocessing.inputs`` gives)."""
    x = np.empty((batch.num_rows, len(columns)), np.float32)
    for j, c in enumerate(columns):
        x[:, j] = batch.column(c).to_numpy(zero_copy_only=False)
    return x
