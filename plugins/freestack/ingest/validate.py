"""Vectorised validation and coercion of landing batches against a spec's schema.

Input batches hold every column as text (binary or string), exactly as it landed. Output: a typed
table of good rows and a table of rejected rows with the raw values and one reason per row.
Clean batches take a fast path (one arrow cast per column); a batch with bad values falls back to
per-value checks for that column only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from freestack.ingest.spec import Column

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "category": pa.string(),
    "text": pa.string(),
    "image": pa.binary(),  # the image file's bytes, as they landed
}

#: reads and checks an image column's values: (column name, raw values) -> freestack.ingest.images.Checked
ImageChecker = Callable[[str, list], Any]

#: the column a reader adds to its batches: each row's number in its file (a line of CSV and JSON lines, whose
#: header is line 1; a row of Parquet), which a quarantined row keeps as ``_line``
LINE = "__freestack_line__"

QUARANTINE_META = [
    ("_source", pa.string()),
    ("_line", pa.int64()),
    ("_reason", pa.string()),
    ("_raw", pa.string()),
]

_INT_RE = r"^\s*[+-]?[0-9]+\s*$"
_FLOAT_RE = r"^\s*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|(?i:nan|inf|infinity))\s*$"
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]


def arrow_schema(columns: list[Column]) -> pa.Schema:
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type], nullable=c.nullable) for c in columns])


def quarantine_schema(columns: list[Column]) -> pa.Schema:
    return pa.schema(
        [pa.field(n, t) for n, t in QUARANTINE_META] + [pa.field(c.name, pa.string()) for c in columns]
    )


@dataclass
class Validated:
    good: pa.Table
    rejected: pa.Table
    kept: pa.Array | None = None  # which rows of the batch are in ``good`` (a boolean mask)
    texts: pa.Table | None = None  # every row's values as text, as ``rejected`` shows them


class _Reasons:
    """The first failing reason per row, built column by column without Python loops."""

    def __init__(self, n: int):
        self.n = n
        self.reason = pa.nulls(n, pa.string())

    def add(self, fail: pa.Array, message: str | Callable[[pa.Array], pa.Array]) -> None:
        """Record ``message`` for the rows where ``fail`` is true and no earlier reason exists.

        ``message`` is a constant, or a builder called with the mask of newly failing rows that
        returns one message per such row: per-row messages are only built when something failed.
        """
        if not pc.any(fail).as_py():  # nulls count as "not failed"
            return
        if fail.null_count:
            fail = pc.fill_null(fail, False)
        first = pc.and_(fail, pc.is_null(self.reason))
        if callable(message):
            self.reason = pc.replace_with_mask(self.reason, first, message(first))
        else:
            self.reason = pc.if_else(first, pa.scalar(message, pa.string()), self.reason)

    @property
    def bad(self) -> pa.Array:
        return pc.is_valid(self.reason)


def _with_value(prefix: str, values: pa.Array) -> Callable[[pa.Array], pa.Array]:
    """A message builder: ``prefix 'value'`` for the rows of a mask (value cut at 80 characters)."""

    def build(mask: pa.Array) -> pa.Array:
        shown = pc.utf8_slice_codeunits(pc.fill_null(pc.filter(values, mask), ""), 0, 80)
        quoted = pc.binary_join_element_wise("'", shown, "'", "")
        return pc.binary_join_element_wise(pa.scalar(prefix), quoted, "")

    return build


def decode_utf8(col: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """Binary -> string. Returns the strings (invalid ones null) and a mask of invalid values or None."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col, None
    try:
        return pc.cast(col, pa.string()), None
    except pa.ArrowInvalid:
        pass
    raw = col.to_pylist()
    ok, bad = [], []
    for v in raw:
        if v is None:
            ok.append(None)
            bad.append(False)
            continue
        try:
            ok.append(v.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            ok.append(None)
            bad.append(True)
    return pa.array(ok, pa.string()), pa.array(bad, pa.bool_())


def _number(v: str | None, integer: bool) -> int | float | None:
    """A value of a column arrow would not cast: None where it is no number or an integer outside int64."""
    if v is None:
        return None
    try:
        n = int(v) if integer else float(v)
    except ValueError:
        return None
    return None if integer and not -(2**63) <= n < 2**63 else n


def _coerce(col: Column, text: pa.Array, reasons: _Reasons) -> pa.Array:
    """Text -> the column's type; values that do not parse become null and get a reason."""
    target = ARROW_TYPES[col.type]
    if col.type in ("string", "category", "text"):
        return text
    present = pc.is_valid(text)
    if col.type in ("int", "float"):
        try:
            return pc.cast(text, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        pattern = _INT_RE if col.type == "int" else _FLOAT_RE
        ok = pc.match_substring_regex(text, pattern)
        stripped = pc.utf8_trim_whitespace(pc.if_else(ok, text, pa.scalar(None, pa.string())))
        try:
            out = pc.cast(stripped, target)
        except pa.ArrowInvalid:  # e.g. an integer too large for int64
            out = pa.array([_number(v, col.type == "int") for v in stripped.to_pylist()], target)
        kind = "an integer" if col.type == "int" else "a number"
        reasons.add(pc.and_(present, pc.is_null(out)), _with_value(f"{col.name}: not {kind}: ", text))
        return out
    if col.type == "bool":
        low = pc.utf8_lower(pc.utf8_trim_whitespace(text))
        is_t = pc.is_in(low, value_set=pa.array(_TRUE))
        is_f = pc.is_in(low, value_set=pa.array(_FALSE))
        ok = pc.or_(is_t, is_f)
        reasons.add(pc.and_(present, pc.invert(ok)), _with_value(f"{col.name}: not a boolean: ", text))
        return pc.if_else(ok, is_t, pa.scalar(None, pa.bool_()))
    # date / timestamp
    if col.format:
        parsed = pc.strptime(text, format=col.format, unit="us", error_is_null=True)
    else:
        try:
            parsed = pc.cast(text, pa.timestamp("us"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            parsed = None
            for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"):
                attempt = pc.strptime(
                    pc.utf8_trim_whitespace(text), format=fmt, unit="us", error_is_null=True
                )
                parsed = attempt if parsed is None else pc.coalesce(parsed, attempt)
    out = pc.cast(parsed, pa.date32()) if col.type == "date" else parsed
    wanted = f"a {col.type} ({col.format or ('YYYY-MM-DD' if col.type == 'date' else 'ISO 8601')})"
    reasons.add(pc.and_(present, pc.is_null(out)), _with_value(f"{col.name}: not {wanted}: ", text))
    return out


def _check(col: Column, values: pa.Array, text: pa.Array, reasons: _Reasons) -> None:
    if not col.nullable:
        reasons.add(
            pc.and_(pc.is_null(values), pc.is_null(text)),
            f"{col.name}: missing value (column is not nullable)",
        )
    if col.min is not None:
        reasons.add(
            pc.less(values, col.min), _with_value(f"{col.name}: below the minimum {col.min:g}: ", text)
        )
    if col.max is not None:
        reasons.add(
            pc.greater(values, col.max), _with_value(f"{col.name}: above the maximum {col.max:g}: ", text)
        )
    if col.type == "float" and (col.min is not None or col.max is not None):
        reasons.add(pc.is_nan(values), _with_value(f"{col.name}: NaN is outside the allowed range: ", text))
    if col.allowed is not None:
        allowed = pa.array(col.allowed).cast(values.type)
        reasons.add(
            pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, value_set=allowed))),
            _with_value(f"{col.name}: not one of the allowed values: ", text),
        )


def _images(
    col: Column, raw: pa.Array, images: ImageChecker | None, reasons: _Reasons
) -> tuple[pa.Array, pa.Array]:
    """(what the quarantine shows, the images' bytes) of an image column; failures get their reason."""
    if images is None:
        raise ValueError(f"{col.name}: an image column needs the landing folder to read images from")
    checked = images(col.name, raw.to_pylist())
    failed = pa.array([r is not None for r in checked.reasons], pa.bool_())
    messages = pa.array(checked.reasons, pa.string())
    reasons.add(failed, lambda mask: pc.filter(messages, mask))
    return pa.array(checked.shown, pa.string()), pa.array(checked.data, pa.binary())


def validate_batch(
    batch: pa.RecordBatch | pa.Table,
    columns: list[Column],
    *,
    source: str,
    duplicate: pa.Array | None = None,
    key: str | None = None,
    images: ImageChecker | None = None,
) -> Validated:
    """Coerce and check one batch whose columns (a superset of ``columns``, missing ones as null) are text
    (image columns: paths, or image bytes, read and checked by ``images``)."""
    n = batch.num_rows
    reasons = _Reasons(n)
    texts: dict[str, pa.Array] = {}
    typed: dict[str, pa.Array] = {}
    names = set(batch.schema.names)
    for col in columns:
        raw = batch.column(col.name) if col.name in names else pa.nulls(n, pa.string())
        if isinstance(raw, pa.ChunkedArray):
            raw = raw.combine_chunks()
        if col.type == "image":
            texts[col.name], typed[col.name] = _images(col, raw, images, reasons)
            _check(col, typed[col.name], texts[col.name], reasons)
            continue
        text, bad_utf8 = decode_utf8(raw)
        if bad_utf8 is not None:
            reasons.add(bad_utf8, f"{col.name}: not valid UTF-8 text")
        texts[col.name] = text
        typed[col.name] = _coerce(col, text, reasons)
        _check(col, typed[col.name], text, reasons)
    if duplicate is not None and key is not None:
        reasons.add(duplicate, _with_value(f"{key}: duplicate key (an earlier row has it): ", texts[key]))
    bad = reasons.bad
    good_mask = pc.invert(bad)
    good = pa.table({c.name: typed[c.name] for c in columns}).filter(good_mask)
    good = good.cast(arrow_schema(columns))
    if pc.any(bad).as_py():
        rej = {
            "_source": pa.array([source] * n, pa.string()),
            "_line": batch.column(LINE) if LINE in names else pa.nulls(n, pa.int64()),
            "_reason": reasons.reason,
            "_raw": pa.nulls(n, pa.string()),
        }
        rej.update(texts)
        rejected = pa.table(rej).filter(bad).cast(quarantine_schema(columns))
    else:
        rejected = quarantine_schema(columns).empty_table()
    return Validated(good=good, rejected=rejected, kept=good_mask, texts=pa.table(texts))


def rejected_rows(
    texts: dict[str, list[str | None]], reasons: list[str], columns: list[Column], source: str
) -> pa.Table:
    """Rows refused before their values are checked (an image outside every label folder), each with its
    reason and its values as text (``texts``: by column; the others null)."""
    n = len(reasons)
    data = {
        "_source": pa.array([source] * n, pa.string()),
        "_line": pa.nulls(n, pa.int64()),
        "_reason": pa.array(reasons, pa.string()),
        "_raw": pa.nulls(n, pa.string()),
    }
    for c in columns:
        data[c.name] = pa.array(texts.get(c.name, [None] * n), pa.string())
    return pa.table(data, schema=quarantine_schema(columns))


def malformed_rows(rows: list[tuple[int | None, str, str]], columns: list[Column], source: str) -> pa.Table:
    """Rows that could not even be split into fields: (line, reason, raw text)."""
    n = len(rows)
    data = {
        "_source": pa.array([source] * n, pa.string()),
        "_line": pa.array([r[0] for r in rows], pa.int64()),
        "_reason": pa.array([r[1] for r in rows], pa.string()),
        "_raw": pa.array([r[2][:10_000] for r in rows], pa.string()),
    }
    for c in columns:
        data[c.name] = pa.nulls(n, pa.string())
    return pa.table(data, schema=quarantine_schema(columns))
