"""A sweep of preference tunings (train.objective: dpo) under dag.test(): two random draws of DPO's beta
(train.dpo.beta) and the learning rate for a tiny causal LM, instruction-tuned here on answers of which 30% are wrong, preference-tuned on landed
prompt/chosen/rejected pairs; select_best keeps the trial with the larger validation reward margin, which
is evaluated, gated and registered with the sweep in its lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from tests.dags.test_preference_dag import dpo_spec
from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("airflow_db"), needs_serving_env]
DAYS = 2


def swept_dpo_spec(base: Path) -> dict:
    """The preference-tuning test's spec (:func:`dpo_spec`) with 2 epochs and a 2-trial random sweep of
    DPO's beta and the learning rate judged on val_reward_margin; the gate lets any version through."""
    spec = dpo_spec(base, "swept")
    spec["train"]["epochs"] = 2
    spec["sweep"] = {
        "method": "random",
        "run_cap": 2,
        "metric": {"name": "val_reward_margin", "goal": "maximize"},
        "parameters": {
            "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-3},
            "dpo": {"parameters": {"beta": {"distribution": "log_uniform_values", "min": 0.05, "max": 0.5}}},
        },
    }
    spec["gate"]["threshold"] = 0.0
    return spec


@pytest.fixture
def pipelines(tmp_path, storage, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from tests.support.hf_tiny import tiny_causal_lm
    from tests.support.preference import landing_pairs, preference_pairs, sft_base

    base = sft_base(tiny_causal_lm(tmp_path / "lm"), tmp_path / "sft", preference_pairs(300, seed=1))
    specs = tmp_path / "pipelines"
    specs.mkdir()
    (specs / "swept.yaml").write_text(yaml.safe_dump(swept_dpo_spec(base), sort_keys=False))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = Path(storage.removeprefix("file://"))
    landing_pairs(root, "swept", date(2026, 11, 1), DAYS, rows=100)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return {"bag": bag, "root": root}


def _wandb_config(run_dir: str) -> str:
    """An offline W&B run's records as wandb itself reads them back (its config among them), as text."""
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", run_dir],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_sweep_of_preference_tunings_keeps_the_largest_validation_reward_margin(pipelines):
    from freestack.serving.local import stop_local

    p = pipelines
    ingest = p["bag"].get_dag("swept_ingest")
    for d in range(1, DAYS + 1):
        assert ingest.test(logical_date=datetime(2026, 11, d, tzinfo=UTC)).state == "success"
    try:
        run = p["bag"].get_dag("swept_train").test(run_conf={"end_ds": "2026-11-02", "sweep_agents": 1})
        assert run.state == "success"
        folder = next((p["root"] / "runs" / "swept").glob("sweep-*/best.json")).parent
        table = json.loads((folder / "results.json").read_text())
        best = json.loads((folder / "best.json").read_text())
        margins = {r["trial"]: r["val_reward_margin"] for r in table["trials"]}
        rates = {r["trial"]: r["param.learning_rate"] for r in table["trials"]}
        betas = {r["trial"]: r["param.dpo.beta"] for r in table["trials"]}
        print(f"val_reward_margin by trial: {margins}, learning rates: {rates}, betas: {betas}")
        assert table["metric"] == "val_reward_margin" and table["goal"] == "maximize" and len(margins) == 2
        assert len(set(rates.values())) == 2 and all(r["state"] == "finished" for r in table["trials"])
        assert len(set(betas.values())) == 2 and all(0.05 <= b <= 0.5 for b in betas.values()), betas
        for (
            trial,
            beta,
        ) in betas.items():  # each trial trained with its own beta (its lineage, its W&B config)
            trained = json.loads(next((folder / "trials" / trial).rglob("lineage.json")).read_text())
            assert trained["objective"]["beta"] == beta, (trial, trained["objective"])
            assert f'"objective":{{"beta":{beta},' in _wandb_config(trained["wandb"]["run_dir"]), (
                trial,
                beta,
            )
        assert best["best_value"] == max(margins.values()) == margins[best["best_trial"]], (best, margins)
        name = best["version_uri"].rstrip("/").rsplit("/", 1)[-1]
        version = p["root"] / "registry" / "swept" / name
        assert (version / "_REGISTERED.json").exists()
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["sweep"]["trial"] == best["best_trial"] and lineage["objective"]["name"] == "dpo"
        assert lineage["objective"]["beta"] == pytest.approx(betas[best["best_trial"]]), lineage["objective"]
        assert lineage["gate"]["decision"] == "promote", lineage["gate"]
        metrics = json.loads((version / "metrics.json").read_text())
        assert metrics["train"]["metric"] == "reward_margin"
        assert metrics["best_val_reward_margin"] == pytest.approx(best["best_value"]), metrics
    finally:
        stop_local(p["root"].as_uri(), "swept", "swept")
