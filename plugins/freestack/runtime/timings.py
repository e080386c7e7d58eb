"""Task timings: when each task's own code started and ended, for measuring Airflow's per-task cost.

With ``FREESTACK_TASK_TIMINGS=/path/timings.jsonl`` in the environment of the Airflow processes, the
freestack plugin registers :data:`task_timings`, an Airflow listener whose hooks run in the task
process right before the operator's ``execute`` and right after it returns. Each appends one JSON
line (dag, run, task, map index, try, event ``start``/``end``/``failed``, wall time, pid) with a
single ``O_APPEND`` write, so concurrent tasks never interleave. Against the metadata database's
``queued_dttm`` and ``end_date`` this gives the orchestration overhead on either side of the work
(``bench/orchestration``). Without the variable nothing is registered and nothing is written.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from airflow.listeners import hookimpl

from freestack.settings import settings


def _record(task_instance: Any, event: str) -> None:
    path = settings().task_timings
    if not path:
        return
    line = json.dumps(
        {
            "dag_id": getattr(task_instance, "dag_id", None),
            "run_id": getattr(task_instance, "run_id", None),
            "task_id": getattr(task_instance, "task_id", None),
            "map_index": getattr(task_instance, "map_index", -1),
            "try_number": getattr(task_instance, "try_number", None),
            "event": event,
            "t": time.time(),
            "pid": os.getpid(),
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class TaskTimings:
    """Airflow listener: the wall time at which each task's ``execute`` starts and ends."""

    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance) -> None:
        _record(task_instance, "start")

    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance) -> None:
        _record(task_instance, "end")

    @hookimpl
    def on_task_instance_failed(self, previous_state, task_instance, error) -> None:
        _record(task_instance, "failed")


task_timings = TaskTimings()


def enabled() -> bool:
    """Whether the ``task_timings`` setting names a file."""
    return settings().task_timings is not None
