"""The W&B pages the Airflow API server hosts (mounted by the freestack plugin at ``/freestack/wandb``;
in the UI's menu under Browse -> W&B offline runs, and behind each task's "W&B run" extra link when
the run was recorded offline):

- ``/freestack/wandb/``: the offline runs under the W&B folder (``$WANDB_DIR``), newest first;
- ``/freestack/wandb/offline?run_dir=<folder>``: one run's summary metrics, config, tags and state,
  read with wandb's own reader (:mod:`freestack.tracking.offline`), and the exact ``wandb sync``
  command that uploads it.

Only folders inside the W&B folder are shown (symlinks resolved first); every value is escaped and
the pages load nothing (Content-Security-Policy ``default-src 'none'``). Like the ML views, the pages
need Airflow's login (:func:`freestack.ui.auth.current_user`): anonymous requests get 401.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse

from freestack.tracking import offline
from freestack.tracking.wandb import wandb_root
from freestack.ui.auth import current_user

wandb_app = FastAPI(
    title="freestack W&B",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
    dependencies=[Depends(current_user)],
)

_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:70em}}
pre{{background:#f4f4f4;padding:.8em;overflow-x:auto}}table{{border-collapse:collapse}}
td,th{{padding:.25em .9em .25em 0;text-align:left;vertical-align:top}}th{{border-bottom:1px solid #ccc}}
td.num{{font-variant-numeric:tabular-nums}}</style>
</head><body>
<h1>{title}</h1>
{body}
</body></html>
"""

#: the most runs the list shows
LIST_LIMIT = 200


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=title, body=body), status_code=status, headers=_HEADERS)


def _root() -> Path:
    return Path(os.path.realpath(wandb_root()))


def _checked_run_dir(raw: str) -> Path:
    """``raw`` resolved, when it lies strictly inside the W&B folder; else HTTP 400."""
    if not raw or "\x00" in raw:
        raise HTTPException(400, "run_dir is empty or invalid")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise HTTPException(400, "run_dir must be an absolute path")
    real = Path(os.path.realpath(path))
    root = _root()
    if real == root or root not in real.parents:
        raise HTTPException(400, f"run_dir is not inside the configured W&B folder ({root})")
    return real


@wandb_app.exception_handler(HTTPException)
async def _http_error(request: Any, exc: HTTPException) -> HTMLResponse:
    return _page("W&amp;B run: refused", f"<p>{html.escape(str(exc.detail))}</p>", exc.status_code)


def _table(table_id: str, head: tuple[str, str], rows: list[tuple[str, str]], numeric: bool = False) -> str:
    """Rows of already-escaped cells."""
    cls = ' class="num"' if numeric else ""
    cells = "".join(f"<tr><td>{k}</td><td{cls}>{v}</td></tr>" for k, v in rows)
    return f'<table id="{table_id}"><tr><th>{head[0]}</th><th>{head[1]}</th></tr>{cells}</table>'


def _values(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(html.escape(k), html.escape(offline.shown(v))) for k, v in sorted(offline.flat(data).items())]


def _run_facts(folder: Path, info: dict[str, Any] | None) -> list[tuple[str, str]]:
    esc = html.escape
    rows = [("Folder", f"<code>{esc(str(folder))}</code>")]
    if info:
        rows += [
            ("Project", esc(str(info.get("project") or ""))),
            ("Run id", esc(str(info.get("run_id") or ""))),
            ("State", esc(f"{info.get('state')} (exit code {info.get('exit_code')})")),
            ("Started", esc(str(info.get("start_time") or ""))),
            ("Tags", esc(", ".join(info.get("tags") or [])) or "(none)"),
        ]
    for p in offline.logs_of(folder):
        rows.append(("Transaction log", f"<code>{esc(p.name)}</code> ({p.stat().st_size:,} bytes)"))
    return rows


