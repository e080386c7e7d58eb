"""``freestack`` command line: the demo, the local Airflow, and a look into the lake.

    freestack demo              land the demo data and run the pipeline DAGs on it
    freestack up | down         airflow standalone on 127.0.0.1, in the background
    freestack lake PIPELINE     partitions, row counts and quarantine reasons
    freestack data-api          the Algorithmia-compatible Data API on 127.0.0.1 (keys, acl: its users)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from freestack.config import checkout_dir, project_home

DEMO_START = date(2026, 11, 1)
DEMO_DAYS = 5
DEMO_AGENTS = 2


def airflow_env() -> dict[str, str]:
    """Environment for the embedded Airflow: home, dags and plugins inside the project, 127.0.0.1."""
    home = checkout_dir()
    port = os.environ.get("AIRFLOW_PORT", "8080")
    defaults = {
        "AIRFLOW_HOME": str(home / ".airflow"),
        "FREESTACK_HOME": str(project_home()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": port,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        # the LocalExecutor forks this many workers up front (Airflow's default: 32), each a copy of
        # the scheduler with its preloaded libraries: 4 per core (8 at least, 32 at most) is plenty on
        # one machine, and on 2 cores saves 245 MiB (bench/orchestration)
        "AIRFLOW__CORE__PARALLELISM": str(min(32, max(8, 4 * (os.cpu_count() or 1)))),
    }
    # W&B (the scheduler starts the tasks' shared wandb-core service) writes inside the project
    wandb_home = project_home() / ".freestack" / "wandb"
    for key, sub in (("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config")):  # fmt: skip
        defaults[key] = str(wandb_home / sub) if sub else str(wandb_home)
    # SQLite metadata (the default): writers wait for the lock instead of failing after 5 s
    from freestack.metadb import settings_for

    defaults.update(settings_for(os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")))
    env = dict(os.environ)
    for k, v in defaults.items():
        env.setdefault(k, v)
    return env


def standalone_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus the PATH shim that keeps every standalone component on 127.0.0.1."""
    out = dict(env)
    venv_bin = str(Path(sys.executable).parent)
    out["FREESTACK_AIRFLOW_BIN"] = str(Path(venv_bin) / "airflow")
    out["PATH"] = os.pathsep.join([str(checkout_dir() / "include" / "bin"), venv_bin, env.get("PATH", "")])
    return out


