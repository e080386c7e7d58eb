"""The model registry on file://: immutable versions, crash-safe registration, CAS aliases (racing
threads and processes), model cards, and loading a registered model back."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
import yaml

from tests.support.registry import (
    PARTITIONS,
    make_model_folder,
    race_promotions,
    sample_input,
    source_predictions,
)

GATE = {
    "decision": "promote",
    "reasons": ["first model: test_accuracy 0.9000 >= minimum 0.8000"],
    "primary_metric": "test_accuracy",
    "champion": None,
}
SWEEP = {"sweep_id": "sw1", "method": "grid", "metric": "val_accuracy", "goal": "maximize", "trials": 4}


@pytest.fixture
def reg(tmp_path):
    from freestack.registry.core import ModelRegistry

    return ModelRegistry((tmp_path / "store").as_uri(), "digits")


@pytest.fixture
def src(tmp_path) -> Path:
    return make_model_folder(tmp_path / "candidate")


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_register_copies_the_folder_and_lists_the_version(reg, src, tmp_path):
    uri = reg.register(src.as_uri(), "v20240102-aaaa1111", lineage_updates={"gate": GATE})
    folder = tmp_path / "store" / "registry" / "digits" / "v20240102-aaaa1111"
    assert uri == folder.as_uri()
    for name in (
        "config.json",
        "model.safetensors",
        "README.md",
        "metrics.json",
        "lineage.json",
        "preprocessing.json",
        "history.json",
        "evaluation/metrics.json",
        "_REGISTERED.json",
    ):
        assert (folder / name).is_file(), name
    assert (folder / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["version"] == "v20240102-aaaa1111" and lineage["gate"] == GATE
    assert lineage["partitions"] == PARTITIONS and lineage["registered_from"] == src.as_uri()
    marker = json.loads((folder / "_REGISTERED.json").read_text())
    assert set(marker["files"]) == {
        "config.json",
        "model.safetensors",
        "README.md",
        "metrics.json",
        "lineage.json",
        "preprocessing.json",
        "history.json",
        "evaluation/metrics.json",
    }
    [v] = reg.versions()
    assert v["version"] == "v20240102-aaaa1111" and v["metrics"]["test_accuracy"] == 0.9
    assert "best_epoch" not in v["metrics"] and v["created"].endswith("Z")
    got = reg.get("v20240102-aaaa1111")
    assert got["lineage"]["gate"] == GATE and got["card"].startswith("---\n")
    reg.verify("v20240102-aaaa1111")


def test_versions_are_immutable(reg, src, tmp_path):
    from freestack.registry.core import VersionExists

    reg.register(src.as_uri(), "v1")
    before = (tmp_path / "store/registry/digits/v1/model.safetensors").read_bytes()
    other = make_model_folder(tmp_path / "other", seed=7)
    with pytest.raises(VersionExists, match=r"'v1' of model 'digits' is already registered.*new version"):
        reg.register(other.as_uri(), "v1")
    with pytest.raises(VersionExists):
        reg.write_card("v1", {"intended_use": "rewrite"})
    assert (tmp_path / "store/registry/digits/v1/model.safetensors").read_bytes() == before
    reg.register(other.as_uri(), "v2")  # a new version is fine
    assert [v["version"] for v in reg.versions()] == ["v1", "v2"]


def test_a_failed_registration_leaves_no_version_folder_and_a_retry_commits(reg, src, tmp_path):
    """A file of the candidate vanishes between the listing and its copy: the registration fails after
    writing the files before it, removes them all, and a retry of the same version commits it."""
    from freestack.registry.core import VersionNotFound

    (src / "zz-vanished.bin").symlink_to(tmp_path / "gone")  # listed; reading it fails, last of all
    with pytest.raises(FileNotFoundError):
        reg.register(src.as_uri(), "v1")
    folder = tmp_path / "store/registry/digits/v1"
    assert not folder.exists(), sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert reg.versions() == [] and not reg.is_registered("v1")
    with pytest.raises(VersionNotFound):
        reg.resolve("v1")

    (src / "zz-vanished.bin").unlink()
    reg.register(src.as_uri(), "v1")
    assert [v["version"] for v in reg.versions()] == ["v1"]
    reg.verify("v1")


def test_a_registration_killed_outright_is_not_a_version_and_a_retry_replaces_it(reg, src, tmp_path):
    """kill -9 runs no cleanup: a registration killed while writing leaves its files and its writer's
    hidden temporary, without the marker. That is no version, and the retry replaces all of it."""
    import signal
    import subprocess
    import sys

    from freestack.registry.core import VersionNotFound

    folder = make_model_folder(tmp_path / "store/registry/digits/v5")
    (folder / "stray.bin").write_bytes(b"from a different, killed attempt")
    writer = (
        "import sys, time\n"
        "from freestack.storage import AtomicWriter, to_path\n"
        "w = AtomicWriter(to_path(sys.argv[1]))\n"
        "w.write(b'x' * 1024); w.flush(); print('writing', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", writer, (folder / "history.json").as_uri()], stdout=subprocess.PIPE
    )
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len([p for p in folder.iterdir() if ".freestack-tmp-" in p.name]) == 1, (
        "the killed writer left its temporary"
    )
    assert reg.versions() == []
    with pytest.raises(VersionNotFound, match="not registered"):
        reg.promote("v5")
    with pytest.raises(VersionNotFound):
        reg.load("v5")

    reg.register(src.as_uri(), "v5")
    assert not (folder / "stray.bin").exists()
    assert not [p for p in folder.rglob("*") if ".freestack-tmp-" in p.name]
    assert [v["version"] for v in reg.versions()] == ["v5"]
    reg.verify("v5")


def test_candidates_live_outside_the_registry_until_registered(reg, tmp_path):
    from freestack.registry.core import RegistryError, VersionExists

    candidate = reg.candidate_path("v3")
    assert str(candidate) == (tmp_path / "store/candidates/digits/v3").as_uri()
    folder = make_model_folder(tmp_path / "store/candidates/digits/v3")
    assert reg.versions() == [] and not (tmp_path / "store/registry").exists()
    uri = reg.register(str(candidate), "v3", lineage_updates={"gate": GATE}, card={"sweep": SWEEP})
    assert uri == (tmp_path / "store/registry/digits/v3").as_uri()
    card = _front_matter((tmp_path / "store/registry/digits/v3/README.md").read_text())
    assert card["freestack"]["gate"] == GATE and card["freestack"]["sweep"] == SWEEP
    reg.remove_candidate("v3")
    assert not folder.exists()
    reg.verify("v3")
    with pytest.raises(VersionExists):
        reg.register(str(candidate), "v3")
    own = make_model_folder(tmp_path / "store/registry/digits/v4")  # written into the registry directly
    with pytest.raises(
        RegistryError, match="is the folder of version 'v4' itself; register from the candidate"
    ):
        reg.register(own.as_uri(), "v4")
    with pytest.raises(RegistryError, match="config.json, model.safetensors missing"):
        reg.register(str(reg.candidate_path("v6")), "v6")


def test_a_changed_file_fails_verification_and_load(reg, src, tmp_path):
    from freestack.version import VersionCorrupt

    reg.register(src.as_uri(), "v1")
    (tmp_path / "store/registry/digits/v1/model.safetensors").write_bytes(b"tampered")
    with pytest.raises(VersionCorrupt, match="model.safetensors"):
        reg.verify("v1")
    with pytest.raises(VersionCorrupt):
        reg.load("v1")


def test_invalid_names_are_refused(reg, src):
    from freestack.registry.core import RegistryError

    for bad in ("../x", "a/b", "", "history", ".hidden"):
        with pytest.raises(RegistryError):
            reg.register(src.as_uri(), bad)
    with pytest.raises(RegistryError, match="not a model folder"):
        reg.register((src / "evaluation").as_uri(), "v9")


def test_aliases_promote_rollback_and_set(reg, src, tmp_path):
    from freestack.registry.core import RegistryError, VersionNotFound

    for i, v in enumerate(("v1", "v2", "v3")):
        reg.register(make_model_folder(tmp_path / v, seed=i).as_uri(), v)
    with pytest.raises(RegistryError, match="no 'previous'"):
        reg.rollback()
    reg.promote("v1")
    a = reg.promote("v2", reason="better")
    assert (a["production"], a["previous"]) == ("v2", "v1")
    assert reg.resolve("production") == "v2" and reg.resolve("previous") == "v1"
    assert reg.resolve("latest") == "v3" and reg.resolve("v3") == "v3"
    a = reg.rollback(reason="bad outputs")
    assert (a["production"], a["previous"]) == ("v1", "v2")
    reg.set_alias("staging", "v3")
    assert reg.resolve("staging") == "v3"
    reg.set_alias("production", "staging")  # an alias names a version too
    a = reg.aliases()
    assert (a["production"], a["previous"], a["staging"]) == ("v3", "v1", "v3")
    assert [(h["action"], h["version"], h["from"]) for h in a["history"]] == [
        ("promote", "v1", None),
        ("promote", "v2", "v1"),
        ("rollback", "v1", "v2"),
        ("set", "v3", None),
        ("promote", "v3", "v1"),
    ]
    assert {v["version"]: v["aliases"] for v in reg.versions()} == {
        "v1": ["previous"],
        "v2": [],
        "v3": ["production", "staging"],
    }
    with pytest.raises(VersionNotFound, match="'v7' is not registered as a version or alias"):
        reg.promote("v7")
    with pytest.raises(RegistryError, match="alias 'History'"):
        reg.set_alias("History", "v1")
    assert json.loads((tmp_path / "store/registry/digits/aliases.json").read_text()) == reg.aliases()


def test_a_promotion_expecting_a_production_that_moved_is_refused(reg, src):
    """``expect``: production moves only while it is the version the caller judged against, in the same
    compare-and-swap; else AliasMoved names the move that happened and the version there now."""
    from freestack.registry.core import AliasMoved

    for v in ("v1", "v2", "v3"):
        reg.register(src.as_uri(), v)
    reg.promote("v2", expect=None)  # nothing in production yet, as expected
    reg.promote("v1", reason="bad outputs", by="alice (manual__1)")
    with pytest.raises(
        AliasMoved, match=r"production of 'digits' is v1, no longer v2: promote to v1 by alice"
    ) as got:
        reg.promote("v3", expect="v2")
    assert got.value.current == "v1" and reg.resolve("production") == "v1"
    assert reg.last_move("production").startswith("promote to v1 by alice (manual__1) at ")
    assert reg.last_move("production").endswith("(bad outputs)") and reg.last_move("staging") is None
    reg.promote("v3", expect="v1")
    reg.promote("v3", expect="v1")  # a retry of the same move is not refused
    assert (reg.aliases()["production"], reg.aliases()["previous"]) == ("v3", "v1")


def test_alias_drift_names_what_is_served_and_the_fix(reg, src, tmp_path):
    from freestack.serving.records import alias_drift

    for v in ("v1", "v2"):
        reg.register(src.as_uri(), v)
    reg.promote("v1")
    root = (tmp_path / "store").as_uri()
    rec = {"model": "digits", "name": "digits", "state": "serving", "version": "v1", "alias": "production"}
    assert alias_drift(root, rec) is None
    reg.promote("v2")
    assert alias_drift(root, rec).startswith("serves v1 but production is v2")
    assert alias_drift(root, {k: v for k, v in rec.items() if k != "alias"}).startswith(
        "serves v1"
    )  # older records
    assert alias_drift(root, {**rec, "alias": None}) is None  # pinned by name
    assert alias_drift(root, {**rec, "state": "stopped"}) is None


def _check_race(aliases: dict, a: str, b: str, start: str) -> None:
    assert {aliases["production"], aliases["previous"]} == {a, b}
    moves = [(h["version"], h["from"]) for h in aliases["history"]]
    assert sorted(moves[-2:]) == sorted(
        [(aliases["previous"], start), (aliases["production"], aliases["previous"])]
    )


def test_two_racing_promotions_in_threads_leave_consistent_aliases(reg, tmp_path, monkeypatch):
    from freestack.storage import cas

    for i, v in enumerate(("v0", "va", "vb")):
        reg.register(make_model_folder(tmp_path / v, seed=i).as_uri(), v)
    real_replace = cas.replace
    lost = []

    def counting_replace(path, data, token):
        try:
            return real_replace(path, data, token)
        except cas.CasConflict:
            lost.append(1)
            raise

    monkeypatch.setattr(cas, "replace", counting_replace)
    for _round in range(10):
        reg.promote("v0")
        race_promotions(reg, "va", "vb", timeout=10)  # both read aliases.json before either writes
        _check_race(reg.aliases(), "va", "vb", "v0")
    assert len(lost) == 10  # one loser per round, which read again and retried
    assert len(reg.aliases()["history"]) == 30


def _promote_loop(root: str, versions: list[str], n: int, barrier) -> None:
    from freestack.registry.core import ModelRegistry

    reg = ModelRegistry(root, "digits")
    reg.aliases()  # imports done
    barrier.wait(60)
    for i in range(n):
        reg.promote(versions[i % 2])


def test_two_racing_promotion_processes_serialise(reg, tmp_path):
    """Two processes promote 15 times each (alternating their own versions, so every promotion
    moves production): the history is one chain of 31 moves, each from the one before."""
    root = (tmp_path / "store").as_uri()
    for i, v in enumerate(("v0", "a1", "a2", "b1", "b2")):
        reg.register(make_model_folder(tmp_path / v, seed=i).as_uri(), v)
    reg.promote("v0")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)  # both children imported and waiting, then both go
    procs = [
        ctx.Process(target=_promote_loop, args=(root, vs, 15, barrier)) for vs in (["a1", "a2"], ["b1", "b2"])
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    a = reg.aliases()
    hist = a["history"]
    assert len(hist) == 31
    for before, after in zip(hist, hist[1:], strict=False):
        assert after["from"] == before["version"]
    assert a["production"] == hist[-1]["version"] and a["previous"] == hist[-1]["from"]
    assert {h["pid"] for h in hist[1:]} == {p.pid for p in procs}
    assert [h["version"] for h in hist if h["pid"] == procs[0].pid] == ["a1", "a2"] * 7 + ["a1"]
    assert [h["version"] for h in hist if h["pid"] == procs[1].pid] == ["b1", "b2"] * 7 + ["b1"]


def test_model_card_holds_metrics_lineage_gate_and_sweep(reg, src):
    from huggingface_hub import ModelCard

    info = {
        "gate": GATE,
        "sweep": SWEEP,
        "intended_use": "Recognising hand-written digits in the demo.",
        "limitations": "Only 8x8 greyscale digits.",
        "tags": ["digits"],
        "license": "mit",
    }
    reg.register(src.as_uri(), "v1", card=info)
    text = reg.get("v1")["card"]
    data = _front_matter(text)
    assert data["library_name"] == "freestack" and data["license"] == "mit"
    assert {"freestack", "classification", "digits"} <= set(data["tags"])
    fs = data["freestack"]
    assert fs["metrics"]["test_accuracy"] == 0.9 and fs["metrics"]["test_f1_macro"] == pytest.approx(0.85)
    assert fs["window"] == {"end_ds": "2024-01-02", "days": 2}
    assert [(p["ds"], p["sha256"]) for p in fs["partitions"]] == [(p["ds"], p["sha256"]) for p in PARTITIONS]
    assert fs["train_config"]["train"]["learning_rate"] == 0.01
    assert fs["gate"] == GATE and fs["sweep"] == SWEEP
    assert fs["spec_hash"] == "c" * 64 and fs["airflow"]["dag_id"] == "digits_train"
    assert fs["wandb"]["id"] == "run123"
    # huggingface_hub parses it back: model-index eval results with the test metrics
    card = ModelCard(text)
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results["test_accuracy"] == 0.9 and results["best_val_accuracy"] == pytest.approx(0.91)
    assert card.data.eval_results[0].task_type == "tabular-classification"
    assert card.data.eval_results[0].dataset_split == "test"
    assert "Recognising hand-written digits" in card.text and "Only 8x8 greyscale digits." in card.text
    assert "first model: test_accuracy 0.9000 >= minimum 0.8000" in card.text
    assert "a" * 64 in card.text  # the partition hash is in the body table too


def test_card_defaults_come_from_lineage(reg, src):
    reg.register(src.as_uri(), "v1", lineage_updates={"gate": GATE, "sweep": SWEEP})
    fs = _front_matter(reg.get("v1")["card"])["freestack"]
    assert fs["gate"] == GATE and fs["sweep"] == SWEEP and fs["version"] == "v1"


def test_load_round_trip_predicts_like_the_source(reg, src):
    x = sample_input()
    want = source_predictions(src, x)
    reg.register(src.as_uri(), "v1")
    reg.promote("v1")
    for ref in ("v1", "production", "latest"):
        got = reg.load(ref).model.predict_proba(x)
        assert torch.allclose(got, want)
    net = reg.load("v1").model
    assert net.features == [f"f{i}" for i in range(6)] and torch.equal(net.mean, torch.arange(6.0))


def test_cli_lists_shows_promotes_and_rolls_back(reg, tmp_path, capsys):
    from freestack.cli import main

    root = (tmp_path / "store").as_uri()
    for i, v in enumerate(("v1", "v2")):
        reg.register(
            make_model_folder(tmp_path / v, seed=i, accuracy=0.8 + i / 10).as_uri(),
            v,
            lineage_updates={"gate": GATE},
        )
    assert main(["models", "promote", "digits", "v1", "--root", root]) == 0
    assert main(["models", "promote", "digits", "v2", "--root", root, "--reason", "better"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "digits", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "v2" in out and "test_accuracy" in out and "0.9000" in out
    assert "production -> v2" in out and "previous -> v1" in out
    assert main(["models", "list", "digits", "--root", root, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed["versions"]] == ["v1", "v2"]
    assert listed["aliases"] == {"production": "v2", "previous": "v1"}
    assert main(["models", "show", "digits", "production", "--root", root, "--details"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits v2") and "test_accuracy" in out and "model-index:" in out
    assert "first model: test_accuracy" in out  # the gate decision
    assert main(["models", "rollback", "digits", "--root", root]) == 0
    assert "production -> v1" in capsys.readouterr().out
    assert main(["models", "alias", "digits", "staging", "v2", "--root", root]) == 0
    assert reg.resolve("staging") == "v2"
    assert main(["models", "promote", "digits", "v9", "--root", root]) == 1
    assert "'v9' is not registered" in capsys.readouterr().err
    assert main(["models", "push", "digits", "v1", "--repo", "me/digits", "--root", root]) == 0
    assert "not pushed" in capsys.readouterr().err
