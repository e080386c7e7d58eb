"""The train DAG run for real through dag.test(): digits to a model version and an offline W&B run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from tests.support.runs import run_note

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def lake(tmp_path, storage, monkeypatch):
    """Five ingested days of the demo digits, with W&B offline under tmp_path."""
    from airflow.dag_processing.dagbag import DagBag

    from demo.landing import make_landing

    specs = tmp_path / "pipelines"
    specs.mkdir()
    shutil.copy(ROOT / "include" / "pipelines" / "digits.yaml", specs / "digits.yaml")
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    make_landing(storage, date(2026, 11, 1), 5)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    ingest = bag.get_dag("digits_ingest")
    for d in range(1, 6):
        assert ingest.test(logical_date=datetime(2026, 11, d, tzinfo=UTC)).state == "success"
    return {"bag": bag, "root": Path(storage.removeprefix("file://")), "specs": specs}


def _lineage(root: Path, run_id: str) -> tuple[Path, dict]:
    for p in (root / "registry" / "digits").glob("*/lineage.json"):
        data = json.loads(p.read_text())
        if data["airflow"]["run_id"] == run_id:
            return p.parent, data
    raise AssertionError(f"no version for {run_id}")


def test_train_dag_reaches_accuracy_and_records_everything(lake, monkeypatch):
    dag = lake["bag"].get_dag("digits_train")
    assert "freestack://lake/digits" in repr(dag.timetable.asset_condition)  # scheduled on the lake
    assert set(dag.params.keys()) == {
        "end_ds",
        "window_days",
        "epochs",
        "learning_rate",
        "batch_size",
        "sweep",
        "sweep_agents",
    }
    monkeypatch.setenv("FREESTACK_MEASURE_SERVING", "true")  # off for the rest of the session
    run = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False})
    assert run.state == "success"
    version, lineage = _lineage(lake["root"], run.run_id)
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.9, metrics
    assert metrics["train"]["train_seconds"] > 0  # recorded; its speed is measured in bench/train
    # what it cost, in the version's metrics and lineage (no prices in the spec: free)
    costs, train = metrics["costs"], metrics["costs"]["train"]
    serving = lineage["costs"].pop("serving")
    assert costs == lineage["costs"] and 0 < costs["model_mb"] < 5, costs
    # what serving it costs: measured by evaluate in the deploy's own server (2 Seldon workers here)
    assert (serving["runtime"], serving["workers"], serving["errors"]) == ("seldon", 2, 0), serving
    assert 0 < serving["latency_p50_ms"] <= serving["latency_p99_ms"] < 1000, serving
    assert serving["requests"] > 10 and serving["rows_per_s"] > serving["batch_rows"] == 32, serving
    assert serving["peak_memory_mb"] > 100 and serving["cpu_ms_per_request"] > 0, serving
    left = list(Path(os.environ["FREESTACK_SERVING_DIR"]).glob(f"costs-digits-{version.name}"))
    assert not left, "the measurement's folder is left behind"
    assert train["wall_s"] > metrics["train"]["train_seconds"] > 0 and train["cpu_s"] > 0, train
    assert train["peak_memory_mb"] > 50 and train["gpu_s"] == 0 and train["ranks"] == 1
    assert train["samples"] == lineage["data"]["rows"]["train"] * train["epochs"] > 0, (
        train,
        lineage["data"],
    )
    assert (train["cost"], train["currency"], train["device"]) == (0, "USD", "cpu")
    card = (version / "README.md").read_text()
    assert "## Costs" in card and "| training cost | 0.0000 USD at the spec's prices |" in card, card
    assert f"| serving latency | p50 {serving['latency_p50_ms']:,.3f} ms" in card, card
    assert {p.name for p in version.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "preprocessing.json",
        "metrics.json",
        "lineage.json",
        "history.json",
    }
    assert [p["ds"] for p in lineage["partitions"]] == [f"2026-11-0{d}" for d in range(1, 6)]
    assert all(len(p["sha256"]) == 64 for p in lineage["partitions"])
    # each partition names the lake event that published its bytes: the ingest run of its day
    events = [p["events"] for p in lineage["partitions"]]
    assert [len(e) for e in events] == [1] * 5, events
    assert [e[0]["dag_id"] for e in events] == ["digits_ingest"] * 5
    assert len({e[0]["run_id"] for e in events}) == 5
    ids = [e[0]["id"] for e in events]
    note = run_note(run) or ""
    assert f"Lake events covered: {', '.join(map(str, sorted(ids)))} (5)." in note, note
    assert lineage["airflow"]["dag_id"] == "digits_train" and len(lineage["spec_hash"]) == 64

    # the version loads back without Airflow through huggingface_hub's mixin, and predicts
    probe = (
        "import sys, json, torch\n"
        "from freestack.ml.models import FreestackNet\n"
        "m = FreestackNet.from_pretrained(sys.argv[1])\n"
        "print(json.dumps({'kind': m.kind, 'classes': m.classes, 'out': list(m.predict(torch.zeros(2, 64)).shape)}))\n"
        "print('airflow' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(version)], capture_output=True, text=True, check=True
    )
    loaded, airflow_imported = out.stdout.strip().splitlines()[-2:]
    assert json.loads(loaded) == {"kind": "cnn", "classes": list(range(10)), "out": [2]}
    assert airflow_imported == "False"

    # the offline W&B run holds the config and per-epoch metrics, read back by wandb itself
    wb = lineage["wandb"]
    assert wb["mode"] == "offline" and wb["sync_command"].startswith("wandb sync ")
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", wb["run_dir"]],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    kinds = {next(iter(r)) if len(r) == 1 else r.get("record_type", "") for r in records}
    text = proc.stdout
    assert '"pipeline"' in text and "digits" in text, kinds
    assert "val_accuracy" in text and "train_loss" in text
    assert "costs/train_cpu_s" in text and "costs/model_mb" in text
    assert "pipeline:digits" in text and "interval:2026-11-05" in text

    # an evaluate cleared after the gate registered the version writes nothing into it: versions are immutable
    from freestack.evaluate.core import evaluate
    from freestack.registry.core import registry_for
    from freestack.spec import load_spec

    spec = load_spec(lake["specs"] / "digits.yaml")
    before = {p: p.stat().st_mtime_ns for p in version.rglob("*")}
    summary = evaluate(spec, version.as_uri())
    assert summary["report"].endswith("evaluation/report.html") and summary["candidate"]["accuracy"] > 0.9
    assert summary["costs"] == {"candidate": {**lineage["costs"], "serving": serving}, "champion": None}
    assert {p: p.stat().st_mtime_ns for p in version.rglob("*")} == before
    registry_for(spec).verify(version.name)


def test_same_seed_same_metrics_and_backfill_sees_no_future(lake):
    dag = lake["bag"].get_dag("digits_train")
    runs = [dag.test(run_conf={"end_ds": "2026-11-03", "epochs": 6, "sweep": False}) for _ in range(2)]
    assert all(r.state == "success" for r in runs)
    (_, a), (va, b) = (_lineage(lake["root"], r.run_id) for r in runs)
    ma = json.loads((_lineage(lake["root"], runs[0].run_id)[0] / "metrics.json").read_text())
    mb = json.loads((va / "metrics.json").read_text())
    assert {k: v for k, v in ma.items() if k.startswith("test_")} == {
        k: v for k, v in mb.items() if k.startswith("test_")
    }
    # an interval in the past reads only the partitions up to it
    assert [p["ds"] for p in a["partitions"]] == ["2026-11-01", "2026-11-02", "2026-11-03"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            "  image_shape: [8, 8]",
            "  type: transformer",
        ),
        ("  image_shape: [8, 8]", "  image_shape: [8, 9]"),
        ("    target: label", "    target: colour"),
    ],
)
def test_bad_model_specs_fail_clearly(tmp_path, edit, message):
    from freestack.errors import SpecError
    from freestack.spec import load_spec

    text = (ROOT / "include" / "pipelines" / "digits.yaml").read_text()
    assert edit in text
    (tmp_path / "digits.yaml").write_text(text.replace(edit, message))
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "digits.yaml")
    msg = str(info.value)
    if "transformer" in message:
        assert "model.type" in msg and "'mlp'" in msg
    elif "[8, 9]" in message:
        assert "image_shape [8, 9] holds 72 values but there are 64 feature columns" in msg
    else:
        assert "target 'colour' is not one of the declared columns" in msg


def test_training_killed_mid_run_resumes_at_its_checkpoint(lake, tmp_path):
    """kill -9 a training process after an epoch's checkpoint; the retry (same task instance,
    so the same run key) resumes there instead of starting over."""
    import signal
    import time

    from freestack.spec import load_spec
    from freestack.train.core import train
    from freestack.train.request import TrainRequest

    ckpt = lake["root"] / "runs" / "digits" / "digits_train_retry-1" / "train" / "checkpoint.safetensors"
    child = (
        "from freestack.spec import load_spec\n"
        "from freestack.train.core import train\n"
        "from freestack.train.request import TrainRequest\n"
        "from freestack.hooks.wandb import WandbHook\n"
        f"spec = load_spec({str(lake['specs'] / 'digits.yaml')!r})\n"
        "train(spec, TrainRequest(end_ds='2026-11-05', epochs=60, run_key='digits_train/retry-1'),"
        " tracking_settings=WandbHook().settings())\n"
    )
    import yaml

    data = yaml.safe_load((lake["specs"] / "digits.yaml").read_text())
    data["train"] = {**data.get("train", {}), "patience": 1000}  # no early stop: all 60 epochs run
    (lake["specs"] / "digits.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "killed-attempt.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", child], env=dict(os.environ), stdout=sink, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 600  # a loaded 2-core machine: start-up, window read and one epoch
    while not ckpt.exists():
        tail = lambda: out.read_text(errors="replace")[-4000:]  # noqa: E731
        assert proc.poll() is None, f"training ended before its first checkpoint:\n{tail()}"
        assert time.monotonic() < deadline, f"no checkpoint after 600 s:\n{tail()}"
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        saved_epoch = json.loads(f.metadata()["freestack"])["epoch"]
    assert saved_epoch >= 1

    from freestack.hooks.wandb import WandbHook
    from freestack.tracking.offline import offline_runs
    from freestack.tracking.wandb import wandb_root

    spec = load_spec(lake["specs"] / "digits.yaml")
    req = TrainRequest(end_ds="2026-11-05", epochs=60, run_key="digits_train/retry-1")
    outcome = train(spec, req, tracking_settings=WandbHook().settings())
    assert outcome.summary["resumed_from"] >= saved_epoch
    assert outcome.summary["epochs_run"] == 60
    # the retry recorded into the W&B run the killed attempt started: one run, a folder per attempt
    run_id = outcome.tracking["id"]
    assert outcome.tracking["mode"] == "offline" and run_id
    assert len(list((wandb_root() / "wandb").glob(f"offline-run-*-{run_id}*"))) == 2
    listed = [r for r in offline_runs(wandb_root()) if r["folder"].name.endswith(run_id)]
    assert [r["attempts"] for r in listed] == [2]
    # the finished training's checkpoint is gone (the model is written); nothing temporary is left
    assert not ckpt.exists()
    assert not [
        p for p in Path(outcome.version_uri.removeprefix("file://")).rglob("*") if ".freestack-tmp-" in p.name
    ]


def test_a_rejected_wandb_key_fails_the_first_wandb_task_at_once(lake, monkeypatch, capfd):
    """A `wandb_default` connection whose key the W&B host (a stand-in on 127.0.0.1) rejects: `train`,
    or the sweep's `create_sweep`, fails on its first try, saying what to fix; nothing is trained and
    no offline run stands in for the online one."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    from tests.dags.test_sweep_dag import _states
    from tests.fakes.wandb_api import BADKEY, fake_wandb_host

    dag = lake["bag"].get_dag("digits_train")
    with fake_wandb_host() as host:
        monkeypatch.setenv(
            "AIRFLOW_CONN_WANDB_DEFAULT",
            json.dumps(
                {"conn_type": "wandb", "password": BADKEY, "host": host, "extra": {"project": "digits"}}
            ),
        )
        monkeypatch.delenv("WANDB_MODE")
        single = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False})
        sweep = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": True})
    said = capfd.readouterr()
    assert single.state == sweep.state == "failed"
    assert _states(single)["train"] == ["failed"] and _states(single)["evaluate"] == ["upstream_failed"]
    assert _states(sweep)["create_sweep"] == ["failed"]
    with create_session() as session:
        for run, task_id in ((single, "train"), (sweep, "create_sweep")):
            ti = (
                session.query(TaskInstance)
                .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id)
                .one()
            )
            assert ti.try_number == 1, task_id  # no retry: a retry cannot mend a key
    assert (
        f"the W&B API key in connection 'wandb_default' was rejected by {host} (HTTP 401"
        in said.out + said.err
    )
    assert not (lake["root"] / "registry" / "digits").exists()
    assert not list((Path(os.environ["WANDB_DIR"]) / "wandb").glob("offline-run-*"))


