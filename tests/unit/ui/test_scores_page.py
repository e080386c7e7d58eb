"""The Scores section of the views (freestack.ui.catalog.score_pages.scores_page,
plots.predictions_over_days, the /scores pages and their JSON, a scored day's quarantined rows, the score
tasks' link): scored days written straight with pyarrow as the score task lays them out (part.parquet
with the manifest in its footer, _manifest.json, _quarantine.parquet), so nothing is trained."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.support.demo_sandbox import ROOT
from tests.support.views import views_client

V1, V2 = "v20261101-000000-aaaaaaaa", "v20261103-000000-bbbbbbbb"


def _spec(name: str = "digits"):
    from freestack.score.spec import ScoreSpec
    from freestack.spec import load_spec

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    return spec.model_copy(update={"score": ScoreSpec(), "name": name})


def _folder(storage: str, pipeline: str, ds: str) -> Path:
    return Path(storage.removeprefix("file://")) / "scores" / pipeline / f"ds={ds}"


def _manifest(
    pipeline: str,
    ds: str,
    version: str,
    predictions: dict,
    task: str = "classification",
    quarantined: int = 0,
    run_id: str | None = None,
) -> dict:
    scored = int(predictions["count"]) if task == "regression" else sum(predictions.values())
    folder = f"file:///s/scores/{pipeline}/ds={ds}"
    return {
        "pipeline": pipeline,
        "model": pipeline,
        "ds": ds,
        "version": version,
        "version_uri": f"file:///s/registry/{version}",
        "lineage": f"file:///s/registry/{version}/lineage.json",
        "inputs": [
            {"uri": "file:///in.parquet", "sha256": "ab" * 32, "size": 10, "rows": scored + quarantined}
        ],
        "rows_in": scored + quarantined,
        "rows_scored": scored,
        "rows_quarantined": quarantined,
        "quarantine": f"{folder}/_quarantine.parquet" if quarantined else None,
        "predictions": predictions,
        "columns": ["prediction", "probabilities"],
        "task": task,
        "scored_at": f"{ds}T06:00:00+00:00",
        "run": {"dag_id": f"{pipeline}_score", "run_id": run_id or f"scheduled__{ds}"},
    }


def _write_day(storage: str, manifest: dict, quarantine: list[dict] | None = None) -> Path:
    """A day's folder as ``freestack.score.core.score`` publishes it."""
    from freestack.score.published import FOOTER_KEY

    folder = _folder(storage, manifest["pipeline"], manifest["ds"])
    folder.mkdir(parents=True, exist_ok=True)
    n = manifest["rows_scored"]
    probs = pa.FixedSizeListArray.from_arrays(pa.array([0.5] * (2 * n), pa.float32()), 2)
    table = pa.table(
        {
            "id": list(range(n)),
            "ds": [manifest["ds"]] * n,
            "prediction": ["0"] * n,
            "probabilities": probs,
            "version": [manifest["version"]] * n,
        }
    )
    pq.write_table(
        table.replace_schema_metadata({FOOTER_KEY: json.dumps(manifest).encode()}), folder / "part.parquet"
    )
    (folder / "_manifest.json").write_text(json.dumps(manifest))
    if quarantine:
        pq.write_table(pa.Table.from_pylist(quarantine), folder / "_quarantine.parquet")
    return folder


@pytest.fixture
def scored(storage):
    """digits: two clean days, one with quarantined rows, one whose part is not Parquet, one without a part;
    prices (a regression): one day."""
    _write_day(storage, _manifest("digits", "2026-11-01", V1, {"0": 30, "1": 10}))
    bad = [{"id": 100 + k, "px_0": None, "reason": "no value in ['px_0']"} for k in range(3)]
    _write_day(
        storage,
        _manifest("digits", "2026-11-02", V1, {"0": 5, "1": 20, "2": 15}, quarantined=3, run_id="manual__a"),
        bad,
    )
    _write_day(storage, _manifest("digits", "2026-11-03", V2, {"0": 12, "1": 12}, run_id="manual__a"))
    broken = _folder(storage, "digits", "2026-11-04")
    broken.mkdir(parents=True)
    (broken / "part.parquet").write_bytes(b"not parquet at all")
    _folder(storage, "digits", "2026-11-05").mkdir(parents=True)  # a run that never published
    _folder(storage, "digits", "junk").mkdir(parents=True)  # not a day: not listed
    _write_day(
        storage,
        _manifest(
            "prices", "2026-11-02", V1, {"count": 4, "sum": 10.0, "min": 1.0, "max": 4.0}, task="regression"
        ),
    )
    return {"digits": _spec(), "prices": _spec("prices")}


