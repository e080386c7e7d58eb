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

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from freestack.specbase import SpecModel as _Model

ColumnType = Literal["string", "int", "float", "bool", "date", "timestamp"]
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class Column(_Model):
    """One column of the landing schema."""

    name: str
    type: ColumnType = "string"
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
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
        return self


class ColumnSpec(Column):
    """A column as written in YAML: ``repeat: N`` expands ``name: "px_{i}"`` to px_0..px_{N-1}."""

    repeat: int | None = Field(default=None, ge=1, le=100_000)

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
    columns: list[ColumnSpec] = Field(min_length=1)
    key: str | None = Field(default=None, description="row key: unique per row, used for stable splits")
    target: str | None = Field(default=None, description="the column a model learns to predict")

    @property
    def fields(self) -> list[Column]:
        out: list[Column] = []
        for spec in self.columns:
            out.extend(spec.expand())
        return out

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
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote_char: str = Field(default='"', min_length=1, max_length=1)
    header: bool = True
    null_values: list[str] = Field(default_factory=lambda: ["", "NA", "N/A", "null", "NULL"])
    encoding: str = "utf-8"


class IngestPolicy(_Model):
    on_missing: Literal["fail", "skip", "wait"] = "fail"
    wait_timeout_minutes: float = Field(default=360, gt=0)
    wait_poke_seconds: float = Field(default=60, gt=0)
    max_quarantine_fraction: float = Field(default=0.05, ge=0, le=1)
    extra_columns: Literal["drop", "fail"] = "drop"
    missing_columns: Literal["fail", "null"] = "fail"
    unique_key: bool = Field(
        default=True, description="reject rows whose key repeats an earlier row of the same interval"
    )
    block_size_mb: int = Field(default=16, ge=1, le=1024)


class Source(_Model):
    landing: str = "landing/{pipeline}/{ds}/"
    format: Literal["csv", "parquet", "jsonl"] = "csv"
    csv: CsvOptions = Field(default_factory=CsvOptions)
    schema_: Schema = Field(alias="schema")
    policy: IngestPolicy = Field(default_factory=IngestPolicy)

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



__all__ = ["Column", "ColumnSpec", "ColumnType", "CsvOptions", "IngestPolicy", "Schema", "Source"]
