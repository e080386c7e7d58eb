"""Distributed data-parallel training (``train.distributed``) with real ranks: gloo on this machine's CPU,
started by torch's elastic launcher as the train task starts them.

- 2 local ranks under ``dag.test()``: the version gates, registers and serves; accuracy as 1 rank's;
- 2 ranks against 1 process, step for step: the same losses for the same global batch and seed;
- a rank killed with SIGKILL mid-epoch fails the attempt at once; the retry resumes from the checkpoint;
- 2 "nodes" launched separately on loopback meet at the c10d rendezvous and train one model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "include" / "pipelines" / "digits.yaml"
pytestmark = [pytest.mark.usefixtures("airflow_db"), pytest.mark.slow]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Five ingested days of the demo digits (one lake for the module's tests), W&B offline."""
    from airflow.dag_processing.dagbag import DagBag

    from demo.landing import make_landing

    tmp = tmp_path_factory.mktemp("distributed")
    specs = tmp / "pipelines"
    specs.mkdir()
    shutil.copy(DIGITS, specs / "digits.yaml")
    with pytest.MonkeyPatch.context() as mp:
        root = (tmp / "storage").as_uri()
        mp.setenv("FREESTACK_STORAGE_ROOT", root)
        mp.setenv("FREESTACK_PIPELINES_DIR", str(specs))
        for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            mp.setenv(var, str(tmp / "wandb" / var.lower()))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        make_landing(root, date(2026, 11, 1), 5)
        ingest = DagBag(dag_folder=str(ROOT / "dags")).get_dag("digits_ingest")
        for d in range(1, 6):
            assert ingest.test(logical_date=datetime(2026, 11, d, tzinfo=UTC)).state == "success"
        yield {"root": Path(tmp / "storage"), "specs": specs, "tmp": tmp}


def _spec_file(lake, **train) -> Path:
    """digits.yaml with ``train:`` values (``distributed`` among them) and no sweep block."""
    data = yaml.safe_load(DIGITS.read_text())
    model = train.pop("model", None)
    data["train"] = {**data["train"], **train}
    if model:
        data["model"] = {**data["model"], **model}
    data.pop("sweep", None)
    path = lake["specs"] / "digits.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _launch_child(spec_path: Path, run_key: str, node_rank: int = 0) -> str:
    """A process that launches one node's ranks as the train task does, and prints the outcome."""
    return (
        "import json, sys\n"
        "from freestack.spec import load_spec\n"
        "from freestack.tracking.wandb import WandbSettings\n"
        "from freestack.train.request import TrainRequest\n"
        "from freestack.train.distributed import launch\n"
        f"spec = load_spec({str(spec_path)!r})\n"
        f"out = launch(spec, {str(spec_path)!r}, TrainRequest(end_ds='2026-11-05', run_key={run_key!r}),"
        f" WandbSettings.from_environment(), node_rank={node_rank})\n"
        "print('OUTCOME', json.dumps(out.as_dict() if out else None))\n"
    )


def _outcome(stdout: str) -> dict | None:
    line = next(x for x in stdout.splitlines() if x.startswith("OUTCOME "))
    return json.loads(line.removeprefix("OUTCOME "))


