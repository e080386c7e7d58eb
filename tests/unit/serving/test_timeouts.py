"""The model server's timeouts: their defaults follow the kind of version served (a fine-tuned
transformers model loads and answers slower), and a server that is not healthy in time is reported
with the ``deploy.local`` setting to raise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from freestack.errors import DeployError
from freestack.serving import local as local_mod
from freestack.serving.launch import LocalServer, Slot, server_config
from freestack.serving.spec import START_TIMEOUT_S, WORKER_TIMEOUT_S, DeploySpec, LocalTarget
from tests.support.ports import free_ports


def test_null_timeouts_take_the_defaults_of_the_versions_kind():
    local = DeploySpec.model_validate({"local": {"port": 9000}}).local
    assert local.timeout_seconds is None and local.start_timeout_seconds is None
    assert (local.worker_timeout, local.start_timeout) == (30, 120.0)
    built_in, pretrained = local.for_version(False), local.for_version(True)
    assert (built_in.timeout_seconds, built_in.start_timeout_seconds) == (30, 120.0)
    assert (pretrained.timeout_seconds, pretrained.start_timeout_seconds) == (120, 600.0)
    assert WORKER_TIMEOUT_S["huggingface"] > WORKER_TIMEOUT_S["built-in"]
    assert START_TIMEOUT_S["huggingface"] > START_TIMEOUT_S["built-in"]
    # a value the spec sets is kept, whatever the kind
    chosen = LocalTarget(timeout_seconds=45, start_timeout_seconds=200).for_version(True)
    assert (chosen.timeout_seconds, chosen.start_timeout_seconds) == (45, 200)


def test_the_server_config_carries_the_worker_timeout():
    port, metrics = free_ports(2)
    cfg = server_config(
        "m",
        "m",
        "v1",
        Slot("blue", port, metrics),
        LocalTarget(),
        model_uri="file:///x",
        request_log_uri=None,
    )
    assert cfg.config.timeout == 30
    cfg = server_config(
        "m",
        "m",
        "v1",
        Slot("blue", port, metrics),
        LocalTarget().for_version(True),
        model_uri="file:///x",
        request_log_uri=None,
    )
    assert cfg.config.timeout == 120


@pytest.mark.parametrize(
    ("config", "pretrained"),
    [
        (
            {
                "freestack": {"freestack_model": "huggingface"},
                "architectures": ["BertForSequenceClassification"],
            },
            True,
        ),
        ({"kind": "mlp", "n_features": 8}, False),
        ({"freestack_model": "custom"}, False),
        (None, False),
    ],
)
def test_the_deploy_reads_the_versions_kind_from_its_config(tmp_path, config, pretrained):
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    assert local_mod.is_pretrained(tmp_path.as_uri()) is pretrained


def _server(tmp_path, log: str, timeout: int) -> LocalServer:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    (tmp_path / "blue.log").write_text(log)
    port, metrics = free_ports(2)  # nothing listens there: the health check never answers
    cfg = server_config(
        "m",
        "m",
        "v1",
        Slot("blue", port, metrics),
        LocalTarget(timeout_seconds=timeout),
        model_uri="file:///x",
        request_log_uri=None,
    )
    return LocalServer(proc, cfg, tmp_path / "blue.json", tmp_path / "blue.log")


def test_not_healthy_in_time_names_the_start_timeout(tmp_path):
    server = _server(tmp_path, "Booting worker with pid: 12\nLoading weights\n", 30)
    try:
        with pytest.raises(DeployError) as err:
            server.wait_ready(1.0)
    finally:
        server.proc.kill()
    message = str(err.value)
    assert "was not healthy within 1 s" in message, message
    assert (
        "raise deploy.local.start_timeout_seconds (now 1 s)" in message
        and "deploy.local.timeout_seconds" not in message
    )


def test_workers_killed_by_the_worker_timeout_name_that_setting(tmp_path):
    log = "Booting worker with pid: 12\n[2026-01-01 00:00:00 +0000] [10] [CRITICAL] WORKER TIMEOUT (pid:12)\n"
    server = _server(tmp_path, log, 7)
    try:
        with pytest.raises(DeployError) as err:
            server.wait_ready(1.0)
    finally:
        server.proc.kill()
    message = str(err.value)
    assert "gunicorn killed workers that were silent for over deploy.local.timeout_seconds (7 s" in message, (
        message
    )
    assert "raise it in the spec's deploy.local block" in message and "WORKER TIMEOUT (pid:12)" in message
