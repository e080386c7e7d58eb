"""The sweep page's live view, log axes, parallel coordinates and parameter importance (freestack.ui.catalog,
freestack.ui.plots, freestack.ui.sweep_live), on sweeps the real local controller ran into storage with the
synthetic objective of tests/support/sweeps.py (its metric is a known function of learning rate and dropout)."""

from __future__ import annotations

import json
import math
import time

import pytest

from tests.support.sweeps import objective, write_spec

SWEEP = {
    "method": "random",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "run_cap": 10,
    "parameters": {
        "learning_rate": {
            "distribution": "log_uniform_values",
            "min": 3e-3,
            "max": 3e-2,
        },  # 10x: linear by the old rule
        "batch_size": {"values": [32, 64, 128]},
        "model": {"parameters": {"dropout": {"distribution": "uniform", "min": 0.0, "max": 0.4}}},
    },
}


@pytest.fixture
def spec(tmp_path, storage):
    from freestack.spec import load_spec

    return load_spec(write_spec(tmp_path / "specs", SWEEP))


def _sweep(spec, sweep_id: str, run: bool = True):
    from freestack.sweeps.core import LocalAgent, create_sweep

    create_sweep(spec, sweep_id, {"end_ds": "2026-11-05"}, agents=1)
    if run:
        LocalAgent(spec, sweep_id, objective(epochs=3), ttl=30).run()


def _page(spec, sweep_id: str):
    from freestack.ui.catalog import sweep_pages

    return sweep_pages.sweep_page("digits", spec, sweep_id)


def test_a_finished_sweep_has_log_axes_parallel_coordinates_and_importance(spec):
    from freestack.ui.plots import importance_chart, metric_vs_params, parallel_coordinates

    _sweep(spec, "sweep-done")
    s = _page(spec, "sweep-done")
    assert s.status == "finished" and len(s.trials) == 10 == s.max_trials
    assert s.distributions == {
        "learning_rate": "log_uniform_values",
        "batch_size": "categorical",
        "model.dropout": "uniform",
    }
    assert s.parameters == [
        "batch_size",
        "learning_rate",
        "model.dropout",
    ]  # sweep.json keeps its keys sorted
    scatter = json.loads(metric_vs_params(s))
    titles = [a["text"] for a in scatter["layout"]["annotations"]]
    axes = {name: scatter["layout"]["xaxis" if k == 0 else f"xaxis{k + 1}"] for k, name in enumerate(titles)}
    assert axes["learning_rate"]["type"] == "log" and axes["model.dropout"].get("type") != "log"

    par = json.loads(parallel_coordinates(s))
    labels = par["layout"]["xaxis"]["ticktext"]
    assert labels == ["batch_size", "learning_rate (log)", "model.dropout", "val_accuracy"]
    ticks = [a["text"] for a in par["layout"]["annotations"] if a["x"] == 1]  # the learning rate's axis
    assert "0.01" in ticks and all(3e-3 <= float(t) <= 3e-2 for t in ticks)  # in the original units
    assert [a["text"] for a in par["layout"]["annotations"] if a["x"] == 0] == [
        "32",
        "64",
        "128",
    ]  # batch_size's values
    lines = [d for d in par["data"] if d.get("mode") == "lines"]
    assert sum(d["x"].count(None) for d in lines) == len(s.trials)  # one line per trial
    lrs = [math.log10(t.params["learning_rate"]) for t in s.trials]
    first = next(d for d in lines if d["text"][0].startswith("t"))
    trial = next(t for t in s.trials if first["text"][0].startswith(f"{t.trial}:"))
    assert first["y"][1] == pytest.approx(
        (math.log10(trial.params["learning_rate"]) - min(lrs)) / (max(lrs) - min(lrs)), abs=1e-4
    )
    assert any(d.get("name", "").startswith("best") for d in par["data"]) is (s.best is not None)

    # the objective depends on learning rate and dropout, not on batch size
    imp = {i.parameter: i for i in s.importance}
    assert set(imp) == {"learning_rate", "batch_size", "model.dropout"} and s.importance_note is None
    assert sum(i.importance for i in s.importance) == pytest.approx(1.0, abs=1e-3)
    assert imp["batch_size"].importance < max(
        imp["learning_rate"].importance, imp["model.dropout"].importance
    )
    assert imp["model.dropout"].correlation < 0  # the objective is best at dropout 0.1, worse above
    bars = json.loads(importance_chart(s))["data"]
    assert [b["name"] for b in bars] == ["importance", "correlation"] and set(bars[0]["y"]) == set(imp)


