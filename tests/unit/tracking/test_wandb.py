"""W&B tracking: connection settings, offline fallback, what offline runs hold, the extra link.

Real wandb, no network: "online" runs point at closed ports or a tiny fake server on 127.0.0.1.
Offline run files are read back with wandb's own reader (``wandb leet inspect --json``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote_plus, unquote_plus

import pytest

from freestack.errors import FreestackError
from freestack.hooks.wandb import WandbHook
from freestack.tracking import WandbSettings, start_run, wandb_root
from freestack.tracking import wandb as tw
from tests.fakes.wandb_api import BADKEY, GOODKEY, fake_wandb_host

CONN_JSON = {"conn_type": "wandb", "password": "KEY", "host": "http://127.0.0.1:9", "extra": {"project": "p"}}


@pytest.fixture
def wandb_env(tmp_path, monkeypatch) -> Path:
    """Every wandb folder under tmp_path; no key, URL, mode or connection from the outside."""
    root = tmp_path / "wandb-root"
    monkeypatch.setenv("WANDB_DIR", str(root))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    for var in [v for v in os.environ if v.startswith("AIRFLOW_CONN_WANDB")]:
        monkeypatch.delenv(var)
    return root


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_conn(monkeypatch, conn_id: str = "wandb_default", **overrides) -> None:
    conn = {**CONN_JSON, **overrides}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def inspect_records(run_dir: str) -> list[dict]:
    """The records of a run's .wandb transaction log, decoded by wandb itself."""
    proc = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", run_dir],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


# ---------------------------------------------------------------------------------------------------------
# settings


def test_settings_from_env_connection(wandb_env, monkeypatch):
    set_conn(monkeypatch)
    s = WandbHook().settings()
    assert s == WandbSettings(mode="online", api_key="KEY", base_url="http://127.0.0.1:9", project="p")
    assert "KEY" not in repr(s)

    # WANDB_MODE disabled/offline applies when the connection names no mode
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert WandbHook().settings().mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbHook().settings().mode == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert WandbHook().settings().mode == "online"

    # the connection's mode wins over the environment
    monkeypatch.setenv("WANDB_MODE", "disabled")
    set_conn(monkeypatch, extra={"mode": "offline", "entity": "team"})
    s = WandbHook().settings()
    assert (s.mode, s.entity, s.project) == ("offline", "team", None)

    # no key: offline; a bare host gets https://
    monkeypatch.delenv("WANDB_MODE")
    set_conn(monkeypatch, password=None, host="wandb.example.com")
    s = WandbHook().settings()
    assert (s.mode, s.api_key, s.base_url) == ("offline", None, "https://wandb.example.com")

    set_conn(monkeypatch, extra={"mode": "sometimes"})
    with pytest.raises(FreestackError, match="sometimes"):
        WandbHook().settings()


def test_missing_connections(wandb_env, monkeypatch):
    s = WandbHook().settings()
    assert s == WandbSettings(mode="offline", api_key=None, base_url=tw.DEFAULT_BASE_URL)
    with pytest.raises(FreestackError, match="team_wandb.*was not found"):
        WandbHook("team_wandb").settings()


def test_ui_field_behaviour():
    ui = WandbHook.get_ui_field_behaviour()
    assert set(ui["hidden_fields"]) == {"schema", "port", "login"}
    assert ui["relabeling"] == {"password": "API key", "host": "Server URL (self-hosted, optional)"}
    assert (WandbHook.conn_type, WandbHook.default_conn_name, WandbHook.conn_name_attr) == (
        "wandb",
        "wandb_default",
        "wandb_conn_id",
    )


def test_default_root(wandb_env, monkeypatch, tmp_path):
    assert wandb_root() == wandb_env.resolve()
    monkeypatch.delenv("WANDB_DIR")
    monkeypatch.setenv("FREESTACK_HOME", str(tmp_path / "home"))
    assert wandb_root() == (tmp_path / "home" / ".freestack" / "wandb").resolve()


