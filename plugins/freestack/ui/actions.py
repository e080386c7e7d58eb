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


async def trigger(dag_id: str, conf: dict[str, str | None], token: str, note: str) -> Triggered:
    """``POST /api/v2/dags/{dag_id}/dagRuns`` as the user whose token this is."""
    import httpx

    url = f"{api_base_url()}/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
    body = {"logical_date": None, "conf": conf, "note": note[:1000]}
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            got = await client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise ActionError(
            f"Airflow's API at {url} did not answer ({exc}); is [api] base_url this server?"
        ) from None
    if got.status_code >= 400:
        try:
            detail = got.json().get("detail")
        except ValueError:
            detail = got.text[:300]
        raise ActionError(
            f"Airflow refused to start {dag_id} (HTTP {got.status_code}): {detail}", got.status_code
        )
    run = got.json()
    return Triggered(
        dag_id=dag_id,
        run_id=run["dag_run_id"],
        state=run.get("state") or "queued",
        url=run_url(dag_id, run["dag_run_id"]),
    )


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
