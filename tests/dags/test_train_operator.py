"""freestack's reusable train operator in a DAG of one's own (include/dags/train_and_score.py) under
dag.test(): a spec given inline trains on the lake window ending on the run's day, the version is
registered (its files, its lineage naming the partitions and who registered it), promoted and scores a
lake day; a spec file trains the same way; a wrong argument or a bad inline spec field fails the DAG
file's import, naming it; a window with no partition fails the task at its first try, naming the window;
OpenLineage reports the partitions -> the version folder."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
import yaml

from tests.dags.test_openlineage import _completed, _file, _names, ol_file  # noqa: F401  (its listener)
from tests.dags.test_reusable_operators import _example as example_dag
from tests.dags.test_reusable_operators import _tries
from tests.dags.test_sweep_dag import _states
from tests.support.runs import run_note
from tests.support.serving import needs_serving_env

pytestmark = pytest.mark.usefixtures("airflow_db")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "include" / "dags" / "train_and_score.py"
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
MODEL = "digits_own"


@pytest.fixture
def lake(storage):
    """Three ingested days of the demo digits under the test's storage root."""
    from demo.landing import make_landing
    from freestack.ingest.core import ingest_partition
    from freestack.spec import load_spec

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    make_landing(storage, date(2026, 11, 1), len(DAYS))
    for ds in DAYS:
        ingest_partition(spec, ds)
    return Path(storage.removeprefix("file://"))


def _example():
    """The example DAG, written to the metadata database (dag.test() runs a DAG of a configured bundle)."""
    return example_dag(EXAMPLE, "train_and_score")


def _day(ds: str) -> datetime:
    return datetime.fromisoformat(ds).replace(tzinfo=UTC)


