"""The local sweep controller on local disk: W&B sweep semantics, leases, run caps, hyperband."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.sweeps import ROOT, objective, quality, write_spec

LR = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}


@pytest.fixture
def make_spec(tmp_path, storage):
    from freestack.spec import load_spec

    def make(sweep):
        return load_spec(write_spec(tmp_path / "specs", sweep))

    return make


def _run_local(spec, sweep_id, agents=1, **kw):
    from freestack.sweeps.core import LocalAgent, create_sweep, load_trials

    create_sweep(spec, sweep_id, {"end_ds": "2026-11-05"}, agents=agents)
    report = LocalAgent(spec, sweep_id, objective(**kw), ttl=30).run()
    return report, [d for d, _ in load_trials(spec, sweep_id)]


# ---------------------------------------------------------------------------------------------------------
# the sweep block


def test_widest_is_the_largest_value_a_trial_can_give_a_parameter():
    """A training run's window is fixed as wide as the widest window_days any trial may ask for."""
    from freestack.sweeps.spec import SweepSpec

    def sweep(parameters: dict) -> SweepSpec:
        return SweepSpec.model_validate({"method": "random", "run_cap": 2, "parameters": parameters})

    assert sweep({"learning_rate": LR}).widest("window_days") == 0
    assert sweep({"window_days": {"values": [3, 14, 7]}}).widest("window_days") == 14
    ranged = sweep({"window_days": {"distribution": "int_uniform", "min": 2, "max": 9}, "learning_rate": LR})
    assert ranged.widest("window_days") == 9
    assert sweep({"window_days": {"value": 5}}).widest("window_days") == 5


def test_a_stored_config_reads_back_into_the_model_as_the_sweep_wrote_it(make_spec):
    """sweep.json holds the block's plain W&B form (what W&B's server is handed); load_sweep reads it back
    into the same model, the spec's own; a document an older version wrote, with keys this one does not
    name, still reads, and a stored config is not checked again (it was when it was written)."""
    from freestack.storage import join, write_bytes
    from freestack.sweeps.core import SWEEP_FILE, create_sweep, load_sweep, sweep_dir
    from freestack.sweeps.spec import SweepSpec

    block = {
        "method": "random",
        "metric": {"name": "val_accuracy", "goal": "maximize"},
        "run_cap": 3,
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
        "parameters": {
            "learning_rate": LR,
            "model": {"parameters": {"hidden": {"values": [[8, 16], [32]]}, "dropout": {"value": 0.1}}},
        },
    }
    spec = make_spec(block)
    doc = create_sweep(spec, "stored", {"end_ds": "2026-11-05"}, agents=1)
    path = join(sweep_dir(spec, "stored"), SWEEP_FILE)
    written = json.loads(path.read_text())
    assert written["config"] == spec.sweep.config() and written["max_trials"] == 3
    loaded = load_sweep(spec, "stored")
    assert loaded["config"] == spec.sweep == doc["config"] and isinstance(loaded["config"], SweepSpec)
    assert loaded["config"].config() == written["config"]  # the same plain form back, key for key
    assert create_sweep(spec, "stored", {"end_ds": "2026-11-05"}, agents=1)["config"] == spec.sweep  # a retry

    older = json.loads(json.dumps(written))
    older["config"]["controller_v0"] = {"type": "local"}
    older["config"]["metric"]["summary"] = "best"
    older["config"]["parameters"]["learning_rate"]["note"] = "log scale"
    write_bytes(path, json.dumps(older).encode())
    assert load_sweep(spec, "stored")["config"] == spec.sweep
    unchecked = {**written["config"], "metric": {"name": "val_gone", "goal": "minimize"}}
    assert SweepSpec.stored(unchecked).metric.name == "val_gone"
    with pytest.raises(ValueError, match="val_gone"):  # a block of a spec is checked, as ever
        SweepSpec.model_validate(unchecked)
    with pytest.raises(ValueError, match="controller_v0"):
        SweepSpec.model_validate(older["config"])


