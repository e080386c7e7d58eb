"""DAG-run notes from tasks: a task pushes Markdown under the XCom key ``freestack_run_note``
(:data:`freestack.pipeline_operator.RUN_NOTE_XCOM`) and, when the run ends, it becomes the run's note,
shown in the grid's run details and in the REST API's ``note`` field (the gate's decision, say).

Airflow 3 gives a task no way to write its run's note (the Task SDK's API has none), so a listener
does it where the run's state changes: the scheduler, ``dag.test()``, or the API server when someone
marks a run. It reads the XCom and sets ``DagRun.note`` on the run it is handed, in that session,
through Airflow's ORM: part of :mod:`freestack.runtime`, always on, version-checked (on an Airflow it
was not written for, runs get no note and one warning says so). A note someone wrote already is kept,
the task's below it; the whole stays within Airflow's 1000 characters.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

from freestack.pipeline_operator import RUN_NOTE_XCOM
from freestack.runtime import fits

log = logging.getLogger(__name__)

#: Airflow's DagRunNote.content column
LIMIT = 1000


def notes_of(dag_run: Any, session: Any) -> list[str]:
    """The ``freestack_run_note`` XComs of ``dag_run``'s tasks, oldest first, so a run's note starts with
    its outcome: ``evaluate``'s line (the step cache's hit or miss) after the others, the ``window``
    task's line (which data the run trained on) last."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    rows = session.execute(
        select(XComModel.value)
        .where(
            XComModel.dag_id == dag_run.dag_id,
            XComModel.run_id == dag_run.run_id,
            XComModel.key == RUN_NOTE_XCOM,
        )
        .order_by(XComModel.task_id == "window", XComModel.task_id == "evaluate", XComModel.timestamp)
    ).all()
    return [v for v in (XComModel.deserialize_value(r) for r in rows) if isinstance(v, str) and v.strip()]


def merged(existing: str | None, ours: str) -> str:
    """``ours`` below a note someone wrote already (unless it holds it), within :data:`LIMIT`."""
    if not existing or not existing.strip():
        return ours[:LIMIT]
    if ours in existing:  # set already (the run was marked again)
        return existing[:LIMIT]
    room = LIMIT - len(ours) - len("\n\n---\n\n")
    if room < 40:  # no room for both: the person's words win
        return existing[:LIMIT]
    return existing[:room].rstrip() + "\n\n---\n\n" + ours


def annotate(dag_run: Any) -> str | None:
    """Set the run's note from its tasks' notes; returns it (None when they left none).

    In the session that holds ``dag_run`` when it has one (the scheduler's: a second writer would wait
    on SQLite's lock that session holds); else (``dag.test()`` hands over a detached run) in its own."""
    from sqlalchemy import select
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    if session is not None:
        return _annotate(dag_run, session)
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as own:
        row = own.scalar(
            select(DagRun).where(DagRun.dag_id == dag_run.dag_id, DagRun.run_id == dag_run.run_id)
        )
        return _annotate(row, own) if row is not None else None


def _annotate(dag_run: Any, session: Any) -> str | None:
    texts = notes_of(dag_run, session)
    if not texts:
        return None
    note = merged(dag_run.note, "\n\n".join(texts))
    dag_run.note = note
    return note


class RunNotes:
    """Sets a finished run's note from its ``freestack_run_note`` XComs."""

    @hookimpl
    def on_dag_run_success(self, dag_run, msg: str) -> None:
        self._annotate(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run, msg: str) -> None:
        self._annotate(dag_run)

    def _annotate(self, dag_run) -> None:
        if not fits("DAG-run notes from tasks"):
            return
        try:
            annotate(dag_run)
        except Exception as exc:  # a note is never worth a scheduler's trouble
            log.warning("could not set the note of %s %s: %s", dag_run.dag_id, dag_run.run_id, exc)


run_notes = RunNotes()

__all__ = ["LIMIT", "RunNotes", "annotate", "merged", "notes_of", "run_notes"]