def test_two_ranks_under_dag_test_gate_register_and_serve(lake):
    """The train DAG with 2 local ranks: a version that gates, registers and serves, with the accuracy
    of one process's training on the same window (within noise), and lineage saying how it was trained."""
    from airflow.dag_processing.dagbag import DagBag

    from freestack.serving.local import stop_local
    from freestack.serving.records import Deployments
    from freestack.serving.smoke import http_json
    from freestack.spec import load_spec
    from freestack.train.core import train
    from freestack.train.request import TrainRequest

    path = _spec_file(lake, epochs=8, distributed={"processes_per_node": 2})
    dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("digits_train")
    try:
        run = dag.test(run_conf={"end_ds": "2026-11-05", "sweep": False})
        assert run.state == "success"
        rec = Deployments(lake["root"].as_uri(), "digits").get("digits")
        version = lake["root"] / "registry" / "digits" / rec["version"]
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["distributed"] == {
            "world_size": 2,
            "nodes": 1,
            "processes_per_node": 2,
            "backend": "gloo",
            "strategy": "ddp",
            "launcher": "local",
        }
        metrics = json.loads((version / "metrics.json").read_text())
        assert metrics["train"]["world_size"] == 2
        code, body = http_json(rec["predict_url"], {"data": {"ndarray": [[0.0] * 64]}})
        assert code == 200 and len(body["data"]["ndarray"]) == 1, body
    finally:
        stop_local(lake["root"].as_uri(), "digits", "digits")
    _spec_file(lake, epochs=8)  # one process, the same window and seed
    one = train(load_spec(path), TrainRequest(end_ds="2026-11-05", run_key="one-process"))
    assert one.summary["world_size"] == 1
    assert abs(metrics["test_accuracy"] - one.metrics["test_accuracy"]) <= 0.03, (metrics, one.metrics)
    assert metrics["test_accuracy"] >= 0.9


