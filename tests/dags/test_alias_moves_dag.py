"""``<p>_rollback`` and ``<p>_promote`` runs that carry what the user saw (``expect_production``,
``expect``), through dag.test() against the real model server: a move that another move overtook
fails without a retry, naming that move, and changes nothing (its deploy never starts); one that was
not overtaken lands on the version it named and serves it."""

from __future__ import annotations

import pytest

from tests.dags.test_deploy_dag import _served, pipeline  # noqa: F401  (the digits pipeline with v1, v2)
from tests.dags.test_sweep_dag import _states
from tests.support.serving import make_version, needs_serving_env

pytestmark = [pytest.mark.usefixtures("airflow_db"), needs_serving_env]


def _refusal(operator, dag, **fields) -> str:
    """What the DAG's move task says when it refuses, for the form's ``fields``: its error, which ends its log."""
    from airflow.sdk.exceptions import AirflowFailException

    task = dag.get_task("move_production" if dag.dag_id.endswith("_rollback") else "move_alias")
    with pytest.raises(AirflowFailException) as got:
        operator(task_id=task.task_id, spec_path=task.spec_path, **fields).execute(
            {"run_id": "manual__asked"}
        )
    return str(got.value)


def test_a_rollback_overtaken_by_a_promotion_fails_naming_it_and_changes_nothing(pipeline, tmp_path):  # noqa: F811
    from freestack.registry.core import ModelRegistry
    from freestack.registry.operators import MoveAliasOperator, RollbackOperator
    from freestack.serving.local import stop_local

    root = pipeline["root"]
    make_version(root, "digits", "v3", tmp_path, seed=3, n_features=64, classes=tuple(range(10)))
    reg = ModelRegistry(root, "digits")
    reg.promote("v1")
    reg.promote("v2")  # production v2, previous v1: what the Models page showed when the user asked
    asked = {"version": "v1", "expect_production": "v2"}
    reg.promote(
        "v3", reason="a newer candidate", by="bob (manual__promote)"
    )  # lands before the rollback runs
    before = reg.aliases()
    rollback = pipeline["bag"].get_dag("digits_rollback")
    assert (
        rollback.params["expect_production"] is None
    )  # the form's field: empty unless the page or CLI fill it
    try:
        run = rollback.test(run_conf=asked)
        assert run.state == "failed"
        assert _states(run) == {"move_production": ["failed"], "deploy": ["upstream_failed"]}
        assert reg.aliases() == before  # not v1, and not "previous as it is now" (v2) either
        said = _refusal(RollbackOperator, rollback, **asked)
        assert said.startswith("production moved from v2 to v3 (promote to v3 by bob (manual__promote) at ")
        assert "after this rollback was asked; nothing was changed: ask again" in said

        promote = pipeline["bag"].get_dag("digits_promote")
        asked = {"version": "v1", "alias": "production", "expect": "v2"}
        run = promote.test(run_conf=asked)
        assert (
            run.state == "failed"
            and _states(run)["deploy"] == ["upstream_failed"]
            and reg.aliases() == before
        )
        assert _refusal(MoveAliasOperator, promote, **asked).startswith(
            "production moved from v2 to v3 (promote to v3 by bob"
        )

        # asked again from what is there now: it lands on the version it named, and that is served
        run = rollback.test(run_conf={"version": "v1", "expect_production": "v3"})
        assert run.state == "success"
        aliases = reg.aliases()
        assert (aliases["production"], aliases["previous"]) == ("v1", "v3")
        assert aliases["history"][-1]["action"] == "rollback" and aliases["history"][-1]["version"] == "v1"
        rec, now = _served(root)
        assert rec["version"] == "v1" and now["health"] == "ok"
    finally:
        stop_local(root, "digits", "digits")
