"""Version folders registered by earlier code still load and answer as they did then.

``tests/fixtures/versions/<kind>/version/`` is one registered version of each kind freestack registers,
written once by commit 68efd24's code (``tests/fixtures/versions/make_versions.py``) and kept as written;
``<kind>/expected.json`` holds a few inputs and what that code's own loaders answered for them (class
probabilities rounded, or the text generated greedily). Today's loaders must give the same answers.

Bases are not kept: each is rebuilt by the recipe ``expected.json`` names (deterministic random weights)
and published on the local Hub stand-in, or written to the fixed folder the version's lineage names.
Every load goes through :func:`_load_and_predict`.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.versions.make_versions import answered, frame_of

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "versions"
KINDS = sorted(p.parent.name for p in FIXTURES.glob("*/expected.json"))
TOLERANCE = 2e-5  # probabilities are recorded rounded to 5 decimals
LOGIT_TOLERANCE = 2e-3  # a causal LM's next-token logits to 4 (and larger than probabilities)


def _expected(kind: str) -> dict[str, Any]:
    return json.loads((FIXTURES / kind / "expected.json").read_text())


def _build_base(recipe: dict[str, Any], folder: Path) -> Path:
    from tests.support import hf_tiny

    return getattr(hf_tiny, recipe["function"])(folder, **recipe["kwargs"])


def _storage_base(recipe: dict[str, Any], work: Path) -> None:
    """The base at the absolute folder the version's lineage names: left as it is when it already holds
    the very files the recipe builds (another run wrote it), else built beside it and moved in."""
    target = Path(recipe["name"])
    built = _build_base(recipe, Path(tempfile.mkdtemp(dir=work)) / target.name)
    names = sorted(p.name for p in built.iterdir())
    if target.is_dir() and filecmp.cmpfiles(built, target, names, shallow=False)[0] == names:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(built), target)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Every base the fixtures name: Hub bases published on the Hub stand-in (at the recorded commit),
    storage bases written to their folder."""
    from tests.fakes.hub import FakeHub
    from tests.support.hf_tiny import publish

    work = tmp_path_factory.mktemp("bases")
    hub = FakeHub().start()
    recipes = {e["base"]["name"]: e["base"] for e in map(_expected, KINDS) if e["base"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", hub.endpoint)
        mp.setenv("HF_HUB_CACHE", str(work / "hf-cache"))
        for name, recipe in recipes.items():
            if recipe["commit"] is None:
                _storage_base(recipe, work)
                continue
            commit = publish(hub.endpoint, name, _build_base(recipe, work / name.replace("/", "--")))
            assert commit == recipe["commit"], f"base {name} no longer rebuilds as recorded: {recipe}"
        yield recipes
    hub.stop()


def _evaluate_answers(folder: Path, inputs: dict[str, Any], max_new_tokens: int) -> list:
    import torch

    from freestack import version
    from freestack.ml.lm.answers import GenerationSettings
    from freestack.ml.lm.sampling import generate
    from freestack.ml.loop import to_tensors

    loaded = version.open(folder.as_uri()).load()  # what evaluate loads a candidate and its champion with
    model, pre = loaded.model, loaded.preprocessor
    if pre.task == "generation":
        chats = [pre.columns.with_system([{"role": "user", "content": p}]) for p in inputs["prompts"]]
        settings = GenerationSettings(max_new_tokens=max_new_tokens)
        return [
            answered(
                model.model, pre.tokenizer, c, generate(model.model, pre.tokenizer, [c], settings)[0].text
            )
            for c in chats
        ]
    with torch.no_grad():
        return model.predict_proba(to_tensors(pre.inputs(frame_of(folder, inputs)))).tolist()


def _server_answers(folder: Path, inputs: dict[str, Any], max_new_tokens: int) -> list:
    import numpy as np

    from freestack_server.core.model import ServedModel

    served = ServedModel(folder.as_uri(), max_batch_rows=64, torch_threads=1)
    try:
        served.load()
        if served.task == "generation":
            gen, texts = served.generator, []
            for p in inputs["prompts"]:
                chat, text = gen.chat(p, "prompt", messages=False)
                prompts = gen.prompts([chat], [text], gen.settings({"max_new_tokens": max_new_tokens}))
                texts += [
                    answered(gen.lm, gen.tokenizer, chat, a.completion.text)
                    for a in served.generate(prompts).answers
                ]
            return texts
        rows, names = inputs["rows"], inputs["features"]
        if served.takes_raw_values():  # records of raw values, images base64 (what a client sends)
            records = {"instances": [dict(zip(names, r, strict=True)) for r in rows]}
            return served.predict_rows(records).out.tolist()
        return served.predict_rows(np.asarray(rows, dtype=np.float64), names).out.tolist()
    finally:
        shutil.rmtree(served.cache_dir, ignore_errors=True)


def _score_answers(folder: Path, inputs: dict[str, Any]) -> list:
    """What the score stage's model (``ScoringModel``) answers for the rows as an Arrow batch (a version
    that predicts rows; score does not generate text)."""
    import pyarrow as pa

    from freestack.score.model import ScoringModel

    version = ScoringModel(folder.as_uri(), device="cpu")
    encoded, kept, refused = version.encode(pa.RecordBatch.from_pandas(frame_of(folder, inputs)))
    assert not refused and len(kept) == len(inputs["rows"]), refused
    return version.forward(encoded).tolist()


def _load_and_predict(kind_folder: Path) -> dict[str, list]:
    """Each of today's load paths' answers to the kind's recorded inputs: :func:`freestack.version.open`'s
    ``load()`` (what evaluate loads with), the model server's ``ServedModel`` and the score stage's model. The one place a version is loaded in this module."""
    expected = json.loads((kind_folder / "expected.json").read_text())
    folder, inputs, tokens = kind_folder / "version", expected["inputs"], expected["max_new_tokens"]
    answers = {
        "evaluate": _evaluate_answers(folder, inputs, tokens),
        "server": _server_answers(folder, inputs, tokens),
    }
    if "rows" in inputs:
        answers["score"] = _score_answers(folder, inputs)
    return answers


def _same(got: list, want: list) -> bool:
    """Probabilities within :data:`TOLERANCE`; generated text equal, with the same likeliest first tokens."""
    if want and isinstance(want[0], dict):
        return [g["text"] for g in got] == [w["text"] for w in want] and all(
            [i for i, _ in g["top"]] == [i for i, _ in w["top"]]
            and all(abs(a[1] - b[1]) <= LOGIT_TOLERANCE for a, b in zip(g["top"], w["top"], strict=True))
            for g, w in zip(got, want, strict=True)
        )
    return len(got) == len(want) and all(
        len(g) == len(w) and all(abs(a - b) <= TOLERANCE for a, b in zip(g, w, strict=True))
        for g, w in zip(got, want, strict=True)
    )


def test_every_kind_has_a_fixture():
    assert len(KINDS) >= 7, KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_an_earlier_version_answers_as_it_did(bases, kind):
    want = _expected(kind)["outputs"]
    for path, got in _load_and_predict(FIXTURES / kind).items():
        assert _same(got, want), f"{kind} through {path}: {got} != {want}"