def test_two_ranks_take_the_steps_of_one_process_with_the_same_global_batch(lake):
    """An MLP without dropout: each epoch's training loss of 2 ranks equals one process's (the same
    global batch of 64, split 32 + 32), and the same seed gives the same model on 2 ranks twice."""
    from safetensors.torch import load_file

    from freestack.spec import load_spec
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train
    from freestack.train.distributed import launch
    from freestack.train.request import TrainRequest

    kw = {"epochs": 4, "patience": 100, "model": {"type": "mlp", "dropout": 0.0, "image_shape": None}}
    path = _spec_file(lake, **kw)
    one = train(load_spec(path), TrainRequest(end_ds="2026-11-05", run_key="steps-one"))
    path = _spec_file(lake, distributed={"processes_per_node": 2, "threads_per_process": 1}, **kw)
    spec = load_spec(path)
    runs = [
        launch(
            spec,
            str(path),
            TrainRequest(end_ds="2026-11-05", run_key=f"steps-two-{i}"),
            WandbSettings.from_environment(),
        )
        for i in range(2)
    ]
    histories = [
        json.loads((Path(r.version_uri.removeprefix("file://")) / "history.json").read_text())
        for r in (one, *runs)
    ]
    single, *pair = ([row["train_loss"] for row in h] for h in histories)
    for losses in pair:
        assert losses == pytest.approx(single, rel=1e-4, abs=1e-5), (single, losses)
    a, b = (load_file(str(Path(r.version_uri.removeprefix("file://")) / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert runs[0].summary["world_size"] == 2 and one.summary["world_size"] == 1


def test_a_killed_rank_fails_the_attempt_and_the_retry_resumes(lake, tmp_path):
    """SIGKILL one rank after a checkpoint: the launcher stops every rank and fails at once (well inside
    the collective timeout), naming the rank; the retry (same run key) resumes from the checkpoint."""
    import psutil

    path = _spec_file(
        lake, epochs=40, patience=1000, distributed={"processes_per_node": 2, "timeout_seconds": 60}
    )
    key = "digits_train/killed-rank"
    ckpt = lake["root"] / "runs" / "digits" / "digits_train_killed-rank" / "train" / "checkpoint.safetensors"
    log = tmp_path / "attempt-1.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", _launch_child(path, key)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    deadline = time.monotonic() + 300
    while not ckpt.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.2)
    ranks = [
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if "freestack.train.distributed" in " ".join(p.cmdline())
    ]
    assert len(ranks) == 2, ranks
    victim = max(ranks, key=lambda p: p.create_time())
    killed_at = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert time.monotonic() - killed_at < 60  # the launcher saw the death, not a collective's timeout
    text = log.read_text()
    assert "of the distributed training failed (killed by signal 9)" in text, text[-3000:]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)

    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        saved = json.loads(f.metadata()["freestack"])["epoch"]
    retry = subprocess.run(
        [sys.executable, "-c", _launch_child(path, key)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert f"resuming from the checkpoint of epoch {saved}/40" in retry.stdout
    outcome = _outcome(retry.stdout)
    assert outcome["train"]["resumed_from"] == saved and outcome["train"]["epochs_run"] == 40
    version = Path(outcome["version_uri"].removeprefix("file://"))
    assert {"model.safetensors", "metrics.json", "lineage.json", "history.json"} <= {
        p.name for p in version.iterdir()
    }


def test_two_nodes_on_loopback_meet_at_the_rendezvous_and_train_one_model(lake):
    """Two launches with node ranks 0 and 1 (as two machines' train and train_node tasks would run them):
    the c10d rendezvous on node 0's address joins them into one training of world size 2."""
    port = free_port()
    path = _spec_file(
        lake, epochs=4, distributed={"nodes": 2, "rendezvous": f"127.0.0.1:{port}", "timeout_seconds": 120}
    )
    key = "digits_train/two-nodes"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _launch_child(path, key, r)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for r in (1, 0)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    node1, node0 = (_outcome(o[0]) for o in outs)
    assert node0 is not None and node0["train"]["world_size"] == 2
    assert node1 is None or node1["version"] == node0["version"]
    lineage = json.loads((Path(node0["version_uri"].removeprefix("file://")) / "lineage.json").read_text())
    assert lineage["distributed"]["nodes"] == 2 and lineage["distributed"]["world_size"] == 2
    assert node0["metrics"]["test_accuracy"] >= 0.85


def test_a_multi_node_spec_adds_a_gang_of_node_tasks(tmp_path):
    """nodes: 3 adds train_node mapped over node ranks 1 and 2, in the spec's pool with train."""
    from freestack.dags import train_dag
    from freestack.spec import parse_spec

    data = yaml.safe_load(DIGITS.read_text())
    data["train"]["queue"] = "gpu"
    data["train"]["distributed"] = {
        "nodes": 3,
        "pool": "gpu_gang",
        "rendezvous": "trainer-0.internal:29400",
        "host_queue": "trainer-0",
    }
    dag = train_dag(parse_spec(data, str(DIGITS)), str(DIGITS))
    tasks = {t.task_id: t for t in dag.tasks}
    node = tasks["train_node"]
    assert node.expand_input.value == {"node_rank": [1, 2]}
    assert tasks["train"].pool == node.partial_kwargs["pool"] == "gpu_gang"
    assert (tasks["train"].queue, node.partial_kwargs["queue"]) == ("trainer-0", "gpu")
    assert {"train", "train_node", "select_best"} == {t.task_id for t in tasks["evaluate"].upstream_list}


@pytest.mark.parametrize(
    "block, words",
    [
        ({"processes_per_node": 0}, "processes_per_node"),
        ({"strategy": "zero3"}, "strategy"),
        ({"rendezvous": "no port"}, "rendezvous"),
        ({"launcher": "kubernetes", "processes_per_node": 4, "gpus_per_node": 2}, "more than gpus_per_node"),
    ],
)
def test_bad_distributed_blocks_are_refused_naming_the_field(block, words):
    from freestack.errors import SpecError
    from freestack.spec import parse_spec

    data = yaml.safe_load(DIGITS.read_text())
    data["train"]["distributed"] = block
    with pytest.raises(SpecError) as info:
        parse_spec(data, str(DIGITS))
    assert "train.distributed" in str(info.value) and words in str(info.value)


def test_a_custom_module_trains_on_two_ranks_from_a_streamed_window(lake, tmp_path):
    """The user's own module, its window streamed: each rank reads only its part of every spooled chunk,
    the ranks stop together at the first one's end, and the version is the module's (contract unchanged)."""
    from freestack.ml.models import load_pretrained
    from freestack.spec import load_spec
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.distributed import launch
    from freestack.train.request import TrainRequest
    from tests.dags.test_custom_model_dag import DIGITS_NET

    module = tmp_path / "digits_net.py"
    module.write_text(DIGITS_NET)
    path = _spec_file(
        lake,
        epochs=8,
        data={"mode": "stream", "chunk_rows": 256, "shuffle_buffer": 1024},
        distributed={"processes_per_node": 2},
        model={
            "type": "custom",
            "module": str(module),
            "class": "DigitsNet",
            "init": {"hidden": 32},
            "image_shape": None,
        },
    )
    out = launch(
        load_spec(path),
        str(path),
        TrainRequest(end_ds="2026-11-05", run_key="custom-two"),
        WandbSettings.from_environment(),
    )
    version = Path(out.version_uri.removeprefix("file://"))
    lineage = json.loads((version / "lineage.json").read_text())
    assert lineage["data"]["mode"] == "stream" and lineage["distributed"]["world_size"] == 2
    assert lineage["module"]["class"] == "DigitsNet"
    assert out.metrics["test_accuracy"] >= 0.85, out.metrics
    assert type(load_pretrained(version).net).__name__ == "DigitsNet"


def test_fsdp_shards_the_model_takes_the_same_steps_and_resumes(lake, monkeypatch):
    """strategy fsdp: the parameters, gradients and optimizer state sharded across 2 ranks (FSDP2) give
    one process's training losses for the same global batch; a retry resumes from the checkpoint gathered
    whole, each rank cutting its own shards out of it, and ends with the same model."""
    from safetensors.torch import load_file

    from freestack.spec import load_spec
    from freestack.tracking.wandb import WandbSettings
    from freestack.train.core import train
    from freestack.train.distributed import launch
    from freestack.train.request import TrainRequest

    kw = {"epochs": 4, "patience": 100, "model": {"type": "mlp", "dropout": 0.0, "image_shape": None}}
    one = train(load_spec(_spec_file(lake, **kw)), TrainRequest(end_ds="2026-11-05", run_key="fsdp-one"))
    path = _spec_file(
        lake, distributed={"processes_per_node": 2, "threads_per_process": 1, "strategy": "fsdp"}, **kw
    )
    monkeypatch.setenv(
        "FREESTACK_KEEP_CHECKPOINTS", "1"
    )  # the finished run's checkpoint stays, for the retry
    req = TrainRequest(end_ds="2026-11-05", run_key="fsdp-two")
    first, again = (
        launch(load_spec(path), str(path), req, WandbSettings.from_environment()) for _ in range(2)
    )
    folder = Path(first.version_uri.removeprefix("file://"))
    losses = [row["train_loss"] for row in json.loads((folder / "history.json").read_text())]
    single = [
        row["train_loss"]
        for row in json.loads((Path(one.version_uri.removeprefix("file://")) / "history.json").read_text())
    ]
    assert losses == pytest.approx(single, rel=1e-4, abs=1e-5), (single, losses)
    assert json.loads((folder / "lineage.json").read_text())["distributed"]["strategy"] == "fsdp"
    assert again.summary["resumed_from"] == 4 and again.metrics == first.metrics
    a, b = (
        load_file(str(folder / "model.safetensors")),
        load_file(str(Path(one.version_uri.removeprefix("file://")) / "model.safetensors")),
    )
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_fsdp_with_lora_is_refused_before_any_data_is_read():
    from freestack.spec import parse_spec
    from freestack.train.core import check_trainable
    from freestack.train.request import TrainingError
    from tests.support.landing_finetune import REVIEWS_SPEC

    data = {
        **REVIEWS_SPEC,
        "train": {**REVIEWS_SPEC["train"], "distributed": {"processes_per_node": 2, "strategy": "fsdp"}},
    }
    with pytest.raises(TrainingError, match="strategy fsdp shards a full fine-tune"):
        check_trainable(parse_spec(data, "reviews.yaml"))
