"""A registered version with ONE byte changed is refused by every reader, each naming the file: score,
evaluate, the model server and the CLI; the same version untouched loads through each of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.registry import N_FEATURES, make_model_folder

VERSION = "v1"
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
PREPROCESSING = {
    "task": "classification",
    "features": FEATURES,
    "mean": [0.0] * N_FEATURES,
    "std": [1.0] * N_FEATURES,
    "classes": [0, 1, 2],
    "target": "label",
    "target_mean": 0.0,
    "target_std": 1.0,
}


@pytest.fixture
def registered(tmp_path) -> tuple[str, Path]:
    """(the version's URI, its folder) of a numeric MLP registered as ``digits`` v1."""
    from freestack.registry.core import ModelRegistry

    src = make_model_folder(tmp_path / "candidate")
    (src / "preprocessing.json").write_text(json.dumps(PREPROCESSING))
    reg = ModelRegistry((tmp_path / "store").as_uri(), "digits")
    uri = reg.register(src.as_uri(), VERSION)
    return uri, tmp_path / "store" / "registry" / "digits" / VERSION


def alter_one_byte(path: Path, at: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _score(uri: str) -> None:
    from freestack.score.model import ScoringModel

    ScoringModel(uri, "cpu")


def _evaluate(uri: str) -> None:
    from freestack.evaluate.measure import load_version

    load_version(uri)


def _server(uri: str) -> None:
    import shutil

    from freestack_server.core.model import ServedModel

    served = ServedModel(uri, max_batch_rows=16, torch_threads=1)
    try:
        served.load()
    finally:
        shutil.rmtree(served.cache_dir, ignore_errors=True)


def _cli(uri: str) -> None:
    from freestack.cli import main

    root = uri.rsplit("/registry/", 1)[0]
    if main(["models", "show", "digits", VERSION, "--root", root]) != 0:
        raise RuntimeError("freestack models show failed")


READERS = {"score": _score, "evaluate": _evaluate, "server": _server, "cli": _cli}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_an_untouched_version_loads(registered, reader):
    READERS[reader](registered[0])


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("name", ["model.safetensors", "preprocessing.json"])
def test_one_changed_byte_is_refused_naming_the_file(registered, reader, name, capsys):
    uri, folder = registered
    alter_one_byte(folder / name, at=-2 if name.endswith(".json") else -1)
    if reader == "cli":
        from freestack.cli import main

        assert main(["models", "show", "digits", VERSION, "--root", uri.rsplit("/registry/", 1)[0]]) == 1
        said = capsys.readouterr().err
    else:
        with pytest.raises(Exception) as raised:  # noqa: PT011  (each reader's own error; the text matters)
            READERS[reader](uri)
        said = str(raised.value)
        if reader == "evaluate":  # its task fails without a retry (AirflowFailException): none would mend it
            from freestack.errors import EvaluationError

            assert isinstance(raised.value, EvaluationError), type(raised.value)
    assert f"{name} does not match what was registered" in said, said
    assert "register the candidate again under a new version, or retrain" in said, said


def test_a_removed_file_is_refused_naming_it(registered):
    from freestack import version

    uri, folder = registered
    (folder / "history.json").unlink()
    with pytest.raises(version.VersionCorrupt, match="history.json is missing"):
        version.open(uri).load()