def test_scored_days_newest_first_with_what_each_predicted(scored):
    from freestack.ui.catalog import score_pages

    page = score_pages.scores_page("digits", scored["digits"])
    assert (
        page.total == 5
        and page.pages == 1
        and [d.ds for d in page.days] == [f"2026-11-0{k}" for k in (5, 4, 3, 2, 1)]
    )
    day = {d.ds: d for d in page.days}["2026-11-02"]
    assert day.problem is None and day.version == V1 and day.rows_scored == 40 and day.rows_quarantined == 3
    assert [(c.label, c.rows, c.share) for c in day.classes] == [
        ("0", 5, 0.125),
        ("1", 20, 0.5),
        ("2", 15, 0.375),
    ]
    assert (day.dag_id, day.run_id, day.rows_in) == ("digits_score", "manual__a", 43) and day.inputs[0][
        "rows"
    ] == 43
    assert page.version == "production" and page.folder.endswith("/scores/digits")
    prices = score_pages.scores_page("prices", scored["prices"]).days[0]
    assert prices.task == "regression" and prices.classes == []
    assert prices.values.model_dump() == {"count": 4, "min": 1.0, "mean": 2.5, "max": 4.0}


def test_a_day_that_cannot_be_read_says_why_instead_of_failing(scored, storage):
    from freestack.ui.catalog import score_pages

    days = {d.ds: d for d in score_pages.scores_page("digits", scored["digits"]).days}
    assert "part.parquet cannot be read as Parquet" in days["2026-11-04"].problem
    assert "no part.parquet: the day was never published" in days["2026-11-05"].problem
    assert (
        "freestack backfill digits --dag score" in days["2026-11-05"].problem
        and days["2026-11-05"].version is None
    )
    folder = _folder(storage, "digits", "2026-11-06")  # Parquet, but not the score task's (no manifest)
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1]}), folder / "part.parquet")
    assert (
        "has no scores manifest in its footer"
        in score_pages.scored_day(scored["digits"], "2026-11-06").problem
    )
    _write_day(storage, {"pipeline": "digits", "ds": "2026-11-07", "rows_scored": 1, "version": None})
    assert (
        "the manifest in the footer has no version."
        in score_pages.scored_day(scored["digits"], "2026-11-07").problem
    )
    _write_day(storage, _manifest("digits", "2026-11-08", V1, {"0": 1}) | {"predictions": {"0": "many"}})
    assert (
        "not a scores manifest (ValueError" in score_pages.scored_day(scored["digits"], "2026-11-08").problem
    )
    regression = _manifest(
        "prices", "2026-11-09", V1, {"count": 2, "min": 1.0, "max": 4.0}, task="regression"
    )  # no sum
    _write_day(storage, regression)
    assert "not a scores manifest (KeyError" in score_pages.scored_day(scored["prices"], "2026-11-09").problem


def test_pages_read_only_their_days(scored):
    from freestack.ui.catalog import score_pages

    second = score_pages.scores_page("digits", scored["digits"], page=2, size=2)
    assert second.pages == 3 and [d.ds for d in second.days] == ["2026-11-03", "2026-11-02"]
    assert score_pages.scores_page("nobody", _spec("nobody")).model_dump(exclude={"folder"}) == {
        "pipeline": "nobody",
        "model": "nobody",
        "version": "production",
        "schedule": "@daily",
        "total": 0,
        "page": 1,
        "pages": 1,
        "days": [],
    }


def test_many_classes_show_the_most_predicted_and_the_chart_stacks_shares(storage):
    from freestack.ui.catalog import score_pages
    from freestack.ui.plots import SHOWN_CLASSES, predictions_over_days

    counts = {str(k): k + 1 for k in range(20)}
    _write_day(storage, _manifest("digits", "2026-11-01", V1, counts))
    _write_day(storage, _manifest("digits", "2026-11-02", V1, {"0": 10, "19": 30}))
    page = score_pages.scores_page("digits", _spec())
    shown = page.days[1].shown_classes()
    assert [c.label for c in shown] == [
        str(k) for k in range(8, 20)
    ]  # the 12 most predicted, "9" before "10"
    fig = json.loads(predictions_over_days(page))
    bars = {d["name"]: d for d in fig["data"]}
    assert len(bars) == SHOWN_CLASSES + 1 and bars["19"]["x"] == ["2026-11-01", "2026-11-02"]  # oldest first
    assert bars["19"]["y"] == [pytest.approx(20 / 210, abs=1e-4), 0.75] and bars["0"]["y"][
        1
    ] == pytest.approx(0.25)
    assert bars["other"]["y"] == [
        pytest.approx(sum(range(2, 10)) / 210, abs=1e-4),
        0,
    ]  # "1".."8": the least predicted
    assert fig["layout"]["barmode"] == "stack" and "figure" not in page.model_dump(mode="json")


