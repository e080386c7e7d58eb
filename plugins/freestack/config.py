"""Pipeline specs (``include/pipelines/<name>.yaml``) and project settings.

A spec is validated into typed models; every error names the file and the field.
Settings come from the environment (``FREESTACK_*``), so they work identically in every
Airflow process, in tests and in notebooks.

This module imports neither Airflow nor any heavy library: DAG files use it at parse time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from freestack.errors import SpecError

# ---------------------------------------------------------------------------------------------------------
# settings


def checkout_dir() -> Path:
    """The project checkout this package lives in (``plugins/freestack``), else the current directory."""
    here = Path(__file__).resolve()
    if here.parents[1].name == "plugins":
        return here.parents[2]
    return Path.cwd()


def project_home() -> Path:
    """The folder that holds the embedded defaults (``.freestack/storage``, ``.freestack/data``):
    ``FREESTACK_HOME``, else the project checkout."""
    env = os.environ.get("FREESTACK_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return checkout_dir()


def default_storage_root() -> str:
    """``FREESTACK_STORAGE_ROOT`` or ``file://<home>/.freestack/storage``."""
    env = os.environ.get("FREESTACK_STORAGE_ROOT")
    if env:
        return env.rstrip("/")
    return (project_home() / ".freestack" / "storage").as_uri()


