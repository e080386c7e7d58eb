"""The sweep step of the train DAG, run for real: create_sweep -> agent x N -> select_best, whose OpenLineage
event links the candidate back to the partitions its best trial trained on."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from tests.dags.test_openlineage import _completed, _names, ol_file  # noqa: F401  (its listener)
from tests.dags.test_train_dag import lake  # noqa: F401  (the five-day digits lake fixture)

pytestmark = pytest.mark.usefixtures("airflow_db")


def _states(run) -> dict[str, list[str]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id)
            .all()
        )
        out: dict[str, list[str]] = {}
        for ti in tis:
            out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


def _sweep_folder(root, run_id):
    found = [
        p
        for p in (root / "runs" / "digits").glob("sweep-*/sweep.json")
        if json.loads(p.read_text())["request"]["airflow"]["run_id"] == run_id
    ]
    assert len(found) == 1, found
    return found[0].parent


def test_sweep_runs_in_the_dag_and_selects_the_best_trial(lake, ol_file):  # noqa: F811
    dag = lake["bag"].get_dag("digits_train")
    assert dag.params["sweep"] is True  # the spec has a sweep: block
    run = dag.test(run_conf={"end_ds": "2026-11-05", "sweep_agents": 2, "epochs": 8})
    assert run.state == "success"
    states = _states(run)
    assert states["train"] == ["skipped"] and states["create_sweep"] == ["success"]
    assert sorted(states["agent"]) == ["success", "success"] and states["select_best"] == ["success"]

    folder = _sweep_folder(lake["root"], run.run_id)
    trials = [json.loads(p.read_text()) for p in sorted(folder.glob("trials/*/trial.json"))]
    assert [t["id"] for t in trials] == [f"t{i:04d}" for i in range(8)]  # run_cap: 8, exactly
    assert all(t["state"] == "finished" for t in trials)
    configs = Counter(json.dumps(t["params"], sort_keys=True) for t in trials)
    assert max(configs.values()) == 1
    for t in trials:
        p = t["params"]
        assert 1e-4 <= p["learning_rate"] <= 3e-2 and p["batch_size"] in (32, 64, 128)
        assert 0 <= p["model.dropout"] <= 0.4 and p["model.channels"] in ([8, 16], [16, 32])
        assert len(t["history"]) == t["epochs_run"] <= 8

    best = json.loads((folder / "best.json").read_text())
    table = json.loads((folder / "results.json").read_text())
    assert len(table["trials"]) == 8 and table["metric"] == "val_accuracy"
    scored = [r["val_accuracy"] for r in table["trials"]]
    assert best["best_value"] == max(scored) and best["best_value"] > 0.9
    assert (folder / "results.csv").read_text().count("\n") == 9
    assert (folder / "metric_vs_params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the best trial became a model version with the sweep in its lineage; its candidate folder, outside
    # the registry while it was evaluated, went once the gate registered it
    name = best["version_uri"].rstrip("/").rsplit("/", 1)[-1]
    assert best["version_uri"] == (lake["root"] / "candidates" / "digits" / name).as_uri()
    assert not (lake["root"] / "candidates" / "digits" / name).exists()
    version = lake["root"] / "registry" / "digits" / name
    assert (version / "_REGISTERED.json").is_file()
    lineage = json.loads((version / "lineage.json").read_text())
    assert lineage["sweep"]["id"] == folder.name and lineage["sweep"]["trial"] == best["best_trial"]
    assert (version / "model.safetensors").stat().st_size > 0
    # lineage names the task that published the version, and the days it trained on: a run triggered by
    # hand has no data interval of its own, so the interval is the window's (30 days up to 2026-11-05)
    airflow = lineage["airflow"]
    assert (airflow["dag_id"], airflow["run_id"], airflow["task_id"]) == (
        "digits_train",
        run.run_id,
        "select_best",
    )
    assert airflow["run_type"] == "manual" and airflow["run_after"] and airflow["try_number"] == 1
    assert airflow["data_interval_from"] == "window"
    assert airflow["data_interval_start"] == "2026-10-07T00:00:00+00:00"
    assert airflow["data_interval_end"] == "2026-11-06T00:00:00+00:00"
    assert lineage["window"] == {"end_ds": "2026-11-05", "days": 30, "fixed_by": "form"}
    card = (version / "README.md").read_text()
    assert "task_id `select_best`" in card and "create_sweep" not in card
    assert (
        "data interval `2026-10-07T00:00:00+00:00` to `2026-11-06T00:00:00+00:00` (the days of the lake window"
        in card
    )
    # each trial is its own offline W&B run, grouped by the sweep
    wandb_dirs = {t["wandb"]["run_dir"] for t in trials}
    assert len(wandb_dirs) == 8 and all(os.path.isdir(d) for d in wandb_dirs)
    # and select_best's run holds the trial table and the plot
    assert os.path.isdir(best["wandb"]["run_dir"]) and best["wandb"]["run_dir"] not in wandb_dirs
    media = os.path.join(best["wandb"]["run_dir"], "files", "media")
    assert any(n.endswith(".table.json") for _, _, names in os.walk(media) for n in names)
    assert any(n.endswith(".png") for _, _, names in os.walk(media) for n in names)
    _select_best_lineage(_completed(ol_file), lineage, best)


def _select_best_lineage(done: dict[str, list[dict]], lineage: dict, best: dict) -> None:
    """select_best's OpenLineage event links the candidate back to the lake, as train's does: the
    partitions the best trial trained on (with their sha256) -> the candidate folder, with the version and
    its validation metrics."""
    (selected,) = done["digits_train.select_best"]
    parts = lineage["partitions"]
    assert len(parts) == 5 and _names(selected["inputs"]) == [
        ("file", p["uri"].removeprefix("file://")) for p in parts
    ]
    assert [i["facets"]["version"]["datasetVersion"] for i in selected["inputs"]] == [
        p["sha256"] for p in parts
    ]
    assert _names(selected["outputs"]) == [("file", best["version_uri"].removeprefix("file://"))]
    facets = selected["run"]["facets"]
    model = facets["freestack_modelVersion"]
    assert (model["name"], model["version"]) == ("digits", lineage["version"]) and "sha256" not in model
    assert facets["freestack_metrics"]["metrics"]["best_val_accuracy"] == best["best_value"]


def test_a_retried_agent_continues_the_sweep_without_repeating_trials(lake):  # noqa: F811
    """An agent task that Airflow retries finds the sweep where it stands."""
    from freestack.spec import load_spec
    from freestack.sweeps.core import LocalAgent, create_sweep, load_trials
    from freestack.sweeps.trials import make_trial_runner

    spec = load_spec(lake["specs"] / "digits.yaml")
    sweep = create_sweep(spec, "sweep-retry", {"end_ds": "2026-11-05", "epochs": 3}, agents=1)
    runner = make_trial_runner(spec, sweep)
    calls = []

    def crash_on_third(doc, report):
        calls.append(doc["id"])
        if len(calls) == 3:
            raise KeyboardInterrupt("the worker was killed")  # not an Exception: the agent dies
        return runner(doc, report)

    with pytest.raises(KeyboardInterrupt):
        LocalAgent(spec, "sweep-retry", crash_on_third, ttl=1.0).run()
    done = {d["id"]: d["state"] for d, _ in load_trials(spec, "sweep-retry")}
    assert done == {"t0000": "finished", "t0001": "finished", "t0002": "running"}
    ran = []
    LocalAgent(spec, "sweep-retry", lambda d, r: ran.append(d["id"]) or runner(d, r), ttl=1.0).run()
    # the dead agent's trial is taken over once its lease expires; finished ones are not repeated
    assert sorted(ran) == [f"t{i:04d}" for i in range(2, 8)]
    trials = {d["id"]: d for d, _ in load_trials(spec, "sweep-retry")}
    assert all(d["state"] == "finished" for d in trials.values()) and len(trials) == 8
    assert len(trials["t0002"]["attempts"]) == 2 and trials["t0002"]["lease"]["attempt"] == 1


def test_the_form_can_ask_for_one_training_instead(lake):  # noqa: F811
    dag = lake["bag"].get_dag("digits_train")
    run = dag.test(run_conf={"end_ds": "2026-11-02", "sweep": False, "epochs": 2})
    assert run.state == "success"
    states = _states(run)
    assert states["train"] == ["success"] and states["create_sweep"] == ["skipped"]
    assert states["select_best"] == ["skipped"]


def test_an_agent_reads_the_window_once_and_a_sweep_on_three_objectives_keeps_their_front(lake, monkeypatch):  # noqa: F811
    """The window (and the trainer's lazy imports) load when the agent starts, not in its first leased trial.
    The sweep is NSGA-II's on accuracy against the model's trainable parameters (the trainer records them)
    and its serving latency (each trial's model served as deploy serves it, and measured): select_best
    keeps the Pareto front and publishes the trial the candidate rule picks, saying why."""
    import freestack.train.core as train_core
    from freestack.spec import load_spec
    from freestack.sweeps.core import LocalAgent, create_sweep, load_trials
    from freestack.sweeps.report import select_best
    from freestack.sweeps.trials import make_trial_runner
    from freestack.version.write import read_lineage

    reads = []
    real = train_core.load_window
    monkeypatch.setattr(train_core, "load_window", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    spec = load_spec(lake["specs"] / "digits.yaml")
    objectives = [
        {"name": "val_accuracy", "goal": "maximize"},
        {"name": "trainable_params", "goal": "minimize"},
        {"name": "serving_latency_p99_ms", "goal": "minimize"},
    ]
    block = {**spec.sweep.config(), "method": "nsga2", "run_cap": 3, "metrics": objectives}
    block.pop("metric"), block.pop("early_terminate")
    limits = {"trainable_params": {"max": 10**6}, "serving_latency_p99_ms": {"max": 10**4}}
    block["candidate"] = {"best": "val_accuracy", "limits": limits}
    monkeypatch.setenv("FREESTACK_MEASURE_SERVING", "true")
    spec = spec.model_copy(update={"sweep": type(spec.sweep).model_validate(block)})
    sweep = create_sweep(spec, "sweep-warm", {"end_ds": "2026-11-05", "epochs": 1}, agents=1)
    runner = make_trial_runner(spec, sweep)
    assert reads == ["2026-11-05"]  # read at start-up, before any trial is leased
    LocalAgent(spec, "sweep-warm", runner, ttl=30).run()
    assert reads == ["2026-11-05"]  # and the trials used that copy
    trials = [d for d, _ in load_trials(spec, "sweep-warm")]
    assert [d["state"] for d in trials] == ["finished"] * 3
    sizes = {d["id"]: d["costs"]["trainable_params"] for d in trials}
    assert all(n > 1000 for n in sizes.values()), sizes  # the CNN's own count, recorded by the trainer
    served = [d["costs"]["serving"] for d in trials]  # each trial's model, served on Seldon's runtime
    assert all(s["runtime"] == "seldon" and s["errors"] == 0 for s in served), served
    assert all(0 < s["latency_p50_ms"] <= s["latency_p99_ms"] for s in served), served
    left = list(Path(os.environ["FREESTACK_SERVING_DIR"]).glob("costs-digits-sweep-warm-*"))
    assert not left, "a measurement's folder was left behind"
    best = select_best(spec, "sweep-warm")
    front = {f["trial"]: f for f in best["front"]}
    assert front and set(front) <= set(sizes) and best["best_trial"] in front, best
    assert best["candidate_reason"].startswith(f"{best['best_trial']}: the best val_accuracy"), best
    assert best["best_value"] == max(f["val_accuracy"] for f in front.values())
    latency = {d["id"]: d["costs"]["serving"]["latency_p99_ms"] for d in trials}
    assert all(f["serving_latency_p99_ms"] == latency[t] for t, f in front.items()), (front, latency)
    lineage = read_lineage(best["version_uri"]).as_dict()
    assert lineage["sweep"]["candidate"] == best["candidate_reason"]
    assert lineage["sweep"]["method"] == "nsga2"


def test_a_window_that_cannot_be_read_at_start_fails_the_trials_with_the_reason(lake):  # noqa: F811
    """Warming up does not hide the data's fault: the agent starts, and each trial.json says what is missing."""
    from freestack.spec import load_spec
    from freestack.sweeps.core import LocalAgent, SweepError, create_sweep, load_trials
    from freestack.sweeps.trials import make_trial_runner

    spec = load_spec(lake["specs"] / "digits.yaml")
    sweep = create_sweep(spec, "sweep-nodata", {"end_ds": "2020-01-01", "epochs": 1}, agents=1)
    runner = make_trial_runner(spec, sweep)  # does not raise
    with pytest.raises(SweepError, match="trials in a row failed"):
        LocalAgent(spec, "sweep-nodata", runner, ttl=30).run()
    failed = [d for d, _ in load_trials(spec, "sweep-nodata")]
    assert failed and all(d["state"] == "failed" and "2020-01-01" in d["error"] for d in failed)
