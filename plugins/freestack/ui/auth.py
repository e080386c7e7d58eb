"""Airflow's own login in front of every freestack page and JSON endpoint.

Airflow does not authenticate a plugin's FastAPI app (it is mounted beside the core API, whose
router-level dependency never reaches it), so every route here depends on :func:`current_user`. It
reads the token the way Airflow's core API does (``Authorization: Bearer <jwt>``, else the UI's
``_token`` cookie, which the browser sends with the framed pages) and asks the configured auth manager
who that is. No token, or one the auth manager refuses, is HTTP 401 (an expired one) or 403.

What a user may see and do is the auth manager's answer too: a pipeline's pages need read access to its
DAGs, a model no pipeline trains (a reusable operator's) read access to every DAG (no one DAG owns it),
and an action needs the right to trigger the DAG it runs (:func:`may_trigger`). Only the auth
manager's documented interface is used (``get_auth_manager()``, ``get_user_from_token``,
``is_authorized_dag``), so any auth manager (simple, FAB, Keycloak...) works unchanged.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request

#: the cookie Airflow's UI keeps its token in (``COOKIE_NAME_JWT_TOKEN`` of Airflow's auth managers)
TOKEN_COOKIE = "_token"
LOGIN_HINT = "log in to the Airflow UI first (the freestack pages use its login), or send 'Authorization: Bearer <token>' from POST /auth/token"


def request_token(request: Request) -> str | None:
    """The caller's JWT: a Bearer header, else the UI's cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(TOKEN_COOKIE) or None


def auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


async def current_user(request: Request) -> Any:
    """FastAPI dependency: the logged-in Airflow user, or HTTP 401/403."""
    from jwt import ExpiredSignatureError, InvalidTokenError

    token = request_token(request)
    if not token:
        raise HTTPException(401, f"not logged in: {LOGIN_HINT}")
    try:
        user = await auth_manager().get_user_from_token(token)
    except ExpiredSignatureError:
        raise HTTPException(401, f"the login expired: {LOGIN_HINT}") from None
    except InvalidTokenError:
        raise HTTPException(403, f"the token is not valid here: {LOGIN_HINT}") from None
    return user


def _dag_check(user: Any, dag_id: str | None, method: str, run: bool) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return bool(
        auth_manager().is_authorized_dag(
            method=method,
            access_entity=DagAccessEntity.RUN if run else None,
            details=DagDetails(id=dag_id) if dag_id else None,  # no details: every DAG
            user=user,
        )
    )


def may_read(user: Any, dag_id: str | None) -> bool:
    """Whether ``user`` may read the DAG ``dag_id`` (and so the pipeline's pages); ``None``: every DAG (and
    so the pages of a model no pipeline trains)."""
    return _dag_check(user, dag_id, "GET", run=False)


def may_trigger(user: Any, dag_id: str) -> bool:
    """Whether ``user`` may trigger a run of the DAG ``dag_id`` (the UI's Trigger button)."""
    return _dag_check(user, dag_id, "POST", run=True)


def user_name(user: Any) -> str:
    try:
        return str(user.get_name())
    except Exception:
        return "?"


__all__ = ["TOKEN_COOKIE", "current_user", "may_read", "may_trigger", "request_token", "user_name"]
