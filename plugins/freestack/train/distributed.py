"""Launching a data-parallel training (``train.distributed``): the ranks of one node, started by torch's
elastic launcher as ``torchrun`` starts them, and each rank's program.

    train task (node 0)        launch(): writes the launch file, runs elastic_launch for this node
      └─ python -m freestack.train.distributed <launch file>     x processes_per_node  (one per rank)
    train_node task (node r)   the same launch() with node rank r, meeting node 0 at the c10d rendezvous
    Kubernetes                 a PyTorchJob whose pods run ``torchrun ... -m freestack.train.distributed``

Every rank reads the window and trains its shard (:mod:`freestack.ml.distributed`); rank 0 alone reports
to W&B, checkpoints, writes the version and leaves ``outcome.json`` beside the launch file, which the
node-0 task returns. The launch file and the outcome live in the run's folder on the pipeline's storage
(``runs/<pipeline>/<run key>/train/``), which every node reads: on several machines that is S3 (or a
shared disk), as the checkpoints already are.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from freestack.errors import FreestackError
from freestack.ml.threads import cores, share, size_pool
from freestack.settings import environment as with_environment
from freestack.spec import spec_from_text
from freestack.storage import join, to_path, write_bytes
from freestack.tracking.wandb import WandbSettings
from freestack.train.manifests import rendezvous_id
from freestack.train.request import TrainOutcome, TrainRequest, places

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

LAUNCH_FILE = "launch.json"
OUTCOME_FILE = "outcome.json"


class LaunchError(FreestackError):
    """The ranks could not be started, or one of them failed: the message names the rank and the log."""


class Launch(BaseModel):
    """What every rank is told: the spec (its text, so a node without the checkout's file reads the same),
    the request, and the W&B settings but the key (the key travels in the ranks' environment)."""

    spec_path: str
    spec_text: str
    request: dict[str, Any]
    tracking: dict[str, Any]


def is_distributed(spec: PipelineSpec) -> bool:
    d = spec.train.distributed
    return d.world_size > 1 or d.launcher == "kubernetes"


def write_launch(
    spec: PipelineSpec, spec_path: str, req: TrainRequest, tracking_settings, node_rank: int = 0
) -> Any:
    """The launch file of this node (``launch-<node>.json``; node 0: ``launch.json``) in the run's folder."""
    with open(spec_path, encoding="utf-8") as f:
        text = f.read()
    tracking = {k: v for k, v in asdict(tracking_settings).items() if k not in ("api_key", "source")}
    request = {k: v for k, v in asdict(req).items() if k != "keys"}  # a key is never written down
    launch = Launch(spec_path=str(spec_path), spec_text=text, request=request, tracking=tracking)
    path = join(places(spec, req).run_dir, LAUNCH_FILE if node_rank == 0 else f"launch-{node_rank}.json")
    write_bytes(path, launch.model_dump_json().encode())
    return path


def launch(
    spec: PipelineSpec,
    spec_path: str,
    req: TrainRequest,
    tracking_settings,
    node_rank: int = 0,
    environment: dict[str, str] | None = None,
    threads: int | None = None,
) -> TrainOutcome | None:
    """Run this node's ranks to the end (elastic_launch: what ``torchrun`` does); node 0 returns the
    outcome rank 0 left. A rank that fails (or dies) ends every rank of the attempt: LaunchError.
    ``environment``: variables the ranks get besides this process's (an Airflow task's connections);
    ``threads``: the CPU threads the ranks share (the train task's own; default the node's cores)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    run_dir = places(spec, req).run_dir
    outcome = join(run_dir, OUTCOME_FILE)
    if node_rank == 0 and outcome.exists():
        outcome.unlink()  # a killed attempt's
    path = write_launch(spec, spec_path, req, tracking_settings, node_rank)
    config = launch_config(spec, req, node_rank)
    d = spec.train.distributed
    log.info(
        "starting %d rank(s) on node %d of %d (world size %d, rendezvous %s)",
        d.processes_per_node,
        node_rank,
        d.nodes,
        d.world_size,
        config.rdzv_endpoint,
    )
    try:
        with _launch_environment(spec, tracking_settings, environment or {}, threads):
            elastic_launch(config, sys.executable)("-m", "freestack.train.distributed", str(path))
    except ChildFailedError as exc:
        raise LaunchError(_failure_text(exc, d.timeout_seconds)) from None
    if node_rank != 0 and not outcome.exists():
        return None
    return _read_outcome(outcome)


def launch_config(spec: PipelineSpec, req: TrainRequest, node_rank: int):
    """torch's ``LaunchConfig`` for this node: c10d rendezvous (one node: a free port on 127.0.0.1, as
    ``torchrun --standalone``), no restarts (Airflow's retry is the restart, and resumes from the
    checkpoint), the rendezvous bounded by ``timeout_seconds``."""
    from torch.distributed.launcher.api import LaunchConfig

    d = spec.train.distributed
    endpoint = d.rendezvous if d.nodes > 1 else "127.0.0.1:0"
    return LaunchConfig(
        min_nodes=d.nodes,
        max_nodes=d.nodes,
        nproc_per_node=d.processes_per_node,
        run_id=rendezvous_id(spec.name, req.run_key),
        rdzv_backend="c10d",
        rdzv_endpoint=endpoint,
        max_restarts=0,
        monitor_interval=0.2,
        rdzv_configs={
            "is_host": node_rank == 0,
            "join_timeout": int(d.timeout_seconds),
            "timeout": int(d.timeout_seconds),
        },
        local_addr="127.0.0.1" if d.nodes == 1 else None,
    )


def rank_threads(spec: PipelineSpec, threads: int | None = None) -> int:
    """Each rank's CPU threads: ``threads_per_process``, else ``threads`` (default: the node's cores)
    shared out among the node's ranks, at least 1."""
    d = spec.train.distributed
    return d.threads_per_process or share(threads or cores(), d.processes_per_node)


