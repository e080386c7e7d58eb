"""The Airflow pools freestack's tasks run in, created when missing:

- ``freestack_sweep``: how many sweep agents train at once; one slot per GPU, else per CPU core.
- ``freestack_deploy_<model>``: one slot per model; every alias move (``promote``, ``move_production``,
  ``move_alias``) and ``deploy`` of that model runs in it, so one alias move + deploy of a model happens
  at a time (deploy outranks a move, so a run's deploy follows its own move), in no promised order
  between runs: each move checks the alias is still what its run was asked from (compare-and-swap), and
  fails naming the move that came first. It counts deferred tasks too: a Kubernetes rollout holds the
  slot until it is Available.

A pool an operator has resized is left alone. The pools of every valid spec are ensured when an Airflow
component starts (the plugin's listener), and a model's deploy pool again when a run of one of its DAGs
starts (a spec added while the scheduler runs), in the scheduler's own session. Task code never touches
the metadata database (Airflow 3 forbids it), and Airflow has no public call that creates a pool from a
plugin, so this goes through Airflow's ORM: part of :mod:`freestack.runtime`, always on, version-checked.
On an Airflow it was not written for it does nothing but say, once, which ``airflow pools set`` command
creates each pool (tasks in a missing pool are never scheduled).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

from freestack.errors import SpecError
from freestack.runtime import fits
from freestack.serving.spec import deploy_pool
from freestack.spec import PipelineSpec, discover_specs, load_spec, spec_file
from freestack.sweeps.core import default_pool_slots
from freestack.sweeps.spec import POOL

log = logging.getLogger(__name__)

SWEEP_TEXT = "freestack sweep agents: one slot per agent (default: GPUs, else CPU cores)"
DEPLOY_TEXT = "freestack: one alias move + deploy of model {model} at a time (keep 1 slot)"


def ensure_pool(
    name: str | None = None,
    slots: int | None = None,
    *,
    description: str = SWEEP_TEXT,
    include_deferred: bool = False,
    session: Any = None,
) -> bool:
    """Create the pool if it does not exist (in ``session`` when given, else in its own); return True if
    it was created."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    name = name or POOL
    slots = slots or default_pool_slots()
    if session is None:
        with create_session() as own:
            return ensure_pool(
                name, slots, description=description, include_deferred=include_deferred, session=own
            )
    if session.query(Pool).filter(Pool.pool == name).first() is not None:
        return False
    session.add(Pool(pool=name, slots=slots, description=description, include_deferred=include_deferred))
    log.info("created Airflow pool %s with %d slots", name, slots)
    return True


def ensure_deploy_pool(model: str, session: Any = None) -> bool:
    return ensure_pool(
        deploy_pool(model),
        1,
        description=DEPLOY_TEXT.format(model=model),
        include_deferred=True,
        session=session,
    )


def spec_models() -> list[str]:
    """The model of every valid spec in the pipelines folder."""
    return sorted({s.model_name for s in discover_specs().values() if isinstance(s, PipelineSpec)})


def model_of_dag(dag_id: str) -> str | None:
    """The model whose deploy pool a DAG's tasks use: the spec named by ``<pipeline>_<kind>``."""
    stem, _, kind = dag_id.rpartition("_")
    if kind not in ("train", "rollback", "promote"):
        return None
    path = spec_file(stem)
    try:
        return load_spec(path).model_name if path.is_file() else None
    except SpecError:
        return None


def _commands(models: list[str]) -> str:
    sweep = f"airflow pools set {POOL} {default_pool_slots()} 'freestack sweep agents'"
    deploys = (
        f"airflow pools set {deploy_pool(m)} 1 'freestack deploys of {m}' --include-deferred" for m in models
    )
    return "; ".join([sweep, *deploys])


class PoolListener:
    """Ensures the sweep pool and each spec's deploy pool when the scheduler (or another Airflow job)
    starts, and a model's deploy pool when a run of its DAGs starts."""

    @hookimpl
    def on_starting(self, component) -> None:
        if type(component).__name__ != "Job":  # a task process (no database access there)
            return
        models = _quietly(spec_models, [])
        if not fits("creating freestack's pools"):
            log.warning("create freestack's pools yourself: %s", _commands(models))
            return
        try:
            ensure_pool()
            for model in models:
                ensure_deploy_pool(model)
        except Exception as exc:  # never keep Airflow from starting
            log.warning("could not ensure freestack's pools (%s); create them: %s", exc, _commands(models))

    @hookimpl
    def on_dag_run_running(self, dag_run, msg: str) -> None:
        from sqlalchemy.orm import object_session

        model = _quietly(lambda: model_of_dag(dag_run.dag_id), None)
        if model is None or not fits("creating freestack's pools"):
            return
        try:  # in the scheduler's session: a second writer would wait on the SQLite lock it holds
            ensure_deploy_pool(model, session=object_session(dag_run))
        except Exception as exc:  # a pool is never worth a scheduler's trouble
            log.warning(
                "could not ensure the pool %s (%s); create it: %s",
                deploy_pool(model),
                exc,
                _commands([model]),
            )


def _quietly(fn, default):
    try:
        return fn()
    except Exception as exc:  # a broken spec folder is reported by the DAG files, not here
        log.debug("freestack pools: %s", exc)
        return default


pool_listener = PoolListener()

__all__ = [
    "PoolListener",
    "ensure_deploy_pool",
    "ensure_pool",
    "model_of_dag",
    "pool_listener",
    "spec_models",
]
