"""The freestack pages as part of Airflow's UI, on the state a real
``make demo`` left (the sandbox and browser of tests/ui/test_views_browser.py):

- one "freestack" entry in the UI's navigation (the pages have their own tabs), W&B offline runs under Browse;
- the framed pages follow the UI's theme: light, and dark when the UI switches (live and after a reload);
- deep links: each framed page's path shows in the address bar (/plugin/freestack/models/digits/<v>), a
  reload opens the same page in the frame, Back and Forward step through the pages, and such a URL opened
  directly lands on its page;
- every data table sorts (numbers as numbers) and filters its rows;
- timings: seconds from a navigation to the framed page's heading, kept in ``native-timings.json`` and the
  screenshots, light and dark, under the artifacts folder.

Slow (a real demo under the real scheduler): ``-m slow``.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.ui.test_views_browser import ARTIFACTS, _login, _shot, _stored

pytestmark = pytest.mark.slow
KEEP_MODEL_SERVERS = True  # the sandbox's servers are its own
TIMINGS: dict[str, float] = {}


def _frame(page):
    return page.frame_locator("iframe")


def _heading(page, text: str, name: str, since: float) -> None:
    """Wait for the framed page's heading (``main > h1``) to show ``text``; keep the seconds since ``since``."""
    _frame(page).locator("main > h1", has_text=text).wait_for(timeout=60_000)
    TIMINGS[name] = round(time.monotonic() - since, 3)


def _lightness(css: str) -> float:
    """0 (black) .. 1 (white) of a computed colour: oklch's L, or rgb's mean channel."""
    if m := re.match(r"oklch\(([\d.]+)", css):
        return float(m.group(1))
    r, g, b = (float(x) for x in re.findall(r"[\d.]+", css)[:3])
    return (r + g + b) / 3 / 255


def _background(page) -> float:
    return _lightness(_frame(page).locator("body").evaluate("b => getComputedStyle(b).backgroundColor"))


def _set_theme(page, mode: str) -> None:
    """What Airflow's theme switch does (next-themes): localStorage "theme" and the class on <html>."""
    page.evaluate(
        """mode => { localStorage.setItem("theme", mode);
        const c = document.documentElement.classList; c.remove("light", "dark"); c.add(mode);
        document.documentElement.style.colorScheme = mode; }""",
        mode,
    )


def test_one_menu_entry_and_the_uis_theme(demo, sandbox, browser):
    page = _login(browser, sandbox, "admin")
    page.goto(f"{sandbox.url}/")
    entry = page.locator("a[href$='/plugin/freestack']")
    entry.first.wait_for(timeout=60_000)
    assert entry.count() == 1
    assert page.locator("a[href*='/plugin/freestack-']:not([href$='-wandb'])").count() == 0
    views = [
        v["name"]
        for p in page.request.get(f"{sandbox.url}/api/v2/plugins").json()["plugins"]
        for v in p.get("external_views", [])
    ]
    ours = sorted(
        v for v in views if "freestack" in v.lower() or v in ("Models", "Sweeps", "Deployments", "Data")
    )
    assert ours == ["freestack"], views
    assert "W&B offline runs" in views
    _set_theme(page, "light")
    since = time.monotonic()
    entry.click()
    _heading(page, "Models", "models: nav entry click -> heading", since)
    assert page.url.endswith("/plugin/freestack/models"), page.url
    assert _background(page) > 0.9
    assert _frame(page).locator("#tab-models.on").is_visible()
    _shot(page, "10-native-light-models")

    _set_theme(page, "dark")  # the UI switches: the framed page follows at once
    _frame(page).locator("html.dark").wait_for(timeout=10_000)
    assert _background(page) < 0.4
    _shot(page, "11-native-dark-models")
    since = time.monotonic()
    page.reload()  # and after a reload (from localStorage and the UI's class)
    _heading(page, "Models", "models: reload -> heading", since)
    assert _background(page) < 0.4
    _set_theme(page, "light")
    _frame(page).locator("html.light").wait_for(timeout=10_000)
    assert _background(page) > 0.9


