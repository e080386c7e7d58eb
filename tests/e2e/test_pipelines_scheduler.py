"""Several pipelines under the real scheduler (`airflow standalone`: DAG processor, scheduler, LocalExecutor):

1. a broken spec beside valid ones: the valid pipelines' DAGs stay live (not stale) and run; the
   broken one shows as an import error naming its file and field;
2. a 5-day ingest backfill, run 5 days at once, while lake updates trigger training: the training waits
   for the backfill and trains once on all 5 partitions (lineage: the sha256 of the bytes read); the
   runs the other lake events start find nothing new and are skipped, saying so; the OpenLineage events
   the task processes wrote (the stack's file transport) report the same datasets;
3. a team's own model (``model.type: custom``): swept, gated, registered and served;
4. tables with text and images, and an image folder, served on raw values;
5. a pretrained Hub model (the local Hub stand-in's tiny BERT) fine-tuned with LoRA: a hyperband sweep
   over LoRA's rank and the learning rate, the gate, the registry and a served prediction on raw text;
6. batch scoring (within 4 and 5): the category/text/image table and the image folder score their lakes,
   the fine-tuned text model its landing folder's CSVs, through `<p>_score`, backfilled with
   `freestack backfill --dag score`;
7. a distributed training across 2 "nodes" of one rank each: ``train`` and ``train_node`` run at once on the
   LocalExecutor and meet at the c10d rendezvous; the version gates, registers and serves.
8. a language model preference-tuned (DPO) on landed pairs, judged by the stand-in LLM judge, gated on
   its score, registered and served (tests/support/llm_pipeline.py);
9. its request log monitored on text: a quiet interval, and one where half the prompts ask for poems
   alerts on the prompts' MMD².

Slow (it starts the whole of Airflow): `-m slow`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from freestack.settings import environment
from tests.dags.test_custom_model_dag import DIGITS_NET, use_custom_model
from tests.e2e.test_backfill_standalone import DAYS, _backfill, start_airflow
from tests.support import llm_pipeline
from tests.support.landing_kinds import GLYPHS_SPEC, SHOP_SPEC, glyphs_landing, shop_landing
from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
#: the stack's pipelines but one measure no serving costs in evaluate (a model server each: minutes)
UNMEASURED = "{enabled: false}"


def _digits_text(name: str, *, train_schedule: str | None) -> str:
    """The demo spec, quick: 2 epochs, no sweep, a gate no model passes (so no model server is started),
    the window task looking every 2 s; a day without landing files is skipped (unpausing creates a run
    for yesterday, which has none)."""
    text = (ROOT / "include" / "pipelines" / "digits.yaml").read_text()
    text = text.replace("name: digits\n", f"name: {name}\n", 1)
    text = text.replace("on_missing: fail ", "on_missing: skip ", 1)
    text = text[: text.index("\nsweep:\n")] + "\n" + text[text.index("\ngate:\n") :]
    text = text.replace("  measure: {seconds: 0.5, warmup_seconds: 0.2}\n", f"  measure: {UNMEASURED}\n", 1)
    text = re.sub(r"\n  threshold: [0-9.]+\n", "\n  threshold: 0.999\n", text, count=1)
    extra = "  epochs: 2\n  ingest_poke_seconds: 2\n" + (
        f'  schedule: "{train_schedule}"\n' if train_schedule else ""
    )
    text = re.sub(r"\ntrain:\n  epochs: \d+\n", "\ntrain:\n" + extra, text, count=1)
    assert (
        "on_missing: skip" in text
        and "  epochs: 2\n" in text
        and "\nsweep:" not in text
        and "threshold: 0.999" in text
        and "measure: {enabled: false}" in text
    )
    return text


def _own_text(module: Path) -> str:
    """The demo spec with the team's own module: a 2-trial grid sweep over its constructor's width, a
    gate it passes, deployed locally; training only when triggered (a cron that does not come soon)."""
    import yaml

    data = use_custom_model(
        yaml.safe_load(_digits_text("own", train_schedule="0 0 1 1 *")), module, threshold=0.7
    )
    data["deploy"]["measure"] = {"seconds": 0.5, "warmup_seconds": 0.2}  # the stack's one measured pipeline
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    """The stack of every test here, the runtime wing's speed-ups on (param ``speedups``, which the tests
    name so that they share it)."""
    from freestack.embedded import AirflowAPI
    from freestack.serving.processes import stop_process

    base = tmp_path_factory.mktemp("pipelines")
    specs = base / "pipelines"
    specs.mkdir()
    (specs / "digits.yaml").write_text(_digits_text("digits", train_schedule=None))
    (specs / "other.yaml").write_text(_digits_text("other", train_schedule="0 0 1 1 *"))
    # a user's new pipeline with one wrong field: the spec is read, and refused
    (specs / "broken.yaml").write_text(
        _digits_text("broken", train_schedule=None).replace("format: csv", "format: xml")
    )
    hub = _more_pipelines(base, specs)
    llm = llm_pipeline.prepare(base, specs)
    # what the tasks fetch the base from, the model servers' request log written soon (the LLM's
    # monitor), and OpenLineage's file transport for every process of the stack
    lineage = base / "openlineage.json"
    # evaluate's serving measurement on in the stack's workers, as by default; only own's spec asks for it
    more = {"HF_ENDPOINT": hub["hub"].endpoint, **llm_pipeline.ENV, "FREESTACK_MEASURE_SERVING": "true"}
    with environment({**more, **_lineage_env(lineage)}):
        env, proc, log = start_airflow(base, specs, parallelism=6, speedups=True)
    llm.ready()
    yield {
        "env": env,
        "base": base,
        "api": AirflowAPI(env),
        "log": log,
        "hub": hub,
        "lineage": lineage,
        "llm": llm,
    }
    llm.stop(env["FREESTACK_STORAGE_ROOT"])
    stop_process(proc.pid, grace_seconds=15)
    hub["hub"].stop()


def _more_pipelines(base: Path, specs: Path) -> dict:
    """The pipelines of tests 3 to 7, written to ``specs``: the Hub stand-in they fetch from (started)."""
    import yaml

    from freestack.serving.processes import free_port_block

    # a team's own model (model.type: custom), swept, gated and served (its own test below)
    (base / "digits_net.py").write_text(DIGITS_NET)
    (specs / "own.yaml").write_text(_own_text(base / "digits_net.py"))
    # non-numeric data: a table with category, text and image columns, and an image folder (test 4)
    # (two pipelines deployed on one machine need an address each: deploy.local.port's default is one port)
    for spec in (SHOP_SPEC, GLYPHS_SPEC):
        (specs / f"{spec['name']}.yaml").write_text(
            yaml.safe_dump(
                {
                    **spec,
                    "schedule": None,
                    "train": {**spec["train"], "schedule": "0 0 1 1 *"},
                    "deploy": {"local": {"port": free_port_block()}, "measure": {"enabled": False}},
                    "score": {"schedule": "@daily", "batch_rows": 16},
                },
                sort_keys=False,
            )
        )
    # a pretrained Hub model fine-tuned with LoRA and swept with hyperband (test 5), from the Hub stand-in
    hub = _start_hub(base)
    reviews = _reviews_spec(free_port_block())  # scores its landing folder (CSV) as it comes, not its lake
    reviews["score"]["input"] = f"file://{base / 'storage' / 'landing' / 'reviews'}/{{ds}}/"
    (specs / "reviews.yaml").write_text(yaml.safe_dump(reviews, sort_keys=False))
    # a training across 2 "nodes" on loopback: train and train_node meet at the rendezvous (test 7)
    (specs / "ranks.yaml").write_text(_ranks_text(free_port_block()))
    return hub


#: the jobs' namespace in the stack's OpenLineage events
OL_NAMESPACE = "freestack-scheduler"


def _lineage_env(path: Path) -> dict[str, str]:
    """OpenLineage's file transport, one JSON a line appended to ``path``, for the scheduler and the
    task processes its LocalExecutor starts (they read it from the environment as they start). The events
    are sent from a thread of the task's process, as ``tests/dags/test_openlineage.py`` sends them, not
    from a fork of it (torch's threads run in the training tasks)."""
    transport = {"type": "file", "log_file_path": str(path), "append": True}
    return {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": OL_NAMESPACE,
        "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
    }


def _ranks_text(port: int) -> str:
    """The demo spec trained as 2 nodes of 1 rank (train + train_node, the gang in its own pool), a gate it
    passes, deployed locally; training only when triggered."""
    import yaml

    from tests.support.ports import free_port

    data = yaml.safe_load(_digits_text("ranks", train_schedule="0 0 1 1 *"))
    data["gate"]["threshold"] = 0.8
    data["train"]["distributed"] = {
        "nodes": 2,
        "rendezvous": f"127.0.0.1:{free_port()}",
        "timeout_seconds": 120,
        "pool": "default_pool",
    }
    data["deploy"] = {"local": {"port": port}, "measure": {"enabled": False}}
    return yaml.safe_dump(data, sort_keys=False)


def _start_hub(base: Path) -> dict:
    from tests.fakes.hub import FakeHub
    from tests.support.hf_tiny import publish, tiny_text_model
    from tests.support.landing_finetune import TEXT_BASE

    hub = FakeHub().start()
    return {"hub": hub, "commit": publish(hub.endpoint, TEXT_BASE, tiny_text_model(base / "tiny-bert"))}


def _reviews_spec(port: int) -> dict:
    """The fine-tuning test pipeline with a sweep: 4 trials over LoRA's rank and the learning rate,
    hyperband stopping the weak ones after 2 epochs."""
    from tests.support.landing_finetune import REVIEWS_SPEC

    sweep = {
        "method": "grid",
        "metric": {"name": "val_accuracy", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
        "parameters": {
            "learning_rate": {"values": [0.01, 0.001]},
            "peft": {"parameters": {"r": {"values": [2, 4]}}},
        },
    }
    return {
        **REVIEWS_SPEC,
        "train": {**REVIEWS_SPEC["train"], "schedule": "0 0 1 1 *"},
        "sweep": sweep,
        "deploy": {"local": {"port": port}, "measure": {"enabled": False}},
        "score": {"schedule": "@daily"},
    }


def _wait(what: str, check, log: Path, timeout: float = 300, every: float = 3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text(errors='replace')[-5000:]}")


def _score_backfill(stack, name: str, start: str, end: str) -> list[tuple]:
    """``freestack backfill <name> --dag score`` on the stack, then each scored day as (part, manifest)."""
    import subprocess

    import pyarrow.parquet as pq

    out = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "freestack"),
            "backfill",
            name,
            "--dag",
            "score",
            "--start",
            start,
            "--end",
            end,
            "--timeout",
            "600",
        ],
        env=stack["env"],
        capture_output=True,
        text=True,
        timeout=700,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    days = sorted((stack["base"] / "storage" / "scores" / name).glob("ds=*/part.parquet"))
    return [(pq.read_table(p), json.loads((p.parent / "_manifest.json").read_text())) for p in days]


