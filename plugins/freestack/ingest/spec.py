"""The ``source:`` block of a pipeline spec: where landing files are, their format, schema and policy.

source:
  landing: "landing/{pipeline}/{ds}/"   # relative to the storage root, or a URI
  format: csv                          # csv | parquet | jsonl (a file's suffix wins)
  schema:
    key: id                            # unique per row; later stages split on it
    target: label                      # what a model learns to predict
    columns:
      - {name: id, type: string, nullable: false}
      - {name: "px_{i}", repeat: 64, type: float, min: 0, max: 16}
  policy: {on_missing: fail, max_quarantine_fraction: 0.05}
"""

from __future__ import annotations

import functools
import re
from typing import Any, BinaryIO, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from freestack.specbase import SpecModel as _Model

ColumnType = Literal["string", "int", "float", "bool", "date", "timestamp", "category", "text", "image"]
#: image formats Pillow decodes that ingest accepts by default
IMAGE_FORMATS = ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class Column(_Model):
    """One column of the landing schema."""

    name: str
    type: ColumnType = Field(
        default="string",
        description="The column's type; values are coerced to it and rows that do not fit are quarantined. category: a few distinct values (a vocabulary); text: free text (tokenized); image: a path under the interval's landing folder, or the image bytes in a Parquet file (checked with Pillow, kept as bytes in the lake).",
    )
    nullable: bool = Field(
        default=True, description="Whether an empty value (see csv.null_values) is allowed."
    )
    min: float | None = Field(default=None, description="The smallest allowed value (int and float columns).")
    max: float | None = Field(default=None, description="The largest allowed value (int and float columns).")
    allowed: list[Any] | None = Field(default=None, description="The only values allowed.")
    format: str | None = Field(
        default=None, description="strptime format for date/timestamp columns (default ISO 8601)"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _COLUMN_RE.match(v):
            raise ValueError(f"column name {v!r} must match {_COLUMN_RE.pattern}")
        return v

    @model_validator(mode="after")
    def _checks(self) -> Column:
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"min/max apply to int and float columns, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.format is not None and self.type not in ("date", "timestamp"):
            raise ValueError("format applies to date and timestamp columns only")
        if self.allowed is not None and not self.allowed:
            raise ValueError("allowed must list at least one value")
        if self.allowed is not None and self.type in ("text", "image"):
            raise ValueError(
                f"allowed does not apply to {self.type} columns; a column of a few known values is a category"
            )
        return self


class ColumnSpec(Column):
    """A column as written in YAML: ``repeat: N`` expands ``name: "px_{i}"`` to px_0..px_{N-1}."""

    repeat: int | None = Field(
        default=None, ge=1, le=100_000, description='Expand `name: "px_{i}"` to px_0 .. px_{N-1}, all alike.'
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        check = v.replace("{i}", "0")
        if not _COLUMN_RE.match(check):
            raise ValueError(f"column name {v!r} must match {_COLUMN_RE.pattern}")
        return v

    @model_validator(mode="after")
    def _repeat(self) -> ColumnSpec:
        if self.repeat is not None and "{i}" not in self.name:
            raise ValueError("a repeated column needs '{i}' in its name")
        if self.repeat is None and "{i}" in self.name:
            raise ValueError("'{i}' in a column name needs 'repeat: N'")
        return self

    def expand(self) -> list[Column]:
        data = self.model_dump(exclude={"repeat"})
        if self.repeat is None:
            return [Column(**data)]
        return [Column(**{**data, "name": self.name.replace("{i}", str(i))}) for i in range(self.repeat)]


class Schema(_Model):
    columns: list[ColumnSpec] = Field(min_length=1, description="The landing files' columns, in order.")
    key: str | None = Field(default=None, description="row key: unique per row, used for stable splits")
    target: str | None = Field(default=None, description="the column a model learns to predict")

    @property
    def fields(self) -> list[Column]:
        """Every column, each ``repeat:`` expanded (``px_{i}`` x 64: ``px_0`` ... ``px_63``)."""
        return list(self._expanded)

    @functools.cached_property
    def _expanded(self) -> tuple[Column, ...]:
        # once per schema (it is frozen): validating a spec reads the columns a dozen times
        return tuple(column for spec in self.columns for column in spec.expand())

    @model_validator(mode="after")
    def _refs(self) -> Schema:
        names = [c.name for c in self.fields]
        seen: set[str] = set()
        for n in names:
            if n in seen:
                raise ValueError(f"column {n!r} is declared twice")
            seen.add(n)
        for role in ("key", "target"):
            ref = getattr(self, role)
            if ref is not None and ref not in seen:
                raise ValueError(f"{role} {ref!r} is not one of the declared columns")
        if self.key is not None:
            key_col = next(c for c in self.fields if c.name == self.key)
            if key_col.nullable:
                raise ValueError(f"key column {self.key!r} cannot be nullable: set nullable: false")
        return self


class CsvOptions(_Model):
    delimiter: str = Field(default=",", min_length=1, max_length=1, description="The field separator.")
    quote_char: str = Field(default='"', min_length=1, max_length=1, description="The quote character.")
    header: bool = Field(default=True, description="Whether the first line names the columns.")
    null_values: list[str] = Field(
        default_factory=lambda: ["", "NA", "N/A", "null", "NULL"], description="Values read as empty."
    )
    encoding: str = Field(default="utf-8", description="The files' text encoding.")

    def header_names(self, f: BinaryIO) -> list[str]:
        """The names on the first line of ``f`` (a file read as bytes), stripped; none in an empty file."""
        import csv

        first = f.readline().decode(self.encoding, errors="replace").lstrip("\ufeff")
        row = next(csv.reader([first], delimiter=self.delimiter, quotechar=self.quote_char), [])
        return [c.strip() for c in row]

    def arrow_options(
        self, names: list[str], malformed: list, *, block_size: int, use_threads: bool = True
    ) -> tuple[Any, Any, Any]:
        """pyarrow's read, parse and convert options for a file of columns ``names``, each value read as
        bytes, as ingest and the score stage read a CSV; a line with too many or too few fields is left
        out, and goes to ``malformed`` as (its number, the reason, its text)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        def on_invalid(row: Any) -> str:
            reason = f"malformed row: expected {row.expected_columns} fields, found {row.actual_columns}"
            malformed.append((row.number, reason, row.text))
            return "skip"

        read = pacsv.ReadOptions(
            block_size=block_size,
            use_threads=use_threads,
            column_names=names,
            skip_rows=1 if self.header else 0,
            encoding="utf8" if self.encoding.lower().replace("-", "") == "utf8" else self.encoding,
        )
        parse = pacsv.ParseOptions(
            delimiter=self.delimiter, quote_char=self.quote_char, invalid_row_handler=on_invalid
        )
        convert = pacsv.ConvertOptions(
            column_types={n: pa.binary() for n in names},
            null_values=self.null_values,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        return read, parse, convert


class ImageOptions(_Model):
    """What ingest accepts in ``image`` columns (``source.images``); other images are quarantined."""

    max_bytes: int = Field(default=20_000_000, ge=1, description="The largest image file, in bytes.")
    max_pixels: int = Field(
        default=40_000_000, ge=1, description="The most pixels (width x height), checked before decoding."
    )
    formats: list[str] = Field(
        default_factory=lambda: list(IMAGE_FORMATS),
        min_length=1,
        description="The image formats accepted (Pillow's names).",
    )

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        return [f.upper() for f in v]


class IngestPolicy(_Model):
    on_missing: Literal["fail", "skip", "wait"] = Field(
        default="fail",
        description="No landing files for the interval: fail the task, skip it (the run stays green), or wait for them (a deferrable sensor).",
    )
    wait_timeout_minutes: float = Field(
        default=360, gt=0, description="With on_missing: wait, how long to wait."
    )
    wait_poke_seconds: float = Field(
        default=60, gt=0, description="With on_missing: wait, how often to look."
    )
    max_quarantine_fraction: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Over this fraction of rejected rows the partition is not published and the task fails.",
    )
    extra_columns: Literal["drop", "fail"] = Field(
        default="drop", description="Columns the schema does not declare: drop them, or fail."
    )
    missing_columns: Literal["fail", "null"] = Field(
        default="fail", description="Declared columns a file lacks: fail, or load them as null."
    )
    unique_key: Literal["window", "partition", "off"] = Field(
        default="window",
        description="What a key is unique across. window: a row whose key repeats an earlier row of its interval "
        "is quarantined, and in a training window a key's row from the latest partition wins (the older rows of "
        "that key are not read); partition: only the first (a key repeated on several days is trained once a "
        "day); off: keys are not checked. true means window, false off.",
    )
    block_size_mb: int = Field(default=16, ge=1, le=1024, description="How much of a file is read at a time.")

    @field_validator("unique_key", mode="before")
    @classmethod
    def _bool_unique_key(cls, v: Any) -> Any:
        return {True: "window", False: "off"}.get(v, v) if isinstance(v, bool) else v


class Source(_Model):
    landing: str = Field(
        default="landing/{pipeline}/{ds}/",
        description="Where an interval's files land: relative to the storage root, or a URI; {pipeline}, {ds}, {ds_nodash}, {yyyy}, {mm}, {dd}.",
    )
    format: Literal["csv", "parquet", "jsonl", "imagefolder"] = Field(
        default="csv",
        description="The files' format (a file's suffix wins); imagefolder: one sub-folder per label holding its images, a row per image.",
    )
    csv: CsvOptions = Field(default_factory=CsvOptions, description="How CSV files are read.")
    images: ImageOptions = Field(default_factory=ImageOptions, description="What image columns accept.")
    schema_: Schema = Field(alias="schema", description="The columns, the row key and the target.")
    policy: IngestPolicy = Field(
        default_factory=IngestPolicy, description="What to do with missing files and bad rows."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("landing")
    @classmethod
    def _landing(cls, v: str) -> str:
        try:
            v.format(pipeline="p", ds="2000-01-01", ds_nodash="20000101", yyyy="2000", mm="01", dd="01")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"landing template {v!r} uses an unknown placeholder ({exc}); "
                "use {pipeline}, {ds}, {ds_nodash}, {yyyy}, {mm}, {dd}"
            ) from None
        if "{ds}" not in v and "{ds_nodash}" not in v and "{dd}" not in v:
            raise ValueError("landing template must contain the interval ({ds} or {ds_nodash})")
        return v

    @field_validator("schema_")
    @classmethod
    def _imagefolder(cls, schema: Schema, info: ValidationInfo) -> Schema:
        """An image folder gives three columns: the key (the image's path), the target (its label folder)
        and the image; the schema must declare exactly those."""
        if info.data.get("format") != "imagefolder":
            return schema
        problems = _imagefolder_problems(schema)
        if problems:
            raise ValueError(
                "source.format imagefolder: declare exactly three columns: the key (type string: the image's "
                "path, label/file.png), the target (type string or category: the label folder) and one image "
                f"column, and nothing else; here {'; '.join(problems)}"
            )
        return schema


def _imagefolder_problems(schema: Schema) -> list[str]:
    """What an image folder's schema lacks or has too much of (empty: nothing)."""
    cols = {c.name: c for c in schema.fields}
    images = [n for n, c in cols.items() if c.type == "image"]
    out = []
    if schema.key is None:
        out.append("source.schema.key is not set: name the string column that gets the image's path")
    elif cols[schema.key].type != "string":
        out.append(f"source.schema.key {schema.key!r} is type {cols[schema.key].type}: make it type string")
    if schema.target is None:
        out.append("source.schema.target is not set: name the string or category column that gets the label")
    elif cols[schema.target].type not in ("string", "category"):
        out.append(
            f"source.schema.target {schema.target!r} is type {cols[schema.target].type}: make it category"
        )
    if len(images) != 1:
        out.append(
            f"source.schema.columns has {len(images)} image columns ({', '.join(images) or 'none'}): declare one"
        )
    if schema.key is not None and schema.key == schema.target:
        out.append(
            f"source.schema.key and source.schema.target are both {schema.key!r}: the target is the label, another column"
        )
    extra = [n for n in cols if n not in (schema.key, schema.target, *images)]
    if extra and schema.key is not None and schema.target is not None:
        out.append(
            f"source.schema.columns has {extra}, which an image folder gives no values for: remove them"
        )
    return out


__all__ = [
    "Column",
    "ColumnSpec",
    "ColumnType",
    "CsvOptions",
    "IMAGE_FORMATS",
    "ImageOptions",
    "IngestPolicy",
    "Schema",
    "Source",
]
