"""``deploy.api_key``: where the OpenAI API's key comes from (an Airflow connection for the local target, a
Kubernetes Secret for the Kubernetes target), never the key itself. The spec refuses a key written in it and
a source the target cannot read; the deploy reads the connection through Airflow (``AIRFLOW_CONN_*`` here)
and writes the key to the server's env file, mode 0600, and nowhere a record or a message shows it."""

from __future__ import annotations

import json
import stat

import pytest
from pydantic import SecretStr, ValidationError

from freestack.errors import DeployError
from freestack.hooks.credentials import server_api_key
from freestack.serving import launch as launch_mod
from freestack.serving.launch import API_KEY_VARIABLE, Slot, server_config
from freestack.serving.spec import ApiKeySource, DeploySpec
from freestack.specbase import block_problems

KEY = "sk-freestack-unit-0123456789"


def deploy(**kw) -> DeploySpec:
    return DeploySpec.model_validate({"runtime": "mlserver", **kw})


def refused(**kw) -> str:
    with pytest.raises(ValidationError) as info:
        deploy(**kw)
    return block_problems(info.value)


# ---------------------------------------------------------------------------------------------------------
# the spec


def test_a_source_per_target_is_accepted_and_reaches_both_targets():
    spec = deploy(api_key={"conn_id": "llm_api_key", "secret": "llm-api-key"})
    assert spec.api_key == ApiKeySource(conn_id="llm_api_key", secret="llm-api-key", secret_key="api-key")
    assert spec.local.api_key == spec.kubernetes.api_key == spec.api_key
    assert spec.local.for_version(True).api_key == spec.api_key  # the deploy's copy keeps it
    k8s = deploy(target="kubernetes", api_key={"secret": "keys.llm", "secret_key": "OPENAI_KEY"})
    assert (k8s.kubernetes.api_key.secret, k8s.kubernetes.api_key.secret_key) == ("keys.llm", "OPENAI_KEY")
    assert deploy().api_key is None and deploy().local.api_key is None  # no key: /v1 asks for none


def test_a_key_written_in_the_spec_is_refused_without_repeating_it():
    message = refused(api_key=KEY)
    assert "never the key itself" in message and KEY not in message
    assert "conn_id" in message and "secret" in message


@pytest.mark.parametrize(
    "kw, says",
    [
        ({"api_key": {}}, "names no source: set conn_id"),
        ({"runtime": "seldon", "api_key": {"conn_id": "k"}}, "deploy.api_key needs runtime: mlserver"),
        ({"api_key": {"secret": "llm-key"}}, "deploy.api_key.conn_id is needed for target local"),
        (
            {"target": "kubernetes", "kubernetes": {"namespace": "llm"}, "api_key": {"conn_id": "k"}},
            "deploy.api_key.secret is needed for target kubernetes: the Secret that holds the key, in namespace llm",
        ),
        (
            {"api_key": {"conn_id": "my key"}},
            "api_key.conn_id: conn_id 'my key' is not an Airflow connection",
        ),
        ({"api_key": {"conn_id": "k", "secret": "LLM_Key"}}, "api_key.secret: secret 'LLM_Key' is not a"),
        ({"api_key": {"conn_id": "k", "secret_key": "a/b"}}, "api_key.secret_key: secret_key 'a/b' is not"),
        ({"api_key": {"conn_id": "k", "key": KEY}}, "api_key.key: Extra inputs are not permitted"),
        (
            {"runtime": "mlserver", "generation": {"runtime_adapters": True}},
            "deploy.generation.runtime_adapters loads adapters from paths a client names: it needs runtime: "
            "mlserver and deploy.api_key",
        ),
    ],
)
def test_a_bad_source_is_refused_naming_the_field(kw, says):
    assert says in refused(**kw)


# ---------------------------------------------------------------------------------------------------------
# the connection, read by the deploy


def test_the_key_is_the_connections_password(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_LLM_API_KEY", json.dumps({"conn_type": "generic", "login": "x", "password": KEY})
    )
    key = server_api_key(deploy(api_key={"conn_id": "llm_api_key"}))
    assert isinstance(key, SecretStr) and key.get_secret_value() == KEY and KEY not in repr(key)
    assert server_api_key(deploy()) is None