# ---------------------------------------------------------------------------------------------------------
# test_connection against a fake server on 127.0.0.1


@pytest.fixture
def fake_server():
    with fake_wandb_host() as url:
        yield url


def test_connection_checks(wandb_env, monkeypatch, fake_server):
    set_conn(monkeypatch, host=fake_server, password=GOODKEY)
    ok, msg = WandbHook().test_connection()
    assert ok, msg
    assert "API key accepted" in msg

    set_conn(monkeypatch, host=fake_server, password=BADKEY)
    ok, msg = WandbHook().test_connection()
    assert not ok and f"rejected by {fake_server}" in msg

    set_conn(monkeypatch, host=f"http://127.0.0.1:{closed_port()}")
    ok, msg = WandbHook().test_connection()
    assert not ok and "not reachable" in msg

    set_conn(monkeypatch, extra={"mode": "offline"})
    ok, msg = WandbHook().test_connection()
    assert ok and "offline" in msg and "wandb sync" in msg


# ---------------------------------------------------------------------------------------------------------
# runs


def test_rejected_key_fails_at_once_with_what_to_do(wandb_env, monkeypatch, fake_server):
    """A server that answers and refuses the key: an error naming the connection, the server and the
    fix, at the hook (the first W&B task) and at start_run; never a quiet offline run."""
    from airflow.sdk.exceptions import AirflowFailException

    set_conn(monkeypatch, host=fake_server, password=BADKEY)
    settings = WandbHook().settings()
    assert settings.source == "connection 'wandb_default'"
    with pytest.raises(tw.WandbKeyRejected) as info:
        start_run(settings, project="p", name="n", config={}, tags=None)
    msg = str(info.value)
    assert msg.startswith(
        f"the W&B API key in connection 'wandb_default' was rejected by {fake_server} (HTTP 401"
    )
    assert 'set its mode to offline (extra {"mode": "offline"})' in msg
    with pytest.raises(AirflowFailException, match="rejected by"):
        WandbHook().checked_settings()
    assert not files_under(wandb_env)  # no offline run was started instead

    # without a connection: the environment's key, and the environment's fix
    env = WandbSettings(mode="online", api_key=BADKEY, base_url=fake_server)
    with pytest.raises(tw.WandbKeyRejected, match="fix WANDB_API_KEY or set WANDB_MODE=offline"):
        tw.verify_api_key(env)

    set_conn(monkeypatch, host=fake_server, password="short")
    with pytest.raises(AirflowFailException, match="is not a W&B API key .*40"):
        WandbHook().checked_settings()

    set_conn(monkeypatch, host=fake_server, password=GOODKEY)
    assert WandbHook().checked_settings().api_key == GOODKEY


class _Counting(BaseHTTPRequestHandler):
    seen: list[str] = []

    def log_message(self, *args):
        pass

    def _any(self):
        type(self).seen.append(f"{self.command} {self.path}")
        self.send_response(401)
        self.end_headers()

    do_GET = do_POST = do_PUT = _any


def test_offline_never_contacts_a_host(wandb_env, monkeypatch):
    """mode offline with a key and a host: the hook, a run and its finish send nothing anywhere."""
    _Counting.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        set_conn(monkeypatch, host=host, password=BADKEY, extra={"mode": "offline"})
        settings = WandbHook().checked_settings()
        assert settings.mode == "offline" and tw.verify_api_key(settings) is None
        with start_run(settings, project="p", name="n", config={"a": 1}, tags=None) as run:
            run.log({"loss": 1.0}, step=0)
        assert run.mode == "offline" and list(Path(run.run_dir).glob("*.wandb"))
        ok, msg = WandbHook().test_connection()
        assert ok and "no server is contacted" in msg
    finally:
        server.shutdown()
        server.server_close()
    assert _Counting.seen == []


