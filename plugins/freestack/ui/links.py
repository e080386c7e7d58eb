"""The "W&B run" extra link and the small web page behind it for offline runs.

The training task pushes an XCom with key ``wandb`` holding ``TrackingRun.as_dict()``. In Airflow 3
an operator's extra links are computed in the task process when the task finishes (the task runner
calls ``get_link`` and stores the result in the XCom ``_link_WandbRunLink``); the API server only
reads that stored string back. So the operator must list ``WandbRunLink()`` in its own
``operator_extra_links`` (a plugin's ``operator_extra_links`` would be called in the API server,
where the Task SDK cannot read XComs).

- online run: the link is the run's W&B URL;
- offline run: the link opens ``/freestack/wandb/offline?run_dir=...`` on the Airflow API server
  (``wandb_app``, mounted by the freestack plugin), which shows the run folder and the
  ``wandb sync`` command. Only folders under the configured wandb folder are shown.
"""

from __future__ import annotations

import html
import os
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from airflow.sdk import BaseOperatorLink
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

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


# ---------------------------------------------------------------------------------------------------------
# the offline page

wandb_app = FastAPI(title="freestack W&B", docs_url=None, redoc_url=None, openapi_url=None)

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}
pre{{background:#f4f4f4;padding:.8em;overflow-x:auto}}td{{padding:.2em .8em .2em 0}}</style>
</head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def _root() -> Path:
    from freestack.tracking.wandb import wandb_root

    return Path(os.path.realpath(wandb_root()))


def _checked_run_dir(raw: str) -> Path:
    """``raw`` resolved, when it lies strictly inside the wandb folder; else HTTP 400."""
    if not raw or "\x00" in raw:
        raise HTTPException(400, "run_dir is empty or invalid")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise HTTPException(400, "run_dir must be an absolute path")
    real = Path(os.path.realpath(path))
    root = _root()
    if real == root or root not in real.parents:
        raise HTTPException(400, "run_dir is not inside the configured W&B folder")
    return real


def _error_page(status: int, message: str) -> HTMLResponse:
    body = f"<p>{html.escape(message)}</p>"
    return HTMLResponse(
        _PAGE.format(title="W&amp;B run: refused", body=body), status_code=status, headers=_HEADERS
    )


@wandb_app.exception_handler(HTTPException)
async def _http_error(request: Any, exc: HTTPException) -> HTMLResponse:
    return _error_page(exc.status_code, str(exc.detail))


@wandb_app.get("/offline", response_class=HTMLResponse)
def offline_run(run_dir: str = Query(..., max_length=4096)) -> HTMLResponse:
    """A page naming the offline run's folder and the command that uploads it."""
    folder = _checked_run_dir(run_dir)
    exists = folder.is_dir()
    logs = sorted(p for p in folder.glob("*.wandb") if p.is_file()) if exists else []
    command = f"wandb sync {shlex.quote(str(folder))}"
    rows = [
        ("Run folder", f"<code>{html.escape(str(folder))}</code>"),
        ("Present on this server", "yes" if exists else "no (it is on the worker that ran the task)"),
    ]
    for p in logs:
        rows.append(("Transaction log", f"<code>{html.escape(p.name)}</code> ({p.stat().st_size} bytes)"))
    table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    body = (
        "<p>This run was recorded offline: nothing was sent to a W&amp;B server.</p>"
        f"<table>{table}</table>"
        "<p>To upload it, run this on the machine that holds the folder (logged in with "
        "<code>wandb login</code>):</p>"
        f"<pre>{html.escape(command)}</pre>"
    )
    return HTMLResponse(_PAGE.format(title="W&amp;B offline run", body=body), headers=_HEADERS)


__all__ = ["OFFLINE_PATH", "URL_PREFIX", "XCOM_KEY", "WandbRunLink", "wandb_app", "wandb_link"]
