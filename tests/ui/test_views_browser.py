"""The freestack views in the Airflow UI, on the state a real ``make demo`` left (the demo sandbox shared
with the documented-commands test), opened in Debian's Chromium driven by Playwright, logged in through
Airflow's own login page:

- anonymous requests to every page, JSON endpoint and action get 401/403, and so does a forged token;
- admin: the Models, version, Sweeps, Deployments and Data pages show what storage holds (version,
  metrics, gate, lineage hashes, trials, the best trial, health, partitions); the plots are drawn; the
  evaluation report is served over HTTP; a task's "freestack" extra link lands on its version; a
  promotion to staging runs ``digits_promote`` as the user and moves the alias;
- viewer: reads the pages, but may not promote (403, and no button).

Screenshots are kept under ``.freestack/test-artifacts/ui/`` (``FREESTACK_TEST_ARTIFACTS`` moves them).
Slow (a real demo under the real scheduler): ``-m slow``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.demo_sandbox import ROOT

pytestmark = pytest.mark.slow
KEEP_MODEL_SERVERS = True  # the sandbox's servers are its own
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("FREESTACK_TEST_ARTIFACTS") or ROOT / ".freestack" / "test-artifacts") / "ui"


def _status(url: str, method: str = "GET", headers: dict | None = None) -> int:
    req = urllib.request.Request(
        url, method=method, headers=headers or {}, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the plugin's pages and W&B apps, path parameters filled in."""
    from freestack.ui.app import views_app
    from freestack.ui.wandb_pages import wandb_app

    fill = {
        "{pipeline}": "digits",
        "{version}": "production",
        "{sweep_id}": "s",
        "{kind}": "promote",
        "{rel:path}": "README.md",
        "{name}": "views.css",
        "{model}": "digits",
        "{ds}": "2024-01-01",
    }
    out = []
    for prefix, app in (("/freestack/ui", views_app), ("/freestack/wandb", wandb_app)):
        assert not [r for r in app.routes if type(r).__name__ == "Mount"], "a mounted app skips the login"
        for route in app.routes:
            path = getattr(route, "path", "")
            for key, value in fill.items():
                path = path.replace(key, value)
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                if method != "HEAD":
                    out.append((method, prefix + path))
    return out