def start_standalone(env: dict[str, str], log_file: Path) -> subprocess.Popen:
    """Start ``airflow standalone`` in its own session (so it can be stopped as a group)."""
    env = standalone_env(env)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [env["FREESTACK_AIRFLOW_BIN"], "standalone"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _apply_env() -> None:
    for k, v in airflow_env().items():
        os.environ.setdefault(k, v)


# ---------------------------------------------------------------------------------------------------------
# lake summary


def lake_report(pipeline: str) -> str:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from freestack.config import load_spec, pipelines_dir
    from freestack.ingest.core import QUARANTINE, lake_partitions, partition_dir, read_manifest
    from freestack.storage import join

    spec = load_spec(pipelines_dir() / f"{pipeline}.yaml")
    lines = [f"lake of {pipeline!r} under {spec.root}:"]
    for ds in lake_partitions(spec):
        m = read_manifest(spec, ds) or {}
        lines.append(
            f"  ds={ds}  {m.get('rows_good', '?'):>5} rows  {m.get('rows_quarantined', 0):>3} quarantined  "
            f"part sha256 {str((m.get('part') or {}).get('sha256', '?'))[:12]}"
        )
        qpath = join(partition_dir(spec, ds), QUARANTINE)
        if qpath.exists():
            with qpath.open("rb") as f:
                q = pq.read_table(f, columns=["_reason"])
            counts = pc.value_counts(q.column("_reason")).to_pylist()
            for c in counts:
                lines.append(f"      quarantine: {c['counts']} x {c['values']}")
    if len(lines) == 1:
        lines.append("  (no partitions yet)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# demo


def demo(args: argparse.Namespace) -> int:
    _apply_env()
    sys.path.insert(0, str(checkout_dir() / "include"))
    from demo.landing import make_landing
    from freestack.config import default_storage_root, load_spec, pipelines_dir
    from freestack.ingest.core import lake_partitions

    root = default_storage_root()
    print(f"storage root: {root}")
    # a second run lands the next days (new rows of the same digits) and retrains: champion vs challenger
    done = len(lake_partitions(load_spec(pipelines_dir() / "digits.yaml")))
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

    from freestack.pools import ensure_pool

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
        print("\nrun `make demo` again: it lands 5 more days, retrains, and compares the new model with this one")
    return 0


def serve_report(pipeline: str) -> str:
    """What is served now: the URL, a curl command with one real test digit, and the running server's answer."""
    from freestack.config import load_spec, pipelines_dir
    from freestack.serving.cli import sample_request
    from freestack.serving.local import Deployments, http_json
    from freestack.storage import storage_root

    spec = load_spec(pipelines_dir() / f"{pipeline}.yaml")
    rec = Deployments(str(storage_root(spec.storage_root)), spec.model_name).get(spec.deployment_name)
    if not rec or rec.get("state") != "serving":
        return "\nnothing is served (the gate blocked every version so far?)"
    payload, labels = sample_request(rec)
    row = [int(v) if float(v).is_integer() else v for v in payload["data"]["ndarray"][0]]
    body = json.dumps({"data": {"ndarray": [row]}}, separators=(",", ":"))
    code, answer = http_json(rec["predict_url"], payload)
    lines = [
        f"\nserved: {spec.model_name} {rec['version']} by seldon-core-microservice (pid {rec['pid']}) at {rec['url']}",
        f"  smoke test: {rec['smoke']['rows']} test rows answered exactly as in evaluation "
        f"(max |diff| {rec['smoke']['max_abs_diff']:.1e})",
        "  try it:",
        f"    curl -s -H 'Content-Type: application/json' -d '{body}' {rec['predict_url']}",
    ]
    if code == 200:
        names, probs = answer["data"]["names"], answer["data"]["ndarray"][0]
        best = max(range(len(probs)), key=probs.__getitem__)
        lines.append(f"  the server answered: digit {names[best]} (p={probs[best]:.3f}); true label: {labels[0]}")
    else:
        lines.append(f"  the server answered HTTP {code}: {answer}")
    lines += [
        f"  metrics (Prometheus): {rec['metrics_url']}",
        f"  manage it: freestack serve status | logs {rec['name']} | predict {rec['name']} | stop {rec['name']}",
    ]
    return "\n".join(lines)


def gate_report(pipeline: str, run_id: str) -> str:
    """Champion vs challenger of ``run_id``: the gate's decision and reasons, the report, the aliases."""
    from freestack.registry.core import ModelRegistry

    models, version, lineage = version_of_run(pipeline, run_id)
    if version is None:
        return f"(no registered version for run {run_id})"
    gate, ev = lineage.get("gate") or {}, lineage.get("evaluation") or {}
    verdict = "PROMOTED to production" if gate.get("promote") else "BLOCKED (production unchanged)"
    lines = [f"gate: {version.name} {verdict}"]
    lines += [f"  - {r}" for r in gate.get("reasons", [])]
    lines.append(f"  registry: {version} (model card: README.md)")
    lines.append(f"  evaluation report: {ev.get('report')}")
    aliases = ModelRegistry(models.parent.parent, models.name).aliases()
    lines.append(f"  aliases: production={aliases.get('production')} previous={aliases.get('previous')}")
    return "\n".join(lines)


def sweep_report(pipeline: str, run_id: str) -> str:
    """The sweep of ``run_id``, if it ran one: trials, early stops, epochs, the best, the table and plot."""
    from freestack.config import load_spec, pipelines_dir
    from freestack.storage import join, storage_root

    spec = load_spec(pipelines_dir() / f"{pipeline}.yaml")
    runs = join(storage_root(spec.storage_root), "runs", spec.name)
    for folder in sorted(runs.iterdir(), key=lambda p: p.name) if runs.exists() else []:
        best_path, sweep_path = folder / "best.json", folder / "sweep.json"
        if not (sweep_path.exists() and best_path.exists()):
            continue
        if json.loads(sweep_path.read_text())["request"].get("airflow", {}).get("run_id") != run_id:
            continue
        best = json.loads(best_path.read_text())
        trials = json.loads(join(folder, "results.json").read_text())["trials"]
        lines = [
            f"sweep {best['sweep_id']} ({best['method']}, {best['trials']} trials): "
            f"{best['stopped_early']} stopped early by hyperband, {best['epochs_total']} epochs in all",
            f"  {'trial':<6} {'state':<9} {'epochs':>6} {best['metric']:>13}  params",
        ]
        for t in trials:
            params = ", ".join(
                f"{k[6:]}={v:.3g}" if isinstance(v, float) else f"{k[6:]}={v}" for k, v in t.items() if k.startswith("param.")
            )
            value = t.get(best["metric"])
            mark = " *" if t["trial"] == best["best_trial"] else ""
            state = "stopped" if t["stopped_early"] else t["state"]
            lines.append(f"  {t['trial']:<6} {state:<9} {t['epochs']:>6} {value if value is None else f'{value:.4f}':>13}  {params}{mark}")
        lines.append(f"  best: {best['best_trial']} {best['metric']} {best['best_value']:.4f}")
        lines.append(f"  table: {best['results_csv']}\n  plot:  {best['plot']}")
        return "\n".join(lines)
    return "(no sweep in this run)"


def version_of_run(pipeline: str, run_id: str):
    """(the registry folder, the model folder, its lineage) of the model Airflow run ``run_id`` made."""
    from freestack.config import load_spec, pipelines_dir
    from freestack.storage import join, storage_root

    spec = load_spec(pipelines_dir() / f"{pipeline}.yaml")
    models = join(storage_root(spec.storage_root), "registry", spec.model_name)
    for version in sorted(models.iterdir(), key=lambda p: p.name, reverse=True) if models.exists() else []:
        lineage_path = version / "lineage.json"
        if not lineage_path.exists():
            continue
        lineage = json.loads(lineage_path.read_text())
        if lineage.get("airflow", {}).get("run_id") == run_id:
            return models, version, lineage
    return models, None, None


def train_report(pipeline: str, run_id: str) -> str:
    """Test metrics, model version and W&B run of the training done by ``run_id``."""
    models, version, lineage = version_of_run(pipeline, run_id)
    if version is None:
        return f"no model version of run {run_id} under {models}"
    metrics = json.loads((version / "metrics.json").read_text())
    wb = lineage.get("wandb") or {}
    lines = [f"model version: {version}"]
    lines += [f"  {k:<16} {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("test_")]
    lines.append(f"  trained on {len(lineage['partitions'])} partitions up to {lineage['window']['end_ds']}")
    if wb.get("url"):
        lines.append(f"W&B run: {wb['url']}")
    elif wb.get("run_dir"):
        lines.append(f"W&B offline run: {wb['run_dir']}\n  upload later with: {wb['sync_command']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# airflow standalone


def _paths(env: dict[str, str]) -> tuple[Path, Path, Path]:
    home = Path(env["AIRFLOW_HOME"])
    return home / "standalone.pid", home / "standalone.log", home / "simple_auth_manager_passwords.json.generated"


def healthy(url: str) -> bool:
    """Whether the Airflow API server at ``url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def warm_execution_api(url: str) -> float:
    """Answer the API server's first Task Execution API request now: the mounted app builds itself on
    its first request (about 3 s here), which would otherwise delay the first task of the first run.
    Returns the seconds it took (0 if the server did not answer; the first task then pays it)."""
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(f"{url}/execution/health", timeout=60) as r:
            r.read()
    except OSError:
        return 0.0
    return time.monotonic() - t0


def up(args: argparse.Namespace) -> int:
    env = airflow_env()
    pid_file, log_file, pw_file = _paths(env)
    url = env["AIRFLOW__API__BASE_URL"]
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        print(f"airflow standalone already running (pid {pid_file.read_text().strip()}) at {url}")
    else:
        proc = start_standalone(env, log_file)
        pid_file.write_text(str(proc.pid))
        print(f"starting airflow standalone (pid {proc.pid}), log: {log_file}")
        deadline = time.monotonic() + args.timeout
        while not healthy(url):
            if proc.poll() is not None:
                print(f"airflow standalone exited with {proc.returncode}; see {log_file}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"airflow did not answer at {url} within {args.timeout}s; see {log_file}", file=sys.stderr)
                return 1
            time.sleep(2)
        warm_execution_api(url)
    password = "(see the log)"
    for _ in range(30):
        if pw_file.exists():
            password = json.loads(pw_file.read_text()).get("admin", password)
            break
        time.sleep(1)
    print(f"Airflow UI: {url}\n  user:     admin\n  password: {password}")
    print("stop it with: make down")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def down(args: argparse.Namespace) -> int:
    env = airflow_env()
    pid_file, _, _ = _paths(env)
    if not pid_file.exists():
        print("airflow standalone is not running (no pid file)")
        return 0
    pid = int(pid_file.read_text())
    if _alive(pid):
        from freestack.serving.local import stop_process

        stop_process(pid, grace_seconds=30.0)  # SIGTERM to its session's group, SIGKILL after the grace
    pid_file.unlink(missing_ok=True)
    print(f"stopped airflow standalone (pid {pid})")
    return 0


def lake(args: argparse.Namespace) -> int:
    print(lake_report(args.pipeline))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="freestack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="land the demo data and run the pipeline on it").set_defaults(fn=demo)
    p_up = sub.add_parser("up", help="start airflow standalone on 127.0.0.1")
    p_up.add_argument("--timeout", type=float, default=240)
    p_up.set_defaults(fn=up)
    sub.add_parser("down", help="stop the airflow standalone started by `up`").set_defaults(fn=down)
    p_lake = sub.add_parser("lake", help="show a pipeline's lake partitions and quarantine")
    p_lake.add_argument("pipeline")
    p_lake.set_defaults(fn=lake)
    from freestack.dataapi.cli import register as register_data_api

    register_data_api(sub)  # data-api, keys, acl
    from freestack.registry.cli import register as register_models

    register_models(sub)  # models list|show|promote|rollback|alias|push
    from freestack.serving.cli import register as register_serve

    register_serve(sub)  # serve status|stop|logs|predict|deploy
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
