"""The run view for real: the Airflow API server (with the freestack plugin) and the LocalExecutor run
``digits_train``; its tasks run supervised, so their logs are the ones a user reads. Then:

- the train task's log holds W&B's lines at their level and no ERROR line (Airflow's supervisor logs a
  task's stderr at ERROR; wandb used to print there);
- the REST API lists the task's "W&B run" extra link, the plugin's menu entry and the run's note;
- Chromium (Debian's, driven by Playwright) opens the link, served by the API server: the offline
  run's summary metrics (equal to the model's metrics.json) and its `wandb sync` command; the UI's
  "W&B offline runs" menu page frames the list of runs; the run's page in the UI shows the gate's
  note, and the train task's Details tab the "W&B run" link.

Slow (it starts the API server): ``-m slow``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.dags.test_train_dag import lake  # noqa: F401  (the five-day digits lake fixture)
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]
CHROMIUM = "/usr/bin/chromium"


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture
def spawned_workers():
    """The LocalExecutor's workers start as fresh processes, not forks of this one: other tests trained
    with torch in this pytest process, and libgomp's thread pool does not survive a fork (the forked
    task spins in ``GOMP_parallel`` for ever). The scheduler never runs torch itself, so its forks are safe."""
    before = multiprocessing.get_start_method()
    multiprocessing.set_start_method("spawn", force=True)
    yield
    multiprocessing.set_start_method(before, force=True)


@pytest.fixture
def api_server(lake, monkeypatch, tmp_path):  # noqa: F811
    """``airflow api-server`` on 127.0.0.1 over the session's metadata DB; every request is an admin
    (simple auth manager, all admins), and this process's executor signs tasks' tokens with its secret."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    for key, value in {
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "freestack-test-secret",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # wandb speaks: its lines must land at their level
    log = tmp_path / "api-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("airflow")), "api-server"],
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if _get(f"{url}/api/v2/monitor/health", timeout=2):
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(1)
        yield {"url": url, "log": log}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server we started, and its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _task_log(run, task_id: str) -> list[dict]:
    """The task's log file as the UI shows it: one JSON event per line."""
    folder = Path(os.environ["AIRFLOW_HOME"]) / "logs" / f"dag_id={run.dag_id}" / f"run_id={run.run_id}"
    files = sorted((folder / f"task_id={task_id}").glob("attempt=*.log"))
    assert files, f"no log for {task_id} under {folder}"
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.startswith("{")]


def _check_log_levels(run) -> None:
    events = _task_log(run, "train")
    errors = [e for e in events if e.get("level") in ("error", "critical")]
    assert not errors, errors
    wandb_lines = [e for e in events if "W&B offline run" in str(e.get("event"))]
    assert wandb_lines and all(e["level"] == "info" for e in wandb_lines), wandb_lines
    assert not [e for e in events if e.get("logger") == "task.stderr" and "wandb" in str(e.get("event"))]


def _run_in_the_ui(page, ui: str, run_id: str) -> None:
    """The Airflow UI itself: the run's page shows the gate's note, the train task's Details tab the link."""
    from urllib.parse import quote

    run_page = f"{ui}/dags/digits_train/runs/{quote(run_id, safe='')}"
    page.goto(run_page)
    page.get_by_text("Gate: passed.", exact=False).first.wait_for(timeout=60_000)
    page.goto(f"{run_page}/tasks/train")
    page.get_by_text("Details", exact=True).first.click()  # the task instance's Details: Extra Links
    link = page.get_by_role("link", name="W&B run", exact=True)
    link.wait_for(timeout=60_000)
    assert "/freestack/wandb/offline?run_dir=" in link.get_attribute("href")


def _open_in_chromium(link: str, ui: str, metrics: dict, sync: str, run_id: str) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "the browser test needs Debian's Chromium: apt-get install -y chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            assert page.goto(link).status == 200
            summary = page.locator("#summary")
            row = summary.locator("tr", has=page.locator("td", has_text="test_accuracy"))
            assert row.locator("td").nth(1).inner_text() == f"{metrics['test_accuracy']:.6g}"
            assert "best_val_accuracy" in summary.inner_text()
            assert page.locator("#sync").inner_text() == sync
            assert "digits" in page.locator("#config").inner_text()
            page.goto(f"{ui}/plugin/freestack-wandb")  # the UI's menu entry frames the list of runs
            runs = page.frame_locator("iframe").locator("#runs")
            runs.wait_for(timeout=60_000)
            assert "train" in runs.inner_text()
            _run_in_the_ui(page, ui, run_id)
        finally:
            browser.close()


def test_run_view_log_levels_link_note_and_offline_page(lake, api_server, spawned_workers):  # noqa: F811
    url = api_server["url"]
    dag = lake["bag"].get_dag("digits_train")
    run = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False, "epochs": 4}, use_executor=True)
    assert run.state == "success", api_server["log"].read_text()[-3000:]
    _check_log_levels(run)

    base = f"{url}/api/v2/dags/digits_train/dagRuns/{run.run_id}"
    gate_note, window_line = _get(base)["note"].rsplit(
        "\n\n", 1
    )  # the gate's decision, then the window's line
    assert (
        gate_note.startswith("**Gate: passed.**")
        and "**Promoted.**" in gate_note
        and window_line.startswith("Window: ")
    )
    link = _get(f"{base}/taskInstances/train/links")["extra_links"]["W&B run"]
    assert link.startswith(f"{url}/freestack/wandb/offline?run_dir=")
    views = {
        v["name"]: v for p in _get(f"{url}/api/v2/plugins")["plugins"] for v in p.get("external_views", [])
    }
    assert views["W&B offline runs"]["url_route"] == "freestack-wandb"
    assert views["freestack"]["url_route"] == "freestack" and views["freestack"]["nav_top_level"]
    assert not {"Models", "Sweeps", "Deployments", "Data"} & set(
        views
    )  # one entry: the pages have their own tabs

    out = _get(f"{base}/taskInstances/train/xcomEntries/return_value")["value"]
    out = json.loads(out) if isinstance(out, str) else out
    version = lake["root"] / "registry" / "digits" / out["version"]  # the candidate, registered by the gate
    metrics = json.loads((version / "metrics.json").read_text())
    _open_in_chromium(link, url, metrics, out["wandb"]["sync_command"], run.run_id)
