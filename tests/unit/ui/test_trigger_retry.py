"""The pages' trigger against a real HTTP server standing in for Airflow's ``dagRuns`` endpoint: a try left
unanswered or refused as busy is tried again, and a run the unanswered try made is found, never made twice."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from freestack.ui import actions


class FakeAirflow:
    """``POST``/``GET`` of ``/api/v2/dags/{dag}/dagRuns``; ``script`` says what each POST does."""

    def __init__(self, script: list[str]) -> None:
        self.script, self.runs, self.posts = script, {}, 0
        self.app = FastAPI()
        self.app.post("/api/v2/dags/{dag_id}/dagRuns")(self.post)
        self.app.get("/api/v2/dags/{dag_id}/dagRuns/{run_id}")(self.get)

    async def post(self, dag_id: str, request: Request) -> JSONResponse:
        body, step = await request.json(), self.script[min(self.posts, len(self.script) - 1)]
        self.posts += 1
        if step == "busy":
            return JSONResponse({"detail": "Database error"}, 500)
        if body["dag_run_id"] in self.runs:
            return JSONResponse({"detail": "exists"}, 409)
        self.runs[body["dag_run_id"]] = {"dag_run_id": body["dag_run_id"], "state": "queued"}
        if step == "slow":  # made the run, answers too late
            await asyncio.sleep(1.5)
        return JSONResponse(self.runs[body["dag_run_id"]])

    async def get(self, dag_id: str, run_id: str) -> JSONResponse:
        run = self.runs.get(run_id)
        return JSONResponse(run or {"detail": "not found"}, 200 if run else 404)


@pytest.fixture
def airflow(monkeypatch):
    def start(script: list[str]) -> FakeAirflow:
        fake = FakeAirflow(script)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        servers.append(server)
        monkeypatch.setattr(actions, "api_base_url", lambda: f"http://127.0.0.1:{port}")
        monkeypatch.setattr(actions, "TRIGGER_TIMEOUT_S", 0.5)
        return fake

    servers: list[uvicorn.Server] = []
    yield start
    for server in servers:
        server.should_exit = True


def test_a_busy_airflow_is_asked_again_and_starts_one_run(airflow):
    fake = airflow(["busy", "busy", "ok"])
    run = asyncio.run(actions.trigger("p_promote", {"version": "v1"}, "token", "promote"))
    assert fake.posts == 3 and list(fake.runs) == [run.run_id] and run.state == "queued"


def test_a_try_left_unanswered_that_made_the_run_is_found_not_made_again(airflow):
    fake = airflow(["slow", "ok"])
    run = asyncio.run(actions.trigger("p_rollback", {"version": "v1"}, "token", "rollback"))
    assert fake.posts == 1 and list(fake.runs) == [run.run_id]


def test_airflow_busy_on_every_try_is_an_error_saying_what_to_check(airflow, monkeypatch):
    monkeypatch.setattr(actions, "TRIGGER_TRIES", 2)
    fake = airflow(["busy"])
    with pytest.raises(actions.ActionError, match="did not answer .* in 2 tries; is \\[api\\] base_url"):
        asyncio.run(actions.trigger("p_promote", {}, "token", "promote"))
    assert fake.posts == 2 and not fake.runs
