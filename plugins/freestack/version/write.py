"""Writing a version folder's JSON files: what train, the sweeps and the registry write, through one
place, so each file is written as its record reads it back."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from freestack.storage import join, to_path, write_json
from freestack.version import files as F
from freestack.version.records import Lineage, Metrics, Preprocessing, Record

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath


def _write(folder: str | ObjectStoragePath, name: str, data: Record | dict[str, Any] | list) -> str:
    content = data.as_dict() if isinstance(data, Record) else data
    path = join(to_path(folder) if isinstance(folder, str) else folder, name)
    write_json(path, content)
    return str(path)


def write_preprocessing(folder: str | ObjectStoragePath, pre: Preprocessing | dict[str, Any]) -> str:
    """``preprocessing.json`` (:meth:`freestack.ml.prep.Preprocessing.as_dict`, or a chat encoding's)."""
    return _write(folder, F.PREPROCESSING, pre)


def write_lineage(folder: str | ObjectStoragePath, lineage: Lineage | dict[str, Any]) -> str:
    """``lineage.json``: what the version was trained on and how."""
    return _write(folder, F.LINEAGE, lineage)


def write_metrics(folder: str | ObjectStoragePath, metrics: Metrics | dict[str, Any]) -> str:
    """``metrics.json``: training metrics, then the evaluation's."""
    return _write(folder, F.METRICS, metrics)


def write_history(folder: str | ObjectStoragePath, history: list[dict[str, Any]]) -> str:
    """``history.json``: one entry an epoch, the learning curves."""
    return _write(folder, F.HISTORY, history)


def write_steps(folder: str | ObjectStoragePath, steps: list[dict[str, Any]]) -> str:
    """``steps.json``: one entry an optimiser step (``step``, ``epoch`` and the step's figures)."""
    return _write(folder, F.STEPS, steps)


def read_lineage(folder: str | ObjectStoragePath) -> Lineage:
    """``lineage.json`` of a folder being written (a candidate, a trial's model), unverified; empty when
    there is none."""
    path = join(to_path(folder) if isinstance(folder, str) else folder, F.LINEAGE)
    return Lineage.model_validate(json.loads(path.read_text()) if path.exists() else {})


__all__ = [
    "read_lineage",
    "write_history",
    "write_lineage",
    "write_metrics",
    "write_preprocessing",
    "write_steps",
]
