"""What the pages' buttons do: trigger a pipeline's DAG through Airflow's public REST API, with the
user's own token, so the change is an audited DAG run of that user (its triggering user, its note) and
Airflow itself checks the user's right to trigger it.

    promote    <p>_promote  {version, alias, reason, expect}     the alias <- version (production redeploys)
    rollback   <p>_rollback {version, expect_production}         production <- the version shown, redeployed

Each form names the version the page showed and what the alias was as the user asked (``expect``,
``expect_production``): the run moves the alias only while it still is, else fails naming the move that
came first (runs of the model's moves take its deploy pool one at a time, not in the order asked).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from freestack.errors import FreestackError


class ActionError(FreestackError):
    """The DAG run could not be started; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class Triggered(BaseModel):
    dag_id: str
    run_id: str
    state: str
    url: str


def api_base_url() -> str:
    """The Airflow API server's own address (``[api] base_url``)."""
    from airflow.sdk.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "http://127.0.0.1:8080").rstrip("/")


def run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI."""
    return f"{api_base_url()}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


#: seconds the API server may take to answer the trigger before the try counts as unanswered
TRIGGER_TIMEOUT_S = 30.0
#: tries of a trigger left unanswered or refused as busy (a 503, or a 500 "Database error": on SQLite the
#: API server meets the scheduler's lock under load), 2, 4, then 8 s apart
TRIGGER_TRIES = 4


class _Busy(Exception):
    """Airflow left the try unanswered or answered that it is busy: worth another try."""


async def trigger(dag_id: str, conf: dict[str, str | None], token: str, note: str) -> Triggered:
    """``POST /api/v2/dags/{dag_id}/dagRuns`` as the user whose token this is, under a run id chosen here:
    a try left unanswered or refused as busy is tried again, after looking up whether it made the run (one
    run, never two), as ``freestack``'s CLI does."""
    import httpx
    from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    run_id = f"manual__{datetime.now(UTC).isoformat()}"
    url = f"{api_base_url()}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
    body = {"dag_run_id": run_id, "logical_date": None, "conf": conf, "note": note[:1000]}
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(_Busy),
        stop=stop_after_attempt(TRIGGER_TRIES),
        wait=wait_exponential(multiplier=2, max=8),
        reraise=True,
    )
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(timeout=TRIGGER_TIMEOUT_S, headers=headers) as client:
            async for attempt in retrying:
                with attempt:
                    got = await _post_or_find(client, url, body, attempt.retry_state.attempt_number > 1)
    except _Busy as exc:
        raise ActionError(
            f"Airflow's API at {url} did not answer ({exc}) in {TRIGGER_TRIES} tries; "
            "is [api] base_url this server? If it is only busy, the run may still start: see the DAG's runs"
        ) from None
    except httpx.HTTPError as exc:
        raise ActionError(
            f"Airflow's API at {url} did not answer ({exc}); is [api] base_url this server?"
        ) from None
    if got.status_code >= 400:
        raise ActionError(
            f"Airflow refused to start {dag_id} (HTTP {got.status_code}): {_detail(got)}", got.status_code
        )
    run = got.json()
    return Triggered(
        dag_id=dag_id,
        run_id=run["dag_run_id"],
        state=run.get("state") or "queued",
        url=run_url(dag_id, run["dag_run_id"]),
    )


async def _post_or_find(client: Any, url: str, body: dict[str, Any], again: bool) -> Any:
    """POST the run; ``again``: first look up the run an earlier, unanswered try may have made."""
    import httpx

    run_url_api = f"{url}/{quote(body['dag_run_id'], safe='')}"
    try:
        if again and (found := await client.get(run_url_api)).status_code == 200:
            return found
        got = await client.post(url, json=body)
        if got.status_code == 409:  # an earlier try made it after all
            got = await client.get(run_url_api)
    except httpx.TransportError as exc:  # unanswered, or the connection lost: the next try looks first
        raise _Busy(str(exc) or type(exc).__name__) from None
    detail = _detail(got) if got.status_code in (500, 503) else ""
    if got.status_code == 503 or "database" in detail.lower():
        raise _Busy(f"HTTP {got.status_code} {detail}")
    return got


def _detail(got: Any) -> str:
    try:
        return str(got.json().get("detail"))
    except (ValueError, AttributeError):
        return got.text[:300]


async def runs_in_flight(dag_id: str, token: str) -> list[str] | None:
    """The ids of ``dag_id``'s queued or running runs, as the user sees them (None: Airflow did not say)."""
    import httpx

    url = f"{api_base_url()}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            got = await client.get(
                url,
                params=[("state", "queued"), ("state", "running"), ("limit", "20")],
                headers={"Authorization": f"Bearer {token}"},
            )
        got.raise_for_status()
        return [r["dag_run_id"] for r in got.json().get("dag_runs", [])]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


__all__ = ["ActionError", "Triggered", "api_base_url", "run_url", "runs_in_flight", "trigger"]
