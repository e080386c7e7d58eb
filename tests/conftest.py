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
        # Hugging Face's cache (bases fetched from the Hub stand-in) in the session's folder, not the home
        "HF_HOME": str(_BASE / "huggingface"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        # evaluate's serving measurement (a model server started per evaluation) off for the session: the
        # tests about it turn it on (tests/dags/test_train_dag.py, test_instruct_dag.py); the rest evaluate
        # for other reasons, and a server each would cost the suite minutes
        "FREESTACK_MEASURE_SERVING": "false",
    }
)


# SQLite metadata: writers wait for the lock (as under `freestack up`), see freestack.metadb
from freestack.embedded import settings_for  # noqa: E402

os.environ.update(settings_for(os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")))

# model servers started by the tests: their own ports and folder, stopped at the end of the session
from freestack.serving.processes import free_port_block  # noqa: E402  (after the environment above)

os.environ["FREESTACK_SERVE_PORT"] = str(free_port_block())
os.environ["FREESTACK_SERVING_DIR"] = str(_BASE / "serving")
os.environ.pop("FREESTACK_PIPELINES_DIR", None)
os.environ.pop("FREESTACK_DATA_ROOT", None)
Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)

if str(ROOT / "include") not in sys.path:
    sys.path.insert(0, str(ROOT / "include"))


#: the demo sandbox's fixtures (``sandbox``, ``demo``): one real ``make demo`` per session; the suite's
#: time kept down (a budget per test, no skip for want of an install, the heaviest files first)
pytest_plugins = ["tests.support.demo_sandbox", "tests.support.timing", "pytester"]
#: the test files that share the demo sandbox: one worker runs them all, the browser tests first
DEMO_FILES = (
    "tests/ui/test_views_browser.py",
    "tests/ui/test_views_native.py",
    "tests/ui/test_views_extra.py",
    "tests/ui/test_views_sweep_live.py",
    "tests/e2e/test_monitor_demo.py",
    "tests/ui/test_views_rollback_race.py",
    "tests/e2e/test_notebook.py",
    "tests/e2e/test_docs_commands.py",
)
DEMO_GROUP = dict.fromkeys(DEMO_FILES, "demo-sandbox")


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, with the demo sandbox's files as one unit (its session fixture is built once)."""
    from xdist.scheduler import LoadFileScheduling

    from tests.support.timing import scope_of

    class DemoFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid, DEMO_GROUP)

    if config.getoption("dist") == "loadfile":
        return DemoFilesTogether(config, log)
    return None


def pytest_collection_modifyitems(config, items):
    """The browser tests read the state ``make demo`` left, then the monitor's test adds a retrained version:
    both run before the documented commands (which end with ``make down``). Then the costliest file (or
    the demo sandbox's files together) goes first, to the worker that is free first."""
    from tests.support.timing import order_by_cost

    _demo_order(items)
    order_by_cost(items, DEMO_GROUP)


def _demo_order(items) -> None:
    first = [i for f in DEMO_FILES[:-1] for i in items if i.nodeid.startswith(f)]
    if not first:
        return
    rest = [i for i in items if not i.nodeid.startswith(DEMO_FILES[:-1])]
    first_block = next(
        (k for k, i in enumerate(rest) if "test_every_documented_command" in i.nodeid), len(rest)
    )
    items[:] = rest[:first_block] + first + rest[first_block:]


def _model_servers() -> set[int]:
    """Pids of the model-server supervisors and address holders started under this session's serving folder."""
    from freestack.serving.processes import serving_processes

    return {pid for pid, _ in serving_processes(os.environ["FREESTACK_SERVING_DIR"])}


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
