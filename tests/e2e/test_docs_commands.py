"""Every shell command block of README.md and docs/ runs as printed, on one demo state.

The demo sandbox (:mod:`tests.support.demo_sandbox`: its own AIRFLOW_HOME, project home, Airflow port and
serving ports, shared with the UI's browser tests) runs the README's ``make demo`` first: that run is also what the demo's own tests here look at (its summary, every task
log through the REST API, the levels of its log lines). Then every block of every page runs in the
site's order, getting-started.md last (it ends with ``make down``), and finally nothing the demo
started may be left running. How a block is run:

- ``<!-- docs-test: skip (needs a cluster) -->`` (or another reason that names what the sandbox lacks: a
  cluster, the Hugging Face Hub) on the line before it: not run (Kubernetes, compose, a Hub download);
- ``make test*``, ``make lint``, ``make docs``, ``make bench``: ``make -n`` only (the target exists and
  resolves): CI runs them itself, and the suite cannot run itself;
- a command whose comment says ``until Ctrl-C`` starts a server: it must still run after 10 s, then
  it gets SIGINT;
- the default addresses in commands (Airflow's 127.0.0.1:8080, serving's 127.0.0.1:9000) are the
  sandbox's own ports;
- everything else runs as printed, in one ``bash -e`` per block (so ``export`` carries to the next line).

Slow (a real demo under the real scheduler): ``-m slow``.
"""

from __future__ import annotations

import re
import textwrap
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
KEEP_MODEL_SERVERS = True  # the sandbox's servers are its own; `make down` stops them
SKIP_MARK = re.compile(r"^<!-- docs-test: skip \(needs (a cluster|the Hugging Face Hub)\) -->$")
FENCE = re.compile(r"^[ ]*```(?:bash|sh|shell)\n(.*?)^[ ]*```", re.S | re.M)


def _pages() -> list[Path]:
    docs = sorted((ROOT / "docs").rglob("*.md"))
    last = [p for p in docs if p.name == "getting-started.md"]
    return [ROOT / "README.md", *[p for p in docs if p not in last], *last]


def _blocks() -> list[tuple[str, str, bool]]:
    """(id, text, skipped) of every shell block, in running order."""
    out = []
    for page in _pages():
        text = page.read_text()
        for k, m in enumerate(FENCE.finditer(text)):
            before = text[: m.start()].rstrip().splitlines()
            skipped = bool(before) and bool(SKIP_MARK.match(before[-1].strip()))
            out.append((f"{page.relative_to(ROOT)}#{k + 1}", textwrap.dedent(m.group(1)), skipped))
    return out


BLOCKS = _blocks()


def _train_run(demo) -> str:
    m = re.search(r"digits_train: run (\S+) success", demo.stdout)
    assert m, demo.stdout
    return m.group(1)


def _logs(api, dag_id: str, run_id: str) -> dict[str, list]:
    q = urllib.parse.quote(run_id, safe="")
    tis = api.call("GET", f"/dags/{dag_id}/dagRuns/{q}/taskInstances?limit=200")["task_instances"]
    out = {}
    for t in tis:
        if t["state"] in ("success", "failed"):
            mi = f"?map_index={t['map_index']}" if t["map_index"] >= 0 else ""
            got = api.call("GET", f"/dags/{dag_id}/dagRuns/{q}/taskInstances/{t['task_id']}/logs/{t['try_number']}{mi}")
            out[f"{t['task_id']}[{t['map_index']}]"] = got["content"]
    return out


def test_demo_prints_a_short_summary_and_keeps_the_full_log(demo, sandbox):
    lines = demo.stdout.splitlines()
    assert len(lines) <= 60, demo.stdout
    text = demo.stdout
    assert f"Airflow: http://127.0.0.1:{sandbox.port}" in text
    assert "curl -s -H 'Content-Type: application/json'" in text and "the server answered: digit" in text
    assert "gate: v" in text and "test: accuracy" in text
    assert f"http://127.0.0.1:{sandbox.port}/dags/digits_train/runs/" in text
    full = (sandbox.base / ".freestack" / "demo.log").read_text()
    assert "quarantine:" in full and "sweep " in full and "served:" in full  # the full reports


