"""Reading what Airflow stored of a run that dag.test() ran."""

from __future__ import annotations


def run_note(run) -> str | None:
    """The run's note as Airflow stores it (what the grid and the REST API show)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(DagRun).filter(DagRun.dag_id == run.dag_id, DagRun.run_id == run.run_id).one().note
