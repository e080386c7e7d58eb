"""freestack.runtime.scheduler_wakeup: the scheduler loop's idle sleep ends when a LocalExecutor worker reports a task."""

from __future__ import annotations

import threading
import time
from multiprocessing import SimpleQueue

import pytest
from sqlalchemy import create_engine, text

from freestack.runtime import scheduler_wakeup as wake


def _no_database():
    """An engine whose database has none of Airflow's tables: the work query fails, no polling."""
    return create_engine("sqlite://")


def _metadata(tmp_path):
    """A database with the three tables the work query reads (the columns it reads)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE dag_run (id INTEGER PRIMARY KEY, state TEXT)"))
        conn.execute(text("CREATE TABLE task_instance (id TEXT PRIMARY KEY, state TEXT)"))
        conn.execute(text("CREATE TABLE asset_event (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO dag_run (state) VALUES ('success')"))
        conn.execute(text("INSERT INTO task_instance VALUES ('a', 'scheduled')"))  # waiting for a pool slot
    return engine


def _later(engine, after: float, sql: str) -> threading.Thread:
    def run() -> None:
        time.sleep(after)
        with engine.begin() as conn:
            conn.execute(text(sql))

    t = threading.Thread(target=run)
    t.start()
    return t


class _Executor:
    def __init__(self) -> None:
        self.result_queue = SimpleQueue()


class _Runner:
    """Stands in for SchedulerJobRunner: the clock looks at the caller's method name and its executors."""

    def __init__(self, executors, engine=None) -> None:
        self.executors = executors
        self.clock = wake.SchedulerClock(engine if engine is not None else _no_database(), poll_s=0.05)

    def _run_scheduler_loop(self, seconds: float) -> float:
        t0 = time.monotonic()
        self.clock.sleep(seconds)
        return time.monotonic() - t0

    def other_method(self, seconds: float) -> float:
        t0 = time.monotonic()
        self.clock.sleep(seconds)
        return time.monotonic() - t0


def _report_later(executor: _Executor, after: float) -> threading.Thread:
    t = threading.Thread(
        target=lambda: (time.sleep(after), executor.result_queue.put(("key", "success", None)))
    )
    t.start()
    return t


def test_the_idle_sleep_ends_when_a_worker_reports_a_task():
    ex = _Executor()
    runner = _Runner([ex])
    t = _report_later(ex, 0.2)
    took = runner._run_scheduler_loop(10)
    t.join()
    assert 0.15 <= took < 5
    # nothing was read: the executor reads the report in its next loop, as without the clock
    assert ex.result_queue.get() == ("key", "success", None)


def test_with_nothing_to_report_the_sleep_lasts_as_long_as_asked():
    runner = _Runner([_Executor()])
    assert runner._run_scheduler_loop(0.3) >= 0.29


def test_only_the_scheduler_loop_wakes_early():
    ex = _Executor()
    ex.result_queue.put(("key", "running", None))  # pending: the loop's sleep would return at once
    runner = _Runner([ex])
    assert runner._run_scheduler_loop(5) < 1
    assert runner.other_method(0.3) >= 0.29


def test_executors_without_a_result_pipe_keep_the_plain_sleep():
    class Celery:  # no result_queue
        pass

    runner = _Runner([Celery()])
    assert wake.result_readers(runner) == []
    assert runner._run_scheduler_loop(0.3) >= 0.29
    ex = _Executor()
    ex.result_queue.close()  # an executor that has ended
    assert wake.result_readers(_Runner([ex])) == []


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO dag_run (state) VALUES ('queued')",  # a run triggered from the UI, API or CLI
        "INSERT INTO task_instance VALUES ('b', 'scheduled')",  # a deferred task resumed
        "INSERT INTO asset_event (id) VALUES (7)",  # an asset updated: asset-scheduled runs follow
    ],
)
def test_the_idle_sleep_ends_when_new_work_appears_in_the_database(tmp_path, sql):
    engine = _metadata(tmp_path)
    runner = _Runner([], engine)  # no result pipe (Celery, Kubernetes): the query alone
    t = _later(engine, 0.3, sql)
    took = runner._run_scheduler_loop(10)
    t.join()
    assert 0.25 <= took < 5


def test_work_that_came_while_the_loop_ran_means_no_sleep(tmp_path):
    """A run triggered after the loop looked for runs but before it went to sleep is not left for the
    whole idle sleep: the sleep compares with what the previous sleep ended with."""
    engine = _metadata(tmp_path)
    runner = _Runner([], engine)
    runner._run_scheduler_loop(0.05)  # the previous idle sleep
    with engine.begin() as conn:  # ...then, during the loop, a run is triggered
        conn.execute(text("INSERT INTO dag_run (state) VALUES ('queued')"))
    assert runner._run_scheduler_loop(10) < 1
    assert runner._run_scheduler_loop(0.3) >= 0.29  # nothing new since: a full sleep


def test_work_that_only_shrinks_or_stays_does_not_wake_it(tmp_path):
    engine = _metadata(tmp_path)
    runner = _Runner([], engine)
    t = _later(engine, 0.1, "UPDATE task_instance SET state = 'queued'")  # the scheduler's own doing
    assert runner._run_scheduler_loop(0.6) >= 0.59
    t.join()
    before = wake.work_signature(engine)
    assert before == (1, 0, 0, 0)
    assert not wake.more_work(before, before) and not wake.more_work(None, (9, 9, 9, 9))
    assert wake.more_work(before, (1, 1, 0, 0)) and not wake.more_work((1, 1, 0, 0), before)
    assert wake.more_work((1, 0, 0, 2), (1, 0, 0, 1))  # a task ended: fewer running is news too