def _runs(api, dag_id: str) -> list[dict]:
    return api.call("GET", f"/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]


#: the tests here run on the default stack only: the speed-ups change how soon the scheduler wakes and what
#: it preloads, not what a run does. Stock Airflow's scheduler runs the backfill and the crashed-scheduler
#: tests (tests/e2e/test_backfill_standalone.py); the broken spec is refused by the DAG processor, which the
#: speed-ups leave as shipped, and here the preloading scheduler must survive it too
ONCE = pytest.mark.parametrize("stack", ["speedups"], indirect=True)


@ONCE
def test_a_broken_spec_leaves_the_other_pipelines_live_and_running(stack):
    api, log = stack["api"], stack["log"]

    def listed():
        dags = {d["dag_id"]: d for d in api.call("GET", "/dags?limit=100")["dags"]}
        return dags if {"digits_train", "other_ingest"} <= set(dags) else None

    dags = _wait("the valid pipelines' DAGs", listed, log)
    wanted = {f"{p}_{k}" for p in ("digits", "other") for k in ("ingest", "train", "rollback")}
    assert wanted <= set(dags) and not any(d.startswith("broken") for d in dags)
    time.sleep(12)  # two more parses of the DAG folder: nothing goes stale meanwhile
    dags = {d["dag_id"]: d for d in api.call("GET", "/dags?limit=100&exclude_stale=false")["dags"]}
    assert all(not dags[d]["is_stale"] for d in wanted), {d: dags[d]["is_stale"] for d in wanted}

    errors = _wait(
        "the spec error", lambda: api.call("GET", "/importErrors")["import_errors"], log, timeout=120
    )
    assert len(errors) == 1, errors
    assert errors[0]["filename"].endswith("freestack_spec_errors.py")
    assert (
        "broken.yaml: source.format: Input should be 'csv', 'parquet', 'jsonl' or 'imagefolder'"
        in errors[0]["stack_trace"]
    )

    # another pipeline still runs: one ingest day of `other`, under the scheduler
    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    make_landing(stack["env"]["FREESTACK_STORAGE_ROOT"], date(2026, 11, 1), 1, pipeline="other")
    api.call("PATCH", "/dags/other_ingest", {"is_paused": False})
    api.call(
        "POST",
        "/dags/other_ingest/dagRuns",
        {"logical_date": "2026-11-01T00:00:00Z", "dag_run_id": "one-day"},
    )
    # (unpausing also started a run for yesterday: no landing files, so skipped)

    def done():
        run = api.call("GET", "/dags/other_ingest/dagRuns/one-day")
        return run if run["state"] in ("success", "failed") else None

    assert _wait("other_ingest's run", done, log, timeout=240)["state"] == "success"
    assert (stack["base"] / "storage" / "lake" / "other" / "ds=2026-11-01" / "part.parquet").exists()


@ONCE
def test_a_parallel_backfill_is_trained_on_whole(stack):
    """5 days ingested 5 at once; every lake event is an asset event for digits_train."""
    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    api, env, log, base = stack["api"], stack["env"], stack["log"], stack["base"]
    make_landing(env["FREESTACK_STORAGE_ROOT"], date(2026, 11, 1), len(DAYS))
    _wait(
        "digits_ingest",
        lambda: "digits_ingest" in {d["dag_id"] for d in api.call("GET", "/dags")["dags"]},
        log,
    )
    for dag_id in ("digits_train", "digits_ingest"):
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    _backfill(env, api, "--max-active-runs", "5")  # retried while SQLite is briefly locked by the scheduler

    def ingested():
        runs = [r for r in _runs(api, "digits_ingest") if r["run_type"] == "backfill"]
        return (
            runs
            if len(runs) == len(DAYS) and all(r["state"] in ("success", "failed") for r in runs)
            else None
        )

    runs = _wait("the backfill", ingested, log, timeout=420)
    assert all(r["state"] == "success" for r in runs), runs

    def trained():
        train = _runs(api, "digits_train")
        settled = train and all(r["state"] in ("success", "failed") for r in train)
        return train if settled and _wait_quiet(api) else None

    train = _wait("the training runs", trained, log, timeout=600, every=5)
    assert all(r["state"] == "success" for r in train), [
        (r["dag_run_id"], r["state"], r.get("note")) for r in train
    ]
    lake = {
        p.parent.name[3:]: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (base / "storage" / "lake" / "digits").glob("ds=*/part.parquet")
    }
    assert sorted(lake) == DAYS
    registry = base / "storage" / "registry" / "digits"
    versions = [p for p in registry.iterdir() if (p / "lineage.json").exists()]
    # one training, on all 5 partitions: the bytes it read are the lake's
    assert len(versions) == 1, [p.name for p in versions]
    lineage = json.loads((versions[0] / "lineage.json").read_text())
    assert {p["ds"]: p["sha256"] for p in lineage["partitions"]} == lake
    assert lineage["window"]["end_ds"] == DAYS[-1] and lineage["window"]["fixed_by"] == "newest"
    # every lake event is linked to that training, whichever run Airflow folded it into
    events = api.call("GET", "/assets/events?source_dag_id=digits_ingest&limit=100")["asset_events"]
    covered = {e["id"]: p["ds"] for p in lineage["partitions"] for e in p["events"]}
    assert covered == {e["id"]: e["extra"]["ds"] for e in events}, (covered, events)
    spec_file = Path(env["FREESTACK_PIPELINES_DIR"]) / "digits.yaml"
    assert lineage["spec_hash"] == hashlib.sha256(spec_file.read_bytes()).hexdigest()
    # every other run started by the lake events found that window trained already, and says so
    notes = [r.get("note") or "" for r in train]
    assert sum("Nothing new to train" in n for n in notes) == len(train) - 1, notes
    assert all(f"Window: 5 partitions ({DAYS[0]} … {DAYS[-1]})" in n for n in notes), notes
    _assert_lineage_events(stack, lake, versions[0])


def _task_events(path: Path, dag_ids: tuple[str, ...]) -> dict[tuple[str, str], list[dict]]:
    """The OpenLineage events of the tasks of ``dag_ids`` (jobs ``<dag_id>.<task_id>``) in ``path``, by
    job and task run, in the order they were written."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)  # whole lines: each event is one append by one process
        assert event["job"]["namespace"] == OL_NAMESPACE, event["job"]
        if event["job"]["name"].startswith(tuple(f"{d}." for d in dag_ids)):
            runs.setdefault((event["job"]["name"], event["run"]["runId"]), []).append(event)
    return runs


def _assert_lineage_events(stack, lake: dict[str, str], version: Path) -> None:
    """The events the scheduler's task processes wrote: a START then a COMPLETE per task run; the
    ingests report landing file -> lake partition (with its sha256), the one training the 5 partitions
    -> its version folder, with the model version facet."""
    storage = stack["base"] / "storage"
    runs = _task_events(stack["lineage"], ("digits_ingest", "digits_train"))
    kinds = {key: [e["eventType"] for e in events] for key, events in runs.items()}
    # the window sensor (mode reschedule) starts once per poke while the backfill runs, and completes once
    pokes = {k: v for k, v in kinds.items() if k[0] == "digits_train.window"}
    assert all(v[-1] == "COMPLETE" and set(v[:-1]) == {"START"} for v in pokes.values()), pokes
    assert all(v == ["START", "COMPLETE"] for k, v in kinds.items() if k not in pokes), kinds
    done: dict[str, list[dict]] = {}
    for (job, _), events in runs.items():
        done.setdefault(job, []).append(events[-1])
    ingested = sorted(
        (e for e in done["digits_ingest.ingest"] if e["outputs"]), key=lambda e: e["outputs"][0]["name"]
    )
    parts = [("file", str(storage / "lake" / "digits" / f"ds={ds}" / "part.parquet")) for ds in DAYS]
    assert [(o["namespace"], o["name"]) for e in ingested for o in e["outputs"]] == parts
    for event, ds in zip(ingested, DAYS, strict=True):
        landing = [(d["namespace"], d["name"]) for d in event["inputs"]]
        assert landing == [("file", str(storage / "landing" / "digits" / ds / "digits.csv"))], landing
        assert event["outputs"][0]["facets"]["version"]["datasetVersion"] == lake[ds]
    (trained,) = done["digits_train.train"]  # the runs that found the window trained skip at the window
    assert [(d["namespace"], d["name"]) for d in trained["inputs"]] == parts
    assert [d["facets"]["version"]["datasetVersion"] for d in trained["inputs"]] == [lake[d] for d in DAYS]
    outputs = [(d["namespace"], d["name"]) for d in trained["outputs"]]
    assert outputs == [("file", str(storage / "candidates" / "digits" / version.name))], outputs
    model = trained["run"]["facets"]["freestack_modelVersion"]
    assert (model["name"], model["version"]) == ("digits", version.name)


def _wait_quiet(api) -> bool:
    """No lake event waits to start another training run (asset-triggered runs are created only
    when the previous one ended: max_active_runs 1)."""
    time.sleep(8)
    return all(r["state"] in ("success", "failed") for r in _runs(api, "digits_train"))


#: the kinds of model and data are the same with the runtime wing's speed-ups on or off: these run on the
#: stack with the speed-ups


def _swept_and_deployed(stack, name: str, conf: dict, *, timeout: float) -> tuple[Path, dict]:
    """Three landed days of ``name`` ingested by the scheduler, then its train DAG run with a 2-agent sweep:
    the run and both agents succeed and the best trial is deployed. (the version folder, the deployment)"""
    from freestack.serving.records import Deployments

    api, log = stack["api"], stack["log"]
    dags = {f"{name}_ingest", f"{name}_train"}
    _wait(f"{name}'s DAGs", lambda: dags <= {d["dag_id"] for d in api.call("GET", "/dags")["dags"]}, log)
    for dag_id in sorted(dags):
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    for day in (1, 2, 3):
        api.call(
            "POST",
            f"/dags/{name}_ingest/dagRuns",
            {"logical_date": f"2026-11-0{day}T00:00:00Z", "dag_run_id": f"day-{day}"},
        )
    conf = {"end_ds": "2026-11-03", "sweep": True, "sweep_agents": 2, **conf}
    api.call(
        "POST",
        f"/dags/{name}_train/dagRuns",
        {"logical_date": "2026-11-03T00:00:00Z", "dag_run_id": name, "conf": conf},
    )

    def done():
        run = api.call("GET", f"/dags/{name}_train/dagRuns/{name}")
        return run if run["state"] in ("success", "failed") else None

    run = _wait(f"{name}_train's run", done, log, timeout=timeout, every=5)
    tis = api.call("GET", f"/dags/{name}_train/dagRuns/{name}/taskInstances")["task_instances"]
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
    assert run["state"] == "success", states
    assert states[("agent", 0)] == states[("agent", 1)] == "success" and states[("deploy", -1)] == "success"
    rec = Deployments(stack["env"]["FREESTACK_STORAGE_ROOT"], name).get(name)
    return stack["base"] / "storage" / "registry" / name / rec["version"], rec


@ONCE
@needs_serving_env
def test_a_custom_model_is_swept_gated_and_served_under_the_scheduler(stack):
    """The team's own module through the train DAG run by the scheduler: sweep agents as mapped tasks,
    the gate, the registry and the model server, which answers what the version predicts in-process."""
    import numpy as np
    import torch

    from freestack.ml.models import load_pretrained
    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json

    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    env = stack["env"]
    make_landing(env["FREESTACK_STORAGE_ROOT"], date(2026, 11, 1), 3, pipeline="own")
    root = env["FREESTACK_STORAGE_ROOT"]
    try:
        version, rec = _swept_and_deployed(stack, "own", {"epochs": 6}, timeout=600)
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["module"]["sha256"] == hashlib.sha256(DIGITS_NET.encode()).hexdigest()
        assert lineage["module"]["init"]["hidden"] in (16, 48) and lineage["sweep"]["trial"]
        assert [p["ds"] for p in lineage["partitions"]] == ["2026-11-01", "2026-11-02", "2026-11-03"]
        # evaluate, a task process of the LocalExecutor, served the candidate as deploy does and measured it
        serving = lineage["costs"]["serving"]
        assert serving["runtime"] == "seldon" and serving["errors"] == 0, serving
        assert 0 < serving["latency_p50_ms"] <= serving["latency_p99_ms"] and serving["rows_per_s"] > 0
        assert not list((Path(env["FREESTACK_SERVING_DIR"])).glob("costs-own-*")), "a measurement is left"
        rows = np.random.default_rng(2).uniform(0, 16, size=(3, 64))
        code, body = http_json(rec["predict_url"], {"data": {"ndarray": rows.tolist()}})
        assert code == 200, body
        expected = load_pretrained(version).predict_proba(torch.as_tensor(rows, dtype=torch.float32)).numpy()
        assert np.abs(np.asarray(body["data"]["ndarray"]) - expected).max() < 1e-5
    finally:
        stop_local(root, "own", "own")


@ONCE
@needs_serving_env
def test_tables_with_text_and_images_and_an_image_folder_are_served_on_raw_values_under_the_scheduler(stack):
    """``shop`` (numbers, categories, text, image paths) and ``glyphs`` (an image folder), corrupt PNGs
    among their files: ingested by the scheduler (the broken images quarantined), trained, gated,
    registered and deployed; the servers answer raw values as the versions answer in-process."""
    import base64

    import numpy as np
    import pandas as pd

    from freestack.ml.loop import to_tensors
    from freestack.serving.local import stop_local
    from freestack.serving.records import Deployments
    from freestack.serving.smoke import http_json

    api, env, log, base = stack["api"], stack["env"], stack["log"], stack["base"]
    storage = base / "storage"
    shop_landing(storage, date(2026, 11, 1), 2)
    glyphs_landing(storage, date(2026, 11, 1), 2)
    names = ("shop", "glyphs")
    wanted = {f"{n}_{k}" for n in names for k in ("ingest", "train")}
    _wait(
        "the DAGs", lambda: wanted <= {d["dag_id"] for d in api.call("GET", "/dags?limit=100")["dags"]}, log
    )
    for dag_id in sorted(wanted):
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    for n in names:
        for day in (1, 2):
            api.call(
                "POST",
                f"/dags/{n}_ingest/dagRuns",
                {"logical_date": f"2026-11-0{day}T00:00:00Z", "dag_run_id": f"day-{day}"},
            )

    def ended(dag_id: str, run_id: str):
        run = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        return run if run["state"] in ("success", "failed") else None

    for n in names:
        for day in (1, 2):
            assert (
                _wait(f"{n} day {day}", lambda n=n, day=day: ended(f"{n}_ingest", f"day-{day}"), log)["state"]
                == "success"
            )
        conf = {"end_ds": "2026-11-02", "sweep": False}
        api.call(
            "POST",
            f"/dags/{n}_train/dagRuns",
            {"logical_date": "2026-11-02T00:00:00Z", "dag_run_id": "kinds", "conf": conf},
        )
    try:
        for n in names:
            run = _wait(f"{n}_train", lambda n=n: ended(f"{n}_train", "kinds"), log, timeout=600, every=5)
            tis = api.call("GET", f"/dags/{n}_train/dagRuns/kinds/taskInstances")["task_instances"]
            assert run["state"] == "success", {t["task_id"]: t["state"] for t in tis}
        shop = Deployments(env["FREESTACK_STORAGE_ROOT"], "shop").get("shop")
        landing = storage / "landing" / "shop" / "2026-11-02"
        rows = pd.read_csv(landing / "sales.csv").iloc[20:24]
        rows["photo"] = [(landing / p).read_bytes() for p in rows["photo"]]
        data = [[r.price, r.colour, r.review, base64.b64encode(r.photo).decode()] for r in rows.itertuples()]
        code, body = http_json(
            shop["predict_url"], {"data": {"names": ["price", "colour", "review", "photo"], "ndarray": data}}
        )
        assert code == 200, body
        model, pre = _model_and_pre(f"{env['FREESTACK_STORAGE_ROOT']}/registry/shop/{shop['version']}")
        want = model.predict_proba(to_tensors(pre.inputs(rows))).tolist()
        assert (
            max(
                abs(a - b)
                for g, w in zip(body["data"]["ndarray"], want, strict=True)
                for a, b in zip(g, w, strict=True)
            )
            < 1e-5
        )

        glyphs = Deployments(env["FREESTACK_STORAGE_ROOT"], "glyphs").get("glyphs")
        image = sorted((storage / "landing" / "glyphs" / "2026-11-02").glob("*/*.png"))[-1]
        code, body = http_json(
            glyphs["predict_url"], {"binData": base64.b64encode(image.read_bytes()).decode()}
        )
        assert code == 200, body
        model, pre = _model_and_pre(f"{env['FREESTACK_STORAGE_ROOT']}/registry/glyphs/{glyphs['version']}")
        want = model.predict_proba(
            to_tensors(pre.inputs(pd.DataFrame({"image": [image.read_bytes()]})))
        ).tolist()[0]
        assert max(abs(a - b) for a, b in zip(body["data"]["tensor"]["values"], want, strict=True)) < 1e-5

        # both lakes scored by their <p>_score DAGs, backfilled through the CLI: what the versions answer in-process
        for n, rec in (("shop", shop), ("glyphs", glyphs)):
            scored = _score_backfill(stack, n, "2026-11-01", "2026-11-02")
            assert [m["ds"] for _, m in scored] == ["2026-11-01", "2026-11-02"], scored
            model, pre = _model_and_pre(f"{env['FREESTACK_STORAGE_ROOT']}/registry/{n}/{rec['version']}")
            for table, manifest in scored:
                lake = pd.read_parquet(manifest["inputs"][0]["uri"].removeprefix("file://"))
                assert (
                    manifest["version"] == rec["version"]
                    and table.num_rows == len(lake) == manifest["rows_scored"]
                )
                want = model.predict_proba(to_tensors(pre.inputs(lake))).numpy()
                got = np.asarray(table.column("probabilities").to_pylist())
                assert np.abs(got - want).max() < 1e-5
    finally:
        for n in names:
            stop_local(env["FREESTACK_STORAGE_ROOT"], n, n)


@ONCE
@needs_serving_env
def test_a_hub_model_is_fine_tuned_with_a_hyperband_sweep_gated_and_served_under_the_scheduler(stack):
    """LoRA fine-tuning of the Hub stand-in's tiny BERT through the train DAG run by the scheduler: two
    sweep agents share four trials (rank 2/4, learning rate 1e-2/1e-3; hyperband stops weak ones), the
    best is evaluated, gated, registered with its base's commit and served on raw text."""
    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json
    from tests.support.landing_finetune import TEXT_BASE, reviews_landing

    env, base = stack["env"], stack["base"]
    reviews_landing(base / "storage", date(2026, 11, 1), 3)
    root = env["FREESTACK_STORAGE_ROOT"]
    try:
        version, rec = _swept_and_deployed(stack, "reviews", {}, timeout=900)
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["base"]["repo"] == TEXT_BASE and lineage["base"]["commit"] == stack["hub"]["commit"]
        trial = lineage["sweep"]["trial"]
        assert lineage["peft"]["r"] in (2, 4) and trial, lineage["sweep"]
        rows = json.loads(next((base / "storage" / "runs" / "reviews").rglob("results.json")).read_text())
        rows = rows["trials"]
        assert len(rows) == 4 and {r["state"] for r in rows} == {"finished"}, rows
        assert {(r["param.peft.r"], r["param.learning_rate"]) for r in rows} == {
            (2, 0.01),
            (4, 0.01),
            (2, 0.001),
            (4, 0.001),
        }
        code, body = http_json(rec["predict_url"], {"strData": "great item, it works and i recommend it"})
        assert code == 200, body
        assert body["data"]["names"] == ["neg", "pos"], body
        # the fine-tuned model scores the three days' landing CSVs through reviews_score
        scored = _score_backfill(stack, "reviews", "2026-11-01", "2026-11-03")
        assert [m["ds"] for _, m in scored] == ["2026-11-01", "2026-11-02", "2026-11-03"]
        for table, manifest in scored:
            assert manifest["version"] == rec["version"] and manifest["rows_scored"] == table.num_rows > 0
            assert (
                set(table.column("prediction").to_pylist()) <= {"neg", "pos"}
                and manifest["rows_quarantined"] == 0
            )
    finally:
        stop_local(root, "reviews", "reviews")


@ONCE
@needs_serving_env
def test_two_nodes_train_one_model_as_a_gang_of_tasks_under_the_scheduler(stack):
    """train (node 0) and train_node (node 1) run at the same time under the scheduler, meet at the
    rendezvous, and rank 0's version is gated, registered and served; the task log shows each rank."""
    from freestack.serving.local import stop_local
    from freestack.serving.records import Deployments
    from freestack.serving.smoke import http_json

    sys.path.insert(0, str(ROOT / "include"))
    from demo.landing import make_landing

    api, env, log = stack["api"], stack["env"], stack["log"]
    make_landing(env["FREESTACK_STORAGE_ROOT"], date(2026, 11, 1), 3, pipeline="ranks")
    dags = {"ranks_ingest", "ranks_train"}
    _wait("ranks' DAGs", lambda: dags <= {d["dag_id"] for d in api.call("GET", "/dags")["dags"]}, log)
    for dag_id in sorted(dags):
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})
    for day in (1, 2, 3):
        api.call(
            "POST",
            "/dags/ranks_ingest/dagRuns",
            {"logical_date": f"2026-11-0{day}T00:00:00Z", "dag_run_id": f"day-{day}"},
        )
    conf = {"end_ds": "2026-11-03", "sweep": False, "epochs": 6}
    api.call(
        "POST",
        "/dags/ranks_train/dagRuns",
        {"logical_date": "2026-11-03T00:00:00Z", "dag_run_id": "ranks", "conf": conf},
    )

    def done():
        run = api.call("GET", "/dags/ranks_train/dagRuns/ranks")
        return run if run["state"] in ("success", "failed") else None

    root = env["FREESTACK_STORAGE_ROOT"]
    try:
        run = _wait("ranks_train's run", done, log, timeout=600, every=5)
        tis = api.call("GET", "/dags/ranks_train/dagRuns/ranks/taskInstances")["task_instances"]
        states = {(t["task_id"], t["map_index"]): t["state"] for t in tis}
        assert run["state"] == "success", (states, _train_logs(api)[-6000:])
        assert states[("train", -1)] == states[("train_node", 0)] == states[("deploy", -1)] == "success", (
            states
        )
        rec = Deployments(root, "ranks").get("ranks")
        version = stack["base"] / "storage" / "registry" / "ranks" / rec["version"]
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["distributed"]["nodes"] == 2 and lineage["distributed"]["world_size"] == 2
        code, body = http_json(rec["predict_url"], {"data": {"ndarray": [[0.0] * 64]}})
        assert code == 200, body
        text = _train_logs(api)
        assert "[rank 0/2]" in text or "[rank 1/2]" in text, text[-3000:]
    finally:
        stop_local(root, "ranks", "ranks")


