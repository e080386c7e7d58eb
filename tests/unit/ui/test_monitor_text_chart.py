"""The Monitoring page's text signals over time for a text-generation model: the embeddings' MMD² with
``monitor.text.min_mmd``, the answers' rates below, from the monitor's stored summaries
(freestack.ui.catalog.monitoring_pages, freestack.ui.plots.text_signals_over_time), and the page drawing it
beside the drift chart, over HTTP through the views app (login stubbed)."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.demo_sandbox import ROOT
from tests.support.views import views_client


def _summary(day: str, mmd: float, empty: float) -> dict:
    signals = [
        {"name": "prompts", "statistic": "mmd2", "value": mmd, "threshold": 0.01, "drifted": mmd >= 0.01},
        {"name": "completions", "statistic": "mmd2", "value": mmd / 2, "threshold": 0.01, "drifted": False},
        {"name": "empty", "statistic": "rate", "value": empty, "threshold": 0.1, "drifted": False},
    ]
    series = [{"name": "prediction_chars", "psi": 0.05, "p_value": 0.4, "drifted": False, "test": "ks"}]
    return {
        "pipeline": "arith_tiny",
        "model": "arith_tiny",
        "interval": {"start": f"{day}T00:00:00+00:00", "end": f"{day}T23:59:59+00:00"},
        "rows": 200,
        "labels": 0,
        "status": "drift" if mmd >= 0.01 else "ok",
        "alerts": [],
        "notes": [],
        "problems": [],
        "versions": [{"version": "v1", "series": series, "text": {"signals": signals, "drifted": []}}],
    }


@pytest.fixture
def arith(storage):
    from freestack.spec import load_spec
    from freestack.storage import join, to_path, write_json

    spec = load_spec(ROOT / "include" / "pipelines" / "arith_tiny.yaml")
    for day, mmd, empty in [
        ("2026-11-01", 0.002, 0.0),
        ("2026-11-02", 0.004, 0.01),
        ("2026-11-03", 0.06, 0.2),
    ]:
        name = f"{day}T000000--{day}T235959"
        folder = join(to_path(storage), "monitoring", spec.model_name, "reports", name)
        write_json(join(folder, "summary.json"), _summary(day, mmd, empty))
    return spec


def test_text_signals_over_time_have_the_embeddings_above_and_the_rates_below(arith):
    from freestack.ui.catalog import monitoring_pages
    from freestack.ui.plots import text_signals_over_time

    page = monitoring_pages.monitoring_page("arith_tiny", arith)
    assert page.intervals[0].text == {"prompts": 0.06, "completions": 0.03, "empty": 0.2}
    assert page.min_mmd == arith.monitor.text.min_mmd
    fig = json.loads(text_signals_over_time(page))
    lines = {d["name"]: d for d in fig["data"]}
    assert list(lines) == ["completions", "prompts", "empty"]  # the embeddings first
    assert lines["prompts"]["y"] == [0.002, 0.004, 0.06] and lines["prompts"]["yaxis"] == "y"
    assert lines["empty"]["y"] == [0.0, 0.01, 0.2] and lines["empty"]["yaxis"] == "y2"
    [threshold] = fig["layout"]["shapes"]
    assert threshold["y0"] == arith.monitor.text.min_mmd and threshold["yref"] == "y"
    assert "text_figure" not in page.model_dump(mode="json")
    # the judge's score, when measured, gets its own panel at the bottom
    page.intervals[0].text["judge"] = 3.5
    fig = json.loads(text_signals_over_time(page))
    judge = next(d for d in fig["data"] if d["name"] == "judge")
    assert judge["yaxis"] == "y3" and judge["y"] == [None, None, 3.5]
    assert (
        fig["layout"]["yaxis3"]["title"]["text"] == "judge score" and fig["layout"]["xaxis"]["anchor"] == "y3"
    )


def test_a_model_without_text_signals_has_no_text_chart(storage):
    from freestack.spec import load_spec
    from freestack.ui.catalog import monitoring_pages
    from freestack.ui.plots import text_signals_over_time

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    page = monitoring_pages.monitoring_page("digits", spec)
    assert page.min_mmd is None and text_signals_over_time(page) is None


@pytest.fixture
def client(arith, storage, monkeypatch):
    with views_client(monkeypatch, storage, arith) as client:
        yield client


def test_the_page_draws_the_drift_chart_and_the_text_chart(client):
    html = client.get("/monitoring").text
    assert re.search(r'<div id="fig-1" class="figure drift-over-time"', html)
    assert re.search(r'<div id="fig-2" class="figure text-over-time"', html)
    figures = re.findall(r'class="plotly-figure" data-target="(fig-\d)">(.*?)</script>', html, re.S)
    assert [t for t, _ in figures] == ["fig-1", "fig-2"]
    assert "text signals over time" in json.loads(figures[1][1])["layout"]["title"]["text"]
