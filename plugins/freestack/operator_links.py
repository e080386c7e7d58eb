"""The tasks' extra links: "W&B run" (and the small web page behind it for offline runs), and the link
from every task of a pipeline into the matching freestack page (:class:`FreestackPageLink`).

The training task pushes an XCom with key ``wandb`` holding ``TrackingRun.as_dict()``. In Airflow 3
an operator's extra links are computed in the task process when the task finishes (the task runner
calls ``get_link`` and stores the result in the XCom ``_link_WandbRunLink``); the API server only
reads that stored string back. So the operator must list ``WandbRunLink()`` in its own
``operator_extra_links`` (a plugin's ``operator_extra_links`` would be called in the API server,
where the Task SDK cannot read XComs).

- online run: the link is the run's W&B URL;
- offline run: the link opens ``/freestack/wandb/offline?run_dir=...`` on the Airflow API server
  (:mod:`freestack.ui.wandb_pages`, mounted by the freestack plugin): the run's summary metrics,
  config and the ``wandb sync`` command.

The train, select_best and evaluate tasks carry the link (in the grid or graph, select the task: the
link is under Extra Links in its Details tab).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit

from airflow.sdk import BaseOperatorLink

XCOM_KEY = "wandb"
URL_PREFIX = "/freestack/wandb"
OFFLINE_PATH = "/offline"


def _api_base_url() -> str:
    """The Airflow API server's public base URL (``[api] base_url``), or "" for a relative link."""
    try:
        from airflow.sdk.configuration import conf

        return (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    except Exception:
        return ""


def wandb_link(data: Any, base_url: str | None = None) -> str:
    """The link for one ``TrackingRun.as_dict()``: the W&B URL when online, the offline page when
    offline, "" (no link) otherwise."""
    if not isinstance(data, dict):
        return ""
    mode = data.get("mode")
    if mode == "online":
        url = data.get("url") or ""
        return url if urlsplit(url).scheme in ("http", "https") else ""
    if mode == "offline" and data.get("run_dir"):
        base = _api_base_url() if base_url is None else base_url.rstrip("/")
        return f"{base}{URL_PREFIX}{OFFLINE_PATH}?{urlencode({'run_dir': str(data['run_dir'])})}"
    return ""


class WandbRunLink(BaseOperatorLink):
    """Extra link "W&B run", read from the task's ``wandb`` XCom."""

    name = "W&B run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        try:
            from airflow.sdk.execution_time.xcom import XCom

            data = XCom.get_value(ti_key=ti_key, key=XCOM_KEY)
        except Exception:
            return ""
        return wandb_link(data)


#: where the freestack pages are mounted on the API server (:mod:`freestack.ui.app`)
VIEWS_PREFIX = "/freestack/ui"
#: the UI's route that frames them (the plugin's "freestack" navigation entry): a path after it names the
#: page the frame opens (``/plugin/freestack/task?...`` opens ``/freestack/ui/task?...``, see static/views.js)
UI_ROUTE = "/plugin/freestack"


class FreestackPageLink(BaseOperatorLink):
    """Extra link from a pipeline's task into its freestack page, inside Airflow's UI (its navigation and
    theme around it): a training run's tasks open the version they made (or its sweep), ``deploy`` the
    deployment, ``ingest`` the lake, the score DAG's ``plan`` and ``score`` the pipeline's Scores page at
    the days their run scored; the page is found when the link is followed (``/freestack/ui/task``,
    :func:`freestack.ui.tasks.page_of_task`), so a task that is still running links too."""

    def __init__(self, name: str = "freestack") -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        query = {"dag_id": ti_key.dag_id, "run_id": ti_key.run_id, "task_id": ti_key.task_id}
        if getattr(ti_key, "map_index", -1) >= 0:
            query["map_index"] = ti_key.map_index
        return f"{_api_base_url()}{UI_ROUTE}/task?{urlencode(query)}"


__all__ = [
    "FreestackPageLink",
    "OFFLINE_PATH",
    "UI_ROUTE",
    "URL_PREFIX",
    "VIEWS_PREFIX",
    "XCOM_KEY",
    "WandbRunLink",
    "wandb_link",
]
