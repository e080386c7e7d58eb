"""A rollback from the Models page racing a training run's gate and deploy, in Debian's Chromium against the
demo sandbox (the real ``make demo`` of tests/support/demo_sandbox.py, under the real scheduler):

a ``digits_train`` run is started as the UI starts it; while it runs, an admin rolls production back from
the Models page. The confirmation page warns that a training run is in flight. Alias moves and deploys of
the model run one at a time (its deploy pool of one slot), so the outcome is one of two, never a third:

- the rollback run succeeds, and then the version it set is what its deploy served: its alias move and its
  deploy's XCom name the same version, and the deployment's history shows that version started for it;
- or it fails, and its failed task's log says which move overtook it and what to do.

Whatever the training run's gate decided afterwards, the address ends serving what ``production`` names.
Runs last, after the monitor's test (it moves production). Slow: ``-m slow``.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.e2e.test_monitor_demo import _wait
from tests.ui.test_views_browser import _login, _shot, browser  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.slow
KEEP_MODEL_SERVERS = True  # the sandbox's servers are its own
TERMINAL = ("success", "failed")


def _trigger(api, dag_id: str, conf: dict) -> str:
    return api.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})["dag_run_id"]


def _a_previous_version(api, storage, work) -> dict:
    """Production's aliases with a ``previous``: the demo trained one version, so a copy of it is registered
    under a new name and promoted through ``digits_promote`` (as the Models page does), which redeploys."""
    from freestack.registry.core import ModelRegistry

    reg = ModelRegistry(storage.as_uri(), "digits")
    if not reg.aliases().get("previous"):
        copy = reg.local_copy(reg.resolve("production"), work / "copy")
        reg.register(copy.as_uri(), "v20990101-racecopy")
        run = _trigger(api, "digits_promote", {"version": "v20990101-racecopy", "alias": "production",
                                               "reason": "a second version to roll back from"})  # fmt: skip
        state = _wait(lambda: (s := _run(api, "digits_promote", run)["state"]) in TERMINAL and s, 300, "digits_promote")
        assert state == "success", _tis(api, "digits_promote", run)
    return reg.aliases()


def _run(api, dag_id: str, run_id: str) -> dict:
    return api.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")


def _tis(api, dag_id: str, run_id: str) -> dict[str, dict]:
    got = api.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100")
    return {t["task_id"]: t for t in got["task_instances"]}


def _log(api, dag_id: str, run_id: str, ti: dict) -> str:
    path = (f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{ti['task_id']}/logs/"
            f"{ti.get('try_number') or 1}?full_content=true")  # fmt: skip
    return api.call("GET", path, text=True)


def test_a_rollback_racing_a_training_deploy_is_served_or_fails_explained(demo, sandbox, browser, tmp_path):  # noqa: F811
    from freestack.serving.local import describe
    from freestack.serving.records import Deployments

    api, storage = sandbox.api(), sandbox.storage
    aliases_file = storage / "registry" / "digits" / "aliases.json"
    demo_version = json.loads(aliases_file.read_text())["production"]
    lineage = json.loads((storage / "registry" / "digits" / demo_version / "lineage.json").read_text())
    before = _a_previous_version(api, storage, tmp_path)
    # a manual run over the demo's window trains a new candidate (only automatic runs skip an unchanged window)
    train = _trigger(api, "digits_train", {"end_ds": max(p["ds"] for p in lineage["partitions"]), "sweep_agents": 2})
    _wait(lambda: any(t["state"] == "running" for t in _tis(api, "digits_train", train).values()), 300,
          f"a task of digits_train {train} to run")  # fmt: skip

    page = _login(browser, sandbox, "admin")
    page.goto(f"{sandbox.url}/freestack/ui/models/digits")
    page.locator("#rollback").click()
    warning = page.locator("#training-in-flight")
    assert train in warning.inner_text() and "one at a time" in warning.inner_text()
    assert "production goes back to the previous version" in page.locator("#what").inner_text()
    _shot(page, "40-rollback-while-training")
    page.locator("#confirm").click()
    link = page.locator("#run-link")
    assert "digits_rollback" in link.inner_text()
    rollback = link.inner_text().split(" / ", 1)[1].strip()

    ended = _wait(lambda: (r := _run(api, "digits_rollback", rollback))["state"] in TERMINAL and r, 600,
                  f"digits_rollback {rollback}")  # fmt: skip
    tis = _tis(api, "digits_rollback", rollback)
    history = json.loads(aliases_file.read_text())["history"]
    if ended["state"] == "success":
        mine = [h for h in history if h["alias"] == "production" and rollback in str(h.get("by"))]
        assert mine and mine[-1]["version"] == before["previous"], (mine, before)
        served = api.call("GET", f"/dags/digits_rollback/dagRuns/{quote(rollback, safe='')}/taskInstances/deploy/"
                                 "xcomEntries/return_value?deserialize=true")["value"]  # fmt: skip
        assert served["version"] == before["previous"], served
        rec = Deployments(storage.as_uri(), "digits").get("digits")
        assert any(h["version"] == before["previous"] and rollback in str(h.get("reason")) for h in rec["history"]), rec["history"]
    else:
        failed = [t for t in tis.values() if t["state"] == "failed"]
        assert failed, tis
        said = _log(api, "digits_rollback", rollback, failed[0])
        assert "moved from" in said and "Trigger this again" in said, said[-2000:]

    state = _wait(lambda: (s := _run(api, "digits_train", train)["state"]) in TERMINAL and s, 900, f"digits_train {train}")
    assert state == "success", _tis(api, "digits_train", train)
    rec = Deployments(storage.as_uri(), "digits").get("digits")
    production = json.loads(aliases_file.read_text())["production"]
    assert rec["version"] == production and describe(rec)["health"] == "ok", (rec["version"], production)
    page.goto(f"{sandbox.url}/freestack/ui/deployments")
    assert page.locator("section#digits .health").inner_text() == "ok"
    assert page.locator("section#digits .mismatch").count() == 0
    _shot(page, "41-after-the-race")
