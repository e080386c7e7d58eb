"""Every shell command block of README.md and docs/ runs as printed, on one demo state.

The demo sandbox (:mod:`tests.support.demo_sandbox`: its own AIRFLOW_HOME, project home, Airflow port and
serving ports, shared with the UI's browser tests) runs the README's ``make demo`` first: that run is also what the demo's own tests here look at (its summary, every task
log through the REST API, the levels of its log lines). Then every block of every page runs in the
site's order, getting-started.md last (it ends with ``make down``), and finally nothing the demo
started may be left running. How a block is run:

- ``<!-- docs-test: skip (needs a cluster) -->`` (or another reason that names what the sandbox lacks: a
  cluster, the Hugging Face Hub, a GPU) on the line before it: not run (Kubernetes, compose, a Hub
  download, CUDA);
- ``make test*``, ``make lint``, ``make docs``, ``make bench``: ``make -n`` only (the target exists and
  resolves): CI runs them itself, and the suite cannot run itself;
- a command whose comment says ``until Ctrl-C`` starts a server: it must still run after 10 s, then
  it gets SIGINT;
- the default addresses in commands (Airflow's 127.0.0.1:8080, serving's 127.0.0.1:9000) are the
  sandbox's own ports;
- everything else runs as printed, in one ``bash -e`` per block (so ``export`` carries to the next line);
  a block of the same commands as one that already ran and succeeded (docs/index.md's ``make demo``, the
  README's) is not run again.

Slow (a real demo under the real scheduler): ``-m slow``.
"""

from __future__ import annotations

import json
import re
import textwrap
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
KEEP_MODEL_SERVERS = True  # the sandbox's servers are its own; `make down` stops them
SKIP_MARK = re.compile(r"^<!-- docs-test: skip \(needs (a cluster|the Hugging Face Hub|a GPU)\) -->$")
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
            got = api.call(
                "GET", f"/dags/{dag_id}/dagRuns/{q}/taskInstances/{t['task_id']}/logs/{t['try_number']}{mi}"
            )
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
    agents = [
        t
        for t in api.call("GET", f"/dags/digits_train/dagRuns/{q}/taskInstances?task_id=agent")[
            "task_instances"
        ]
        if t["task_id"] == "agent"
    ]
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
            errors += [
                f"{dag_id} {name}: {e.get('event')}"
                for e in content
                if isinstance(e, dict) and e.get("level") in ("error", "critical")
            ]
    assert not errors, "\n".join(errors[:30])
    assert "Traceback" not in demo.stdout + demo.stderr


def _check_backfill_on_the_demo(out, sandbox) -> None:
    """The documented backfill on the stack `make demo` left (digits_train unpaused): its plan says that
    the lake updates would start digits_train runs (the sweep, a possible new production), and with
    --no-downstream none was started: digits_train was paused meanwhile, then unpaused again."""
    from urllib.error import HTTPError

    plan = next((ln for ln in out.stdout.splitlines() if ln.startswith("the 5 runs update digits_lake")), "")
    assert (
        "digits_train is scheduled (unpaused): each update it sees starts a digits_train run (up to 5)"
        in plan
    ), out.stdout
    assert (
        "sweep of 8 trials" in plan
        and "may promote a new production model" in plan
        and "--no-downstream" in plan
    )
    assert "dry run: nothing was created" in out.stdout
    assert out.stdout.count("paused digits_train for the backfill (--no-downstream)") == 2, out.stdout
    assert out.stdout.count("unpaused digits_train again, as it was") == 2, out.stdout
    api = sandbox.api()
    assert api.call("GET", "/dags/digits_train")["is_paused"] is False
    events = api.call("GET", "/assets/events?source_dag_id=digits_ingest&limit=100&order_by=-timestamp")[
        "asset_events"
    ]
    ours = [e for e in events if str(e.get("source_run_id")).startswith("backfill__2026-11-0")]
    assert len(ours) >= 10 and not [e["created_dagruns"] for e in ours if e["created_dagruns"]], ours
    try:
        queued = api.call("GET", "/dags/digits_train/assets/queuedEvents")["queued_events"]
    except HTTPError as exc:  # 404: nothing queued
        assert exc.code == 404, exc
        queued = []
    assert queued == [], queued


