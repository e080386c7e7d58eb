"""freestack's reusable operators in a DAG of one's own (include/dags/score_with_version.py, no pipeline
spec) under dag.test(): a folder is scored with a registered version exactly as the score stage scores it
and published whole, then the version is promoted, the run's note saying so; promote and rollback move the
aliases, and a version the gate blocked is neither ``latest`` nor promoted without an override, which the
note records with the gate's reasons; an argument of
the wrong type fails the DAG file's import, naming it; a version or alias that does not exist fails the
task at its first try, naming the argument and listing the versions there are. Parsing the DAG file
imports no heavy library. The deploy operator serves a version locally, answering over HTTP (Seldon's
protocol; and MLServer's Open Inference Protocol in a DAG run). Each reports OpenLineage: score the files
and the version -> the output folder, promote and rollback the version the alias now points at and the
move, deploy the version -> the deployment record."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from tests.dags.test_integrity import HEAVY, PARSE_PROBE
from tests.dags.test_openlineage import _completed, _file, _names, ol_file  # noqa: F401  (its listener)
from tests.dags.test_sweep_dag import _states
from tests.support.card_versions import build_version
from tests.support.runs import run_note
from tests.support.serving import in_process, make_version, needs_serving_env

pytestmark = pytest.mark.usefixtures("airflow_db")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "include" / "dags"
DS = "2026-11-05"


@pytest.fixture
def registered(tmp_path, storage):
    """A digits version trained for seconds under the test's storage root (no alias yet), and a folder
    holding a day of its rows without the label."""
    root = Path(storage.removeprefix("file://"))
    specs = tmp_path / "specs"
    specs.mkdir()
    version = build_version("numeric", root, specs, epochs=2).name
    rows = pq.read_table(root / "lake" / "digits" / "ds=2026-11-02" / "part.parquet").drop(["label"])
    folder = tmp_path / "incoming" / f"ds={DS}"
    folder.mkdir(parents=True)
    pq.write_table(rows, folder / "a.parquet")
    return {"root": root, "specs": specs, "version": version, "folder": folder, "rows": rows}


def _example(path: Path = EXAMPLES / "score_with_version.py", dag_id: str = "score_with_version"):
    """The example DAG (or another DAG file outside the DAGs folder), written to the metadata database:
    dag.test() runs a DAG of a configured bundle."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    return bag.get_dag(dag_id)


def _stage_scores(registered, out: Path):
    """The same folder scored by the score stage (the pipeline's spec, its score block on the folder)."""
    from freestack.score.core import plan, score
    from freestack.spec import parse_spec

    data = yaml.safe_load((registered["specs"] / "digits.yaml").read_text())
    incoming = registered["folder"].parent.as_uri()
    data["score"] = {"input": f"{incoming}/ds={{ds}}/", "output": f"{out.as_uri()}/{{ds}}/", "monitor": False}
    spec = parse_spec(data, "digits.yaml")
    day = datetime.fromisoformat(DS).replace(tzinfo=UTC)
    score(spec, plan(spec, day, day)["jobs"][0])
    return pq.read_table(out / DS / "part.parquet")


def test_the_example_dag_scores_a_folder_with_a_version_then_promotes_it(registered, tmp_path, ol_file):  # noqa: F811
    from freestack.registry.core import ModelRegistry

    dag = _example()
    conf = {
        "model": "digits",
        "version": registered["version"],
        "input_uri": f"file://{registered['folder']}/",
    }
    run = dag.test(logical_date=datetime.fromisoformat(DS).replace(tzinfo=UTC), run_conf=conf)
    assert _states(run) == {"score": ["success"], "promote": ["success"]}

    out = registered["root"] / "scores" / "digits" / f"ds={DS}"
    # no temporary left; the step cache's entry beside the scores
    assert sorted(p.name for p in out.iterdir()) == ["_cache.json", "_manifest.json", "part.parquet"]
    table = pq.read_table(out / "part.parquet")
    manifest = json.loads((out / "_manifest.json").read_text())
    rows = registered["rows"]
    assert table.column_names == ["id", "ds", "prediction", "probabilities", "version", "scored_at"]
    assert table.num_rows == rows.num_rows == manifest["rows_scored"] and manifest["rows_quarantined"] == 0
    assert table.column("id").to_pylist() == rows.column("id").to_pylist()
    assert set(table.column("version").to_pylist()) == {registered["version"]} and set(
        table.column("ds").to_pylist()
    ) == {DS}
    assert manifest["run"]["dag_id"] == "score_with_version" and manifest["version"] == registered["version"]
    # the very scores the score stage gives for the same rows with the same version
    stage = _stage_scores(registered, tmp_path / "stage")
    assert table.column("prediction").to_pylist() == stage.column("prediction").to_pylist()
    assert np.array_equal(
        np.asarray(table.column("probabilities").to_pylist()),
        np.asarray(stage.column("probabilities").to_pylist()),
    )

    aliases = ModelRegistry(registered["root"].as_uri(), "digits").aliases()
    assert aliases["production"] == registered["version"]
    assert aliases["history"][-1]["by"].endswith(f"({run.run_id})")
    assert run_note(run) == f"**Promoted.** `{registered['version']}` of `digits` is production now."
    _lineage_of_the_example(_completed(ol_file), registered, out, run.run_id)

    # one file, scored with the alias (now the version): the same scores, in a folder of their own
    from freestack.providers import FreestackScoreOperator

    one = FreestackScoreOperator(
        task_id="one",
        model="digits",
        alias="production",
        input_uri=f"file://{registered['folder']}/a.parquet",
        output_uri=f"file://{tmp_path}/one/",
    ).execute(_context())
    assert one["version"] == registered["version"] and one["rows_scored"] == rows.num_rows
    again = pq.read_table(one["part"].removeprefix("file://"))
    assert again.column("prediction").to_pylist() == table.column("prediction").to_pylist()

    # a version that does not exist, in a run without a logical date (`airflow dags trigger` without
    # --logical-date; its templates name the run's day, not the undefined ds): the score task fails at its
    # first try (retries: 2), nothing promoted
    failed = dag.test(logical_date=None, run_conf={**conf, "version": "v-missing"})
    assert failed.logical_date is None
    assert _states(failed) == {"score": ["failed"], "promote": ["upstream_failed"]}
    assert _tries(failed, "score") == 1
    assert not (registered["root"] / "scores" / "digits" / f"ds={failed.run_after:%Y-%m-%d}").exists()


def _lineage_of_the_example(done: dict[str, list[dict]], registered, out: Path, run_id: str) -> None:
    """The score task's event: the input file and the version folder -> the scores folder (its rows), with
    the version; the promote task's: the version production now points at and the move, as run facets
    only."""
    version = registered["version"]
    folder = registered["root"] / "registry" / "digits" / version
    (scored,) = done["score_with_version.score"]
    assert _names(scored["inputs"]) == [_file(registered["folder"] / "a.parquet"), _file(folder)]
    (output,) = scored["outputs"]
    assert (output["namespace"], output["name"]) == _file(out)
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == registered["rows"].num_rows
    facet = scored["run"]["facets"]["freestack_modelVersion"]
    assert facet["name"] == "digits" and facet["version"] == version and len(facet["sha256"]) == 64
    (promoted,) = done["score_with_version.promote"]
    assert promoted["inputs"] == promoted["outputs"] == []
    assert promoted["run"]["facets"]["freestack_modelVersion"] == facet
    moved = {k: v for k, v in promoted["run"]["facets"]["freestack_alias"].items() if not k.startswith("_")}
    assert moved.pop("by").endswith(f"({run_id})")  # a new alias: no from_version
    reason = f"scored file://{registered['folder']}/ in {run_id}"
    assert moved == {"model": "digits", "alias": "production", "version": version, "reason": reason}


def _tries(run, task_id: str) -> int:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = (
            session.query(TaskInstance).filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id).one()
        )
        return ti.try_number


class _Ti:
    """What the operators here push to their task instance: key -> value."""

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def _context(ti: _Ti | None = None) -> dict:
    return {"ds": DS, "run_id": "manual__ops", "dag": SimpleNamespace(dag_id="mine"), "ti": ti or _Ti()}


def _refusal(operator) -> str:
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException) as got:
        operator.execute(_context())
    return str(got.value)


def test_promote_and_rollback_move_the_aliases_and_unknown_versions_are_named(registered, tmp_path):
    from freestack.providers import (
        FreestackPromoteOperator,
        FreestackRollbackOperator,
        FreestackScoreOperator,
    )
    from freestack.registry.core import ModelRegistry

    storage, first = registered["root"].as_uri(), registered["version"]
    make_version(storage, "digits", "v2", tmp_path, n_features=64, classes=tuple(range(10)))
    reg = ModelRegistry(storage, "digits")
    reg.promote(first)

    ti = _Ti()
    got = FreestackPromoteOperator(task_id="p", model="digits", version="v2").execute(_context(ti))
    assert got == {"alias": "production", "version": "v2", "from": first, "production": "v2"}
    assert reg.aliases()["previous"] == first
    note = f"**Promoted.** `v2` of `digits` is production now (previous: `{first}`)."
    assert ti.pushed["freestack_run_note"] == note
    staged = FreestackPromoteOperator(task_id="s", model="digits", version="previous", alias="staging")
    assert staged.execute(_context())["version"] == first and reg.aliases()["staging"] == first

    rollback = FreestackRollbackOperator(task_id="r", model="digits", storage=storage)
    back = rollback.execute(_context())
    assert back == {"alias": "production", "version": first, "from": "v2", "previous": "v2"}
    assert reg.aliases()["history"][-1]["action"] == "rollback"
    lineage = rollback.get_openlineage_facets_on_complete(None)
    assert lineage.inputs == lineage.outputs == []
    assert lineage.run_facets["freestack_modelVersion"].version == first
    moved = lineage.run_facets["freestack_alias"]
    assert (moved.model, moved.alias, moved.version, moved.from_version) == (
        "digits",
        "production",
        first,
        "v2",
    )
    assert moved.reason == "rolled back by mine (manual__ops)" and moved.by == "? (manual__ops)"
    staged_moved = staged.get_openlineage_facets_on_complete(None).run_facets["freestack_alias"]
    assert (staged_moved.alias, staged_moved.version, staged_moved.from_version) == ("staging", first, None)

    # a landed CSV with production: its malformed line and a value of the wrong type are quarantined with
    # their reasons, the rest is scored
    landed = registered["root"] / "landing" / "digits" / "2026-11-01" / "digits.csv"
    scored = FreestackScoreOperator(
        task_id="csv",
        model="digits",
        input_uri=str(landed.relative_to(registered["root"])),
        output_uri="csv/",
    ).execute(_context())
    out = registered["root"] / "csv"
    quarantined = pq.read_table(out / "_quarantine.parquet").to_pylist()
    assert scored["version"] == first and scored["rows_quarantined"] == len(quarantined) == 2
    assert sorted(q["_reason"] for q in quarantined) == [
        "malformed row: expected 67 fields, found 10",
        "px_20: not a number: 'seven'",
    ]
    assert pq.read_table(out / "part.parquet").num_rows == scored["rows_scored"] == 602

    listed = f"versions: {first}, v2; aliases: previous -> v2, production -> {first}, staging -> {first}"
    said = _refusal(FreestackPromoteOperator(task_id="p", model="digits", version="v9"))
    assert "version='v9' is not a registered version or alias of model 'digits'" in said and listed in said
    said = _refusal(FreestackRollbackOperator(task_id="r", model="digits", to_version="v9"))
    assert "to_version='v9'" in said and listed in said
    said = _refusal(
        FreestackScoreOperator(
            task_id="s", model="digits", alias="canary", input_uri="in/", output_uri="out/"
        )
    )
    assert "alias='canary'" in said and listed in said
    said = _refusal(FreestackScoreOperator(task_id="s", model="digits", input_uri="in/", output_uri="out/"))
    assert "input_uri 'in/' holds no rows to score" in said  # production, resolved; the input is missing
    assert reg.aliases()["production"] == first  # nothing moved
    _a_blocked_version_is_promoted_only_overridden(reg, tmp_path, first)


def _a_blocked_version_is_promoted_only_overridden(reg, tmp_path: Path, production: str) -> None:
    """v3, registered as the gate registers a candidate it blocked: ``latest`` is v2 (the newest the gate did
    not block); promoting v3 fails at once naming the gate's reasons and the override, then lands with it,
    the note and the history recording why and the gate's reasons."""
    from freestack.providers import FreestackPromoteOperator

    reasons = ["rmse 168.8000 > maximum 60.0000: block", "r2 0.1000 < minimum 0.5000: block"]
    gate = {"promote": False, "decision": "block", "metric": "rmse", "reasons": reasons}
    reg.register(reg.local_copy("v2", tmp_path / "v3").as_uri(), "v3", lineage_updates={"gate": gate})
    staged = FreestackPromoteOperator(task_id="s", model="digits", version="latest", alias="staging")
    assert staged.execute(_context())["version"] == "v2"  # not v3, the newest registered
    said = _refusal(FreestackPromoteOperator(task_id="p", model="digits", version="v3"))
    assert said.startswith("alias='production': cannot point it at v3: version 'v3' of model 'digits' was ")
    assert "; ".join(reasons) in said and "allow_blocked='<why>'" in said
    assert reg.aliases()["production"] == production
    ti, why = _Ti(), "the gate's thresholds predate the new units"
    forced = FreestackPromoteOperator(task_id="p", model="digits", version="v3", allow_blocked=why)
    assert forced.execute(_context(ti))["version"] == "v3" == reg.aliases()["production"]
    assert reg.aliases()["history"][-1]["override"] == {"why": why, "gate_reasons": reasons}
    assert ti.pushed["freestack_run_note"] == (
        f"**Promoted.** `v3` of `digits` is production now (previous: `{production}`).\n\n"
        f"**Gate overridden.** The gate blocked `v3` ({'; '.join(reasons)}); moved anyway: {why}"
    )


BAD_DAG = """
from datetime import datetime
from airflow.sdk import DAG
from freestack.providers import FreestackScoreOperator
with DAG("bad", schedule=None, start_date=datetime(2026, 1, 1)):
    FreestackScoreOperator(task_id="score", model="digits", version="v1", input_uri="in/", output_uri="out/",
                           batch_rows="many")
"""


def test_an_argument_of_the_wrong_type_fails_the_dag_file_naming_it(tmp_path):
    from airflow.dag_processing.dagbag import DagBag

    from freestack.providers import ArgumentError, FreestackPromoteOperator

    (tmp_path / "bad.py").write_text(BAD_DAG)
    errors = DagBag(dag_folder=str(tmp_path)).import_errors
    (message,) = errors.values()
    assert "FreestackScoreOperator: batch_rows: Input should be a valid integer" in message
    with pytest.raises(
        ArgumentError, match=r"FreestackPromoteOperator: version: Input should be a valid string"
    ):
        FreestackPromoteOperator(task_id="p", model="digits", version=3)
    with pytest.raises(ArgumentError, match="give version or alias, not both"):
        from freestack.providers import FreestackScoreOperator

        FreestackScoreOperator(task_id="s", model="m", version="v1", alias="a", input_uri="i", output_uri="o")
    # a misspelt argument is named as the typo it is, not as the argument it leaves missing
    with pytest.raises(ArgumentError, match=r"unknown argument 'versoin': did you mean 'version'\?"):
        FreestackPromoteOperator(task_id="p", model="digits", versoin="v1")
    with pytest.raises(ArgumentError, match="FreestackPromoteOperator: version: Field required"):
        FreestackPromoteOperator(task_id="p", model="digits")


