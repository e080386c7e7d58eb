"""The extra pages (freestack.ui.extra_pages): the comparison's diff logic and its read of a registry,
the try-it form's inputs and answers, and quarantined rows read a page at a time; the pages render
through the views app (login stubbed)."""

from __future__ import annotations

import json

import pytest

from bench.ui.volume import make_registry
from tests.support.demo_sandbox import ROOT
from tests.support.views import views_client


@pytest.fixture
def digits(storage):
    from freestack.spec import load_spec

    return load_spec(ROOT / "include" / "pipelines" / "digits.yaml")


def test_metric_rows_mark_the_best_and_the_difference_to_the_first():
    from freestack.ui.extra_pages.compare import metric_rows

    got = metric_rows(
        [
            {"test_accuracy": 0.9, "test_log_loss": 0.3, "odd": 1.0},
            {"test_accuracy": 0.95, "test_log_loss": 0.4},
            {"test_accuracy": 0.95, "test_log_loss": 0.2, "odd": 2.0},
        ]
    )
    rows = {r.name: r for r in got}
    acc, loss, odd = rows["test_accuracy"], rows["test_log_loss"], rows["odd"]
    assert (
        acc.goal == "maximize"
        and acc.best == [1, 2]
        and acc.deltas[0] is None
        and acc.deltas[1] == pytest.approx(0.05)
    )
    assert loss.goal == "minimize" and loss.best == [2] and loss.deltas[2] == pytest.approx(-0.1)
    assert (
        odd.goal is None
        and odd.best == []
        and odd.values == [1.0, None, 2.0]
        and odd.deltas == [None, None, 1.0]
    )


def test_diff_rows_flatten_differ_first_and_hash_long_values():
    from freestack.ui.extra_pages.compare import diff_rows

    long = list(range(100))
    rows = diff_rows(
        [
            {"train": {"lr": 0.01, "epochs": 5}, "mean": long, "only": "a"},
            {"train": {"lr": 0.001, "epochs": 5}, "mean": [*long[:-1], 0]},
        ]
    )
    assert [r.key for r in rows if not r.same] == ["mean", "only", "train.lr"] and rows[
        -1
    ].key == "train.epochs"
    by = {r.key: r.values for r in rows}
    assert by["train.lr"] == ["0.01", "0.001"] and by["only"] == ["a", None]
    assert by["mean"][0].startswith("100 items, sha256 ") and by["mean"][0] != by["mean"][1]


def test_partition_diff_names_added_removed_and_changed():
    from freestack.ui.extra_pages.compare import partition_diff

    a = [{"ds": "d1", "sha256": "x"}, {"ds": "d2", "sha256": "y"}, {"ds": "d3", "sha256": "z"}]
    b = [{"ds": "d2", "sha256": "y"}, {"ds": "d3", "sha256": "Z"}, {"ds": "d4", "sha256": "w"}]
    rows = {r.ds: r for r in partition_diff([a, b])}
    assert {ds: r.changes[1] for ds, r in rows.items()} == {
        "d1": "removed",
        "d2": "same",
        "d3": "changed",
        "d4": "added",
    }
    assert (
        rows["d3"].sha256 == ["z", "Z"] and rows["d4"].sha256 == [None, "w"] and rows["d1"].changes[0] == ""
    )


def test_compare_page_reads_two_versions_and_an_alias(storage, digits):
    from freestack.storage import join, to_path, write_json
    from freestack.ui.extra_pages.compare import compare_page

    names = make_registry(storage, "digits", 3)
    folder = join(to_path(storage), "registry", "digits", names[0])
    write_json(join(folder, "preprocessing.json"), {"features": ["a"], "mean": [1.0]})
    page = compare_page("digits", digits, [names[0], "production"])
    assert [c.version for c in page.versions] == [names[0], names[-1]] and page.versions[1].aliases == [
        "production"
    ]
    assert {c.gate.decision for c in page.versions} <= {"promoted", "blocked"}
    metrics = {m.name: m for m in page.metrics}
    assert "test_accuracy" in metrics and len(metrics["costs.train.wall_s"].values) == 2
    assert metrics["costs.train.cost"].goal == "minimize" and metrics["costs.model_mb"].values == [0.21, 0.21]
    # serving's figures: latency and memory better lower, throughput better higher
    assert (
        metrics["costs.serving.latency_p99_ms"].goal == "minimize"
        and len(metrics["costs.serving.latency_p99_ms"].values) == 2
    )
    assert (
        metrics["costs.serving.rows_per_s"].goal == "maximize"
        and metrics["costs.serving.peak_memory_mb"].goal == "minimize"
    )
    params = {r.key: r for r in page.params}
    assert params["config.json.freestack_model"].same and not params["preprocessing.json.mean"].same
    assert {p.changes[1] for p in page.partitions} >= {
        "changed"
    }  # the generator gives each version its own bytes
    lineage = {r.key: r for r in page.lineage}
    assert lineage["spec_hash"].same and not lineage["airflow.run_id"].same
    assert [r.version for r in page.choices] == names[::-1] and page.aliases["production"] == names[-1]


