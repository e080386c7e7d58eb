"""A local deployment's ports: the metrics ports are not derived blindly from the serving port (port + 100
is another service's port as often as not): by default they are chosen free at deploy time and written
in the deployment record; an explicit port that is taken fails the deploy with the port, who holds it
and the setting to change."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from freestack.errors import DeployError
from freestack.serving import launch as launch_mod
from freestack.serving import local as local_mod
from freestack.serving import processes
from freestack.serving.spec import DeploySpec, LocalTarget
from tests.support.serving import make_version, needs_serving_env

HOST = "127.0.0.1"


@contextlib.contextmanager
def listening(port: int):
    """Another service on ``port`` (this process listens there)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, port))
    s.listen()
    try:
        yield s
    finally:
        s.close()


def test_metrics_port_defaults_to_null_not_port_plus_100():
    spec = DeploySpec.model_validate({"local": {"port": 9000}})
    assert spec.local.metrics_port is None
    assert "+ 100" not in (LocalTarget.model_fields["metrics_port"].description or "")


def _taken_above() -> tuple[int, contextlib.ExitStack]:
    """A free port block, and ``port + 100`` and ``+ 101`` held (another deployment's, say): a block whose
    neighbours some other test's server holds now is passed over."""
    for _ in range(20):
        port, held = processes.free_port_block(), contextlib.ExitStack()
        try:
            held.enter_context(listening(port + 100))
            held.enter_context(listening(port + 101))
        except OSError:
            held.close()
            continue
        return port, held
    raise AssertionError("no free port block with port + 100 and + 101 free in 20 tries")


def test_default_metrics_ports_are_chosen_free_not_port_plus_100():
    port, held = _taken_above()
    local = LocalTarget(port=port)
    with held:  # e.g. another deployment's address at port + 100
        blue = local_mod._free_slot("m", "m", local, None)
        green = local_mod._free_slot("m", "m", local, {"color": "blue", "metrics_port": blue.metrics_port})
    assert (blue.color, blue.port, green.color, green.port) == ("blue", port + 1, "green", port + 2)
    for slot in (blue, green):
        assert slot.metrics_port not in range(port - 1, port + 3) and slot.metrics_port not in (
            port + 100,
            port + 101,
        )
        assert processes.port_free(HOST, slot.metrics_port)
    assert green.metrics_port != blue.metrics_port


def test_an_explicit_metrics_port_that_is_taken_fails_naming_port_holder_and_setting():
    port = processes.free_port_block()
    mp = processes.free_port_block()
    local = LocalTarget(port=port, metrics_port=mp)
    assert local_mod._free_slot("m", "m", local, None).metrics_port == mp
    with listening(mp):
        with pytest.raises(DeployError) as err:
            local_mod._free_slot("m", "m", local, None)
    msg = str(err.value)
    assert f"{HOST}:{mp}" in msg and f"pid {os.getpid()}" in msg and "deploy.local.metrics_port" in msg, msg
    with listening(mp + 1):  # green's metrics port is metrics_port + 1
        with pytest.raises(DeployError, match=rf"{HOST}:{mp + 1}.*green.*deploy\.local\.metrics_port"):
            local_mod._free_slot("m", "m", local, {"color": "blue"})


def test_a_taken_serving_port_names_the_port_holder_and_setting_without_port_plus_100(tmp_path, monkeypatch):
    monkeypatch.setenv("FREESTACK_SERVING_DIR", str(tmp_path / "serving"))
    port = processes.free_port_block()
    local = LocalTarget(port=port)
    with listening(port):
        with pytest.raises(DeployError) as err:
            launch_mod.hold_address("m", "m", local, None)
    msg = str(err.value)
    assert f"{HOST}:{port}" in msg and f"pid {os.getpid()}" in msg and "deploy.local.port" in msg, msg
    assert "+ 100" not in msg and "+ 101" not in msg, msg
    with listening(port + 1):
        with pytest.raises(DeployError, match=rf"{HOST}:{port + 1}.*pid {os.getpid()}.*deploy\.local\.port"):
            local_mod._free_slot("m", "m", local, None)


def test_free_port_block_needs_only_the_serving_ports(monkeypatch):
    port = processes.free_port_block()
    monkeypatch.setattr(processes.random, "randint", lambda a, b: port)
    with listening(port + 100), listening(port + 101):
        assert processes.free_port_block() == port


