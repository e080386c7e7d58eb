"""The chart pages' plotly.js (freestack.ui.vendor: plotly's basic bundle under a versioned name, gzipped
once, cached for a year) and the pages' older addresses (freestack.ui.moved: 301 to the address now), over
HTTP through the views app (login stubbed) and a Starlette app with the middleware; the real API server
and browser: tests/ui/test_views_api_server.py."""

from __future__ import annotations

import json
import re

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bench.ui.volume import make_registry, make_sweep
from tests.support.demo_sandbox import ROOT
from tests.support.views import views_client


@pytest.fixture
def client(storage, monkeypatch):
    from freestack.spec import load_spec

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    with views_client(monkeypatch, storage, spec) as client:
        yield client


def test_chart_pages_load_the_versioned_bundle_gzipped_and_cached_for_a_year(client, storage):
    from freestack.ui.vendor import BUNDLE, bundle_version

    make_registry(storage, "digits", 3)
    html = client.get("/models/digits").text
    [src] = re.findall(r'<script src="([^"]*/vendor/[^"]+)"', html)
    assert src.endswith(f"/vendor/plotly-basic-{bundle_version()}.min.js"), src
    name = src.rsplit("/", 1)[1]

    packed = client.get(f"/vendor/{name}", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert packed.status_code == 200 and packed.headers["content-type"].startswith("text/javascript")
    assert packed.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert packed.headers["content-encoding"] == "gzip" and packed.headers["vary"] == "Accept-Encoding"
    raw = BUNDLE.read_bytes()
    sent = int(packed.headers["content-length"])
    assert sent < len(raw) / 2.5 and sent < 600_000, sent  # 0.4 MB on the wire, not 4.8 MB
    assert packed.content == raw  # httpx undoes the gzip: the very bundle

    plain = client.get(f"/vendor/{name}", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == raw
    refused = client.get(f"/vendor/{name}", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "content-encoding" not in refused.headers

    old = client.get("/vendor/plotly.min.js", follow_redirects=False)  # the name older pages asked for
    assert old.status_code == 301 and old.headers["location"] == name
    missing = client.get("/vendor/jquery.js")
    assert missing.status_code == 404 and name in missing.text


def test_the_bundle_is_plotlys_basic_build_and_draws_every_trace_the_views_make(storage):
    """The views' figures use only the bundle's trace types (scatter, bar): the versions chart, the sweep's
    four, the monitoring chart and the scores' (classes and values); the bundle is the basic build of a
    plotly.js of the same major version as the one the plotly package ships."""
    from plotly.offline._plotlyjs_version import __plotlyjs_version__

    from freestack.spec import load_spec
    from freestack.ui import plots
    from freestack.ui.catalog import model_pages, monitoring_pages, score_pages, sweep_pages
    from freestack.ui.vendor import BUNDLE, TRACES, bundle_version

    assert BUNDLE.read_bytes()[:200].decode().count("plotly.js (basic - minified) v") == 1
    assert bundle_version().split(".")[0] == __plotlyjs_version__.split(".")[0]
    assert (BUNDLE.parent / "LICENSE.plotly.js").read_text().startswith("MIT License")
    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    make_registry(storage, "digits", 4)
    page = model_pages.model_page("digits", spec)
    s = sweep_pages.sweep_page("digits", spec, make_sweep(storage, "digits", 12))
    figures = [
        plots.metric_over_versions(page.versions, "test_accuracy"),
        plots.metric_vs_params(s),
        plots.metric_over_epochs(s),
        plots.parallel_coordinates(s),
        plots.importance_chart(s),
    ]
    row = monitoring_pages.IntervalRow(
        name="i",
        start="a",
        end="b",
        status="drift",
        rows=1,
        labels=0,
        versions=["v1"],
        alerts=[],
        notes=[],
        top=[],
        drift={"px_1": (0.3, 0.01)},
    )
    monitoring = monitoring_pages.MonitoringPage(
        pipeline="digits", model="digits", intervals=[row], thresholds={"psi": 0.2}, actions=[]
    )
    figures.append(plots.drift_over_time(monitoring))
    classes = [score_pages.ClassCount(label=str(k), rows=r, share=r / 4) for k, r in ((0, 3), (1, 1))]
    values = score_pages.ValueStats(count=4, min=0.0, mean=1.0, max=3.0)
    for day in ({"classes": classes}, {"values": values}):
        scored = score_pages.ScoredDay(ds="2026-11-01", folder="f", **day)
        scores = score_pages.ScoresPage(
            pipeline="digits",
            model="digits",
            folder="f",
            version="production",
            schedule="@daily",
            total=1,
            page=1,
            pages=1,
            days=[scored],
        )
        figures.append(plots.predictions_over_days(scores))
    types = {trace.get("type", "scatter") for f in figures for trace in json.loads(f)["data"]}
    assert types and types <= TRACES, types


def _app(root_path: str = "") -> TestClient:
    from freestack.ui.moved import MovedPages

    async def spa(request):
        return PlainTextResponse(f"the UI at {request.url.path}")

    routes = [Route("/{rest:path}", spa, methods=["GET", "HEAD", "POST"])]
    app = Starlette(routes=routes, middleware=[Middleware(MovedPages)])
    return TestClient(app, root_path=root_path, follow_redirects=False)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/plugin/freestack-models", "/plugin/freestack/models"),
        ("/plugin/freestack-models/digits?pg=2", "/plugin/freestack/models/digits?pg=2"),
        ("/plugin/freestack-sweeps/digits/sweep-1", "/plugin/freestack/sweeps/digits/sweep-1"),
        ("/plugin/freestack-deployments", "/plugin/freestack/deployments"),
        ("/plugin/freestack-monitoring", "/plugin/freestack/monitoring"),
        (
            "/plugin/freestack-data/digits?a=1&b=two%20words",
            "/plugin/freestack/data/digits?a=1&b=two%20words",
        ),
    ],
)
def test_older_addresses_answer_301_with_the_page_now(old, new):
    got = _app().get(old)
    assert got.status_code == 301 and got.headers["location"] == new
    assert _app().head(old).status_code == 301


def test_other_addresses_pass_and_the_uis_path_prefix_is_kept():
    for path in (
        "/plugin/freestack",
        "/plugin/freestack/models",
        "/plugin/freestack-wandb",
        "/plugin/freestack-modelsx",
        "/plugin/freestack-scores",
        "/freestack/ui/models",
    ):
        got = _app().get(path)
        assert got.status_code == 200 and got.text == f"the UI at {path}", path
    assert _app().post("/plugin/freestack-models").status_code == 200  # only GET and HEAD are pages
    behind = _app("/airflow").get("/airflow/plugin/freestack-sweeps/digits?x=1")
    assert behind.status_code == 301
    assert behind.headers["location"] == "/airflow/plugin/freestack/sweeps/digits?x=1"


def test_gzip_is_taken_only_with_a_weight_above_zero():
    from starlette.requests import Request

    from freestack.ui.vendor import accepts_gzip

    def takes(value: str) -> bool:
        return accepts_gzip(Request({"type": "http", "headers": [(b"accept-encoding", value.encode())]}))

    assert takes("gzip") and takes("deflate, GZIP;q=0.5") and takes("br;q=1.0, gzip; q=1")
    assert not takes("") and not takes("identity") and not takes("gzip;q=0") and not takes("gzip;q=0.000")
    assert not takes("x-gzip") and not takes("gzip;q=nope")