@needs_serving_env
def test_the_example_dag_trains_registers_promotes_and_scores(lake, tmp_path, ol_file):  # noqa: F811
    """The example DAG; its version, registered with no gate, served (smoke-tested on rows of its own test
    split); then the DAG operators.md prints, as a DAG file of one's own (:func:`_to_serving`)."""
    from freestack.registry.core import ModelRegistry

    run = _example().test(logical_date=_day(DAYS[-1]), run_conf={"epochs": 1, "window_days": 3})
    assert _states(run) == {"train": ["success"], "promote": ["success"], "score": ["success"]}

    reg = ModelRegistry(lake.as_uri(), MODEL)
    (version,) = [v["version"] for v in reg.versions()]
    folder = lake / "registry" / MODEL / version
    assert {"model.safetensors", "config.json", "lineage.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    lineage = json.loads((folder / "lineage.json").read_text())
    assert [p["ds"] for p in lineage["partitions"]] == list(DAYS)
    assert lineage["registered_by"] == {
        "operator": "FreestackTrainOperator",
        "dag_id": "train_and_score",
        "run_id": run.run_id,
        "task_id": "train",
        "gate": None,
    }
    assert not (lake / "candidates" / MODEL / version).exists()  # registered: the candidate's copy went
    assert reg.aliases()["production"] == version

    scores = pq.read_table(lake / "scores" / MODEL / f"ds={DAYS[-1]}" / "part.parquet")
    part = pq.read_table(lake / "lake" / "digits" / f"ds={DAYS[-1]}" / "part.parquet")
    assert scores.num_rows == part.num_rows and set(scores.column("version").to_pylist()) == {version}

    (trained,) = _completed(ol_file)["train_and_score.train"]
    assert _names(trained["inputs"]) == [
        _file(p["uri"].removeprefix("file://")) for p in lineage["partitions"]
    ]
    assert _names(trained["outputs"]) == [_file(folder)]
    facets = trained["run"]["facets"]
    assert (
        facets["freestack_modelVersion"]["version"] == version
        and facets["freestack_modelVersion"]["name"] == MODEL
    )
    metrics = json.loads((folder / "metrics.json").read_text())
    assert facets["freestack_metrics"]["metrics"]["test_accuracy"] == metrics["test_accuracy"]

    # a run without a logical date trains up to the day it ran (RUN_DAY; its ds is undefined), today, whose
    # window holds no partition: the train task fails at its first try (retries: 2), nothing promoted
    empty = _example().test(logical_date=None, run_conf={"epochs": 1, "window_days": 3})
    assert empty.logical_date is None and empty.run_after.date() > _day(DAYS[-1]).date()
    assert _states(empty) == {
        "train": ["failed"],
        "promote": ["upstream_failed"],
        "score": ["upstream_failed"],
    }
    assert _tries(empty, "train") == 1 and len(reg.versions()) == 1
    _served_unevaluated(lake, version)
    _to_serving(lake, tmp_path, ol_file)


def _served_unevaluated(lake: Path, version: str) -> None:
    """A version registered with no evaluation is served: rows of its own test split, answered
    in-process, smoke-test the new server, and the deploy says so."""
    from freestack.providers import FreestackDeployOperator
    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json

    deploy = FreestackDeployOperator(task_id="deploy", model=MODEL, alias="production")
    try:
        served = deploy.execute(_context("deploy"))
        assert served["version"] == version and served["smoke"]["rows"] == 32
        assert served["smoke_source"] == f"its own test split (the 3 days up to {DAYS[-1]})"
        code, body = http_json(served["predict_url"], {"data": {"ndarray": [[0.0] * 64]}})
        assert code == 200 and len(body["data"]["ndarray"][0]) == 10
    finally:
        stop_local(lake.as_uri(), MODEL, deploy.deployment())


#: operators.md's DAG of the five operators, from landing files to a served and scored version
TO_SERVING = re.compile(r'```\{\.python title="dags/train_to_serving.py"\}\n(.*?)```', re.S)


def _to_serving(lake: Path, tmp_path: Path, ol_file: Path) -> None:  # noqa: F811
    """The DAG operators.md prints, as a DAG file of one's own: train -> evaluate (the gate registers the
    candidate with its decision) -> promote -> deploy (a local server answering as the evaluation did)
    -> score the day's rows; a candidate the gate blocks skips promote, deploy and score."""
    from freestack.registry.core import ModelRegistry
    from freestack.serving.local import stop_local

    docs = (ROOT / "docs" / "stages" / "operators.md").read_text()
    path = tmp_path / "own" / "train_to_serving.py"
    path.parent.mkdir()
    path.write_text(TO_SERVING.search(docs).group(1))
    reg = ModelRegistry(lake.as_uri(), "digits")
    dag = example_dag(path, "train_to_serving")
    try:
        run = dag.test(logical_date=_day(DAYS[-1]), run_conf={"epochs": 8, "window_days": 3})
        steps = ("train", "evaluate", "promote", "deploy", "score")
        assert _states(run) == {t: ["success"] for t in steps}, _states(run)
        (version,) = [v["version"] for v in reg.versions()]
        lineage = reg.lineage(version)
        assert lineage["gate"]["decision"] == "promote" and lineage["gate"]["champion_version"] is None
        assert (lake / "registry" / "digits" / version / "evaluation" / "smoke.json").is_file()
        assert reg.aliases()["production"] == version
        record = json.loads((lake / "deployments" / "digits" / "digits.json").read_text())
        assert record["version"] == version and record["smoke"]["rows"] == 32
        scores = pq.read_table(lake / "scores" / "digits" / f"ds={DAYS[-1]}" / "part.parquet")
        assert set(scores.column("version").to_pylist()) == {version}
        (evaluated,) = _completed(ol_file)["train_to_serving.evaluate"]
        assert _names(evaluated["outputs"]) == [_file(lake / "registry" / "digits" / version)]
        assert evaluated["run"]["facets"]["freestack_gate"]["promote"] is True

        # a candidate of one epoch on one day: the gate blocks it (registered so), the rest is skipped
        blocked = dag.test(logical_date=_day(DAYS[-2]), run_conf={"epochs": 1, "window_days": 1})
        assert _states(blocked) == {
            "train": ["success"],
            "evaluate": ["success"],
            **{t: ["skipped"] for t in ("promote", "deploy", "score")},
        }
        (weak,) = [v["version"] for v in reg.versions() if v["version"] != version]
        gate = reg.lineage(weak)["gate"]
        assert gate["decision"] == "block" and gate["champion_version"] == version
        assert reg.aliases()["production"] == version and "blocked" in (run_note(blocked) or "").lower()
    finally:
        stop_local(lake.as_uri(), "digits", "digits")


def _context(task_id: str) -> dict:
    """What the train operator reads of a task's context, outside a DAG run (XComs kept in ``pushed``)."""
    pushed: dict = {}
    ti = SimpleNamespace(
        dag_id="mine",
        run_id="manual__train",
        task_id=task_id,
        try_number=1,
        xcom_push=lambda key, value: pushed.update({key: value}),
        pushed=pushed,
    )
    return {"ti": ti, "ds": DAYS[-1], "run_id": ti.run_id, "dag": SimpleNamespace(dag_id="mine")}


def test_a_spec_file_trains_as_an_inline_spec_and_an_empty_window_is_named(lake, tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from freestack.providers import FreestackTrainOperator
    from freestack.spec import load_spec

    inline = _example().get_task("train")
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(inline.spec, sort_keys=False))
    # the same spec, given inline or as a file
    assert inline.pipeline_spec().normalized_hash() == load_spec(path).normalized_hash()

    context = _context("from_file")
    train = FreestackTrainOperator(task_id="from_file", spec_path=str(path), end_ds=DAYS[-1], epochs=1)
    got = train.execute(context)
    assert set(got) == {"version", "version_uri", "metrics", "partitions", "registered"}
    assert got["registered"] is False and [p["ds"] for p in got["partitions"]] == list(DAYS[-3:])
    candidate = lake / "candidates" / MODEL / got["version"]
    assert got["version_uri"] == candidate.as_uri() and (candidate / "model.safetensors").is_file()
    assert not (lake / "registry" / MODEL).exists()  # not registered
    assert "test_accuracy" in got["metrics"] and context["ti"].pushed["wandb"]

    # registering: the candidate becomes the version; a retry of the task (the same run) takes the
    # version its first try registered
    again = FreestackTrainOperator(
        task_id="from_file", spec_path=str(path), end_ds=DAYS[-1], epochs=1, register=True
    )
    registered = again.execute(_context("from_file"))
    assert registered["version"] == got["version"] and registered["registered"] is True
    assert registered["version_uri"] == (lake / "registry" / MODEL / got["version"]).as_uri()
    assert not candidate.exists()
    assert again.execute(_context("from_file"))["version_uri"] == registered["version_uri"]

    late = FreestackTrainOperator(task_id="late", spec_path=str(path), end_ds="2026-12-31", window_days=3)
    with pytest.raises(AirflowFailException) as failed:
        late.execute(_context("late"))
    assert "the window of 3 days up to 2026-12-31" in str(failed.value)
    assert "no lake partitions of 'digits' in the 3 days up to 2026-12-31" in str(failed.value)


def test_with_train_cache_the_operator_reuses_an_earlier_training(lake):
    """train.cache in the spec: a second task with the same inputs returns the first's version without
    training (and registers it); once registered, a third names it; another setting trains."""
    from freestack.providers import FreestackTrainOperator

    inline = _example().get_task("train").spec
    spec = {**inline, "train": {**(inline.get("train") or {}), "cache": True}}
    first = FreestackTrainOperator(task_id="first", spec=spec, end_ds=DAYS[-1], epochs=1)
    trained = first.execute(_context("first"))
    assert first._cache["hit"] is False and first._cache["miss"] == "no earlier run"
    candidate = lake / "candidates" / MODEL / trained["version"]
    files = {p: p.stat().st_mtime_ns for p in candidate.rglob("*")}

    again = FreestackTrainOperator(task_id="again", spec=spec, end_ds=DAYS[-1], epochs=1, register=True)
    reused = again.execute(_context("again"))
    assert again._cache["hit"] is True and again._cache["from_run"] == "manual__train"
    assert reused["version"] == trained["version"] and reused["metrics"] == trained["metrics"]
    assert reused["registered"] is True and not candidate.exists()  # the candidate became the version
    version = lake / "registry" / MODEL / trained["version"]
    assert {p.name for p in files} <= {p.name for p in version.rglob("*")}

    third = FreestackTrainOperator(task_id="third", spec=spec, end_ds=DAYS[-1], epochs=1)
    named = third.execute(_context("third"))
    assert named["version"] == trained["version"] and named["version_uri"] == version.as_uri()
    assert named["registered"] is True and third._cache == {**again._cache, "hit": True}

    other = FreestackTrainOperator(task_id="other", spec=spec, end_ds=DAYS[-1], epochs=2)
    assert other.execute(_context("other"))["version"] != trained["version"]
    assert other._cache["miss"] == "spec changed since run manual__train"


BAD_DAG = """
from datetime import datetime
from airflow.sdk import DAG
from freestack.providers import FreestackTrainOperator
COLUMNS = [{"name": "id", "type": "string", "nullable": False}, {"name": "label", "type": "int"}]
SPEC = {"name": "digits", "source": {"landing": "in/{ds}/", "schema": {"key": "id", "target": "label", "columns": COLUMNS}}}
with DAG("bad", schedule=None, start_date=datetime(2026, 1, 1)):
    FreestackTrainOperator(task_id="train", %s)
"""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("spec=SPEC, epochs='many'", "FreestackTrainOperator: epochs: a number, or a template rendering one"),
        ("spec=SPEC, register='yes'", "FreestackTrainOperator: register: Input should be a valid boolean"),
        (
            "spec=SPEC, spec_path='digits.yaml'",
            "give spec (the pipeline spec inline) or spec_path (a spec file)",
        ),
        (
            "spec=SPEC, window_days=0",
            "FreestackTrainOperator: window_days: Input should be greater than or equal to 1",
        ),
        (
            "spec={**SPEC, 'train': {'epochs': 'x'}}",
            "FreestackTrainOperator: spec.train.epochs: Input should be a valid",
        ),
        (
            "spec={**SPEC, 'model': {'type': 'rnn'}}",
            "FreestackTrainOperator: spec.model.type: Input should be 'auto'",
        ),
    ],
)
def test_a_wrong_argument_or_spec_field_fails_the_dag_file_naming_it(tmp_path, arguments, message):
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "bad.py").write_text(BAD_DAG % arguments)
    (error,) = DagBag(dag_folder=str(tmp_path)).import_errors.values()
    assert message in error
