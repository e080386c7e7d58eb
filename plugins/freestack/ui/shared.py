"""What every route of the views app draws with, its own (:mod:`freestack.ui.app`) and the extra pages'
(:mod:`freestack.ui.extra_pages`): the page renderer and its templates, the logged-in user, the pipelines
and models the user may read, storage reads off the event loop, 404 for an unknown version, and the
same-origin check of forms."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse

from freestack.registry.core import ModelRegistry, RegistryError
from freestack.sweeps.core import SweepError
from freestack.ui import actions
from freestack.ui.auth import current_user, may_read, user_name
from freestack.ui.catalog import common
from freestack.ui.vendor import plotly_js_name

HERE = Path(__file__).parent
URL_PREFIX = "/freestack/ui"
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _templates():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["num"] = lambda v, digits=4: (
        "" if v is None else (f"{v:.{digits}g}" if isinstance(v, float) else str(v))
    )
    env.filters["short"] = lambda v, n=12: "" if not v else str(v)[:n]
    env.globals["plotly_js"] = plotly_js_name  # the versioned name, read when a chart page is first drawn
    return env


TEMPLATES = _templates()


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from its template; Plotly figures (JSON) are embedded so no "</script>" can close their tag."""
    if context.get("figures"):
        context["figures"] = [f.replace("</", "<\\/") for f in context["figures"]]

    html = TEMPLATES.get_template(template).render(
        base=str(request.scope.get("root_path", "")) or URL_PREFIX,
        user=user_name(request.state.user),
        run_url=actions.run_url,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


async def user_of(request: Request, user: Any = Depends(current_user)) -> Any:
    """The logged-in user, kept on the request for the error page."""
    request.state.user = user
    return user


def pipeline_of(name: str, user: Any, dag: str = "train") -> tuple[common.Pipeline, Any]:
    """The pipeline ``name`` and its spec, when the user may read its ``<name>_<dag>`` DAG."""
    found = {p.name: (p, s) for p, s in common.pipelines()}
    if name not in found:
        raise HTTPException(404, f"no pipeline {name!r} (pipelines: {', '.join(sorted(found)) or 'none'})")
    if not may_read(user, f"{name}_{dag}"):
        raise HTTPException(403, f"you may not read the DAG {name}_{dag}, so not its pipeline's pages")
    return found[name]


def readable(user: Any, dag: str = "train") -> list[tuple[common.Pipeline, Any]]:
    """Every pipeline and its spec whose ``<name>_<dag>`` DAG the user may read."""
    return [(p, s) for p, s in common.pipelines() if may_read(user, f"{p.name}_{dag}")]


def reads_every_dag(user: Any) -> bool:
    """Whether the user may read every DAG: what a model no pipeline trains needs (no one DAG owns it)."""
    return may_read(user, None)


def unpiped_readable(user: Any) -> list[ModelRegistry]:
    """The registries of the models no pipeline trains (:func:`~freestack.ui.catalog.common.unpiped_models`),
    when the user may read every DAG; else none."""
    return common.unpiped_models(common.pipelines()) if reads_every_dag(user) else []


def model_of(name: str, user: Any) -> tuple[str | None, Any]:
    """What the pages of the model at ``/models/<name>`` read: the pipeline ``name`` and its spec, when
    the user may read ``<name>_train``; else ``None`` and the registry of the model ``name`` that no
    pipeline trains, when the user may read every DAG. 404 when there is neither."""
    found = common.pipelines()
    if any(p.name == name for p, _ in found):
        return name, pipeline_of(name, user)[1]
    models = common.unpiped_models(found)
    reg = next((r for r in models if r.model == name), None)
    if reg is None:
        pipes, others = sorted(p.name for p, _ in found), sorted({r.model for r in models})
        raise HTTPException(
            404,
            f"no pipeline or registered model {name!r} (pipelines: {', '.join(pipes) or 'none'}; "
            f"models no pipeline trains: {', '.join(others) or 'none'})",
        )
    if not reads_every_dag(user):
        raise HTTPException(
            403, f"no pipeline trains {name!r}, so its pages need read access to every DAG, which you lack"
        )
    return None, reg


async def off_loop(fn, *args):
    """Run a storage-reading function in a thread: the API server's event loop keeps serving."""
    return await asyncio.to_thread(fn, *args)


def found(read, *args):
    """``read(*args)``; a version, alias or sweep it does not find is HTTP 404 with the reader's message."""
    try:
        return read(*args)
    except (RegistryError, SweepError) as exc:
        raise HTTPException(404, str(exc)) from None


def same_origin(request: Request) -> None:
    """A state-changing form must come from this server's own pages (the cookie is SameSite=Lax too)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin and urlsplit(origin).netloc != request.url.netloc:
        raise HTTPException(403, f"the form was sent from {urlsplit(origin).netloc}, not from this server")


__all__ = [
    "HEADERS",
    "TEMPLATES",
    "URL_PREFIX",
    "found",
    "model_of",
    "off_loop",
    "page",
    "pipeline_of",
    "readable",
    "reads_every_dag",
    "same_origin",
    "unpiped_readable",
    "user_of",
]