def test_a_task_ending_wakes_it_through_the_database(tmp_path):
    """Celery and Kubernetes workers report only through the database: a running task that succeeds
    ends the sleep, as the LocalExecutor's pipe does."""
    engine = _metadata(tmp_path)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO task_instance VALUES ('r', 'running')"))
    runner = _Runner([], engine)
    t = _later(engine, 0.3, "UPDATE task_instance SET state = 'success' WHERE id = 'r'")
    took = runner._run_scheduler_loop(10)
    t.join()
    assert 0.25 <= took < 5


def test_an_unreadable_database_means_the_plain_sleep(tmp_path):
    assert wake.work_signature(_no_database()) is None
    assert wake.work_signature(None) is None
    runner = _Runner([], _no_database())
    assert runner._run_scheduler_loop(0.3) >= 0.29


def test_everything_else_is_the_time_module():
    clock = wake.SchedulerClock()
    assert clock.monotonic is time.monotonic
    assert abs(clock.time() - time.time()) < 1


def test_install_replaces_time_in_the_scheduler_module_once(monkeypatch):
    import airflow.jobs.scheduler_job_runner as scheduler

    monkeypatch.setattr(scheduler, "time", time)
    assert wake.install()
    clock = scheduler.time
    assert isinstance(clock, wake.SchedulerClock)
    assert wake.install() and scheduler.time is clock
    # the loop this relies on is still the one that sleeps when idle
    import inspect

    source = inspect.getsource(scheduler.SchedulerJobRunner._run_scheduler_loop)
    assert "time.sleep(" in source and "idle" in source


@pytest.mark.parametrize(
    "speedups,value,on",
    [
        ("1", "0", False),
        ("1", "off", False),
        ("1", "1", True),
        ("1", None, True),
        ("0", "1", False),
        (None, "1", False),
    ],
)
def test_the_switches(monkeypatch, speedups, value, on):
    """On only with the runtime wing's speed-ups (FREESTACK_SPEEDUPS), and then unless turned off alone."""
    for name, v in (("FREESTACK_SPEEDUPS", speedups), ("FREESTACK_SCHEDULER_WAKE", value)):
        if v is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, v)
    assert wake.enabled() is on


def test_the_listener_installs_only_in_the_scheduler(monkeypatch):
    import airflow.jobs.scheduler_job_runner as scheduler

    monkeypatch.setattr(scheduler, "time", time)
    monkeypatch.setenv("FREESTACK_SPEEDUPS", "1")
    monkeypatch.delenv("FREESTACK_SCHEDULER_WAKE", raising=False)

    class Job:
        pass

    monkeypatch.setattr("sys.argv", ["/x/bin/airflow", "dag-processor"])
    wake.wake_listener.on_starting(Job())
    assert scheduler.time is time
    monkeypatch.setattr("sys.argv", ["/x/bin/airflow", "scheduler"])
    monkeypatch.setenv("FREESTACK_SCHEDULER_WAKE", "0")
    wake.wake_listener.on_starting(Job())
    assert scheduler.time is time
    monkeypatch.delenv("FREESTACK_SCHEDULER_WAKE")
    monkeypatch.setenv("FREESTACK_SPEEDUPS", "0")
    wake.wake_listener.on_starting(Job())
    assert scheduler.time is time
    monkeypatch.setenv("FREESTACK_SPEEDUPS", "1")
    wake.wake_listener.on_starting(Job())
    assert isinstance(scheduler.time, wake.SchedulerClock)


def test_another_airflow_version_keeps_the_stock_sleep(monkeypatch, caplog):
    """On an Airflow the wake-up was not written for, the listener changes nothing and says so once."""
    import logging

    import airflow.jobs.scheduler_job_runner as scheduler

    from freestack import runtime

    monkeypatch.setattr(scheduler, "time", time)
    monkeypatch.setenv("FREESTACK_SPEEDUPS", "1")
    monkeypatch.setattr("sys.argv", ["/x/bin/airflow", "scheduler"])
    monkeypatch.setattr(runtime, "airflow_version", lambda: "3.4.0")
    monkeypatch.setattr(runtime, "_warned", set())

    class Job:
        pass

    with caplog.at_level(logging.WARNING, logger="freestack.runtime"):
        wake.wake_listener.on_starting(Job())
        wake.wake_listener.on_starting(Job())
    assert scheduler.time is time
    warnings = [r.getMessage() for r in caplog.records if "written for Airflow" in r.getMessage()]
    assert warnings == [
        "freestack: the scheduler wake-up was written for Airflow 3.3; Airflow 3.4.0 runs without it "
        "(stock behaviour)"
    ]


def test_the_work_query_reads_airflows_own_schema(airflow_db):
    """The query names tables and columns of the migrated Airflow metadata database, as it is."""
    signature = wake.work_signature(create_engine(f"sqlite:///{airflow_db / 'airflow.db'}"))
    assert signature is not None and len(signature) == 4 and all(v >= 0 for v in signature)


def test_the_pool_listener_names_the_command_on_another_airflow(monkeypatch, caplog):
    """Creating the sweep pool goes through Airflow's ORM: on a version it was not written for, nothing is
    touched and the log says which public command creates the pool."""
    import logging

    from freestack import runtime
    from freestack.runtime.pools import pool_listener

    monkeypatch.setattr(runtime, "airflow_version", lambda: "4.0.0")
    monkeypatch.setattr(runtime, "_warned", set())
    monkeypatch.setattr(
        "freestack.runtime.pools.ensure_pool", lambda *a, **k: pytest.fail("ensure_pool was called")
    )

    class Job:
        pass

    with caplog.at_level(logging.WARNING):
        pool_listener.on_starting(Job())
    assert "airflow pools set freestack_sweep" in caplog.text
