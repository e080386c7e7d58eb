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


def _free_port_block() -> int:
    """A port P with P, P+1 (blue/green) and P+100, P+101 (their metrics) free on 127.0.0.1.

    The block lies below the kernel's ephemeral range: the tests open thousands of client
    connections, and any of them may take an ephemeral port that a later deploy wants to bind.
    """
    import random
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low - 200, 12000)
    for _ in range(200):
        p = random.randint(10000, top)
        ok = True
        for q in (p, p + 1, p + 100, p + 101):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    ok = False
                    break
        if ok:
            return p
    raise RuntimeError("no free port block on 127.0.0.1")


# model servers started by the tests: their own ports and folder, stopped at the end of the session
os.environ["FREESTACK_SERVE_PORT"] = str(_free_port_block())
os.environ["FREESTACK_SERVING_DIR"] = str(_BASE / "serving")
os.environ.pop("FREESTACK_PIPELINES_DIR", None)
os.environ.pop("FREESTACK_DATA_ROOT", None)
Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)

if str(ROOT / "include") not in sys.path:
    sys.path.insert(0, str(ROOT / "include"))


def _model_servers() -> set[int]:
    """Supervisor pids of the model servers started under this session's serving folder."""
    from freestack.serving.local import supervisors

    return set(supervisors(os.environ["FREESTACK_SERVING_DIR"]))


def _stop(pids) -> None:
    import signal
    import time

    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _model_servers() & set(pids):
        for pid in pids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except (ChildProcessError, OSError):
                pass
        time.sleep(0.1)


@pytest.fixture(autouse=True)
def _stop_new_model_servers(request):
    """A test that deploys (a DAG run's deploy task, say) leaves no server behind to hold the ports the
    next test's deployment uses; servers of wider-scoped fixtures started earlier are left alone, and a
    module whose tests share servers on purpose sets ``KEEP_MODEL_SERVERS = True``."""
    if getattr(request.module, "KEEP_MODEL_SERVERS", False):
        yield
        return
    before = _model_servers()
    yield
    _stop(_model_servers() - before)


@pytest.fixture(scope="session", autouse=True)
def _stop_model_servers():
    """Stop every model server this test session started."""
    yield
    _stop(_model_servers())


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