def _train_logs(api) -> str:
    """The first try's logs of ranks_train's train and train_node tasks."""
    got = []
    for path in ("train/logs/1", "train_node/0/logs/1"):
        try:
            got.append(
                json.dumps(
                    api.call("GET", f"/dags/ranks_train/dagRuns/ranks/taskInstances/{path}?full_content=true")
                )
            )
        except Exception as exc:  # noqa: BLE001  (a message for the assertion, whatever went wrong)
            got.append(f"{path}: {exc}")
    return "\n".join(got)


def _model_and_pre(uri: str):
    """A registered version's model and preprocessing, loaded as every stage loads it."""
    from freestack import version

    loaded = version.open(uri).load()
    return loaded.model, loaded.preprocessor


@pytest.fixture(scope="module")
def llm_trained(stack) -> dict:
    """The language model's day ingested by ``<p>_ingest``; the ``<p>_train`` run its lake event started,
    ended, with how long that took (``seconds``)."""
    from tests.support.llm_pipeline import NAME, TERMINAL, ended, states

    api, log, name = stack["api"], stack["log"], NAME
    started = time.monotonic()
    _unpaused(stack, "ingest", "train")
    body = {"logical_date": f"{llm_pipeline.DS}T00:00:00Z", "dag_run_id": "day-1"}
    api.call("POST", f"/dags/{name}_ingest/dagRuns", body)
    run = _wait("the ingest run", lambda: ended(api, f"{name}_ingest", "day-1"), log, timeout=240)
    assert run["state"] == "success", states(api, f"{name}_ingest", "day-1")

    def first_ended():
        runs = api.call("GET", f"/dags/{name}_train/dagRuns?limit=10")["dag_runs"]
        return next((r for r in runs if r["state"] in TERMINAL), None)

    run = _wait(f"{name}_train's run", first_ended, log, timeout=600, every=3)
    return {**run, "seconds": time.monotonic() - started}


