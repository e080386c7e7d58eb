"""The demo pipeline without an orchestrator: the same stage code, called in order in one plain process.

The baseline of ``bench/orchestration``. It calls the very ``execute`` (or ``choose_branch``) of every
operator the scheduler runs, taken from the same DAG objects, with a small in-memory context: a task
instance whose XComs live in a dict, the DAG's Params with the run's conf, the run's ``ds``. Nothing
of Airflow's scheduling, database, task processes or logs is involved. Stages run in the DAG's order;
the sweep agents run at once, as the scheduler runs them (one forked process each), so that the
comparison is of orchestration cost and not of parallelism. Like the scheduler (``freestack.runtime.preload``),
the process imports the libraries before the clock starts; the agents inherit them.

    from bench.orchestration.plain import run_pipeline
    timings = run_pipeline(dags_folder, days=[...], end_ds=..., agents=2)
"""

from __future__ import annotations

import multiprocessing as mp
import time
from datetime import UTC, datetime, timedelta
from typing import Any


class PlainTI:
    """What the operators use of a task instance: ids, try number and XComs (a shared dict)."""

    def __init__(self, store: dict, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> None:
        self.store, self.dag_id, self.run_id, self.task_id, self.map_index = (
            store,
            dag_id,
            run_id,
            task_id,
            map_index,
        )
        self.try_number = 1

    def xcom_push(self, key: str, value: Any) -> None:
        self.store[(self.task_id, key)] = value

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self.store.get((task_ids or self.task_id, key))

    @staticmethod
    def get_dr_count(**_: Any) -> int:
        return 0  # the window task's wait: the plain run ingests first, in order, so no ingest run is active


class PlainRun:
    def __init__(self, logical: datetime, conf: dict[str, Any]) -> None:
        self.data_interval_start = logical
        self.data_interval_end = logical + timedelta(days=1)
        self.logical_date = logical
        self.conf = conf


def _context(
    ti: PlainTI, params: dict[str, Any], logical: datetime, conf: dict[str, Any], dag: Any = None
) -> dict[str, Any]:
    return {
        "ti": ti,
        "task_instance": ti,
        "params": params,
        "ds": logical.strftime("%Y-%m-%d"),
        "dag": dag,
        "dag_run": PlainRun(logical, conf),
        "run_id": ti.run_id,
        "logical_date": logical,
        "triggering_asset_events": {},
        "outlet_events": None,
    }


def _agent(
    spec_path: str,
    kwargs: dict[str, Any],
    run_id: str,
    params: dict[str, Any],
    logical: datetime,
    conf: dict[str, Any],
    out,
) -> None:
    from freestack.sweeps.operators import SweepAgentOperator

    op = SweepAgentOperator(task_id="agent", spec_path=spec_path, **kwargs)
    store: dict = {}
    ti = PlainTI(store, "plain_train", run_id, "agent", kwargs.get("agent_index", 0))
    out.put(op.execute(_context(ti, params, logical, conf)))


def run_pipeline(
    dags: dict[str, Any], pipeline: str, days: list[str], end_ds: str, agents: int, run_id: str | None = None
) -> dict[str, Any]:
    """Run ingest for ``days``, then the train DAG's path (sweep, evaluate, gate, promote, deploy), and
    return the wall time of each stage and of the whole. ``run_id``: the train run's id, which seeds
    the sweep's proposals (give the scheduler's run id for the very same trials)."""
    stages: list[dict[str, Any]] = []
    t_all = time.perf_counter()

    def timed(name: str, fn):
        t0 = time.perf_counter()
        result = fn()
        stages.append({"stage": name, "seconds": round(time.perf_counter() - t0, 3)})
        return result

    ingest = dags[f"{pipeline}_ingest"].get_task("ingest")
    for ds in days:
        logical = datetime.fromisoformat(ds).replace(tzinfo=UTC)
        ingest.ds = ds  # the rendered template
        ti = PlainTI({}, ingest.dag_id, f"plain__{ds}", "ingest")
        timed(
            f"ingest {ds}",
            lambda ti=ti, logical=logical: ingest.execute(_context(ti, {}, logical, {}, ingest.dag)),
        )

    dag = dags[f"{pipeline}_train"]
    conf = {"end_ds": end_ds, "sweep_agents": agents}
    params = {k: dag.params[k] for k in dag.params}
    params.update(conf)
    logical = datetime.fromisoformat(end_ds).replace(tzinfo=UTC)
    run_id = run_id or f"plain__{end_ds}"
    store: dict = {}

    def ctx(task_id: str) -> dict[str, Any]:
        return _context(PlainTI(store, dag.dag_id, run_id, task_id), params, logical, conf, dag)

    def call(task_id: str):
        task = dag.get_task(task_id)
        result = task.execute(ctx(task_id))
        if result is not None:
            store[(task_id, "return_value")] = result
        return result

    def fix_window() -> None:  # the sensor's one poke, as the scheduler runs it
        store[("window", "return_value")] = dag.get_task("window").poke(ctx("window")).xcom_value

    timed("window", fix_window)
    branch = timed("choose", lambda: dag.get_task("choose").choose_branch(ctx("choose")))
    if branch != "create_sweep":
        raise SystemExit(f"the plain run expects the sweep branch, choose said {branch!r}")
    created = timed("create_sweep", lambda: call("create_sweep"))
    spec_path = dag.get_task("create_sweep").spec_path

    def run_agents() -> list[dict[str, Any]]:
        ctx_mp = mp.get_context("fork")  # torch is imported but unused so far: no thread pool to copy
        out = ctx_mp.Queue()
        procs = [
            ctx_mp.Process(target=_agent, args=(spec_path, kw, run_id, params, logical, conf, out))
            for kw in created
        ]
        for p in procs:
            p.start()
        results = [out.get() for _ in procs]
        for p in procs:
            p.join()
            if p.exitcode:
                raise SystemExit(f"a plain sweep agent exited with {p.exitcode}")
        return results

    timed(f"agent x {len(created)}", run_agents)
    for task_id in ("select_best", "evaluate"):
        timed(task_id, lambda task_id=task_id: call(task_id))

    def gate() -> str:  # the gate's execute, less the skipping of the branches not taken (Airflow's part)
        from freestack.evaluate.operators import route_for

        task, ti = dag.get_task("gate"), PlainTI(store, dag.dag_id, run_id, "gate")
        ev = store[("evaluate", "return_value")]
        decision = task.decide(ev)
        ti.xcom_push("registered", task.register(ev, decision, run_id))
        store[("gate", "return_value")] = decision
        return route_for(decision)

    route = timed("gate", gate)
    if route != "promote":
        raise SystemExit(f"the plain run expects the gate to promote, it said {route!r}")
    for task_id in ("promote", "deploy"):
        timed(task_id, lambda task_id=task_id: call(task_id))
    return {
        "wall_s": round(time.perf_counter() - t_all, 3),
        "stages": stages,
        "deployed": store.get(("deploy", "return_value")),
    }
