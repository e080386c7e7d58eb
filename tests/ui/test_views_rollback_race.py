"""A rollback and a promotion from the Models page racing a training run's gate and deploy, in Debian's
Chromium against the demo sandbox (the real ``make demo`` of tests/support/demo_sandbox.py, under the real
scheduler):

a ``digits_train`` run is started as the UI starts it; while it runs, an admin rolls production back from
the Models page to the version its button names (A), then, seconds later, promotes another version (B)
from its page. The confirmation pages promise no order: alias moves and deploys of the model run one at
a time (its deploy pool of one slot), in whichever order Airflow starts them. Each run's form holds the
version it names and what production was as it was confirmed, so each run ends one of two ways, never a
third:

- it succeeds, and then the version it named is the one its move set and its deploy served (the
  rollback never lands on another version than A, whatever ``previous`` has become meanwhile);
- or it fails, and its failed task's log says which move came first and that nothing was changed.

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


def _register_copy(api, storage, work, name: str, promote: bool) -> None:
    """A copy of production registered as ``name``; promoted through ``digits_promote`` (as the Models page
    does, which redeploys) when ``promote``."""
    from freestack.registry.core import ModelRegistry

    reg = ModelRegistry(storage.as_uri(), "digits")
    if reg.is_registered(name):
        return
    copy = reg.local_copy(reg.resolve("production"), work / name)
    reg.register(copy.as_uri(), name)
    if promote:
        run = _trigger(
            api,
            "digits_promote",
            {"version": name, "alias": "production", "reason": "a second version to roll back from"},
        )
        state = _wait(
            lambda: (s := _run(api, "digits_promote", run)["state"]) in TERMINAL and s, 300, "digits_promote"
        )
        assert state == "success", _tis(api, "digits_promote", run)


def _run(api, dag_id: str, run_id: str) -> dict:
    return api.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")


def _tis(api, dag_id: str, run_id: str) -> dict[str, dict]:
    got = api.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100")
    return {t["task_id"]: t for t in got["task_instances"]}


def _log(api, dag_id: str, run_id: str, ti: dict) -> str:
    from freestack.cli.actions import task_log

    return task_log(api, f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}", ti)


def _confirm(page, what: str) -> str:
    """Confirm the open confirmation page; the run it started (Airflow starts it while a training run
    keeps its scheduler busy: the answer may take a while)."""
    with page.expect_navigation(timeout=180_000):
        page.locator("#confirm").click(no_wait_after=True)
    link = page.locator("#run-link")
    if not link.count():  # an error page: say what it says
        pytest.fail(
            f"confirming {what} started no run; the page says: {page.locator('body').inner_text()[:2000]}"
        )
    assert what in link.inner_text()
    return link.inner_text().split(" / ", 1)[1].strip()


def _ended_as_asked(api, storage, dag_id: str, run_id: str, version: str) -> str:
    """The run's end: success with its move and its deploy on ``version``, or a failure its log explains."""
    from freestack.serving.records import Deployments

    ended = _wait(
        lambda: (r := _run(api, dag_id, run_id))["state"] in TERMINAL and r, 900, f"{dag_id} {run_id}"
    )
    tis = _tis(api, dag_id, run_id)
    history = json.loads((storage / "registry" / "digits" / "aliases.json").read_text())["history"]
    mine = [h for h in history if h["alias"] == "production" and run_id in str(h.get("by"))]
    if ended["state"] == "success":
        assert [h["version"] for h in mine] == [version], (mine, version)
        served = api.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/deploy/"
            "xcomEntries/return_value?deserialize=true",
        )["value"]
        assert served["version"] == version, served
        rec = Deployments(storage.as_uri(), "digits").get("digits")
        assert any(h["version"] == version and run_id in str(h.get("reason")) for h in rec["history"]), rec[
            "history"
        ]
        return "success"
    failed = [t for t in tis.values() if t["state"] == "failed"]
    assert failed, tis
    said = _log(api, dag_id, run_id, failed[0])
    if failed[0]["task_id"] == "deploy":  # its move landed, then another run's move overtook its deploy
        assert [h["version"] for h in mine] == [version] and "Trigger this again" in said, said[-2000:]
    else:  # overtaken before its move: nothing changed
        assert not mine and "was asked; nothing was changed: ask again" in said, said[-2000:]
    assert "moved from" in said, said[-2000:]
    return "failed"


