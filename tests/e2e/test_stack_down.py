"""`freestack down` stops everything of the stack that `freestack up` started, also what lost its parent.

The stack (`freestack up`, its own AIRFLOW_HOME, component restarts off) runs a task that ignores SIGTERM
and starts a child that ignores it too, in its own process group and without Airflow's environment.
Then the scheduler is killed (its LocalExecutor workers are orphaned; they ignore SIGTERM) and so is
the worker that supervises the task (the task runs on unsupervised). `freestack down` must leave no
process of this AIRFLOW_HOME, and list every process it stopped with how it ended.

Slow (it starts the whole of Airflow): `-m slow`. The other tests are quick: which processes count as
the stack's (only this AIRFLOW_HOME's), and the model servers' lines in the report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.ports import free_port

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

#: the stray task: ignores SIGTERM, starts a child that ignores it too (own process group, bare
#: environment), writes both pids, then waits
STRAY_DAG = """
import os, signal, subprocess, sys, time
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import dag, task

CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


@dag(dag_id="stack_down_stray", schedule="@once", start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
     catchup=False, is_paused_upon_creation=False,
     default_args={"retries": 3, "retry_delay": timedelta(seconds=2)})  # a start lost to a loaded machine
def stack_down_stray():
    @task
    def spin():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", CHILD], env={"PATH": os.environ.get("PATH", "")},
                                 process_group=0)
        pids = Path(os.environ["AIRFLOW_HOME"]).parent / "pids"
        pids.mkdir(exist_ok=True)
        (pids / "child.tmp").write_text(str(child.pid))
        (pids / "child.tmp").rename(pids / "child")
        (pids / "task.tmp").write_text(str(os.getpid()))
        (pids / "task.tmp").rename(pids / "task")
        while True:
            time.sleep(1)

    spin()


