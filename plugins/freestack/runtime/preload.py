"""Preload the pipeline's libraries in the scheduler, so that every task starts with them imported.

With the LocalExecutor, the scheduler forks its worker processes when the executor starts, and each
worker forks a process per task (Airflow's task supervisor). Without help, every task process then
imports torch, pandas, pyarrow, scikit-learn and wandb again, and parses the pipeline's DAG file with
freestack's operators: seconds per task, paid again for every task of every run (``bench/orchestration``).

The freestack plugin's :data:`preload_listener` imports them once, in the scheduler, when its job
starts (Airflow's ``on_starting`` listener hook, before the executor forks its workers). The forked
processes share those pages copy-on-write (Airflow freezes the garbage collector around the fork), so
memory grows by the scheduler's share once, not per task.

- A speed-up of :mod:`freestack.runtime`: only with the ``speedups`` setting, on an Airflow it was
  written for. Only the ``airflow scheduler`` process preloads (``airflow standalone`` runs one), and
  only for an executor that forks (LocalExecutor); the DAG processor, API server and triggerer do not.
- ``FREESTACK_PRELOAD=0`` turns it off; ``FREESTACK_PRELOAD=a,b`` names the modules instead.
- Importing a library starts none of its threads (torch's pools start on first use, in the task), so
  the fork is safe; a module that fails to import is skipped with a warning, and the task imports it
  itself as before.
- It also warms what every task's first run in a process would pay: the providers' asset URI
  handlers, the Execution API client's SSL context, and one build of the pipelines' DAGs (spec and
  sweep-config validators), so that a task's own DAG build costs what a later build does.
- It also starts one wandb-core service that the tasks share (``wandb.setup()``), instead of one
  started and torn down by every task that logs to W&B (``FREESTACK_SHARED_WANDB_SERVICE=0``: off).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time

from airflow.listeners import hookimpl

from freestack.runtime import fits, speedups_on
from freestack.settings import settings

log = logging.getLogger(__name__)


#: what the train and ingest tasks import, heaviest first; then freestack's own modules
MODULES: tuple[str, ...] = (
    "torch",
    "pandas",
    "pyarrow",
    "pyarrow.parquet",
    "pyarrow.csv",
    "pyarrow.compute",
    "sklearn.metrics",
    "sklearn.gaussian_process",
    "scipy.stats",
    "wandb",
    # what the first wandb.init of a process imports: most of that call's time
    "wandb.sdk.wandb_init",
    "wandb.sdk.wandb_run",
    "wandb.apis.public",
    "matplotlib",
    "matplotlib.pyplot",
    "requests",
    "safetensors.torch",
    "huggingface_hub",
    "boto3",
    "sweeps",
    "sweeps.config",
    "sweeps.params",
    "airflow.providers.amazon.aws.hooks.s3",
    # what a LocalExecutor worker imports for its first task (the task supervisor, the DAG bag that
    # parses the DAG file, the branch skip machinery): otherwise once per worker process
    "airflow.sdk.execution_time.supervisor",
    "airflow.dag_processing.dagbag",
    "airflow.models.renderedtifields",
    "airflow.providers.standard.utils.skipmixin",
    "freestack.dags",
    "freestack.ingest.operators",
    "freestack.train.operators",
    "freestack.sweeps.operators",
    "freestack.evaluate.operators",
    "freestack.serving.operators",
    "freestack.ingest.core",
    "freestack.train.core",
    "freestack.ml.loop",
    "freestack.evaluate.core",
    "freestack.registry.core",
    "freestack.sweeps.core",
    "freestack.sweeps.trials",
    "freestack.sweeps.report",
    "freestack.tracking.wandb",
    "freestack.serving.local",
)


#: values of the ``preload`` setting that mean off
OFF = ("0", "false", "no", "off")


def wanted() -> tuple[str, ...]:
    """The modules to preload, as the ``preload`` setting says (nothing when speed-ups are off)."""
    if not speedups_on():
        return ()
    value = settings().preload.strip()
    if value.lower() in OFF:
        return ()
    if value and value.lower() not in ("1", "true", "yes", "on"):
        return tuple(m.strip() for m in value.split(",") if m.strip())
    return MODULES


def is_scheduler() -> bool:
    """This process is ``airflow scheduler``."""
    return len(sys.argv) >= 2 and os.path.basename(sys.argv[0]) == "airflow" and sys.argv[1] == "scheduler"


def is_forking_scheduler() -> bool:
    """This process is ``airflow scheduler`` and its executor forks the task processes."""
    if not is_scheduler():
        return False
    try:
        from airflow.configuration import conf

        executor = conf.get("core", "executor", fallback="LocalExecutor")
        start = conf.get("core", "mp_start_method", fallback=None)
    except Exception:
        return False
    import multiprocessing

    return (
        "LocalExecutor" in executor
        and (start or multiprocessing.get_start_method(allow_none=True) or "fork") == "fork"
    )


def _warm_asset_uri_handlers() -> bool:
    """The task SDK discovers every provider's asset URI handlers (importing boto3, the amazon
    provider's S3 hook and Airflow's asset ORM models) the first time a DAG file makes an Asset with a
    scheme other than ``file``: once per task process, unless the discovery is done here and
    inherited."""
    from airflow.sdk import Asset

    Asset(name="freestack_preload", uri="freestack://preload/warm")
    return True


def _warm_api_client() -> bool:
    """The task supervisor's Execution API client builds its SSL context (loading the certifi bundle)
    once per process, in each LocalExecutor worker's first task unless it is built here."""
    from airflow.sdk.api.client import API_SSL_CA_FILE_PATH, API_SSL_CERT_PATH, Client

    Client._get_ssl_context_cached(API_SSL_CA_FILE_PATH, API_SSL_CERT_PATH)
    return True


