"""A local deployment keeps one address across redeploys and rollbacks, against real model servers
(Seldon's app from .venv-serving) and a real address holder: a load loop running through a blue/green
switch sees no failed request; the holder's failures and a port taken by another program give clear
errors; a stopped server logs no traceback; ``serving_processes`` finds what a deployment runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from freestack.errors import DeployError
from freestack.serving.launch import serving_dir
from freestack.serving.local import deploy_local, describe, stop_local
from freestack.serving.processes import (
    free_port_block,
    is_holder,
    port_free,
    serving_processes,
    stop_serving_processes,
)
from freestack.serving.records import Deployments
from freestack.serving.smoke import http_json
from freestack.serving.spec import LocalTarget
from tests.support.serving import LoadLoop, make_version, needs_serving_env

N_FEATURES = 8
KEEP_MODEL_SERVERS = True  # the tests below walk one deployment through its versions (see conftest)

pytestmark = needs_serving_env


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    """Versions v1 and v2 of model 'addr'; v1 deployed on a port block of its own."""
    work = tmp_path_factory.mktemp("address")
    root = (work / "storage").as_uri()
    uris = {v: make_version(root, "addr", v, work, seed=i) for i, v in enumerate(("v1", "v2"), start=1)}
    uris["vbad"] = make_version(root, "addr", "vbad", work, seed=9, broken=True)
    local = LocalTarget(
        port=free_port_block(), workers=2, smoke_rows=8, log_sample_rate=0.0, start_timeout_seconds=90
    )
    rec = deploy_local(
        root_uri=root, model="addr", name="addr", version="v1", version_uri=uris["v1"], local=local
    )
    yield {"root": root, "uris": uris, "local": local, "first": rec}
    try:
        stop_local(root, "addr", "addr")
    except DeployError:
        pass
    stop_serving_processes(serving_dir() / "addr")


def _deploy(dep, version: str, reason: str | None = None, *, name: str = "addr", local=None) -> dict:
    return deploy_local(
        root_uri=dep["root"],
        model="addr",
        name=name,
        version=version,
        version_uri=dep["uris"][version],
        local=local or dep["local"],
        reason=reason,
    )


def _switch_under_load(
    dep, version: str, reason: str, *, name: str = "addr", local=None, threads: dict[str, int] | None = None
) -> tuple[dict, dict, dict]:
    """Redeploy ``version`` while the load loop runs: (record, figures during the redeploy, overall)."""
    before = Deployments(dep["root"], "addr").get(name)
    with LoadLoop("127.0.0.1", before["port"], [0.5] * N_FEATURES, threads=threads) as load:
        time.sleep(1.0)
        t0 = time.monotonic()
        rec = _deploy(dep, version, reason, name=name, local=local)
        t1 = time.monotonic()
        time.sleep(1.0)
        deadline = t1 + 10  # every style (the idle one pauses 2 s) has sent a request to the new version
        while time.monotonic() < deadline and not all(f["sent"] for f in load.figures(t1 + 0.05).values()):
            time.sleep(0.2)
    during, overall = load.figures(t0, t1), load.figures()
    after = load.figures(t1 + 0.05)
    # the switch itself: from the first answer of the new version to the last of the old one, +- 0.5 s
    first_new = min(r[1] for r in load.results if r[4] and r[3] == version)
    last_old = max(r[1] + r[2] for r in load.results if r[4] and r[3] == before["version"])
    switch = load.figures(first_new - 0.5, last_old + 0.5)
    print(
        f"\n{before['version']} -> {version} at {rec['url']}: redeploy {t1 - t0:.2f} s {rec['timings']}; both "
        f"versions answered for {max(0.0, last_old - first_new):.2f} s"
    )
    for style in load.threads:
        d, o, w = during[style], overall[style], switch[style]
        print(
            f"  {style:<9} redeploy: sent {d['sent']}, failed {d['failed']}, max {d['max_ms']} ms (p50 {d['p50_ms']}); "
            f"switch: sent {w['sent']}, failed {w['failed']}, max {w['max_ms']} ms (p50 {w['p50_ms']}); whole run: "
            f"sent {o['sent']}, failed {o['failed']}" + (f", errors {o['errors']}" if o["errors"] else "")
        )
    for style, f in overall.items():
        assert f["sent"] > 0 and f["failed"] == 0, (style, f)
        if style != "idle":  # a few requests only: they may all have reached one server
            assert f["versions"] == sorted({before["version"], version}), (style, f)  # both, in turn
        assert after[style]["versions"] == [version], (style, after[style])  # only the new one once switched
    return rec, during, overall


def test_redeploy_under_load_keeps_the_address_and_fails_no_request(dep):
    first = dep["first"]
    assert first["url"] == f"http://127.0.0.1:{dep['local'].port}" and first["color"] == "blue"
    assert first["server_port"] == dep["local"].port + 1 and is_holder(first["holder_pid"])
    rec, _, _ = _switch_under_load(dep, "v2", "redeploy under load")
    assert rec["version"] == "v2" and rec["color"] == "green" and rec["server_port"] == dep["local"].port + 2
    assert (rec["url"], rec["port"], rec["holder_pid"]) == (first["url"], first["port"], first["holder_pid"])
    assert not describe(first)["alive"] and describe(rec)["health"] == "ok"


def test_rollback_under_load_keeps_the_address(dep):
    before = Deployments(dep["root"], "addr").get("addr")
    rec, _, _ = _switch_under_load(dep, "v1", "rollback")
    assert rec["version"] == "v1" and rec["color"] == "blue" and rec["previous"]["version"] == "v2"
    assert (rec["url"], rec["holder_pid"]) == (before["url"], before["holder_pid"])


def test_sync_workers_switch_by_a_second_start_and_fail_no_request(dep):
    """gunicorn's sync worker cannot wait for the gate: the checked server is started again with the gate
    open, checked again on its own port, and only then the old one stops."""
    local = dep["local"].model_copy(update={"port": free_port_block(), "worker_class": "sync"})
    first = _deploy(dep, "v1", name="addr-sync", local=local)
    try:
        rec, _, _ = _switch_under_load(
            dep,
            "v2",
            "sync redeploy",
            name="addr-sync",
            local=local,
            threads={"fresh": 2, "keepalive": 1, "session": 1},
        )
        assert (rec["url"], rec["holder_pid"]) == (first["url"], first["holder_pid"]) and rec[
            "version"
        ] == "v2"
    finally:
        stop_local(dep["root"], "addr", "addr-sync")


def test_serving_processes_lists_the_server_and_the_holder(dep):
    rec = Deployments(dep["root"], "addr").get("addr")
    found = dict(serving_processes(serving_dir()))
    assert found[rec["holder_pid"]] == f"address holder for addr on 127.0.0.1:{rec['port']}"
    assert found[rec["pid"]] == (
        f"model server addr {rec['version']} (blue supervisor) on 127.0.0.1:"
        f"{rec['server_port']}, behind 127.0.0.1:{rec['port']}"
    )


def test_holder_gone_while_serving_then_after_a_restart(dep):
    """A killed holder: the server keeps serving, but a redeploy cannot take over the address and says
    what to do; once nothing runs (as after a machine restart), the next deploy starts a new holder."""
    rec = Deployments(dep["root"], "addr").get("addr")
    os.kill(rec["holder_pid"], signal.SIGKILL)
    _wait_gone(rec["holder_pid"])
    assert http_json(rec["predict_url"], {"data": {"ndarray": [[0.1] * N_FEATURES]}})[0] == 200
    with pytest.raises(
        DeployError,
        match=rf"address holder of addr/addr is gone.*127\.0\.0\.1:{rec['port']}"
        r".*freestack serve stop addr",
    ):
        _deploy(dep, "v2")
    assert describe(Deployments(dep["root"], "addr").get("addr"))["health"] == "ok"  # untouched
    os.killpg(rec["pid"], signal.SIGKILL)  # the machine restarts: every process is gone, the record stays
    _wait_gone(rec["pid"], group=True)
    again = _deploy(dep, "v2", "after a restart")
    assert (
        again["url"] == rec["url"]
        and again["holder_pid"] != rec["holder_pid"]
        and is_holder(again["holder_pid"])
    )
    code, body = http_json(again["predict_url"], {"data": {"ndarray": [[0.1] * N_FEATURES]}})
    assert code == 200 and body["meta"]["tags"]["model_version"] == "v2"


def test_a_deploy_of_what_is_recorded_checks_that_the_live_server_still_answers_it(dep):
    """Deploying the version the record names, from a live server, changes nothing while that server
    answers the version's smoke test; when it does not (here the record names v1 while v2 answers), the
    version is deployed again rather than reported as served."""
    deployments = Deployments(dep["root"], "addr")
    current, token = deployments.read("addr")
    assert current["version"] == "v2"
    assert _deploy(dep, "v2").get("unchanged") is True
    deployments.write("addr", {**current, "version": "v1", "version_uri": dep["uris"]["v1"]}, token)
    rec = _deploy(dep, "v1", "the record's version does not answer")
    assert not rec.get("unchanged") and rec["version"] == "v1" and rec["url"] == current["url"]
    code, body = http_json(rec["predict_url"], {"data": {"ndarray": [[0.1] * N_FEATURES]}})
    assert code == 200 and body["meta"]["tags"]["model_version"] == "v1"


def test_a_stop_logs_no_traceback(dep):
    """`freestack serve stop` stops the server gracefully, then its holder; neither logs a traceback."""
    rec = Deployments(dep["root"], "addr").get("addr")
    for _ in range(5):  # the workers have served and flushed metrics: their exit has work to do
        assert http_json(rec["predict_url"], {"data": {"ndarray": [[0.3] * N_FEATURES]}})[0] == 200
    time.sleep(1.2)
    stop_local(dep["root"], "addr", "addr")
    assert not serving_processes(serving_dir() / "addr")
    home = serving_dir() / "addr"
    logs = {p.name: p.read_text() for p in home.glob("*.log")}
    assert {"address.log", "blue.log", "green.log"} <= set(logs)
    assert "Shutting down: Master" in logs[Path(rec["log"]).name]
    for name, text in logs.items():
        assert "Traceback" not in text and "Exception during" not in text, f"{name}:\n{text[-3000:]}"


def test_a_failed_first_deploy_leaves_no_holder(dep, tmp_path):
    """No server behind a held address would keep clients waiting: the holder goes with the failed deploy.
    A version whose preprocessing.json changed after registration is not restarted (no restart mends it):
    the deploy's first line names the file."""
    local = dep["local"].model_copy(update={"port": free_port_block()})
    with pytest.raises(DeployError, match="exited with code|not healthy"):
        _deploy(dep, "vbad", name="addr-bad", local=local)
    assert not serving_processes(serving_dir() / "addr-bad")
    assert port_free("127.0.0.1", local.port)

    dep["uris"]["vtampered"] = make_version(dep["root"], "addr", "vtampered", tmp_path, seed=5)
    changed = (
        Path(dep["root"].removeprefix("file://")) / "registry" / "addr" / "vtampered" / "preprocessing.json"
    )
    changed.write_text(changed.read_text().replace("]", " ]", 1))  # one byte more, still valid JSON
    with pytest.raises(DeployError) as refused:
        _deploy(dep, "vtampered", name="addr-bad", local=local)
    first = str(refused.value).splitlines()[0]
    assert "exited with code 3 before it was healthy: " in first, first
    assert "vtampered/preprocessing.json does not match what was registered" in first, first
    assert "not restarting" in str(refused.value) and "restarting (1/" not in str(refused.value)
    assert not serving_processes(serving_dir() / "addr-bad")


