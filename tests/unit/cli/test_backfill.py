"""``freestack backfill`` against a stand-in for Airflow's REST API (the endpoints it calls, as Airflow 3.3
answers them): login, pausing, dry run, create, the runs finishing one per poll, failures, refusals."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import airflow  # noqa: F401  (Airflow sets up logging when imported: here, not on a test's captured output)
import pytest

from freestack.cli import backfill as backfill_cli
from freestack.cli import main

PASSWORD = "s3cret"
PAGE_CAP = 2  # runs per page at most (Airflow's maximum_page_limit, 100 by default): the CLI must page


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FakeAirflow:
    """The state behind the fake API: one DAG, its runs, at most one backfill."""

    def __init__(
        self,
        days: list[str],
        *,
        paused: bool = False,
        fail: set[str] = frozenset(),
        existing: int = 0,
        locked: int = 0,
        next_run: str | None = None,
        slow_health: float = 0.0,
        train_paused: bool | None = None,
        close_polls: int = 0,
    ):
        self.days, self.paused, self.fail = days, paused, fail
        # digits_train, scheduled on the lake asset digits_ingest updates: paused or not (None: no such DAG)
        self.train_paused, self.train_pauses = train_paused, []
        self.slow_health = slow_health  # seconds the health check takes (SQLite locked by the scheduler)
        self.next_run = (
            next_run  # the interval the scheduler would start on unpause (due: its end has passed)
        )
        self.pauses: list[bool] = []  # every PATCH of is_paused, in order
        self.locked = locked  # creates answered 503 (SQLite locked by the scheduler) before one succeeds
        self.existing = existing  # days that already have a run (the dry run leaves them out)
        self.backfill: dict | None = None  # the latest one
        # the scheduler's lag: the DAG's backfill list shows a backfill whose runs ended still open this often
        self.close_lag, self.close_polls = close_polls, 0
        self.created: list[dict] = []  # every backfill created
        self.runs: list[dict] = []
        self.calls: list[tuple[str, str, dict | None]] = []

    def handle(self, method: str, path: str, body: dict | None, auth: str | None) -> tuple[int, dict]:
        self.calls.append((method, path, body))
        url = urlparse(path)
        if url.path == "/api/v2/monitor/health":
            time.sleep(self.slow_health)
            return 200, {"metadatabase": {"status": "healthy"}}
        if url.path == "/auth/token":
            ok = body == {"username": "admin", "password": PASSWORD}
            return (201, {"access_token": "jwt"}) if ok else (401, {"detail": "Invalid credentials"})
        if auth != "Bearer jwt":
            return 401, {"detail": "Not authenticated"}
        return self._api(method, url.path.removeprefix("/api/v2"), parse_qs(url.query), body)

    def _api(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        if path == "/dags/digits_ingest" and method == "GET":
            nxt = {
                "next_dagrun_logical_date": f"{self.next_run}T00:00:00Z",
                "next_dagrun_run_after": "2026-01-01T00:00:00Z",
            }
            return 200, {
                "dag_id": "digits_ingest",
                "is_paused": self.paused,
                **(nxt if self.next_run else {}),
            }
        if path == "/dags/digits_ingest" and method == "PATCH":
            assert query == {"update_mask": ["is_paused"]}
            self.paused = body["is_paused"]
            self.pauses.append(self.paused)
            return 200, {"dag_id": "digits_ingest", "is_paused": self.paused}
        if path == "/dags/digits_train" and self.train_paused is not None:
            if method == "PATCH":
                self.train_paused = body["is_paused"]
                self.train_pauses.append(self.train_paused)
            return 200, {"dag_id": "digits_train", "is_paused": self.train_paused}
        if path == "/assets" and method == "GET":
            assert query["dag_ids"] == ["digits_ingest"]
            consumers = (
                []
                if self.train_paused is None
                else [{"dag_id": "digits_train", "created_at": _now(), "updated_at": _now()}]
            )
            lake = {
                "id": 1,
                "name": "digits_lake",
                "uri": "freestack://lake/digits",
                "group": "freestack",
                "scheduled_dags": consumers,
                "consuming_tasks": [],
                "producing_tasks": [{"dag_id": "digits_ingest", "task_id": "ingest"}],
            }
            return 200, {"assets": [lake], "total_entries": 1}
        if path.startswith("/dags/") and method in ("GET", "PATCH") and "/dagRuns" not in path:
            return 404, {"detail": f"The Dag with ID: `{path.split('/')[2]}` was not found"}
        if path == "/backfills/dry_run":
            return 200, {
                "backfills": [{"logical_date": f"{d}T00:00:00Z"} for d in self.days[self.existing :]],
                "total_entries": len(self.days) - self.existing,
            }
        if path == "/backfills" and method == "POST":
            return self._create(body)
        if path == "/backfills" and method == "GET":  # the DAG's backfills, the latest first (order_by=-id)
            assert query["dag_id"] == ["digits_ingest"] and query["order_by"] == ["-id"]
            listed = self._backfill() if self.backfill else None
            if listed and listed["completed_at"] and self.close_polls:
                self.close_polls -= 1
                listed["completed_at"] = None
            return 200, {
                "backfills": [listed] if listed else [],
                "total_entries": len(self.created),
            }
        if self.backfill and path == f"/backfills/{self.backfill['id']}":
            return 200, self._backfill()
        if path == "/dags/digits_ingest/dagRuns" and "state" in query:  # the runs a backfill has to go
            assert query["run_type"] == ["backfill"]
            left = [r for r in self.runs if r["state"] in query["state"]]
            return 200, {"dag_runs": left[:1], "total_entries": len(left)}
        if path == "/dags/digits_ingest/dagRuns":
            self._advance()
            first, last = query["logical_date_gte"][0], query["logical_date_lte"][0]
            runs = [r for r in self.runs if first <= r["logical_date"] <= last]
            offset, limit = (
                int(query.get("offset", ["0"])[0]),
                min(int(query["limit"][0]), PAGE_CAP),
            )  # Airflow caps pages
            return 200, {"dag_runs": runs[offset : offset + limit], "total_entries": len(runs)}
        return 404, {"detail": f"no route {method} {path}"}

    def _create(self, body: dict) -> tuple[int, dict]:
        if self.locked:
            self.locked -= 1
            if self.locked % 2:  # what the API server answers when the lock is met inside the request
                return 500, {"detail": "Database error"}
            return 503, {
                "detail": "Database is locked. Backfill creation is not supported on SQLite under concurrent access."
            }
        if self.backfill is not None and (not self._done() or self.close_polls):
            return 409, {"detail": "There is already a running backfill for dag digits_ingest"}
        self.backfill = {
            "id": len(self.created) + 1,
            "dag_id": body["dag_id"],
            "from_date": body["from_date"],
            "to_date": body["to_date"],
            "created_at": _now(),
            "completed_at": None,
            "reprocess_behavior": body["reprocess_behavior"],
        }
        self.created.append(body)
        self.close_polls = self.close_lag
        self.runs += [
            {
                # as Airflow 3 names a run: after its run_after, the end of its daily interval
                "dag_run_id": f"backfill__{date.fromisoformat(d) + timedelta(days=1)}T00:00:00+00:00",
                "logical_date": f"{d}T00:00:00Z",
                "state": "queued",
                "end_date": None,
                "duration": None,
            }
            for d in self.days[self.existing :]
            if body["from_date"][:10] <= d <= body["to_date"][:10]
        ]
        return 200, self.backfill

    def _backfill(self) -> dict:
        """The latest backfill, completed once its runs are (no scheduler loop to wait for here)."""
        return {**self.backfill, "completed_at": _now() if self._done() else None}

    def _done(self) -> bool:
        return all(r["state"] in ("success", "failed") for r in self.runs)

    def _advance(self) -> None:
        """Each poll finishes one more run (a failure for the days in ``fail``)."""
        for r in self.runs:
            if r["state"] == "queued":
                r.update(
                    state="failed" if r["logical_date"][:10] in self.fail else "success",
                    end_date=_now(),
                    duration=1.5,
                )
                return


def land(storage: str, days: list[str]) -> None:
    """One landing file for each of ``days`` (the digits spec's layout: landing/digits/<ds>/)."""
    from pathlib import Path
    from urllib.parse import urlparse

    for d in days:
        folder = Path(urlparse(storage).path) / "landing" / "digits" / d
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "digits.csv").write_text("id\n")