@pytest.mark.parametrize(
    "sweep, expected",
    [
        (
            {"method": "hill", "parameters": {"learning_rate": LR}},
            "method 'hill' is not supported: use grid, random, bayes, tpe, nsga2",
        ),
        (
            {
                "method": "grid",
                "parameters": {"learning_rate": {"values": [0.1]}},
                "metric": {"name": "val_accuracy", "goal": "up"},
            },
            "'up' is not one of ['minimize', 'maximize']",
        ),
        (
            {"method": "random", "run_cap": 4, "parameters": {"learning_rate": {"min": 0.1, "max": 0.01}}},
            "learning_rate: min 0.1 is not less than max 0.01",
        ),
        (
            {"method": "random", "run_cap": 4, "parameters": {"momentum": {"values": [0.9]}}},
            "parameters.momentum: 'momentum' is not something the trainer can change; use one of learning_rate",
        ),
        ({"method": "random", "parameters": {"learning_rate": LR}}, "set run_cap (the number of trials)"),
        (
            {"method": "bayes", "run_cap": 4, "parameters": {"learning_rate": LR}},
            "method bayes needs a metric",
        ),
        (
            {
                "method": "random",
                "run_cap": 4,
                "metric": {"name": "val_auc", "goal": "maximize"},
                "parameters": {"learning_rate": LR},
            },
            "metric.name 'val_auc' is not reported by the trainer each epoch",
        ),
        (
            {"method": "random", "run_cap": 0, "parameters": {"learning_rate": LR}},
            "run_cap must be a positive integer",
        ),
        (
            {
                "method": "random",
                "run_cap": 4,
                "parameters": {"learning_rate": LR},
                "early_terminate": {"type": "hyperband", "min_iter": 2},
            },
            "early_terminate needs a metric",
        ),
        ({"method": "grid", "parameters": {}}, "parameters is missing or empty"),
        ("random", "must be a mapping (W&B's sweep configuration)"),
    ],
)
def test_invalid_sweep_configs_fail_clearly(tmp_path, sweep, expected):
    from freestack.errors import SpecError
    from freestack.spec import load_spec

    path = write_spec(tmp_path, sweep)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: sweep: ") and expected in msg, msg


def test_a_parameter_is_checked_only_against_the_kinds_that_may_take_it(monkeypatch):
    """A parameter is of the first of about twenty kinds that accepts it, in the engine's order: the
    kinds whose schema plainly refuses it (another distribution, a key it requires missing) are passed
    over, and a valid config never needs jsonschema's own ``anyOf``. The verdicts and messages are
    jsonschema's (Draft 7 over the engine's schema), valid and invalid configs alike."""
    import jsonschema

    from freestack.sweeps.spec import _engine_schema

    engine = _engine_schema()
    tried: list[str] = []

    class Counting:
        def __init__(self, name, validator):
            self.name, self.validator = name, validator

        def is_valid(self, parameter):
            tried.append(self.name)
            return self.validator.is_valid(parameter)

    monkeypatch.setattr(engine, "kinds", {n: Counting(n, v) for n, v in engine.kinds.items()})
    assert engine.kind(LR) == "param_loguniform_v2" and tried == ["param_loguniform_v2"]
    tried.clear()
    assert engine.kind({"values": [32, 64]}) == "param_categorical" and tried == ["param_categorical"]

    stock = jsonschema.Draft7Validator(
        engine.validator.schema, format_checker=engine.validator.format_checker
    )
    nested = {"parameters": {"dropout": {"min": 0.0, "max": 0.4}, "w": {"value": 2}}}
    parameters = [
        LR,
        nested,
        {"distribution": "q_beta", "a": 1, "b": 2, "q": 0.1},
        {"values": [1, 2], "probabilities": [0.5, 0.5]},
        {"distribution": "int_uniform", "min": 1, "max": 4},
        {"distribution": "normal", "mu": 0, "sigma": 1},
    ]
    invalid = [
        {**LR, "min": -1},
        {"distribution": "log_uniform_values", "min": 0.1},
        {"distribution": "bogus", "min": 0, "max": 1},
        {"distribution": ["uniform"], "min": 0, "max": 1},
        {"parameters": {"dropout": {"min": "a", "max": 1}}},
        {"valuez": [1]},
        3,
    ]
    for parameter in parameters + invalid:
        config = {"method": "random", "parameters": {"p": parameter}}
        ours = [e.message for e in engine.validator.iter_errors(config)]
        assert ours == [e.message for e in stock.iter_errors(config)], parameter
        assert bool(ours) == (parameter in invalid), (parameter, ours)

    def stock_any_of(*args):
        raise AssertionError("a valid config reached jsonschema's own anyOf")

    monkeypatch.setattr(engine, "_stock_any_of", stock_any_of)
    valid = {"method": "grid", "parameters": {f"p{i}": p for i, p in enumerate(parameters)}}
    assert not list(engine.validator.iter_errors(valid))


