"""A preference-tuned language model end to end under the real scheduler (`airflow standalone`: DAG processor,
scheduler, LocalExecutor), where tests/dags runs the same flows under dag.test():

1. a day of landed prompt/chosen/rejected pairs is ingested; the lake event starts ``<p>_train``, which
   preference-tunes (train.objective dpo, with the SFT term) the tiny causal LM instruction-tuned here
   (tests/support/preference.py), evaluates it with ``gate.judge`` = the stand-in LLM judge
   (tests/unit/evaluate/judge_standin.py, pointwise: a first model has no production to be compared with),
   gates it on ``min_judge_score``, registers and serves it: its evaluation holds the judge's figures and
   ``judge.json``, its lineage names the judge;
2. ``<p>_monitor`` with ``monitor.text`` (the tiny sentence encoder of tests/unit/monitor/test_text_drift.py)
   judges intervals of the served model's request log: the tutorial's prompts stay quiet, with the text
   signals (MMD² of prompts and answers, the empty, refusal and truncation rates) in the summary, and the
   prompt's own statistics (no feature drift: a request carries the prompt, never the pair's rejected
   answer); an interval where half the prompts ask for poems raises the alert on the prompts' MMD².

Slow (it starts the whole of Airflow and a model server): `-m slow`. The DPO and judge flows do not touch the
scheduler's speed-ups: this module runs on a stack with them only (test_backfill_standalone.py and
test_pipelines_scheduler.py run the scheduling paths on stock Airflow too).
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.dags.test_preference_dag import dpo_spec
from tests.e2e.test_backfill_standalone import start_airflow
from tests.e2e.test_pipelines_scheduler import _wait
from tests.support.serving import needs_serving_env
from tests.unit.evaluate.judge_standin import RUBRIC, StandinJudge

pytestmark = [pytest.mark.slow, needs_serving_env]
KEEP_MODEL_SERVERS = True  # the training's deployment serves both tests; the llm fixture stops it
NAME = "llmprefs"
DS = "2026-11-01"
TERMINAL = ("success", "failed")
TOKENS = 12  # what the evaluation generates (model.generation.max_new_tokens): the served answers alike


def _spec(base: Path, judge_url: str, encoder: Path, port: int) -> dict:
    """test_preference_dag's DPO spec, quick: ingest only when triggered, one epoch, trained by the lake
    event; the stand-in judge pointwise with ``min_judge_score``; served on its own port; monitored with
    the text signals."""
    spec = dpo_spec(base, NAME)
    spec["schedule"] = None
    spec["train"]["epochs"] = 1
    spec["model"]["generation"]["max_new_tokens"] = TOKENS
    judge = {"url": judge_url, "model": "fair", "mode": "pointwise", "rubric": RUBRIC}
    spec["gate"] = {"metric": "exact_match", "threshold": 0.05, "judge": judge, "min_judge_score": 1.2}
    spec["deploy"]["local"] = {"port": port}
    spec["monitor"] = {"min_rows": 50, "actions": ["alert"], "text": {"encoder": str(encoder)}}
    return spec


def _sft_base(work: Path, out: dict) -> None:
    """The DPO starting point (test_preference_dag's, on fewer pairs): built while Airflow starts."""
    from tests.support.hf_tiny import tiny_causal_lm
    from tests.support.preference import preference_pairs, sft_base

    out["base"] = sft_base(tiny_causal_lm(work / "lm"), work / "sft", preference_pairs(120, seed=1))


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from freestack.embedded import AirflowAPI
    from freestack.serving.local import stop_local
    from freestack.serving.processes import free_port_block, stop_process
    from freestack.serving.records import Deployments
    from tests.support.preference import landing_pairs
    from tests.unit.monitor.test_text_drift import tiny_encoder

    base = tmp_path_factory.mktemp("llm")
    specs = base / "pipelines"
    specs.mkdir()
    judge = StandinJudge()
    encoder = tiny_encoder(base / "encoder")  # (it seeds torch: before the base is trained, not meanwhile)
    built: dict = {}
    builder = threading.Thread(target=_sft_base, args=(base, built))
    builder.start()
    spec = _spec(base / "sft", judge.url, encoder, free_port_block())
    (specs / f"{NAME}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    landing_pairs(base / "storage", NAME, date.fromisoformat(DS), 1, rows=240)
    saved = os.environ.get("FREESTACK_REQUEST_LOG_FLUSH_SECONDS")
    os.environ["FREESTACK_REQUEST_LOG_FLUSH_SECONDS"] = "2"  # the model server's log, written soon
    try:
        env, proc, log = start_airflow(base, specs, parallelism=4)
    finally:
        os.environ.pop("FREESTACK_REQUEST_LOG_FLUSH_SECONDS") if saved is None else os.environ.update(
            FREESTACK_REQUEST_LOG_FLUSH_SECONDS=saved
        )
    builder.join()
    try:
        assert built.get("base") == base / "sft", "the SFT base was not built"
        yield {"env": env, "base": base, "api": AirflowAPI(env), "log": log, "judge": judge}
    finally:
        if Deployments(env["FREESTACK_STORAGE_ROOT"], NAME).get(NAME):
            stop_local(env["FREESTACK_STORAGE_ROOT"], NAME, NAME)
        stop_process(proc.pid, grace_seconds=15)
        judge.stop()


def _unpaused(llm, *kinds: str) -> None:
    api, log = llm["api"], llm["log"]
    wanted = {f"{NAME}_{k}" for k in kinds}
    _wait(
        "the DAGs", lambda: wanted <= {d["dag_id"] for d in api.call("GET", "/dags?limit=100")["dags"]}, log
    )
    for dag_id in sorted(wanted):
        api.call("PATCH", f"/dags/{dag_id}", {"is_paused": False})


def _ended(api, dag_id: str, run_id: str) -> dict | None:
    run = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    return run if run["state"] in TERMINAL else None


def _states(api, dag_id: str, run_id: str) -> dict[str, str]:
    tis = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    return {t["task_id"]: t["state"] for t in tis}


@pytest.fixture(scope="module")
def trained(llm) -> dict:
    """The day ingested by ``<p>_ingest``; the ``<p>_train`` run its lake event started, ended, with how long
    that took (``seconds``)."""
    api, log = llm["api"], llm["log"]
    started = time.monotonic()
    _unpaused(llm, "ingest", "train")
    body = {"logical_date": f"{DS}T00:00:00Z", "dag_run_id": "day-1"}
    api.call("POST", f"/dags/{NAME}_ingest/dagRuns", body)
    run = _wait("the ingest run", lambda: _ended(api, f"{NAME}_ingest", "day-1"), log, timeout=240)
    assert run["state"] == "success", _states(api, f"{NAME}_ingest", "day-1")

    def first_ended():
        runs = api.call("GET", f"/dags/{NAME}_train/dagRuns?limit=10")["dag_runs"]
        return next((r for r in runs if r["state"] in TERMINAL), None)

    run = _wait(f"{NAME}_train's run", first_ended, log, timeout=600, every=3)
    return {**run, "seconds": time.monotonic() - started}


def test_a_preference_tuned_model_is_judged_gated_registered_and_served_under_the_scheduler(llm, trained):
    from freestack.serving.records import Deployments

    api, base, run = llm["api"], llm["base"], trained
    states = _states(api, f"{NAME}_train", run["dag_run_id"])
    assert run["state"] == "success" and run["run_type"] == "asset_triggered", (run, states)
    assert {states[t] for t in ("train", "evaluate", "gate", "promote", "deploy")} == {"success"}, states
    rec = Deployments(llm["env"]["FREESTACK_STORAGE_ROOT"], NAME).get(NAME)
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
    assert len(llm["judge"].requests) == cand["judge_judged"]  # every verdict came from the judge's server
    # the gate read the judge's figure, and lineage names the judge and its figures
    gate = lineage["gate"]
    named = {"status": "judged", "url": llm["judge"].url, "model": "fair", "mode": "pointwise"}
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


def _now() -> datetime:
    time.sleep(1.0)  # the boundary's second belongs to one interval only
    return datetime.now(UTC).replace(microsecond=0)


def _prompts(n: int, seed: int, poems: float = 0.0) -> list[str]:
    """``n`` of the tutorial's prompts (what the model was tuned and evaluated on); a ``poems`` share of
    them ask for a poem instead."""
    from tests.support.preference import preference_pairs
    from tests.unit.monitor.test_text_drift import poem

    rng = np.random.default_rng(seed)
    asked = preference_pairs(n, seed)["prompt"].tolist()
    return [poem(rng)[0] if rng.random() < poems else p for p in asked]


def _send(url: str, prompts: list[str]) -> None:
    """The prompts to the served model, 16 a request, answered with the evaluation's token budget."""
    from freestack.serving.smoke import http_json

    for k in range(0, len(prompts), 16):
        instances = [{"prompt": p} for p in prompts[k : k + 16]]
        body = {"jsonData": {"instances": instances, "parameters": {"max_new_tokens": TOKENS}}}
        code, answer = http_json(url, body, timeout=60)
        assert code == 200 and len(answer["jsonData"]["completions"]) == len(instances), answer


def _logged_since(storage: Path, since: datetime) -> int:
    import pyarrow.parquet as pq

    n = 0
    for f in (storage / "monitoring" / NAME / "requests").rglob("*.parquet"):
        n += sum(t >= since for t in pq.read_table(f, columns=["ts"]).column("ts").to_pylist())
    return n


def _monitor(api, start: datetime, end: datetime) -> str:
    """A ``<p>_monitor`` run for [start, end), as a backfill or the schedule would make it: its run id."""
    body = {
        "logical_date": end.isoformat(),
        "data_interval_start": start.isoformat(),
        "data_interval_end": end.isoformat(),
    }
    return api.call("POST", f"/dags/{NAME}_monitor/dagRuns", body)["dag_run_id"]


def _round(llm, url: str, prompts: list[str]) -> tuple[datetime, datetime]:
    """The prompts served, and their interval [start, end) once the server's request log holds them all."""
    start = _now()
    _send(url, prompts)
    storage = llm["base"] / "storage"
    _wait("the request log", lambda: _logged_since(storage, start) >= len(prompts), llm["log"], timeout=60)
    return start, _now()


def test_the_served_models_text_traffic_is_monitored_and_a_shifted_interval_alerts(llm, trained):
    from freestack.monitor.core import interval_name
    from freestack.serving.records import Deployments

    api, log = llm["api"], llm["log"]
    assert trained["state"] == "success", trained
    _unpaused(llm, "monitor")
    url = Deployments(llm["env"]["FREESTACK_STORAGE_ROOT"], NAME).get(NAME)["predict_url"]
    quiet = _round(llm, url, _prompts(120, seed=11))
    quiet_run = _monitor(api, *quiet)  # judged while the shifted round is served
    shifted = _round(llm, url, _prompts(120, seed=12, poems=0.5))
    shifted_run = _monitor(api, *shifted)
    dag_id = f"{NAME}_monitor"
    for run_id in (quiet_run, shifted_run):
        _wait(f"{dag_id} {run_id}", lambda run_id=run_id: _ended(api, dag_id, run_id), log, timeout=240)
    reports = llm["base"] / "storage" / "monitoring" / NAME / "reports"
    calm, drifted = (
        json.loads((reports / interval_name(*i) / "summary.json").read_text()) for i in (quiet, shifted)
    )

    assert _states(api, dag_id, quiet_run) == {"monitor": "success", "alert": "skipped", "retrain": "skipped"}
    assert calm["status"] == "ok" and calm["rows"] == 120 and not calm["alerts"], calm
    (judged,) = calm["versions"]
    series = {s["name"] for s in judged["series"]}  # what a request carries: the prompt alone
    assert "prompt.length" in series and not any(n.startswith("rejected") for n in series), series
    signals = {s["name"]: s for s in judged["text"]["signals"]}
    assert {"prompts", "completions", "empty", "refusal", "truncation"} <= set(signals), signals
    assert signals["prompts"]["value"] is not None and not signals["prompts"]["drifted"], signals["prompts"]
    assert all(signals[r]["value"] is not None for r in ("empty", "refusal", "truncation")), signals

    assert _states(api, dag_id, shifted_run) == {
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
