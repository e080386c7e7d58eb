"""The freestack AirflowPlugin: macros, the data:// registration in every Airflow process, the runtime
wing's listeners, and the web apps the Airflow API server hosts (the ML views, the W&B offline-run
pages, the Data API)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

import freestack
import freestack.storage  # noqa: F401  (registers data:// with fsspec and universal-pathlib)
from freestack.dataapi import PLUGIN_URL_PREFIX
from freestack.dataapi.app import data_api_app
from freestack.runtime.notes import run_notes
from freestack.runtime.pools import pool_listener
from freestack.runtime.preload import preload_listener
from freestack.runtime.scheduler_wakeup import wake_listener
from freestack.runtime.timings import enabled as timings_enabled
from freestack.runtime.timings import task_timings
from freestack.settings import default_storage_root
from freestack.ui.app import views_app
from freestack.ui.moved import MovedPages
from freestack.ui.wandb_pages import wandb_app

#: the ML views' one entry in the UI's navigation (top level), framed by the UI under /plugin/freestack; the
#: pages' own tabs move between Models, Sweeps, Deployments, Monitoring, Scores and Data. The href is relative to
#: the UI's <base> (a proxy's path prefix is kept); "fs-shell" tells the framed page that it was loaded from
#: the entry, so it goes on to the page the address bar names (/plugin/freestack/models/digits/v3: a
#: reload, a bookmark, an extra link) and then writes each page's own path there (static/views.js)
VIEWS_ROUTE = "freestack"
VIEWS_HREF = "freestack/ui/models?fs-shell=1"


def storage_root() -> str:
    """Macro ``{{ macros.freestack.storage_root() }}``: the configured storage root URI."""
    return default_storage_root()


class FreestackPlugin(AirflowPlugin):
    name = "freestack"
    macros = [storage_root]
    # the UI's menu: the "freestack" entry (the ML views), and Browse -> W&B offline runs (the list page)
    external_views = [
        {
            "name": "freestack",
            "href": VIEWS_HREF,
            "url_route": VIEWS_ROUTE,
            "destination": "nav",
            "nav_top_level": True,
            "icon": "freestack/ui/static/freestack.svg",
        },
        {
            "name": "W&B offline runs",
            "href": "freestack/wandb/",
            "url_route": "freestack-wandb",
            "destination": "nav",
            "category": "browse",
        },
    ]
    # freestack.runtime: pool_listener creates the sweep agents' pool when a component starts (always);
    # run_notes sets a finished run's note from its tasks' freestack_run_note XCom (always: the gate's
    # decision); preload_listener and wake_listener are the speed-ups (only with FREESTACK_SPEEDUPS, on in
    # the embedded stack); task_timings records each task's start and end (FREESTACK_TASK_TIMINGS=file)
    listeners = [
        pool_listener,
        run_notes,
        preload_listener,
        wake_listener,
        *([task_timings] if timings_enabled() else []),
    ]
    fastapi_apps = [
        # the ML views (models, sweeps, deployments, data), behind Airflow's login (freestack.ui.auth)
        {"app": views_app, "url_prefix": "/freestack/ui", "name": "freestack views"},
        # the offline W&B runs: the list, and the page the "W&B run" extra link opens for an offline run
        # (summary metrics, config, `wandb sync`)
        {"app": wandb_app, "url_prefix": "/freestack/wandb", "name": "freestack W&B"},
        # the Algorithmia-compatible Data API: Algorithmia.client(key, "http://<airflow>/freestack/data")
        {"app": data_api_app, "url_prefix": PLUGIN_URL_PREFIX, "name": "freestack Data API"},
    ]
    # the pages' older addresses in the UI (/plugin/freestack-models...: one navigation entry each, before
    # the tabs) answer 301 with their address now, /plugin/freestack/models... (freestack.ui.moved)
    fastapi_root_middlewares = [{"middleware": MovedPages, "name": "freestack moved pages"}]


__all__ = ["FreestackPlugin", "freestack"]
