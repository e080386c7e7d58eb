"""What the extra pages share: the logged-in user as a dependency, and the helpers of
:mod:`freestack.ui.app` they draw with (handed over by :func:`freestack.ui.extra_pages.routes`, so no
module here imports the app)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse

from freestack.ui.auth import current_user


async def user_of(request: Request, user: Any = Depends(current_user)) -> Any:
    """The logged-in user, kept on the request for the error page (every page's dependency, the app's too)."""
    request.state.user = user
    return user


@dataclass(frozen=True)
class Helpers:
    """What the pages use of :mod:`freestack.ui.app`: its page renderer, the readable pipeline and its spec,
    storage reads off the event loop, 404 for an unknown version, and the same-origin check of forms."""

    page: Callable[..., HTMLResponse]
    pipeline: Callable[..., tuple[Any, Any]]
    off_loop: Callable[..., Awaitable[Any]]
    found: Callable[..., Any]
    same_origin: Callable[[Request], None]


_helpers: list[Helpers] = []


def use(helpers: Helpers) -> None:
    """The helpers every extra page draws with from now on."""
    _helpers[:] = [helpers]


def app_helpers() -> Helpers:
    """The helpers of :mod:`freestack.ui.app` the pages draw with."""
    if not _helpers:
        raise RuntimeError("freestack.ui.extra_pages.routes() was not called: the views app includes it")
    return _helpers[0]


__all__ = ["Helpers", "app_helpers", "use", "user_of"]
