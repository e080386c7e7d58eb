"""The model registry on real S3 servers (moto, SeaweedFS): round trip, immutability, CAS aliases."""

from __future__ import annotations

import json

import pytest
import torch

from tests.support.registry import make_model_folder, race_promotions, sample_input, source_predictions

pytestmark = pytest.mark.s3


def test_registry_round_trip_and_aliases_on_s3(s3_conn, tmp_path):
    from freestack.registry.core import ModelRegistry, VersionExists, VersionNotFound

    reg = ModelRegistry(s3_conn.uri("root"), "digits")
    src = make_model_folder(tmp_path / "candidate")
    other = make_model_folder(tmp_path / "other", seed=3)
    # the candidate itself lives on S3, as a sweep trial's folder would
    from freestack.storage import join, to_path, write_bytes

    trial = join(to_path(s3_conn.uri("root")), "runs", "digits", "sw1", "trials", "t0001", "model")
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        write_bytes(join(trial, str(f.relative_to(src))), f.read_bytes())

    uri = reg.register(str(trial), "v1", lineage_updates={"gate": {"decision": "promote"}})
    assert uri == s3_conn.uri("root/registry/digits/v1")
    keys = s3_conn.keys("root/registry/digits/v1/")
    assert "root/registry/digits/v1/_REGISTERED.json" in keys
    assert "root/registry/digits/v1/evaluation/metrics.json" in keys
    assert json.loads(s3_conn.get("root/registry/digits/v1/lineage.json"))["gate"] == {"decision": "promote"}
    assert (
        s3_conn.get("root/registry/digits/v1/model.safetensors") == (src / "model.safetensors").read_bytes()
    )
    with pytest.raises(VersionExists, match="new version"):
        reg.register(other.as_uri(), "v1")
    reg.register(other.as_uri(), "v2")  # from local disk into S3

    # an unfinished registration (no marker) is not a version
    write_bytes(join(reg.folder, "v3", "config.json"), b"{}")
    assert [v["version"] for v in reg.versions()] == ["v1", "v2"]
    with pytest.raises(VersionNotFound):
        reg.promote("v3")

    reg.promote("v1")
    a = reg.promote("v2")
    assert (a["production"], a["previous"]) == ("v2", "v1")
    assert reg.rollback()["production"] == "v1"
    assert json.loads(s3_conn.get("root/registry/digits/aliases.json"))["production"] == "v1"

    x = sample_input()
    assert torch.allclose(reg.load("production").model.predict_proba(x), source_predictions(src, x))
    assert torch.allclose(reg.load("v2").model.predict_proba(x), source_predictions(other, x))
    card = reg.get("v1")["card"]
    assert "test_accuracy" in card and "a" * 64 in card


def test_racing_promotions_on_s3_stay_consistent(s3_conn, tmp_path):
    from freestack.registry.core import ModelRegistry

    reg = ModelRegistry(s3_conn.uri("root"), "digits")
    for i, v in enumerate(("v0", "va", "vb")):
        reg.register(make_model_folder(tmp_path / v, seed=i).as_uri(), v)
    for _round in range(3):
        reg.promote("v0")
        race_promotions(reg, "va", "vb")
        a = reg.aliases()
        assert {a["production"], a["previous"]} == {"va", "vb"}
        assert [h["from"] for h in a["history"][-2:]] == ["v0", a["previous"]]
    assert len(reg.aliases()["history"]) == 9


def test_a_failed_registration_leaves_nothing_on_s3_and_a_retry_commits(s3_conn, tmp_path):
    _failed_registration_leaves_nothing(s3_conn, s3_conn.uri("root"), "root/", tmp_path)


def test_a_failed_registration_leaves_nothing_on_data_storage_and_a_retry_commits(data_conn, tmp_path):
    _failed_registration_leaves_nothing(data_conn, "data://.my/models", "data/alice/models/", tmp_path)


def _failed_registration_leaves_nothing(s3, root, prefix, tmp_path):
    """A file of the candidate vanishes between the listing and its copy: the objects the registration
    PUT before it are deleted, so no ``registry/<model>/<version>/`` object stays; objects left by a
    registration killed outright go too when the retry commits the same version."""
    from freestack.registry.core import ModelRegistry
    from freestack.storage import join, write_bytes

    reg = ModelRegistry(root, "digits")
    src = make_model_folder(tmp_path / "candidate")
    (src / "zz-vanished.bin").symlink_to(tmp_path / "gone")  # listed; reading it fails, last of all
    with pytest.raises(FileNotFoundError):
        reg.register(src.as_uri(), "v1")
    assert s3.keys(f"{prefix}registry/digits/v1/") == []
    assert reg.versions() == [] and not s3.pending_uploads(prefix)

    (src / "zz-vanished.bin").unlink()
    write_bytes(join(reg.folder, "v1", "stray.bin"), b"from a registration killed outright")
    assert reg.versions() == []
    reg.register(src.as_uri(), "v1")
    keys = s3.keys(f"{prefix}registry/digits/v1/")
    assert f"{prefix}registry/digits/v1/_REGISTERED.json" in keys
    assert f"{prefix}registry/digits/v1/stray.bin" not in keys
    assert s3.get(f"{prefix}registry/digits/v1/model.safetensors") == (src / "model.safetensors").read_bytes()
    assert [v["version"] for v in reg.versions()] == ["v1"]
    reg.verify("v1")