def test_feature_inputs_kinds_categories_and_prefill():
    from freestack.ui.extra_pages.try_deployment import feature_inputs, parsed_row

    lineage = {"features": {"age": "int", "city": "category", "note": "text", "when": "timestamp"}}
    pre = {"encoder": {"category": {"city": ["Oslo", "Rome"]}}}
    sample = {"features": ["age", "city", "note", "when"], "rows": [[41, "Rome", "hi", "2024-01-01"]]}
    fs = feature_inputs(lineage, pre, sample)
    assert [(f.name, f.input, f.value) for f in fs] == [
        ("age", "number", "41"),
        ("city", "category", "Rome"),
        ("note", "textarea", "hi"),
        ("when", "text", "2024-01-01"),
    ]
    assert fs[1].options == ["Oslo", "Rome"]
    assert parsed_row(fs, {"age": "42", "city": "Oslo", "note": "", "when": "x"}) == [42, "Oslo", None, "x"]
    with pytest.raises(Exception, match="age: 'old' is not a number"):
        parsed_row(fs, {"age": "old"})
    assert [f.input for f in feature_inputs({}, {"features": ["px_0"]}, None)] == ["number"]
    ordered = feature_inputs(
        {"features": {"px_10": "float", "px_2": "float"}}, {"features": ["px_2", "px_10"]}, None
    )
    assert [f.name for f in ordered] == [
        "px_2",
        "px_10",
    ]  # the model's order, not the JSON file's sorted keys


def test_request_bodies_and_answers_of_both_protocols():
    from freestack.ui.extra_pages.try_deployment import read_answer, request_body

    seldon = request_body("seldon", ["a", "b"], [1.0, "x"])
    assert seldon["data"] == {"names": ["a", "b"], "ndarray": [[1.0, "x"]]} and seldon["meta"][
        "puid"
    ].startswith("freestack-smoke")
    v2 = request_body("mlserver", ["a", "b"], [1.0, "x"])
    assert [i["datatype"] for i in v2["inputs"]] == ["FP64", "BYTES"] and v2["id"].startswith(
        "freestack-smoke"
    )
    assert read_answer({"data": {"names": ["0", "1"], "ndarray": [[0.2, 0.8]]}}) == (
        "1",
        {"0": 0.2, "1": 0.8},
    )
    assert read_answer({"data": {"names": ["price"], "ndarray": [[3.5]]}}) == ("3.5", {"price": 3.5})
    v2_answer = {
        "outputs": [
            {
                "name": "probabilities",
                "shape": [1, 2],
                "data": [0.9, 0.1],
                "parameters": {"names": ["a", "b"]},
            }
        ]
    }
    assert read_answer(v2_answer)[0] == "a" and read_answer("oops") == (None, {})


