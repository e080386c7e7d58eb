"""The CLI knows which stack it belongs to: ``freestack up`` (``make up``, ``make demo``) records the address
its stack listens on, every later command uses it unless the environment names a port, a stale record is
ignored and ``down`` removes it, and an error names the URL it used. ``up`` runs for real, with a
stand-in for ``airflow standalone`` (a process that sleeps, started as the stack is) and the stand-in for
Airflow's API (tests.unit.cli.test_backfill) answering at the port it was given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import airflow  # noqa: F401  (Airflow sets up logging when imported: here, not on a test's captured output)
import pytest

from freestack import embedded
from freestack.cli import main
from freestack.cli import stack as stack_cli
from tests.support.ports import free_port
from tests.unit.cli.test_backfill import ARGV, DAYS, fake_airflow  # noqa: F401  (the fixture)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """``up`` starts a sleeping process where it would start ``airflow standalone``: in a session of its own,
    with the stack's environment (so ``down`` finds and stops it as the stack's)."""
    started: list[subprocess.Popen] = []

    def start(env, log_file):
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(300)"],
            env=embedded.standalone_env(env),
            start_new_session=True,
        )
        started.append(proc)
        return proc

    monkeypatch.setattr(stack_cli, "start_standalone", start)
    monkeypatch.setattr(stack_cli, "ensure_migrated", lambda env: None)
    monkeypatch.setenv("FREESTACK_SERVING_DIR", str(tmp_path / "serving"))  # `down` stops no other server
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def _no_address(monkeypatch) -> None:
    """A shell that names no port (AIRFLOW_PORT and Airflow's own variables unset)."""
    for key in ("AIRFLOW_PORT", "AIRFLOW__API__PORT", "AIRFLOW__API__BASE_URL"):
        monkeypatch.delenv(key, raising=False)


def test_every_command_uses_the_port_the_stack_was_started_on(
    fake_airflow,  # noqa: F811
    stand_in,
    monkeypatch,
    capsys,  # noqa: F811
):
    api = fake_airflow(DAYS)
    url = os.environ["AIRFLOW__API__BASE_URL"]
    _no_address(monkeypatch)
    monkeypatch.setenv("AIRFLOW_PORT", str(urlparse(url).port))  # AIRFLOW_PORT=8110 make up
    assert main(["up", "--timeout", "60"]) == 0
    assert capsys.readouterr().out.startswith(f"Airflow UI: {url} (started)")

    monkeypatch.delenv("AIRFLOW_PORT")  # a later shell: the commands as the docs print them
    code, err = main([*ARGV, "--dry-run"]), capsys.readouterr().err
    assert code == 0 and ("POST", "/api/v2/backfills/dry_run") in [(m, p) for m, p, _ in api.calls], err
    record = json.loads((Path(os.environ["AIRFLOW_HOME"]) / "standalone.json").read_text())
    assert record["url"] == url and record["pid"] == stand_in[0].pid
    assert main(["up"]) == 0
    assert capsys.readouterr().out.startswith(f"Airflow UI: {url} (already running)")

    other = free_port()  # another port while the stack runs: said, not a second stack started
    monkeypatch.setenv("AIRFLOW_PORT", str(other))
    assert main(["up"]) == 1 and len(stand_in) == 1
    err = capsys.readouterr().err
    assert f"this project's Airflow already runs at {url}" in err
    assert f"not at http://127.0.0.1:{other}" in err
    monkeypatch.delenv("AIRFLOW_PORT")

    assert main(["down", "--grace", "10"]) == 0
    assert stand_in[0].wait(timeout=30) is not None
    assert not embedded.stack_record(Path(os.environ["AIRFLOW_HOME"])).exists()
    assert embedded.airflow_env()["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8080"


def test_a_stale_record_is_ignored_and_a_port_the_environment_names_wins(tmp_path, monkeypatch):
    home = tmp_path / "airflow"
    home.mkdir()
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    _no_address(monkeypatch)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        env = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__API__PORT": "8110",
            "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8110",
        }
        embedded.record_stack(env, proc.pid)
        found = embedded.airflow_env()
        assert found["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8110"
        assert found["AIRFLOW__API__PORT"] == "8110"
        assert found["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8110/execution/"
        monkeypatch.setenv("AIRFLOW_PORT", "8120")
        assert embedded.airflow_env()["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8120"
        monkeypatch.delenv("AIRFLOW_PORT")
        record = json.loads(embedded.stack_record(home).read_text())
        embedded.stack_record(home).write_text(json.dumps({**record, "started": record["started"] - 60}))
        assert embedded.airflow_env()["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8080"  # its pid, reused
        embedded.record_stack(env, proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert embedded.airflow_env()["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8080"  # the stack is gone


def test_an_error_names_the_url_it_used(fake_airflow, capsys):  # noqa: F811
    fake_airflow(DAYS)
    url = os.environ["AIRFLOW__API__BASE_URL"]
    (Path(os.environ["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({"admin": "another stack's"})
    )
    assert main(ARGV) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: Airflow at {url} refused ") and "HTTP 401" in err
    assert "another stack" in err and "AIRFLOW_PORT" in err


def test_up_waits_while_the_stack_makes_progress_then_says_it_is_still_starting(
    tmp_path, monkeypatch, capsys
):
    """A stack that starts slowly (its log grows for 3 s, nothing answers) is waited for past the quiet
    limit of 1.5 s; once nothing moves for that long, `up` says it is still starting (pid, log, how to
    check) and exits 3, leaving it running: not a bare failure at a fixed time."""
    started: list[subprocess.Popen] = []

    def start(env, log_file):
        script = (
            "import time\nfor i in range(10):\n    print(i, flush=True)\n    time.sleep(0.3)\ntime.sleep(300)"
        )
        with open(log_file, "a") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", script],
                stdout=log,
                env=embedded.standalone_env(env),
                start_new_session=True,
            )
        started.append(proc)
        return proc

    monkeypatch.setattr(stack_cli, "start_standalone", start)
    monkeypatch.setattr(stack_cli, "ensure_migrated", lambda env: None)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    (tmp_path / "airflow").mkdir()
    _no_address(monkeypatch)
    monkeypatch.setenv("AIRFLOW_PORT", str(free_port()))  # nothing answers there
    try:
        t0 = time.monotonic()
        assert main(["up", "--timeout", "1.5"]) == stack_cli.STILL_STARTING
        waited = time.monotonic() - t0
        err = capsys.readouterr().err
        assert waited >= 3.5, waited  # the 3 s of a growing log, then 1.5 s of nothing
        assert f"airflow standalone (pid {started[0].pid}) is still starting" in err, err
        assert (
            "nothing moved for" in err and "standalone.log" in err and "`make up` again waits for it" in err
        )
        assert started[0].poll() is None  # left starting
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