def test_a_rollback_and_a_promotion_racing_a_training_deploy_land_as_named_or_fail_explained(
    demo,
    sandbox,
    browser,  # noqa: F811
    tmp_path,
):
    from freestack.serving.local import describe
    from freestack.serving.records import Deployments

    api, storage = sandbox.api(), sandbox.storage
    aliases_file = storage / "registry" / "digits" / "aliases.json"
    demo_version = json.loads(aliases_file.read_text())["production"]
    lineage = json.loads((storage / "registry" / "digits" / demo_version / "lineage.json").read_text())
    _register_copy(api, storage, tmp_path, "v20990101-racecopy", promote=True)
    _register_copy(api, storage, tmp_path, "v20990102-racecopy", promote=False)
    before = json.loads(aliases_file.read_text())
    rollback_to, promoted = before["previous"], "v20990102-racecopy"
    # a manual run over the demo's window trains a new candidate (only automatic runs skip an unchanged window)
    train = _trigger(
        api, "digits_train", {"end_ds": max(p["ds"] for p in lineage["partitions"]), "sweep_agents": 2}
    )
    _wait(
        lambda: any(t["state"] == "running" for t in _tis(api, "digits_train", train).values()),
        300,
        f"a task of digits_train {train} to run",
    )

    page = _login(browser, sandbox, "admin")
    page.goto(f"{sandbox.url}/freestack/ui/models/digits")
    assert page.locator("#rollback").inner_text() == f"Roll back production to {rollback_to}…"
    page.locator("#rollback").click()
    warning = page.locator("#training-in-flight").inner_text()
    assert train in warning and "one at a time" in warning and "not necessarily in the order" in warning
    assert (
        f"production goes back from {before['production']} to {rollback_to}"
        in page.locator("#what").inner_text()
    )
    _shot(page, "40-rollback-while-training")
    rollback = _confirm(page, "digits_rollback")

    page.goto(f"{sandbox.url}/freestack/ui/models/digits/{promoted}")
    page.locator("#promote-production").click()
    page.locator("#gate-result").wait_for()  # the click navigates: the form's page, once it has loaded
    assert "only while it is still" in page.locator("#expect").inner_text()
    promote = _confirm(page, "digits_promote")

    outcomes = {
        "rollback": _ended_as_asked(api, storage, "digits_rollback", rollback, rollback_to),
        "promote": _ended_as_asked(api, storage, "digits_promote", promote, promoted),
    }
    # the rollback never lands on a third version, whatever `previous` became
    assert all(
        h["version"] == rollback_to
        for h in json.loads(aliases_file.read_text())["history"]
        if h["action"] == "rollback" and rollback in str(h.get("by"))
    )

    state = _wait(
        lambda: (s := _run(api, "digits_train", train)["state"]) in TERMINAL and s,
        900,
        f"digits_train {train}",
    )
    assert state == "success", _tis(api, "digits_train", train)
    rec = Deployments(storage.as_uri(), "digits").get("digits")
    production = json.loads(aliases_file.read_text())["production"]
    assert rec["version"] == production and describe(rec)["health"] == "ok", (
        rec["version"],
        production,
        outcomes,
    )
    page.goto(f"{sandbox.url}/freestack/ui/deployments")
    assert page.locator("section#digits .health").inner_text() == "ok"
    assert page.locator("section#digits .mismatch").count() == 0
    _shot(page, "41-after-the-race")
    print(f"race outcomes: {outcomes}; production {production}")
