"""The language-model pipeline that tests/e2e/test_pipelines_scheduler.py runs on its scheduler's stack
(tests 8 and 9 there): a DPO-tuned tiny causal LM judged by the stand-in LLM judge, served, and monitored
on the text of its request log.

- :func:`prepare` writes its spec beside the stack's other pipelines, lands a day of pairs, starts the
  judge and builds the SFT starting point while Airflow starts (:func:`Prepared.ready` waits for it);
- the helpers below drive it through the REST API: the runs, the served model, the monitor's intervals.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import yaml

from tests.dags.test_preference_dag import dpo_spec
from tests.unit.evaluate.judge_standin import RUBRIC, StandinJudge

NAME = "llmprefs"
DS = "2026-11-01"
TERMINAL = ("success", "failed")
TOKENS = 12  # what the evaluation generates (model.generation.max_new_tokens): the served answers alike
#: the model server's request log, written soon (the monitor's intervals are a few seconds long)
ENV = {"FREESTACK_REQUEST_LOG_FLUSH_SECONDS": "2"}


def llm_spec(sft: Path, judge_url: str, encoder: Path, port: int) -> dict:
    """test_preference_dag's DPO spec, quick: ingest only when triggered, one epoch, trained by the lake
    event; the stand-in judge pointwise with ``min_judge_score``; served on its own port; monitored with
    the text signals."""
    spec = dpo_spec(sft, NAME)
    spec["schedule"] = None
    spec["train"]["epochs"] = 1
    spec["model"]["generation"]["max_new_tokens"] = TOKENS
    judge = {"url": judge_url, "model": "fair", "mode": "pointwise", "rubric": RUBRIC}
    spec["gate"] = {"metric": "exact_match", "threshold": 0.05, "judge": judge, "min_judge_score": 1.2}
    spec["deploy"]["local"] = {"port": port}
    spec["deploy"]["measure"] = {"enabled": False}  # the stack measures one pipeline's serving: own's
    spec["monitor"] = {"min_rows": 50, "actions": ["alert"], "text": {"encoder": str(encoder)}}
    return spec


@dataclass
class Prepared:
    """The pipeline's judge and the thread building its SFT starting point."""

    base: Path
    judge: StandinJudge
    builder: threading.Thread
    built: dict

    def ready(self) -> None:
        self.builder.join()
        assert self.built.get("base") == self.base / "sft", "the SFT base was not built"

    def stop(self, storage_root: str) -> None:
        from freestack.serving.local import stop_local
        from freestack.serving.records import Deployments

        if Deployments(storage_root, NAME).get(NAME):
            stop_local(storage_root, NAME, NAME)
        self.judge.stop()


def prepare(base: Path, specs: Path) -> Prepared:
    """The spec in ``specs``, a day of pairs landed under ``base/storage``; the judge started and the SFT
    base (test_preference_dag's, on fewer pairs) building in a thread."""
    from freestack.serving.processes import free_port_block
    from tests.support.preference import landing_pairs
    from tests.unit.monitor.test_text_drift import tiny_encoder

    work = base / "llm"
    work.mkdir()
    judge = StandinJudge()
    encoder = tiny_encoder(work / "encoder")  # (it seeds torch: before the base is trained, not meanwhile)
    built: dict = {}
    builder = threading.Thread(target=_sft_base, args=(work, built))
    builder.start()
    spec = llm_spec(work / "sft", judge.url, encoder, free_port_block())
    (specs / f"{NAME}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    landing_pairs(base / "storage", NAME, date.fromisoformat(DS), 1, rows=240)
    return Prepared(work, judge, builder, built)


def _sft_base(work: Path, out: dict) -> None:
    from tests.support.hf_tiny import tiny_causal_lm
    from tests.support.preference import preference_pairs, sft_base

    out["base"] = sft_base(tiny_causal_lm(work / "lm"), work / "sft", preference_pairs(120, seed=1))


def ended(api, dag_id: str, run_id: str) -> dict | None:
    run = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
    return run if run["state"] in TERMINAL else None


def states(api, dag_id: str, run_id: str) -> dict[str, str]:
    tis = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
    return {t["task_id"]: t["state"] for t in tis}


def now() -> datetime:
    time.sleep(1.0)  # the boundary's second belongs to one interval only
    return datetime.now(UTC).replace(microsecond=0)


def prompts(n: int, seed: int, poems: float = 0.0) -> list[str]:
    """``n`` of the tutorial's prompts (what the model was tuned and evaluated on); a ``poems`` share of
    them ask for a poem instead."""
    from tests.support.preference import preference_pairs
    from tests.unit.monitor.test_text_drift import poem

    rng = np.random.default_rng(seed)
    asked = preference_pairs(n, seed)["prompt"].tolist()
    return [poem(rng)[0] if rng.random() < poems else p for p in asked]


def send(url: str, asked: list[str]) -> None:
    """The prompts to the served model, 16 a request, answered with the evaluation's token budget."""
    from freestack.serving.smoke import http_json

    for k in range(0, len(asked), 16):
        instances = [{"prompt": p} for p in asked[k : k + 16]]
        body = {"jsonData": {"instances": instances, "parameters": {"max_new_tokens": TOKENS}}}
        code, answer = http_json(url, body, timeout=60)
        assert code == 200 and len(answer["jsonData"]["completions"]) == len(instances), answer


def logged_since(storage: Path, since: datetime) -> int:
    import pyarrow.parquet as pq

    n = 0
    for f in (storage / "monitoring" / NAME / "requests").rglob("*.parquet"):
        n += sum(t >= since for t in pq.read_table(f, columns=["ts"]).column("ts").to_pylist())
    return n


def monitor_run(api, start: datetime, end: datetime) -> str:
    """A ``<p>_monitor`` run for [start, end), as a backfill or the schedule would make it: its run id."""
    body = {
        "logical_date": end.isoformat(),
        "data_interval_start": start.isoformat(),
        "data_interval_end": end.isoformat(),
    }
    return api.call("POST", f"/dags/{NAME}_monitor/dagRuns", body)["dag_run_id"]
