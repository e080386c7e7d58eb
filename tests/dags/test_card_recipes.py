"""Every model card's recipe runs as printed: for each kind of version freestack trains (the built-in net
on numeric columns; on category, text and image columns; a custom module; a Hub model fine-tuned in full
and with LoRA adapters), the Python blocks of the registered version's ``README.md`` run in a fresh
interpreter in the version's folder and print what freestack answers in-process; the card's settings list
holds only the ``model:`` fields that kind uses. An instruction-tuned LLM's recipes (freestack's, and plain
transformers + peft from the Hub) answer what its model server answers, system prompt included."""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.card_versions import (
    GENERATION,
    IMAGE_BASE,
    KINDS,
    LM_BASE,
    SYSTEM,
    TEXT_BASE,
    build_version,
)
from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]

#: the ``model:`` settings a card may list, per kind (beside type, task, name, features and hub_repo)
SETTINGS = {
    "numeric": {"image_shape", "channels", "dropout"},  # the demo's digits: a CNN over 64 pixel columns
    "encoded": {"hidden", "dropout", "channels", "category", "text", "image"},
    "custom": {"module", "class", "init"},
    "finetuned": {"base", "revision", "image"},
    "lora": {"base", "revision", "peft", "max_length"},
}
ALWAYS = {"type", "task", "name", "features", "hub_repo"}


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """``versions(kind)``: the folder of a registered version of ``kind``, built on first use (one per
    kind for the module), with the Hub stand-in serving the fine-tuned models' bases."""
    from tests.fakes.hub import FakeHub
    from tests.support.hf_tiny import publish, tiny_causal_lm, tiny_image_model, tiny_text_model

    hub = FakeHub().start()
    bases = tmp_path_factory.mktemp("bases")
    publish(hub.endpoint, TEXT_BASE, tiny_text_model(bases / "text"))
    publish(hub.endpoint, IMAGE_BASE, tiny_image_model(bases / "image"))
    built: dict[str, Path] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_ENDPOINT", hub.endpoint)

        def version(kind: str) -> Path:
            if kind == GENERATION and kind not in built:
                publish(hub.endpoint, LM_BASE, tiny_causal_lm(bases / "lm"))
            if kind not in built:
                base = tmp_path_factory.mktemp(kind)
                (base / "specs").mkdir()
                mp.setenv("FREESTACK_PIPELINES_DIR", str(base / "specs"))
                built[kind] = build_version(kind, base / "storage", base / "specs")
            return built[kind]

        version.hub = hub
        yield version
    hub.stop()


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def in_process(folder: Path, rows: int = 4) -> list[list[float]]:
    """What freestack answers for the card's example rows (the evaluation's smoke sample), computed here."""
    import torch

    from freestack.ml.features import load_encoder
    from freestack.ml.models import load_pretrained

    sample = json.loads((folder / "evaluation" / "smoke.json").read_text())
    model, encoder = load_pretrained(folder), load_encoder(folder)
    if encoder is None:
        x = torch.tensor(sample["rows"][:rows], dtype=torch.float32)
    else:
        kinds = dict(encoder.columns)
        columns = {f: [r[i] for r in sample["rows"][:rows]] for i, f in enumerate(sample["features"])}
        columns = {
            f: [base64.b64decode(v) for v in vs] if kinds[f] == "image" else vs for f, vs in columns.items()
        }
        x = {g: torch.as_tensor(v) for g, v in encoder.encode(columns).items()}
    return model.predict_proba(x).tolist()


def close(got: list[list[float]], want: list[list[float]], tol: float = 1e-5) -> bool:
    return len(got) == len(want) and all(
        abs(a - b) < tol for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)
    )


