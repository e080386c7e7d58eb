"""The custom import-linter contract types of tests/architecture.py on small import graphs."""

from __future__ import annotations

import grimp

from tests.architecture import StagePairsContract

STAGES = ["app.train", "app.sweeps", "app.registry"]


def graph(*imports: tuple[str, str]) -> grimp.ImportGraph:
    g = grimp.ImportGraph()
    for stage in STAGES:
        g.add_module(stage)
    for n, (importer, imported) in enumerate(imports, 1):
        g.add_import(importer=importer, imported=imported, line_number=n, line_contents=f"import {imported}")
    return g


def contract(*allowed: str) -> StagePairsContract:
    return StagePairsContract("ties", {}, {"stages": STAGES, "allowed": list(allowed)})


def test_allowed_ties_keep_the_contract_and_an_unused_one_is_a_warning():
    g = graph(("app.sweeps.core", "app.train.core"), ("app.train.window", "app.registry.core"))
    check = contract(
        "app.sweeps -> app.train", "app.train -> app.registry", "app.sweeps -> app.registry"
    ).check(g, verbose=False)
    assert check.kept
    assert check.warnings == ["app.sweeps -> app.registry is allowed but nothing imports across it: drop it"]


def test_an_import_no_tie_allows_breaks_it_naming_the_modules_and_lines():
    g = graph(("app.sweeps.core", "app.train.core"), ("app.train.window", "app.sweeps.spec"))
    check = contract("app.sweeps -> app.train").check(g, verbose=False)
    assert not check.kept
    assert check.metadata["unlisted"] == {
        ("app.train", "app.sweeps"): ["app.train.window -> app.sweeps.spec (l.2)"]
    }


def test_two_ties_both_ways_break_it_even_when_both_are_used():
    g = graph(("app.sweeps.core", "app.train.core"), ("app.train.window", "app.sweeps.spec"))
    check = contract("app.sweeps -> app.train", "app.train -> app.sweeps").check(g, verbose=False)
    assert not check.kept and check.metadata["both_ways"] == [("app.sweeps", "app.train")]


def test_imports_inside_one_stage_are_not_ties():
    g = graph(("app.train.window", "app.train.core"), ("app.train.core", "app"))
    assert contract().check(g, verbose=False).kept


def test_every_generic_ml_module_is_held_below_the_language_model_wing():
    """The ml-generic contract names its modules one by one: a new module of freestack.ml is generic (kept
    from freestack.ml.lm) unless it is the loader of every kind or the deprecated alias."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    contracts = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    held = set(next(c for c in contracts if c["id"] == "ml-generic")["source_modules"])
    modules = {f"freestack.ml.{p.stem}" for p in (root / "plugins/freestack/ml").glob("*.py")}
    above = {"freestack.ml.__init__", "freestack.ml.models", "freestack.ml.generation"}
    assert modules - above == held


def test_the_moved_generation_names_still_load_for_earlier_model_cards():
    """Model cards of versions registered before the language-model wing print
    ``from freestack.ml.generation import GenerationSettings, generate, load_tokenizer``: it still runs."""
    import importlib
    import sys

    import pytest

    sys.modules.pop("freestack.ml.generation", None)
    with pytest.warns(DeprecationWarning, match="freestack.ml.lm"):
        old = importlib.import_module("freestack.ml.generation")
    from freestack.ml.lm.answers import GenerationSettings
    from freestack.ml.lm.prompts import load_tokenizer
    from freestack.ml.lm.sampling import generate

    assert (old.GenerationSettings, old.generate, old.load_tokenizer) == (
        GenerationSettings,
        generate,
        load_tokenizer,
    )
