"""torch's CPU pool in a task: FREESTACK_TASK_THREADS, else the worker's cores shared out among its task
slots; a distributed training's ranks share the task's threads; the pool is sized in torch itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from freestack.ml.threads import cores, share
from freestack.pipeline_operator import task_threads, worker_slots
from freestack.settings import SettingsError, settings

DIGITS = Path(__file__).resolve().parents[2] / "include" / "pipelines" / "digits.yaml"


def test_the_setting_is_unset_by_default_and_refuses_what_is_not_a_thread_count(monkeypatch):
    monkeypatch.delenv("FREESTACK_TASK_THREADS", raising=False)
    assert settings().task_threads is None
    monkeypatch.setenv("FREESTACK_TASK_THREADS", " 3 ")
    assert settings().task_threads == 3
    monkeypatch.setenv("FREESTACK_TASK_THREADS", "0")
    with pytest.raises(
        SettingsError, match=r"FREESTACK_TASK_THREADS='0': Input should be greater than or equal to 1"
    ):
        settings()
    monkeypatch.setenv("FREESTACK_TASK_THREADS", "all")
    with pytest.raises(SettingsError, match=r"FREESTACK_TASK_THREADS='all': Input should be a valid integer"):
        settings()


def test_the_setting_wins_over_the_workers_share(monkeypatch):
    monkeypatch.setenv("FREESTACK_TASK_THREADS", "5")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "1")
    assert task_threads() == (5, "FREESTACK_TASK_THREADS")


@pytest.mark.parametrize(
    "executor, variables, slots",
    [
        ("LocalExecutor", {"AIRFLOW__CORE__PARALLELISM": "1"}, 1),
        ("LocalExecutor", {"AIRFLOW__CORE__PARALLELISM": "64"}, 64),
        (
            "CeleryExecutor",
            {"AIRFLOW__CELERY__WORKER_CONCURRENCY": "2", "AIRFLOW__CORE__PARALLELISM": "64"},
            2,
        ),
        ("airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor", {}, 1),
    ],
)
def test_by_default_the_cores_are_shared_out_among_the_workers_task_slots(
    monkeypatch, executor, variables, slots
):
    monkeypatch.delenv("FREESTACK_TASK_THREADS", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert worker_slots()[0] == slots
    threads, why = task_threads()
    assert threads == max(1, cores() // slots)
    assert f"{cores()} core(s) shared by {slots} task slot(s)" in why and "FREESTACK_TASK_THREADS" in why


def test_a_share_is_at_least_one_thread():
    assert share(2, 32) == 1 and share(16, 4) == 4 and share(3, 2) == 1 and share(8, 0) == 8


def test_ranks_share_the_tasks_threads_unless_the_spec_sets_theirs():
    import yaml

    from freestack.spec import spec_from_text
    from freestack.train.distributed import rank_threads

    digits = yaml.safe_load(DIGITS.read_text())

    def spec(**distributed):
        data = {**digits, "train": {**digits["train"], "distributed": distributed}}
        return spec_from_text(yaml.safe_dump(data), DIGITS)

    assert rank_threads(spec(processes_per_node=2), 6) == 3
    assert rank_threads(spec(processes_per_node=4), 2) == 1
    assert rank_threads(spec(processes_per_node=2, threads_per_process=5), 6) == 5
    assert rank_threads(spec(processes_per_node=2)) == max(1, cores() // 2)


def _child(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_size_pool_sets_both_of_torchs_pools_in_a_fresh_process():
    got = _child(
        "import json, torch\n"
        "from freestack.ml.threads import size_pool\n"
        "n = size_pool(3)\n"
        "print(json.dumps([n, torch.get_num_threads(), torch.get_num_interop_threads()]))\n"
    )
    assert got == [3, 3, 3]


def test_size_pool_in_a_process_that_computed_already_sizes_the_intra_op_pool():
    """torch refuses a new inter-op pool once it has run work; the intra-op pool is still sized."""
    got = _child(
        "import json, torch\n"
        "torch.set_num_interop_threads(1)\n"  # as a process whose inter-op pool is fixed already
        "from freestack.ml.threads import size_pool\n"
        "print(json.dumps([size_pool(3), torch.get_num_threads(), torch.get_num_interop_threads()]))\n"
    )
    assert got == [3, 3, 1]