def test_read_rows_reads_only_the_row_groups_of_the_page(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freestack.ui.extra_pages.quarantine import read_rows

    table = pa.table({"_line": list(range(250)), "_reason": [f"r{i % 3}" for i in range(250)]})
    pq.write_table(table, tmp_path / "q.parquet", row_group_size=30)
    total, cols, rows = read_rows(str(tmp_path / "q.parquet"), 100, 100)
    assert (
        total == 250 and cols == ["_line", "_reason"] and [r["_line"] for r in rows] == list(range(100, 200))
    )
    assert [r["_line"] for r in read_rows(str(tmp_path / "q.parquet"), 200, 100)[2]] == list(range(200, 250))
    assert read_rows(str(tmp_path / "q.parquet"), 300, 100)[2] == []


@pytest.fixture
def client(storage, digits, monkeypatch):
    with views_client(monkeypatch, storage, digits) as client:
        yield client


def test_compare_page_renders_and_names_what_exists(client, storage):
    names = make_registry(storage, "digits", 3)
    r = client.get("/compare/digits", params=[("v", names[0]), ("v", "production")])
    assert r.status_code == 200, r.text
    assert (
        'id="compare-metrics"' in r.text
        and "changed" in r.text
        and f'value="{names[0]}" id="pick-{names[0]}" checked' in r.text
    )
    alone = client.get("/compare/digits", params={"v": names[1]})  # the form alone, the version ticked
    assert alone.status_code == 200 and f'value="{names[1]}" id="pick-{names[1]}" checked' in alone.text
    missing = client.get("/compare/digits", params=[("v", "v20990101-00000000"), ("v", "production")])
    assert missing.status_code == 404 and names[-1] in missing.text
    api = client.get("/api/compare/digits", params=[("v", names[1]), ("v", names[2])]).json()
    assert [v["version"] for v in api["versions"]] == names[1:]
    assert client.get("/api/compare/digits", params={"v": names[1]}).status_code == 400


def test_quarantine_page_pages_and_names_partitions(client, digits, monkeypatch, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freestack.ingest import lake

    path = tmp_path / "_quarantine-x.parquet"
    pq.write_table(
        pa.table(
            {
                "_source": ["f.csv"] * 150,
                "_line": list(range(2, 152)),
                "_reason": ["px_3: not a number"] * 150,
                "_raw": ["1,2,<b>x</b>"] * 150,
            }
        ),
        path,
    )
    monkeypatch.setattr(lake, "lake_partitions", lambda spec: ["2024-01-01", "2024-01-02"])
    monkeypatch.setattr(
        lake,
        "read_manifest",
        lambda spec, ds: {"quarantine": {"uri": path.as_uri()}} if ds == "2024-01-02" else {},
    )
    r = client.get("/data/digits/2024-01-02/quarantine")
    assert r.status_code == 200 and r.text.count("<tr data-line=") == 100 and "page 1 of 2" in r.text
    assert 'href="?page=2"' in r.text and "<b>x</b>" not in r.text and "&lt;b&gt;x&lt;/b&gt;" in r.text
    second = client.get("/api/data/digits/2024-01-02/quarantine", params={"page": 2}).json()
    assert second["total"] == 150 and [row["_line"] for row in second["rows"]] == list(range(102, 152))
    assert "No row of this partition" in client.get("/data/digits/2024-01-01/quarantine").text
    gone = client.get("/data/digits/2023-12-31/quarantine")
    assert gone.status_code == 404 and "2024-01-01, 2024-01-02" in gone.text
    assert client.get("/data/digits/2024-01-02/quarantine", params={"page": 3}).status_code == 404


def test_try_refuses_unknown_and_non_local_deployments(client, storage):
    from freestack.serving.records import Deployments
    from freestack.storage import join, to_path, write_json

    assert "no deployment &#39;x&#39;" in client.get("/deployments/digits/x/try").text
    write_json(
        join(to_path(storage), "deployments", "digits", "k8s.json"),
        {"name": "k8s", "model": "digits", "target": "kubernetes", "state": "serving"},
    )
    assert Deployments(storage, "digits").names() == ["k8s"]
    r = client.get("/deployments/digits/k8s/try")
    assert r.status_code == 409 and "only a serving local deployment" in r.text
    assert (
        client.post("/deployments/digits/k8s/try", headers={"Origin": "http://evil.example"}).status_code
        == 403
    )
    assert (
        json.loads(client.get("/api/deployments/nope/x/try").text)["detail"]
        == "model 'nope' has no deployment 'x' (deployments: none)"
    )
    keyed = {"name": "keyed", "model": "digits", "state": "serving", "predict_url": "http://127.0.0.1:1/x"}
    write_json(
        join(to_path(storage), "deployments", "digits", "keyed.json"), {**keyed, "api_key_conn_id": "k"}
    )
    r = client.get("/deployments/digits/keyed/try")  # the page holds no key: it says where one is used
    assert r.status_code == 409 and "freestack serve predict keyed --model digits" in r.text


def test_quarantine_pages_of_another_size_keep_it_in_their_links(client, monkeypatch, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from freestack.ingest import lake

    path = tmp_path / "_quarantine-y.parquet"
    pq.write_table(pa.table({"_line": list(range(12)), "_reason": ["bad"] * 12}), path)
    monkeypatch.setattr(lake, "lake_partitions", lambda spec: ["2024-01-01"])
    monkeypatch.setattr(lake, "read_manifest", lambda spec, ds: {"quarantine": {"uri": path.as_uri()}})
    r = client.get("/data/digits/2024-01-01/quarantine", params={"page": 2, "size": 5})
    assert (
        r.text.count("<tr data-line=") == 5
        and 'href="?page=3&amp;size=5"' in r.text
        and 'href="?page=1&amp;size=5"' in r.text
    )
