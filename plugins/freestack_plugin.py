"""The freestack AirflowPlugin: macros and the data:// registration in every Airflow process."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

import freestack
import freestack.storage  # noqa: F401  (registers data:// with fsspec and universal-pathlib)
from freestack.links import wandb_app


def storage_root() -> str:
    """Macro ``{{ macros.freestack.storage_root() }}``: the configured storage root URI."""
    from freestack.config import default_storage_root

    return default_storage_root()


class FreestackPlugin(AirflowPlugin):
    name = "freestack"
    macros = [storage_root]
    # the page the "W&B run" extra link opens for offline runs: the run folder and `wandb sync`
    fastapi_apps = [{"app": wandb_app, "url_prefix": "/freestack/wandb", "name": "freestack W&B"}]


__all__ = ["FreestackPlugin", "freestack"]