def _launch_environment(
    spec: PipelineSpec, tracking_settings, environment: dict[str, str], threads: int | None
):
    """This process's environment while it launches the ranks (they inherit it): ``environment`` (Airflow's
    settings and connections for them, from
    :func:`freestack.train.operators.airflow_environment_of_ranks`), their CPU threads and the W&B key (never
    written to the launch file)."""
    per_rank = rank_threads(spec, threads)
    log.info("each rank computes on %d CPU thread(s)", per_rank)
    extra = {**environment, "OMP_NUM_THREADS": str(per_rank)}  # torch sizes its pool by it, as under torchrun
    if getattr(tracking_settings, "api_key", None):
        extra["WANDB_API_KEY"] = tracking_settings.api_key
    return with_environment(extra)


def _failure_text(exc, timeout: float) -> str:
    """Which rank failed first, how, and where its log is."""
    failures = getattr(exc, "failures", {}) or {}
    rank, first = min(failures.items(), key=lambda kv: kv[1].timestamp) if failures else (None, None)
    if first is None:
        return f"a rank of the distributed training failed: {exc}"
    how = f"exit code {first.exitcode}" if first.exitcode >= 0 else f"killed by signal {-first.exitcode}"
    return (
        f"rank {rank} of the distributed training failed ({how}); every rank of this attempt was stopped. "
        f"Its error is above in this log. A retry resumes from the last checkpoint; a rank that hangs is "
        f"cut after train.distributed.timeout_seconds ({timeout:g} s)."
    )


def _read_outcome(path) -> TrainOutcome:
    data = json.loads(path.read_bytes())
    return TrainOutcome(
        version=data["version"],
        version_uri=data["version_uri"],
        metrics=data["metrics"],
        partitions=data["partitions"],
        summary=data["train"],
        tracking=data["wandb"],
    )


# ---------------------------------------------------------------------------------------------------------
# one rank


def run_rank(launch_path: str) -> None:
    """One rank's program: join the group, train its shard; rank 0 writes the outcome."""
    from freestack.ml.distributed import backend_for, exit_with_parent, join_group, leave_group
    from freestack.train.core import train

    exit_with_parent()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # the launcher's (torchrun's) size: torch caps it at the cores
        size_pool(int(threads))
    launch = Launch.model_validate_json(to_path(launch_path).read_bytes())
    spec = spec_from_text(launch.spec_text, launch.spec_path)
    d = spec.train.distributed
    ranks = join_group(
        backend_for(d.backend, spec.train.device), d.timeout_seconds, d.find_unused_parameters, d.strategy
    )
    _log_as_rank(ranks.rank, ranks.world)
    try:
        req = TrainRequest(**launch.request)
        settings = WandbSettings(**launch.tracking, api_key=os.environ.get("WANDB_API_KEY") or None)
        outcome = train(spec, req, tracking_settings=settings, ranks=ranks)
        if outcome is not None:
            write_bytes(
                join(places(spec, req).run_dir, OUTCOME_FILE),
                json.dumps(outcome.as_dict(), default=str).encode(),
            )
    finally:
        leave_group()


def _log_as_rank(rank: int, world: int) -> None:
    """Each log line says which rank wrote it (the task log shows every rank's progress)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        force=True,
        format=f"[rank {rank}/{world}] %(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m freestack.train.distributed LAUNCH_FILE_URI", file=sys.stderr)
        return 2
    run_rank(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "LAUNCH_FILE",
    "OUTCOME_FILE",
    "Launch",
    "LaunchError",
    "is_distributed",
    "launch",
    "launch_config",
    "run_rank",
]