def test_console_lines_are_logged_at_their_level(wandb_env, monkeypatch, caplog, capfd):
    """wandb's "wandb: ..." lines reach the freestack.wandb logger at their level, never stderr (which
    Airflow logs at ERROR); the run's folder and `wandb sync` are our own INFO line."""
    import wandb

    monkeypatch.delenv("WANDB_SILENT")
    with caplog.at_level(logging.INFO):
        with start_run(WandbSettings(mode="offline"), project="p", name="n", config={}, tags=None) as run:
            run.log({"loss": 1.0}, step=0)
            wandb.termwarn("a warning of wandb's")
            wandb.termlog("a line of wandb's")
    ours = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("freestack.")]
    assert ("WARNING", "wandb: WARNING a warning of wandb's") in ours
    assert ("INFO", "wandb: a line of wandb's") in ours
    assert any(level == "INFO" and f"upload it with: wandb sync {run.run_dir}" in m for level, m in ours)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "wandb:" not in capfd.readouterr().err


def test_unreachable_server_falls_back_offline(wandb_env, monkeypatch, caplog):
    set_conn(monkeypatch, host=f"http://127.0.0.1:{closed_port()}")
    settings = WandbHook().settings()
    assert settings.mode == "online"
    with caplog.at_level(logging.INFO, logger="freestack.tracking.wandb"):
        with start_run(settings, project="p", name="fallback", config={"a": 1}, tags=["t"]) as run:
            run.log({"loss": 0.5}, step=0)
    assert run.mode == "offline"
    assert run.url is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("recorded offline" in r.getMessage() for r in warnings)
    run_dir = Path(run.run_dir)
    assert run_dir.parent.parent == wandb_env.resolve()
    assert run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("*.wandb"))
    assert run.sync_command == f"wandb sync {run.run_dir}"


def test_failing_init_falls_back_offline(wandb_env, monkeypatch, caplog):
    """The server seems reachable but wandb.init cannot finish: still offline, still no error."""
    monkeypatch.setattr(tw, "verify_api_key", lambda settings: None)
    monkeypatch.setattr(tw, "INIT_TIMEOUT_S", 2.0)
    settings = WandbSettings(mode="online", api_key="k" * 40, base_url=f"http://127.0.0.1:{closed_port()}")
    with caplog.at_level(logging.WARNING, logger="freestack.tracking.wandb"):
        run = start_run(settings, project="p", name="n", config={}, tags=None)
    run.finish()
    assert run.mode == "offline"
    assert any("wandb.init failed" in r.getMessage() for r in caplog.records)
    assert list(Path(run.run_dir).glob("*.wandb"))