def test_a_connection_added_with_the_cli_is_read_outside_a_task(airflow_db, monkeypatch):
    """`airflow connections add` stores it in the metadata database, which a deploy from a shell reads too
    (the command the missing-connection error prints then works)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from airflow.configuration import conf

    monkeypatch.delenv("AIRFLOW_CONN_STORED_KEY", raising=False)
    airflow = str(Path(sys.executable).with_name("airflow"))
    # the command's Fernet key is this process's (read before the session's airflow.cfg was written)
    env = {**os.environ, "AIRFLOW__CORE__FERNET_KEY": conf.get("core", "fernet_key", fallback="")}
    add = [airflow, "connections", "add", "stored_key", "--conn-type", "generic", "--conn-password", KEY]
    subprocess.run(add, check=True, capture_output=True, env=env)
    try:
        assert server_api_key(deploy(api_key={"conn_id": "stored_key"})).get_secret_value() == KEY
    finally:
        subprocess.run(
            [airflow, "connections", "delete", "stored_key"], check=True, capture_output=True, env=env
        )


def test_a_missing_connection_says_how_to_add_it(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_KEY", raising=False)
    with pytest.raises(DeployError) as info:
        server_api_key(deploy(api_key={"conn_id": "no_such_key"}))
    message = str(info.value)
    assert "'no_such_key' (deploy.api_key.conn_id) does not exist" in message
    assert "airflow connections add no_such_key --conn-type generic --conn-password" in message


def test_a_connection_without_a_password_is_refused(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_EMPTY_KEY", json.dumps({"conn_type": "generic", "login": "x"}))
    with pytest.raises(DeployError, match="'empty_key' .* has no password, which is the OpenAI API's key"):
        server_api_key(deploy(api_key={"conn_id": "empty_key"}))


# ---------------------------------------------------------------------------------------------------------
# the server's env file


def launch_for(spec: DeploySpec, key: SecretStr | None, tmp_path, monkeypatch):
    monkeypatch.setattr(launch_mod, "serving_dir", lambda: tmp_path)
    slot = Slot("blue", 19001, 19100, 19200)
    return server_config(
        "chat", "chat", "v1", slot, spec.local, model_uri="file:///m", request_log_uri=None, api_key=key
    )


def test_the_env_file_carries_the_key_and_only_its_owner_reads_it(tmp_path, monkeypatch):
    spec = deploy(api_key={"conn_id": "llm_api_key"})
    launch = launch_for(spec, SecretStr(KEY), tmp_path, monkeypatch)
    assert KEY not in repr(launch) and KEY not in json.dumps(launch.config.env())
    env_file = tmp_path / "blue.env"
    env_file.write_text("OLD='x'\n")
    env_file.chmod(0o644)  # a file an older deploy left: replaced, not reused
    launch_mod._write_private(env_file, launch.variables())
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert f"{API_KEY_VARIABLE}='{KEY}'\n" in env_file.read_text() and "OLD" not in env_file.read_text()
    assert launch_mod.same_key({"config": str(env_file)}, SecretStr(KEY))
    assert not launch_mod.same_key({"config": str(env_file)}, SecretStr("sk-rotated"))
    assert not launch_mod.same_key({"config": str(env_file)}, None)
    without = launch_for(deploy(), None, tmp_path, monkeypatch)
    assert API_KEY_VARIABLE not in without.variables()


def test_a_deploy_that_names_a_connection_needs_its_key(tmp_path, monkeypatch):
    spec = deploy(api_key={"conn_id": "llm_api_key"})
    with pytest.raises(DeployError, match="names connection 'llm_api_key', but this deploy was given no key"):
        launch_mod.checked_key(None, spec.local)
    for bad in ("", "it's", "a\nb"):
        with pytest.raises(DeployError, match="empty or holds a quote or a line break") as info:
            launch_mod.checked_key(SecretStr(bad), spec.local)
        assert "llm_api_key" in str(info.value)
    assert launch_mod.checked_key(SecretStr(KEY), spec.local).get_secret_value() == KEY
    assert launch_mod.checked_key(None, deploy().local) is None
