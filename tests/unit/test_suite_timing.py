"""The suite's guard on its own time (tests/support/timing.py), run on small suites of its own: a test
phase over the budget fails the run and is named; a skip for want of an install fails `make test`, one
for want of a cluster does not; the costliest file is handed out first."""

from __future__ import annotations

import json

from tests.support import timing

SLOW = """
import time

def test_slow():
    time.sleep(0.6)

def test_fast():
    pass
"""

SKIPS = """
import pytest

def test_needs_the_serving_env():
    pytest.skip("the serving environment is missing: run `make serving-venv`")

def test_needs_a_cluster():
    pytest.skip("no kubeconfig: no Kubernetes cluster to test against")
"""


def test_a_test_phase_over_the_budget_fails_the_run_and_is_named(pytester):
    pytester.makepyfile(test_slow=SLOW)
    result = pytester.runpytest("-p", "tests.support.timing", "--test-budget", "0.3")
    result.assert_outcomes(passed=2)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*over the 0.3 s budget a test phase has*", "test_slow.py::test_slow (call): 0.6 s"]
    )
    assert "test_fast" not in result.stdout.str().split("budget a test phase has", 1)[1]
    assert pytester.runpytest("-p", "tests.support.timing", "--test-budget", "5").ret == 0


def test_a_skip_for_want_of_an_install_fails_the_run_and_one_for_want_of_a_cluster_does_not(pytester):
    pytester.makepyfile(test_skips=SKIPS)
    result = pytester.runpytest("-p", "tests.support.timing", "--forbid-skips")
    result.assert_outcomes(skipped=2)
    assert result.ret == 1
    out = result.stdout.str().split("skipped, though `make test` installs what they need", 1)[1]
    assert "test_needs_the_serving_env" in out and "make serving-venv" in out
    assert "test_needs_a_cluster" not in out
    assert pytester.runpytest("-p", "tests.support.timing").ret == 0  # without the flag: skips as usual


def test_the_costliest_unit_goes_first_and_keeps_its_own_order(monkeypatch, tmp_path):
    known = {"tests/a.py": 5.0, "tests/b.py": 50.0, "tests/c1.py": 30.0, "tests/c2.py": 30.0}
    (tmp_path / "durations.json").write_text(json.dumps(known))
    monkeypatch.setattr(timing, "DURATIONS", tmp_path / "durations.json")

    class Item:
        def __init__(self, nodeid: str) -> None:
            self.nodeid = nodeid

    ids = ["tests/a.py::t", "tests/c2.py::t2", "tests/b.py::t", "tests/c1.py::t1", "tests/new.py::t"]
    items = [Item(i) for i in ids]
    timing.order_by_cost(items, {"tests/c1.py": "group", "tests/c2.py": "group"})
    # a file the durations do not know yet first, then the group (60 s, its own order), b, a
    assert [i.nodeid for i in items] == [
        "tests/new.py::t",
        "tests/c2.py::t2",
        "tests/c1.py::t1",
        "tests/b.py::t",
        "tests/a.py::t",
    ]
