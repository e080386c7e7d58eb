"""freestack.version: the records of a version folder's JSON files, open(), verify() and load()."""

from __future__ import annotations

import json

import pytest
import torch

from tests.support.registry import make_model_folder, sample_input, source_predictions


def test_records_keep_the_keys_they_do_not_name():
    from freestack.version import Lineage, Manifest, ModelConfig, Preprocessing

    lineage = Lineage.model_validate({"pipeline": "digits", "partitions": [], "written_by": "0.0.1"})
    assert lineage.pipeline == "digits" and lineage.as_dict()["written_by"] == "0.0.1"
    config = ModelConfig.model_validate(
        {"freestack": {"freestack_model": "huggingface", "task": "generation"}}
    )
    assert config.pretrained and config.generation and not config.custom
    assert Preprocessing.model_validate({"features": ["a"]}).as_dict() == {"features": ["a"]}
    manifest = Manifest.model_validate({"files": {"config.json": {"sha256": "0" * 64, "size": 2}}, "x": 1})
    assert manifest.files["config.json"].size == 2 and manifest.as_dict()["x"] == 1


def test_a_folder_without_config_is_not_a_version(tmp_path):
    from freestack import version

    with pytest.raises(version.NotAVersion, match="no config.json"):
        version.open(tmp_path.as_uri())


def test_a_json_file_that_does_not_parse_is_named(tmp_path):
    from freestack import version

    folder = make_model_folder(tmp_path / "v")
    (folder / "lineage.json").write_text("{not json")
    with pytest.raises(version.NotAVersion, match="lineage.json is not valid JSON"):
        version.open(folder.as_uri())


def test_a_fresh_training_output_verifies_trivially_and_loads(tmp_path):
    from freestack import version

    folder = make_model_folder(tmp_path / "candidate")
    opened = version.open(str(folder))
    assert not opened.registered and opened.kind == "numeric"
    opened.verify()
    loaded = opened.load()
    x = sample_input()
    assert torch.allclose(loaded.model.predict_proba(x), source_predictions(folder, x))
    assert loaded.kind == "numeric" and loaded.lineage.pipeline == "digits"
    assert loaded.history == [{"epoch": 1, "val_accuracy": 0.8}] and loaded.encoder is None


def test_a_registered_version_copies_checked_files_and_loads_from_the_copy(tmp_path):
    from freestack import version
    from freestack.registry.core import ModelRegistry

    src = make_model_folder(tmp_path / "candidate")
    reg = ModelRegistry((tmp_path / "store").as_uri(), "digits")
    uri = reg.register(src.as_uri(), "v1")
    opened = version.open(uri)
    assert opened.registered and opened.manifest.version == "v1"
    loaded = opened.load(into=tmp_path / "cache")
    assert set(opened.manifest.files) <= {
        str(p.relative_to(tmp_path / "cache")) for p in (tmp_path / "cache").rglob("*") if p.is_file()
    }
    x = sample_input()
    assert torch.allclose(loaded.model.predict_proba(x), source_predictions(src, x))
    assert loaded.lineage.version == "v1" and json.loads((tmp_path / "cache" / "lineage.json").read_text())


def test_writers_write_what_the_records_read(tmp_path):
    from freestack import version
    from freestack.version.write import read_lineage, write_lineage, write_metrics

    folder = make_model_folder(tmp_path / "candidate")
    write_lineage(folder.as_uri(), version.Lineage(pipeline="p", version="v2"))
    write_metrics(folder.as_uri(), {"task": "classification", "test_accuracy": 0.5})
    assert read_lineage(folder.as_uri()).version == "v2"
    assert version.open(folder.as_uri()).metrics.as_dict()["test_accuracy"] == 0.5