def test_invalid_sweep_spec_is_an_import_error_in_the_dag_bag(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    write_spec(tmp_path / "specs", {"method": "random", "parameters": {"learning_rate": LR}})
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(tmp_path / "specs"))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    (err,) = bag.import_errors.values()
    assert "digits.yaml: sweep: method random never runs out of suggestions: set run_cap" in err


# ---------------------------------------------------------------------------------------------------------
# search semantics


def test_a_trial_keeps_and_reports_the_epoch_best_on_the_sweeps_metric():
    """Where the sweep's metric and the trainer's own disagree (a DPO sweep on val_reward_accuracy; the
    trainer keeps on reward margin by itself), a trial keeps the epoch best on the sweep's metric, and
    the table credits it with that kept model's figure, not the best of every epoch; the run note names the
    chosen trial, its parameters and the metric."""
    from freestack.storage import to_path
    from freestack.sweeps.config import kept_metric, trial_request
    from freestack.sweeps.core import kept_value
    from freestack.sweeps.operators import selected_note
    from freestack.sweeps.spec import SweepSpec

    grid = {"method": "grid", "parameters": {"learning_rate": {"values": [1e-3]}}}
    config = SweepSpec.model_validate({**grid, "metric": {"name": "val_reward_accuracy", "goal": "maximize"}})
    folder = to_path("file:///tmp/t")
    req = trial_request({"end_ds": "2026-11-05"}, {}, folder, "s/t0001", {}, kept_metric(config))
    assert (req.keep_metric, req.keep_higher) == ("reward_accuracy", True)
    loss = trial_request({"end_ds": "2026-11-05"}, {}, folder, "s/t1", {}, ("train_loss", "minimize"))
    assert (loss.keep_metric, loss.keep_higher) == (None, None)  # not a validation metric: the trainer's
    assert kept_metric(SweepSpec.model_validate(grid)) is None
    history = [{"epoch": e, "val_reward_accuracy": a} for e, a in ((1, 0.70), (2, 0.8889), (3, 0.8586))]
    trial = {"history": history, "summary": {"best_epoch": 3}}
    assert kept_value(trial, "val_reward_accuracy", "maximize") == 0.8586  # the model it saved
    assert kept_value({"history": history}, "val_reward_accuracy", "maximize") == 0.8889  # still running
    note = selected_note(
        {
            "sweep_id": "s1",
            "best_trial": "t0001",
            "metric": "val_reward_accuracy",
            "goal": "maximize",
            "best_value": 0.8586,
            "best_params": {"dpo.beta": 0.1, "learning_rate": 0.0003},
            "finished": 4,
            "trials": 5,
        }
    )
    assert "trial t0001 chosen on val_reward_accuracy (maximize) = 0.8586" in note
    assert "dpo.beta=0.1, learning_rate=0.0003" in note


def test_grid_covers_exactly_the_grid_with_nested_parameters(make_spec):
    spec = make_spec(
        {
            "method": "grid",
            "parameters": {
                "learning_rate": {"values": [0.1, 0.01, 0.001]},
                "model": {
                    "parameters": {"dropout": {"values": [0.0, 0.2]}, "hidden": {"values": [[32], [64, 32]]}}
                },
            },
        }
    )
    _, trials = _run_local(spec, "grid", epochs=2)
    seen = sorted(
        (t["params"]["learning_rate"], t["params"]["model.dropout"], tuple(t["params"]["model.hidden"]))
        for t in trials
    )
    grid = sorted(itertools.product([0.1, 0.01, 0.001], [0.0, 0.2], [(32,), (64, 32)]))
    assert seen == grid  # every point once, nothing else
    assert all(t["state"] == "finished" for t in trials)
    # the nested config is what W&B would hand the run, and what the trainer gets
    from freestack.sweeps.config import to_overrides

    assert to_overrides(trials[0]["config"]) == {
        "train": {"learning_rate": 0.1},
        "model": {"dropout": 0.0, "hidden": [32]},
    }


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_random_and_bayes_respect_bounds_and_distributions(make_spec, method):
    spec = make_spec(
        {
            "method": method,
            "metric": {"name": "val_accuracy", "goal": "maximize"},
            "run_cap": 24,
            "parameters": {
                "learning_rate": LR,
                "batch_size": {"distribution": "q_uniform", "min": 16, "max": 256, "q": 16},
                "epochs": {"distribution": "int_uniform", "min": 2, "max": 5},
                "weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.01},
                "scheduler": {"values": ["cosine", "constant"]},
            },
        }
    )
    _, trials = _run_local(spec, method, epochs=2)
    assert len(trials) == 24
    ps = [t["params"] for t in trials]
    assert all(1e-4 <= p["learning_rate"] <= 1e-1 for p in ps)
    assert all(16 <= p["batch_size"] <= 256 and p["batch_size"] % 16 == 0 for p in ps)
    assert all(isinstance(p["epochs"], int) and 2 <= p["epochs"] <= 5 for p in ps)
    assert all(0.0 <= p["weight_decay"] <= 0.01 for p in ps)
    assert {p["scheduler"] for p in ps} <= {"cosine", "constant"}
    if method == "random":  # log-uniform: as many draws in each decade, roughly
        decades = [math.floor(math.log10(p["learning_rate"])) for p in ps]
        assert len(set(decades)) >= 3
        assert len({json.dumps(p, sort_keys=True) for p in ps}) == 24