def _runs_done(api, dag_id: str, at_least: int = 1, timeout: float = 1800) -> list[dict]:
    """``dag_id``'s runs once there are ``at_least`` and none is queued or running (the scheduler's own
    runs included)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        runs = api.call("GET", f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
        if len(runs) >= at_least and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        assert time.monotonic() < deadline, f"{dag_id}: runs still going after {timeout:.0f} s: {runs}"
        time.sleep(5)


PAGE = "tutorials/instruction-tune.md"


def _page(name: str) -> str:
    return " ".join((ROOT / "docs" / name).read_text().split())


def _check_score_on_the_demo(out, sandbox) -> None:
    """The scoring tutorial's count: the backfill's days and the latest interval its unpausing started."""
    assert "5 runs succeeded" in out.stdout, out.stdout
    runs = _runs_done(sandbox.api(), "digits_score", at_least=6, timeout=600)
    assert all(r["state"] == "success" for r in runs), runs
    days = sorted(p.name for p in (sandbox.storage / "scores" / "digits").glob("ds=*"))
    assert len(days) == 6 and "Six days are scored" in _page("tutorials/score-nightly.md"), days


def _trained_offline(pipeline: str, model: str | None = None):
    """A check that the tutorial's offline run of ``pipeline``: the small local base, instruction-tuned,
    passed the gate and serves (as ``model``, by default the pipeline's name)."""

    def check(out, sandbox) -> None:
        api = sandbox.api()
        runs = _runs_done(api, f"{pipeline}_train")
        if [r["state"] for r in runs] != ["success"]:
            logs = _logs(api, f"{pipeline}_train", runs[-1]["dag_run_id"])

            def bad(content: list) -> bool:
                return any(isinstance(e, dict) and e.get("level") in ("error", "critical") for e in content)

            shown = {
                task: [str(e.get("event") if isinstance(e, dict) else e)[:400] for e in content][-15:]
                for task, content in logs.items()
                if bad(content)
            } or {t: c[-8:] for t, c in logs.items()}
            text = json.dumps(shown, indent=1, default=str)[-6000:]
            raise AssertionError(
                f"{pipeline}_train: {[r['state'] for r in runs]}; tasks: {sorted(logs)}\n{text}"
            )
        aliases = json.loads(
            (sandbox.storage / "registry" / (model or pipeline) / "aliases.json").read_text()
        )
        assert "production" in json.dumps(aliases), aliases

    return check


def _check_rewarded(out, sandbox) -> None:
    """The tutorial's GRPO step: its run succeeded, and arith_tiny's production is now the GRPO version,
    promoted by the gate over the instruction-tuned version it started from, on the same test prompts, by
    the figures the page gives (within 0.1: another CPU's arithmetic samples other answers), and by a visible
    margin (the gate itself asks 0.02)."""
    _trained_offline("arith_tiny_grpo", model="arith_tiny")(out, sandbox)
    registry = sandbox.storage / "registry" / "arith_tiny"
    version = json.loads((registry / "aliases.json").read_text())["production"]
    lineage = json.loads((registry / version / "lineage.json").read_text())
    metrics = json.loads((registry / version / "evaluation" / "metrics.json").read_text())
    tuned, start = metrics["candidate"]["exact_match"], metrics["champion"]["exact_match"]
    said = re.search(r"answered (0\.\d+) of the (\d+) test prompts exactly.*?answered (0\.\d+)", _page(PAGE))
    assert said, "the tutorial gives the GRPO step's figures"
    assert (
        lineage["objective"]["name"] == "grpo" and lineage["base"]["repo"] == "registry:arith_tiny@production"
    )
    assert metrics["candidate"]["rows"] == int(said.group(2)), (metrics["candidate"], said.groups())
    assert abs(tuned - float(said.group(1))) < 0.1 and abs(start - float(said.group(3))) < 0.1, (tuned, start)
    assert tuned >= start + 0.1, (tuned, start)


def _check_agent_loop(out, sandbox) -> None:
    """The tool-use tutorial's agent loop: the model called add with the question's numbers (tool_choice
    auto: a call it learnt, read back by the server), then, given the tool's result in a tool turn, answered
    in text with a number (the page says the tiny model may miscopy it: its exact match, not this loop,
    measures that)."""
    assert 'called add {"a": 38, "b": 45} -> 83' in out.stdout, out.stdout
    assert re.search(r"^answer: \d+$", out.stdout, re.M), out.stdout


def _check_second_demo(out, sandbox) -> None:
    """A second `make demo` re-lands the same days, and the first model scores on them as the docs say."""
    versions = sorted(p for p in (sandbox.storage / "registry" / "digits").glob("v*") if p.is_dir())
    if len(versions) != 2:
        return  # the first demo, or a later one whose window holds the days backfilled meanwhile
    last = json.loads((versions[-1] / "evaluation" / "metrics.json").read_text())
    first_days = [p["ds"] for p in json.loads((versions[0] / "lineage.json").read_text())["partitions"]]
    last_days = [p["ds"] for p in json.loads((versions[-1] / "lineage.json").read_text())["partitions"]]
    assert last_days == first_days, (first_days, last_days)
    said = re.search(r"the first model scores about (0\.\d+)", _page("stages/evaluate.md"))
    assert said and abs(last["champion"]["accuracy"] - float(said.group(1))) < 0.15, (said, last["champion"])


def _check_notebook_untouched(out, sandbox) -> None:
    """`jupyter execute` writes nothing back: the tracked notebook holds no outputs, and no checkpoints."""
    folder = ROOT / "docs" / "notebooks"
    cells = json.loads((folder / "explore.ipynb").read_text())["cells"]
    assert not [c for c in cells if c.get("outputs") or c.get("execution_count")], "outputs written back"
    assert not (folder / ".ipynb_checkpoints").exists()


#: checks of what a block did, run right after it (while the stack it ran on is up): (a text in the block, check)
AFTER = [
    ("backfill digits --start 2026-11-01 --end 2026-11-05 --no-downstream", _check_backfill_on_the_demo),
    ("backfill digits --dag score --start 2026-11-01 --end 2026-11-05", _check_score_on_the_demo),
    ("dags trigger arith_tiny_train", _trained_offline("arith_tiny")),
    ("dags trigger tools_tiny_train", _trained_offline("tools_tiny")),
    ("dags trigger arith_tiny_grpo_train", _check_rewarded),
    ("until the model answers instead of calling", _check_agent_loop),
    ("make demo", _check_second_demo),
    ("jupyter execute docs/notebooks/explore.ipynb", _check_notebook_untouched),
]


@pytest.mark.parametrize("block_id,text,skipped", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_every_documented_command_runs_as_printed(block_id, text, skipped, demo, sandbox):
    if skipped:
        pytest.skip("marked as needing what the sandbox lacks (a cluster, the Hugging Face Hub, a GPU)")
    out = sandbox.run(block_id, text)
    assert out.returncode == 0, f"{block_id} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    for needle, check in AFTER:
        if needle in text and block_id not in sandbox.reused:  # a reused block was checked when it ran
            check(out, sandbox)


def test_the_backfill_on_the_demos_stack_is_documented_and_checked():
    """The documented backfill flow on the demo's stack (docs/operating/embedded.md) is the one checked."""
    checked = [b for b, text, skipped in BLOCKS if not skipped and AFTER[0][0] in text]
    assert [b.split("#")[0] for b in checked] == ["docs/operating/embedded.md"], checked


def test_the_tutorials_offline_llm_run_is_documented_and_checked():
    """The instruction-tuning tutorial trains on a local base as printed: its blocks run (none marked as
    needing the Hub) and the run they start is checked."""
    blocks = [(b, text) for b, text, skipped in BLOCKS if b.startswith(f"docs/{PAGE}") and not skipped]
    assert any("include/demo/tiny_lm.py" in text for _, text in blocks), blocks
    assert any(AFTER[2][0] in text for _, text in blocks), blocks


def test_where_things_are_lists_what_make_demo_made(demo, sandbox):
    """Getting started's map of the project's state: every folder and file it lists is there after `make
    demo` (in the sandbox, .airflow/ is its AIRFLOW_HOME and .freestack/ its FREESTACK_HOME's)."""
    text = (ROOT / "docs" / "getting-started.md").read_text()
    block = re.search(r"## Where things are.*?```text\n(.*?)```", text, re.S).group(1)
    places = {".airflow/": Path(sandbox.env["AIRFLOW_HOME"])}
    listed = [t for line in block.splitlines() for t in line.split("  ")[0].split()]
    assert listed, block
    for name in listed:
        path = places.get(name) or (sandbox.base / name if name.startswith(".freestack") else ROOT / name)
        assert path.exists(), f"{name} is listed, but `make demo` did not make {path}"


def test_make_down_stopped_everything_the_demo_started(demo, sandbox):
    downs = [r for b, r in sandbox.results.items() if "make down" in dict((x[0], x[1]) for x in BLOCKS)[b]]
    assert downs, "no page runs `make down`"
    said = downs[-1].stdout
    assert "stopped airflow standalone" in said and "model server" in said, said
    left = sandbox.processes()
    assert not left, "still running after `make down`:\n" + "\n".join(left)
