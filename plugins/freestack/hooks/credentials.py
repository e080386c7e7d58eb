"""Credentials for a process that reads a storage URI without Airflow: the model server.

The model server runs in its own environment (no Airflow, no connections), so the deploy task turns
the connection behind a model URI into plain environment variables for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from freestack.errors import DeployError
from freestack.hooks.datastore import DataStoreHook

if TYPE_CHECKING:
    from freestack.serving.spec import DeploySpec


def model_source(uri: str) -> tuple[str, dict[str, str]]:
    """The URI the model server reads the version from, and the environment it needs for it.

    ``s3://conn@bucket/key`` becomes ``s3://bucket/key`` plus the connection's ``AWS_*`` credentials and
    endpoint; ``data://`` becomes the Data API service URL and key, or the backing store's own URI when
    the connection reads a folder or bucket directly.
    """
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        head, _, key = rest.partition("/")
        conn_id, _, bucket = head.rpartition("@")
        return f"s3://{bucket}/{key}", _aws_env(conn_id or "aws_default")
    if uri.startswith("data://"):
        path = uri[len("data://") :]
        head, sep, rest = path.partition("/")
        conn_id = None
        if "@" in head:
            conn_id, _, head = head.rpartition("@")
            path = head + sep + rest
        hook = DataStoreHook(conn_id) if conn_id else DataStoreHook()
        config = hook.config
        if config.is_remote_api:
            env = {"FREESTACK_DATA_API_URL": config.root}
            if config.api_key:
                env["FREESTACK_DATA_API_KEY"] = config.api_key
            return f"data://{path}", env
        fs = hook.get_conn()
        resolved = fs.resolve(path)
        fs.check(resolved)
        return model_source(f"{config.root.rstrip('/')}/{resolved}")
    return uri, {}


def _aws_env(conn_id: str) -> dict[str, str]:
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id=conn_id)
        creds = hook.get_credentials()
        cfg = hook.conn_config
    except Exception as exc:
        raise DeployError(f"cannot read the S3 connection {conn_id!r} for the model server: {exc}") from exc
    env = {"AWS_ACCESS_KEY_ID": creds.access_key or "", "AWS_SECRET_ACCESS_KEY": creds.secret_key or ""}
    if creds.token:
        env["AWS_SESSION_TOKEN"] = creds.token
    endpoint = getattr(cfg, "endpoint_url", None)
    if endpoint:
        env["AWS_ENDPOINT_URL_S3"] = endpoint
    region = getattr(cfg, "region_name", None)
    if region:
        env["AWS_DEFAULT_REGION"] = region
    return {k: v for k, v in env.items() if v}


def server_api_key(deploy: DeploySpec) -> SecretStr | None:
    """The OpenAI API's key of a local deploy: the password of the connection ``deploy.api_key.conn_id``
    names, read when the deploy runs (never at DAG parse time); None when the spec names none."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id = deploy.api_key.conn_id if deploy.api_key else None
    if conn_id is None:
        return None
    add = f"airflow connections add {conn_id} --conn-type generic --conn-password '<the key>'"
    try:
        password = Connection.get(conn_id).password
    except AirflowNotFoundException:
        raise DeployError(
            f"the OpenAI API key's connection {conn_id!r} (deploy.api_key.conn_id) does not exist: add it "
            f"with `{add}` (or set AIRFLOW_CONN_{conn_id.upper()}), then deploy again"
        ) from None
    except Exception as exc:  # the API server or secrets backend did not answer
        raise DeployError(f"cannot read the OpenAI API key's connection {conn_id!r}: {exc}") from exc
    if not password:
        raise DeployError(
            f"connection {conn_id!r} (deploy.api_key.conn_id) has no password, which is the OpenAI API's "
            f"key: set one (`airflow connections delete {conn_id}`, then `{add}`)"
        )
    return SecretStr(password)


__all__ = ["model_source", "server_api_key"]