def _run_body(folder: Path) -> tuple[str, str]:
    """(title, body) of one run's page."""
    card = offline.read_card(folder) if folder.is_dir() else {}
    upload = (
        "<h2>Upload it</h2><p>On the machine that holds the folder, logged in with <code>wandb login</code>"
        f':</p><pre id="sync">{html.escape(offline.sync_command(folder))}</pre>'
    )
    if not folder.is_dir():
        note = "<p>The folder is not on this server: it is on the worker that ran the task.</p>"
        return "W&amp;B offline run", "<p>Recorded offline.</p>" + upload + note + _table(
            "run", ("", ""), _run_facts(folder, None)
        )
    done = (
        " <strong>Uploaded already</strong> (<code>wandb sync</code> left its marker)."
        if offline.synced(folder)
        else ""
    )
    lead = f'<p>Recorded offline: nothing was sent to a W&amp;B server.{done} <a href="./">All offline runs</a></p>'
    try:
        info = offline.inspect_run(folder)
    except offline.OfflineRunError as exc:
        trouble = f"<p>The run's log could not be read: {html.escape(str(exc))}</p>"
        return "W&amp;B offline run", lead + upload + trouble + _table(
            "run", ("", ""), _run_facts(folder, None)
        )
    title = html.escape(
        f"W&B offline run {card.get('name') or info.get('name') or info.get('run_id') or folder.name}"
    )
    summary = _values(info.get("summary") or {}) or [("(none)", "")]
    config = _values(info.get("config") or {}) or [("(none)", "")]
    body = (
        lead
        + upload
        + "<h2>Summary metrics</h2>"
        + _table("summary", ("Metric", "Value"), summary, numeric=True)
        + "<h2>Config</h2>"
        + _table("config", ("Key", "Value"), config)
        + "<h2>Run</h2>"
        + _table("run", ("", ""), _run_facts(folder, info))
    )
    return title, body


@wandb_app.get("/offline", response_class=HTMLResponse)
def offline_run(run_dir: str = Query(..., max_length=4096)) -> HTMLResponse:
    """One offline run: summary metrics, config, state, and the command that uploads it."""
    title, body = _run_body(_checked_run_dir(run_dir))
    return _page(title, body)


def _stamp(folder: Path) -> str:
    """``20261123_070509`` of wandb's ``offline-run-20261123_070509-<id>``."""
    parts = folder.name.split("-")
    return parts[2] if len(parts) > 3 else ""


@wandb_app.get("/", response_class=HTMLResponse)
def offline_list() -> HTMLResponse:
    """The offline runs under the W&B folder, newest first."""
    esc, root = html.escape, _root()
    runs = offline.offline_runs(root, LIST_LIMIT)
    rows = []
    for r in runs:
        card, folder = r["card"], r["folder"]
        link = f'<a href="offline?{esc(urlencode({"run_dir": str(folder)}))}">{esc(card.get("name") or folder.name)}</a>'
        rows.append(
            f"<tr><td>{esc(str(card.get('started') or _stamp(folder)))}</td><td>{link}</td>"
            f"<td>{esc(str(card.get('job_type') or ''))}</td><td>{esc(', '.join(card.get('tags') or []))}</td>"
            f"<td>{'yes' if r['synced'] else 'no'}</td></tr>"
        )
    head = "<tr><th>Started</th><th>Run</th><th>Job</th><th>Tags</th><th>Uploaded</th></tr>"
    listing = f'<table id="runs">{head}{"".join(rows)}</table>' if rows else "<p>No offline runs yet.</p>"
    body = (
        f"<p>Runs recorded offline under <code>{esc(str(root))}</code>, newest first (at most {LIST_LIMIT}). "
        "Each page shows the run's summary metrics and config, and the <code>wandb sync</code> command that "
        f"uploads it.</p>{listing}"
    )
    return _page("W&amp;B offline runs", body)


__all__ = ["LIST_LIMIT", "wandb_app"]