@needs_serving_env
def test_deploy_records_the_metrics_port_it_chose(tmp_path):
    """A real deploy while port + 100 is taken: it serves, and the record says where its metrics are."""
    from freestack.serving.smoke import http_json

    root = (tmp_path / "storage").as_uri()
    uri = make_version(root, "pm", "v1", tmp_path)
    local = LocalTarget(
        port=processes.free_port_block(),
        workers=1,
        smoke_rows=4,
        log_sample_rate=0.0,
        start_timeout_seconds=90,
    )
    with listening(local.port + 100):
        rec = local_mod.deploy_local(
            root_uri=root, model="pm", name="pm", version="v1", version_uri=uri, local=local
        )
    try:
        mp = rec["metrics_port"]
        assert (
            mp not in (local.port + 100, local.port + 101)
            and rec["metrics_url"] == f"http://{HOST}:{mp}/metrics"
        )
        code, text = http_json(rec["metrics_url"])
        assert code == 200, text
    finally:
        local_mod.stop_local(root, "pm", "pm")


def test_the_runtime_is_seldon_or_mlserver():
    assert (
        DeploySpec().runtime == "seldon"
        and DeploySpec.model_validate({"runtime": "mlserver"}).runtime == "mlserver"
    )
    with pytest.raises(ValueError, match="'seldon' or 'mlserver'"):
        DeploySpec.model_validate({"runtime": "triton"})
    cfg = launch_mod.server_config(
        "d",
        "m",
        "v1",
        launch_mod.Slot("blue", 9001, 9101),
        LocalTarget(port=9000),
        model_uri="file:///x",
        request_log_uri=None,
        runtime="mlserver",
    )
    assert cfg.config.runtime == "mlserver" and cfg.config.workers == 1
    assert cfg.config.grpc_port not in (9000, 9001, 9002, 9101)
    assert launch_mod.health_url("http://h:1", "mlserver", "m") == "http://h:1/v2/models/m/ready"
    assert launch_mod.health_url("http://h:1", "seldon", "m") == "http://h:1/health/status"


def test_a_grpc_port_setting_places_blue_and_green_and_a_taken_one_fails_naming_it():
    port, gp = processes.free_port_block(), processes.free_port_block()
    local = LocalTarget(port=port, grpc_port=gp)
    blue = local_mod._free_slot("m", "m", local, None, runtime="mlserver")
    green = local_mod._free_slot("m", "m", local, {"color": "blue"}, runtime="mlserver")
    assert (blue.grpc_port, green.grpc_port) == (gp, gp + 1)
    assert local_mod._free_slot("m", "m", local, None).grpc_port is None  # Seldon's runtime has no gRPC
    launch = launch_mod.server_config(
        "m", "m", "v1", blue, local, model_uri="file:///x", request_log_uri=None, runtime="mlserver"
    )
    assert launch.config.grpc_port == gp
    with listening(gp + 1):
        with pytest.raises(DeployError) as err:
            local_mod._free_slot("m", "m", local, {"color": "blue"}, runtime="mlserver")
    msg = str(err.value)
    assert f"grpc port {HOST}:{gp + 1} for the green server" in msg and "deploy.local.grpc_port" in msg, msg
    default = local_mod._free_slot("m", "m", LocalTarget(port=port), None, runtime="mlserver")
    assert default.grpc_port not in (*range(port - 1, port + 3), default.metrics_port)


@pytest.mark.parametrize(
    ("local", "says"),
    [
        ({"port": 9000, "grpc_port": 9002}, "deploy.local.grpc_port 9002 collides with the serving ports"),
        ({"port": 9000, "grpc_port": 8999}, "deploy.local.grpc_port 8999 collides with the serving ports"),
        (
            {"port": 9000, "grpc_port": 9500, "metrics_port": 9501},
            "grpc_port 9500 and metrics_port 9501 overlap",
        ),
    ],
)
def test_grpc_ports_that_collide_are_refused_in_the_spec(local, says):
    with pytest.raises(ValueError, match=says):
        DeploySpec.model_validate({"local": local})
    assert DeploySpec.model_validate({"local": {"port": 9000, "grpc_port": 9500, "metrics_port": 9502}})


def test_serve_status_shows_the_metrics_and_grpc_addresses():
    from freestack.cli.serve import _status_lines

    record = {
        "model": "m",
        "name": "m",
        "version": "v1",
        "state": "serving",
        "alive": True,
        "health": "ok",
        "predict_url": "http://127.0.0.1:9000/v2/models/m/infer",
        "color": "green",
        "runtime": "mlserver",
        "metrics_url": "http://127.0.0.1:9401/metrics",
        "metrics_port": 9401,
        "grpc_port": 9501,
        "grpc_address": "127.0.0.1:9501",
        "pid": 1,
        "workers": 1,
        "threads": 1,
    }
    lines = _status_lines(record)
    assert "  metrics   http://127.0.0.1:9401/metrics" in lines
    assert "  grpc      127.0.0.1:9501  (the green server's own; it moves with each deploy)" in lines
    assert not [line for line in _status_lines({**record, "grpc_address": None}) if "grpc" in line]