def test_deep_links_reload_back_and_tables(demo, sandbox, browser):
    s = _stored(sandbox)
    page = _login(browser, sandbox, "admin")
    frame = _frame(page)
    page.goto(f"{sandbox.url}/plugin/freestack")
    frame.locator("#models").wait_for(timeout=60_000)
    since = time.monotonic()
    frame.locator("#models a[href$='/models/digits']").click()
    _heading(page, "digits versions", "model page: click in the frame -> heading", since)
    assert page.url.endswith("/plugin/freestack/models/digits"), page.url
    since = time.monotonic()
    frame.locator(f"#versions tr[data-version='{s['version']}'] a").first.click()
    _heading(page, s["version"], "version page: click in the frame -> heading", since)
    version_url = f"{sandbox.url}/plugin/freestack/models/digits/{s['version']}"
    assert page.url == version_url
    _shot(page, "12-native-version-in-airflow")

    since = time.monotonic()
    page.reload()  # the same version page in the frame
    _heading(page, s["version"], "version page: reload -> heading", since)
    assert page.url == version_url and frame.locator("#metrics").is_visible()
    page.go_back()  # Back: the versions page, in the address bar and the frame
    _heading(page, "digits versions", "back -> heading", time.monotonic())
    assert page.url.endswith("/plugin/freestack/models/digits"), page.url
    page.go_forward()
    frame.locator("main > h1", has_text=s["version"]).wait_for(timeout=60_000)
    assert page.url == version_url

    # the version page, once: metrics once, the card's metadata as a table (no raw YAML, no list reprs)
    assert frame.locator("text=test_accuracy").count() == 1
    card = frame.locator("#card").inner_text()
    assert "model-index" not in card and "['" not in frame.locator("main").inner_text()
    assert frame.locator("#card-metadata th", has_text="tags").count() == 1

    # the partitions table: filter and sort
    parts = s["lineage"]["partitions"]
    frame.locator("#partitions-filter").fill(parts[2]["ds"])
    visible = frame.locator("#partitions tr[data-ds]:visible")
    assert visible.count() == 1 and visible.get_attribute("data-ds") == parts[2]["ds"]
    frame.locator("#partitions-filter").fill("")
    assert frame.locator("#partitions tr[data-ds]:visible").count() == len(parts)
    header = frame.locator("#partitions th", has_text="Partition")
    header.click()
    header.click()  # descending
    shown = frame.locator("#partitions tr[data-ds]").evaluate_all("rs => rs.map(r => r.dataset.ds)")
    assert shown == sorted((p["ds"] for p in parts), reverse=True)
    rows_read = frame.locator("#partitions th", has_text="Rows read")
    rows_read.click()
    counts = frame.locator("#partitions tr[data-ds] td:nth-child(2)").all_inner_texts()
    assert [int(c.replace(",", "")) for c in counts] == sorted(p["rows"] for p in parts)

    # a deep link opened as it is: Airflow's chrome around the page it names
    since = time.monotonic()
    page.goto(f"{sandbox.url}/plugin/freestack/data/digits")
    _heading(page, "Data: digits", "data page: deep link opened -> heading", since)
    frame.locator("#partitions-digits-filter").fill(parts[0]["ds"])
    assert frame.locator("#lake-digits tr[data-ds]:visible").count() == 1
    _set_theme(page, "dark")
    frame.locator("html.dark").wait_for(timeout=10_000)
    _shot(page, "13-native-dark-data-filtered")
    since = time.monotonic()
    page.goto(version_url)
    _heading(page, s["version"], "version page: deep link opened -> heading", since)
    _shot(page, "14-native-dark-version")
    _set_theme(page, "light")

    (ARTIFACTS / "native-timings.json").write_text(json.dumps(TIMINGS, indent=1))
    print("page timings (s):", json.dumps(TIMINGS, indent=1))