def test_a_regression_is_drawn_as_its_mean_between_min_and_max(scored):
    from freestack.ui.catalog import score_pages
    from freestack.ui.plots import predictions_over_days

    [trace] = json.loads(predictions_over_days(score_pages.scores_page("prices", scored["prices"])))["data"]
    assert (
        trace["y"] == [2.5] and trace["error_y"]["array"] == [1.5] and trace["error_y"]["arrayminus"] == [1.5]
    )
    assert (
        predictions_over_days(
            score_pages.ScoresPage(
                pipeline="p",
                model="p",
                folder="f",
                version="production",
                schedule="@daily",
                total=0,
                page=1,
                pages=1,
                days=[],
            )
        )
        is None
    )


@pytest.fixture
def client(storage, scored, monkeypatch):
    from freestack.ui import actions

    plain = _spec("plain").model_copy(update={"score": None})
    monkeypatch.setattr(actions, "api_base_url", lambda: "http://af")
    with views_client(
        monkeypatch, storage, *scored.values(), plain, may_read=lambda user, dag: dag != "prices_score"
    ) as client:
        yield client


def test_the_scores_page_lists_each_pipelines_days(client):
    r = client.get("/scores")
    assert r.status_code == 200, r.text
    assert 'id="tab-scores" aria-current="page"' in r.text and 'id="scores-digits"' in r.text
    assert (
        'id="scores-prices"' not in r.text and 'id="scores-plain"' not in r.text
    )  # not readable; no score block
    assert r.text.index('id="ds-2026-11-05"') < r.text.index('id="ds-2026-11-01"')
    assert f'href="/freestack/ui/models/digits/{V1}" class="version"' in r.text
    assert 'href="/freestack/ui/scores/digits/2026-11-02/quarantine">3</a>' in r.text
    assert 'href="http://af/dags/digits_score/runs/manual__a" target="_top"' in r.text
    assert "no part.parquet: the day was never published" in r.text and "cannot be read as Parquet" in r.text
    assert (
        '<i style="width:60.0px"></i>20</span>' in r.text
    )  # the day's most predicted class: the longest bar
    assert (
        'id="fig-1" class="figure predictions-over-days"' in r.text
        and 'class="plotly-figure" data-target="fig-1"' in r.text
    )


def test_one_pipelines_scores_page_its_json_and_refusals(client, monkeypatch):
    from freestack.ui import shared

    one = client.get("/scores/digits", params={"run": "manual__a"})
    assert one.status_code == 200 and one.text.count('linked"') == 2  # the run's days are marked
    assert client.get("/scores/digits", params={"pg": 2}).status_code == 404
    plain = client.get("/scores/plain")
    assert plain.status_code == 404 and "has no score: block" in plain.text
    assert client.get("/scores/prices").status_code == 403
    api = client.get("/api/scores").json()
    assert [p["pipeline"] for p in api] == ["digits"] and "figure" not in api[0]
    assert api[0]["days"][1]["problem"].startswith("part.parquet cannot be read as Parquet")
    monkeypatch.setattr(shared, "may_read", lambda user, dag: True)
    prices = client.get("/api/scores/prices").json()
    assert prices["days"][0]["values"] == {"count": 4, "min": 1.0, "mean": 2.5, "max": 4.0}


def test_a_scored_days_quarantined_rows(client):
    r = client.get("/scores/digits/2026-11-02/quarantine")
    assert (
        r.status_code == 200
        and r.text.count("<tr data-line=") == 3
        and 'class="reason">no value in' in r.text
    )
    assert (
        'href="/freestack/ui/scores/digits#ds-2026-11-02">← the digits scores' in r.text
        and "_quarantine.parquet" in r.text
    )
    assert "No row of this day was quarantined" in client.get("/scores/digits/2026-11-01/quarantine").text
    assert client.get("/api/scores/digits/2026-11-02/quarantine").json()["rows"][0]["id"] == 100
    unknown = client.get("/scores/digits/2026-10-01/quarantine")
    assert unknown.status_code == 404 and "2026-11-05, 2026-11-04" in unknown.text
    broken = client.get("/api/scores/digits/2026-11-04/quarantine")
    assert broken.status_code == 404 and "cannot be read as Parquet" in broken.json()["detail"]


