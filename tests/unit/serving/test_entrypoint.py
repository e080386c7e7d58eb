"""One model server everywhere: the images, the manifests and the local deploy start the same command with
the same variables. Fails when a Dockerfile's ``CMD`` or ``ENV`` and the local launcher diverge."""

from __future__ import annotations

import os
import subprocess

import pytest

from freestack.serving import launch as launch_mod
from freestack.serving import manifests
from freestack.serving.spec import KubernetesTarget, LocalTarget
from freestack.settings import PREFIX, Settings
from freestack_server.core.config import PREFIX as SERVER
from freestack_server.core.config import ServerConfig
from tests.support.images import DOCKERFILES, image_cmd, image_env

COMMAND = ["python", "-m", "freestack_server"]


def known_variables() -> set[str]:
    """Every variable the model server reads: its own (names and Seldon's aliases) and freestack's settings."""
    names = {f"{PREFIX}{n.upper()}" for n in Settings.model_fields}
    for name, field in ServerConfig.model_fields.items():
        names.add(f"{SERVER}{name.upper()}")
        alias = field.validation_alias
        names.update(getattr(alias, "choices", None) or ([alias] if isinstance(alias, str) else []))
    return names


def server_variables(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith((SERVER, PREFIX, "PREDICTIVE_UNIT_"))}


@pytest.mark.parametrize("runtime", ["seldon", "mlserver"])
def test_each_image_runs_the_one_command_with_known_variables(runtime):
    dockerfile = DOCKERFILES[runtime]
    assert image_cmd(dockerfile) == COMMAND, f"{dockerfile.name}'s CMD is not {COMMAND}"
    env = server_variables(image_env(dockerfile))
    assert not set(env) - known_variables(), f"{dockerfile.name} sets variables the server does not read"
    cfg = _config_from(env)
    assert cfg.runtime == runtime and cfg.host == "0.0.0.0"
    assert (cfg.port, cfg.grpc_port, cfg.metrics_port) == (manifests.HTTP_PORT, manifests.GRPC_PORT, 6000)


