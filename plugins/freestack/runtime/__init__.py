"""The runtime wing: the only place freestack reaches into Airflow's internals.

**Speed-ups**, behind one switch, the ``speedups`` setting (``FREESTACK_SPEEDUPS``), on by default only
in the embedded stack (:func:`freestack.embedded.airflow_env`: ``freestack up``, ``make demo``); off
everywhere else (the scaled-out stack, Helm, your own Airflow), where Airflow behaves as shipped:

- :mod:`~freestack.runtime.preload`: the scheduler imports the pipeline's libraries, builds the DAGs
  and warms Airflow's Execution API client before the LocalExecutor forks its workers, and starts
  one wandb-core service for all tasks;
- :mod:`~freestack.runtime.scheduler_wakeup`: the scheduler's idle sleep ends when there is work (it stands in
  for the ``time`` module of Airflow's scheduler module, inspects the calling frame, and waits on the
  LocalExecutor's private result pipe);
- :mod:`~freestack.runtime.sqlite`: SQLite's ``now()`` keeps fractions of a second in the scheduler.

**Setup**, always on: :mod:`~freestack.runtime.pools` creates the sweep agents' pool through Airflow's
ORM when a component starts (Airflow 3 gives tasks no way to create one); :mod:`~freestack.runtime.notes`
sets a finished run's note from its tasks' ``freestack_run_note`` XCom (the gate's decision; Airflow 3
gives tasks no way to write one). :mod:`~freestack.runtime.procs` finds the embedded stack's processes,
orphaned ones too, and stops them (``freestack down``).

**Measurement**, opt-in: :mod:`~freestack.runtime.timings` records when each task's code starts and
ends (a public listener; the ``task_timings`` setting).

Each hook into Airflow's internals first checks that the running Airflow is a version it was written
for (:func:`fits`); on any other it leaves Airflow's stock behaviour in place and says so in one
warning line. The plugin registers the listeners; each decides for itself when it starts.
"""

from __future__ import annotations

import logging

from freestack.settings import settings

log = logging.getLogger(__name__)

#: the Airflow releases whose internals the hooks here were written against
WRITTEN_FOR = ("3.3",)

_warned: set[str] = set()


def speedups_on() -> bool:
    """The switch: the ``speedups`` setting (on in the embedded stack)."""
    return settings().speedups


def airflow_version() -> str:
    from airflow import __version__

    return __version__


def fits(what: str, version: str | None = None) -> bool:
    """Whether the running Airflow is one ``what`` was written for; otherwise one warning (once per
    ``what``) and False, so the caller leaves Airflow's stock behaviour in place."""
    version = version or airflow_version()
    if any(version == v or version.startswith(v + ".") for v in WRITTEN_FOR):
        return True
    if what not in _warned:
        _warned.add(what)
        log.warning(
            "freestack: %s was written for Airflow %s; Airflow %s runs without it (stock behaviour)",
            what,
            " or ".join(WRITTEN_FOR),
            version,
        )
    return False


__all__ = ["WRITTEN_FOR", "airflow_version", "fits", "speedups_on"]
