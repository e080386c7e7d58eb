"""One sweep trial = one training (``freestack.train.core.train``) with the trial's hyperparameters.

Each trial is its own W&B run (grouped by sweep id, job type ``sweep-trial``), checkpoints under the
trial's folder (so a taken-over trial resumes) and writes its model into the trial's folder; only
the selected trial becomes a model version in the registry (``report.select_best``). When an objective
is a serving figure (``serving_latency_p99_ms``, ...), the trial's model is then served as the spec's
``deploy`` block serves it and measured as evaluate measures a candidate (its costs' ``serving``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from freestack.evaluate.measure import served_costs
from freestack.keys import NO_KEYS, Keys
from freestack.ml.loop import warm_up
from freestack.sweeps.config import kept_metric, trial_request
from freestack.sweeps.core import TrialRunner, trial_folder
from freestack.sweeps.spec import served
from freestack.train import core as train_core

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)


def make_trial_runner(
    spec: PipelineSpec,
    sweep: dict[str, Any],
    *,
    tracking_settings=None,
    keys: Keys = NO_KEYS,
) -> TrialRunner:
    """The function an agent calls per trial (``keys``: the judge's, for trials the judge rewards,
    and the rollout server's, for trials it samples). The lake window is loaded (or spooled) once per agent, window
    size and split; the agent's trials share it. The sweep's window and the trainer's lazy imports load
    now, at agent start-up, so that they are not paid inside the agent's first leased trial."""
    request = sweep["request"]
    windows: dict[tuple, Any] = {}

    def window_for(req: train_core.TrainRequest):
        effective = train_core.effective_spec(spec, req)
        t = effective.train
        key = (t.window_days, t.val_fraction, t.test_fraction, t.data.mode)  # what a loaded window depends on
        if key not in windows:
            windows[key] = train_core.load_window(effective, req.end_ds, t.window_days, request.get("window"))
        return windows[key]

    def run(doc: dict[str, Any], report_epoch) -> dict[str, Any]:
        folder = trial_folder(spec, sweep["id"], doc["id"])
        tracking = {
            "name": f"{sweep['id']}-{doc['id']}",
            "group": sweep["id"],
            "job_type": "sweep-trial",
            "tags": [f"sweep:{sweep['id']}"[:64], f"trial:{doc['id']}"],
            "config": {"sweep_id": sweep["id"], "trial": doc["id"], "sweep_params": doc["params"]},
            "sweep": {"id": sweep["id"], "trial": doc["id"], "params": doc["params"]},
        }
        run_key = f"{sweep['id']}/{doc['id']}"
        req = trial_request(request, doc["config"], folder, run_key, tracking, kept_metric(sweep["config"]))
        req.keys = keys
        outcome = train_core.train(
            spec, req, tracking_settings=tracking_settings, on_epoch=report_epoch, window=window_for(req)
        )
        costs = dict(outcome.costs or {})
        if served(sweep["config"]):  # an objective is a serving figure: the trial's model served, measured
            costs["serving"] = served_costs(spec, outcome.version_uri, f"{sweep['id']}-{doc['id']}")
        return {
            "summary": {**outcome.metrics, "task": outcome.summary.get("task")},
            "epochs_run": outcome.summary.get("epochs_run"),
            "stop_reason": outcome.summary.get("stop_reason"),
            "model_uri": outcome.version_uri,
            "wandb": outcome.tracking,
            "costs": costs,
        }

    warm_up()
    base = train_core.TrainRequest(
        end_ds=request["end_ds"], window_days=request.get("window_days"), window=request.get("window")
    )
    try:
        window_for(base)
    except train_core.TrainingError as exc:
        # the first trial reads it again, and its trial.json says why it failed
        log.warning("the sweep's window could not be read at agent start: %s", exc)
    return run


__all__ = ["make_trial_runner"]
