"""The suite's time, kept down (a pytest plugin, loaded by tests/conftest.py).

- **A budget per test.** A test whose setup, call or teardown takes longer than ``--test-budget`` seconds
  (150 by default; 0 turns the check off) fails the run, named with its phase and time, after the tests
  have run. A module's shared fixture (a stack started once) counts in the setup of its first test.
- **Nothing collected only to be skipped.** ``make test`` installs everything, so a test skipped for any
  reason but one that names what no machine here has (a Kubernetes cluster, a GPU, a Hugging Face Hub
  account: see ``ALLOWED_SKIPS``) fails the run too (``--forbid-skips``, which ``make test`` passes).
- **The heaviest files first.** ``tests/durations.json`` holds each test file's seconds (setup, call and
  teardown of its tests, summed) from a whole run; the files are handed to the xdist workers longest
  first (``--dist loadfile --no-loadscope-reorder``), so the two workers end close together. A file not
  in it yet counts as heavy (it goes first). ``--store-durations`` rewrites the file from the run.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).resolve().parents[1] / "durations.json"
#: skip reasons that name what no machine here has; any other skip in `make test` is an install gap
ALLOWED_SKIPS = re.compile(
    r"no Kubernetes cluster|on the cluster of|needing what the sandbox lacks|no Hugging Face Hub account"
)
#: test phases allowed past the budget, each with its measured time and why: to be brought back under it,
#: never added to without both
_DOCS = "tests/e2e/test_docs_commands.py::test_every_documented_command_runs_as_printed"
OVER_BUDGET = {
    # the instruction-tuning tutorial's GRPO step: its check waits for the run it triggers (6 epochs of 16
    # answers sampled a prompt, the evaluation, the deploy): 193 s in a clean-clone run on 2 cores
    f"{_DOCS}[docs/tutorials/instruction-tune.md#10]": 240.0,
}
#: the cost given to a test file that ``tests/durations.json`` does not list yet
UNKNOWN_FILE_S = 10_000.0


def pytest_addoption(parser):
    group = parser.getgroup("freestack timing")
    group.addoption(
        "--test-budget",
        type=float,
        default=150.0,
        help="fail the run when a test's setup, call or teardown takes longer (seconds; 0: no budget)",
    )
    group.addoption(
        "--forbid-skips",
        action="store_true",
        help="fail the run when a test is skipped for a reason other than a cluster, a GPU or the Hub",
    )
    group.addoption(
        "--store-durations", action="store_true", help=f"write each file's seconds to {DURATIONS.name}"
    )


def scope_of(nodeid: str, groups: dict[str, str]) -> str:
    """The unit a worker runs whole: the test's file, or the group that file belongs to."""
    path = nodeid.split("::", 1)[0]
    return groups.get(path, path)


def order_by_cost(items: list, groups: dict[str, str]) -> None:
    """Reorder ``items`` in place: the costliest unit first, each unit's own order kept."""
    known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    units: dict[str, list] = defaultdict(list)
    for item in items:
        units[scope_of(item.nodeid, groups)].append(item)

    def cost(unit: str) -> float:
        files = {scope_of(i.nodeid, {}) for i in units[unit]}
        return sum(known.get(f, UNKNOWN_FILE_S) for f in files)

    items[:] = [i for unit in sorted(units, key=cost, reverse=True) for i in units[unit]]


class Timing:
    """Collects each phase's time from the reports (on the xdist controller: the workers send them)."""

    def __init__(self, config) -> None:
        self.budget = config.getoption("test_budget")
        self.forbid_skips = config.getoption("forbid_skips")
        self.store = config.getoption("store_durations")
        self.per_file: dict[str, float] = defaultdict(float)
        self.over: list[str] = []
        self.bad_skips: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        self.per_file[scope_of(report.nodeid, {})] += report.duration
        if self.budget and report.duration > OVER_BUDGET.get(report.nodeid, self.budget):
            self.over.append(f"{report.nodeid} ({report.when}): {report.duration:.1f} s")
        if report.skipped and self.forbid_skips and not hasattr(report, "wasxfail"):
            reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if not ALLOWED_SKIPS.search(reason):
                self.bad_skips.append(f"{report.nodeid}: {reason}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session) -> None:
        if self.store and self.per_file:
            known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
            known.update({f: round(s, 1) for f, s in self.per_file.items()})
            DURATIONS.write_text(json.dumps(dict(sorted(known.items())), indent=1) + "\n")
        if (self.over or self.bad_skips) and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.over:
            terminalreporter.section(f"over the {self.budget:g} s budget a test phase has", red=True)
            for line in self.over:
                terminalreporter.line(line)
        if self.bad_skips:
            terminalreporter.section("skipped, though `make test` installs what they need", red=True)
            for line in self.bad_skips:
                terminalreporter.line(line)


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) judges the run
        config.pluginmanager.register(Timing(config), "freestack-timing")