@pytest.fixture
def fake_airflow(tmp_path, monkeypatch, storage):
    state: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            code, answer = state["api"].handle(method, self.path, body, self.headers.get("Authorization"))
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def do_PATCH(self):  # noqa: N802
            self._serve("PATCH")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    home = tmp_path / "airflow"
    home.mkdir()
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": PASSWORD}))
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(backfill_cli, "POLL_SECONDS", 0.01)

    def start(days: list[str], *, landed: list[str] | None = None, **kw) -> FakeAirflow:
        land(storage, days if landed is None else landed)
        state["api"] = FakeAirflow(days, **kw)
        return state["api"]

    yield start
    server.shutdown()
    server.server_close()


DAYS = [f"2026-11-0{d}" for d in range(1, 6)]
ARGV = ["backfill", "digits", "--start", DAYS[0], "--end", DAYS[-1]]


def test_backfill_runs_every_day_and_prints_a_line_per_run(fake_airflow, capsys):
    api = fake_airflow(DAYS)
    assert main([*ARGV, "--reprocess", "completed"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert (
        lines[0] == "digits_ingest (unpaused): 5 days from 2026-11-01 to 2026-11-05, 5 to run"
    )  # the plan first
    assert lines[6].startswith("backfill 1 of digits_ingest: 5 runs, 2026-11-01 to 2026-11-05")
    assert [ln.split(":")[0] for ln in lines[7:12]] == [f"digits_ingest {d}" for d in DAYS]
    assert (
        all("success" in ln for ln in lines[7:12])
        and lines[-1] == "backfill 1 of digits_ingest: 5 runs succeeded"
    )
    assert "\x1b[" not in out  # no progress bar when stdout is not a terminal
    created = next(b for m, p, b in api.calls if m == "POST" and p == "/api/v2/backfills")
    assert created == {
        "dag_id": "digits_ingest",
        "from_date": "2026-11-01T00:00:00Z",
        "to_date": "2026-11-05T00:00:00Z",
        "reprocess_behavior": "completed",
    }


def test_a_locked_database_is_waited_out_then_reported(fake_airflow, monkeypatch, capsys):
    monkeypatch.setattr(backfill_cli, "BUSY_RETRIES", (0.01, 0.01, 0.01, 0.01, 0.01))
    api = fake_airflow(DAYS, locked=4)  # 500 "Database error" and 503, twice each
    assert main(ARGV) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "backfill 1 of digits_ingest: 5 runs succeeded"
    assert sum(1 for m, p, _ in api.calls if m == "POST" and p == "/api/v2/backfills") == 5
    api = fake_airflow(DAYS, locked=6)  # locked through every try: one line, no backfill
    assert main(ARGV) == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "HTTP 503 Database is locked" in err
        and "try again" in err
        and api.backfill is None
    )


def test_a_slow_health_check_is_waited_for_not_taken_for_a_stopped_airflow(fake_airflow, capsys):
    """Right after a backfill the scheduler holds SQLite and the health check answers late (CI saw over 2 s):
    the next command waits for it instead of saying Airflow is not reachable."""
    fake_airflow(DAYS, slow_health=3.0)
    assert main(ARGV) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "backfill 1 of digits_ingest: 5 runs succeeded"


def test_a_stopped_airflow_is_one_line_that_says_how_to_start_it(fake_airflow, monkeypatch, capsys):
    import socket

    fake_airflow(DAYS)
    with socket.socket() as s:  # a port nothing listens on: the connection is refused at once
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{s.getsockname()[1]}")
    assert main(ARGV) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Airflow is not reachable" in err and "make up" in err, err


def test_failed_runs_are_one_error_line(fake_airflow, capsys):
    fake_airflow(DAYS, fail={"2026-11-03"})
    assert main(ARGV) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "error: 1 of 5 digits_ingest runs failed: 2026-11-03 (runs backfill__2026-11-04T00:00:00+00:00)"
    )
    assert "task logs" in err


