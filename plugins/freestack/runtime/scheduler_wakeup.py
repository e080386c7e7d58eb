"""Wake the scheduler as soon as there is work, instead of after its idle sleep.

Airflow's scheduler loop sleeps ``[scheduler] scheduler_idle_sleep_time`` whenever a loop neither queued
a task nor saw an executor event. In a pipeline that is a chain of tasks, almost every hop lands in
that sleep: a task succeeds while the scheduler sleeps, and its downstream task is scheduled only when
the sleep ends (on average half the sleep later, on every hop of every run); a run triggered from the
UI or the REST API waits the same way. A shorter sleep is no cure: each loop of a busy scheduler costs
tens of milliseconds of CPU, and on a small machine four loops a second take a quarter of a core from
the training tasks themselves (``bench/orchestration``).

:class:`SchedulerClock` makes the idle sleep end early when there is work:

- **a task ended or started**: every :data:`POLL_S` the sleep runs one cheap query (:data:`WORK_QUERY`,
  counts through the ``task_instance`` state index and two largest ids) and ends when the number of
  running task instances changed. A task's success is committed by the API server while its process
  is still shutting down, so this sees it before the executor does, with any executor (Celery and
  Kubernetes workers report through the database alone). The LocalExecutor's workers also report each
  task on a pipe the scheduler reads every loop (the executor's ``result_queue``); the sleep waits on
  that pipe too. Nothing is read from it here: the executor reads it in the next loop, as before;
- **a new run, a task made schedulable, an asset event**: the same query ends the sleep when the
  largest ``dag_run`` id, the number of ``scheduled`` task instances or the largest ``asset_event`` id
  grew. Runs triggered from the UI, REST API or CLI, deferred tasks resumed by the triggerer (an
  approval answered) and asset-scheduled runs are picked up within :data:`POLL_S`, while the idle
  loop keeps Airflow's 1 s default.

On SQLite, the scheduler would still not start a run triggered in the current second before the
next whole second (:func:`freestack.runtime.sqlite.fractional_now` mends that when the listener installs the
clock).

With nothing to do the sleep lasts exactly as long as before. Only the idle sleep of the scheduler
loop (``SchedulerJobRunner._run_scheduler_loop``) waits this way; any other caller gets
``time.sleep``. A pipe or a query that fails falls back to the plain sleep. A speed-up of
:mod:`freestack.runtime`: installed by the freestack plugin's :data:`wake_listener` when ``airflow
scheduler`` starts with the ``speedups`` setting on, on an Airflow it was written for;
``FREESTACK_SCHEDULER_WAKE=0`` turns this one off.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import sys
import time as _time
from typing import Any

from airflow.listeners import hookimpl

from freestack.runtime import fits, speedups_on
from freestack.runtime.preload import is_scheduler
from freestack.runtime.sqlite import fractional_now
from freestack.settings import settings

log = logging.getLogger(__name__)

#: the scheduler method whose idle sleep may end early
LOOP = "_run_scheduler_loop"


def enabled() -> bool:
    """With the speed-ups on, unless the ``scheduler_wake`` setting turns this one off."""
    return speedups_on() and settings().scheduler_wake


def result_readers(runner: Any) -> list[Any]:
    """The read ends of the result pipes of ``runner``'s executors (LocalExecutor's ``result_queue``)."""
    executors = getattr(runner, "executors", None) or ()
    readers = [getattr(getattr(e, "result_queue", None), "_reader", None) for e in executors]
    return [r for r in readers if callable(getattr(r, "fileno", None)) and not getattr(r, "closed", False)]


#: how often the idle sleep looks for new runs, scheduled tasks and asset events
POLL_S = 0.1

#: one indexed read: new runs (any way they are made), tasks made schedulable, asset events, and the
#: number of running tasks (it changes when a task ends, before its process has exited)
WORK_QUERY = (
    "SELECT (SELECT max(id) FROM dag_run), "
    "(SELECT count(*) FROM task_instance WHERE state = 'scheduled'), "
    "(SELECT max(id) FROM asset_event), "
    "(SELECT count(*) FROM task_instance WHERE state = 'running')"
)


#: the failing wake-up query is reported once
_warned = False


def work_signature(engine: Any) -> tuple[int, ...] | None:
    """The four figures of :data:`WORK_QUERY` (None when the database cannot be read now)."""
    if engine is None:
        return None
    try:
        from sqlalchemy import text

        with engine.connect() as conn:
            row = conn.execute(text(WORK_QUERY)).one()
        return tuple(int(v or 0) for v in row)
    except Exception as exc:  # a locked or restarting database: the plain sleep, the loop reports errors
        global _warned
        if not _warned:
            _warned = True
            log.warning(
                "freestack: the scheduler's wake-up query failed (%s); it sleeps as before meanwhile", exc
            )
        return None


def more_work(before: tuple[int, ...] | None, now: tuple[int, ...] | None) -> bool:
    """A new run, more scheduled tasks or a new asset event; or a task started or ended."""
    if before is None or now is None:
        return False
    grew = any(b > a for a, b in zip(before[:3], now[:3], strict=True))
    return grew or before[3:] != now[3:]


def _engine() -> Any:
    try:
        from airflow import settings

        return settings.engine
    except Exception:
        return None


class SchedulerClock:
    """Stands in for the ``time`` module inside Airflow's scheduler module: everything is ``time``'s,
    except that the scheduler loop's idle sleep ends when there is work (see the module)."""

    def __init__(self, engine: Any = None, poll_s: float = POLL_S) -> None:
        self._engine, self.poll_s = engine, poll_s
        #: the figures the last sleep ended with (what the next loop starts from)
        self._seen: tuple[int, ...] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        frame = sys._getframe(1)
        in_loop = frame.f_code.co_name == LOOP
        readers = result_readers(frame.f_locals.get("self")) if in_loop else []
        del frame
        if not in_loop or seconds <= 0:
            _time.sleep(max(seconds, 0))
            return
        engine = self._engine if self._engine is not None else _engine()
        deadline = _time.monotonic() + seconds
        before = work_signature(engine)
        # work that came while the loop ran (after it looked, before this sleep): loop again at once
        seen, self._seen = self._seen, before
        if more_work(seen, before):
            return
        while True:
            left = deadline - _time.monotonic()
            if left <= 0:
                return
            step = min(left, self.poll_s) if before is not None else left
            if readers:
                try:
                    if multiprocessing.connection.wait(readers, timeout=step):
                        return
                except (OSError, ValueError):  # a pipe closed under us (the executor is ending)
                    readers = []
                    _time.sleep(max(step, 0))
            else:
                _time.sleep(step)
            if before is None:
                continue
            now = work_signature(engine)
            if now is not None:
                self._seen = now
            if more_work(before, now):
                return


