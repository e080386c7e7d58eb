"""DAG integrity: import errors, parse-time weight, no connection use, tags, retries."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: what parsing the DAG files must not import: ML and data libraries (numpy too: the sweep engine's
#: schema is read from its file, not imported), which only tasks need
HEAVY = (
    "torch",
    "pandas",
    "pyarrow",
    "wandb",
    "numpy",
    "scipy",
    "sklearn",
    "transformers",
    "peft",
    "safetensors",
    "huggingface_hub",
    "matplotlib",
    "PIL",
)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "digits_ingest" in dagbag.dag_ids


def test_tags_and_retries(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert "freestack" in dag.tags and any(t.startswith("pipeline:") for t in dag.tags), dag_id
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} does I/O and needs retries"


def test_ingest_emits_the_lake_asset(dagbag):
    task = dagbag.dags["digits_ingest"].get_task("ingest")
    assert [o.uri for o in task.outlets] == ["freestack://lake/digits"]


PARSE_PROBE = r"""
import json, sys
calls = []
def refuse(*a, **k):
    calls.append(repr(a))
    raise RuntimeError("connection used at parse time")
from airflow.sdk.bases.hook import BaseHook
BaseHook.get_connection = classmethod(refuse)
from airflow.models.connection import Connection
Connection.get_connection_from_secrets = classmethod(refuse)
import socket
real_connect = socket.socket.connect
def no_net(self, addr):
    calls.append("socket " + repr(addr))
    raise OSError("network used at parse time")
socket.socket.connect = no_net
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
print(json.dumps({"dags": sorted(bag.dag_ids), "errors": {k: str(v) for k, v in bag.import_errors.items()}, "heavy": heavy, "calls": calls}))
"""


def _parse(env_extra: dict[str, str] | None = None) -> dict:
    env = dict(os.environ, **(env_extra or {}))
    out = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, str(ROOT / "dags"), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_parsing_is_light_and_touches_no_connection():
    result = _parse()
    assert result["errors"] == {}
    assert "digits_ingest" in result["dags"]
    assert result["heavy"] == [], f"parse-time imports of heavy libraries: {result['heavy']}"
    assert result["calls"] == []


def test_a_broken_spec_breaks_only_its_own_pipeline(tmp_path):
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", tmp_path / "digits.yaml")
    (tmp_path / "broken.yaml").write_text(
        "name: broken\nsource:\n  format: xml\n  schema: {columns: [{name: a}]}\n"
    )
    (tmp_path / "garbled.yaml").write_text("name: [garbled\n")
    result = _parse({"FREESTACK_PIPELINES_DIR": str(tmp_path)})
    assert "digits_ingest" in result["dags"]
    assert not any(d.startswith(("broken", "garbled")) for d in result["dags"])
    # the error belongs to its own file, so Airflow does not mark the pipelines' DAGs stale
    ((where, message),) = result["errors"].items()
    assert where.endswith("freestack_spec_errors.py")
    assert {"digits_ingest", "digits_train", "digits_rollback"} <= set(result["dags"])
    assert "broken.yaml: source.format" in message
    assert "garbled.yaml: invalid YAML at line" in message


def test_a_task_process_builds_only_its_own_dag(tmp_path, monkeypatch):
    """Airflow's task runner names the DAG it parses for (the parsing context): only that pipeline's
    spec is read and only that DAG built, so a task's start does not grow with the number of specs."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions._internal.dag_parsing_context import _airflow_parsing_context_manager

    text = (ROOT / "include" / "pipelines" / "digits.yaml").read_text()
    for name in ("digits", "other_one"):
        (tmp_path / f"{name}.yaml").write_text(text.replace("\nname: digits\n", f"\nname: {name}\n", 1))
    (tmp_path / "broken.yaml").write_text("name: broken\nsource:\n  format: xml\n")
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(tmp_path))
    pipelines = str(ROOT / "dags" / "freestack_pipelines.py")  # a task parses its DAG's own file only
    for dag_id in ("other_one_train", "digits_ingest", "other_one_rollback"):
        with _airflow_parsing_context_manager(dag_id=dag_id, task_id="any"):
            bag = DagBag(dag_folder=pipelines)
        assert sorted(bag.dag_ids) == [dag_id] and bag.import_errors == {}
    full = {f"{n}_{k}" for n in ("digits", "other_one") for k in ("ingest", "train", "rollback")}
    # not a pipeline's DAG (or a broken one's): every valid pipeline is built, and the broken spec is
    # the import error of its own file
    for dag_id in ("not_a_pipeline_dag", "broken_ingest"):
        with _airflow_parsing_context_manager(dag_id=dag_id, task_id="any"):
            bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert full <= set(bag.dag_ids) and len(bag.import_errors) == 1


