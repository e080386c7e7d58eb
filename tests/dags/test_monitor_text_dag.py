"""<p>_monitor of a text-generation pipeline under dag.test(): the server's request log of served prompts and
answers is judged by the text signals (a tiny sentence encoder built here, freestack.monitor.text_drift)
against the version's evaluation sample. A day of the prompts the version was evaluated on stays quiet; a day
where a third of the prompts ask for poems raises the alert through the monitor DAG's alert task."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.dags.test_score_generation_dag import NAME, ROOT, _spec
from tests.dags.test_sweep_dag import _states
from tests.unit.monitor.test_text_drift import day, evaluated, tiny_encoder

pytestmark = pytest.mark.usefixtures("airflow_db")
ROWS = 200


@pytest.fixture
def pipeline(tmp_path, storage, monkeypatch):
    """The chat pipeline with monitor.text's tiny encoder, and version v1's monitoring reference and
    evaluation sample (64 arithmetic prompts and answers) in the registry, as evaluate writes them."""
    from freestack.monitor.core import REFERENCE_FILE
    from freestack.registry.core import registry_for
    from freestack.spec import parse_spec
    from freestack.storage import join, to_path, write_json

    specs = tmp_path / "pipelines"
    specs.mkdir()
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    data = _spec(None)
    data.pop("score")
    encoder = tiny_encoder(tmp_path / "encoder")
    data["monitor"] = {"min_rows": 50, "actions": ["alert"], "text": {"encoder": str(encoder)}}
    (specs / f"{NAME}.yaml").write_text(yaml.safe_dump(data))
    spec = parse_spec(data, f"{NAME}.yaml")
    folder = to_path(registry_for(spec).version_uri("v1"))
    write_json(join(folder, REFERENCE_FILE), evaluated(spec, "v1"))
    return spec


def _log_day(spec, rows: pd.DataFrame, when: datetime) -> None:
    """A day of served requests (20 prompts each) as the model server logs them."""
    from freestack.ml.lm.answers import Completion
    from freestack_server.core.requestlog import RequestLog, monitoring_uri

    log = RequestLog(
        monitoring_uri(spec.root, NAME),
        rate=1.0,
        model=NAME,
        version="v1",
        deployment=NAME,
        columns=[("prompt", "text")],
        classes=[],
    )
    prompts, answers = rows["input.prompt"].tolist(), rows["prediction"].tolist()
    for k in range(0, len(prompts), 20):
        done = [Completion(a, 8, 1, "stop") for a in answers[k : k + 20]]
        log.add_generated(f"{when:%d}-{k}", prompts[k : k + 20], done, ts=when + timedelta(minutes=k))
    log.flush()


def test_a_shifted_prompt_day_alerts_and_a_quiet_day_does_not(pipeline):
    from airflow.dag_processing.dagbag import DagBag

    _log_day(pipeline, day(np.random.default_rng(1), ROWS), datetime(2026, 11, 10, 1, tzinfo=UTC))
    _log_day(
        pipeline, day(np.random.default_rng(2), ROWS, shifted=0.3), datetime(2026, 11, 11, 1, tzinfo=UTC)
    )
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag(f"{NAME}_monitor")
    quiet = dag.test(logical_date=datetime(2026, 11, 11, tzinfo=UTC))
    assert _states(quiet) == {"monitor": ["success"], "alert": ["skipped"], "retrain": ["skipped"]}
    drifted = dag.test(logical_date=datetime(2026, 11, 12, tzinfo=UTC))
    assert _states(drifted) == {"monitor": ["success"], "alert": ["success"], "retrain": ["skipped"]}

    from freestack.storage import join, to_path

    reports = join(to_path(pipeline.root), "monitoring", NAME, "reports")
    calm = json.loads(join(reports, "2026-11-10T000000--2026-11-11T000000", "summary.json").read_text())
    shifted = json.loads(join(reports, "2026-11-11T000000--2026-11-12T000000", "summary.json").read_text())
    assert calm["status"] == "ok" and calm["rows"] == ROWS
    signals = {s["name"]: s for s in calm["versions"][0]["text"]["signals"]}
    assert {"prompts", "completions", "empty", "refusal", "truncation"} <= set(signals)
    assert not signals["prompts"]["drifted"]
    assert shifted["status"] == "drift"
    (alert,) = [a for a in shifted["alerts"] if a["series"] == "text.prompts"]
    assert "MMD²" in alert["message"] and "report.html" in alert["message"]
    page = join(reports, "2026-11-11T000000--2026-11-12T000000", "report.html").read_text()
    assert "text signals" in page
