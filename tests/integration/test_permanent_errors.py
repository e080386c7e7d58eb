"""Errors a retry cannot fix fail the task at once, with the path and the fix: a lake on S3 whose
connection's secret is wrong (a real SeaweedFS with authentication on refuses it with 403)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import REGION

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def denied_lake(seaweed_s3, monkeypatch, tmp_path):
    """The storage root in a bucket of the server, through a connection with the wrong secret."""
    bucket = "fs-denied"
    seaweed_s3.client().create_bucket(Bucket=bucket)
    conn = {
        "conn_type": "aws",
        "login": seaweed_s3.access_key,
        "password": "not-the-secret",
        "extra": {"endpoint_url": seaweed_s3.endpoint_url, "region_name": REGION},
    }
    monkeypatch.setenv("AIRFLOW_CONN_S3_DENIED", json.dumps(conn))
    monkeypatch.setenv("FREESTACK_STORAGE_ROOT", f"s3://s3_denied@{bucket}/freestack")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    specs = tmp_path / "pipelines"
    specs.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", specs / "digits.yaml")  # retries: 2
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    from airflow.sdk.io import store

    store._STORE_CACHE.clear()
    yield
    store._STORE_CACHE.clear()


def test_permission_denied_on_the_lake_fails_at_once_with_the_fix(airflow_db, denied_lake, capfd):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag("digits_ingest")
    assert dag.get_task("ingest").retries == 2
    run = dag.test(logical_date=datetime(2026, 11, 1, tzinfo=UTC))
    (ti,) = run.get_task_instances()
    assert (ti.state, ti.try_number) == ("failed", 1), "a denied access must not be retried"
    out = capfd.readouterr()
    text = out.out + out.err
    assert "permission denied on " in text and "A retry cannot fix this" in text, text[-3000:]
    assert "s3://s3_denied@fs-denied/freestack" in text, "the message names the path"
    assert "the connection's key and the bucket policy" in text


def test_the_rest_is_still_retried():
    """Errors a retry can fix (a timeout, a lost connection) keep Airflow's retries."""
    from freestack.pipeline_operator import permanent_error

    assert permanent_error(TimeoutError("read timed out")) is None
    assert permanent_error(ConnectionResetError("reset by peer")) is None
    wrapped = RuntimeError("ingest failed")
    wrapped.__cause__ = PermissionError(13, "Permission denied", "/lake/digits")
    assert "on /lake/digits" in permanent_error(wrapped)
    assert "read-only file system" in permanent_error(OSError(30, "Read-only file system", "/lake"))
