"""A model the user wrote, through the whole train DAG under dag.test(): the sweep searches its
constructor's arguments, the best trial is evaluated, gated, registered with the module's source and
served by the real model server, which runs the version's own copy of the module."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.dags.test_train_dag import lake  # noqa: F401  (the five-day digits lake fixture)
from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("airflow_db"), needs_serving_env]

DIGITS_NET = '''
"""The team's own digits classifier: a residual MLP."""
import torch
from torch import nn


class DigitsNet(nn.Module):
    def __init__(self, inputs, hidden: int = 32, dropout: float = 0.1):
        super().__init__()
        self.inp = nn.Linear(inputs.groups["numeric"].size, hidden)
        self.block = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, inputs.n_outputs)

    def forward(self, batch):
        h = self.inp(batch["numeric"])
        return self.out(torch.relu(h + self.block(h)))
'''


def use_custom_model(data: dict, module: Path, threshold: float) -> dict:
    """The digits spec ``data`` with DigitsNet from ``module``: a 2-trial grid sweep over its width and
    a gate at ``threshold`` accuracy. The window is streamed: each agent spools it once for its trials."""
    data["train"]["data"] = {"mode": "stream", "chunk_rows": 256, "shuffle_buffer": 1024}
    data["model"] = {
        "type": "custom",
        "module": str(module),
        "class": "DigitsNet",
        "init": {"hidden": 32, "dropout": 0.1},
    }
    data["sweep"] = {
        "method": "grid",
        "metric": {"name": "val_accuracy", "goal": "maximize"},
        "parameters": {
            "learning_rate": {"values": [1.0e-2]},
            "model": {"parameters": {"init": {"parameters": {"hidden": {"values": [16, 48]}}}}},
        },
    }
    data["gate"]["threshold"] = threshold
    return data


def test_a_custom_module_goes_from_sweep_to_a_served_prediction(lake, tmp_path):  # noqa: F811
    from airflow.dag_processing.dagbag import DagBag

    from freestack.ml.models import load_pretrained
    from freestack.serving.local import stop_local
    from freestack.serving.records import Deployments
    from freestack.serving.smoke import http_json

    module = tmp_path / "models" / "digits_net.py"
    module.parent.mkdir()
    module.write_text(DIGITS_NET)
    spec_file = lake["specs"] / "digits.yaml"
    data = use_custom_model(yaml.safe_load(spec_file.read_text()), module, threshold=0.8)
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors

    root = lake["root"].as_uri()
    try:
        run = bag.get_dag("digits_train").test(
            run_conf={"end_ds": "2026-11-05", "sweep_agents": 2, "epochs": 8}
        )
        assert run.state == "success"
        sweep = next(p.parent for p in (lake["root"] / "runs" / "digits").glob("sweep-*/best.json"))
        trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("trials/*/trial.json"))]
        assert sorted(t["params"]["model.init.hidden"] for t in trials) == [16, 48]
        best = json.loads((sweep / "best.json").read_text())
        version = (
            lake["root"] / "registry" / "digits" / Path(best["version_uri"].removeprefix("file://")).name
        )
        lineage = json.loads((version / "lineage.json").read_text())
        sha = hashlib.sha256(module.read_bytes()).hexdigest()
        assert lineage["module"] == {
            "class": "DigitsNet",
            "file": "module.py",
            "source": str(module),
            "sha256": sha,
            "init": {"hidden": lineage["module"]["init"]["hidden"], "dropout": 0.1},
        }
        assert lineage["module"]["init"]["hidden"] in (16, 48)
        assert lineage["data"]["mode"] == "stream" and lineage["data"]["rows"]["train"] > 0, lineage["data"]
        assert (version / "module.py").read_bytes() == module.read_bytes()
        marker = json.loads((version / "_REGISTERED.json").read_text())
        assert marker["files"]["module.py"]["sha256"] == sha  # registered and checked like the weights
        evaluation = json.loads((version / "evaluation" / "metrics.json").read_text())
        assert evaluation["candidate"]["accuracy"] >= 0.8

        rec = Deployments(root, "digits").get("digits")
        assert rec["version"] == version.name
        rows = np.random.default_rng(1).uniform(0, 16, size=(5, 64))
        code, body = http_json(rec["predict_url"], {"data": {"ndarray": rows.tolist()}})
        assert code == 200, body
        import torch

        expected = load_pretrained(version).predict_proba(torch.as_tensor(rows, dtype=torch.float32)).numpy()
        assert np.abs(np.asarray(body["data"]["ndarray"]) - expected).max() < 1e-5
        code, meta = http_json(rec["predict_url"].replace("/predictions", "/metadata"))
        assert (
            code == 200
            and meta["custom"]["module_sha256"] == sha
            and meta["custom"]["module_class"] == "DigitsNet"
        )
    finally:
        stop_local(root, "digits", "digits")