def test_demo_task_logs_are_readable_through_the_rest_api_and_the_agents_ran_side_by_side(demo, sandbox):
    api, run_id = sandbox.api(), _train_run(demo)
    logs = _logs(api, "digits_train", run_id)
    assert {"agent[0]", "agent[1]", "evaluate[-1]", "gate[-1]", "deploy[-1]"} <= set(logs), sorted(logs)
    for name, content in logs.items():
        ours = [e for e in content if isinstance(e, dict) and "freestack" in (e.get("logger") or "")]
        assert ours, (name, content[:20])  # the task's own lines, not only Airflow's frame
    q = urllib.parse.quote(run_id, safe="")
    agents = [t for t in api.call("GET", f"/dags/digits_train/dagRuns/{q}/taskInstances?task_id=agent")["task_instances"]
              if t["task_id"] == "agent"]  # fmt: skip
    starts, ends = [t["start_date"] for t in agents], [t["end_date"] for t in agents]
    assert len(agents) == 2 and max(starts) < min(ends), agents  # both ran at once


def test_nothing_the_demo_logged_is_at_error_level(demo, sandbox):
    api = sandbox.api()
    runs = [("digits_train", _train_run(demo))]
    ingest = api.call("GET", "/dags/digits_ingest/dagRuns?limit=50")["dag_runs"]
    runs += [("digits_ingest", r["dag_run_id"]) for r in ingest]
    errors = []
    for dag_id, run_id in runs:
        for name, content in _logs(api, dag_id, run_id).items():
            errors += [f"{dag_id} {name}: {e.get('event')}" for e in content
                       if isinstance(e, dict) and e.get("level") in ("error", "critical")]  # fmt: skip
    assert not errors, "\n".join(errors[:30])
    assert "Traceback" not in demo.stdout + demo.stderr


def _check_backfill_on_the_demo(out, sandbox) -> None:
    """The documented backfill on the stack `make demo` left (digits_train unpaused): its plan says that
    the lake updates would start digits_train runs (the sweep, a possible new production), and with
    --no-downstream none was started: digits_train was paused meanwhile, then unpaused again."""
    from urllib.error import HTTPError

    plan = next((ln for ln in out.stdout.splitlines() if ln.startswith("the 5 runs update digits_lake")), "")
    assert "digits_train is scheduled (unpaused): each update it sees starts a digits_train run (up to 5)" in plan, out.stdout
    assert "sweep of 8 trials" in plan and "may promote a new production model" in plan and "--no-downstream" in plan
    assert "dry run: nothing was created" in out.stdout
    assert out.stdout.count("paused digits_train for the backfill (--no-downstream)") == 2, out.stdout
    assert out.stdout.count("unpaused digits_train again, as it was") == 2, out.stdout
    api = sandbox.api()
    assert api.call("GET", "/dags/digits_train")["is_paused"] is False
    events = api.call("GET", "/assets/events?source_dag_id=digits_ingest&limit=100&order_by=-timestamp")["asset_events"]
    ours = [e for e in events if str(e.get("source_run_id")).startswith("backfill__2026-11-0")]
    assert len(ours) >= 10 and not [e["created_dagruns"] for e in ours if e["created_dagruns"]], ours
    try:
        queued = api.call("GET", "/dags/digits_train/assets/queuedEvents")["queued_events"]
    except HTTPError as exc:  # 404: nothing queued
        assert exc.code == 404, exc
        queued = []
    assert queued == [], queued


#: checks of what a block did, run right after it (while the stack it ran on is up): (a text in the block, check)
AFTER = [("backfill digits --start 2026-11-01 --end 2026-11-05 --no-downstream", _check_backfill_on_the_demo)]


@pytest.mark.parametrize("block_id,text,skipped", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_every_documented_command_runs_as_printed(block_id, text, skipped, demo, sandbox):
    if skipped:
        pytest.skip("marked as needing a cluster")
    out = sandbox.run(block_id, text)
    assert out.returncode == 0, f"{block_id} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    for needle, check in AFTER:
        if needle in text:
            check(out, sandbox)


def test_the_backfill_on_the_demos_stack_is_documented_and_checked():
    """The documented backfill flow on the demo's stack (docs/operating/embedded.md) is the one checked."""
    checked = [b for b, text, skipped in BLOCKS if not skipped and any(n in text for n, _ in AFTER)]
    assert [b.split("#")[0] for b in checked] == ["docs/operating/embedded.md"], checked


def test_make_down_stopped_everything_the_demo_started(demo, sandbox):
    downs = [r for b, r in sandbox.results.items() if "make down" in dict((x[0], x[1]) for x in BLOCKS)[b]]
    assert downs, "no page runs `make down`"
    said = downs[-1].stdout
    assert "stopped airflow standalone" in said and "model server" in said, said
    left = sandbox.processes()
    assert not left, "still running after `make down`:\n" + "\n".join(left)