def run(code: str, cwd: Path, python: str = sys.executable) -> list[str]:
    """Run ``code`` in a fresh interpreter in ``cwd`` (nothing of the test's path); its stdout lines."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"the card's recipe failed:\n{code}\n{out.stderr[-3000:]}"
    return out.stdout.strip().splitlines()


@pytest.mark.parametrize("kind", KINDS)
def test_the_cards_recipe_prints_what_freestack_answers(versions, kind):
    folder = versions(kind)
    card = (folder / "README.md").read_text()
    recipe = python_blocks(card)[0]
    assert 'folder = "."' in recipe and "load_pretrained(folder)" in recipe, recipe
    assert ("load_encoder(folder)" in recipe) == (kind not in ("numeric", "custom")), recipe
    printed = run(recipe, folder)
    proba, labels = ast.literal_eval(printed[-2]), ast.literal_eval(printed[-1])
    want = in_process(folder)
    assert close(proba, want), (proba, want)
    sample = json.loads((folder / "evaluation" / "smoke.json").read_text())
    assert close(proba, sample["outputs"][:4], 1e-4)  # what the evaluation computed from the lake's rows
    classes = sample["classes"]
    assert [str(label) for label in labels] == [classes[max(range(len(p)), key=p.__getitem__)] for p in proba]


@pytest.mark.parametrize("kind", KINDS)
def test_the_cards_settings_are_the_ones_its_kind_uses(versions, kind):
    card = (versions(kind) / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    model = front["freestack"]["train_config"]["model"]
    assert set(model) <= ALWAYS | SETTINGS[kind], sorted(set(model) - ALWAYS - SETTINGS[kind])
    assert None not in model.values()
    used = {
        "numeric": {"image_shape", "channels"},
        "encoded": {"hidden", "category", "text", "image"},
        "custom": {"module", "class", "init"},
        "finetuned": {"base"},
        "lora": {"base", "peft"},
    }[kind]
    assert used <= set(model), model


@needs_serving_env
@pytest.mark.parametrize("kind", ["finetuned", "lora"])
def test_the_plain_transformers_recipe_runs_from_the_hub(versions, kind):
    """The card's second block, with ``<repo>`` the repo the version was pushed to, runs where freestack is
    not installed (the serving environment) and, for text, prints what freestack answers."""
    import torch

    from freestack.ml.features import load_encoder
    from freestack.ml.models import load_pretrained
    from freestack.registry.core import ModelRegistry
    from freestack.registry.hub import push_to_hub

    folder = versions(kind)
    hub = versions.hub
    reg = ModelRegistry(folder.parents[2].as_uri(), folder.parent.name)
    repo = f"team/cards-{kind}"
    push_to_hub(reg, folder.name, repo, "hf_fake", endpoint=hub.endpoint)
    blocks = python_blocks((folder / "README.md").read_text())
    assert len(blocks) == 2 and "<repo>" in blocks[1] and "freestack" not in blocks[1], blocks
    python = os.environ.get("FREESTACK_SERVING_PYTHON") or str(ROOT / ".venv-serving" / "bin" / "python")
    printed = run(blocks[1].replace("<repo>", repo), Path("/"), python)
    if kind == "lora":
        batch = load_encoder(folder).encode({"review": ["some text"]})
        want = (
            load_pretrained(folder).predict_proba({g: torch.as_tensor(v) for g, v in batch.items()}).tolist()
        )
        assert close(ast.literal_eval(printed[-1]), want), (printed, want)


@needs_serving_env
def test_an_llm_cards_recipes_answer_what_its_server_answers(versions, tmp_path):
    """The version was trained, and is served, with a system prompt (``model.data.system``): the card's
    freestack recipe (the evaluation's smoke chats) and its plain transformers + peft recipe from the Hub
    (the user's instruction in place of ``your instruction``) answer what the real model server answers."""
    from freestack.registry.core import ModelRegistry
    from freestack.registry.hub import push_to_hub
    from freestack.serving.smoke import http_json
    from tests.support.images import start_like_image

    folder = versions(GENERATION)
    sample = json.loads((folder / "evaluation" / "smoke.json").read_text())
    assert all(chat[0] == {"role": "system", "content": SYSTEM} for chat in sample["chats"]), sample["chats"]
    blocks = python_blocks((folder / "README.md").read_text())
    assert len(blocks) == 2, blocks
    prompts = [
        chat[-1]["content"] for chat in sample["chats"][:4]
    ]  # what a client sends: the system is the server's
    recipe_tokens = int(re.search(r"max_new_tokens=(\d+)", blocks[1]).group(1))

    server = start_like_image(
        "seldon",
        folder.as_uri(),
        tmp_path / "seldon",
        env={"FREESTACK_MODEL_NAME": "chat"},
        ready_path="/health/status",
        timeout=180,
    )
    try:

        def served(prompt: str, tokens: int) -> str:
            code, body = http_json(
                f"{server.url}/api/v1.0/predictions",
                {
                    "jsonData": {
                        "messages": [{"role": "user", "content": prompt}],
                        "parameters": {"max_new_tokens": tokens},
                    }
                },
            )
            assert code == 200, body
            return body["jsonData"]["completions"][0]["text"]

        smoke = [served(p, sample["max_new_tokens"]) for p in prompts]
        plain = [served(p, recipe_tokens) for p in prompts[:3]]
    finally:
        server.stop()
    printed = run(blocks[0], folder)
    assert [line.rsplit(" ", 1)[0].strip() for line in printed[-4:]] == [s.strip() for s in smoke], (
        printed,
        smoke,
    )

    reg = ModelRegistry(folder.parents[2].as_uri(), folder.parent.name)
    push_to_hub(reg, folder.name, "team/cards-chat", "hf_fake", endpoint=versions.hub.endpoint)
    python = os.environ.get("FREESTACK_SERVING_PYTHON") or str(ROOT / ".venv-serving" / "bin" / "python")
    for prompt, want in zip(prompts[:3], plain, strict=True):
        code = blocks[1].replace("<repo>", "team/cards-chat").replace('"your instruction"', repr(prompt))
        printed = run(code, Path("/"), python)
        assert (printed[-1].strip() if printed else "") == want.strip(), (prompt, printed, want)
    assert f"system = {SYSTEM!r}" in blocks[1], blocks[1]  # the system prompt, as the recipe's reader sees it
