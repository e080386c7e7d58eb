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
