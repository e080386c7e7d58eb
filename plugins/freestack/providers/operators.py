"""freestack's reusable operators: building blocks of a DAG of your own, with no pipeline spec.

- :class:`FreestackScoreOperator`: score a folder or a file of rows with a registered version;
- :class:`FreestackPromoteOperator`: point an alias (production by default) at a version;
- :class:`FreestackRollbackOperator`: move production back (to previous, or to a version);
- :class:`FreestackDeployOperator`: serve a registered version on this machine (the local deploy) or on
  Kubernetes (a SeldonDeployment, waited for in the triggerer).

Their arguments are checked when the DAG file is parsed (a pydantic model per operator): one of the
wrong type fails the import, naming it. Their string arguments are templates (``{{ params.version }}``;
:data:`RUN_DAY` for the run's day, which ``{{ ds }}`` is not in a run without a logical date). A version or alias that does not exist fails the task at its first try,
without retries (a retry cannot make it exist), naming the argument and listing the versions there are.

Each reports OpenLineage where the provider is enabled (:mod:`freestack.lineage_events`, loaded only
then): what it read and wrote, with the version as a run facet; promote and rollback also the alias move
(``freestack_alias``: the alias, the version before and after, the reason, by whom).

Parsing stays light: this module imports the registry and the spec (no torch, pandas or numpy); the
score operator imports the score stage in ``execute``, the deploy operator the local deploy; the
Kubernetes rollout and its trigger import ``kubernetes`` only when they run.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from collections.abc import Iterator
from typing import Any, ClassVar, Literal, NoReturn

from airflow.sdk import BaseOperator, Context, XComArg
from airflow.sdk.exceptions import AirflowFailException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from freestack.errors import DeployError, FreestackError
from freestack.hooks.credentials import model_source
from freestack.pipeline_operator import PipelineOperator, TorchTask, permanent_error
from freestack.providers.versions import registry_of, resolve, version_spec, where
from freestack.registry.core import AliasMoved, RegistryError
from freestack.registry.operators import moved_note, moved_text, push_note, triggered_by
from freestack.serving.records import Deployments
from freestack.serving.seldon_deployments import KubernetesUnavailable, finish_rollout, start_rollout
from freestack.serving.spec import DeploySpec, LocalTarget, deploy_name
from freestack.serving.triggers import SeldonDeploymentAvailableTrigger
from freestack.spec import PipelineSpec
from freestack.specbase import block_problems
from freestack.storage import join, storage_root, to_path
from freestack.version import open as open_version
from freestack.version.files import SMOKE

#: the run's day as a template: its logical date's, or for a run with none (Airflow 3 runs a DAG triggered
#: without ``--logical-date`` with none, and ``{{ ds }}`` is then undefined) the day it was to run after
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"


def run_day(context: Context) -> str:
    """:data:`RUN_DAY` of a running task: ``ds``, else its run's ``run_after`` day."""
    return str(context.get("ds") or context["dag_run"].run_after.strftime("%Y-%m-%d"))


class ArgumentError(TypeError):
    """An operator's argument has the wrong type or value; raised when the DAG file is parsed."""


#: marks an argument Airflow renders when the task runs: a template (``{{ params.version }}``), or an
#: XComArg (``train.output["version"]``), resolved then and checked again once rendered
TEMPLATED: dict[str, Any] = {"templated": True}
#: what an XComArg stands for while the arguments are checked at parse time (a template's shape)
_LATER = "{{ the upstream task's XCom }}"


class _Arguments(BaseModel):
    """An operator's arguments, declared once here: strictly typed (a number is not a string), unknown
    ones refused; those marked :data:`TEMPLATED` are the operator's template fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str = Field(
        min_length=1,
        description="The registered model's name (registry/<model>/).",
        json_schema_extra=TEMPLATED,
    )
    storage: str | None = Field(
        default=None,
        description="The storage root holding the registry; default: the storage_root setting.",
        json_schema_extra=TEMPLATED,
    )

    @classmethod
    def names(cls) -> dict[str, str]:
        """Each argument's name as an operator takes it (a field's alias) -> its field's name."""
        return {(f.alias or n): n for n, f in cls.model_fields.items()}

    @classmethod
    def templated(cls) -> tuple[str, ...]:
        return tuple(n for n, f in cls.model_fields.items() if (f.json_schema_extra or {}) == TEMPLATED)


