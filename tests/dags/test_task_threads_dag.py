"""Every torch task sizes torch's CPU pool from FREESTACK_TASK_THREADS under dag.test(): train (the
version records the pool it trained with), evaluate and score say it in their logs; the ranks of a
distributed training share the task's threads."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import torch

from tests.dags.test_sweep_dag import _states
from tests.dags.test_train_dag import ROOT, lake  # noqa: F401  (the five-day digits lake fixture)
from tests.support.runs import dags_with

pytestmark = pytest.mark.usefixtures("airflow_db")
LINE = "torch computes on {n} CPU thread(s) in this task: FREESTACK_TASK_THREADS"


@pytest.fixture
def pool():
    """torch's pool of this process (dag.test runs the tasks in it) as it was before the test."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def _bag(lake, **train):  # noqa: F811
    return dags_with(lake["specs"], "train", train, merge=True)


def _metrics(lake, run_id: str) -> dict:  # noqa: F811
    for p in (lake["root"] / "registry" / "digits").glob("*/lineage.json"):
        if json.loads(p.read_text())["airflow"]["run_id"] == run_id:
            return json.loads((p.parent / "metrics.json").read_text())
    raise AssertionError(f"no version for {run_id}")


def test_train_evaluate_and_score_compute_on_the_configured_pool(lake, pool, monkeypatch, capfd):  # noqa: F811
    threads = pool + 1  # neither torch's own size nor the worker's share on this machine
    monkeypatch.setenv("FREESTACK_TASK_THREADS", str(threads))
    bag = _bag(lake, epochs=6)
    run = bag.get_dag("digits_train").test(run_conf={"end_ds": "2026-11-05", "sweep": False})
    assert run.state == "success"
    assert _metrics(lake, run.run_id)["train"]["threads"] == threads  # torch's pool inside the training
    scored = bag.get_dag("digits_score").test(logical_date=datetime(2026, 11, 3, tzinfo=UTC))
    assert _states(scored) == {"plan": ["success"], "score": ["success"]}
    said = capfd.readouterr()
    assert (said.out + said.err).count(LINE.format(n=threads)) == 3, "train, evaluate and score each size it"


@pytest.mark.slow
def test_two_ranks_share_the_train_tasks_threads(lake, pool, monkeypatch):  # noqa: F811
    monkeypatch.setenv("FREESTACK_TASK_THREADS", "6")
    bag = _bag(lake, epochs=2, distributed={"processes_per_node": 2})
    run = bag.get_dag("digits_train").test(run_conf={"end_ds": "2026-11-05", "sweep": False})
    assert run.state == "success"
    metrics = _metrics(lake, run.run_id)
    assert metrics["train"]["world_size"] == 2 and metrics["train"]["threads"] == 3  # 6 threads for 2 ranks
