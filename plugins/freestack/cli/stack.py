"""``freestack up`` / ``down`` / ``airflow``: the embedded Airflow (``airflow standalone``) in the background,
and any ``airflow`` command against it."""

from __future__ import annotations

import json
import sys
import time

from freestack.embedded import (
    airflow_env,
    ensure_migrated,
    healthy,
    standalone_env,
    standalone_files,
    start_standalone,
    warm_execution_api,
)


class UpError(Exception):
    """The embedded Airflow did not start; the message says why and where its log is."""


def ensure_up(env: dict[str, str], timeout: float = 240.0) -> tuple[str, str, bool]:
    """Start ``airflow standalone`` unless it already runs; wait until it answers. Returns its URL, the
    admin password and whether it was started now."""
    pid_file, log_file, pw_file = standalone_files(env)
    url = env["AIRFLOW__API__BASE_URL"]
    started = not (pid_file.exists() and _alive(int(pid_file.read_text())))
    if started:
        ensure_migrated(env)
        proc = start_standalone(env, log_file)
        pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if proc.poll() is not None:
                raise UpError(f"airflow standalone exited with {proc.returncode}; see {log_file}")
            if time.monotonic() > deadline:
                raise UpError(f"airflow did not answer at {url} within {timeout:.0f} s; see {log_file}")
            time.sleep(1)
        warm_execution_api(url)
    password = "(see the log)"
    for _ in range(30):
        if pw_file.exists():
            password = json.loads(pw_file.read_text()).get("admin", password)
            break
        time.sleep(1)
    return url, password, started


def up(timeout: float = 240.0) -> int:
    env = airflow_env()
    try:
        url, password, started = ensure_up(env, timeout)
    except UpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "started" if started else "already running"
    print(f"Airflow UI: {url} ({state})\n  user:     admin\n  password: {password}")
    print("stop it (and every model server it started) with: make down")
    return 0


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def down() -> int:
    """Stop what ``up`` and ``demo`` started: the embedded Airflow and the local model servers."""
    from freestack.serving.processes import stop_process

    env = airflow_env()
    pid_file, _, _ = standalone_files(env)
    stopped = []
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if _alive(pid):
            stop_process(pid, grace_seconds=30.0)  # SIGTERM to its session's group, SIGKILL after the grace
            stopped.append(f"airflow standalone (pid {pid}: scheduler, dag processor, triggerer, API server)")
        pid_file.unlink(missing_ok=True)
    stopped += _stop_model_servers()
    for line in stopped:
        print(f"stopped {line}")
    if not stopped:
        print("nothing was running")
    return 0


def _stop_model_servers() -> list[str]:
    from freestack.serving.local import serving_dir
    from freestack.serving.processes import stop_serving_processes

    return stop_serving_processes(str(serving_dir()))


def airflow(args: list[str]) -> int:
    """Run ``airflow ARGS`` against this project's instance: its AIRFLOW_HOME, DAGs, plugins and
    settings (what ``make up`` and ``make demo`` use), as ``astro dev run`` does for Astro projects."""
    import os

    env = standalone_env(airflow_env())
    ensure_migrated(env)
    exe = env["FREESTACK_AIRFLOW_BIN"]
    os.execve(exe, [exe, *args], env)  # replaces this process: the exit code and signals are airflow's



__all__ = ["UpError", "airflow", "down", "ensure_up", "up"]
