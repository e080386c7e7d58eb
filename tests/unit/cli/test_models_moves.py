"""``freestack models rollback/promote/alias PIPELINE`` start the pipeline's DAG run with what the user
asked from: a rollback names the version ``previous`` is now (not whatever it is when the run's task
starts) and the production it replaces; a promotion what the alias is now. The run itself is
tests/dags/test_alias_moves_dag.py's; here Airflow's side (``run_and_follow``) records the run's form."""

from __future__ import annotations

import pytest

from bench.ui.volume import make_registry


@pytest.fixture
def started(storage, monkeypatch):
    from freestack.cli import actions

    runs: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        actions, "run_and_follow", lambda dag_id, conf, note, timeout: runs.append((dag_id, conf)) or 0
    )
    return runs


def test_the_cli_names_the_version_and_what_production_is_as_asked(storage, started, capsys):
    from freestack.cli import main

    names = make_registry(storage, "digits", 4)  # production, previous, staging: the newest three
    assert main(["models", "rollback", "digits"]) == 0
    assert started[-1] == ("digits_rollback", {"version": names[-2], "expect_production": names[-1]})
    assert f"rolling back production from {names[-1]} to {names[-2]}" in " ".join(
        capsys.readouterr().out.split()
    )
    assert main(["models", "promote", "digits", names[0], "--reason", "by hand"]) == 0
    assert started[-1] == (
        "digits_promote",
        {"version": names[0], "alias": "production", "reason": "by hand", "expect": names[-1]},
    )
    assert main(["models", "alias", "digits", "staging", names[0]]) == 0
    assert started[-1][1]["expect"] == names[-3]


def test_a_rollback_without_a_previous_version_is_refused_before_any_run(storage, started, capsys, tmp_path):
    from freestack.cli import main

    make_registry(storage, "digits", 1)
    assert main(["models", "rollback", "digits"]) == 1
    said = capsys.readouterr().err
    assert (
        "digits has no previous version to roll back to" in said and "freestack models promote digits" in said
    )
    assert started == []
