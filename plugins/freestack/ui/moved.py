"""The ML views' older addresses in the Airflow UI, redirected to the pages' addresses now.

Each page used to be its own entry of the UI's navigation, framed at ``/plugin/freestack-<page>``
(``/plugin/freestack-models``, ``-sweeps``, ``-deployments``, ``-monitoring``, ``-data``); they are now the
tabs of one entry, ``/plugin/freestack/<page>``. The UI answers an address it does not know with its
"page not found", so a bookmark or a link in a note or a runbook would lose its page: this middleware of
the API server's root app (the plugin's ``fastapi_root_middlewares``) answers them with a permanent
redirect (301) to the page's address now, the rest of the path and the query kept
(``/plugin/freestack-models/digits?pg=2`` -> ``/plugin/freestack/models/digits?pg=2``). The UI's own
path prefix (``[api] base_url`` with a path) is kept too. Every other request passes untouched.
"""

from __future__ import annotations

import re

from starlette.datastructures import URL
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

#: the pages that had their own navigation entry
OLD_PAGES = ("models", "sweeps", "deployments", "monitoring", "data")
OLD = re.compile(r"/plugin/freestack-(" + "|".join(OLD_PAGES) + r")(/.*)?")


def new_address(path: str) -> str | None:
    """The page's address now for an older address's path (below the UI's root), else None."""
    found = OLD.fullmatch(path)
    return f"/plugin/freestack/{found.group(1)}{found.group(2) or ''}" if found else None


class MovedPages:
    """Answer GET and HEAD at an older address with 301 and the page's address now; pass the rest on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            root = scope.get("root_path", "")
            path = scope["path"]
            target = new_address(path[len(root) :] if root and path.startswith(root) else path)
            if target is not None:
                query = URL(scope=scope).query
                location = root + target + (f"?{query}" if query else "")
                await RedirectResponse(location, status_code=301)(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["OLD_PAGES", "MovedPages", "new_address"]
