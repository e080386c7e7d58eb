"""The freestack AirflowPlugin: macros, the data:// registration in every Airflow process, and the web
apps the Airflow API server hosts (the W&B offline-run page, the Data API)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

import freestack
import freestack.storage  # noqa: F401  (registers data:// with fsspec and universal-pathlib)
from freestack.dataapi import PLUGIN_URL_PREFIX
from freestack.dataapi.app import data_api_app
from freestack.links import wandb_app
from freestack.pools import pool_listener
from freestack.preload import preload_listener
from freestack.timings import enabled as timings_enabled
from freestack.timings import task_timings
from freestack.wake import wake_listener


def storage_root() -> str:
    """Macro ``{{ macros.freestack.storage_root() }}``: the configured storage root URI."""
    from freestack.config import default_storage_root

    return default_storage_root()


class FreestackPlugin(AirflowPlugin):
    name = "freestack"
    macros = [storage_root]
    # creates the freestack_sweep pool (sweep agents) when the scheduler starts, if it is missing
    # FREESTACK_TASK_TIMINGS=file: when each task's execute starts and ends (bench/orchestration)
    # preload_listener: the scheduler imports torch, pandas, ... once, before the LocalExecutor forks its
    # workers, so that task processes start with them (freestack.preload; FREESTACK_PRELOAD=0 turns it off)
    # wake_listener: the scheduler's idle sleep ends when a LocalExecutor task ends (freestack.wake)
    listeners = [pool_listener, preload_listener, wake_listener, *([task_timings] if timings_enabled() else [])]
    fastapi_apps = [
        # the page the "W&B run" extra link opens for offline runs: the run folder and `wandb sync`
        {"app": wandb_app, "url_prefix": "/freestack/wandb", "name": "freestack W&B"},
        # the Algorithmia-compatible Data API: Algorithmia.client(key, "http://<airflow>/freestack/data")
        {"app": data_api_app, "url_prefix": PLUGIN_URL_PREFIX, "name": "freestack Data API"},
    ]


__all__ = ["FreestackPlugin", "freestack"]
