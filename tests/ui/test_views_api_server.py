"""The ML views through the Airflow API server's own app (``create_app()``: the plugin, Airflow's login,
its middleware) on 127.0.0.1 in this process, over a registry of 12 versions and a 20-trial sweep written
by bench/ui/volume.py, opened over HTTP and in Debian's Chromium (Playwright), logged in through
Airflow's login page:

- the versions table has one sortable column per test metric (numbers sort as numbers, both ways);
- the chart pages' plotly.js comes gzipped and cached for a year under a versioned name (Airflow's own
  gzip leaves it alone), the charts draw with it, and a second visit asks the server for nothing of it;
- the pages' older addresses in the UI (``/plugin/freestack-models``...) answer 301 with their address
  now, and the browser lands on the page.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.ui.volume import make_registry, make_sweep
from tests.conftest import ROOT
from tests.support.ports import free_port

KEEP_MODEL_SERVERS = True  # none started here
METRICS = ("test_accuracy", "test_log_loss", "test_macro_f1")  # as the catalog reads them: by name


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """Status, headers (lower-cased names) and the body as sent (not un-gzipped); redirects not followed."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@pytest.fixture(scope="module")
def server(airflow_db, tmp_path_factory):
    """The API server app over a fresh registry and sweep of ``digits``: its URL, a token, the storage."""
    import uvicorn
    from airflow.api_fastapi.app import create_app

    base = tmp_path_factory.mktemp("views-api-server")
    (base / "pipelines").mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", base / "pipelines" / "digits.yaml")
    storage = (base / "storage").as_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREESTACK_PIPELINES_DIR", str(base / "pipelines"))
        mp.setenv("FREESTACK_STORAGE_ROOT", storage)
        make_registry(storage, "digits", 12)
        sweep_id = make_sweep(storage, "digits", 20)
        port = free_port()
        config = uvicorn.Config(create_app("core"), host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the API server did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        yield {"url": url, "token": _token(url), "storage": base / "storage", "sweep": sweep_id}
        server.should_exit = True
        thread.join(timeout=10)


def _password() -> str:
    """The admin's password the simple auth manager generated in the session's AIRFLOW_HOME."""
    home = Path(os.environ["AIRFLOW_HOME"])
    return json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]


def _token(url: str) -> str:
    body = json.dumps({"username": "admin", "password": _password()}).encode()
    req = urllib.request.Request(f"{url}/auth/token", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["access_token"]


def _login(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server['url']}/auth/login")
    page.locator("input").first.fill("admin")
    page.locator("input[type=password]").fill(_password())
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
    return page


def _stored_metrics(server) -> dict[str, dict[str, float]]:
    reg = server["storage"] / "registry" / "digits"
    return {v.name: json.loads((v / "metrics.json").read_text()) for v in reg.glob("v*/")}


def test_chart_asset_comes_gzipped_once_and_cached_for_a_year_through_airflows_app(server):
    auth = {"Authorization": f"Bearer {server['token']}"}
    status, _, html = _get(f"{server['url']}/freestack/ui/models/digits", auth)
    assert status == 200
    [src] = re.findall(rb'<script src="(/freestack/ui/vendor/plotly-basic-[\d.]+\.min\.js)" defer>', html)
    status, headers, body = _get(server["url"] + src.decode(), {**auth, "Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip", headers  # one gzip, not gzip of gzip
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    text = gzip.decompress(body)
    assert text.startswith(b"/**\n* plotly.js (basic - minified) v") and len(body) < 600_000 < len(text)
    status, headers, _ = _get(f"{server['url']}/freestack/ui/vendor/plotly.min.js", auth)
    assert status == 301 and src.decode().endswith(headers["location"])


def test_versions_table_has_a_sortable_column_per_test_metric(server, browser):
    stored = _stored_metrics(server)
    page = _login(browser, server)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/vendor/" in r.url else None)
    page.goto(f"{server['url']}/freestack/ui/models/digits")
    table = page.locator("#versions")
    heads = table.locator("tr").first.locator("th").all_inner_texts()
    columns = [f"test {m[5:]}" for m in METRICS]
    assert heads == ["Version", "Registered", "Window", *columns, "Gate", "Aliases", "Airflow run"], heads
    rows = table.locator("tr[data-version]")
    assert rows.count() == 12
    for metric in METRICS:
        th = table.locator(f"th[data-metric='{metric}']")
        col = heads.index(f"test {metric[5:]}")
        want = sorted(stored, key=lambda v: stored[v][metric])
        th.click()
        assert th.get_attribute("aria-sort") == "ascending"
        assert [rows.nth(k).get_attribute("data-version") for k in range(12)] == want, metric
        th.click()
        assert th.get_attribute("aria-sort") == "descending"
        assert [rows.nth(k).get_attribute("data-version") for k in range(12)] == want[::-1], metric
        first = rows.first.locator("td").nth(col).inner_text()
        assert first == f"{stored[want[-1]][metric]:.4g}", (metric, first)
    page.locator("#fig-1[data-drawn=true] svg.main-svg").first.wait_for(timeout=30_000)  # the chart, drawn
    assert len(asked) == 1 and "/vendor/plotly-basic-" in asked[0], asked

    asked.clear()
    page.goto(f"{server['url']}/freestack/ui/sweeps/digits/{server['sweep']}")
    for k in range(1, 5):
        page.locator(f"#fig-{k}[data-drawn=true] svg.main-svg").first.wait_for(timeout=30_000)
    assert page.evaluate("""() => performance.getEntriesByType("resource")
        .filter((e) => e.name.includes("/vendor/")).map((e) => e.transferSize)""") == [0]  # from the cache
    assert not errors, errors


def test_older_addresses_land_on_the_page(server, browser):
    status, headers, _ = _get(f"{server['url']}/plugin/freestack-models/digits?pg=1")
    assert status == 301 and headers["location"] == "/plugin/freestack/models/digits?pg=1"
    status, headers, _ = _get(f"{server['url']}/plugin/freestack-sweeps")
    assert status == 301 and headers["location"] == "/plugin/freestack/sweeps"
    status, _, html = _get(f"{server['url']}/plugin/freestack-wandb")  # a page of its own still
    assert status == 200 and b"<html" in html.lower()

    page = _login(browser, server)
    page.goto(f"{server['url']}/plugin/freestack-models/digits")
    page.frame_locator("iframe").locator("main > h1", has_text="digits versions").wait_for(timeout=60_000)
    assert page.url.endswith("/plugin/freestack/models/digits"), page.url