def _warm_dag_building() -> bool:
    """Build the pipelines' DAGs once, as the DAG file does in every task process, and throw them away:
    what the first build pays on top of later ones (spec and sweep-config validators, Airflow's operator
    machinery) is then paid here once, not in each task. Touches no connection, database or network,
    like the DAG file itself. False when there was no DAG to build."""
    # imported here, not at the top: the Airflow plugin loads this module in every Airflow process, and
    # only the scheduler that preloads should pay for every stage's operators
    from freestack.dags import build_all

    return bool(build_all({}))


def _start_wandb_service() -> bool:
    """Start one wandb-core service for every task (``wandb.setup()``, W&B's documented way to share
    it with child processes: it sets ``WANDB_SERVICE``, which the forked tasks inherit). Without it
    each task that logs to W&B starts and tears down its own service, seconds per task. A task
    whose inherited service does not answer starts its own (``freestack.tracking.wandb``)."""
    if os.environ.get("WANDB_SERVICE") or os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return False
    import wandb

    wandb.setup()
    return bool(os.environ.get("WANDB_SERVICE"))


def _warm(took: dict[str, float], label: str, step, failed: str) -> None:
    """Run one warm-up ``step`` (True: done); its seconds go into ``took`` under ``label``. A failure is
    logged as ``failed`` and skipped: the tasks then do that work themselves, as without the preload."""
    t0 = time.perf_counter()
    try:
        if step():
            took[label] = round(time.perf_counter() - t0, 3)
    except Exception as exc:
        log.warning("freestack preload: %s (%s)", failed, exc)


def preload(modules: tuple[str, ...]) -> dict[str, float]:
    """Import ``modules``; the seconds each took (a failure is logged and skipped)."""
    took: dict[str, float] = {}
    if "matplotlib.pyplot" in modules:
        try:  # the tasks draw to files (Agg), as freestack.evaluate and freestack.sweeps.report ask
            import matplotlib

            matplotlib.use("Agg")
        except Exception as exc:
            log.warning("freestack preload: matplotlib not set to Agg (%s)", exc)
    for name in modules:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional library: the task imports what it needs itself
            log.warning(
                "freestack preload: could not import %s (%s); tasks will import it themselves", name, exc
            )
            continue
        took[name] = round(time.perf_counter() - t0, 3)
    _warm(took, "asset URI handlers", _warm_asset_uri_handlers, "asset URI handlers not discovered")
    if "airflow.sdk.execution_time.supervisor" in took:
        _warm(took, "API client SSL context", _warm_api_client, "the Execution API client was not warmed")
    if "freestack.dags" in took:
        # a broken spec: the DAG processor reports it; tasks build as before
        _warm(took, "DAG building", _warm_dag_building, "the pipelines' DAGs were not built ahead")
    if "wandb" in took and settings().shared_wandb_service:
        # tasks then start their own, as without the preload
        _warm(took, "W&B service", _start_wandb_service, "no shared W&B service")
    return took


class PreloadListener:
    """Imports :data:`MODULES` in the scheduler when its job starts, before the executor forks."""

    done = False

    @hookimpl
    def on_starting(self, component) -> None:
        # an Airflow Job (the scheduler's); task processes forked from it call this hook too
        if self.done or type(component).__name__ != "Job":
            return
        modules = wanted()
        if not modules or not is_forking_scheduler() or not fits("preloading"):
            return
        PreloadListener.done = True
        t0 = time.perf_counter()
        took = preload(modules)
        log.info(
            "freestack preload: %d modules in %.1f s for the task processes (%s)",
            len(took),
            time.perf_counter() - t0,
            ", ".join(f"{k} {v:.2f}s" for k, v in took.items() if v >= 0.1),
        )


preload_listener = PreloadListener()

__all__ = [
    "MODULES",
    "OFF",
    "PreloadListener",
    "is_forking_scheduler",
    "is_scheduler",
    "preload",
    "preload_listener",
    "wanted",
]
