"""The sweep page's live view and the ML views' sweep and monitoring additions, in Debian's Chromium against the demo
sandbox (the real ``make demo`` of tests/support/demo_sandbox.py):

- a sweep runs while its page is open: the real local controller (``freestack.sweeps.core``: create_sweep,
  then a LocalAgent, which writes each trial's ``trial.json`` as the DAG's agents do) trains the synthetic
  objective of tests/support/sweeps.py into the sandbox's storage; its trials appear in the table without a
  reload, a running one with its state and epoch, and the page stops polling once the sweep is finished;
- the learning rate (log_uniform_values) is drawn on a log axis (and as log10 in the parallel coordinates,
  labelled in its own units); the parallel coordinates and the parameter importance are drawn; the trials
  table's filter finds a trial;
- a sweep on two objectives (NSGA-II's) draws its Pareto front: the front's trials joined, the others apart;
- the Monitoring page draws each model's drift over time where the monitor judged intervals with series.

Screenshots go under ``.freestack/test-artifacts/ui/`` (30-... onwards). Slow: ``-m slow``.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.support.sweeps import OBJECTIVES, objective, sized, write_spec
from tests.ui.test_views_browser import _login, _shot, browser  # noqa: F401  (the browser fixture)

pytestmark = pytest.mark.slow
KEEP_MODEL_SERVERS = True  # the sandbox's servers are its own
RUN_CAP = 6
SWEEP = {
    "method": "random",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "run_cap": RUN_CAP,
    "parameters": {
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-2},
        "batch_size": {"values": [32, 64, 128]},
        "model": {"parameters": {"dropout": {"distribution": "uniform", "min": 0.0, "max": 0.4}}},
    },
}


@pytest.fixture
def live_sweep(demo, sandbox, tmp_path):
    """A new sweep in the sandbox's storage (no trial yet) and a function that runs its agent in a thread."""
    from freestack.spec import load_spec
    from freestack.sweeps.core import LocalAgent, create_sweep

    spec = load_spec(write_spec(tmp_path / "specs", SWEEP, storage_root=sandbox.storage.as_uri()))
    sweep_id = f"sweep-live-{uuid.uuid4().hex[:8]}"
    create_sweep(
        spec, sweep_id, {"end_ds": "2026-11-05", "airflow": {"run_id": f"manual__{sweep_id}"}}, agents=1
    )
    threads: list[threading.Thread] = []

    def start_agent() -> None:
        agent = LocalAgent(spec, sweep_id, objective(epochs=3, sleep=1.0), ttl=30, poll_seconds=0.2)
        threads.append(threading.Thread(target=agent.run, name="live-sweep-agent", daemon=True))
        threads[-1].start()

    yield sweep_id, start_agent
    for t in threads:
        t.join(timeout=120)


def _figure(page, target: str, expr: str):
    """``expr`` evaluated on the drawn Plotly graph div ``target`` (``gd``)."""
    page.locator(f"#{target}[data-drawn=true] svg.main-svg").first.wait_for(timeout=30_000)
    return page.evaluate(f"() => {{ const gd = document.getElementById('{target}'); return {expr}; }}")


def _log_axis_of(page, parameter: str) -> str | None:
    """The x axis type of ``parameter``'s panel in the metric-vs-parameters figure (panels are titled by name)."""
    return _figure(
        page,
        "fig-1",
        f"""(() => {{
        const k = gd.layout.annotations.findIndex((a) => a.text === {parameter!r});
        const axis = gd.layout[k === 0 ? 'xaxis' : 'xaxis' + (k + 1)];
        return axis ? axis.type : null; }})()""",
    )


def test_trials_appear_live_with_log_axes_parallel_coordinates_importance_and_filter(
    demo,
    sandbox,
    browser,  # noqa: F811
    live_sweep,
):
    sweep_id, start_agent = live_sweep
    page = _login(browser, sandbox, "admin")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{sandbox.url}/freestack/ui/sweeps/digits/{sweep_id}")
    assert page.locator("#summary").get_attribute("data-status") == "running"
    assert (
        page.locator("#trials tr[data-trial]").count() == 0
        and "0 of 6 trials" in page.locator("#summary").inner_text()
    )
    page.locator("#importance-note").wait_for()  # "0 finished trials: too few ..."
    page.evaluate("() => { window.notReloaded = true; }")

    start_agent()
    running = page.locator("#trials tr[data-state=running]")
    running.first.wait_for(timeout=60_000)  # a trial under way: its state and epoch, not blank cells
    assert "running · epoch" in running.first.locator("td").nth(1).inner_text()
    _shot(page, "30-sweep-live-running")
    page.locator("#summary[data-status=finished]").wait_for(timeout=120_000)
    assert page.evaluate("() => window.notReloaded === true")  # every row came without a reload
    rows = page.locator("#trials tr[data-trial]")
    assert rows.count() == RUN_CAP and page.locator("#trials tr[data-state=finished]").count() == RUN_CAP
    assert page.locator("#trial-count").inner_text() == str(RUN_CAP)

    assert _log_axis_of(page, "learning_rate") == "log" and _log_axis_of(page, "model.dropout") != "log"
    par = _figure(
        page,
        "fig-3",
        "({labels: gd.layout.xaxis.ticktext, lines: gd.data.filter((d) => d.mode === 'lines')"
        ".reduce((n, d) => n + d.x.filter((x) => x === null).length, 0)})",
    )
    assert par == {
        "labels": ["batch_size", "learning_rate (log)", "model.dropout", "val_accuracy"],
        "lines": RUN_CAP,
    }
    ticks = _figure(page, "fig-3", "gd.layout.annotations.filter((a) => a.x === 1).map((a) => a.text)")
    assert len(ticks) >= 2 and all(1e-4 <= float(t) <= 3e-2 for t in ticks), (
        ticks
    )  # the log axis in its own units
    assert page.locator("#fig-3 .annotation-text").count() >= len(ticks)
    assert page.locator("#importance tr[data-parameter]").count() == 3
    assert _figure(page, "fig-4", "gd.data.map((d) => d.name)") == ["importance", "correlation"]
    _shot(page, "31-sweep-live-finished")
    polls = page.evaluate(
        "() => performance.getEntriesByType('resource').filter((r) => r.name.includes('/live?')).length"
    )
    page.wait_for_timeout(7_000)
    assert (
        page.evaluate(
            "() => performance.getEntriesByType('resource').filter((r) => r.name.includes('/live?')).length"
        )
        == polls
    )

    page.reload()  # the table's filter (views.js) on the finished sweep's rows
    box = page.locator("#trials-filter")
    box.fill("t0003")
    assert [r.get_attribute("data-trial") for r in page.locator("#trials tr[data-trial]:visible").all()] == [
        "t0003"
    ]
    _shot(page, "32-sweep-trials-filtered")
    assert not errors, errors  # no script or CSP error


