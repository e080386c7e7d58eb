"""freestack's Airflow pools, created through the plugin's listener on a migrated metadata database: the
sweep pool and one deploy pool of one slot per model (when a component starts, and when a run of the
model's DAGs starts, in the session that holds the run); a pool someone resized is left alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("airflow_db")


def _pool(name: str):
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(Pool).filter(Pool.pool == name).first()
        return None if row is None else (row.slots, row.include_deferred)


def _drop(*names: str) -> None:
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Pool).filter(Pool.pool.in_(names)).delete(synchronize_session=False)


@pytest.fixture
def specs(tmp_path, monkeypatch):
    folder = tmp_path / "pipelines"
    folder.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", folder / "digits.yaml")
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(folder))
    _drop("freestack_deploy_digits", "freestack_deploy_other")
    yield folder
    _drop("freestack_deploy_digits", "freestack_deploy_other")


def test_a_component_start_creates_each_models_deploy_pool(specs):
    from freestack.runtime.pools import pool_listener

    class Job:
        pass

    pool_listener.on_starting(Job())
    assert _pool("freestack_deploy_digits") == (1, True)  # one slot, held while a rollout is deferred
    assert _pool("freestack_sweep") is not None


def test_a_run_of_a_new_spec_creates_its_pool_in_the_runs_session(specs):
    """A spec added while the scheduler runs: its model's pool appears when its first run starts, in
    the session that holds the run (the scheduler's), and a resized pool is kept as it is."""
    from airflow.models.dagrun import DagRun
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    from freestack.runtime.pools import pool_listener

    text = (specs / "digits.yaml").read_text().replace("name: digits", "name: other", 1)
    (specs / "other.yaml").write_text(text)
    with create_session() as session:
        run = DagRun(dag_id="other_rollback", run_id="manual__1", run_type="manual")
        session.add(run)
        pool_listener.on_dag_run_running(run, "started")
        session.flush()  # Airflow's sessions do not autoflush
        assert session.query(Pool).filter(Pool.pool == "freestack_deploy_other").one().slots == 1
        session.expunge(run)
    assert _pool("freestack_deploy_other") == (1, True)
    with create_session() as session:
        session.query(Pool).filter(Pool.pool == "freestack_deploy_other").update({"slots": 3})
    pool_listener.on_dag_run_running(
        DagRun(dag_id="other_promote", run_id="manual__2", run_type="manual"), "started"
    )
    assert _pool("freestack_deploy_other") == (3, True)
    pool_listener.on_dag_run_running(
        DagRun(dag_id="unrelated_dag", run_id="m", run_type="manual"), "started"
    )  # nothing