def install() -> bool:
    """Put :class:`SchedulerClock` in place of ``time`` in Airflow's scheduler module (idempotent).
    False when that module no longer uses ``time`` as this expects (then nothing is changed)."""
    import airflow.jobs.scheduler_job_runner as scheduler

    current = getattr(scheduler, "time", None)
    if isinstance(current, SchedulerClock):
        return True
    if current is not _time or not hasattr(scheduler.SchedulerJobRunner, LOOP):
        log.warning("freestack: the scheduler's idle sleep was left as it is (Airflow's scheduler changed)")
        return False
    scheduler.time = SchedulerClock()
    return True


class WakeListener:
    """Installs :class:`SchedulerClock` when the scheduler's job starts."""

    @hookimpl
    def on_starting(self, component) -> None:
        if (
            type(component).__name__ != "Job"
            or not enabled()
            or not is_scheduler()
            or not fits("the scheduler wake-up")
        ):
            return
        if install():
            log.info(
                "freestack: the scheduler wakes when a task ends (FREESTACK_SCHEDULER_WAKE=0 turns this off)"
            )
        # a run triggered now is due now, not at the next whole second (SQLite's CURRENT_TIMESTAMP)
        fractional_now()


wake_listener = WakeListener()

__all__ = [
    "POLL_S",
    "WORK_QUERY",
    "SchedulerClock",
    "more_work",
    "work_signature",
    "WakeListener",
    "enabled",
    "install",
    "result_readers",
    "wake_listener",
]