def test_bayes_uses_the_finished_trials_to_propose_better_ones(make_spec):
    spec = make_spec(
        {
            "method": "bayes",
            "metric": {"name": "val_accuracy", "goal": "maximize"},
            "run_cap": 14,
            "parameters": {"learning_rate": LR},
        }
    )
    _, trials = _run_local(spec, "bayes-learns", epochs=2)
    q = [quality(t["params"]) for t in trials]
    # once trials have finished, each proposal carries the Gaussian process's prediction for it
    informed = [t["search_info"] for t in trials[2:]]
    assert all(i and {"predicted_value", "expected_improvement"} <= set(i) for i in informed), informed
    assert max(q) > 0.9, q


def test_random_proposals_depend_only_on_the_sweep_and_trial_number(make_spec):
    spec = make_spec({"method": "random", "run_cap": 5, "parameters": {"learning_rate": LR}})
    _, a = _run_local(spec, "same-id", epochs=1)
    import shutil

    from freestack.storage.objects import local_os_path
    from freestack.sweeps.core import sweep_dir

    shutil.rmtree(local_os_path(sweep_dir(spec, "same-id")))
    _, b = _run_local(spec, "same-id", epochs=1)
    assert [t["params"] for t in a] == [t["params"] for t in b]


def test_run_cap_is_honoured_exactly(make_spec):
    spec = make_spec(
        {
            "method": "grid",
            "run_cap": 5,
            "parameters": {
                "learning_rate": {"values": [1e-1, 1e-2, 1e-3]},
                "batch_size": {"values": [32, 64, 128]},
            },
        }
    )
    report, trials = _run_local(spec, "capped", epochs=1)
    assert [t["id"] for t in trials] == ["t0000", "t0001", "t0002", "t0003", "t0004"]
    assert report.trials == [t["id"] for t in trials]