def test_a_score_task_links_to_the_days_its_run_scored(client, scored, monkeypatch):
    from freestack.ui.catalog import score_pages
    from freestack.ui.tasks import page_of_task

    assert (
        page_of_task("digits", scored["digits"], "score", "manual__a", "score")
        == "/scores/digits?run=manual__a#ds-2026-11-03"
    )
    assert page_of_task("digits", scored["digits"], "score", "manual__none", "plan") == "/scores/digits"
    monkeypatch.setattr(score_pages, "SCORES_PAGE", 2)
    assert (
        page_of_task("digits", scored["digits"], "score", "scheduled__2026-11-01", "score")
        == "/scores/digits?run=scheduled__2026-11-01&pg=3#ds-2026-11-01"
    )
    r = client.get(
        "/task",
        params={"dag_id": "digits_score", "run_id": "manual__a", "task_id": "score", "map_index": 1},
        follow_redirects=False,
    )
    assert (
        r.status_code == 303
        and r.headers["location"] == "/freestack/ui/scores/digits?run=manual__a&pg=2#ds-2026-11-03"
    )
    assert (
        client.get("/task", params={"dag_id": "prices_score", "run_id": "r", "task_id": "score"}).status_code
        == 403
    )


def test_the_score_dags_tasks_carry_the_freestack_link():
    from types import SimpleNamespace

    from freestack.dags import score_dag
    from freestack.operator_links import FreestackPageLink

    dag = score_dag(_spec(), str(ROOT / "include" / "pipelines" / "digits.yaml"))
    for task_id in ("plan", "score"):
        links = [x for x in dag.get_task(task_id).operator_extra_links if isinstance(x, FreestackPageLink)]
        assert [x.name for x in links] == ["freestack"]
    key = SimpleNamespace(dag_id="digits_score", run_id="manual__a", task_id="score", map_index=2)
    url = FreestackPageLink().get_link(dag.get_task("score"), ti_key=key)
    assert url.endswith(
        "/plugin/freestack/task?dag_id=digits_score&run_id=manual__a&task_id=score&map_index=2"
    )


def test_failed_days_are_listed_with_their_error(client, scored):
    """A day whose run failed (never published, or failed after the scores shown) is listed with the error
    its task recorded (freestack.score.published.record_failure), linked to the run; a publish clears it."""
    from freestack.score.published import record_failure, scored_days
    from freestack.ui.catalog import score_pages

    spec, run = scored["digits"], {"dag_id": "digits_score", "run_id": "manual__b"}
    over = "2026-11-05: 30 of 40 rows were not scored (75.0%), over score.max_error_fraction 50.0%"
    record_failure(spec, "2026-11-05", over, task="score", run=run)
    record_failure(spec, "2026-11-03", "b.csv has no column(s) ['px_7']", task="plan", run=run)
    record_failure(
        spec, "2026-11-06", "score.version 'canary': no such alias", task="plan", run=run
    )  # no folder before
    r = client.get("/scores/digits")
    assert r.status_code == 200, r.text
    failed = r.text[r.text.index('id="ds-2026-11-05"') : r.text.index('id="ds-2026-11-04"')]
    assert 'class="failed"' in failed and "failed in score" in failed and over in failed
    assert 'href="http://af/dags/digits_score/runs/manual__b"' in failed and "never published" not in failed
    assert (
        "score.version &#39;canary&#39;: no such alias" in r.text
    )  # a day the run planned, no folder before
    after = r.text[r.text.index('id="ds-2026-11-03"') : r.text.index('id="ds-2026-11-02"')]
    assert (
        f'class="version">{V2}</a>' in after and 'class="failed-after"' in after
    )  # the scores stay, then the error
    assert "failed in plan" in after and "b.csv has no column(s) [&#39;px_7&#39;]" in after
    days = {d["ds"]: d for d in client.get("/api/scores/digits").json()["days"]}
    assert (
        days["2026-11-05"]["failed"]["error"] == over
        and days["2026-11-05"]["failed"]["run_id"] == "manual__b"
    )
    assert days["2026-11-03"]["failed"]["task"] == "plan" and days["2026-11-01"]["failed"] is None
    cli = {d["ds"]: d for d in scored_days(spec)}  # what `freestack scores` lists
    assert cli["2026-11-05"]["failed"]["error"] == over and cli["2026-11-03"]["rows_scored"] == 24
    problem = score_pages.scored_day(spec, "2026-11-05").problem  # its run failed: `failed` reruns it
    assert "--dag score --reprocess failed` over it" in problem