def test_every_param_has_a_title_a_description_and_a_valid_default(dagbag):
    """The Trigger form: every field says what it does, and its default (the spec's) passes its own
    schema, so an untouched form always starts a run."""
    from airflow.sdk.definitions.param import ParamsDict

    seen = 0
    for dag_id, dag in dagbag.dags.items():
        params: ParamsDict = dag.params
        for name in params:
            param = params.get_param(name)
            assert (param.description or "").strip(), f"{dag_id}: Param {name!r} has no description"
            assert param.schema.get("title"), f"{dag_id}: Param {name!r} has no title"
            assert "type" in param.schema, f"{dag_id}: Param {name!r} has no type"
            seen += 1
        params.validate()  # the defaults pass their schemas
    assert seen >= 8  # digits_train's seven and digits_rollback's version

    from freestack.spec import load_spec

    spec = load_spec(ROOT / "include" / "pipelines" / "digits.yaml")
    train = dagbag.dags["digits_train"].params
    assert (train["epochs"], train["window_days"], train["batch_size"]) == (
        spec.train.epochs,
        spec.train.window_days,
        spec.train.batch_size,
    )
    assert train["sweep"] is True and train["sweep_agents"] == 2
    assert f"train.epochs = {spec.train.epochs}" in train.get_param("epochs").description
    assert train.get_param("window_days").schema["maximum"] == 3660  # the spec's own limit


def test_trigger_form_refuses_what_the_spec_refuses(dagbag):
    from airflow.sdk.definitions.param import ParamsDict

    for bad in ({"epochs": 0}, {"learning_rate": 0}, {"batch_size": "64"}, {"end_ds": "yesterday"}):
        params = ParamsDict(dagbag.dags["digits_train"].params)
        with pytest.raises(Exception, match="Invalid input|not valid|ParamValidationError"):
            params.update(bad)
            params.validate()


def test_trigger_forms_validate_through_a_serialized_dag_in_their_dialect(dagbag):
    """Every Trigger-form field declares draft 7 (cheaper for Airflow to check at every parse), the form
    is the DAG's alone (its tasks read it through the DAG), and the scheduler's copy of the DAG still
    refuses what the form refuses: Airflow validates each field."""
    from airflow.sdk.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    from freestack.dags import FORM_DIALECT

    for dag_id in ("digits_train", "digits_promote", "digits_rollback"):
        dag = dagbag.dags[dag_id]
        assert dag.params and all(
            dag.params.get_param(k).schema["$schema"] == FORM_DIALECT for k in dag.params
        )
    # the form is the DAG's only: its tasks carry no copy (each copy cost the parse a deep copy per
    # operator class and two resolves per serialization), yet a task's context has the form's values
    # with the run's conf over them, as Airflow merges them (the DAG's Params, the task's, the conf)
    from airflow.sdk.definitions.param import process_params

    for dag_id in ("digits_train", "digits_promote", "digits_rollback"):
        assert not any(task.params for task in dagbag.dags[dag_id].tasks), dag_id
    rollback = dagbag.dags["digits_rollback"]
    move = rollback.get_task("move_production")
    assert process_params(rollback, move, None, suppress_exception=False)["version"] == "previous"
    assert process_params(rollback, move, {"version": "v3"}, suppress_exception=False)["version"] == "v3"
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags["digits_train"])).params
    ok = scheduled.deep_merge({"epochs": 3, "end_ds": "2026-11-20", "learning_rate": 0.01}).validate()
    assert ok["epochs"] == 3 and ok["end_ds"] == "2026-11-20"
    for bad in ({"epochs": 0}, {"end_ds": "2026-13-45"}, {"learning_rate": 0}, {"sweep_agents": "two"}):
        with pytest.raises(ParamValidationError, match="Invalid input for param"):
            scheduled.deep_merge(bad).validate()
