"""A deployment's address holder (freestack_server.core.address), as a real process: it hands its
listening socket over a Unix socket and never accepts itself; a second holder on a taken port exits
with a message naming it; a missing holder is a clear error; processes.serving_processes finds and
stops holders; deploy.local's ports may not collide."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freestack.serving.processes import free_port_block, is_holder, serving_processes, stop_serving_processes
from freestack_server.core.address import TAKEN, AddressError, receive, socket_name

PLUGINS = Path(__file__).resolve().parents[3] / "plugins"


def _hold(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    return subprocess.Popen(
        [sys.executable, "-m", "freestack_server", "hold", str(home), "127.0.0.1", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.02)


@pytest.fixture
def holder(tmp_path):
    home = tmp_path / "serving" / "digits"
    home.mkdir(parents=True)
    port = free_port_block()
    proc = _hold(home, port)
    _wait_for(home / socket_name(port), proc)
    yield home, port, proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_the_holder_hands_its_listening_socket_and_never_accepts(holder):
    home, port, proc = holder
    assert os.stat(home / socket_name(port)).st_mode & 0o777 == 0o600
    handed = [receive(str(home / socket_name(port)), "127.0.0.1", port) for _ in range(2)]
    listeners = [socket.socket(fileno=h.fd) for h in handed]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            listeners[1].settimeout(5)
            conn, _ = listeners[1].accept()  # the same socket, whichever copy accepts
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    finally:
        for s in listeners:
            s.close()
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert not (home / socket_name(port)).exists()
    assert "listening on 127.0.0.1:" in proc.stdout.read()


def _asked(port: int, path: str, timeout: float) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return client.recv(65536)


def test_with_no_server_holding_the_socket_the_holder_answers_503_at_once(holder):
    """No lease (no supervisor holds the socket: stopped, killed or given up): the holder answers each
    connection 503 with Retry-After, in OpenAI's error format on /v1; while a lease is held, a connection
    waits for the server as before; once it is closed (its process died), the waiting one gets the 503."""
    home, port, _ = holder
    head, _, body = _asked(port, "/v1/models", 5).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5" in head, head
    assert json.loads(body)["error"]["message"].startswith(f"no model server serves 127.0.0.1:{port} now")
    assert json.loads(_asked(port, "/v2/health/ready", 5).partition(b"\r\n\r\n")[2])["error"]
    handed = receive(str(home / socket_name(port)), "127.0.0.1", port)
    with socket.create_connection(("127.0.0.1", port), timeout=1) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(TimeoutError):
            client.recv(1)  # queued for the server that holds the lease
        handed.lease.close()
        os.close(handed.fd)
        client.settimeout(5)
        assert client.recv(65536).startswith(b"HTTP/1.1 503 ")


def test_a_second_holder_on_a_taken_port_says_so(holder, tmp_path):
    _home, port, _proc = holder
    other = tmp_path / "other"
    other.mkdir()
    second = _hold(other, port)
    _out, err = second.communicate(timeout=20)
    assert second.returncode == TAKEN
    assert f"cannot listen on 127.0.0.1:{port}" in err and "deploy.local.port" in err


def test_receive_without_a_holder_says_what_to_do(tmp_path):
    with pytest.raises(AddressError, match=r"does not answer on .*address-9.sock.*deploy again"):
        receive(str(tmp_path / socket_name(9)), "127.0.0.1", 9, timeout=1)


def test_serving_processes_finds_and_stops_a_holder(holder):
    home, port, proc = holder
    serving = home.parent
    assert is_holder(proc.pid, str(home)) and not is_holder(proc.pid, str(serving / "elsewhere"))
    assert serving_processes(serving) == [(proc.pid, f"address holder for digits on 127.0.0.1:{port}")]
    assert serving_processes(str(serving) + "-not") == []
    assert stop_serving_processes(serving) == [
        f"address holder for digits on 127.0.0.1:{port} (pid {proc.pid})"
    ]
    assert proc.wait(timeout=10) == 0 and serving_processes(serving) == []


def test_metrics_port_may_not_collide_with_the_serving_ports():
    from freestack.serving.spec import DeploySpec

    for bad in (8999, 9000, 9001, 9002):
        with pytest.raises(ValueError, match="collides with the serving ports"):
            DeploySpec.model_validate({"local": {"port": 9000, "metrics_port": bad}})
    assert (
        DeploySpec.model_validate({"local": {"port": 9000, "metrics_port": 9003}}).local.metrics_port == 9003
    )