def test_a_paused_dag_is_unpaused_for_the_backfill_only_and_the_plan_comes_first(fake_airflow, capsys):
    api = fake_airflow(DAYS, paused=True)
    assert main(ARGV) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "digits_ingest (paused: unpaused for the backfill, paused again after): 5 days"
    )
    assert all(ln.startswith(f"  {d}  run: 1 landing file") for ln, d in zip(lines[1:6], DAYS, strict=True))
    assert (
        lines[6] == "unpaused digits_ingest for the backfill"
        and lines[-2] == "paused digits_ingest again, as it was"
    )
    assert api.pauses == [False, True] and api.paused is True
    # the runs exist before the DAG is unpaused: the latest interval, if theirs, gets no scheduled run
    order = [
        (m, p)
        for m, p, _ in api.calls
        if m in ("POST", "PATCH") and p.startswith("/api/v2/") and "dry_run" not in p
    ]
    assert order[:2] == [
        ("POST", "/api/v2/backfills"),
        ("PATCH", "/api/v2/dags/digits_ingest?update_mask=is_paused"),
    ]
    api = fake_airflow(DAYS, paused=True, fail={"2026-11-02"})  # paused again after failed runs too
    assert main(ARGV) == 1 and api.paused is True


def test_days_without_landing_files_get_no_run(fake_airflow, capsys):
    api = fake_airflow(DAYS, landed=[d for d in DAYS if d != "2026-11-03"])
    assert main(ARGV) == 0
    out = capsys.readouterr().out
    assert "5 days from 2026-11-01 to 2026-11-05, 4 to run" in out.splitlines()[0]
    assert any(ln.startswith("  2026-11-03  left out: no landing files in ") for ln in out.splitlines())
    assert [(b["from_date"][:10], b["to_date"][:10]) for b in api.created] == [
        ("2026-11-01", "2026-11-02"),
        ("2026-11-04", "2026-11-05"),
    ]
    assert sorted(r["logical_date"][:10] for r in api.runs) == [d for d in DAYS if d != "2026-11-03"]
    assert out.splitlines()[-1] == "backfill of digits_ingest: 4 runs succeeded"
    # the first part's runs ended: the second waits while Airflow closes the first (one per DAG at a time)
    assert out.count("waiting for Airflow to close") == 0
    api = fake_airflow(DAYS, landed=[d for d in DAYS if d != "2026-11-03"], close_polls=3)
    assert main(ARGV) == 0
    out = capsys.readouterr().out
    assert "waiting for Airflow to close backfill 1 of digits_ingest (its runs ended)" in out
    assert len(api.created) == 2 and out.splitlines()[-1] == "backfill of digits_ingest: 4 runs succeeded"
    # paused, with its latest interval among them: that part first, so that it has its run when unpaused
    api = fake_airflow(DAYS, paused=True, next_run="2026-11-05", landed=[])
    assert main(ARGV) == 0 and api.paused is True
    assert [b["from_date"][:10] for b in api.created] == ["2026-11-04", "2026-11-01"]
    capsys.readouterr()
    api = fake_airflow(["2026-12-01", "2026-12-02"], landed=[])
    assert main(["backfill", "digits", "--start", "2026-12-01", "--end", "2026-12-02"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no landing files for any day of digits_ingest" in err and not api.created


def test_a_paused_dag_whose_latest_interval_has_no_data_is_left_paused(fake_airflow, capsys):
    """Unpausing would make the scheduler start the latest interval (catchup: false): not with no data."""
    api = fake_airflow(DAYS, paused=True, next_run="2026-11-22")
    assert main(ARGV) == 1
    got = capsys.readouterr()
    assert "unpausing lets the scheduler start its latest interval 2026-11-22 too" in got.out
    assert got.err.count("\n") == 1 and got.err.startswith("error: digits_ingest is paused")
    assert "2026-11-22" in got.err and "no landing files" in got.err and "fail (on_missing: fail)" in got.err
    assert "--unpause" in got.err and not api.created and api.pauses == []
    # its latest interval is one of the days backfilled, and has data: its backfill run comes first
    api = fake_airflow(DAYS, paused=True, next_run="2026-11-05")
    assert main(ARGV) == 0 and api.paused is True
    # --unpause: the schedule may start; the DAG stays unpaused
    api = fake_airflow(DAYS, paused=True, next_run="2026-11-22")
    assert main([*ARGV, "--unpause"]) == 0 and api.pauses == [False] and api.paused is False


def _existing(api, states: list[str]) -> None:
    """Runs of the first days, in ``states``, that the dry run leaves out."""
    api.runs = [
        {"dag_run_id": f"r{i}", "logical_date": f"{d}T00:00:00Z", "state": st}
        for i, (d, st) in enumerate(zip(DAYS, states, strict=True))
    ]


@pytest.mark.parametrize(
    ("states", "flags", "advice"),
    [
        (["failed"] * 5, [], "pass --reprocess failed to run the 5 failed runs again"),
        (
            ["failed", "success", "success", "success", "success"],
            [],
            "pass --reprocess failed to run the 1 failed run again, or --reprocess completed to run the 4 succeeded runs again too",
        ),
        (["success"] * 5, [], "pass --reprocess completed to run the 5 succeeded runs again"),
        (
            ["success"] * 4 + ["running"],
            ["--reprocess", "failed"],
            "pass --reprocess completed to run the 4 succeeded runs again (not the 1 run still queued or running)",
        ),
        (["running"] * 5, ["--reprocess", "completed"], "5 runs still queued or running: wait for them"),
    ],
)
def test_nothing_to_backfill_advises_the_reprocess_behaviour_the_runs_states_need(
    fake_airflow, capsys, states, flags, advice
):
    """Days whose runs failed need --reprocess failed, not completed (which would rerun the good ones too)."""
    _existing(fake_airflow(DAYS, existing=5), states)
    assert main([*ARGV, *flags]) == 1
    err = capsys.readouterr().err
    assert "nothing to backfill" in err and advice in err, err


def test_nothing_to_do_and_refusals_are_one_line(fake_airflow, capsys):
    _existing(fake_airflow(DAYS, existing=5), ["success"] * 5)
    assert main(ARGV) == 1
    assert "nothing to backfill" in (err := capsys.readouterr().err) and "--reprocess completed" in err
    api = fake_airflow(DAYS)
    api.backfill, api.runs = (
        {"id": 9},
        [{"state": "running", "logical_date": ""}],
    )  # another backfill is running
    assert main(ARGV) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "backfill 9 of digits_ingest is still running (1 run to go)" in err
    assert "one backfill per DAG at a time" in err and "/dags/digits_ingest" in err
    assert main([*ARGV, "--dag", "train"]) == 1
    assert "no DAG 'digits_train'" in capsys.readouterr().err


def test_wrong_password_is_one_line(fake_airflow, tmp_path, capsys):
    fake_airflow(DAYS)
    (tmp_path / "airflow" / "simple_auth_manager_passwords.json.generated").write_text(
        json.dumps({"admin": "old"})
    )
    assert main(ARGV) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HTTP 401" in err and "Traceback" not in err


def test_the_plan_says_an_unpaused_train_dag_retrains_and_no_downstream_holds_it(fake_airflow, capsys):
    api = fake_airflow(DAYS, train_paused=False)
    assert main([*ARGV, "--dry-run"]) == 0
    out = capsys.readouterr().out
    said = next(ln for ln in out.splitlines() if ln.startswith("the 5 runs update digits_lake"))
    assert (
        "digits_train is scheduled (unpaused): each update it sees starts a digits_train run (up to 5)"
        in said
    )
    assert (
        "a random sweep of 8 trials, then the gate, which may promote a new production model and redeploy it"
        in said
    )
    assert "pass --no-downstream" in said and "freestack airflow dags pause digits_train" in said
    assert (
        out.splitlines()[-1] == "dry run: nothing was created" and not api.created and api.train_pauses == []
    )
    # --no-downstream: paused before the runs exist, unpaused after they all finished
    assert main([*ARGV, "--no-downstream"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("--no-downstream pauses it for the backfill and unpauses it at the end" in ln for ln in lines)
    assert "paused digits_train for the backfill (--no-downstream)" in lines
    assert lines[-2:] == [
        "unpaused digits_train again, as it was",
        "backfill 1 of digits_ingest: 5 runs succeeded",
    ]
    assert api.train_pauses == [True, False] and api.train_paused is False
    writes = [
        (m, p.split("?")[0])
        for m, p, _ in api.calls
        if m in ("POST", "PATCH") and "/api/" in p and "dry_run" not in p
    ]
    assert writes == [
        ("PATCH", "/api/v2/dags/digits_train"),
        ("POST", "/api/v2/backfills"),
        ("PATCH", "/api/v2/dags/digits_train"),
    ]
    api = fake_airflow(DAYS, train_paused=False, fail={"2026-11-02"})  # unpaused again after failed runs too
    assert main([*ARGV, "--no-downstream"]) == 1 and api.train_pauses == [True, False]


def test_the_plan_says_a_paused_train_dag_does_not_train_and_how_to_start_it(fake_airflow, capsys):
    api = fake_airflow(DAYS, train_paused=True)
    assert main([*ARGV, "--no-downstream"]) == 0
    out = capsys.readouterr().out
    said = next(ln for ln in out.splitlines() if ln.startswith("the 5 runs update digits_lake"))
    assert "digits_train is scheduled (paused): they start no digits_train run" in said
    assert (
        "freestack airflow dags unpause digits_train" in said
        and "freestack airflow dags trigger digits_train" in said
    )
    assert api.train_pauses == [] and api.train_paused is True  # a paused DAG is left alone


def test_a_refused_latest_interval_names_every_way_out(fake_airflow, storage, tmp_path, monkeypatch, capsys):
    fake_airflow(DAYS, paused=True, next_run="2026-11-22")
    assert main(ARGV) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "that run would fail (on_missing: fail)" in err
    for way in (
        "land 2026-11-22's files first",
        "--end 2026-11-22",
        "on_missing to skip",
        "or wait",
        "digits.yaml",
        "--unpause",
        "once the files have landed",
    ):
        assert way in err, (way, err)
    # on_missing: skip: that run would be skipped, no harm done: the plan says so and the backfill runs
    from pathlib import Path

    folder = tmp_path / "pipelines"
    folder.mkdir()
    spec = (Path(__file__).resolve().parents[3] / "include" / "pipelines" / "digits.yaml").read_text()
    (folder / "digits.yaml").write_text(spec.replace("on_missing: fail", "on_missing: skip"))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(folder))
    api = fake_airflow(DAYS, paused=True, next_run="2026-11-22")
    assert main(ARGV) == 0
    assert "so that run would be skipped (on_missing: skip)" in capsys.readouterr().out
    assert api.pauses == [False, True]


def test_counts_of_one_are_singular(fake_airflow, capsys):
    fake_airflow(DAYS[:1])
    assert main(["backfill", "digits", "--start", DAYS[0], "--end", DAYS[0]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "digits_ingest (unpaused): 1 day from 2026-11-01 to 2026-11-01, 1 to run"
    assert lines[1].endswith("run: 1 landing file") and lines[2].startswith(
        "backfill 1 of digits_ingest: 1 run, "
    )
    assert lines[-1] == "backfill 1 of digits_ingest: 1 run succeeded"
