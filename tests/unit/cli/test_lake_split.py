"""``freestack split``: the rows a pipeline's training put in train, val and test, rebuilt from the lake with
the documented rule (a salted hash of the row key) — exactly the split a registered version was trained
and evaluated on."""

from __future__ import annotations

import hashlib
import json

import airflow  # noqa: F401  (Airflow sets up logging when imported: here, not on a test's captured output)
import pandas as pd
import pytest

from freestack.cli import main
from tests.support.card_versions import END, build_version


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A registered version of the demo's digits pipeline (three landed days), and its spec folder."""
    base = tmp_path_factory.mktemp("split")
    (base / "specs").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FREESTACK_PIPELINES_DIR", str(base / "specs"))
        folder = build_version("numeric", base / "storage", base / "specs", epochs=1)
        yield {"folder": folder, "base": base, "mp": mp}


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


def documented_split(key: str, salt: str, val: float = 0.15, test: float = 0.15) -> str:
    """The rule as docs/stages/evaluate.md states it, written out here."""
    u = int.from_bytes(hashlib.blake2b(f"{salt}{key}".encode(), digest_size=8).digest(), "big") / 2**64
    return "test" if u < test else ("val" if u < test + val else "train")


def test_the_split_of_a_version_is_the_one_it_was_trained_and_evaluated_on(digits, capsys, tmp_path):
    from freestack.evaluate.measure import test_split
    from freestack.spec import load_spec

    folder = digits["folder"]
    out = tmp_path / "split.parquet"
    code, stdout, err = cli(capsys, "split", "digits", "--version", folder.name, "--out", str(out))
    assert code == 0, err
    rows = pd.read_parquet(out)
    assert list(rows.columns) == ["id", "ds", "split"]
    lineage = json.loads((folder / "lineage.json").read_text())
    assert sorted(set(rows["ds"])) == [p["ds"] for p in lineage["partitions"]]
    assert rows.groupby("ds").size().to_dict() == {p["ds"]: p["rows"] for p in lineage["partitions"]}
    counts = rows["split"].value_counts().to_dict()
    assert counts == lineage["data"]["rows"], (counts, lineage["data"]["rows"])  # what training split
    evaluation = json.loads((folder / "evaluation" / "metrics.json").read_text())
    assert counts["test"] == evaluation["candidate"]["rows"]  # the rows evaluate scored
    test_keys = sorted(rows.loc[rows["split"] == "test", "id"])
    smoke = json.loads((folder / "evaluation" / "smoke.json").read_text())
    assert smoke["keys"] == test_keys[: len(smoke["keys"])]  # evaluate's lowest test keys, as recorded
    spec = load_spec(digits["base"] / "specs" / "digits.yaml")
    scored, data = test_split(spec, END, lineage["window"]["days"], lineage)
    try:
        assert sorted(scored.values("id")) == test_keys
    finally:
        data.close()
    assert all(documented_split(k, "digits") == s for k, s in zip(rows["id"], rows["split"], strict=True))
    assert f"{counts['test']}" in stdout and "wrote key, ds and split" in stdout


def test_the_lake_window_and_json(digits, capsys, tmp_path):
    folder = digits["folder"]
    lineage = json.loads((folder / "lineage.json").read_text())
    code, stdout, err = cli(capsys, "split", "digits", "--json", "--out", str(tmp_path / "rows.csv"))
    assert code == 0, err
    got = json.loads(stdout)
    assert got["end_ds"] == END and got["rows"] == lineage["data"]["rows"] and got["salt"] == "digits"
    assert got["val_fraction"] == got["test_fraction"] == 0.15 and got["key"] == "id"
    rows = pd.read_csv(tmp_path / "rows.csv", dtype={"id": str})
    assert rows["split"].value_counts().to_dict() == lineage["data"]["rows"]
    code, stdout, _ = cli(capsys, "split", "digits", "--end-ds", "2026-11-02", "--days", "1", "--json")
    assert code == 0 and json.loads(stdout)["partitions"] == ["2026-11-02"]


def test_bad_requests_say_what_to_do(digits, capsys, tmp_path):
    code, _, err = cli(capsys, "split", "digits", "--version", digits["folder"].name, "--days", "3")
    assert code == 1 and "--version fixes the window" in err
    code, _, err = cli(capsys, "split", "digits", "--out", str(tmp_path / "rows.txt"))
    assert code == 1 and "write a .parquet or a .csv file" in err
    code, _, err = cli(capsys, "split", "nosuch")
    assert code == 1 and "no pipeline 'nosuch'" in err


def test_the_split_is_the_models(digits, capsys, tmp_path):
    """The salt is the model's name (model.name, by default the pipeline's): a spec registering its versions
    as model ``other`` splits the same lake rows as every pipeline training ``other`` does."""
    import yaml

    spec_file = digits["base"] / "specs" / "digits.yaml"
    text = spec_file.read_text()
    spec = yaml.safe_load(text)
    spec["model"]["name"] = "other"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        code, stdout, err = cli(capsys, "split", "digits", "--json", "--out", str(tmp_path / "rows.csv"))
    finally:
        spec_file.write_text(text)
    assert code == 0 and json.loads(stdout)["salt"] == "other", err
    rows = pd.read_csv(tmp_path / "rows.csv", dtype={"id": str})
    assert all(documented_split(k, "other") == s for k, s in zip(rows["id"], rows["split"], strict=True))
    assert any(documented_split(k, "digits") != s for k, s in zip(rows["id"], rows["split"], strict=True))