def _unpaused(stack, *kinds: str) -> None:
    api, wanted = stack["api"], {f"{llm_pipeline.NAME}_{k}" for k in kinds}
    listed = lambda: wanted <= {d["dag_id"] for d in api.call("GET", "/dags?limit=100")["dags"]}  # noqa: E731
    _wait("the DAGs", listed, stack["log"])
    for dag_id in sorted(wanted):
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})


@ONCE
@needs_serving_env
def test_a_preference_tuned_model_is_judged_gated_registered_and_served_under_the_scheduler(
    stack, llm_trained
):
    """8. A day of landed prompt/chosen/rejected pairs is ingested; the lake event starts ``<p>_train``,
    which preference-tunes (train.objective dpo, with the SFT term) the tiny causal LM instruction-tuned
    here (tests/support/preference.py), evaluates it with ``gate.judge`` = the stand-in LLM judge
    (tests/unit/evaluate/judge_standin.py, pointwise: a first model has no production to be compared
    with), gates it on ``min_judge_score``, registers and serves it: its evaluation holds the judge's
    figures and ``judge.json``, its lineage names the judge (tests/support/llm_pipeline.py)."""
    from freestack.serving.records import Deployments
    from tests.support.llm_pipeline import DS, NAME, states

    api, base, run, judge = stack["api"], stack["base"], llm_trained, stack["llm"].judge
    got = states(api, f"{NAME}_train", run["dag_run_id"])
    assert run["state"] == "success" and run["run_type"] == "asset_triggered", (run, got)
    assert {got[t] for t in ("train", "evaluate", "gate", "promote", "deploy")} == {"success"}, got
    rec = Deployments(stack["env"]["FREESTACK_STORAGE_ROOT"], NAME).get(NAME)
    version = base / "storage" / "registry" / NAME / rec["version"]
    assert (version / "_REGISTERED.json").exists() and (version / "model.safetensors").exists()
    lineage = json.loads((version / "lineage.json").read_text())
    assert (lineage["objective"]["name"], lineage["objective"]["sft_weight"]) == ("dpo", 1.0), lineage
    assert [p["ds"] for p in lineage["partitions"]] == [DS]

    evaluation = json.loads((version / "evaluation" / "metrics.json").read_text())
    cand = evaluation["candidate"]
    record = json.loads((version / "evaluation" / "judge.json").read_text())
    assert record["status"] == "judged" and len(record["items"]) == cand["judge_judged"] > 0
    right = [it["candidate"]["answer"].strip() == it["reference"].strip() for it in record["items"]]
    assert cand["judge_score"] == pytest.approx((5 * sum(right) + len(right) - sum(right)) / len(right))
    assert cand["judge_exact_agreement"] == 1.0 and cand["judge_failures"] == 0
    assert len(judge.requests) == cand["judge_judged"]  # every verdict came from the judge's server
    # the gate read the judge's figure, and lineage names the judge and its figures
    gate = lineage["gate"]
    named = {"status": "judged", "url": judge.url, "model": "fair", "mode": "pointwise"}
    assert gate["decision"] == "promote" and named.items() <= gate["judge"].items(), gate
    assert {k: record["judge"][k] for k in ("url", "model", "mode")} == {
        k: named[k] for k in ("url", "model", "mode")
    }
    reason = next(r for r in gate["reasons"] if r.startswith("judge_score"))
    assert "min_judge_score" in reason and reason.endswith(": pass"), reason
    assert lineage["evaluation"]["candidate"]["judge_score"] == cand["judge_score"]
    print(
        f"\n{NAME} {rec['version']}: exact match {cand['exact_match']:.3f}, judge_score {cand['judge_score']:.3f} "
        f"on {cand['judge_judged']} prompts; ingest to served in {run['seconds']:.0f} s"
    )


