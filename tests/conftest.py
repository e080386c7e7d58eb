"""Test-wide isolation: Airflow, freestack and W&B all write under one temporary folder.

The environment is set here, at import, before anything imports Airflow (which reads its
configuration once, at import time).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BASE = Path(tempfile.mkdtemp(prefix="freestack-tests-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(_BASE / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "FREESTACK_HOME": str(_BASE / "home"),
        "FREESTACK_STORAGE_ROOT": (_BASE / "storage").as_uri(),
        "WANDB_MODE": "disabled",
        "WANDB_DIR": str(_BASE / "wandb"),
        "WANDB_DATA_DIR": str(_BASE / "wandb" / "data"),
        "WANDB_CACHE_DIR": str(_BASE / "wandb" / "cache"),
        "WANDB_CONFIG_DIR": str(_BASE / "wandb" / "config"),
    }
)
os.environ.pop("FREESTACK_PIPELINES_DIR", None)
os.environ.pop("FREESTACK_DATA_ROOT", None)
Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)

if str(ROOT / "include") not in sys.path:
    sys.path.insert(0, str(ROOT / "include"))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database in the session's AIRFLOW_HOME."""
    home = Path(os.environ["AIRFLOW_HOME"])
    if not (home / "airflow.db").exists():
        subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
            check=True,
            capture_output=True,
            env=dict(os.environ),
        )
    return home


@pytest.fixture
def storage(tmp_path, monkeypatch) -> str:
    """A fresh file:// storage root for one test."""
    root = (tmp_path / "storage").as_uri()
    monkeypatch.setenv("FREESTACK_STORAGE_ROOT", root)
    return root


@pytest.fixture
def clean_stores():
    """Forget Airflow's cached filesystems (they are keyed by scheme and connection id)."""
    from airflow.sdk.io import store

    store._STORE_CACHE.clear()
    yield
    store._STORE_CACHE.clear()
