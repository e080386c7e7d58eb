"""The Airflow pool that bounds how many sweep agents train at once (``freestack_sweep``).

Created if missing, with one slot per GPU, else per CPU core; a pool an operator has resized is left
alone. It is ensured when an Airflow component starts (the plugin's listener) and by ``freestack
demo``, and can be resized in the UI (Admin -> Pools) or with ``airflow pools set``. Task code never
touches the metadata database (Airflow 3 forbids it), and Airflow has no public call that creates a
pool from a plugin, so this goes through Airflow's ORM: part of :mod:`freestack.runtime`, always on,
version-checked. On an Airflow it was not written for it does nothing but say, once, which
``airflow pools set`` command creates the pool (tasks in a missing pool are never scheduled).
"""

from __future__ import annotations

import logging

from airflow.listeners import hookimpl

from freestack.runtime import fits
from freestack.sweeps.core import default_pool_slots
from freestack.sweeps.spec import POOL

log = logging.getLogger(__name__)


def ensure_pool(name: str | None = None, slots: int | None = None) -> bool:
    """Create the pool if it does not exist; return True if it was created."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    name = name or POOL
    with create_session() as session:
        if session.query(Pool).filter(Pool.pool == name).first() is not None:
            return False
        session.add(
            Pool(
                pool=name,
                slots=slots or default_pool_slots(),
                description="freestack sweep agents: one slot per agent (default: GPUs, else CPU cores)",
                include_deferred=False,
            )
        )
    log.info("created Airflow pool %s with %d slots", name, slots or default_pool_slots())
    return True


class PoolListener:
    """Ensures the sweep pool when the scheduler (or another Airflow job) starts."""

    @hookimpl
    def on_starting(self, component) -> None:
        if type(component).__name__ != "Job":  # a task process (no database access there)
            return
        if not fits("creating the sweep pool"):
            log.warning("create the sweep agents' pool yourself: airflow pools set %s %d 'freestack sweep agents'",
                        POOL, default_pool_slots())  # fmt: skip
            return
        try:
            ensure_pool()
        except Exception as exc:  # never keep Airflow from starting
            log.warning("could not ensure the freestack_sweep pool: %s; create it with `airflow pools set`", exc)


pool_listener = PoolListener()

__all__ = ["PoolListener", "ensure_pool", "pool_listener"]
