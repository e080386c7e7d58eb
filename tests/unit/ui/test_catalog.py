"""The ML views' read models (freestack.ui.catalog), plots, cards and task links, on a registry and a sweep
written through the storage layer (bench/ui/volume.py, the benchmark's generator)."""

from __future__ import annotations

import json

import pytest

from bench.ui.volume import make_registry, make_sweep
from tests.support.demo_sandbox import ROOT


@pytest.fixture
def digits(storage):
    from freestack.spec import load_spec

    return load_spec(ROOT / "include" / "pipelines" / "digits.yaml")


def test_versions_gate_and_aliases_come_from_storage(storage, digits):
    from freestack.storage import join, to_path, write_json
    from freestack.ui.catalog import model_pages

    names = make_registry(storage, "digits", 12)
    write_json(join(to_path(storage), "registry", "digits", "v-unfinished", "lineage.json"), {})  # no marker
    page = model_pages.model_page("digits", digits)
    assert [v.version for v in page.versions] == names  # oldest first; the unfinished folder is no version
    assert page.aliases == {"production": names[-1], "previous": names[-2], "staging": names[-3]}
    assert page.aliases_of(names[-1]) == ["production"] and page.history[0].version == names[-1]
    for v in page.versions:
        lineage = json.loads(
            (to_path(storage) / "registry" / "digits" / v.version / "lineage.json").read_text()
        )
        assert v.gate.decision == ("promoted" if lineage["gate"]["promote"] else "blocked")
        assert (
            v.partitions == 5 and v.window_end == lineage["window"]["end_ds"] and "test_accuracy" in v.metrics
        )
    assert {v.gate.decision for v in page.versions} == {"promoted", "blocked"}
    more = make_registry(storage, "digits", 13)  # a 13th version, committed later, shows up
    assert len(model_pages.model_page("digits", digits).versions) == 13 and more[:12] == names


def test_version_page_card_and_files(storage, digits):
    from freestack.ui.cards import render_card
    from freestack.ui.catalog import model_pages

    names = make_registry(storage, "digits", 3)
    v = model_pages.version_page("digits", digits, "production")
    assert v.row.version == names[-1] and v.aliases == ["production"] and len(v.partitions) == 5
    assert set(v.files) >= {"config.json", "model.safetensors", "README.md"}
    costs = dict(v.costs)  # the version's costs, as its card's table says them
    assert costs["model files"] == "0.210 MB" and costs["training cost"].endswith(" USD at the spec's prices")
    body = b"".join(model_pages.version_file_chunks(digits, names[-1], "README.md", chunk=7))
    assert body.startswith(b"---\nlibrary_name: pytorch")
    card = render_card(body.decode() + "\n<script>alert(1)</script>\n")
    assert card.metadata == "library_name: pytorch" and "<h1>" in card.html and "<script>" not in card.html


def test_sweep_page_trials_states_agents_and_best(storage, digits):
    from freestack.ui.catalog import sweep_pages
    from freestack.ui.plots import metric_over_epochs, metric_vs_params

    sweep_id = make_sweep(storage, "digits", 40, epochs=6)
    [row] = sweep_pages.sweeps(digits)
    assert row.sweep_id == sweep_id and row.metric == "val_accuracy" and row.trials == 40
    page = sweep_pages.sweep_page("digits", digits, sweep_id)
    states = {t.state for t in page.trials}
    assert len(page.trials) == 40 and {"finished", "early-stopped"} <= states
    assert {t.agent for t in page.trials} == {"agent 0", "agent 1"}
    assert page.best.trial == row.best_trial and page.best.value == pytest.approx(row.best_value)
    assert all(t.epochs == 3 for t in page.trials if t.state == "early-stopped")
    scatter, lines = json.loads(metric_vs_params(page)), json.loads(metric_over_epochs(page))
    assert len(lines["data"]) == 40 and {d["xaxis"] for d in scatter["data"]} == {"x", "x2", "x3"}
    assert sum(len(d["x"]) for d in scatter["data"] if d["name"] != "best") == 3 * sum(
        t.value is not None for t in page.trials
    )


def test_a_missing_sweep_is_named(storage, digits):
    from freestack.sweeps.core import SweepError
    from freestack.ui.catalog import sweep_pages

    with pytest.raises(SweepError, match="no sweep 'sweep-x'"):
        sweep_pages.sweep_page("digits", digits, "sweep-x")


def test_a_task_links_to_its_version_sweep_deployment_or_lake(storage, digits):
    from freestack.ui.tasks import page_of_task

    names = make_registry(storage, "digits", 4)
    sweep_id = make_sweep(storage, "digits", 5)
    assert (
        page_of_task("digits", digits, "train", "scheduled__run-00002", "gate")
        == f"/models/digits/{names[2]}"
    )
    assert page_of_task("digits", digits, "train", "manual__sweep", "agent") == f"/sweeps/digits/{sweep_id}"
    assert page_of_task("digits", digits, "train", "manual__other", "evaluate") == "/models/digits"
    assert page_of_task("digits", digits, "rollback", "r", "deploy") == "/deployments#digits"
    assert page_of_task("digits", digits, "ingest", "r", "ingest") == "/data/digits"


