"""``freestack up`` / ``down``: the embedded Airflow (``airflow standalone``) in the background, and
``freestack lake``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from freestack.cli.reports import lake_report
from freestack.embedded import (
    airflow_env,
    ensure_migrated,
    healthy,
    standalone_env,
    standalone_files,
    start_standalone,
    warm_execution_api,
)


def up(timeout: float = 240.0) -> int:
    env = airflow_env()
    pid_file, log_file, pw_file = standalone_files(env)
    url = env["AIRFLOW__API__BASE_URL"]
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        print(f"airflow standalone already running (pid {pid_file.read_text().strip()}) at {url}")
    else:
        proc = start_standalone(env, log_file)
        pid_file.write_text(str(proc.pid))
        print(f"starting airflow standalone (pid {proc.pid}), log: {log_file}")
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if proc.poll() is not None:
                print(f"airflow standalone exited with {proc.returncode}; see {log_file}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"airflow did not answer at {url} within {timeout}s; see {log_file}", file=sys.stderr)
                return 1
            time.sleep(2)
        warm_execution_api(url)
    password = "(see the log)"
    for _ in range(30):
        if pw_file.exists():
            password = json.loads(pw_file.read_text()).get("admin", password)
            break
        time.sleep(1)
    print(f"Airflow UI: {url}\n  user:     admin\n  password: {password}")
    print("stop it with: make down")
    return 0


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def down() -> int:
    env = airflow_env()
    pid_file, _, _ = standalone_files(env)
    if not pid_file.exists():
        print("airflow standalone is not running (no pid file)")
        return 0
    pid = int(pid_file.read_text())
    if _alive(pid):
        from freestack.serving.processes import stop_process

        stop_process(pid, grace_seconds=30.0)  # SIGTERM to its session's group, SIGKILL after the grace
    pid_file.unlink(missing_ok=True)
    print(f"stopped airflow standalone (pid {pid})")
    return 0


def airflow(args: list[str]) -> int:
    """Run ``airflow ARGS`` against this project's instance: its AIRFLOW_HOME, DAGs, plugins and
    settings (what ``make up`` and ``make demo`` use), as ``astro dev run`` does for Astro projects."""
    import os

    env = standalone_env(airflow_env())
    ensure_migrated(env)
    exe = env["FREESTACK_AIRFLOW_BIN"]
    os.execve(exe, [exe, *args], env)  # replaces this process: the exit code and signals are airflow's


def lake(pipeline: str) -> int:
    print(lake_report(pipeline))
    return 0


__all__ = ["airflow", "down", "lake", "up"]