def test_anonymous_and_forged_requests_are_refused(demo, sandbox):
    routes = _routes()
    assert len(routes) >= 20, routes
    for method, path in routes:
        assert _status(sandbox.url + path, method) == 401, (method, path)
        forged = {"Authorization": "Bearer eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiIxIn0.x"}
        assert _status(sandbox.url + path, method, forged) in (401, 403), (method, path)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip(
            "Debian's Chromium is missing: `apt-get install -y chromium` (make browser-deps, as root)"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _login(browser, sandbox, user: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{sandbox.url}/auth/login")
    page.locator("input").first.fill(user)
    page.locator("input[type=password]").fill(sandbox.password(user))
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
    return page


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _stored(sandbox) -> dict:
    """What storage holds after the demo: the version, its metrics and lineage, the sweep, the lake."""
    reg = sandbox.storage / "registry" / "digits"
    aliases = json.loads((reg / "aliases.json").read_text())
    version = aliases["production"]
    lineage = json.loads((reg / version / "lineage.json").read_text())
    sweep = sandbox.storage / "runs" / "digits" / lineage["sweep"]["id"]
    return {
        "version": version,
        "aliases": aliases,
        "lineage": lineage,
        "metrics": json.loads((reg / version / "metrics.json").read_text()),
        "best": json.loads((sweep / "best.json").read_text()),
        "trials": len(list((sweep / "trials").iterdir())),
    }


def _models_pages(page, sandbox, s: dict) -> None:
    page.goto(f"{sandbox.url}/plugin/freestack")  # the top-level "freestack" entry of the UI's navigation
    frame = page.frame_locator("iframe")
    frame.locator("#models").wait_for(timeout=60_000)
    assert s["version"] in frame.locator("#models").inner_text()
    _shot(page, "01-models-in-the-airflow-ui")
    ui = f"{sandbox.url}/freestack/ui"
    page.goto(f"{ui}/models/digits")
    row = page.locator(f"#versions tr[data-version='{s['version']}']")
    assert "promoted" in row.inner_text() and "production" in row.inner_text()
    assert f"{s['metrics']['test_accuracy']:.4g}" in row.inner_text()
    _shot(page, "02-model-versions")
    page.goto(f"{ui}/models/digits/{s['version']}")
    metrics = page.locator("#metrics")
    assert (
        f"{s['metrics']['test_accuracy']:.6g}" in metrics.locator("tr", has_text="test_accuracy").inner_text()
    )
    assert page.locator("#gate").inner_text().startswith("promoted")
    parts = page.locator("#partitions").inner_text()
    assert (
        all(p["sha256"] in parts for p in s["lineage"]["partitions"]) and len(s["lineage"]["partitions"]) == 5
    )
    for p in s["lineage"]["partitions"]:  # each partition's rows read and the lake events that published it
        cells = page.locator(f"#partitions tr[data-ds='{p['ds']}'] td").all_inner_texts()
        assert cells[1] == f"{p['rows']:,}" and cells[3] == ", ".join(f"#{e['id']}" for e in p["events"]), (
            cells
        )
    assert s["lineage"]["airflow"]["run_id"] in page.locator("#airflow-run").inner_text()
    assert page.locator("#card").inner_text().strip()
    assert all(img.evaluate("i => i.naturalWidth") > 0 for img in page.locator(".plots img").all())
    report = page.request.get(page.locator("#report").evaluate("a => a.href"))
    assert report.status == 200 and "evaluation" in report.text()
    _shot(page, "03-version")


def _sweep_page(page, sandbox, s: dict) -> None:
    page.goto(f"{sandbox.url}/freestack/ui/sweeps")
    page.locator(f"a:text('{s['best']['sweep_id']}')").click()
    assert page.locator("#trial-count").inner_text() == str(s["trials"]) == str(s["best"]["trials"])
    assert page.locator("#best").inner_text() == s["best"]["best_trial"]
    assert page.locator("#best-value").inner_text() == f"{s['best']['best_value']:.6g}"
    assert page.locator("#trials tr[data-trial]").count() == s["trials"]
    for fig in ("#fig-1", "#fig-2"):
        page.locator(f"{fig}[data-drawn=true] svg.main-svg").first.wait_for(timeout=30_000)
    _shot(page, "04-sweep")


def _serving_and_data(page, sandbox) -> None:
    page.goto(f"{sandbox.url}/freestack/ui/deployments")
    section = page.locator("section#digits")
    assert section.locator(".health").inner_text() == "ok"
    assert float(section.locator(".requests").inner_text().split()[0]) >= 1  # the demo's own predictions
    assert "test rows answered" in section.locator(".smoke").inner_text()
    _shot(page, "05-deployments")
    page.goto(f"{sandbox.url}/freestack/ui/data")
    rows = page.locator("#lake-digits tr[data-ds]")
    assert rows.count() == 5
    for r in (
        rows.all()
    ):  # each partition's rows and quarantined rows (the demo's malformed ones) as ingest recorded them
        manifest = json.loads(
            (
                sandbox.storage / "lake" / "digits" / f"ds={r.get_attribute('data-ds')}" / "_manifest.json"
            ).read_text()
        )
        cells = r.locator("td")
        assert [cells.nth(1).inner_text(), cells.nth(2).inner_text()] == [
            str(manifest["rows_good"]),
            str(manifest["rows_quarantined"]),
        ]
        assert manifest["rows_quarantined"] > 0 and manifest["part"]["sha256"].startswith(
            cells.nth(4).inner_text()
        )
    assert "not a number" in page.locator("#lake-digits").inner_text()
    _shot(page, "06-data")
    page.goto(
        f"{sandbox.url}/freestack/ui/monitoring"
    )  # judged intervals (tests/e2e/test_monitor_demo.py adds some)
    section = page.locator("section#monitoring-digits")
    assert "digits_monitor" in section.inner_text() and "PSI" in section.inner_text()
    _shot(page, "07-monitoring")


def _task_link(page, sandbox, s: dict) -> None:
    api = sandbox.api()
    run = urllib.parse.quote(s["lineage"]["airflow"]["run_id"], safe="")
    links = api.call("GET", f"/dags/digits_train/dagRuns/{run}/taskInstances/gate/links")["extra_links"]
    assert "/plugin/freestack/task?" in links["freestack"]  # inside Airflow's UI, not the bare page
    page.goto(links["freestack"])
    page.frame_locator("iframe").locator("#metrics").wait_for(timeout=60_000)
    assert page.url.endswith(f"/plugin/freestack/models/digits/{s['version']}"), page.url


def _promote_to_staging(page, sandbox, s: dict) -> None:
    page.goto(f"{sandbox.url}/freestack/ui/models/digits/{s['version']}")
    page.locator("#promote-staging").click()
    assert "staging points at" in page.locator("#what").inner_text()
    page.locator("input[name=reason]").fill("browser test")
    page.locator("#confirm").click()
    assert "digits_promote" in page.locator("#run-link").inner_text()
    _shot(page, "07-promote-started")
    aliases = sandbox.storage / "registry" / "digits" / "aliases.json"
    deadline = time.monotonic() + 180
    while json.loads(aliases.read_text()).get("staging") != s["version"]:
        assert time.monotonic() < deadline, f"staging never moved: {aliases.read_text()}"
        time.sleep(1)
    move = json.loads(aliases.read_text())["history"][-1]
    assert move["alias"] == "staging" and move["by"].startswith("admin") and move["reason"] == "browser test"
    page.goto(f"{sandbox.url}/freestack/ui/models/digits")
    assert "staging" in page.locator(f"#versions tr[data-version='{s['version']}']").inner_text()
    _shot(page, "08-staging-moved")


def test_every_page_shows_the_demo_and_promote_works(demo, sandbox, browser):
    s = _stored(sandbox)
    page = _login(browser, sandbox, "admin")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    _models_pages(page, sandbox, s)
    _sweep_page(page, sandbox, s)
    _serving_and_data(page, sandbox)
    _task_link(page, sandbox, s)
    _promote_to_staging(page, sandbox, s)
    assert not errors, errors  # no script or CSP error on any page


def test_a_viewer_reads_but_may_not_promote(demo, sandbox, browser):
    s = _stored(sandbox)
    page = _login(browser, sandbox, "viewer")
    page.goto(f"{sandbox.url}/freestack/ui/models/digits/{s['version']}")
    assert page.locator("#metrics").is_visible() and page.locator("#promote-staging").count() == 0
    got = page.goto(f"{sandbox.url}/freestack/ui/models/digits/{s['version']}/promote?alias=staging")
    assert got.status == 403 and "may not trigger digits_promote" in page.locator("#refused").inner_text()
    posted = page.request.post(
        f"{sandbox.url}/freestack/ui/models/digits/{s['version']}/promote",
        form={"alias": "production"},
        headers={"Origin": sandbox.url},
    )
    assert posted.status == 403
    _shot(page, "09-viewer-refused")


def test_the_scores_page_shows_a_day_the_production_model_scored(demo, sandbox, browser):
    """The score stage (in-process, on the sandbox's storage) scores the demo's newest lake day with
    production; the Scores page shows that day: its version, its rows, a bar per predicted digit."""
    from datetime import UTC, datetime, timedelta

    from freestack.score.core import plan, score
    from freestack.spec import load_spec

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    spec = spec.model_copy(update={"storage_root": sandbox.storage.as_uri()})
    ds = max(p.name[3:] for p in (sandbox.storage / "lake" / "digits").glob("ds=*"))
    start = datetime.fromisoformat(ds).replace(tzinfo=UTC)
    got = plan(spec, start, start + timedelta(days=1))
    manifest = score(spec, got["jobs"][0], {"dag_id": "digits_score", "run_id": "browser-test"})
    page = _login(browser, sandbox, "admin")
    page.goto(f"{sandbox.url}/freestack/ui/scores/digits")
    row = page.locator(f"tr#ds-{ds}")
    assert row.locator("a.version").inner_text() == got["version"]
    assert row.locator("td.num").first.inner_text() == str(manifest["rows_scored"])
    assert row.locator(".dist .bar").count() == len(manifest["predictions"])
    _shot(page, "50-scores")