def pipelines_dir() -> Path:
    """Where pipeline specs live: ``FREESTACK_PIPELINES_DIR`` or ``<checkout>/include/pipelines``."""
    env = os.environ.get("FREESTACK_PIPELINES_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return checkout_dir() / "include" / "pipelines"


# ---------------------------------------------------------------------------------------------------------
# spec models

ColumnType = Literal["string", "int", "float", "bool", "date", "timestamp"]
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ModelSpec(_Model):
    """What to train (``model:``). ``type: auto`` picks a CNN when ``image_shape`` is given."""

    name: str | None = Field(default=None, description="registry name; default: the pipeline name")
    type: Literal["auto", "mlp", "cnn"] = "auto"
    task: Literal["auto", "classification", "regression"] = "auto"
    features: list[str] | None = Field(default=None, description="default: every numeric/bool column")
    image_shape: list[int] | None = Field(default=None, min_length=2, max_length=3)
    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    channels: list[int] = Field(default_factory=lambda: [16, 32])
    dropout: float = Field(default=0.1, ge=0, lt=1)
    hub_repo: str | None = Field(
        default=None, description="Hugging Face Hub repo (org/name) registered versions are pushed to"
    )

    @field_validator("image_shape")
    @classmethod
    def _shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(d < 1 for d in v):
            raise ValueError(f"image_shape {v} must have positive sizes")
        return v

    @model_validator(mode="after")
    def _cnn(self) -> ModelSpec:
        if self.type == "cnn" and self.image_shape is None:
            raise ValueError("type: cnn needs image_shape (e.g. [8, 8] or [channels, height, width])")
        return self


class TrainSpec(_Model):
    """Training defaults (``train:``); the train DAG's Params form overrides them per run."""

    schedule: str | None = Field(default=None, description="a cron; default: run on each lake update")
    window_days: int = Field(default=30, ge=1, le=3660)
    epochs: int = Field(default=30, ge=1, le=10_000)
    learning_rate: float = Field(default=3e-3, gt=0, le=10)
    batch_size: int = Field(default=64, ge=1, le=1_000_000)
    weight_decay: float = Field(default=1e-4, ge=0)
    patience: int = Field(default=5, ge=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    scheduler: Literal["cosine", "constant", "onecycle"] = "cosine"
    warmup_epochs: int = Field(default=1, ge=0)
    seed: int = 42
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # the executor queue of the training tasks (``train`` and the sweep's ``agent``s): ``gpu`` sends them
    # to GPU workers (a Celery worker consuming ``gpu``, or the Helm values' GPU pod template)
    queue: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")


class PipelineSpec(_Model):
    name: str
    description: str = ""
    owner: str = "freestack"
    storage_root: str | None = Field(default=None, description="overrides FREESTACK_STORAGE_ROOT")
    schedule: str | None = "@daily"
    start_date: date = date(2026, 1, 1)
    catchup: bool = False
    #: ingest runs (days) at once: catch-up, scheduled and backfill runs (a backfill's own
    #: --max-active-runs wins for it); each is one light task
    max_active_runs: int = Field(default=8, ge=1, le=64)
    retries: int = Field(default=2, ge=0, le=20)
    retry_delay_seconds: float = Field(default=30, ge=0)
    tags: list[str] = Field(default_factory=list)
    source: Source
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    # blocks read by later stages; validated by them
    sweep: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    deploy: dict[str, Any] = Field(default_factory=lambda: _default_deploy())

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"pipeline name {v!r} must match {_NAME_RE.pattern}")
        return v

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep(cls, v: Any) -> dict[str, Any] | None:
        if v is None:
            return v
        from freestack.sweeps.config import validate  # imports the sweeps engine only when a spec has one

        return validate(v)

    @field_validator("gate", mode="before")
    @classmethod
    def _gate(cls, v: Any) -> dict[str, Any] | None:
        if v is None:
            return v
        if not isinstance(v, dict):
            raise ValueError(f"must be a mapping (metric, min_value, min_improvement, ...), got {type(v).__name__}")
        from pydantic import ValidationError as _VE

        from freestack.evaluate.gate import GateSpec

        try:
            return GateSpec.model_validate(v).model_dump()
        except _VE as exc:
            raise ValueError(block_problems(exc)) from None

    @field_validator("deploy", mode="before")
    @classmethod
    def _deploy(cls, v: Any) -> dict[str, Any]:
        from freestack.serving.spec import parse_deploy

        return parse_deploy(v)

    @field_validator("storage_root")
    @classmethod
    def _root(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in ("file", "s3", "data"):
            raise ValueError(f"storage_root {v!r} must start with file://, s3:// or data://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _model_fits_source(self) -> PipelineSpec:
        schema = self.source.schema_
        cols = {c.name: c for c in schema.fields}
        if self.model.features is not None:
            unknown = [f for f in self.model.features if f not in cols]
            if unknown:
                raise ValueError(f"model.features {unknown} are not columns of source.schema")
        if self.model.image_shape is not None:
            n = len(self.model_features)
            size = 1
            for d in self.model.image_shape:
                size *= d
            if size != n:
                raise ValueError(
                    f"model.image_shape {self.model.image_shape} holds {size} values but there are {n} "
                    "feature columns; list model.features or fix the shape"
                )
        return self

    @property
    def model_features(self) -> list[str]:
        """The feature columns: ``model.features``, else every int/float/bool column but key and target."""
        schema = self.source.schema_
        if self.model.features is not None:
            return list(self.model.features)
        return [
            c.name
            for c in schema.fields
            if c.type in ("int", "float", "bool") and c.name not in (schema.key, schema.target)
        ]

    @property
    def model_name(self) -> str:
        return self.model.name or self.name

    @property
    def deploy_spec(self):
        """The ``deploy:`` block as a typed ``freestack.serving.spec.DeploySpec``."""
        from freestack.serving.spec import DeploySpec

        return DeploySpec.model_validate(self.deploy)

    @property
    def deployment_name(self) -> str:
        from freestack.serving.spec import deploy_name

        return deploy_name(self.deploy_spec, self.model_name)

    @property
    def root(self) -> str:
        return self.storage_root or default_storage_root()

    @property
    def retry_delay(self) -> timedelta:
        return timedelta(seconds=self.retry_delay_seconds)

    def spec_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def block_problems(exc: ValidationError) -> str:
    """A nested block's validation errors on one line (``field.path: message; ...``): the spec loader
    puts the block's own name in front."""
    return "; ".join(
        (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + e["msg"].removeprefix("Value error, ")
        for e in exc.errors()
    )


def _default_deploy() -> dict[str, Any]:
    from freestack.serving.spec import parse_deploy

    return parse_deploy({})


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def parse_spec(data: Any, path: str) -> PipelineSpec:
    """Validate a loaded YAML document; raise SpecError naming ``path`` and the field."""
    if not isinstance(data, dict):
        raise SpecError(path, None, f"expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = _field_path(tuple(p for p in err["loc"] if p not in ("function-after",)))
            msg = err["msg"].removeprefix("Value error, ")
            problems.append((field, msg))
        field, msg = problems[0]
        more = "" if len(problems) == 1 else "; " + "; ".join(f"{f}: {m}" for f, m in problems[1:])
        raise SpecError(path, field, msg + more) from None
    stem = Path(path).stem
    if spec.name != stem:
        raise SpecError(path, "name", f"name {spec.name!r} must equal the file name {stem!r}")
    return spec


def load_spec(path: str | os.PathLike) -> PipelineSpec:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(p), None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise SpecError(str(p), None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        # libyaml's parser where PyYAML was built with it: 10-20x faster, and a DAG parse loads every spec
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(str(p), None, f"invalid YAML at {where}: {problem}") from None
    return parse_spec(data, str(p))


def discover_specs(directory: str | os.PathLike | None = None) -> dict[str, PipelineSpec | SpecError]:
    """Every ``*.yaml``/``*.yml`` spec in the folder, by file stem: a spec, or the error that broke it."""
    folder = Path(directory) if directory else pipelines_dir()
    out: dict[str, PipelineSpec | SpecError] = {}
    if not folder.is_dir():
        return out
    for p in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            out[p.stem] = load_spec(p)
        except SpecError as exc:
            out[p.stem] = exc
    return out