def _served_round(stack, url: str, asked: list[str]) -> tuple:
    """The prompts served, and their interval [start, end) once the server's request log holds them all."""
    from tests.support.llm_pipeline import logged_since, now, send

    start = now()
    send(url, asked)
    storage = stack["base"] / "storage"
    _wait("the request log", lambda: logged_since(storage, start) >= len(asked), stack["log"], timeout=60)
    return start, now()


@ONCE
@needs_serving_env
def test_the_served_models_text_traffic_is_monitored_and_a_shifted_interval_alerts(stack, llm_trained):
    """9. ``<p>_monitor`` with ``monitor.text`` (the tiny sentence encoder of
    tests/unit/monitor/test_text_drift.py) judges intervals of the served model's request log: the
    tutorial's prompts stay quiet, with the text signals (MMD² of prompts and answers, the empty, refusal
    and truncation rates) in the summary, and the prompt's own statistics (no feature drift: a request
    carries the prompt, never the pair's rejected answer); an interval where half the prompts ask for
    poems raises the alert on the prompts' MMD². (The deployment, started while ``llm_trained`` was made,
    serves both tests: the suite stops only the model servers a test itself started.)"""
    from freestack.monitor.core import interval_name
    from freestack.serving.records import Deployments
    from tests.support.llm_pipeline import NAME, ended, monitor_run, prompts, states

    api, log = stack["api"], stack["log"]
    assert llm_trained["state"] == "success", llm_trained
    _unpaused(stack, "monitor")
    url = Deployments(stack["env"]["FREESTACK_STORAGE_ROOT"], NAME).get(NAME)["predict_url"]
    quiet = _served_round(stack, url, prompts(120, seed=11))
    quiet_run = monitor_run(api, *quiet)  # judged while the shifted round is served
    shifted = _served_round(stack, url, prompts(120, seed=12, poems=0.5))
    shifted_run = monitor_run(api, *shifted)
    dag_id = f"{NAME}_monitor"
    for run_id in (quiet_run, shifted_run):
        _wait(f"{dag_id} {run_id}", lambda run_id=run_id: ended(api, dag_id, run_id), log, timeout=240)
    reports = stack["base"] / "storage" / "monitoring" / NAME / "reports"
    calm, drifted = (
        json.loads((reports / interval_name(*i) / "summary.json").read_text()) for i in (quiet, shifted)
    )

    assert states(api, dag_id, quiet_run) == {"monitor": "success", "alert": "skipped", "retrain": "skipped"}
    assert calm["status"] == "ok" and calm["rows"] == 120 and not calm["alerts"], calm
    (judged,) = calm["versions"]
    series = {s["name"] for s in judged["series"]}  # what a request carries: the prompt alone
    assert "prompt.length" in series and not any(n.startswith("rejected") for n in series), series
    signals = {s["name"]: s for s in judged["text"]["signals"]}
    assert {"prompts", "completions", "empty", "refusal", "truncation"} <= set(signals), signals
    assert signals["prompts"]["value"] is not None and not signals["prompts"]["drifted"], signals["prompts"]
    assert all(signals[r]["value"] is not None for r in ("empty", "refusal", "truncation")), signals

    assert states(api, dag_id, shifted_run) == {
        "monitor": "success",
        "alert": "success",
        "retrain": "skipped",
    }
    assert drifted["status"] == "drift" and drifted["rows"] == 120, drifted
    (alert,) = [a for a in drifted["alerts"] if a["series"] == "text.prompts"]
    assert "MMD²" in alert["message"] and "report.html" in alert["message"], alert
    got = {s["name"]: s for s in drifted["versions"][0]["text"]["signals"]}["prompts"]
    print(
        f"\nprompts MMD²: quiet {signals['prompts']['value']:.4f} (p {signals['prompts']['p_value']:.3f}), "
        f"half poems {got['value']:.4f} (p {got['p_value']:.3f})"
    )