def test_a_running_sweep_is_live_and_too_few_trials_say_so(spec):
    from freestack.storage import join
    from freestack.sweeps.core import sweep_dir
    from freestack.ui.plots import importance_chart, parallel_coordinates

    _sweep(spec, "sweep-live", run=False)
    s = _page(spec, "sweep-live")
    assert (
        s.status == "running"
        and s.trials == []
        and s.parameters == ["batch_size", "learning_rate", "model.dropout"]
    )
    assert "no trial" in json.dumps(json.loads(parallel_coordinates(s))["layout"]["annotations"])
    assert "0 finished trials: too few" in s.importance_note and "too few" in importance_chart(s)
    doc = json.loads(join(sweep_dir(spec, "sweep-live"), "sweep.json").read_text())
    doc["created_at"] = (
        "2020-01-01T00:00:00+00:00"  # nothing written for long, nothing leased: no agent at work
    )
    join(sweep_dir(spec, "sweep-live"), "sweep.json").write_text(json.dumps(doc))
    assert _page(spec, "sweep-live").status == "stopped"


def test_sweep_status_reads_leases_run_cap_and_best():
    from freestack.ui.catalog.sweep_pages import sweep_status

    now = time.time()
    old = "2020-01-01T00:00:00+00:00"
    running = {"state": "running", "lease": {"expires_at": now + 30}, "updated_at": old}
    dead = {"state": "running", "lease": {"expires_at": now - 30}, "updated_at": old}
    done = {"state": "finished", "updated_at": old}
    sweep = {"created_at": old, "max_trials": 2, "best": {}}
    assert sweep_status(sweep, [running, done], now) == "running"
    assert sweep_status(sweep, [dead, done], now) == "stopped"
    assert sweep_status(sweep, [done, done], now) == "finished"  # every trial in: select_best's turn
    assert sweep_status({**sweep, "best": {"best_trial": "t0000"}}, [dead], now) == "finished"
    assert (
        sweep_status(
            {**sweep, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}, [], now
        )
        == "running"
    )


def test_the_live_update_sends_rows_and_figures_only_when_something_changed(spec):
    from freestack.sweeps.core import LocalAgent
    from freestack.ui.shared import TEMPLATES
    from freestack.ui.sweep_live import sweep_update

    _sweep(spec, "sweep-poll", run=False)
    first = sweep_update(_page(spec, "sweep-poll"), "", TEMPLATES)
    assert (
        first.changed
        and first.status == "running"
        and first.rows == []
        and set(first.figures) == {"fig-1", "fig-2", "fig-3", "fig-4"}
    )
    assert not sweep_update(_page(spec, "sweep-poll"), first.signature, TEMPLATES).changed
    LocalAgent(spec, "sweep-poll", objective(epochs=2), ttl=30).run()
    later = sweep_update(_page(spec, "sweep-poll"), first.signature, TEMPLATES)
    assert (
        later.changed
        and later.status == "finished"
        and [r[0] for r in later.rows] == [f"t{k:04d}" for k in range(10)]
    )
    assert all('data-state="finished"' in html and f'data-trial="{tid}"' in html for tid, html in later.rows)
    assert 'id="trial-count">10</strong> of 10' in later.summary and 'id="importance"' in later.importance


def test_a_running_trial_shows_its_state_and_epoch(spec):
    from freestack.ui.catalog.sweep_pages import Trial
    from freestack.ui.shared import TEMPLATES

    parts = TEMPLATES.get_template("sweep_parts.html").module
    _sweep(spec, "sweep-rows", run=False)
    page = _page(spec, "sweep-rows")
    trial = Trial(
        trial="t0000",
        state="running",
        agent="agent 0",
        params={"learning_rate": 0.01},
        value=None,
        epochs=2,
        history=[None, None],
    )
    row = str(parts.trial_row(page, trial))
    assert 'data-state="running"' in row and "running · epoch 2" in row and "…" in row
