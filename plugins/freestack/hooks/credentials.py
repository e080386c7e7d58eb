"""Credentials for a process that reads a storage URI without Airflow: the model server.

The model server runs in its own environment (no Airflow, no connections), so the deploy task turns
the connection behind a model URI into plain environment variables for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from freestack.errors import DeployError
from freestack.hooks.datastore import DataStoreHook
from freestack.keys import Keys

if TYPE_CHECKING:
    from freestack.judging.spec import JudgeKey, JudgeSpec
    from freestack.score.spec import TeacherSpec
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
        hook = DataStoreHook(conn_id)
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
    env = {
        "AWS_ACCESS_KEY_ID": creds.access_key,
        "AWS_SECRET_ACCESS_KEY": creds.secret_key,
        "AWS_SESSION_TOKEN": creds.token,
        "AWS_ENDPOINT_URL_S3": getattr(cfg, "endpoint_url", None),
        "AWS_DEFAULT_REGION": getattr(cfg, "region_name", None),
    }
    return {k: v for k, v in env.items() if v}


def server_api_key(deploy: DeploySpec) -> SecretStr | None:
    """The OpenAI API's key of a local deploy: the password of the connection ``deploy.api_key.conn_id``
    names, read when the deploy runs (never at DAG parse time); None when the spec names none."""
    conn_id = deploy.api_key.conn_id if deploy.api_key else None
    if conn_id is None:
        return None
    what = ("the OpenAI API's key", "deploy.api_key.conn_id", "deploy again")
    return SecretStr(connection_password(conn_id, *what, error=DeployError))


def deployment_key(record: dict[str, Any]) -> SecretStr | None:
    """The key a local deployment asks for, as its clients (``freestack serve predict``, the Try page) send
    it: the password of the connection its record names (``api_key_conn_id``); None when it asks for none."""
    conn_id = record.get("api_key_conn_id")
    if not conn_id:
        return None
    what = (f"deployment {record.get('name')!r}'s key", "deploy.api_key.conn_id", "try again")
    return SecretStr(connection_password(conn_id, *what, error=DeployError))


def judge_api_key(judge: JudgeSpec | None) -> str | None:
    """The key of the LLM judge (``gate.judge``): the password of the connection ``gate.judge.api_key.conn_id``
    names, read when the task runs (never at DAG parse time); None when the spec names none."""
    key = judge.api_key if judge is not None else None
    return _task_key(key, "the judge's API key", "gate.judge.api_key.conn_id")


def rollout_api_key(spec) -> str | None:
    """The key of the deployment that samples a GRPO training's rollouts (``train.grpo.server``), read as
    :func:`judge_api_key` reads the judge's; None without one."""
    grpo = spec.train.grpo if spec.train.objective == "grpo" else None
    key = grpo.server.api_key if grpo is not None and grpo.server is not None else None
    return _task_key(key, "the rollout server's API key", "train.grpo.server.api_key.conn_id")


def teacher_api_key(teacher: TeacherSpec | None) -> str | None:
    """The key of a teacher endpoint (``score.teacher``), read as :func:`judge_api_key` reads the judge's."""
    key = teacher.api_key if teacher is not None else None
    return _task_key(key, "the teacher's API key", "score.teacher.api_key.conn_id")


def task_keys(spec, *, judge: bool = False, rollout: bool = False, teacher: bool = False) -> Keys:
    """The keys of the endpoints a task calls, as one :class:`~freestack.keys.Keys`, each read from the
    connection the spec names (:func:`judge_api_key`, :func:`rollout_api_key`, :func:`teacher_api_key`):
    only those asked for, so a task reads no connection it does not use."""
    return Keys(
        judge=judge_api_key(spec.gate.judge) if judge else None,
        rollout=rollout_api_key(spec) if rollout else None,
        teacher=teacher_api_key(spec.score.teacher) if teacher else None,
    )


def _task_key(key: JudgeKey | None, what: str, field: str) -> str | None:
    """The password of the connection ``key`` names, in a task; a connection missing or without a password
    fails the task without a retry: a retry would find the same."""
    from airflow.sdk.exceptions import AirflowFailException

    if key is None:
        return None
    return connection_password(key.conn_id, what, field, "run the task again", error=AirflowFailException)


def _connection(conn_id: str) -> Any:
    """Connection ``conn_id`` as Airflow reads it: in a task, through the task SDK (the secrets backends,
    then the API server); outside one (the CLI, a deploy from a shell), where the SDK sees the secrets
    backends only, from the metadata database too, as ``airflow connections get`` reads it."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException as missing:
        try:
            from airflow.secrets.metastore import MetastoreBackend

            stored = MetastoreBackend().get_connection(conn_id)
        except Exception:  # noqa: BLE001  (no database to read here, as in a task)
            stored = None
        if stored is None:
            raise missing from None
        return stored


def connection_password(conn_id: str, what: str, field: str, again: str, *, error: type[Exception]) -> str:
    """The password of Airflow connection ``conn_id``, which is ``what`` (named by the spec's ``field``);
    ``error`` saying how to add it when the connection is missing, unreadable or has no password."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    add = f"airflow connections add {conn_id} --conn-type generic --conn-password '<the key>'"
    try:
        password = _connection(conn_id).password
    except AirflowNotFoundException:
        raise error(
            f"{what}'s connection {conn_id!r} ({field}) does not exist: add it with `{add}` (or set "
            f"AIRFLOW_CONN_{conn_id.upper()}), then {again}"
        ) from None
    except Exception as exc:  # the API server or secrets backend did not answer
        raise error(f"cannot read {what}'s connection {conn_id!r}: {exc}") from exc
    if not password:
        raise error(
            f"connection {conn_id!r} ({field}) has no password, which is {what}: set one "
            f"(`airflow connections delete {conn_id}`, then `{add}`)"
        )
    return password


__all__ = [
    "connection_password",
    "deployment_key",
    "judge_api_key",
    "model_source",
    "server_api_key",
    "task_keys",
    "teacher_api_key",
]
