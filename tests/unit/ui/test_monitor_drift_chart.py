"""The Monitoring page's drift over time: each feature's PSI across the judged intervals, the threshold,
from the monitor's stored summaries (freestack.ui.catalog.monitoring_pages.monitoring_page,
freestack.ui.plots.drift_over_time)."""

from __future__ import annotations

import json

import pytest

from tests.support.demo_sandbox import ROOT


def _summary(start: str, end: str, psi: dict[str, float]) -> dict:
    series = [
        {"name": n, "psi": v, "p_value": 0.001 if v >= 0.2 else 0.5, "drifted": v >= 0.2, "test": "ks"}
        for n, v in psi.items()
    ]
    return {
        "pipeline": "digits",
        "model": "digits",
        "interval": {"start": start, "end": end},
        "rows": 120,
        "labels": 0,
        "status": "drift" if any(s["drifted"] for s in series) else "ok",
        "alerts": [],
        "notes": [],
        "problems": [],
        "versions": [{"version": "v1", "series": series}],
    }


@pytest.fixture
def digits(storage):
    from freestack.spec import load_spec
    from freestack.storage import join, to_path, write_json

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    days = [
        ("2026-11-01", {"px_1": 0.01, "px_2": 0.02}),
        ("2026-11-02", {"px_1": 0.05, "px_2": 0.3}),
        ("2026-11-03", {"px_1": 0.04, "px_2": 0.5, "prediction": 0.1}),
    ]
    for day, psi in days:
        start, end = f"{day}T00:00:00+00:00", f"{day}T23:59:59+00:00"
        name = f"{day}T000000--{day}T235959"
        write_json(
            join(to_path(storage), "monitoring", "digits", "reports", name, "summary.json"),
            _summary(start, end, psi),
        )
    return spec


def test_drift_over_time_has_a_line_per_feature_and_the_threshold(digits):
    from freestack.ui.catalog import monitoring_pages
    from freestack.ui.plots import drift_over_time

    page = monitoring_pages.monitoring_page("digits", digits)
    page.figure = drift_over_time(page)
    assert [r.end[:10] for r in page.intervals] == ["2026-11-03", "2026-11-02", "2026-11-01"]  # newest first
    assert page.intervals[0].drift["px_2"] == (0.5, 0.001)
    fig = json.loads(page.figure)
    lines = {d["name"]: d for d in fig["data"]}
    assert list(lines) == ["px_2", "prediction", "px_1"]  # by their largest PSI
    assert [x[:10] for x in lines["px_2"]["x"]] == ["2026-11-01", "2026-11-02", "2026-11-03"] and lines[
        "px_2"
    ]["y"] == [0.02, 0.3, 0.5]
    assert lines["prediction"]["y"] == [None, None, 0.1]  # not judged before
    [threshold] = fig["layout"]["shapes"]
    assert threshold["y0"] == threshold["y1"] == digits.monitor.thresholds.psi
    assert "figure" not in page.model_dump(mode="json")  # the API's JSON leaves the figure out


def test_only_the_most_drifted_features_are_drawn_at_first():
    from freestack.ui.catalog.monitoring_pages import IntervalRow, MonitoringPage
    from freestack.ui.plots import SHOWN_SERIES, drift_over_time

    row = IntervalRow(
        name="i",
        start="a",
        end="b",
        status="ok",
        rows=1,
        labels=0,
        versions=["v1"],
        alerts=[],
        notes=[],
        top=[],
        drift={f"px_{k}": (k / 100, 0.5) for k in range(20)},
    )
    page = MonitoringPage(
        pipeline="digits", model="digits", thresholds={"psi": 0.2}, actions=[], intervals=[row]
    )
    data = json.loads(drift_over_time(page))["data"]
    assert [d["visible"] for d in data].count(True) == SHOWN_SERIES and data[0]["name"] == "px_19"
    assert drift_over_time(page.model_copy(update={"intervals": []})) is None


def test_the_monitoring_page_embeds_the_chart(digits):
    from freestack.ui.catalog import monitoring_pages
    from freestack.ui.plots import drift_over_time
    from freestack.ui.shared import TEMPLATES

    pages = [monitoring_pages.monitoring_page("digits", digits)]
    pages[0].figure = drift_over_time(pages[0])
    html = TEMPLATES.get_template("monitoring.html").render(
        base="/b", user="u", run_url=lambda *a: "", title="t", pages=pages
    )
    assert '<div id="fig-1" class="figure drift-over-time" data-pipeline="digits">' in html
    assert 'class="plotly-figure" data-target="fig-1">{"data":' in html and "/b/vendor/plotly-" in html