def test_port_taken_by_another_program(dep, tmp_path):
    port = free_port_block()
    code = f"import socket, time; s = socket.create_server(('127.0.0.1', {port})); print('up', flush=True); time.sleep(120)"
    squatter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline().strip() == "up"
        local = dep["local"].model_copy(update={"port": port})
        with pytest.raises(
            DeployError,
            match=rf"127\.0\.0\.1:{port}, the address of addr/other \(deploy\.local\.port\), "
            r"is taken by another program.*set deploy\.local\.port",
        ) as got:
            deploy_local(
                root_uri=dep["root"],
                model="addr",
                name="other",
                version="v1",
                version_uri=dep["uris"]["v1"],
                local=local,
            )
        if sys.platform == "linux":  # psutil sees who listens (macOS needs privileges for that)
            assert f"(pid {squatter.pid}: " in str(got.value)
        assert not serving_processes(serving_dir() / "other")  # nothing was started
    finally:
        squatter.kill()
        squatter.wait()


def _wait_gone(pid: int, *, group: bool = False, timeout: float = 10.0) -> None:
    """Until ``pid`` (and with ``group`` every process of its group) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        alive = [p for p in psutil.process_iter(["pid"]) if _in(p, pid, group)]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} (group: {group}) is still running")


def _in(proc: psutil.Process, pid: int, group: bool) -> bool:
    try:
        mine = proc.pid == pid or (group and os.getpgid(proc.pid) == pid)
        return mine and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ProcessLookupError):
        return False