stack_down_stray()
"""


def _env(base: Path) -> dict[str, str]:
    port = free_port()
    (base / "dags").mkdir(exist_ok=True)
    (base / "dags" / "stray.py").write_text(STRAY_DAG)
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(base / "airflow"),
            "AIRFLOW_PORT": str(port),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(base / "dags"),
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "FREESTACK_HOME": str(base),
            "FREESTACK_STORAGE_ROOT": (base / "storage").as_uri(),
            "FREESTACK_SERVING_DIR": str(base / "serving"),
            "FREESTACK_SPEEDUPS": "0",
            # a killed scheduler stays dead: its workers stay orphaned (the restart would stop them)
            "FREESTACK_COMPONENT_RESTARTS": "0",
        }
    )
    return env


def _freestack(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "freestack.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _session(sid: int) -> list[psutil.Process]:
    """The live processes of session ``sid`` (the stack's: `airflow standalone` leads it)."""
    out = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except OSError:
            continue
    return out


def _of_home(home: str) -> list[tuple[int, str]]:
    """(pid, command) of the live processes whose environment says AIRFLOW_HOME=home."""
    out = []
    for proc in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.environ().get("AIRFLOW_HOME") == home:
                out.append((proc.pid, " ".join(proc.info["cmdline"] or [])))
        except psutil.Error:
            continue
    return out


def _wait_for(what: str, check, log: Path, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(1)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(procs) -> None:
    """SIGKILL what this test started, if a failed check left it running (psutil checks that a pid was
    not handed to another process since)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _workers(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if " ".join(p.cmdline()).startswith("airflow worker -- LocalExecutor"):
                out.append(p)
        except psutil.Error:
            continue
    return out


@pytest.mark.slow
def test_down_stops_orphans_and_sigterm_ignorers_and_reports_them(tmp_path):
    env = _env(tmp_path)
    home = env["AIRFLOW_HOME"]
    log = Path(home) / "standalone.log"
    up = _freestack(env, "up", "--timeout", "400", timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    sid = int((Path(home) / "standalone.pid").read_text())
    started = [psutil.Process(sid)]
    try:
        pids = tmp_path / "pids"
        _wait_for("the stray task", lambda: (pids / "task").exists() and (pids / "child").exists(), log)
        task, child = int((pids / "task").read_text()), int((pids / "child").read_text())
        session = _session(sid)
        started += session
        assert {task, child} <= {p.pid for p in session}, "the task and its child run in the stack's session"
        workers = _workers(session)
        assert workers, [" ".join(p.cmdline()) for p in session]
        scheduler = workers[0].parent()
        supervisor = psutil.Process(task).parent()
        scheduler.kill()  # its workers are orphaned
        scheduler.wait(30)
        supervisor.kill()  # the task runs on unsupervised
        supervisor.wait(30)
        orphans = [w.pid for w in workers if w.pid != supervisor.pid]
        assert orphans and all(_alive(pid) for pid in orphans + [task, child])

        down = _freestack(env, "down", "--grace", "5", timeout=300)
        report = down.stdout
        assert down.returncode == 0, report + down.stderr
        left = [(p.pid, " ".join(p.cmdline())) for p in _session(sid) if p.is_running()]
        assert not left, f"left running in the stack's session: {left}\n{report}"
        assert not _of_home(home), f"left running with AIRFLOW_HOME={home}: {_of_home(home)}\n{report}"
        ended = {
            int(w[0]): w[1] for w in (line.split() for line in report.splitlines()) if w and w[0].isdigit()
        }
        for pid in (task, child, *orphans):
            assert ended.get(pid) == "KILL", (
                f"pid {pid} (it ignores SIGTERM) is not reported as killed:\n{report}"
            )
        assert ended.get(sid) in ("TERM", "KILL"), report
    finally:
        _kill(_session(sid))  # the stack's session id is not handed out again while it has a process
        _kill(started)


#: a process that ignores SIGTERM after it started a child (own process group, bare environment) that
#: does too; prints the child's pid
IGNORER = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                         env={}, process_group=0)
print(child.pid, flush=True)
time.sleep(600)
"""


def _session_leader(env: dict[str, str], code: str = "import time; time.sleep(600)") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )


def test_only_the_processes_of_this_airflow_home_are_the_stacks(tmp_path):
    from freestack.runtime.procs import stack_processes, stop_stack

    home, other = tmp_path / "airflow", tmp_path / "other"
    base = {"PATH": os.environ.get("PATH", ""), "FREESTACK_AIRFLOW_BIN": "airflow"}
    ours = _session_leader({**base, "AIRFLOW_HOME": str(home)}, IGNORER)
    child = psutil.Process(int(ours.stdout.readline()))
    others = _session_leader({**base, "AIRFLOW_HOME": str(other)})
    # this AIRFLOW_HOME, but not started as a stack component: a user's shell or notebook
    plain = _session_leader({"PATH": base["PATH"], "AIRFLOW_HOME": str(home)})
    procs = [ours, others, plain]
    try:
        # a stale pid file naming someone else's session leader adds nothing
        assert {p.pid for p in stack_processes(home, leader=plain.pid)} == {ours.pid, child.pid}
        assert {p.pid for p in stack_processes(other)} == {others.pid}
        stopped = stop_stack(home, plain.pid, grace_seconds=0.5)
        assert {(s.pid, s.ended) for s in stopped} == {(ours.pid, "KILL"), (child.pid, "KILL")}
        assert ours.wait(10) == -signal.SIGKILL and not _alive(child.pid)
        assert others.poll() is None and plain.poll() is None
        assert stack_processes(home) == []
    finally:
        _kill([child])
        for p in procs:
            p.kill()  # our children, not reaped yet: their pids are still their own
            p.wait(10)


def test_the_stacks_session_is_stopped_also_when_its_leader_is_gone(tmp_path):
    """`airflow standalone` killed: what it started still counts (its session), environment or not."""
    from freestack.runtime.procs import stop_stack

    home = tmp_path / "airflow"
    env = {"PATH": os.environ.get("PATH", ""), "AIRFLOW_HOME": str(home), "FREESTACK_AIRFLOW_BIN": "airflow"}
    leader = _session_leader(env, IGNORER.rsplit("time.sleep(600)", 1)[0])  # exits once its child runs
    child = psutil.Process(int(leader.stdout.readline()))
    try:
        assert leader.wait(30) == 0  # gone (and reaped): only its session id is left of it
        assert _alive(child.pid) and os.getsid(child.pid) == leader.pid
        stopped = stop_stack(home, leader.pid, grace_seconds=0.5)
        assert [(s.pid, s.ended) for s in stopped] == [(child.pid, "KILL")]
        assert not _alive(child.pid)
    finally:
        _kill([child])


def test_down_lists_the_model_servers_it_stopped(tmp_path):
    env = _env(tmp_path)
    serving = Path(env["FREESTACK_SERVING_DIR"])
    (serving / "digits").mkdir(parents=True)
    from freestack.serving.processes import free_port_block, is_holder
    from freestack_server.core.address import socket_name

    port = free_port_block()
    holder = subprocess.Popen(
        [sys.executable, "-m", "freestack_server", "hold", str(serving / "digits"), "127.0.0.1", str(port)],
        env={**os.environ, "PYTHONPATH": str(PLUGINS)},
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(
            "the address holder", lambda: (serving / "digits" / socket_name(port)).exists(), tmp_path / "none"
        )
        down = _freestack(env, "down", timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        line = next((ln for ln in down.stdout.splitlines() if ln.split()[:1] == [str(holder.pid)]), "")
        assert line.split()[1:3] == ["TERM", "address"], down.stdout
        assert f"address holder for digits on 127.0.0.1:{port}" in line
        assert holder.wait(10) == 0 and not is_holder(holder.pid)
    finally:
        holder.kill()  # our child, not reaped yet: its pid is still its own
        holder.wait(10)
