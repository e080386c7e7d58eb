"""freestack's reusable train operator: train a model from a pipeline spec given inline (or a spec file)
on a lake window, in a DAG of your own, and optionally register the trained version.

- :class:`FreestackTrainOperator`: the train stage's own training (:func:`freestack.train.core.train`)
  on the lake partitions of ``window_days`` days up to ``end_ds``, with the Params form's overrides
  (epochs, learning rate, batch size, seed) as arguments.

Its arguments are checked when the DAG file is parsed, as the other reusable operators' are
(:mod:`freestack.providers.operators`); an inline spec is validated there by the pipeline spec's own
model, so a bad block fails the import naming its field. Parsing stays light: this module imports the
spec, the registry and the train stage's light modules (its request, window and operators); the training
itself (:mod:`freestack.train.core`: torch, pandas) is imported in ``execute``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from freestack.errors import SpecError
from freestack.hooks.huggingface import export_hub_environment
from freestack.hooks.wandb import WandbHook
from freestack.operator_links import WandbRunLink
from freestack.pipeline_operator import TorchTask
from freestack.providers.operators import RUN_DAY, TEMPLATED, ArgumentError, _Arguments, _FreestackOperator
from freestack.registry.core import ModelRegistry, RegistryError, VersionExists, registry_for
from freestack.settings import pipelines_dir
from freestack.spec import PipelineSpec, load_spec, parse_spec
from freestack.specbase import block_problems, problems
from freestack.train.distributed import is_distributed
from freestack.train.operators import airflow_info
from freestack.train.request import TrainRequest
from freestack.train.window import WindowError, fix_window

#: what a rendered ``end_ds`` must look like
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

Days = Annotated[int, Field(ge=1, le=3650)]
Epochs = Annotated[int, Field(ge=1, le=10_000)]
Rate = Annotated[float, Field(gt=0, le=10)]
Batch = Annotated[int, Field(ge=1, le=1_000_000)]
Seed = Annotated[int, Field(ge=0)]
#: the training's overrides, the train DAG's Params form's fields
OVERRIDES = ("window_days", "epochs", "learning_rate", "batch_size", "seed")


class Overrides(BaseModel):
    """The overrides as rendered (numbers, or their text from a template; empty text: None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_days: Days | None = None
    epochs: Epochs | None = None
    learning_rate: Rate | None = None
    batch_size: Batch | None = None
    seed: Seed | None = None


class SpecArguments(_Arguments):
    """The arguments of an operator that works from a pipeline spec, inline or a file; the model's name is
    the spec's (``model.name``, else ``name``)."""

    model: str | None = Field(default=None, description="Not an argument: the spec names the model.")
    spec: dict[str, Any] | None = Field(
        default=None, description="The pipeline spec inline, as YAML holds it."
    )
    spec_path: str | None = Field(
        default=None, min_length=1, description="A pipeline spec file.", json_schema_extra=TEMPLATED
    )

    @model_validator(mode="after")
    def _one_spec(self) -> SpecArguments:
        if (self.spec is None) == (self.spec_path is None):
            raise ValueError(
                "give spec (the pipeline spec inline) or spec_path (a spec file), one of the two"
            )
        return self


class TrainArguments(SpecArguments):
    """The train operator's arguments."""

    end_ds: str = Field(
        default=RUN_DAY,
        min_length=1,
        description="The window's last day (YYYY-MM-DD).",
        json_schema_extra=TEMPLATED,
    )
    window_days: int | str | None = Field(
        default=None, description="None: train.window_days.", json_schema_extra=TEMPLATED
    )
    epochs: int | str | None = Field(default=None, json_schema_extra=TEMPLATED)
    learning_rate: float | str | None = Field(default=None, json_schema_extra=TEMPLATED)
    batch_size: int | str | None = Field(default=None, json_schema_extra=TEMPLATED)
    seed: int | str | None = Field(default=None, json_schema_extra=TEMPLATED)
    register_version: bool = Field(default=False, alias="register")

    @field_validator(*OVERRIDES)
    @classmethod
    def _number_or_template(cls, value: Any, info: ValidationInfo) -> Any:
        """A number within its bounds (checked now), or a template rendering one (checked at run)."""
        if isinstance(value, str):
            if "{{" not in value:
                raise ValueError(
                    f"a number, or a template rendering one such as '{{{{ params.{info.field_name} }}}}'"
                )
            return value
        try:
            Overrides.model_validate({info.field_name: value})
        except ValidationError as exc:
            raise ValueError(problems(exc)[0][1]) from None
        return value


def inline_spec(cls: type, data: dict[str, Any]) -> PipelineSpec:
    """``data`` validated as a pipeline spec, or :class:`ArgumentError` naming ``spec.<field>``."""
    name = data.get("name")
    try:
        return parse_spec(data, f"{name}.yaml" if isinstance(name, str) else "spec")
    except SpecError as exc:
        where = f"spec.{exc.field}" if exc.field else "spec"
        raise ArgumentError(f"{cls.__name__}: {where}: {exc.detail}") from None


def spec_file(path: str) -> Path:
    """A spec file's path: as given when absolute, else under the pipelines folder (``digits.yaml``)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else pipelines_dir() / p


class SpecOperator(_FreestackOperator):
    """An operator working from a pipeline spec: the inline one, validated when the DAG file is parsed, or
    a spec file read when the task runs (:class:`SpecArguments`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._inline = inline_spec(type(self), self.spec) if self.spec is not None else None

    def pipeline_spec(self) -> PipelineSpec:
        """The spec: the inline one, or the file read now; with ``storage`` as its root."""
        spec = self._inline if self._inline is not None else load_spec(spec_file(self.spec_path))
        storage = (self.storage or "").strip()
        return spec.model_copy(update={"storage_root": storage}) if storage else spec


class FreestackTrainOperator(TorchTask, SpecOperator):
    """Train a model on a lake window, as the pipeline's train task does, from a spec given inline or
    in a file; optionally register the trained version in the model's registry.

    The spec (its ``source``, ``model`` and ``train`` blocks, its storage root) says what to read and
    what to train; the window is the lake partitions of ``window_days`` days up to ``end_ds``, fixed
    when the task starts. One training runs in the task's process (:func:`freestack.train.core.train`),
    keyed by the DAG run: a retry resumes the same W&B run and checkpoint and writes the same version.
    Torch computes on the task's share of the worker's cores (``FREESTACK_TASK_THREADS`` sets it).

    Without ``register`` the trained candidate stays in ``candidates/<model>/<version>/`` under the storage
    root and its URI is returned; with it the version is registered (``registry/<model>/<version>/``,
    :meth:`freestack.registry.core.ModelRegistry.register`) with no evaluation or gate, and its lineage
    records the DAG, run and task that registered it (``registered_by``). A promotion is a separate task
    (:class:`~freestack.providers.operators.FreestackPromoteOperator`).

    :param spec: the pipeline spec inline, a mapping as the YAML file holds it (``name``, ``source``,
        ``model``, ``train``...), validated when the DAG file is parsed; give this or ``spec_path``
    :param spec_path: a pipeline spec file (templated): an absolute path, or one under the pipelines
        folder (``digits.yaml``); read when the task runs
    :param end_ds: the window's last day, ``YYYY-MM-DD`` (templated); default the run's day (:data:`RUN_DAY`:
        its logical date's, or the day it was to run after when it has none)
    :param window_days: the window's length in days; None: the spec's ``train.window_days``
    :param epochs: the spec's ``train.epochs`` for this training (None: the spec's)
    :param learning_rate: the spec's ``train.learning_rate`` for this training (None: the spec's)
    :param batch_size: the spec's ``train.batch_size`` for this training (None: the spec's)
    :param seed: the spec's ``train.seed`` for this training (None: the spec's)
    :param register: register the trained version in the registry (default: leave it a candidate)
    :param storage: the storage root holding the lake and the registry (templated); default: the spec's
        ``storage_root``, else the storage_root setting

    ``template_fields``: ``spec_path``, ``end_ds``, ``storage`` and the overrides (``window_days``,
    ``epochs``, ``learning_rate``, ``batch_size``, ``seed``: a number, or a template rendering one, such as
    ``"{{ params.epochs }}"``; one that renders empty or ``None`` leaves the spec's value).

    A window with no lake partition, a spec that cannot train, or a version of the same name registered
    by another run fails the task at its first try, without retries. Returns (and pushes as its XCom)
    ``{"version", "version_uri", "metrics", "partitions", "registered"}``, and the W&B run as the
    ``wandb`` XCom (the task's "W&B run" link).
    """

    arguments: ClassVar[type[_Arguments]] = TrainArguments
    operator_extra_links = (WandbRunLink(),)
    ui_color = "#e4d8f7"

    def _check_rendered(self) -> None:
        """The rendered overrides and ``end_ds`` are checked where they are read (:meth:`request`: numbers
        within their bounds, a day), each naming the argument."""

    def run(self, context: Context) -> dict[str, Any]:
        from freestack.train import core, reuse  # torch and pandas: at run time only

        spec = self.pipeline_spec()
        if is_distributed(spec):
            raise AirflowFailException(f"{self.task_id}: train.distributed is trained by the pipeline's DAGs")
        if spec.uses_hub:
            export_hub_environment()
        core.prune_checkpoints(spec)
        req = self.request(context, spec)

        def train_now():
            self.log.info(
                "training %s on the %d days of its lake up to %s", spec.name, req.window_days, req.end_ds
            )
            return core.train(spec, req, tracking_settings=WandbHook().checked_settings())

        def said(found) -> None:  # train.cache: the key's hit or miss, in the log and in lineage
            self.log.info("%s", found.line())
            self._cache = found.record()

        run = {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]}
        earlier, outcome = reuse.cached(spec, req, run, train_now, said)
        context["ti"].xcom_push(key="wandb", value=outcome.tracking)
        registered = earlier is not None and earlier.registered is not None
        uri = outcome.version_uri
        if self.register_version and not registered:
            uri = self._registered(context, spec, outcome)
        self._model = spec.model_name  # what openlineage reports, with _trained
        self._trained = {"version": outcome.version, "version_uri": uri, "metrics": outcome.metrics}
        self._trained.update(partitions=outcome.partitions, registered=registered or self.register_version)
        self.log.info("%s %s -> %s", spec.model_name, outcome.version, uri)
        return self._trained

    def request(self, context: Context, spec: PipelineSpec):
        """The training's TrainRequest: the window fixed now, the overrides, keyed by the DAG run and task
        (a retry trains the same version, resuming its W&B run and checkpoint)."""

        end_ds = (self.end_ds or "").strip()
        if not _DAY.match(end_ds):
            raise AirflowFailException(f"end_ds={end_ds!r}: not a day (YYYY-MM-DD)")
        given = self.overrides()
        days = given.window_days or spec.train.window_days
        try:
            window = fix_window(spec, end_ds, days, chosen="form").as_dict()
        except WindowError as exc:
            raise AirflowFailException(
                f"{self.task_id}: the window of {days} days up to {end_ds}: {exc}"
            ) from None
        ti = context["ti"]
        return TrainRequest(
            end_ds=end_ds,
            window=window,
            window_days=days,
            epochs=given.epochs,
            learning_rate=given.learning_rate,
            batch_size=given.batch_size,
            seed=given.seed,
            run_key=f"{ti.dag_id}/{ti.run_id}/{ti.task_id}",
            airflow=airflow_info(context, window),
        )

    def overrides(self) -> Overrides:
        """The overrides as rendered, checked; a value out of bounds fails the task naming it."""
        rendered = {k: getattr(self, k) for k in OVERRIDES}
        blank = {
            k: None if isinstance(v, str) and v.strip() in ("", "None") else v for k, v in rendered.items()
        }
        try:
            return Overrides.model_validate(blank)
        except ValidationError as exc:
            raise AirflowFailException(f"{self.task_id}: {block_problems(exc)}") from None

    def _registered(self, context: Context, spec: PipelineSpec, outcome: Any) -> str:
        """Register the trained candidate as its version (no gate), recording who did; its registry URI.
        A retry finds the version its run committed and takes it; another run's is refused."""
        reg = registry_for(spec)
        ti = context["ti"]
        by = {
            "operator": type(self).__name__,
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
        }
        by["gate"] = None  # registered without an evaluation or a gate
        try:
            uri = reg.register(outcome.version_uri, outcome.version, lineage_updates={"registered_by": by})
        except VersionExists:
            uri = _ours(reg, outcome.version, by)
        except RegistryError as exc:
            raise AirflowFailException(f"{self.task_id}: cannot register {outcome.version}: {exc}") from None
        if str(outcome.version_uri).rstrip("/") == str(reg.candidate_path(outcome.version)).rstrip("/"):
            reg.remove_candidate(outcome.version)  # a copy now: the registered version is the model
        return uri

    def openlineage(self, ol: Any) -> Any:
        """The window's lake partitions (their part files and sha256) -> the version folder (registered or
        candidate), with the version and its validation metrics as run facets."""
        trained = getattr(self, "_trained", None)
        if trained is None:
            return ol.lineage()
        inputs = [
            ol.input_dataset(p["uri"], sha256=p.get("sha256")) for p in trained["partitions"] if p.get("uri")
        ]
        uri = trained["version_uri"]
        facets = ol.model_version_facet(self._model, trained["version"], uri)
        facets.update(ol.metrics_facet(trained["metrics"]), **ol.cache_facet(getattr(self, "_cache", None)))
        return ol.lineage(inputs, [ol.output_dataset(uri)], facets)


def _ours(reg: ModelRegistry, version: str, by: dict[str, Any]) -> str:
    """The URI of ``version`` when this DAG run's task registered it (a retry after the commit); else the
    task fails: versions are immutable."""
    recorded = (reg.lineage(version) or {}).get("registered_by") or {}
    if any(recorded.get(k) != by[k] for k in ("dag_id", "run_id", "task_id")):
        raise AirflowFailException(
            f"version {version} of {reg.model} is registered already by another run; versions are immutable"
        )
    return reg.version_uri(version)


__all__ = ["FreestackTrainOperator", "SpecArguments", "SpecOperator", "TrainArguments"]
