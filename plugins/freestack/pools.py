"""The Airflow pool that bounds how many sweep agents train at once (``freestack_sweep``).

Created if missing, with one slot per GPU, else per CPU core; a pool an operator has resized is left
alone. It is ensured when an Airflow component starts (the plugin's listener), by ``freestack up``
and ``freestack demo``, and can be resized in the UI (Admin -> Pools) or with ``airflow pools set``.
Task code never touches the metadata database (Airflow 3 forbids it), hence these entry points.
"""

from __future__ import annotations

import logging

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)


def ensure_pool(name: str | None = None, slots: int | None = None) -> bool:
    """Create the pool if it does not exist; return True if it was created."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    from freestack.operators.sweep import POOL, default_pool_slots

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
        try:
            ensure_pool()
        except Exception as exc:  # never keep Airflow from starting
            log.warning("could not ensure the freestack_sweep pool: %s; create it with `airflow pools set`", exc)


pool_listener = PoolListener()

__all__ = ["PoolListener", "ensure_pool", "pool_listener"]
