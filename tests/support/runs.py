"""The DAGs dag.test() runs, and reading what Airflow stored of a run."""

from __future__ import annotations

from pathlib import Path


def run_note(run) -> str | None:
    """The run's note as Airflow stores it (what the grid and the REST API show)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return (
            session.query(DagRun).filter(DagRun.dag_id == run.dag_id, DagRun.run_id == run.run_id).one().note
        )


def dags_with(specs, block: str, values: dict, *, merge: bool = False):
    """The DAG folder's DAGs once the digits spec in ``specs`` has ``block`` set to ``values`` (``merge``:
    laid over the block it has); the folder must parse."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    spec_file = specs / "digits.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec[block] = {**spec[block], **values} if merge else values
    spec_file.write_text(yaml.safe_dump(spec))
    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag
