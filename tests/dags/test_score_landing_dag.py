"""<p>_score over a landing folder (``score.input`` with ``{ds}``) under dag.test(): a folder's rows are
checked with ingest's row rules (one validator), so one bad value quarantines its row with the reason and
the day is scored; an empty file is left out by name; a file without a column fails the plan naming the
file and the column; a day over ``max_error_fraction`` fails with its rows not scored kept in a file the
message names; a failed day's error is recorded in its folder, where the Scores page reads it."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.dags.test_sweep_dag import _states
from tests.dags.test_train_dag import ROOT

pytestmark = pytest.mark.usefixtures("airflow_db")

ROWS = 40  # rows of a day's folder
#: columns the model does not take but the schema declares, with rules of their own
EXTRA = [
    {"name": "n_strokes", "type": "int", "nullable": True},
    {"name": "pen", "type": "category", "allowed": ["ink", "pencil"]},
]


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """Two ingested days of the demo digits and a version trained on them; the spec's schema then gains an
    int and a category column (not features), and its score block reads a landing folder
    (``max_error_fraction`` 0.5)."""
    from airflow.dag_processing.dagbag import DagBag

    from demo.landing import make_landing
    from freestack.registry.core import ModelRegistry

    tmp = tmp_path_factory.mktemp("score-landing")
    specs, storage = tmp / "pipelines", (tmp / "storage").as_uri()
    specs.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", specs / "digits.yaml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREESTACK_PIPELINES_DIR", str(specs))
        mp.setenv("FREESTACK_STORAGE_ROOT", storage)
        make_landing(storage, date(2026, 11, 1), 2)
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        for d in (1, 2):
            ingest = bag.get_dag("digits_ingest").test(logical_date=datetime(2026, 11, d, tzinfo=UTC))
            assert ingest.state == "success"
        conf = {"end_ds": "2026-11-02", "sweep": False, "epochs": 3}
        assert bag.get_dag("digits_train").test(run_conf=conf).state == "success"
        spec = yaml.safe_load((specs / "digits.yaml").read_text())
        spec["source"]["schema"]["columns"] += EXTRA
        spec["model"]["features"] = [f"px_{i}" for i in range(64)]  # what the version takes
        folder = f"file://{tmp}/landing/ds={{ds}}/"
        trained = ModelRegistry(storage, "digits").versions()[-1]["version"]  # named: the gate may block it
        spec["score"] = {"input": folder, "version": trained, "max_error_fraction": 0.5}
        (specs / "digits.yaml").write_text(yaml.safe_dump(spec))
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert not bag.import_errors, bag.import_errors
        root = Path(storage.removeprefix("file://"))
        lake = pq.read_table(root / "lake" / "digits" / "ds=2026-11-02" / "part.parquet").to_pandas()
        rows = lake.drop(columns=["label"]).head(ROWS).astype(str).assign(n_strokes="3", pen="ink")
        yield {
            "dag": bag.get_dag("digits_score"),
            "root": root,
            "landing": tmp / "landing",
            "rows": rows,
            "specs": specs,
        }


def _with(rows, at: list[int], **values):
    out = rows.copy()
    for k, v in values.items():
        out.loc[out.index[at], k] = v
    return out


#: (what the folder holds: file name -> rows, or b"" for a 0-byte file; the outcome: the failed task or
#: None; the reasons of the rows quarantined; what the failure's message names)
CASES = {
    "an int column holding twelve": (
        lambda r: {"a.csv": _with(r, [3], n_strokes="twelve")},
        None,
        ["n_strokes: not an integer: 'twelve'"],
        [],
    ),
    "a null key": (
        lambda r: {"a.csv": _with(r, [4], id="")},
        None,
        ["id: missing value (column is not nullable)"],
        [],
    ),
    "a category outside allowed": (
        lambda r: {"a.csv": _with(r, [5], pen="crayon")},
        None,
        ["pen: not one of the allowed values: 'crayon'"],
        [],
    ),
    "a null in a column that is not nullable": (
        lambda r: {"a.csv": _with(r, [6], px_5="")},
        None,
        ["px_5: missing value (column is not nullable)"],
        [],
    ),
    "a 0-byte file listed first beside good files": (
        lambda r: {"a.csv": b"", "b.csv": r[:25], "c.csv": r[25:]},
        None,
        [],
        [],
    ),
    "a second file without a column": (
        lambda r: {"a.csv": r[:20], "b.csv": r[20:].drop(columns=["px_7"])},
        "plan",
        [],
        ["b.csv has no column(s) ['px_7']"],
    ),
    "over max_error_fraction": (
        lambda r: {"a.csv": _with(r, list(range(30)), n_strokes="twelve")},
        "score",
        ["n_strokes: not an integer: 'twelve'"] * 30,
        [
            "30 of 40 rows were not scored (75.0%), over score.max_error_fraction 50.0%",
            "_failed_quarantine.parquet",
            "the commonest: n_strokes: not an integer: 'twelve' (30 rows)",
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_landing_folder_is_scored_with_ingests_row_rules(landed, case, caplog):
    from freestack.score.published import output_dir, read_failure
    from freestack.spec import load_spec

    files, failed_task, reasons, named = CASES[case]
    ds = (date(2026, 11, 10) + timedelta(days=list(CASES).index(case))).isoformat()
    folder = landed["landing"] / f"ds={ds}"
    folder.mkdir(parents=True)
    for name, rows in files(landed["rows"]).items():
        path = folder / name
        path.write_bytes(rows) if isinstance(rows, bytes) else rows.to_csv(path, index=False)

    with caplog.at_level(logging.WARNING, logger="freestack.score.core"):
        run = landed["dag"].test(logical_date=datetime.fromisoformat(ds).replace(tzinfo=UTC) + timedelta(1))
    spec = load_spec(landed["specs"] / "digits.yaml")
    out = Path(output_dir(spec, ds).removeprefix("file://"))
    states = _states(run)
    if failed_task is None:  # the day is scored: each bad row quarantined with its reason, the others scored
        assert states == {"plan": ["success"], "score": ["success"]}, states
        manifest = json.loads((out / "_manifest.json").read_text())
        scored = pq.read_table(out / "part.parquet").to_pandas()
        assert manifest["rows_in"] == ROWS and manifest["rows_scored"] == len(scored) == ROWS - len(reasons)
        assert scored["id"].notna().all() and manifest["rows_quarantined"] == len(reasons)
        if reasons:
            quarantined = pq.read_table(out / "_quarantine.parquet").to_pylist()
            assert [q["_reason"] for q in quarantined] == reasons
            assert {q["_source"] for q in quarantined} == {"a.csv"}
            assert not set(q["id"] for q in quarantined) & set(scored["id"])
        else:
            assert not (out / "_quarantine.parquet").exists()
        if "b.csv" in files(landed["rows"]):  # the empty file is left out, by name, in the record and the log
            assert manifest["empty"] == [f"file://{folder}/a.csv"]
            assert [i["uri"].rsplit("/", 1)[-1] for i in manifest["inputs"]] == ["b.csv", "c.csv"]
            assert any("a.csv is empty" in r.getMessage() for r in caplog.records)
        assert read_failure(output_dir(spec, ds)) is None
        return
    # the day fails in plan or score; the message says what is wrong, and the day is listed with it
    assert states[failed_task] == ["failed"], states
    assert not (out / "part.parquet").exists()
    failure = read_failure(output_dir(spec, ds))
    assert failure["task"] == failed_task and all(n in failure["error"] for n in named), failure["error"]
    assert failure["run"] == {"dag_id": "digits_score", "run_id": run.run_id}  # the Scores page lists it
    if reasons:  # the rows not scored are kept where the message says
        kept = out / "_failed_quarantine.parquet"
        assert f"is in file://{kept};" in failure["error"]
        assert [q["_reason"] for q in pq.read_table(kept).to_pylist()] == reasons
        assert not (out / "_quarantine.parquet").exists()