def test_with_train_cache_a_rerun_of_the_same_inputs_reuses_the_registered_version(lake):
    """train.cache: a manual run asking for the same window and settings again trains nothing; its note
    and log name the version and the run that trained it; other settings are a miss that trains."""
    from tests.support.runs import dags_with

    bag = dags_with(lake["specs"], "train", {"cache": True, "epochs": 2}, merge=True)
    dag = bag.get_dag("digits_train")
    conf = {"end_ds": "2026-11-03", "sweep": False}
    first = dag.test(run_conf=conf)
    assert first.state == "success"
    folder, lineage = _lineage(lake["root"], first.run_id)
    assert "train: cache miss: no earlier run" in run_note(first)
    entries = list((lake["root"] / "runs" / "digits" / "train_cache").glob("*.json"))
    assert len(entries) == 1
    entry = json.loads(entries[0].read_text())
    assert entry["run"]["run_id"] == first.run_id and entry["extra"]["version"] == folder.name

    again = dag.test(run_conf=conf)
    assert again.state == "success"
    states = {ti.task_id: ti.state for ti in again.get_task_instances()}
    assert states["train"] == "skipped" and states["evaluate"] == "skipped", states
    note = run_note(again)
    assert note.startswith("**Nothing new to train.** train: cache hit: version " + folder.name), note
    assert f"in run {first.run_id}" in note
    assert sorted(p.name for p in (lake["root"] / "registry" / "digits").iterdir() if p.is_dir()) == [
        folder.name
    ]

    other = dag.test(run_conf={**conf, "epochs": 1})  # a setting the key holds: trains
    assert other.state == "success"
    assert f"train: cache miss: spec changed since run {first.run_id}" in run_note(other)
    assert _lineage(lake["root"], other.run_id)[0].name != folder.name