def _checked(cls: type[BaseOperator], arguments: type[_Arguments], given: dict[str, Any]) -> _Arguments:
    """``given`` validated by ``arguments``, or :class:`ArgumentError` naming each argument at fault."""
    try:
        return arguments.model_validate(given)
    except ValidationError as exc:
        raise ArgumentError(f"{cls.__name__}: {block_problems(exc)}") from None


def _no_typo(cls: type[BaseOperator], others: dict[str, Any], names: dict[str, str]) -> None:
    """:class:`ArgumentError` for an argument that is neither the operator's nor Airflow's but close to one
    of the operator's (a typo, named as such, before the argument it misses is)."""
    airflow = set(inspect.signature(BaseOperator.__init__).parameters)
    for name in others:
        close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.75)
        if name not in airflow and close:
            raise ArgumentError(f"{cls.__name__}: unknown argument {name!r}: did you mean {close[0]!r}?")


class _FreestackOperator(BaseOperator):
    """What the reusable operators share: their checked arguments as template fields, and failing at
    once, without retries, on what no retry can fix (a version that does not exist, permission denied)."""

    arguments: ClassVar[type[_Arguments]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "arguments" in cls.__dict__:  # the template fields are the arguments marked so, in one place
            cls.template_fields = cls.arguments.templated()

    def __init__(self, *, task_id: str, **kwargs: Any) -> None:
        names = self.arguments.names()
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        defaults = kwargs.get("default_args") or {}
        given.update({k: defaults[k] for k in names if k not in given and k in defaults})
        _no_typo(type(self), kwargs, names)
        kwargs.setdefault("multiple_outputs", True)  # each key of the result is an XCom: op.output["version"]
        super().__init__(task_id=task_id, **kwargs)
        later = {names[k]: v for k, v in given.items() if isinstance(v, XComArg)}
        if set(later) - set(self.template_fields):
            raise ArgumentError(
                f"{type(self).__name__}: {', '.join(sorted(set(later) - set(self.template_fields)))}: an "
                "XComArg is taken only by a templated argument"
            )
        checked = _checked(
            type(self), self.arguments, {k: _LATER if names[k] in later else v for k, v in given.items()}
        )
        for name, value in checked:
            setattr(self, name, later.get(name, value))  # an XComArg stays one: Airflow resolves it at render

    def execute(self, context: Context) -> dict[str, Any]:
        with self.failing_at_once():
            self._check_rendered()
            return self.run(context)

    def _check_rendered(self) -> None:
        """The templated arguments as rendered (a template's text, an XCom's value), checked as the parse
        checked the rest: a wrong one fails the task at once, without retries, naming it."""
        values = {f.alias or n: getattr(self, n) for n, f in self.arguments.model_fields.items()}
        try:
            self.arguments.model_validate(values)
        except ValidationError as exc:
            raise AirflowFailException(f"{self.task_id}: as rendered, {block_problems(exc)}") from None

    @contextlib.contextmanager
    def failing_at_once(self) -> Iterator[None]:
        """Fail the task without its retries on what no retry can fix: a FreestackError (an unknown
        version, a version that cannot score, bad input) and :func:`permanent_error`'s (permission
        denied, a read-only file system); the rest passes, for the retries."""
        try:
            yield
        except FreestackError as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from None
        except Exception as exc:
            message = permanent_error(exc)
            if message is None:
                raise
            raise AirflowFailException(message) from exc

    def run(self, context: Context) -> dict[str, Any]:
        raise NotImplementedError

    #: OpenLineage's hook, the pipeline operators' own: it imports :mod:`freestack.lineage_events` (only
    #: where the provider is enabled) and returns what :meth:`openlineage` reports
    get_openlineage_facets_on_complete = PipelineOperator.get_openlineage_facets_on_complete

    def openlineage(self, ol: Any) -> Any:
        """The task's inputs, outputs and run facets, built with ``ol`` (:mod:`freestack.lineage_events`)
        from what :meth:`run` kept; none before it ran."""
        return ol.lineage()


class _VersionArguments(_Arguments):
    """The arguments of an operator that takes a version, or an alias naming one (neither: production)."""

    version: str | None = Field(
        default=None, min_length=1, description="A registered version's name.", json_schema_extra=TEMPLATED
    )
    alias: str | None = Field(
        default=None,
        min_length=1,
        description="An alias (production...); neither: production.",
        json_schema_extra=TEMPLATED,
    )

    @model_validator(mode="after")
    def _one_version(self) -> _VersionArguments:
        if self.version is not None and self.alias is not None:
            raise ValueError("give version or alias, not both")
        return self


class ScoreArguments(_VersionArguments):
    input_uri: str = Field(
        min_length=1, description="The folder or file of rows to score.", json_schema_extra=TEMPLATED
    )
    output_uri: str = Field(
        min_length=1, description="The folder the scores are published in.", json_schema_extra=TEMPLATED
    )
    columns: tuple[Literal["prediction", "probabilities"], ...] = Field(
        default=("prediction", "probabilities"), min_length=1
    )
    batch_rows: int = Field(default=4096, ge=1, le=1_000_000)
    max_error_fraction: float | None = Field(default=None, ge=0, le=1)
    monitor: bool = False
    max_new_tokens: int | None = Field(default=None, ge=1, le=4096)

    @field_validator("columns", mode="before")
    @classmethod
    def _columns(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value  # a list, as Python code writes it


class FreestackScoreOperator(TorchTask, _FreestackOperator):
    """Score a folder or a file of rows with a registered version of a model, and publish the scores whole.

    The score stage's own day (:mod:`freestack.score.core`), with no pipeline spec: the version's records
    give the columns it reads, their types and the row key. A folder's Parquet and CSV files (or, with no
    table, its images) are scored; rows the version cannot score are quarantined with their reason. The
    output folder receives ``part.parquet`` (key, ds, prediction, probabilities, version, scored_at; a
    text-generation version's answers instead), written to a temporary and published in one step, then
    ``_manifest.json`` (and ``_quarantine.parquet`` when rows were refused). A rerun replaces it whole.
    Torch computes on the task's share of the worker's cores, as the score stage's tasks do
    (``FREESTACK_TASK_THREADS`` sets it).

    :param model: the registered model's name, ``registry/<model>/`` under the storage root (templated)
    :param version: the version to score with (templated); give this or ``alias``
    :param alias: the alias to score with, resolved when the task runs (templated; default ``production``)
    :param input_uri: the folder or file of rows: a ``file://``, ``s3://`` or ``data://`` URI, or a path
        under the storage root (templated)
    :param output_uri: the folder the scores are published in, a URI or a path under the storage root
        (templated), e.g. ``f"scores/churn/ds={RUN_DAY}/"``
    :param storage: the storage root holding the registry (templated); default: the storage_root setting
    :param columns: written beside the key: ``prediction``, ``probabilities`` (classification)
    :param batch_rows: rows read, encoded and predicted at a time
    :param max_error_fraction: above this fraction of rows not scored, nothing is published and the task
        fails (None: never)
    :param monitor: also log a sample of the rows to the model's request log, which its monitor judges
    :param max_new_tokens: a text-generation version's longest answer in tokens (None: 64); answers are
        greedy, so each equals the model server's at temperature 0

    Returns (and pushes as its XCom) ``{"version", "output", "part", "rows_scored", "rows_quarantined"}``.
    """

    arguments = ScoreArguments
    ui_color = "#d8ccf4"

    def run(self, context: Context) -> dict[str, Any]:
        from freestack.providers import scoring  # numpy and the score stage: at run time only

        if self.version is not None:  # one that renders empty is asked for as it is, not as production
            argument, asked = "version", self.version
        else:
            argument, asked = "alias", "production" if self.alias is None else self.alias
        request = scoring.ScoreRequest(
            model=self.model,
            asked=asked,
            argument=argument,
            input_uri=self.input_uri,
            output_uri=self.output_uri,
            ds=run_day(context),
            storage=self.storage or None,
            columns=tuple(self.columns),
            batch_rows=self.batch_rows,
            max_error_fraction=self.max_error_fraction,
            monitor=self.monitor,
            max_new_tokens=self.max_new_tokens,
        )
        manifest = scoring.score(request, {"dag_id": context["dag"].dag_id, "run_id": context["run_id"]})
        output = where(self.output_uri, request.storage)
        self._scored = {**manifest, "output": output}  # what openlineage reports
        self.log.info(
            "%d rows scored with %s %s, %d quarantined -> %s",
            manifest["rows_scored"],
            self.model,
            manifest["version"],
            manifest["rows_quarantined"],
            output,
        )
        return {
            "version": manifest["version"],
            "output": output,
            "part": f"{output.rstrip('/')}/part.parquet",
            "rows_scored": manifest["rows_scored"],
            "rows_quarantined": manifest["rows_quarantined"],
        }

    def openlineage(self, ol: Any) -> Any:
        """The input files and the version folder -> the output folder (its rows scored), with the
        version as a run facet."""
        scored = getattr(self, "_scored", None)
        if scored is None:
            return ol.lineage()
        files = {i["uri"]: i.get("sha256") for i in scored.get("inputs") or [] if i.get("uri")}
        inputs = [ol.input_dataset(uri, sha256=sha) for uri, sha in files.items()]
        uri = scored.get("version_uri") or registry_of(self.model, self.storage or None).version_uri(
            scored["version"]
        )
        inputs.append(ol.input_dataset(uri))
        out = ol.output_dataset(scored["output"], rows=scored["rows_scored"])
        return ol.lineage(inputs, [out], ol.model_version_facet(self.model, scored["version"], uri))


class _AliasOperator(_FreestackOperator):
    """What promote and rollback share: the move they made, returned and reported to OpenLineage."""

    def _moved(
        self, alias: str, aliases: dict[str, Any], before: str | None, also: str, reason: str, by: str
    ) -> dict[str, Any]:
        """The task's result: ``alias`` moved from ``before`` (and where the alias ``also`` points now)."""
        moved = {"alias": alias, "version": aliases.get(alias), "from": before, also: aliases.get(also)}
        self._move = {**moved, "reason": reason[:500], "by": by}  # what openlineage reports
        return moved

    def openlineage(self, ol: Any) -> Any:
        """The version the alias now points at and the move itself (the alias, from which version, why,
        by whom) as run facets (an alias is no dataset)."""
        move = getattr(self, "_move", None)
        if not move or not move.get("version"):
            return ol.lineage()
        reg = registry_of(self.model, self.storage or None)
        version = move["version"]
        facets = ol.model_version_facet(self.model, version, reg.version_uri(version))
        return ol.lineage(run_facets={**facets, **ol.alias_facet(self.model, move)})


class PromoteArguments(_Arguments):
    version: str = Field(
        min_length=1, description="A version, or an alias naming one.", json_schema_extra=TEMPLATED
    )
    alias: str = Field(default="production", min_length=1, json_schema_extra=TEMPLATED)
    reason: str = Field(default="", json_schema_extra=TEMPLATED)
    allow_blocked: str = Field(
        default="",
        description="Why a version the gate blocked may take the alias anyway; empty: it is refused.",
        json_schema_extra=TEMPLATED,
    )


class FreestackPromoteOperator(_AliasOperator):
    """Point an alias of a model at a registered version (production: the old production becomes
    ``previous``), in one compare-and-swap of the registry's aliases
    (:meth:`freestack.registry.core.ModelRegistry.set_alias`); the move records who made it (the DAG
    run's triggering user and run id). Pointing it where it already is changes nothing. A version the gate
    blocked is refused, the task failing at once with the gate's reasons, unless ``allow_blocked`` says why
    it may anyway: the history and the run's note then record that override with the gate's reasons. The
    run's note says "**Promoted.**", with the version and where the alias came from.

    :param model: the registered model's name (templated)
    :param version: the version to point the alias at, or an alias naming one, or ``latest`` (the newest
        version the gate did not block) (templated)
    :param alias: the alias to move (templated), default ``production``
    :param storage: the storage root holding the registry (templated); default: the storage_root setting
    :param reason: recorded in the aliases' history (templated); default: the run id
    :param allow_blocked: why a version the gate blocked may take the alias anyway (templated); empty (the
        default): such a version is refused

    Returns ``{"alias", "version", "from", "production"}``.
    """

    arguments = PromoteArguments
    ui_color = "#e4dcf5"

    def run(self, context: Context) -> dict[str, Any]:
        reg = registry_of(self.model, self.storage or None)
        alias = self.alias.strip()
        version = resolve(reg, self.version, "version")
        before = reg.aliases().get(alias)
        reason = (self.reason or "").strip() or f"promoted by {context['dag'].dag_id} ({context['run_id']})"
        by = triggered_by(context)
        allow = (self.allow_blocked or "").strip() or None
        try:
            aliases = reg.set_alias(alias, version, reason=reason[:500], by=by, allow_blocked=allow)
        except AliasMoved as exc:  # only with an expected value, which this operator does not pass
            raise AirflowFailException(moved_text(exc, alias, "promotion", "clear this task")) from None
        except RegistryError as exc:
            raise AirflowFailException(f"alias={alias!r}: cannot point it at {version}: {exc}") from None
        self.log.info("%s %s: %s -> %s", self.model, alias, before, aliases.get(alias))
        push_note(context, moved_note(self.model, alias, before, aliases))
        return self._moved(alias, aliases, before, "production", reason, by)


class RollbackArguments(_Arguments):
    to_version: str | None = Field(
        default=None, min_length=1, description="None: the previous version.", json_schema_extra=TEMPLATED
    )
    reason: str = Field(default="", json_schema_extra=TEMPLATED)


class FreestackRollbackOperator(_AliasOperator):
    """Move a model's production back: to ``previous`` (the version production replaced), or to
    ``to_version``; the rolled-back version becomes ``previous``
    (:meth:`freestack.registry.core.ModelRegistry.rollback`), recorded with who made the move.

    :param model: the registered model's name (templated)
    :param to_version: the version (or an alias naming one) to roll back to (templated); None: previous
    :param storage: the storage root holding the registry (templated); default: the storage_root setting
    :param reason: recorded in the aliases' history (templated); default: the run id

    Returns ``{"alias": "production", "version", "from", "previous"}``.
    """

    arguments = RollbackArguments
    ui_color = "#f5dcd6"

    def run(self, context: Context) -> dict[str, Any]:
        reg = registry_of(self.model, self.storage or None)
        target = resolve(reg, self.to_version, "to_version") if self.to_version else None
        before = reg.aliases().get("production")
        reason = (
            self.reason or ""
        ).strip() or f"rolled back by {context['dag'].dag_id} ({context['run_id']})"
        by = triggered_by(context)
        try:
            aliases = reg.rollback(to=target, reason=reason[:500], by=by)
        except RegistryError as exc:
            raise AirflowFailException(f"cannot roll back {self.model}: {exc}") from None
        self.log.info("%s production: %s -> %s", self.model, before, aliases.get("production"))
        return self._moved("production", aliases, before, "previous", reason, by)


#: the deploy operator's arguments that only ``where="kubernetes"`` reads
KUBERNETES_ARGUMENTS = ("namespace", "conn_id")
#: answers of the API server a retry cannot change: a refused manifest, RBAC, no namespace or CRD
PERMANENT_STATUSES = frozenset({400, 403, 404, 422})


class DeployArguments(_VersionArguments):
    where: Literal["local", "kubernetes"] = Field(
        default="local", description="local: a model server on this machine; kubernetes: a SeldonDeployment."
    )
    runtime: Literal["seldon", "mlserver"] = "seldon"
    name: str | None = Field(
        default=None,
        min_length=1,
        description="The deployment; default: the model's.",
        json_schema_extra=TEMPLATED,
    )
    port: int | None = Field(
        default=None, ge=1024, le=65533, description="local: default the serve_port setting."
    )
    namespace: str | None = Field(
        default=None,
        min_length=1,
        description="kubernetes: the SeldonDeployment's namespace; default: default.",
        json_schema_extra=TEMPLATED,
    )
    conn_id: str | None = Field(
        default=None,
        min_length=1,
        description="kubernetes: the cncf.kubernetes connection (kubernetes_default).",
        json_schema_extra=TEMPLATED,
    )
    reason: str = Field(default="", json_schema_extra=TEMPLATED)
    smoke_input: str | None = Field(
        default=None,
        min_length=1,
        description="A Parquet or CSV file of rows to smoke-test with; default: the evaluation's sample, "
        "else the version's own test split.",
        json_schema_extra=TEMPLATED,
    )

    @model_validator(mode="after")
    def _arguments_of_the_target(self) -> DeployArguments:
        if self.where == "local":
            given = [n for n in KUBERNETES_ARGUMENTS if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only where='kubernetes' reads it, not where='local'")
            return self
        if self.port is not None:
            raise ValueError("port: only where='local' reads it; a SeldonDeployment's address is its Service")
        name, namespace = (v if v and "{{" not in v else None for v in (self.name, self.namespace))
        try:  # a template is checked once rendered (rollout_spec)
            DeploySpec.model_validate(kubernetes_block(self.runtime, name, namespace, self.conn_id))
        except ValidationError as exc:
            raise ValueError(f"where='kubernetes': {block_problems(exc)}") from None
        return self


def kubernetes_block(
    runtime: str, name: str | None, namespace: str | None, conn_id: str | None
) -> dict[str, Any]:
    """A spec's ``deploy`` block for the deploy operator's Kubernetes arguments; those not given keep
    :class:`~freestack.serving.spec.KubernetesTarget`'s defaults."""
    given = {"namespace": namespace, "conn_id": conn_id}
    return {
        "target": "kubernetes",
        "runtime": runtime,
        "name": name,
        "kubernetes": {k: v for k, v in given.items() if v is not None},
    }


@contextlib.contextmanager
def rollout_errors() -> Iterator[None]:
    """A rollout's DeployError as the deploy stage's task meets it: an API server's answer a retry cannot
    change (:data:`PERMANENT_STATUSES`: RBAC, no namespace, no CRD, a refused manifest) fails the task at
    once; the rest (a cluster out of reach, not Available in time, a smoke test answered otherwise) is
    retried with the task's retries, with the stage's message."""
    try:
        yield
    except DeployError as exc:
        if exc.status in PERMANENT_STATUSES and not isinstance(exc, KubernetesUnavailable):
            raise AirflowFailException(
                f"{exc}\nA retry cannot change this answer: the task failed at once."
            ) from None
        raise RuntimeError(str(exc)) from None


class FreestackDeployOperator(_FreestackOperator):
    """Serve a registered version of a model, on this machine or on Kubernetes.

    ``where="local"`` deploys as the deploy stage's local target does
    (:func:`freestack.serving.local.deploy_local`): the version's model server starts beside the one
    serving now, answers the version's own evaluation rows as it predicted them in-process, and only
    then takes the deployment's address (blue/green); a version that fails to load or to answer the same
    is stopped and the old one keeps serving. Deploying the version already served changes nothing.

    ``where="kubernetes"`` rolls out as the deploy stage's Kubernetes target does
    (:func:`freestack.serving.seldon_deployments.start_rollout`): a SeldonDeployment named ``name``, validated against
    Seldon Core's CRD, is applied through the ``conn_id`` connection; the task defers to
    :class:`~freestack.serving.triggers.SeldonDeploymentAvailableTrigger` (it waits in the triggerer,
    holding no worker slot) until Seldon reports it Available, then sends the version's stored test rows
    through the API server's service proxy and requires the evaluation's answers
    (:func:`~freestack.serving.seldon_deployments.finish_rollout`). The spec it rolls out with is the one the version's
    records describe (:func:`freestack.providers.versions.version_spec`).

    Either way the deployment record is ``deployments/<model>/<name>.json`` under the storage root.

    :param model: the registered model's name (templated)
    :param version: the version to serve (templated); give this or ``alias``
    :param alias: the alias to serve, resolved when the task runs (templated; default ``production``);
        a local record keeps it, so ``freestack serve status`` flags a deployment whose alias moved on
    :param where: ``local`` (a model server on this machine) or ``kubernetes`` (a SeldonDeployment)
    :param runtime: ``seldon`` (Seldon's protocol) or ``mlserver`` (the Open Inference Protocol)
    :param name: the deployment's name (templated), the SeldonDeployment's on Kubernetes; default: the
        model's name as a Kubernetes name
    :param port: local only: the deployment's address on 127.0.0.1 (the blue and green servers use the
        next two ports); default: the serve_port setting (9000)
    :param namespace: kubernetes only: the SeldonDeployment's namespace (templated); default ``default``
    :param conn_id: kubernetes only: the cncf.kubernetes connection, its cluster and credentials
        (templated); default ``kubernetes_default``
    :param storage: the storage root holding the registry (templated); default: the storage_root setting
    :param reason: recorded in the deployment's history (templated); default: the run id

    A deploy that fails (a port taken, a server slow to start; a cluster out of reach, a rollout not
    Available in time or answering its test rows otherwise) is retried with the task's retries; an API
    server's answer a retry cannot change (RBAC, no namespace, no Seldon CRD) fails it at once.
    Returns the deployment record: ``{"version", "url", "predict_url", "pid", "color", "runtime", ...}``
    locally; ``{"version", "name", "namespace", "state": "serving", "smoke", ...}`` on Kubernetes.
    """

    arguments = DeployArguments
    ui_color = "#d6e4f5"

    def run(self, context: Context) -> dict[str, Any]:
        reg = registry_of(self.model, self.storage or None)
        alias = None if self.version is not None else (self.alias or "production").strip()
        version = resolve(reg, self.version, "version") if alias is None else resolve(reg, alias, "alias")
        reason = (self.reason or "").strip() or f"{context['dag'].dag_id} run {context['run_id']}"
        if self.where == "kubernetes":
            self.roll_out(version, reg.version_uri(version), reason[:500])  # defers: see execute_complete
        return self.serve_here(version, reg.version_uri(version), reason[:500], alias)

    def smoke_sample(self, uri: str) -> dict[str, Any] | None:
        """The smoke test's rows and expected answers: from ``smoke_input`` when given, else the ones the
        version's evaluation recorded (None: the deploy reads them), else, for a version never evaluated
        (registered with no gate), its own test split's, computed now; which one is logged and kept in
        the XCom (``smoke_source``)."""
        if not self.smoke_input and join(to_path(uri), *SMOKE.split("/")).exists():
            self._smoke_source = f"the rows and answers its evaluation recorded ({SMOKE})"
            self.log.info("smoke test: %s", self._smoke_source)
            return None
        from freestack.evaluate.measure import unevaluated_smoke_sample  # torch: only to answer rows here

        spec = version_spec(open_version(uri), self.model, self.storage or None)
        given = (self.smoke_input or "").strip()
        rows = where(given, self.storage or None) if given else None
        sample, self._smoke_source = unevaluated_smoke_sample(spec, uri, rows)
        self.log.info(
            "smoke test: %d rows of %s, answered in-process now", len(sample["outputs"]), self._smoke_source
        )
        return sample

    def serve_here(self, version: str, uri: str, reason: str, alias: str | None) -> dict[str, Any]:
        """Serve ``version`` on this machine (the local deploy); the record."""
        from freestack.serving.local import deploy_local  # numpy (its smoke test): at run time only

        sample = self.smoke_sample(uri)
        local = LocalTarget() if self.port is None else LocalTarget(port=self.port)
        try:
            record = deploy_local(
                root_uri=str(storage_root(self.storage or None)),
                model=self.model,
                name=self.deployment(),
                version=version,
                version_uri=uri,
                local=local,
                reason=reason,
                source=model_source(uri),
                runtime=self.runtime,
                alias=alias,
                sample=sample,
            )
        except DeployError as exc:  # retried: a port or the machine may be busy
            raise RuntimeError(str(exc)) from None
        self.log.info("%s %s is served at %s (%s)", self.model, version, record["url"], record["predict_url"])
        self._deployed = {k: v for k, v in record.items() if k != "history"}
        return {**self._deployed, "smoke_source": self._smoke_source}

    def roll_out(self, version: str, uri: str, reason: str) -> NoReturn:
        """Apply the SeldonDeployment serving ``version`` and defer until Seldon reports it Available."""
        spec = self.rollout_spec(uri)
        target = spec.deploy.kubernetes
        model_uri, _env = model_source(uri)  # credentials reach the pod through its env_secret
        with rollout_errors():
            record = start_rollout(spec, version, model_uri, reason=reason)
        self.log.info(
            "applied SeldonDeployment %s/%s (%s); waiting in the triggerer for Available",
            target.namespace,
            record["name"],
            version,
        )
        SeldonDeploymentAvailableTrigger.of(record["name"], target).defer_task(self, version=version)

    def execute_complete(self, context: Context, event: dict[str, Any], version: str) -> dict[str, Any]:
        """Once the trigger reported: smoke-test the rollout and return its record (the task fails, with
        the stage's message, when it is not Available or answers its test rows otherwise)."""
        with self.failing_at_once():
            uri = registry_of(self.model, self.storage or None).version_uri(version)
            spec, sample = self.rollout_spec(uri), self.smoke_sample(uri)
            with rollout_errors():
                record = finish_rollout(spec, event, sample)
        self.log.info(
            "SeldonDeployment %s/%s is Available and answers as evaluated",
            event.get("namespace"),
            event.get("name"),
        )
        self._deployed = {k: v for k, v in record.items() if k != "history"}
        return {**self._deployed, "smoke_source": self._smoke_source}

    def rollout_spec(self, uri: str) -> PipelineSpec:
        """The spec the version at ``uri`` describes, its deploy block this operator's arguments."""
        name, namespace, conn_id = (
            (v or "").strip() or None for v in (self.name, self.namespace, self.conn_id)
        )
        block = kubernetes_block(self.runtime, name, namespace, conn_id)
        try:
            DeploySpec.model_validate(block)
        except ValidationError as exc:  # a template that renders to no Kubernetes name
            raise AirflowFailException(f"{self.task_id}: {block_problems(exc)}") from None
        return version_spec(open_version(uri), self.model, self.storage or None, deploy=block)

    def deployment(self) -> str:
        """The deployment's name: ``name``, else the model's name as a Kubernetes name."""
        return (self.name or "").strip() or deploy_name(DeploySpec(), self.model)

    def openlineage(self, ol: Any) -> Any:
        """The served version folder -> the deployment's record, with the version as a run facet."""
        record = getattr(self, "_deployed", None)
        if record is None:
            return ol.lineage()
        root = str(storage_root(self.storage or None))
        where = Deployments(root, self.model).path(self.deployment())
        version = record.get("canary_version") or record["version"]
        uri = registry_of(self.model, self.storage or None).version_uri(version)
        facets = ol.model_version_facet(self.model, version, uri)
        return ol.lineage([ol.input_dataset(uri)], [ol.output_dataset(str(where))], facets)


__all__ = [
    "KUBERNETES_ARGUMENTS",
    "PERMANENT_STATUSES",
    "ArgumentError",
    "DeployArguments",
    "FreestackDeployOperator",
    "FreestackPromoteOperator",
    "FreestackRollbackOperator",
    "FreestackScoreOperator",
    "PromoteArguments",
    "RollbackArguments",
    "ScoreArguments",
    "kubernetes_block",
    "rollout_errors",
]