def test_a_version_from_an_upstream_xcom_is_taken_and_checked_once_rendered():
    """An XComArg (``train.output["version"]``) where a version, alias or URI goes: taken at parse time,
    the task set downstream of the one it reads, and checked once rendered (a wrong XCom fails the task at
    once, naming the argument)."""
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowFailException

    from freestack.providers import FreestackPromoteOperator, FreestackScoreOperator

    with DAG("xcom_args", schedule=None):
        score = FreestackScoreOperator(task_id="score", model="digits", input_uri="in/", output_uri="out/")
        promote = FreestackPromoteOperator(task_id="promote", model="digits", version=score.output["version"])
    assert promote.upstream_task_ids == {"score"} and "version" in promote.template_fields
    promote.version = 7  # what a rendered XCom holding a number gives
    with pytest.raises(
        AirflowFailException, match="promote: as rendered, version: Input should be a valid string"
    ):
        promote.execute(_context())


def test_parsing_the_example_dag_is_light():
    out = subprocess.run(
        [sys.executable, "-c", PARSE_PROBE, str(EXAMPLES), ",".join(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == {} and result["dags"] == ["score_with_version", "train_and_score"]
    assert result["heavy"] == [], f"parse-time imports of heavy libraries: {result['heavy']}"
    assert result["calls"] == []


def test_a_text_generation_version_answers_a_file_of_prompts_as_the_score_stage_does(storage, tmp_path):
    import pyarrow as pa

    from freestack.providers import FreestackScoreOperator
    from tests.support.generation_serving import SMOKE_PROMPTS, make_generation_version

    work = tmp_path / "work"
    work.mkdir()
    version = make_generation_version(storage, "chat", "v1", work)
    prompts = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": SMOKE_PROMPTS}), prompts)
    got = FreestackScoreOperator(
        task_id="answer",
        model="chat",
        version="v1",
        input_uri=f"file://{prompts}",
        output_uri="answers/chat/",
        max_new_tokens=12,
    ).execute(_context())
    assert got["rows_scored"] == len(SMOKE_PROMPTS) and got["output"].startswith(storage)
    table = pq.read_table(got["part"].removeprefix("file://"))
    assert table.column_names[:3] == ["row", "ds", "completion"]
    want = [version.answer([version.chat(p)], max_new_tokens=12)[0].text for p in SMOKE_PROMPTS]
    assert table.column("completion").to_pylist() == want


DEPLOY_DAG = """
from airflow.sdk import DAG
from freestack.providers import FreestackDeployOperator, FreestackPromoteOperator
with DAG("deploy_mine", schedule=None):
    promote = FreestackPromoteOperator(task_id="promote", model="digits", version="v1", reason="first")
    deploy = FreestackDeployOperator(task_id="deploy", model="digits", runtime="mlserver", port={port})
    promote >> deploy
"""


@needs_serving_env
@pytest.mark.skipif(
    not (ROOT / ".venv-mlserver" / "bin" / "python").exists(),
    reason="the MLServer environment is missing: run `make mlserver-venv`",
)
def test_a_dag_deploys_production_on_mlserver_and_reports_it_to_openlineage(storage, tmp_path, ol_file):  # noqa: F811
    """promote -> deploy (runtime mlserver) under dag.test() and the OpenLineage listener: the version
    answers the Open Inference Protocol at the deployment's address as it predicts in-process; the
    events are the move (no datasets) and the version folder -> the deployment record."""
    from freestack.errors import DeployError
    from freestack.serving.local import stop_local
    from freestack.serving.processes import free_port_block
    from freestack.serving.records import Deployments
    from freestack.serving.smoke import http_json

    uri = make_version(storage, "digits", "v1", tmp_path, n_features=64, classes=tuple(range(10)))
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "deploy_mine.py").write_text(DEPLOY_DAG.format(port=free_port_block()))
    try:
        run = _example(tmp_path / "dags" / "deploy_mine.py", "deploy_mine").test()
        assert _states(run) == {"promote": ["success"], "deploy": ["success"]}
        record = Deployments(storage, "digits").get("digits")
        assert record["runtime"] == "mlserver" and record["alias"] == "production"
        rows = np.random.default_rng(5).normal(size=(3, 64)).astype(np.float32) * 3
        tensor = {
            "name": "input",
            "datatype": "FP32",
            "shape": list(rows.shape),
            "data": rows.ravel().tolist(),
        }
        code, body = http_json(record["predict_url"], {"inputs": [tensor]})
        assert code == 200, body
        answer = np.reshape(body["outputs"][0]["data"], (3, 10))
        assert np.abs(answer - in_process(uri, rows)).max() < 1e-5
    finally:
        try:
            stop_local(storage, "digits", "digits")
        except DeployError:
            pass
    done, folder = _completed(ol_file), uri.removeprefix("file://")
    (promoted,) = done["deploy_mine.promote"]
    assert promoted["run"]["facets"]["freestack_alias"]["reason"] == "first"
    (deployed,) = done["deploy_mine.deploy"]
    assert _names(deployed["inputs"]) == [_file(folder)]
    where = Path(storage.removeprefix("file://")) / "deployments" / "digits" / "digits.json"
    assert _names(deployed["outputs"]) == [_file(where)]
    facet = deployed["run"]["facets"]["freestack_modelVersion"]
    assert facet["version"] == "v1" and facet == promoted["run"]["facets"]["freestack_modelVersion"]


@needs_serving_env
def test_the_deploy_operator_serves_a_version_locally(storage, tmp_path):
    from freestack.errors import DeployError
    from freestack.providers import ArgumentError, FreestackDeployOperator
    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json

    uri = make_version(storage, "digits", "v1", tmp_path, n_features=64, classes=tuple(range(10)))
    given = tmp_path / "smoke.csv"  # rows to smoke-test with, in place of the evaluation's
    np.savetxt(
        given,
        np.random.default_rng(5).normal(size=(6, 64)),
        delimiter=",",
        comments="",
        header=",".join(f"f{i}" for i in range(64)),
    )
    deploy = FreestackDeployOperator(
        task_id="deploy", model="digits", version="v1", runtime="seldon", smoke_input=given.as_uri()
    )
    try:
        record = deploy.execute(_context())
        assert record["version"] == "v1" and record["state"] == "serving" and record["alias"] is None
        assert record["smoke_source"] == f"the given rows {given.as_uri()}" and record["smoke"]["rows"] == 6
        rows = np.random.default_rng(3).normal(size=(5, 64)) * 3
        code, body = http_json(record["predict_url"], {"data": {"ndarray": rows.tolist()}})
        assert code == 200, body
        assert np.abs(np.asarray(body["data"]["ndarray"]) - in_process(uri, rows)).max() < 1e-5

        lineage = deploy.get_openlineage_facets_on_complete(None)
        assert [(d.namespace, d.name) for d in lineage.inputs] == [_file(uri.removeprefix("file://"))]
        where = Path(storage.removeprefix("file://")) / "deployments" / "digits" / "digits.json"
        assert [(d.namespace, d.name) for d in lineage.outputs] == [_file(where)]
        assert lineage.run_facets["freestack_modelVersion"].version == "v1"

        said = _refusal(FreestackDeployOperator(task_id="d", model="digits", alias="canary"))
        assert "alias='canary' is not a registered version or alias of model 'digits'" in said
        assert "versions: v1;" in said
    finally:
        try:
            stop_local(storage, "digits", "digits")
        except DeployError:
            pass
    with pytest.raises(ArgumentError, match="FreestackDeployOperator: port: only where='local' reads it"):
        FreestackDeployOperator(task_id="d", model="digits", version="v1", where="kubernetes", port=9100)