def test_the_demo_sweep_draws_its_learning_rate_on_a_log_axis(demo, sandbox, browser):  # noqa: F811
    from tests.ui.test_views_browser import _stored

    s = _stored(sandbox)
    page = _login(browser, sandbox, "admin")
    page.goto(f"{sandbox.url}/freestack/ui/sweeps/digits/{s['best']['sweep_id']}")
    assert page.locator("#summary").get_attribute("data-status") == "finished"
    assert _log_axis_of(page, "learning_rate") == "log"
    assert "learning_rate (log)" in _figure(page, "fig-3", "gd.layout.xaxis.ticktext")
    assert page.locator("#importance tr[data-parameter]").count() >= 2  # the demo's 8 trials are enough


def test_a_sweep_on_two_objectives_draws_its_pareto_front(demo, sandbox, browser, tmp_path):  # noqa: F811
    from freestack.spec import load_spec
    from freestack.sweeps import pareto
    from freestack.sweeps.core import LocalAgent, create_sweep, load_trials

    lr = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}
    sweep = {"method": "nsga2", "metrics": OBJECTIVES, "run_cap": 8, "parameters": {"learning_rate": lr}}
    spec = load_spec(write_spec(tmp_path / "specs", sweep, storage_root=sandbox.storage.as_uri()))
    sweep_id = f"sweep-front-{uuid.uuid4().hex[:8]}"
    create_sweep(
        spec, sweep_id, {"end_ds": "2026-11-05", "airflow": {"run_id": f"manual__{sweep_id}"}}, agents=1
    )
    LocalAgent(spec, sweep_id, sized, ttl=30).run()
    front = pareto.front(spec.sweep, [d for d, _ in load_trials(spec, sweep_id)])
    page = _login(browser, sandbox, "admin")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{sandbox.url}/freestack/ui/sweeps/digits/{sweep_id}")
    drawn = _figure(
        page,
        "fig-0",
        "({title: gd.layout.title.text, x: gd.layout.xaxis.title.text, traces: gd.data.map((d) => "
        "({name: d.name, trials: d.text, mode: d.mode})), points: gd.querySelectorAll('.scatterlayer .point').length})",
    )
    assert drawn["title"] == "Pareto front: val_accuracy (maximize) vs trainable_params (minimize)", drawn
    assert drawn["x"] == "trainable_params (lower is better)"
    traces = {t["name"]: t for t in drawn["traces"]}
    assert sorted(traces["Pareto front"]["trials"]) == sorted(front) and len(front) >= 2, (drawn, front)
    assert traces["Pareto front"]["mode"] == "lines+markers"
    assert len(traces["other trials"]["trials"]) + len(front) == 8 and drawn["points"] == 8, drawn
    header = page.locator("#trials thead th").all_inner_texts()
    assert "trainable_params minimize" in [h.replace("\n", " ").strip() for h in header], header
    marked = [r.get_attribute("data-trial") for r in page.locator("#trials tr[data-front=true]").all()]
    assert sorted(marked) == sorted(front), (marked, front)
    _shot(page, "33-sweep-pareto-front")
    assert not errors, errors


def test_monitoring_draws_drift_over_time(demo, sandbox, browser):  # noqa: F811
    import json

    page = _login(browser, sandbox, "admin")
    page.goto(f"{sandbox.url}/freestack/ui/monitoring")
    section = page.locator("section#monitoring-digits")
    reports = sandbox.storage / "monitoring" / "digits" / "reports"
    judged = [
        p
        for p in reports.glob("*/summary.json")
        if any(v.get("series") for v in json.loads(p.read_text())["versions"])
    ]
    if not judged:  # the demo's first monitor run may have had no rows yet: no chart is drawn from nothing
        assert section.locator(".drift-over-time").count() == 0  # (the builder's unit tests draw one)
        return
    chart = section.locator(".drift-over-time")
    target = chart.get_attribute("id")
    got = _figure(page, target, "({threshold: gd.layout.shapes[0].y0, lines: gd.data.length})")
    assert got["threshold"] == 0.2 and got["lines"] >= 1
    _shot(page, "33-monitoring-drift")
