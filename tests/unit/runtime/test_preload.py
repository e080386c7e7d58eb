"""freestack.runtime.preload: the scheduler (and only it, and only with a forking executor) imports the task
libraries once, when its job starts, with the runtime wing's speed-ups on (FREESTACK_SPEEDUPS);
FREESTACK_PRELOAD turns it off or names the modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from freestack.runtime import preload

PROBE = r"""
import json, os, sys
sys.argv = [os.path.join(os.path.dirname(sys.executable), "airflow"), *sys.argv[1:]]
from freestack.runtime.preload import PreloadListener

class Job:  # what Airflow's scheduler hands on_starting
    pass

class TaskRunner:
    pass

PreloadListener().on_starting(component=TaskRunner())
after_task = "tabnanny" in sys.modules
PreloadListener().on_starting(component=Job())
print(json.dumps({"after_task": after_task, "after_job": "tabnanny" in sys.modules, "done": PreloadListener.done}))
"""


def _probe(*argv: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_which_modules(monkeypatch):
    monkeypatch.setenv("FREESTACK_SPEEDUPS", "1")
    monkeypatch.delenv("FREESTACK_PRELOAD", raising=False)
    assert preload.wanted() == preload.MODULES and "torch" in preload.MODULES
    monkeypatch.setenv("FREESTACK_PRELOAD", "0")
    assert preload.wanted() == ()
    monkeypatch.setenv("FREESTACK_PRELOAD", "tabnanny, json")
    assert preload.wanted() == ("tabnanny", "json")
    monkeypatch.setenv("FREESTACK_SPEEDUPS", "0")
    assert preload.wanted() == ()
    assert not preload.is_forking_scheduler()  # pytest is no scheduler


def test_only_the_scheduler_job_with_a_forking_executor_preloads():
    env = {
        "FREESTACK_PRELOAD": "tabnanny",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "FREESTACK_SPEEDUPS": "1",
    }
    assert _probe("scheduler", **env) == {"after_task": False, "after_job": True, "done": True}
    assert _probe("api-server", **env)["after_job"] is False
    assert _probe("scheduler", **{**env, "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"})["after_job"] is False
    assert _probe("scheduler", **{**env, "FREESTACK_PRELOAD": "0"})["after_job"] is False
    assert _probe("scheduler", **{**env, "FREESTACK_SPEEDUPS": "0"})["after_job"] is False


def test_a_module_that_fails_to_import_is_skipped():
    took = preload.preload(("json", "freestack_no_such_module"))
    assert "json" in took and "freestack_no_such_module" not in took


def test_a_task_drops_a_shared_wandb_service_that_does_not_answer(monkeypatch, tmp_path):
    import socket

    from freestack.tracking.wandb import shared_service_or_own

    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    assert shared_service_or_own() is False
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        monkeypatch.setenv("WANDB_SERVICE", f"2-{os.getpid()}-tcp-localhost-{live.getsockname()[1]}")
        assert shared_service_or_own() is True and os.environ["WANDB_SERVICE"]
        dead = live.getsockname()[1]
    monkeypatch.setenv("WANDB_SERVICE", f"2-{os.getpid()}-tcp-localhost-{dead}")
    assert shared_service_or_own() is False and "WANDB_SERVICE" not in os.environ
    monkeypatch.setenv("WANDB_SERVICE", f"2-{os.getpid()}-unix-{tmp_path / 'no-such.sock'}")
    assert shared_service_or_own() is False and "WANDB_SERVICE" not in os.environ


WARM_PROBE = r"""
import json, sys, time
from freestack.runtime import preload
took = preload.preload(("airflow.sdk.execution_time.supervisor", "freestack.dags"))
from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime
rt = ProvidersManagerTaskRuntime()
# the asset URI handlers were discovered (a later Asset pays nothing) and the DAGs were built once
t0 = time.perf_counter()
from freestack.dags import build_all
n = len(build_all({}))
print(json.dumps({"took": took, "handlers": sorted(rt._asset_uri_handlers), "rebuild_s": time.perf_counter() - t0,
                  "dags": n}))
"""


def test_preload_warms_asset_handlers_and_dag_building(monkeypatch):
    """The first DAG build in a process discovers every provider's asset URI handlers and fills the spec
    validators' caches: preloading does it once, in the scheduler, so that task processes start warm."""
    env = {
        **os.environ,
        "FREESTACK_PIPELINES_DIR": str(preload.__file__).rsplit("/plugins/", 1)[0] + "/include/pipelines",
    }
    out = subprocess.run(
        [sys.executable, "-c", WARM_PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "asset URI handlers" in got["took"] and "DAG building" in got["took"]
    assert "API client SSL context" in got["took"]
    assert "s3" in got["handlers"]  # the amazon provider's, discovered by the warm-up
    assert got["dags"] >= 2
