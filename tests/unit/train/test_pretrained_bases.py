"""Where a fine-tuning base comes from when it is not a Hub repo: a path (absolute, relative or ``~``) is
the ``file://`` URI of its folder, which lineage records with the sha256 of the config and weights; an
adapter's base in object storage is copied through the reader its caller passes, and refused, saying
what to do, without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.support.hf_tiny import tiny_text_model


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return tiny_text_model(tmp_path_factory.mktemp("bases") / "bert-mlm", head="masked-lm")


@pytest.mark.parametrize("form", ["absolute", "relative", "uri"])
def test_a_path_base_is_the_file_uri_of_its_folder(bert, monkeypatch, form):
    from freestack.ml.pretrained import folder_digest
    from freestack.train.pretrained import _base

    monkeypatch.chdir(bert.parent)
    given = {"absolute": str(bert), "relative": f"./{bert.name}", "uri": bert.as_uri()}[form]
    _base.cache_clear()
    base = _base(given, "main", None)
    assert (base.folder, base.repo, base.commit) == (str(bert), bert.as_uri(), folder_digest(bert))


def _adapter(tmp_path, bert: Path, repo: str) -> tuple[Path, torch.Tensor, torch.Tensor]:
    from freestack.ml.pretrained import build_pretrained, local_base

    base = local_base(bert, repo)
    net = build_pretrained(
        base, "text-classification", ["neg", "pos"], peft={"r": 2, "alpha": 4, "dropout": 0.0}
    )
    ids = torch.randint(5, 20, (4, 1, 8))
    want = net.eval().predict_proba({"text": ids})
    net.save_pretrained(tmp_path / "version")
    return tmp_path / "version", ids, want


def test_an_adapter_on_a_base_in_object_storage_is_read_through_the_callers_reader(tmp_path, bert):
    from freestack.ml.models import load_pretrained
    from freestack.ml.pretrained import PretrainedError, load_pretrained_version

    uri = "s3://models/bert-mlm"
    version, ids, want = _adapter(tmp_path, bert, uri)
    assert json.loads((version / "adapter_config.json").read_text())["base_model_name_or_path"] == uri
    with pytest.raises(PretrainedError, match=f"the adapter's base {uri} is in object storage"):
        load_pretrained(version)
    reads = []

    def read(at: str, name: str) -> bytes:
        reads.append((at, name))
        if not (bert / name).is_file():
            raise FileNotFoundError(name)
        return (bert / name).read_bytes()

    config = json.loads((version / "config.json").read_text())
    again = load_pretrained_version(version, config, read_base=read)
    assert torch.allclose(again.predict_proba({"text": ids}), want, atol=1e-6)
    assert ("s3://models/bert-mlm", "model.safetensors") in reads
