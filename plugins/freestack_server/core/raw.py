"""Requests of a model whose inputs are not all numbers: category values, text and images as a client
sends them, turned into the columns :class:`freestack.ml.features.FeatureEncoder` encodes.

Accepted (every row holds every feature column; images as base64 of the file's bytes, a ``data:``
URI prefix allowed):

- ``{"data": {"names": [...], "ndarray": [[v, ...], ...]}}``: one row per list, in ``names`` order;
  ``names`` may be left out only for a model of one column (values of different kinds taken by
  position would let two swapped columns pass unnoticed);
- ``{"jsonData": {"instances": [{column: value, ...}, ...]}}`` (or one record);
- ``{"strData": "..."}``: one row, for a model whose only feature is one text column;
- ``{"binData": "<base64>"}``: one image, for a model whose only feature is one image column.

Text is any Unicode string, the empty one included (a lone surrogate, ``"\\ud800"``, is not one);
null is a missing value (text: empty, category: the unknown bucket, as in training). A numeric column
takes a number, true/false, or a number written as text (``"40"``): Seldon itself turns the numbers of
an ndarray row that also holds text into text, so text that reads as a number is read as one, the same
in every message form; other text gets a 400. Each problem raises :class:`RawInputError` naming the
row, the column and what to send.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np


class RawInputError(ValueError):
    """A request's values do not fit the model's inputs; the message says which and what to send."""


class RawInputs:
    """The feature columns of a model (name -> group: numeric, category, text, image)."""

    def __init__(self, columns: list[tuple[str, str]], max_rows: int):
        self.columns, self.max_rows = columns, max_rows
        self.names = [n for n, _ in columns]
        self.kinds = dict(columns)

    def from_any(self, X: Any, names: list[str] | None) -> dict[str, list]:
        """Columns (name -> values) of a payload Seldon parsed: an array, a jsonData dict, a str or bytes."""
        if isinstance(X, dict):
            return self.from_records(X)
        if isinstance(X, str):
            return self.single("text", X)
        if isinstance(X, bytes | bytearray):
            return self.single("image", bytes(X))
        return self.from_rows(X, names)

    def single(self, kind: str, value: Any) -> dict[str, list]:
        what = {"text": "strData", "image": "binData"}[kind]
        if [k for _, k in self.columns] != [kind]:
            raise RawInputError(
                f"{what} carries one {kind} value; this model takes {self._described()}: send "
                '"data" (ndarray with names) or "jsonData" records'
            )
        return {self.names[0]: [_unicode(value, 0, self.names[0]) if isinstance(value, str) else value]}

    def from_records(self, payload: dict[str, Any]) -> dict[str, list]:
        records = payload.get("instances", payload)  # or one record
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list) or not records:
            raise RawInputError(
                'jsonData must be {"instances": [{column: value, ...}, ...]} with at least one record'
            )
        self._check_rows(len(records))
        out: dict[str, list] = {n: [] for n in self.names}
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise RawInputError(f"jsonData record {i} must be an object of column: value")
            missing = [n for n in self.names if n not in rec]
            if missing:
                raise RawInputError(
                    f"jsonData record {i} lacks {missing[:10]}; this model takes {self._described()}"
                )
            for n in self.names:
                out[n].append(self.value(rec[n], i, n))
        return out

    def from_rows(self, X: Any, names: list[str] | None) -> dict[str, list]:
        rows = X.tolist() if isinstance(X, np.ndarray) else X
        if not isinstance(rows, list) or not rows:
            raise RawInputError("the payload holds no rows: send at least one row of feature values")
        if not isinstance(rows[0], list):
            rows = [rows]
        self._check_rows(len(rows))
        if not names and len(self.names) > 1:
            raise RawInputError(
                f'"data.ndarray" needs "data.names" for this model: it takes {len(self.names)} columns '
                f"({self._described()}), so values are placed by name, not by position; send "
                '{"data": {"names": [...], "ndarray": [[...]]}} or "jsonData" records'
            )
        order = list(names) if names else self.names
        unknown = [n for n in order if n not in self.kinds]
        missing = [n for n in self.names if n not in order]
        if unknown or missing or len(order) != len(set(order)):
            raise RawInputError(
                f"data.names {order[:10]} do not match the model's columns {self.names} "
                f"(unknown {unknown[:10]}, missing {missing[:10]})"
            )
        out: dict[str, list] = {n: [] for n in self.names}
        for i, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(order):
                raise RawInputError(f"row {i} must hold {len(order)} values ({', '.join(order[:6])})")
            for n, v in zip(order, row, strict=True):
                out[n].append(self.value(v, i, n))
        return out

    def value(self, v: Any, row: int, name: str) -> Any:
        """One value of column ``name`` as the encoder takes it."""
        kind = self.kinds[name]
        if kind == "numeric":
            return _number(v, row, name)
        if kind == "image":
            return image_bytes(v, row, name)
        if v is None:
            return v
        if isinstance(v, str):
            return _unicode(v, row, name)
        if isinstance(v, bool | int | float) and kind == "category":
            return label_text(v)
        raise RawInputError(f"row {row}, {name}: expected text, got {type(v).__name__}")

    def _check_rows(self, n: int) -> None:
        if n > self.max_rows:
            raise RawInputError(f"{n} rows in one request; at most {self.max_rows}: split the batch")

    def _described(self) -> str:
        return ", ".join(f"{n} ({k})" for n, k in self.columns[:8]) + (
            " ..." if len(self.columns) > 8 else ""
        )


def label_text(v: Any) -> str:
    """A label (or a category sent as a number) as the request log keeps it: 3.0 -> "3", else as text."""
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _unicode(v: str, row: int, name: str) -> str:
    """``v`` if it is Unicode text, else a RawInputError: JSON's ``\\ud800`` escapes can give a string half of
    a surrogate pair, which no tokenizer, log or answer can hold."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = v[exc.start : exc.end].encode("unicode_escape").decode()
        raise RawInputError(
            f"row {row}, {name}: the text holds a lone surrogate ({bad} at character {exc.start}), "
            "which is not Unicode text: send valid UTF-8 (escape a character outside the basic "
            "plane as a surrogate pair, or not at all)"
        ) from None
    return v


def _number(v: Any, row: int, name: str) -> float:
    if isinstance(v, str):  # Seldon turns the numbers of an ndarray row that also holds text into text
        try:
            v = float(v)
        except ValueError:
            raise RawInputError(f"row {row}, {name}: expected a number, got {v[:40]!r}") from None
    if not isinstance(v, int | float):  # bools are numbers (a bool column is numeric)
        raise RawInputError(f"row {row}, {name}: expected a number, got {type(v).__name__}")
    if not math.isfinite(float(v)):
        raise RawInputError(f"row {row}, {name}: NaN or infinite values are not accepted; impute them first")
    return float(v)


def image_bytes(v: Any, row: int, name: str) -> bytes:
    """The bytes of a base64 image value (``data:image/png;base64,...`` allowed)."""
    if isinstance(v, bytes | bytearray):
        return bytes(v)
    if not isinstance(v, str) or not v:
        raise RawInputError(
            f"row {row}, {name}: expected an image as base64 text, got "
            f"{type(v).__name__ if v is not None else 'null'}"
        )
    text = v.split(",", 1)[1] if v.startswith("data:") and "," in v else v
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RawInputError(
            f"row {row}, {name}: not valid base64; send the image file's bytes base64-encoded"
        ) from None


__all__ = ["RawInputError", "RawInputs", "image_bytes", "label_text"]
