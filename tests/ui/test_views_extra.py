"""Issue 42's pages in the real browser, on the state a real ``make demo`` left (the sandbox and browser of
tests/ui/test_views_browser.py): two versions of digits compared side by side (a second one is trained
through the REST API: one epoch at a tiny learning rate, so the gate blocks it and production stays), a
row sent to the demo's deployment from its "try it" form, and the quarantined rows of a partition,
page by page. Screenshots go with the other views' (``.freestack/test-artifacts/ui/``).

Slow (a real demo under the real scheduler): ``-m slow``.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.ui.test_views_browser import _login, _shot, _stored  # the browser fixture: tests/ui/conftest.py

pytestmark = pytest.mark.slow
KEEP_MODEL_SERVERS = True  # the sandbox's servers are its own
TERMINAL = ("success", "failed")


def _lineage(sandbox, version: str) -> dict:
    return json.loads((sandbox.storage / "registry" / "digits" / version / "lineage.json").read_text())


@pytest.fixture(scope="module")
def second(demo, sandbox) -> str:
    """A second version of digits, trained by a digits_train run the REST API starts; the gate blocks it."""
    s = _stored(sandbox)
    api = sandbox.api()
    paused = api.call("GET", "/dags/digits_train")["is_paused"]
    api.call("PATCH", "/dags/digits_train?update_mask=is_paused", {"is_paused": False})
    conf = {"end_ds": s["lineage"]["window"]["end_ds"], "sweep": False, "epochs": 1, "learning_rate": 1e-4}
    run_id = api.call("POST", "/dags/digits_train/dagRuns", {"logical_date": None, "conf": conf})[
        "dag_run_id"
    ]
    deadline = time.monotonic() + 900
    while (state := api.call("GET", f"/dags/digits_train/dagRuns/{run_id}")["state"]) not in TERMINAL:
        assert time.monotonic() < deadline, f"digits_train {run_id} still {state}"
        time.sleep(3)
    if paused:
        api.call("PATCH", "/dags/digits_train?update_mask=is_paused", {"is_paused": True})
    assert state == "success", f"digits_train {run_id} {state}"
    reg = sandbox.storage / "registry" / "digits"
    [version] = [
        p.name
        for p in reg.iterdir()
        if (p / "lineage.json").exists() and _lineage(sandbox, p.name)["airflow"]["run_id"] == run_id
    ]
    assert _lineage(sandbox, version)["gate"]["decision"] != "promote", (
        "the one-epoch version must not replace production"
    )
    assert _stored(sandbox)["version"] == s["version"]
    return version


def _errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return errors


def test_compare_two_versions(sandbox, browser, second):
    s = _stored(sandbox)
    page = _login(browser, sandbox, "admin")
    errors = _errors(page)
    page.goto(f"{sandbox.url}/freestack/ui/models/digits/{second}")
    page.locator("#compare-link").click()
    page.locator("#compare-versions th[data-version]").nth(1).wait_for()  # the compare page has loaded
    assert [
        h.get_attribute("data-version") for h in page.locator("#compare-versions th[data-version]").all()
    ] == [second, s["version"]]
    gate = page.locator("#compare-gate td").all_inner_texts()
    assert gate[0].startswith("blocked") and gate[1].startswith("promoted"), gate
    acc = page.locator("#compare-metrics tr[data-metric='test_accuracy'] td")
    assert (
        f"{s['metrics']['test_accuracy']:.6g}" in acc.nth(2).inner_text()
        and acc.nth(2).locator("strong").count() == 1
    )
    assert (
        acc.nth(1).locator("strong").count() == 0 and "(+" in acc.nth(2).inner_text()
    )  # better than the first, by how much
    epochs = page.locator(
        "#compare-params tr.differs[data-key='hyperparameters.train.epochs'] td"
    ).all_inner_texts()
    assert epochs[1] == "1" and epochs[2] == str(
        _lineage(sandbox, s["version"])["hyperparameters"]["train"]["epochs"]
    ), epochs
    assert "differs" in page.locator("#compare-lineage tr[data-key='sweep']").inner_text()
    assert page.locator("#compare-lineage tr[data-key='spec_hash']").get_attribute("class") == "same"
    assert page.locator("#compare-partitions tr[data-ds]").count() == len(s["lineage"]["partitions"])
    _shot(page, "20-compare-two-versions")
    with page.expect_navigation():  # the form keeps the two versions ticked
        page.locator("#compare-submit").click()
    page.locator("#compare-versions th[data-version]").nth(1).wait_for()  # read once the new page loaded
    assert page.locator("#compare-versions th[data-version]").count() == 2 and f"v={second}" in page.url
    api = page.request.get(f"{sandbox.url}/freestack/ui/api/compare/digits?v={second}&v=production").json()
    assert [v["version"] for v in api["versions"]] == [second, s["version"]]
    assert not errors, errors  # no script or CSP error (the 404 below is one on purpose)
    missing = page.goto(f"{sandbox.url}/freestack/ui/compare/digits?v=production&v=v20000101-00000000")
    assert missing.status == 404 and s["version"] in page.locator("#error").inner_text()


def test_try_a_deployment(demo, sandbox, browser):
    page = _login(browser, sandbox, "admin")
    errors = _errors(page)
    page.goto(f"{sandbox.url}/freestack/ui/deployments")
    page.locator("section#digits a.try").click()
    assert page.locator("#try-features tr[data-feature]").count() == 64  # px_0..px_63
    page.locator("#f-px_0").fill("0")
    page.locator("#f-px_63").fill("0")
    page.locator("#try-submit").click()
    assert page.locator("#try-status").inner_text() == "200", page.locator("#try-body").inner_text()
    assert page.locator("#try-predicted").inner_text() in [str(d) for d in range(10)]
    assert page.locator("#try-outputs tr[data-output]").count() == 10
    assert float(page.locator("#try-latency").inner_text().split()[0]) > 0
    assert page.locator("#f-px_0").input_value() == "0"  # the form keeps what was sent
    _shot(page, "21-try-a-deployment")
    assert not errors, errors  # no script or CSP error (the 400 below is one on purpose)
    page.locator("#f-px_5").fill("many")
    page.locator("#try-submit").click()
    assert "px_5: 'many' is not a number" in page.locator("#error").inner_text()
    url = f"{sandbox.url}/freestack/ui/deployments/digits/{_deployment(sandbox)}/try"
    assert (
        page.request.post(url, form={"px_0": "1"}, headers={"Origin": "http://elsewhere.example"}).status
        == 403
    )


def _deployment(sandbox) -> str:
    return next((sandbox.storage / "deployments" / "digits").glob("*.json")).stem


def test_quarantined_rows_page_by_page(demo, sandbox, browser):
    page = _login(browser, sandbox, "admin")
    errors = _errors(page)
    page.goto(f"{sandbox.url}/freestack/ui/data")
    row = page.locator("#lake-digits tr[data-ds]").first
    ds = row.get_attribute("data-ds")
    manifest = json.loads((sandbox.storage / "lake" / "digits" / f"ds={ds}" / "_manifest.json").read_text())
    total = manifest["rows_quarantined"]
    assert 3 <= total <= 100
    row.locator("a.quarantine").click()
    page.wait_for_url(f"**/data/digits/{ds}/quarantine")  # the page has loaded (count() does not wait)
    page.locator("#quarantine-count").wait_for()
    assert page.locator("#quarantine tr[data-line]").count() == total
    assert all(r.strip() for r in page.locator("#quarantine td.reason").all_inner_texts())
    assert page.locator("a.next").count() == 0
    _shot(page, "22-quarantined-rows")
    page.goto(f"{sandbox.url}/freestack/ui/data/digits/{ds}/quarantine?size=2")
    first = page.locator("#quarantine tr[data-line]").first.get_attribute("data-line")
    page.locator("a.next").first.click()
    page.wait_for_url(lambda url: "page=2" in url)
    assert f"page 2 of {-(-total // 2)}" in page.locator("#quarantine-count").inner_text()
    assert page.locator("#quarantine tr[data-line]").count() == 2
    assert (
        page.locator("#quarantine tr[data-line]").first.get_attribute("data-line") != first
        or "page=2" in page.url
    )
    _shot(page, "23-quarantined-rows-page-2")
    assert not errors, errors  # no script or CSP error (the 404 below is one on purpose)
    assert page.goto(f"{sandbox.url}/freestack/ui/data/digits/1999-01-01/quarantine").status == 404
    assert ds in page.locator("#error").inner_text()