def test_serving_stats_read_the_model_servers_metrics():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from freestack.ui.catalog.deployment_pages import serving_stats

    text = "\n".join(
        [
            'freestack_model_predict_seconds_bucket{le="0.001",worker_id="1"} 5.0',
            'freestack_model_predict_seconds_bucket{le="0.01",worker_id="1"} 9.0',
            'freestack_model_predict_seconds_bucket{le="+Inf",worker_id="1"} 10.0',
            'freestack_model_predict_seconds_count{worker_id="1"} 10.0',
            'freestack_model_predict_seconds_sum{worker_id="1"} 0.05',
            'freestack_prediction_rows_total{worker_id="1"} 320.0',
            "",
        ]
    )

    class Metrics(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        got = serving_stats(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
    assert got.requests == 10 and got.rows == 320 and got.mean_latency_ms == pytest.approx(5.0)
    assert got.p95_latency_ms is None  # the 95th percentile lies past the last finite bucket
    assert (
        serving_stats("http://127.0.0.1:9/metrics").requests is None
    )  # nothing answers: no numbers, no error


def test_a_kubernetes_deployment_shows_its_traffic_split(tmp_path):
    from freestack.ui.catalog.deployment_pages import _deployment

    rec = {
        "name": "digits",
        "model": "digits",
        "target": "kubernetes",
        "state": "serving",
        "version": "v1",
        "canary_version": "v2",
        "canary_traffic": 10,
        "namespace": "models",
        "message": "SeldonDeployment is Available",
    }
    row = _deployment(rec, "digits", tmp_path.as_uri())
    assert row.traffic == [
        {"name": "main", "version": "v1", "traffic": 90},
        {"name": "canary", "version": "v2", "traffic": 10},
    ]
    assert row.address == "SeldonDeployment models/digits" and row.health == "SeldonDeployment is Available"
    assert _deployment({**rec, "canary_version": None}, "digits", tmp_path.as_uri()).traffic == [
        {"name": "main", "version": "v1", "traffic": 100}
    ]


def test_a_local_deployment_whose_server_is_gone_reads_down_as_serve_status_says(tmp_path):
    """After `make down`, or a server that gave up, the record still says serving: the page and its JSON
    read what `freestack serve status` reads (one function), DOWN with the same hint, and no numbers."""
    import subprocess

    from freestack.cli.serve import _status_lines
    from freestack.serving.local import describe
    from freestack.ui.catalog.deployment_pages import _deployment

    gone = subprocess.Popen(["true"])
    gone.wait()
    rec = {
        "name": "digits",
        "model": "digits",
        "target": "local",
        "state": "serving",
        "version": "v1",
        "pid": gone.pid,
        "url": "http://127.0.0.1:9",
        "predict_url": "http://127.0.0.1:9/api/v1.0/predictions",
        "metrics_url": "http://127.0.0.1:9/metrics",
    }
    row = _deployment(rec, "digits", tmp_path.as_uri())
    assert row.state == "DOWN" and row.hint.startswith("the recorded process is gone: redeploy"), row
    assert row.serving.requests is None
    assert _status_lines(describe(rec))[0] == f"digits/digits: v1 DOWN ({row.hint})"
    assert row.model_dump()["hint"] == row.hint  # the JSON the page's API answers


def test_a_text_generation_deployment_shows_its_openai_api(tmp_path):
    """An LLM served on mlserver: the page gives its OpenAI base URL and the openai client's first call,
    naming the key's connection, never the key."""
    import json

    from freestack.ui.catalog.deployment_pages import _openai

    version = tmp_path / "v1"
    version.mkdir()
    (version / "preprocessing.json").write_text(json.dumps({"task": "generation"}))
    rec = {
        "name": "arith",
        "model": "arith",
        "runtime": "mlserver",
        "url": "http://127.0.0.1:9010",
        "version_uri": version.as_uri(),
    }
    got = _openai({**rec, "api_key_conn_id": "llm_api_key"})
    assert got["openai_url"] == "http://127.0.0.1:9010/v1"
    assert (
        'OpenAI(base_url="http://127.0.0.1:9010/v1", api_key="<the password of connection llm_api_key>")'
        in (got["openai_snippet"])
    )
    assert 'model="arith"' in got["openai_snippet"]
    assert _openai({**rec, "runtime": "seldon"}) == {}
    (version / "preprocessing.json").write_text(json.dumps({"task": "classification"}))
    assert _openai(rec) == {}