def test_offline_run_records_config_metrics_and_artifacts(wandb_env, tmp_path):
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    settings = WandbSettings(mode="offline", entity="team")
    run = start_run(
        settings,
        project="proj",
        name="trial-1",
        config={"lr": 0.01, "layers": [8, 4]},
        tags=["nightly"],
        group="sweep-1",
        run_dir=tmp_path / "elsewhere",
    )
    for step in range(3):
        run.log({"loss": 1.0 / (step + 1), "acc": 0.5 + step / 10}, step=step)
    run.summary_update({"best_loss": 1 / 3})
    run.log_artifact_reference("model v1", "model", model.as_uri(), {"version": 1})
    run.log_artifact_reference("model-data", "model", "data://.my/models/m1", {"version": 2})
    run.finish()

    d = run.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["mode"] == "offline" and d["url"] is None and d["project"] == "proj" and d["entity"] == "team"
    assert Path(d["run_dir"]).parent.parent == (tmp_path / "elsewhere").resolve()

    records = inspect_records(d["run_dir"])
    by_type: dict[str, list[dict]] = {}
    for rec in records:
        by_type.setdefault(rec["type"], []).append(rec[rec["type"]])

    (run_rec,) = by_type["run"]
    assert run_rec["run_id"] == run.id
    assert run_rec["project"] == "proj" and run_rec["display_name"] == "trial-1"
    assert run_rec["tags"] == ["nightly"] and run_rec["run_group"] == "sweep-1"
    assert run_rec["job_type"] == "train"
    config = run_rec["config"]["update"]
    assert config["lr"] == 0.01 and config["layers"] == [8, 4]

    history = sorted(by_type["history"], key=lambda h: int(h["step"]["num"]))
    assert [int(h["step"]["num"]) for h in history] == [0, 1, 2]
    assert [h["item"]["loss"] for h in history] == pytest.approx([1.0, 0.5, 1 / 3])
    assert [h["item"]["acc"] for h in history] == pytest.approx([0.5, 0.6, 0.7])
    assert any(s["update"].get("best_loss") == pytest.approx(1 / 3) for s in by_type["summary"])
    assert "environment" in by_type  # system info is collected
    assert by_type["exit"][0].get("exit_code", 0) == 0

    arts = {a["name"]: a for a in by_type["artifact"]}
    ref = arts["model-v1"]
    assert ref["type"] == "model"
    assert json.loads(ref["metadata"]) == {"version": 1, "uri": model.as_uri()}
    assert [e["ref"] for e in ref["manifest"]["contents"]] == [model.as_uri()]
    other = arts["model-data"]
    assert json.loads(other["metadata"])["uri"] == "data://.my/models/m1"
    (entry,) = other["manifest"]["contents"]
    assert entry["path"] == "reference.json"
    assert json.loads(Path(entry["local_path"]).read_text())["uri"] == "data://.my/models/m1"
    assert Path(d["run_dir"]) in Path(entry["local_path"]).parents


def test_context_manager_marks_failure(wandb_env):
    with pytest.raises(RuntimeError):
        with start_run(WandbSettings(mode="offline"), project="p", name="boom", config={}, tags=None) as run:
            run.log({"loss": 1.0}, step=0)
            raise RuntimeError("training broke")
    exits = [r["exit"] for r in inspect_records(run.run_dir) if r["type"] == "exit"]
    assert exits and exits[-1]["exit_code"] == 1


def test_tracking_trouble_never_raises(wandb_env, caplog):
    run = start_run(WandbSettings(mode="offline"), project="p", name="n", config={}, tags=None)
    run.finish()
    run.finish()  # twice is fine
    with caplog.at_level(logging.WARNING, logger="freestack.tracking.wandb"):
        run.log({"loss": 1.0}, step=1)  # wandb refuses: the run is finished
        run.summary_update({"best": 1.0})
    assert any("could not log step 1" in r.getMessage() for r in caplog.records)


def test_disabled_writes_nothing(wandb_env, tmp_path):
    before = set(files_under(tmp_path))
    with start_run(
        WandbSettings(mode="disabled"),
        project="p",
        name="n",
        config={"a": 1},
        tags=["t"],
        run_dir=tmp_path / "x",
    ) as run:
        run.log({"loss": 1.0}, step=0)
        run.summary_update({"best": 1.0})
        assert run.log_artifact_reference("m", "model", "data://.my/m", {}) is None
    assert run.as_dict() == {
        "mode": "disabled",
        "id": run.id,
        "url": None,
        "run_dir": None,
        "sync_command": None,
        "project": "p",
        "entity": None,
    }
    assert set(files_under(tmp_path)) == before
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------
# the extra link and the offline page


def test_link_urls():
    from freestack.operator_links import wandb_link

    online = {"mode": "online", "url": "https://wandb.ai/team/p/runs/abc", "run_dir": "/x"}
    assert wandb_link(online) == "https://wandb.ai/team/p/runs/abc"
    assert wandb_link({"mode": "online", "url": "javascript:alert(1)"}) == ""
    offline = {"mode": "offline", "url": None, "run_dir": "/data/wandb/offline-run-1 x&y"}
    assert (
        wandb_link(offline, base_url="http://airflow.example:8080/")
        == "http://airflow.example:8080/freestack/wandb/offline?run_dir=%2Fdata%2Fwandb%2Foffline-run-1+x%26y"
    )
    assert wandb_link(offline).endswith(
        "/freestack/wandb/offline?run_dir=%2Fdata%2Fwandb%2Foffline-run-1+x%26y"
    )
    assert wandb_link({"mode": "disabled"}) == ""
    assert wandb_link(None) == ""