def test_hyperband_stops_bad_trials_and_spends_fewer_epochs(make_spec):
    base = {
        "method": "random",
        "run_cap": 16,
        "metric": {"name": "val_accuracy", "goal": "maximize"},
        "parameters": {"learning_rate": LR},
    }
    full = make_spec(base)
    _, without = _run_local(full, "hb", epochs=12)
    hyper = make_spec({**base, "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2}})
    _, with_hb = _run_local(hyper, "hb2", epochs=12)
    # the same 16 proposals (same trial numbers, different sweep ids draw differently: compare totals)
    spent_without = sum(len(t["history"]) for t in without)
    spent_with = sum(len(t["history"]) for t in with_hb)
    assert spent_without == 16 * 12
    assert spent_with < spent_without * 0.75, (spent_with, spent_without)
    stopped = [t for t in with_hb if t["stopped"]]
    assert stopped and all(len(t["history"]) < 12 for t in stopped)
    kept = [t for t in with_hb if not t["stopped"]]
    # what hyperband stopped was worse than what it let finish
    assert max(quality(t["params"]) for t in stopped) <= max(quality(t["params"]) for t in kept)


# ---------------------------------------------------------------------------------------------------------
# agents in parallel, and a dead agent's lease


def _agent_proc(spec_path, sweep_id, agent_id, sleep, ttl, log_file):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.sweeps",
            str(spec_path),
            sweep_id,
            agent_id,
            str(sleep),
            str(ttl),
            str(log_file),
        ],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_two_agents(spec_path, sweep_id, tmp_path, trials=10, sleep=0.03):
    """Two agent processes at once on the same sweep; returns (reports, trial docs, start log)."""
    from freestack.spec import load_spec
    from freestack.sweeps.core import create_sweep, load_trials

    spec = load_spec(spec_path)
    create_sweep(spec, sweep_id, {"end_ds": "2026-11-05"}, agents=2)
    log_file = tmp_path / f"{sweep_id}.starts"
    procs = [_agent_proc(spec_path, sweep_id, f"agent{i}", sleep, 30, log_file) for i in range(2)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    starts = [json.loads(line) for line in log_file.read_text().splitlines()]
    return reports, [d for d, _ in load_trials(spec, sweep_id)], starts


def assert_no_duplicates(reports, trials, starts, cap):
    assert [t["id"] for t in trials] == [f"t{i:04d}" for i in range(cap)]
    ran = [r["trials"] for r in reports]
    assert not set(ran[0]) & set(ran[1]), ran  # no trial run by both
    assert sorted(ran[0] + ran[1]) == [t["id"] for t in trials]
    assert all(ran), "both agents should have worked"
    assert sorted(s["trial"] for s in starts) == [t["id"] for t in trials]  # each started exactly once
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == cap


def test_two_agent_processes_never_run_the_same_trial_on_local_disk(tmp_path, storage):
    spec_path = write_spec(
        tmp_path / "specs", {"method": "random", "run_cap": 12, "parameters": {"learning_rate": LR}}
    )
    reports, trials, starts = run_two_agents(spec_path, "par", tmp_path)
    assert_no_duplicates(reports, trials, starts, 12)


def test_a_killed_agents_trial_is_leased_again_after_the_timeout(tmp_path, storage):
    from freestack.spec import load_spec
    from freestack.sweeps.core import LocalAgent, create_sweep, load_trials

    spec_path = write_spec(
        tmp_path / "specs", {"method": "random", "run_cap": 3, "parameters": {"learning_rate": LR}}
    )
    spec = load_spec(spec_path)
    create_sweep(spec, "dead", {"end_ds": "2026-11-05"}, agents=2)
    ttl = 2.0
    victim = _agent_proc(spec_path, "dead", "victim", 0.5, ttl, tmp_path / "starts")
    deadline = time.monotonic() + 60
    while True:  # wait until the victim is mid-trial: some epochs reported, not finished
        docs = [d for d, _ in load_trials(spec, "dead")]
        if docs and 2 <= len(docs[0]["history"]) < 8:
            break
        assert victim.poll() is None and time.monotonic() < deadline, victim.communicate()[1][-2000:]
        time.sleep(0.1)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    (held,) = [d for d, _ in load_trials(spec, "dead") if d["state"] == "running"]
    epochs_before = len(held["history"])

    survivor = LocalAgent(spec, "dead", objective(), agent_id="survivor", ttl=ttl, poll_seconds=0.2)
    report = survivor.run()
    trials = {d["id"]: d for d, _ in load_trials(spec, "dead")}
    assert report.resumed == [held["id"]] and held["id"] in report.trials
    t = trials[held["id"]]
    assert t["state"] == "finished" and [a["owner"] for a in t["attempts"]] == ["victim", "survivor"]
    assert t["lease"]["attempt"] == 1
    assert [r["epoch"] for r in t["history"]] == list(range(1, 9))  # resumed after epoch epochs_before
    assert epochs_before >= 2
    assert len(trials) == 3 and all(d["state"] == "finished" for d in trials.values())


def test_a_stale_lease_holder_cannot_write_after_a_take_over(tmp_path, storage, make_spec):
    """Fencing: once another agent has taken a trial over, the old holder's writes are refused."""
    from freestack.sweeps.core import LeaseLost, LocalAgent, TrialLease, create_sweep, load_trials
    from freestack.sweeps.core import trial_id as tid

    spec = make_spec({"method": "random", "run_cap": 1, "parameters": {"learning_rate": LR}})
    create_sweep(spec, "fence", {"end_ds": "2026-11-05"}, agents=2)
    a = LocalAgent(spec, "fence", objective(), agent_id="a", ttl=0.5)
    doc, token = a._propose([])
    old = TrialLease(a._trial_path(doc["id"]), doc, token, "a", 0.5)
    time.sleep(0.6)
    b = LocalAgent(spec, "fence", objective(), agent_id="b", ttl=30)
    new, _ = b._take_over_expired(load_trials(spec, "fence"))
    assert new["lease"]["owner"] == "b"
    with pytest.raises(LeaseLost, match="taken over by 'b'"):
        old.update(lambda d: d["history"].append({"epoch": 1}))
    ((doc_now, _),) = load_trials(spec, "fence")
    assert doc_now["history"] == [] and doc_now["lease"]["owner"] == "b" and doc_now["id"] == tid(0)


def test_without_a_reachable_wandb_server_the_local_controller_runs(monkeypatch, caplog):
    from freestack.hooks.wandb import WandbHook
    from freestack.sweeps.wandb_sweep import server_settings

    monkeypatch.delenv("AIRFLOW_CONN_WANDB_DEFAULT", raising=False)
    assert server_settings(WandbHook().settings()) is None  # no key: local
    # a key, but the server does not answer: local, with a warning saying so
    monkeypatch.setenv(
        "AIRFLOW_CONN_WANDB_DEFAULT",
        json.dumps(
            {
                "conn_type": "wandb",
                "password": "x" * 40,
                "host": "http://127.0.0.1:9",
                "extra": {"mode": "online"},
            }
        ),
    )
    with caplog.at_level("WARNING"):
        assert server_settings(WandbHook().settings()) is None
    assert "cannot be reached" in caplog.text and "local controller" in caplog.text


def test_validation_is_the_engines_without_scipy_and_a_fresh_process_still_reaches_the_engine():
    """Parse-time validation gives the engine's messages without importing scipy (1-2 s per DAG
    parse); a task process that never parsed a spec still finds ``sweeps.params`` through the engine."""

    probe = (
        "import sys, warnings, json\n"
        "warnings.simplefilter('ignore')\n"
        "from freestack.sweeps.spec import schema_violations\n"
        "configs = [\n"
        " {'method': 'random', 'parameters': {'lr': {'distribution': 'log_uniform', 'min': -9, 'max': -2}}},\n"
        " {'method': 'random', 'parameters': {'lr': {'distribution': 'uniform', 'min': 0}}},\n"
        " {'method': 'random', 'parameters': {'lr': {'min': 5, 'max': 1}}},\n"
        " {'method': 'bogus', 'parameters': {'lr': {'values': [1], 'probabilities': [0.4]}}},\n"
        " {'method': 'grid', 'parameters': {'m': {'parameters': {'d': {'values': [1, 2]}}}}},\n"
        "]\n"
        "ours = [schema_violations(c) for c in configs]\n"
        "light = 'scipy' not in sys.modules\n"
        "from freestack.sweeps.config import sweeps_engine\n"
        "engine = sweeps_engine()\n"
        "theirs = [engine.schema_violations_from_proposed_config(c) for c in configs]\n"
        "print(json.dumps({'light': light, 'same': ours == theirs, 'ours': ours, 'theirs': theirs,\n"
        "                  'delim': engine.params.HyperParameterSet.NESTING_DELIMITER}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["light"], "validating a sweep block imported scipy"
    assert result["same"], (result["ours"], result["theirs"])
    assert any("base-e exponents" in m for m in result["ours"][0])
    assert result["delim"]


def test_an_orphaned_agent_stops_and_leaves_its_trial_to_be_taken_over(make_spec, monkeypatch):
    """Its worker died (the task process was re-parented): a trial that then breaks (a closed pipe to
    the dead supervisor) is not marked failed, and the agent takes no further trial."""
    from freestack.sweeps.core import LocalAgent, SweepError, create_sweep, load_trials

    spec = make_spec({"method": "random", "run_cap": 4, "parameters": {"learning_rate": LR}})
    create_sweep(spec, "orphan", {"end_ds": "2026-11-05"}, agents=1)
    real_ppid = os.getppid()
    state = {"ppid": real_ppid}
    monkeypatch.setattr(os, "getppid", lambda: state["ppid"])

    def trial(doc, report_epoch):
        state["ppid"] = 1  # the supervisor dies while this trial trains
        raise BrokenPipeError(32, "Broken pipe")

    agent = LocalAgent(spec, "orphan", trial, agent_id="orphan", ttl=30)
    with pytest.raises(SweepError, match="supervising process is gone"):
        agent.run()
    (doc,) = [d for d, _ in load_trials(spec, "orphan")]
    assert doc["state"] == "running" and "error" not in doc  # its lease expires; another agent resumes it
    assert agent.report.lost == [doc["id"]]
