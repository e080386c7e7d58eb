"""``freestack demo``: land real digits, ingest them, sweep, evaluate, gate, register, promote, serve."""

from __future__ import annotations

import os
import sys
from datetime import UTC, date, datetime, timedelta

from freestack.cli.reports import gate_report, lake_report, serve_report, sweep_report, train_report
from freestack.embedded import airflow_env
from freestack.settings import checkout_dir

DEMO_START = date(2026, 11, 1)
DEMO_DAYS = 5
DEMO_AGENTS = 2


def _apply_env() -> None:
    for k, v in airflow_env().items():
        os.environ.setdefault(k, v)


def demo() -> int:
    _apply_env()
    sys.path.insert(0, str(checkout_dir() / "include"))
    from demo.landing import make_landing
    from freestack.ingest.core import lake_partitions
    from freestack.settings import default_storage_root
    from freestack.spec import load_spec, spec_file

    root = default_storage_root()
    print(f"storage root: {root}")
    # a second run lands the next days (new rows of the same digits) and retrains: champion vs challenger
    done = len(lake_partitions(load_spec(spec_file("digits"))))
    start = DEMO_START + timedelta(days=done)
    uris = make_landing(root, start, DEMO_DAYS, variant=done // DEMO_DAYS)
    print(f"landed {len(uris)} daily drops of real digits (with a few malformed rows each):")
    for u in uris:
        print(f"  {u}")

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        for path, err in bag.import_errors.items():
            print(f"DAG import error in {path}:\n{err}", file=sys.stderr)
        return 1
    dag = bag.get_dag("digits_ingest")
    failed = 0
    for k in range(DEMO_DAYS):
        day = start + timedelta(days=k)
        run = dag.test(logical_date=datetime(day.year, day.month, day.day, tzinfo=UTC))
        print(f"digits_ingest {day}: {run.state}")
        failed += run.state != "success"
    print()
    print(lake_report("digits"))
    if failed:
        return 1

    from freestack.runtime.pools import ensure_pool

    ensure_pool()  # the sweep agents' pool (dag.test runs them one after the other; `make up` in parallel)
    last = (start + timedelta(days=DEMO_DAYS - 1)).isoformat()
    run = bag.get_dag("digits_train").test(run_conf={"end_ds": last, "sweep_agents": DEMO_AGENTS})
    print(f"\ndigits_train up to {last}: {run.state}")
    if run.state != "success":
        return 1
    print(sweep_report("digits", run.run_id))
    print(train_report("digits", run.run_id))
    print(gate_report("digits", run.run_id))
    print(serve_report("digits"))
    if not done:
        print(
            "\nrun `make demo` again: it lands 5 more days, retrains, and compares the new model with this one"
        )
    return 0


__all__ = ["DEMO_AGENTS", "DEMO_DAYS", "DEMO_START", "demo"]