def test_operator_link_reads_the_xcom(monkeypatch):
    from airflow.sdk.execution_time import xcom

    from freestack.operator_links import WandbRunLink

    seen = {}

    def get_value(*, ti_key, key):
        seen.update(ti_key=ti_key, key=key)
        return {"mode": "online", "url": "https://wandb.ai/t/p/runs/r1"}

    monkeypatch.setattr(xcom.XCom, "get_value", staticmethod(get_value))
    link = WandbRunLink()
    assert link.name == "W&B run"
    assert link.xcom_key == "_link_WandbRunLink"
    assert link.get_link(object(), ti_key="TIKEY") == "https://wandb.ai/t/p/runs/r1"
    assert seen == {"ti_key": "TIKEY", "key": "wandb"}

    def broken(*, ti_key, key):
        raise RuntimeError("no supervisor")

    monkeypatch.setattr(xcom.XCom, "get_value", staticmethod(broken))
    assert link.get_link(object(), ti_key="TIKEY") == ""


def _logged_in(client):
    """The client as a logged-in user: the login check itself (Airflow's auth manager) is tested against
    the real API server (tests/ui, tests/e2e/test_wandb_ui.py); here the pages' content is."""
    from freestack.ui.auth import current_user

    client.app.dependency_overrides[current_user] = lambda: "tester"
    return client


@pytest.fixture(autouse=True)
def _no_overrides():
    from freestack.ui.wandb_pages import wandb_app

    yield
    wandb_app.dependency_overrides.clear()


def test_offline_page(wandb_env, tmp_path):
    from fastapi.testclient import TestClient

    from freestack.ui.wandb_pages import wandb_app

    run_dir = wandb_env / "wandb" / "offline-run-1<script>alert('x')</script>&"
    run_dir.mkdir(parents=True)
    (run_dir / "run-abc.wandb").write_bytes(b"x" * 10)
    assert TestClient(wandb_app).get("/offline", params={"run_dir": str(run_dir)}).status_code == 401
    client = _logged_in(TestClient(wandb_app))

    r = client.get("/offline", params={"run_dir": str(run_dir)})
    assert r.status_code == 200, r.text
    assert "<script>" not in r.text
    assert "offline-run-1&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;" in r.text
    assert "wandb sync " in r.text and "run-abc.wandb" in r.text
    assert "could not be read" in r.text  # ten bytes are no transaction log: wandb says so, the page goes on
    assert r.headers["content-security-policy"].startswith("default-src 'none'")

    outside = tmp_path / "outside"
    outside.mkdir()
    (wandb_env / "link").symlink_to(outside)
    for bad in (
        str(outside),
        str(wandb_env / ".." / "outside"),
        str(wandb_env / "link"),
        str(wandb_env),
        "wandb/offline-run-1",
        "/etc/<b>passwd</b>",
    ):
        r = client.get("/offline", params={"run_dir": bad})
        assert r.status_code == 400, bad
        assert "<b>" not in r.text
        assert "not inside" in r.text or "absolute" in r.text


