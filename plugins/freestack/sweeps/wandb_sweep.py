"""Sweeps on a W&B server: when the ``wandb`` connection has an API key and its server answers.

``create_server_sweep`` registers the spec's sweep config with ``wandb.sweep`` (so it appears in the
W&B sweep UI, with the server's search, run cap and hyperband) and records it in ``sweep.json`` beside
local sweeps; each agent task runs ``wandb.agent(sweep_id, function=...)``, whose function trains one
trial with the server's suggested config, inside the run the agent opened. Each trial also writes its
``trial.json`` (params, per-epoch history, result, model folder) to the storage root, so
``select_best`` reads server and local sweeps the same way.

With no key, or an unreachable server, the local controller runs instead (``server_settings`` is None).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from freestack.keys import NO_KEYS, Keys
from freestack.settings import environment
from freestack.storage import cas, join, write_json
from freestack.sweeps.config import json_safe, kept_metric, plain_values, trial_request
from freestack.sweeps.core import SWEEP_FILE, TRIAL_FILE, SweepError, parse_sweep, sweep_dir, trial_folder
from freestack.sweeps.spec import OPTUNA_METHODS, SweepSpec
from freestack.tracking.wandb import WandbSettings, route_console, verify_api_key

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)


def server_can_run(config: SweepSpec) -> bool:
    """Whether W&B's sweep server runs this sweep: its methods (grid, random, bayes) on one metric. Optuna's
    methods and several objectives are freestack's and run on the local controller."""
    return config.method not in OPTUNA_METHODS and not config.metrics


def server_settings(settings: WandbSettings) -> WandbSettings | None:
    """``settings`` when sweeps should go to their W&B server, else None (the local controller).
    A server that rejects the key raises :class:`~freestack.tracking.wandb.WandbKeyRejected`."""
    if settings.mode != "online" or not settings.api_key:
        return None
    problem = verify_api_key(settings)
    if problem is not None:
        log.warning(
            "W&B server %s cannot be reached (%s); the sweep runs on the local controller",
            settings.base_url,
            problem,
        )
        return None
    return settings


def _wandb_env(settings):
    return environment(
        {"WANDB_API_KEY": settings.api_key, "WANDB_BASE_URL": settings.base_url, "WANDB_MODE": "online"}
    )


def create_server_sweep(spec: PipelineSpec, sweep_id: str, request: dict[str, Any], *, agents: int, settings):
    """``wandb.sweep`` once per DAG run (``sweep.json`` remembers the server's id for retries)."""
    import wandb

    path = join(sweep_dir(spec, sweep_id), SWEEP_FILE)
    got = cas.read(path)
    if got is not None:
        return parse_sweep(got.data)
    config = spec.sweep
    wandb_config = config.config()  # what the server takes, and what sweep.json stores
    project = settings.project or spec.name
    with _wandb_env(settings):
        server_id = wandb.sweep(sweep=wandb_config, project=project, entity=settings.entity)
    doc = {
        "id": sweep_id,
        "pipeline": spec.name,
        "mode": "wandb",
        "server_id": server_id,
        "project": project,
        "entity": settings.entity,
        "config": config,
        "run_cap": config.run_cap,
        "max_trials": config.run_cap,
        "request": request,
        "agents": agents,
        "spec_hash": spec.spec_hash(),
        "uri": str(sweep_dir(spec, sweep_id)),
    }
    try:
        cas.create(
            path, (json.dumps({**doc, "config": wandb_config}, indent=1, sort_keys=True) + "\n").encode()
        )
    except cas.CasConflict:
        return parse_sweep(cas.read(path).data)
    log.info("W&B sweep %s created on %s (project %s)", server_id, settings.base_url, project)
    return doc


def run_server_agent(
    spec: PipelineSpec,
    sweep: dict[str, Any],
    *,
    agent_id: str,
    settings: WandbSettings,
    keys: Keys = NO_KEYS,
) -> dict[str, Any]:
    """``wandb.agent`` until the server has no more trials for this sweep (``keys``: the judge's, for
    trials the judge rewards)."""
    import wandb

    # train.core loads torch; the operators, which the DAG file loads, import this module
    from freestack.train.core import train

    request = sweep["request"]
    names = set(sweep["config"].parameters)
    done: list[str] = []

    def one_trial() -> None:
        run = wandb.init(group=sweep["id"], job_type="sweep-trial", tags=[f"sweep:{sweep['id']}"[:64]])
        config = {k: v for k, v in dict(run.config).items() if k in names}
        folder = trial_folder(spec, sweep["id"], f"w-{run.id}")
        history: list[dict[str, Any]] = []
        doc = {
            "id": f"w-{run.id}",
            "sweep_id": sweep["id"],
            "config": config,
            "params": plain_values(config),
            "state": "running",
            "stopped": False,
            "history": history,
            "summary": {},
            "attempts": [{"owner": agent_id}],
            "wandb": {"id": run.id, "url": run.url},
        }

        def report(row):
            history.append(dict(row))
            return False  # the server stops runs itself: wandb.agent interrupts this thread

        try:
            tracking = {
                "run": run,
                "sweep": {"id": sweep["id"], "server_id": sweep["server_id"], "trial": run.id},
            }
            run_key = f"{sweep['id']}/{run.id}"
            req = trial_request(request, config, folder, run_key, tracking, kept_metric(sweep["config"]))
            req.keys = keys
            outcome = train(spec, req, tracking_settings=settings, on_epoch=report)
            doc.update(
                state="finished",
                summary={**outcome.metrics, "task": outcome.summary.get("task")},
                model_uri=outcome.version_uri,
                epochs_run=outcome.summary.get("epochs_run"),
            )
        except BaseException as exc:  # the agent stops a run by raising in this thread
            doc.update(state="finished" if history else "failed", stopped=bool(history), error=repr(exc))
            raise
        finally:
            write_json(join(folder, TRIAL_FILE), json_safe(doc))
            done.append(doc["id"])

    with _wandb_env(settings):
        route_console()  # the agent's runs print like ours: to the log, at their level
        try:
            wandb.agent(
                sweep["server_id"], function=one_trial, project=sweep["project"], entity=sweep["entity"]
            )
        except Exception as exc:
            raise SweepError(f"wandb.agent for sweep {sweep['server_id']} failed: {exc}") from exc
    return {"agent": agent_id, "trials": done, "server_id": sweep["server_id"]}


__all__ = ["server_can_run", "create_server_sweep", "run_server_agent", "server_settings"]