def _config_from(env: dict[str, str]) -> ServerConfig:
    """What the server makes of ``env`` alone (as the container's environment)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith((SERVER, "PREDICTIVE_UNIT_"))]:
            mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        return ServerConfig()


@pytest.mark.parametrize("runtime", ["seldon", "mlserver"])
def test_the_local_deploy_starts_the_images_command_with_the_same_variables(runtime, tmp_path, monkeypatch):
    """The launcher's command is the image's (in the runtime's venv, with ``--env-file``); its file sets
    only variables the server reads, and it overrides the image's only where a deploy must (this machine's
    ports and interface, the model, the deployment's identity and address)."""
    started: list[list[str]] = []

    class Capture:
        def __init__(self, argv, **_kwargs):
            started.append(argv)
            self.pid = 1

    monkeypatch.setenv("FREESTACK_SERVING_DIR", str(tmp_path))
    monkeypatch.setattr(subprocess, "Popen", Capture)
    monkeypatch.setattr(launch_mod, "runtime_python", lambda rt: f"/venv-{rt}/bin/python")
    launch = launch_mod.server_config(
        "d",
        "m",
        "v1",
        launch_mod.Slot("blue", 9001, 9101),
        LocalTarget(port=9000),
        model_uri="file:///x",
        request_log_uri=None,
        runtime=runtime,
    )
    server = launch_mod.start_server(launch, model_env={})
    (argv,) = started
    assert (
        argv[1:] == [*COMMAND[1:], "--env-file", str(server.env_file)]
        and argv[0] == f"/venv-{runtime}/bin/python"
    )
    written = dict(line.split("=", 1) for line in server.env_file.read_text().splitlines())
    assert not set(written) - known_variables()
    image = server_variables(image_env(DOCKERFILES[runtime]))
    assert written[f"{SERVER}RUNTIME"] == f"'{image[f'{SERVER}RUNTIME']}'"
    differ = {k for k in image if k in written and written[k].strip("'") != image[k]}
    aliases = {
        "PREDICTIVE_UNIT_HTTP_SERVICE_PORT",
        "PREDICTIVE_UNIT_GRPC_SERVICE_PORT",
        "PREDICTIVE_UNIT_METRICS_SERVICE_PORT",
    }
    assert differ <= {f"{SERVER}HOST", f"{SERVER}WORKDIR"} | aliases, differ


def test_the_manifests_use_the_images_command_and_known_variables():
    target = KubernetesTarget(
        namespace="models", image="freestack/serving:1", mlserver_image="freestack/mlserver:1"
    )
    for runtime in ("seldon", "mlserver"):
        m = manifests.build_manifest(
            "digits",
            model="digits",
            version="3",
            model_uri="s3://m/registry/digits/3",
            target=target,
            request_log_uri="s3://m/monitoring/digits",
            runtime=runtime,
        )
        (c,) = m["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"]
        assert "command" not in c and "args" not in c
        names = {e["name"] for e in c["env"]} - {"PROTOCOL"}  # PROTOCOL: Seldon's own, for its executor
        assert not names - known_variables(), names - known_variables()
        assert {e["name"]: e["value"] for e in c["env"]}[f"{SERVER}RUNTIME"] == runtime
    isvc = manifests.build_inference_service(
        "digits", model="digits", version="3", model_uri="s3://m/x", target=target
    )
    (c,) = isvc["spec"]["predictor"]["containers"]
    assert "command" not in c and not ({e["name"] for e in c["env"]} - {"PROTOCOL"} - known_variables())


def test_the_server_reads_an_env_file_and_the_environment_wins(tmp_path, monkeypatch):
    from freestack_server.core.config import load, write_env_file

    for key in [k for k in os.environ if k.startswith((SERVER, "PREDICTIVE_UNIT_"))]:
        monkeypatch.delenv(key)
    env_file = tmp_path / "blue.env"
    variables = {
        f"{SERVER}WORKERS": "3",
        f"{SERVER}CORS_ORIGINS": '["https://a.example"]',
        f"{SERVER}ADDRESS": '{"host":"127.0.0.1","port":9000,"socket":"s","gate":"/g"}',
    }
    write_env_file(env_file, variables)
    monkeypatch.setenv("PREDICTIVE_UNIT_HTTP_SERVICE_PORT", "9123")
    monkeypatch.setenv(f"{SERVER}WORKERS", "5")
    try:
        cfg = load(str(env_file))  # sets the file's variables in this process's environment
    finally:
        for key in variables:
            if key != f"{SERVER}WORKERS":
                os.environ.pop(key, None)
    assert (cfg.workers, cfg.port, cfg.cors_origins, cfg.address.port) == (
        5,
        9123,
        ["https://a.example"],
        9000,
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(str(tmp_path / "missing.env"))


def test_the_deploy_specs_defaults_are_the_servers():
    """A spec that leaves a setting out gets what the image gets: one default per setting."""
    server = ServerConfig.model_fields
    for name in ("workers", "threads", "worker_class", "adaptive_batching", "max_idle_connections"):
        assert LocalTarget.model_fields[name].default == server[name].default, name
    for name in ("workers", "threads"):
        assert KubernetesTarget.model_fields[name].default == server[name].default, name


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("file:///models/digits/v20260105-1a2b3c4d", "digits"),
        ("s3://freestack_s3@bucket/freestack/registry/churn/v3/", "churn"),
        ("data://owner/models/registry/spam-filter@production", "spam-filter"),
        ("/srv/registry/houses@staging", "houses"),
        ("file:///v1", None),
        ("s3://bucket/odd name/v1", None),
    ],
)
def test_the_model_name_defaults_to_the_model_the_uri_names(uri, name, monkeypatch):
    """Without FREESTACK_MODEL_NAME the server (MLServer's /v2/models/<name>, metric labels) is named after the
    model of FREESTACK_MODEL_URI, not "model"; a name that is set wins."""
    from freestack_server.core.fetch import model_name_of

    assert model_name_of(uri) == name
    assert _config_from({"FREESTACK_MODEL_URI": uri}).model == (name or "model")
    assert _config_from({"FREESTACK_MODEL_URI": uri, "FREESTACK_MODEL_NAME": "mine"}).model == "mine"