def test_offline_pages_show_summary_config_and_sync(wandb_env):
    """A real offline run: its page has the summary metrics and config wandb reads from the log, and
    the list of runs links to it with freestack's card (name, job, tags)."""
    from fastapi.testclient import TestClient

    from freestack.tracking import offline
    from freestack.ui.wandb_pages import wandb_app

    settings = WandbSettings(mode="offline")
    with start_run(
        settings,
        project="proj",
        name="digits-v1",
        config={"train": {"lr": 0.003}, "rows": 64},
        tags=["pipeline:digits"],
        job_type="train",
    ) as run:
        run.log({"val_accuracy": 0.5}, step=0)
        run.summary_update({"test_accuracy": 0.987654321})
    client = _logged_in(TestClient(wandb_app))
    page = client.get("/offline", params={"run_dir": run.run_dir})
    assert page.status_code == 200, page.text
    text = page.text
    assert "<title>W&amp;B offline run digits-v1</title>" in text
    assert '<td>test_accuracy</td><td class="num">0.987654</td>' in text
    assert '<td>val_accuracy</td><td class="num">0.5</td>' in text
    assert "<td>train.lr</td><td>0.003</td>" in text and "<td>rows</td><td>64</td>" in text
    assert f'<pre id="sync">wandb sync {run.run_dir}</pre>' in text
    assert "pipeline:digits" in text and "finished (exit code 0)" in text

    listing = client.get("/").text
    assert "digits-v1</a>" in listing and "<td>train</td>" in listing and "pipeline:digits" in listing
    assert f'href="offline?run_dir={quote_plus(run.run_dir)}"' in listing
    # wandb sync leaves a marker beside the log: the list and the page say it is uploaded
    log_file = offline.logs_of(Path(run.run_dir))[0]
    log_file.with_name(log_file.name + ".synced").write_text("")
    assert "<td>yes</td>" in client.get("/").text
    assert "Uploaded already" in client.get("/offline", params={"run_dir": run.run_dir}).text


_LINK_DAG = """
from airflow.sdk import DAG, BaseOperator

from freestack.operator_links import WandbRunLink
from freestack.tracking import WandbSettings, start_run


class TrainOp(BaseOperator):
    operator_extra_links = (WandbRunLink(),)

    def execute(self, context):
        with start_run(WandbSettings(mode="offline"), project="p", name="n", config={"a": 1}, tags=None) as run:
            run.log({"loss": 1.0}, step=0)
        context["ti"].xcom_push(key="wandb", value=run.as_dict())


with DAG("wandb_link_dag", schedule=None) as dag:
    TrainOp(task_id="train")
"""

_LINK_CHECK = """
import json, sys
sys.path.insert(0, sys.argv[1])
from sqlalchemy import select
from airflow.models.serialized_dag import SerializedDagModel
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from wandb_link_dag import dag

run = dag.test()
with create_session() as s:
    task = SerializedDagModel.get_dag("wandb_link_dag", session=s).get_task("train")
    ti = s.scalar(select(TaskInstance).where(TaskInstance.dag_id == "wandb_link_dag"))
    out = {"state": str(run.state), "links": list(task.extra_links), "link": task.get_extra_links(ti, "W&B run")}
print("RESULT " + json.dumps(out))
"""


def test_link_through_a_real_task_run(wandb_env, tmp_path):
    """Airflow 3 computes the link in the task process (finalize) and the API server reads it back."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "wandb_link_dag.py").write_text(_LINK_DAG)
    plugins = Path(__file__).resolve().parents[3] / "plugins"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
        "AIRFLOW__API__BASE_URL": "http://airflow.example:8080",
        "PYTHONPATH": os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]),
    }
    (tmp_path / "airflow").mkdir()
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=env, timeout=120)
    proc = subprocess.run(
        [sys.executable, "-c", _LINK_CHECK, str(dags)], capture_output=True, text=True, env=env, timeout=120
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["state"].endswith("success")
    assert result["links"] == ["W&B run"]
    prefix = "http://airflow.example:8080/freestack/wandb/offline?run_dir="
    assert result["link"].startswith(prefix)
    run_dir = Path(unquote_plus(result["link"].removeprefix(prefix)))
    assert run_dir.parent.parent == wandb_env.resolve() and list(run_dir.glob("*.wandb"))
