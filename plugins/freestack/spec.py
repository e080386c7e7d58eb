"""The pipeline spec (``include/pipelines/<name>.yaml``): each stage's typed block, assembled.

    name: digits                 # the file name
    schedule: "@daily"
    source: {...}                # freestack.ingest.spec  (landing files, schema, ingest policy)
    model: {...}                 # freestack.train.spec   (what to train)
    train: {...}                 # freestack.train.spec   (how to train)
    sweep: {...}                 # freestack.sweeps.spec  (W&B sweep configuration)
    gate: {...}                  # freestack.evaluate.spec (when a candidate may replace production)
    deploy: {...}                # freestack.serving.spec (where and how it is served)
    monitor: {...}               # freestack.monitor.spec (drift checks of the served model)
    score: {...}                 # freestack.score.spec   (batch scoring of the lake; optional)

Every block is validated when the spec is read, together with what ties blocks to each other (the
model's features are columns, the gate's and the sweep's metrics belong to the task); every error names
the file and the field. This module imports neither Airflow nor any heavy library: DAG files use it at
parse time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from datetime import date, timedelta
from pathlib import Path

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from freestack.errors import SpecError
from freestack.evaluate.spec import METRICS, GateSpec
from freestack.ingest.spec import Source
from freestack.monitor.spec import MonitorSpec
from freestack.score.spec import ScoreSpec
from freestack.serving.spec import DeploySpec, deploy_name
from freestack.settings import default_storage_root, pipelines_dir
from freestack.specbase import SpecModel, problems
from freestack.sweeps.spec import DPO, EPOCH_METRICS, GRPO, INIT, PEFT, SweepSpec
from freestack.train.spec import PRETRAINED_TASKS, ModelSpec, TrainSpec

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
#: the column types a model can take (freestack.ml.features encodes them)
FEATURE_TYPES = ("int", "float", "bool", "category", "text", "image")


class PricesSpec(SpecModel):
    """What an hour of compute costs (``prices:``): a version's training (and serving) seconds times these
    are its cost. 0 by default: the stack is free, and a machine you own costs what you say it does."""

    cpu_hour: float = Field(default=0.0, ge=0, description="The price of one CPU core for an hour.")
    gpu_hour: float = Field(default=0.0, ge=0, description="The price of one GPU for an hour.")
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 code of the prices.")


class PipelineSpec(SpecModel):
    """One pipeline: where its data lands, what it trains, how it is gated and served."""

    name: str = Field(description="The pipeline's name; must equal the spec's file name.")
    description: str = Field(default="", description="Shown on the DAGs and in the model card.")
    owner: str = Field(default="freestack", description="The DAGs' owner.")
    storage_root: str | None = Field(
        default=None,
        description="This pipeline's storage root (file://, s3:// or data://); default: the storage_root setting.",
    )
    schedule: str | None = Field(
        default="@daily", description="The ingest DAG's schedule (a cron or a preset); null: manual."
    )
    start_date: date = Field(default=date(2026, 1, 1), description="The first data interval.")
    catchup: bool = Field(default=False, description="Unpausing runs every missed interval since start_date.")
    max_active_runs: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Ingest runs (days) at once: catch-up, scheduled and backfill runs (a backfill's own "
        "--max-active-runs wins for it).",
    )
    retries: int = Field(
        default=2, ge=0, le=20, description="Retries of every task (I/O errors; data errors fail at once)."
    )
    retry_delay_seconds: float = Field(default=30, ge=0, description="Seconds between retries.")
    tags: list[str] = Field(default_factory=list, description="Extra DAG tags.")
    source: Source = Field(description="Landing files, their schema and the ingest policy.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="What to train.")
    train: TrainSpec = Field(
        default_factory=TrainSpec, description="How to train (the Params form overrides it per run)."
    )
    sweep: SweepSpec | None = Field(
        default=None, description="A hyperparameter sweep (W&B sweep configuration)."
    )
    gate: GateSpec = Field(default_factory=GateSpec, description="When a candidate may replace production.")
    prices: PricesSpec = Field(
        default_factory=PricesSpec,
        description="What compute costs, to turn a version's measured seconds into money (0: free).",
    )
    deploy: DeploySpec = Field(default_factory=DeploySpec, description="Where and how production is served.")
    monitor: MonitorSpec = Field(
        default_factory=MonitorSpec,
        description="How the served model's request log is judged, and what drift does.",
    )
    score: ScoreSpec | None = Field(
        default=None, description="Batch scoring of the lake with a registered version (a <name>_score DAG)."
    )
    #: the sha256 of the spec file's bytes when the spec was read from a file (``load_spec``)
    _file_sha256: str | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"pipeline name {v!r} must match {_NAME_RE.pattern}")
        return v

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
    def _score_has_a_model(self) -> PipelineSpec:
        if self.score is not None and self.score.generation is not None and not self.model.generative:
            raise ValueError(
                "score.generation is for a text-generation model (model.task: text-generation): "
                "remove it, this model scores rows"
            )
        teacher = self.score.teacher if self.score is not None else None
        if teacher is not None and not self.model.generative:
            raise ValueError(
                "score.teacher answers prompts: it is for a text-generation pipeline (model.task: "
                "text-generation, model.data naming the prompt or messages column)"
            )
        if teacher is not None and teacher.land is not None and teacher.land.pipeline == self.name:
            raise ValueError(
                f"score.teacher.land.pipeline {self.name!r} is this pipeline: land the answers into the "
                "student's pipeline, whose landing folder holds prompt and answer rows"
            )
        if self.score is not None and teacher is None and self.source.schema_.target is None:
            raise ValueError(
                "score: needs a model to score with: declare source.schema.target, so that the "
                "pipeline trains one, or remove the score block"
            )
        return self

    @model_validator(mode="after")
    def _model_fits_source(self) -> PipelineSpec:
        cols = {c.name for c in self.source.schema_.fields}
        if self.model.features is not None:
            unknown = [f for f in self.model.features if f not in cols]
            if unknown:
                raise ValueError(f"model.features {unknown} are not columns of source.schema")
        self._check_feature_kinds()
        if self.model.image_shape is not None:
            n = len(self.model_features)
            size = math.prod(self.model.image_shape)
            if size != n:
                raise ValueError(
                    f"model.image_shape {self.model.image_shape} holds {size} values but there are {n} "
                    "feature columns; list model.features or fix the shape"
                )
        return self

    def _check_feature_kinds(self) -> None:
        if self.model.generative:
            self._check_chat_columns()
            if self.train.data.mode == "stream":
                raise ValueError(
                    "train.data.mode stream: a text-generation window is read into memory (its "
                    "conversations are tokenized whole); set train.data.mode: memory, or auto"
                )
            return
        kinds = self.feature_kinds
        loose = [f for f, t in kinds.items() if t not in FEATURE_TYPES]
        if loose:
            raise ValueError(
                f"model.features {loose} are {sorted({kinds[f] for f in loose})} columns, which a model "
                "cannot take: declare them as category (a few distinct values) or text (free text) in "
                "source.schema, or leave them out of model.features"
            )
        images = [f for f, t in kinds.items() if t == "image"]
        if len(images) > 1:
            raise ValueError(f"one image column per model, not {images}: list one of them in model.features")
        plain = all(t in ("int", "float", "bool") for t in kinds.values())
        if not plain and (self.model.type == "cnn" or self.model.image_shape is not None):
            raise ValueError(
                "type: cnn and image_shape are for pixels held in numeric columns; an image column is "
                "read by the built-in net's image encoder (model.image) with type: auto or mlp"
            )
        if self.model.type == "huggingface":
            self._check_pretrained_input(kinds)

    def _check_chat_columns(self) -> None:
        """A text-generation model reads its conversations from ``model.data``'s columns, which are text
        columns of the schema; the target is the response (or the messages) column."""
        data, schema = self.model.chat, self.source.schema_
        types = {c.name: c.type for c in schema.fields}
        for name in data.columns:
            if types.get(name) not in ("text", "string"):
                found = f"a {types[name]} column" if name in types else "not a column of source.schema"
                raise ValueError(
                    f"model.data: {name!r} is {found}; the conversation columns are text columns "
                    "(set model.data.prompt/response or messages to yours)"
                )
        answer = data.response or data.messages
        if schema.target is not None and schema.target != answer:
            raise ValueError(
                f"source.schema.target is {schema.target!r}, but a text-generation model learns the "
                f"{answer!r} column (model.data): set target: {answer}"
            )

    def _check_pretrained_input(self, kinds: dict[str, str]) -> None:
        """A pretrained model reads one column: a text column (text-classification) or an image column."""
        wanted = PRETRAINED_TASKS.get(self.model.task)
        fits = [f for f, t in kinds.items() if t in ("text", "image") and (wanted is None or t == wanted)]
        if len(kinds) != 1 or len(fits) != 1:
            need = (
                f"one {wanted} column"
                if wanted
                else "one text column (text-classification) or one image column (image-classification)"
            )
            raise ValueError(
                f"type: huggingface reads {need} as its feature, but the features are "
                f"{kinds or 'none'}; list it in model.features"
            )

    @model_validator(mode="after")
    def _judge_reward_has_a_judge(self) -> PipelineSpec:
        if self.judge_rewarded and self.gate.judge is None:
            raise ValueError(
                "train.grpo.rewards: the judge reward asks gate.judge's endpoint: add a gate.judge block "
                "(url, model, api_key, rubric), or remove the reward"
            )
        return self

    @model_validator(mode="after")
    def _server_rollouts_push_an_adapter(self) -> PipelineSpec:
        grpo = self.train.grpo if self.train.objective == "grpo" else None
        if grpo is None or grpo.rollouts != "server":
            return self
        if self.model.peft is None:
            raise ValueError(
                "train.grpo.rollouts: server pushes the LoRA adapter being trained to the deployment: add "
                "model.peft, or sample in the training process (rollouts: auto) to train full weights"
            )
        if self.train.distributed.world_size > 1:
            raise ValueError(
                "train.grpo.rollouts: server samples for one training process: drop train.distributed, or "
                "sample on the ranks (rollouts: auto)"
            )
        return self

    @property
    def judge_rewarded(self) -> bool:
        """Whether a GRPO training asks the judge for a reward (its key is read by the task that trains)."""
        grpo = self.train.grpo if self.train.objective == "grpo" else None
        return grpo is not None and any(r.function == "judge" for r in grpo.rewards)

    @model_validator(mode="after")
    def _sweep_init_is_the_models(self) -> PipelineSpec:
        """A sweep's ``init.<name>`` parameters are a custom model's constructor arguments: the model
        must be custom and give ``name`` a default in ``model.init``."""
        if self.sweep is None:
            return self

        for path in self.sweep.leaves():
            *parents, name = path.split(".")
            if PEFT in parents and (self.model.type != "huggingface" or self.model.peft is None):
                raise ValueError(
                    f"sweep.parameters.{path}: peft.<setting> parameters are for model.type: huggingface with a peft block"
                )
            for node in (DPO, GRPO):
                if node in parents and self.train.objective != node:
                    raise ValueError(
                        f"sweep.parameters.{path}: {node}.<setting> parameters are for train.objective: {node}"
                    )
            if INIT not in parents:
                continue
            if self.model.type != "custom":
                raise ValueError(
                    f"sweep.parameters.{path}: init.<argument> parameters are for model.type: custom"
                )
            if name not in self.model.init:
                raise ValueError(
                    f"sweep.parameters.{path}: {name!r} is not in model.init "
                    f"({', '.join(self.model.init) or 'empty'}); give it a default there"
                )
        return self

    @model_validator(mode="after")
    def _metrics_fit_task(self) -> PipelineSpec:
        """The gate's and the sweep's metrics must be ones the task reports: checked when the spec is read,
        not when a run reaches the gate. A preference-tuned model's sweep is judged on what DPO logs each
        epoch (the ``preference`` metrics); its gate on the text-generation ones."""
        task, reason = self.task, self._task_reason()
        named = [
            ("gate.metric", self.gate.metric, METRICS, task, reason),
            *(("gate.max_regression", m, METRICS, task, reason) for m in self.gate.max_regression),
        ]
        if self.sweep is not None:
            named.extend(self._sweep_metric_named())
        for field, name, table, owner, why in named:
            if name is None:
                continue
            owners = [t for t in table if name in table[t]]
            if owner is not None and owner not in owners:
                raise ValueError(
                    f"{field}: {name!r} is not a {owner} metric ({why}); use one of {', '.join(table[owner])}"
                )
            if owner is None and len(owners) == 1:
                raise ValueError(
                    f"{field}: {name!r} is a {owners[0]} metric, but this pipeline's task is decided by the data "
                    f"({why}); set model.task: {owners[0]} (or list the target's classes in "
                    f"its column's allowed:)"
                )
        return self

    def _sweep_metric_named(self) -> list[tuple[str, str | None, dict, str | None, str]]:
        """The sweep's metric with the table and task it is checked against. A DPO or GRPO sweep must name
        it: with none, trials would be compared on the text-generation task's val_perplexity, which
        neither logs."""
        metric, objective = self.sweep.metric, self.train.objective
        if not (self.model.generative and objective in ("dpo", "grpo")):
            if metric is None:
                return []
            return [("sweep.metric.name", metric.name, EPOCH_METRICS, self.task, self._task_reason())]
        if metric is None:
            best = "val_reward_margin" if objective == "dpo" else "val_reward"
            raise ValueError(
                f"sweep.metric: a train.objective {objective} sweep compares trials on a metric it logs each "
                f"epoch; set sweep.metric: {{name: {best}, goal: maximize}}"
            )
        loop_task = "preference" if objective == "dpo" else "grpo"
        table = dict(EPOCH_METRICS)
        if objective == "grpo" and self.train.grpo is not None:  # each reward's own: val_reward_<name>
            table["grpo"] = (*table["grpo"], *(f"val_reward_{n}" for n in self.train.grpo.reward_labels))
        return [("sweep.metric.name", metric.name, table, loop_task, f"train.objective is {objective}")]

    @property
    def task(self) -> str | None:
        """``model.task``, else what the target column says: classification for string/bool/category targets and
        for int targets whose ``allowed:`` values list the classes, regression for float targets; None
        for other int targets (the data decides: few distinct values make it classification)."""
        if self.model.generative:
            return "generation"
        if self.model.type == "huggingface":
            return "classification"  # text-classification / image-classification
        if self.model.task != "auto":
            return self.model.task
        target = self._target_column()
        if target is None:
            return None
        if target.type in ("string", "bool", "category") or (target.type == "int" and target.allowed):
            return "classification"
        if target.type == "float":
            return "regression"
        return None

    def _target_column(self):
        schema = self.source.schema_
        return next((c for c in schema.fields if c.name == schema.target), None)

    def _task_reason(self) -> str:
        if self.model.generative:
            return "model.task is text-generation"
        if self.model.type == "huggingface":
            return "model.type is huggingface (a classification task)"
        if self.model.task != "auto":
            return f"model.task is {self.model.task}"
        target = self._target_column()
        kind = f"a {target.type} target" if target is not None else "no target"
        extra = (
            " with allowed: classes" if target is not None and target.type == "int" and target.allowed else ""
        )
        return f"model.task is auto and {self.source.schema_.target!r} is {kind}{extra}"

    @property
    def model_features(self) -> list[str]:
        """The feature columns: ``model.features``, else every int/float/bool/category/text/image column
        but key and target (string, date and timestamp columns are never features)."""
        schema = self.source.schema_
        if self.model.generative:  # the conversation's columns (model.data)
            return [c for c in self.model.chat.columns if c != schema.target] or list(self.model.chat.columns)
        if self.model.features is not None:
            return list(self.model.features)
        return [
            c.name
            for c in schema.fields
            if c.type in FEATURE_TYPES and c.name not in (schema.key, schema.target)
        ]

    @property
    def feature_kinds(self) -> dict[str, str]:
        """Each feature column's type."""
        types = {c.name: c.type for c in self.source.schema_.fields}
        return {f: types[f] for f in self.model_features}

    @property
    def uses_hub(self) -> bool:
        """Whether training reads from the Hugging Face Hub: a pretrained base, or a named tokenizer."""
        m = self.model
        return m.type == "huggingface" or (
            m.text.tokenizer != "train" and "text" in self.feature_kinds.values()
        )

    @property
    def model_name(self) -> str:
        return self.model.name or self.name

    @property
    def deployment_name(self) -> str:
        return deploy_name(self.deploy, self.model_name)

    @property
    def root(self) -> str:
        return self.storage_root or default_storage_root()

    @property
    def retry_delay(self) -> timedelta:
        return timedelta(seconds=self.retry_delay_seconds)

    @property
    def file_sha256(self) -> str | None:
        """The sha256 of the spec file's bytes (``sha256sum include/pipelines/<name>.yaml``); None for a
        spec built from a mapping."""
        return self._file_sha256

    def normalized_hash(self) -> str:
        """A hash of the validated spec (defaults filled in, keys sorted): equal for files that differ only
        in comments, layout or spelled-out defaults."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def spec_hash(self) -> str:
        """What lineage and manifests record as ``spec_hash``: the file's sha256, so a model can be
        matched to the file in git; :meth:`normalized_hash` for a spec that was not read from a file."""
        return self._file_sha256 or self.normalized_hash()


_FIELD_FIRST = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", re.DOTALL)


#: every DAG a pipeline gets, in order: (kind, whether it needs ``source.schema.target``, whether it is a
#: manual DAG: no schedule, created unpaused). :mod:`freestack.dags` builds exactly these.
PIPELINE_DAGS: tuple[tuple[str, bool, bool], ...] = (
    ("ingest", False, False),
    ("train", True, False),
    ("rollback", True, True),
    ("promote", True, True),
    ("monitor", True, False),
    ("score", True, False),
)


def pipeline_dags(spec: PipelineSpec) -> list[tuple[str, str, bool]]:
    """``(dag_id, kind, manual)`` of every DAG the DAG factory builds for ``spec``: ingest, and with a
    target the train, rollback, promote and monitor DAGs, and the score DAG with a ``score:`` block. Manual DAGs start unpaused, the others paused
    (Airflow's ``dags_are_paused_at_creation``)."""
    has_target = spec.source.schema_.target is not None
    return [
        (f"{spec.name}_{kind}", kind, manual)
        for kind, needs_target, manual in PIPELINE_DAGS
        if (has_target or not needs_target) and (kind != "score" or spec.score is not None)
    ]


#: a local deployment's ports from ``deploy.local.port``: its address, then its blue and green servers
DEPLOYMENT_PORTS = 3
_ANY_HOST = ("0.0.0.0", "::", "")


def port_overlap(spec: PipelineSpec, other: PipelineSpec, other_file: str) -> str | None:
    """Why ``spec``'s local deployment cannot live beside ``other``'s (from ``other_file``), or None. A
    deployment takes ``port``, ``port + 1`` and ``port + 2``, so one whose address is another's blue or
    green port (or whose servers take the other's address) makes a deploy of one fail while the other
    serves, on some deploys only (as the live colour alternates). Two deployments at one address are not
    refused: they take turns there (the demo's pipelines all default to 9000), and the second deploy
    says the address is taken."""
    mine, theirs = spec.deploy.local, other.deploy.local
    if (
        "kubernetes" in (spec.deploy.target, other.deploy.target)
        or spec.deployment_name == other.deployment_name
        or (mine.host != theirs.host and mine.host not in _ANY_HOST and theirs.host not in _ANY_HOST)
        or mine.port == theirs.port
        or abs(mine.port - theirs.port) >= DEPLOYMENT_PORTS
    ):
        return None
    a, b = mine.port, theirs.port
    return (
        f"{a} (this deployment {spec.deployment_name!r} takes {a}-{a + 2}: its address, then its blue and "
        f"green servers) overlaps the ports of deployment {other.deployment_name!r} of {other_file} "
        f"(deploy.local.port {b}: {b}-{b + 2}); choose a port at least {DEPLOYMENT_PORTS} away from {b}, "
        f"such as {max(a, b) + DEPLOYMENT_PORTS}"
    )


def _named(field: str, msg: str) -> tuple[str, str]:
    """A check across blocks reports at the top level; its message starts with the field it is about."""
    m = _FIELD_FIRST.match(msg) if field == "(top level)" else None
    return (m.group(1), m.group(2)) if m else (field, msg)


def parse_spec(data: object, path: str) -> PipelineSpec:
    """Validate a loaded YAML document; raise SpecError naming ``path`` and the field."""
    if not isinstance(data, dict):
        raise SpecError(path, None, f"expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        found = [_named(field, msg) for field, msg in problems(exc)]
        field, msg = found[0]
        more = "" if len(found) == 1 else "; " + "; ".join(f"{f}: {m}" for f, m in found[1:])
        raise SpecError(path, field, msg + more) from None
    stem = Path(path).stem
    if spec.name != stem:
        raise SpecError(path, "name", f"name {spec.name!r} must equal the file name {stem!r}")
    return spec


def load_spec(path: str | os.PathLike) -> PipelineSpec:
    p = Path(path)
    try:
        raw = p.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise SpecError(str(p), None, "file not found") from None
    except UnicodeDecodeError as exc:
        raise SpecError(str(p), None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return spec_from_text(text, p)


class DuplicateKey(yaml.YAMLError):
    """A key written twice in one mapping of a spec: where (``field``) and on which lines."""

    def __init__(self, field: str, key: object, lines: tuple[int, int]):
        self.field, self.key, self.lines = field, key, lines
        super().__init__(f"{field}: {key!r} is written twice (lines {lines[0]} and {lines[1]})")


#: libyaml's parser where PyYAML was built with it: far faster, and a DAG parse loads every spec
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class SpecLoader(_SAFE_LOADER):
    """PyYAML's safe loader that refuses a key written twice in one mapping, at any depth. YAML forbids
    it, but PyYAML keeps the last value without a word, so a second ``deploy:`` block would replace the
    first unseen. The composed document is walked before it is built, so the error can name the field's
    path; a merge (``<<: *base``) may still be overridden by the mapping's own keys."""

    def construct_document(self, node: yaml.Node) -> object:
        self._check_keys(node, "", set())
        return super().construct_document(node)

    def _check_keys(self, node: yaml.Node, path: str, seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already walked (or a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_keys(item, f"{path}[{i}]", seen)
        elif isinstance(node, yaml.MappingNode):
            lines: dict[object, int] = {}
            for key_node, value in node.value:
                key = self._scalar_key(key_node)
                field = f"{path}.{key}" if path else str(key)
                if key is not None and key in lines:
                    raise DuplicateKey(field, key, (lines[key], key_node.start_mark.line + 1))
                if key is not None:
                    lines[key] = key_node.start_mark.line + 1
                self._check_keys(value, field, seen)

    def _scalar_key(self, node: yaml.Node) -> object:
        """A plain key as it loads (``yes`` and ``true`` are one key); None for a merge or a complex key."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == _MERGE_TAG:
            return None
        key = self.construct_object(node)
        try:
            hash(key)
        except TypeError:
            return None
        return key


def spec_from_text(text: str, path: str | os.PathLike) -> PipelineSpec:
    """The spec whose file ``path`` holds ``text`` (a process that got the text, not the file: a rank of a
    distributed training on another machine)."""
    p = Path(path)
    try:
        data = yaml.load(text, Loader=SpecLoader)  # noqa: S506 (a safe loader)
    except DuplicateKey as exc:
        raise SpecError(
            str(p),
            exc.field,
            f"{exc.key!r} is written twice in one mapping (lines {exc.lines[0]} and {exc.lines[1]}); "
            "YAML keeps only the last, so the first would be dropped without a word: write it once (merge "
            "the two)",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(str(p), None, f"invalid YAML at {where}: {problem}") from None
    spec = parse_spec(data, str(p))
    spec._file_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return spec


def spec_file(name: str, directory: str | os.PathLike | None = None) -> Path:
    """The spec file of pipeline ``name`` (``<name>.yaml`` or ``<name>.yml``) in the pipelines folder."""
    folder = Path(directory) if directory else pipelines_dir()
    yml = folder / f"{name}.yml"
    return yml if yml.is_file() and not (folder / f"{name}.yaml").is_file() else folder / f"{name}.yaml"


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


__all__ = [
    "DEPLOYMENT_PORTS",
    "PIPELINE_DAGS",
    "PipelineSpec",
    "DuplicateKey",
    "SpecLoader",
    "discover_specs",
    "load_spec",
    "parse_spec",
    "pipeline_dags",
    "port_overlap",
    "spec_file",
]
