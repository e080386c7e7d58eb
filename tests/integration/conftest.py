"""Real S3-compatible servers on 127.0.0.1 for the ``s3`` integration tests.

Two servers, each started once per session on free ports and stopped by pid at the end:

- ``moto_s3``: ``moto_server -H 127.0.0.1 -p PORT`` (accepts any credentials);
- ``seaweed_s3``: SeaweedFS ``weed mini`` (master, volume, filer and S3 gateway in one process),
  every listener bound to 127.0.0.1 on a free port, data in a temporary folder. Its S3 gateway
  enables authentication with one admin identity taken from ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` in its environment; a wrong key is refused (InvalidAccessKeyId).

``s3_server`` is parametrized over both and gives each test a fresh bucket; ``s3_conn`` adds an
Airflow connection for it (``AIRFLOW_CONN_<ID>`` in JSON) and forgets Airflow's cached filesystems.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.ports import free_port, free_ports

HOST = "127.0.0.1"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------------------
# process helpers


def find_binary(name: str) -> str:
    candidate = BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} is not installed (looked in {BIN} and on PATH)")


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def server_env(**extra: str) -> dict[str, str]:
    """The environment for a server: ours, without AWS settings that could confuse it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW_CONN_"))}
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop the server we started: SIGTERM to its pid, then SIGKILL to the same pid if it hangs."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def client(endpoint_url: str, access_key: str, secret_key: str):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=60),
    )


def wait_ready(
    name: str, proc: subprocess.Popen, log: Path, endpoint_url: str, key: str, secret: str
) -> None:
    """Poll until the server stores and returns an object (answering is not enough: SeaweedFS
    answers S3 calls a moment before its volume server has registered and can take writes)."""
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + START_TIMEOUT_S
    s3 = client(endpoint_url, key, secret)
    probe = f"ready-{uuid.uuid4().hex[:8]}"
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with code {proc.returncode} while starting; log {log}:\n{log_tail(log)}"
            )
        try:
            if probe not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=probe)
            s3.put_object(Bucket=probe, Key="probe", Body=b"ok")
            if s3.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ok":
                s3.delete_object(Bucket=probe, Key="probe")
                s3.delete_bucket(Bucket=probe)
                return
        except (BotoCoreError, ClientError, OSError) as exc:
            last = exc
        time.sleep(0.5)
    stop_process(proc)
    raise RuntimeError(
        f"{name} did not become ready at {endpoint_url} within {START_TIMEOUT_S:.0f}s "
        f"(last error: {last!r}); log {log}:\n{log_tail(log)}"
    )


@dataclass
class S3Service:
    """One running server."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str
    conn_id: str
    pid: int
    log: Path

    def client(self):
        return client(self.endpoint_url, self.access_key, self.secret_key)


@dataclass
class S3Target:
    """A server plus a fresh, empty bucket for one test."""

    service: S3Service
    bucket: str
    s3: Any = field(repr=False)

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def endpoint_url(self) -> str:
        return self.service.endpoint_url

    @property
    def access_key(self) -> str:
        return self.service.access_key

    @property
    def secret_key(self) -> str:
        return self.service.secret_key

    @property
    def conn_id(self) -> str:
        return self.service.conn_id

    def uri(self, key: str = "") -> str:
        """``s3://<conn>@<bucket>/<key>``: the URI freestack and ObjectStoragePath understand."""
        return f"s3://{self.conn_id}@{self.bucket}/{key.lstrip('/')}".rstrip("/")

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def pending_uploads(self, prefix: str = "") -> list[dict]:
        """Multipart uploads started and neither completed nor aborted."""
        resp = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return list(resp.get("Uploads", []))


# ---------------------------------------------------------------------------------------------------------
# servers


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory) -> Iterator[S3Service]:
    exe = find_binary("moto_server")
    workdir = tmp_path_factory.mktemp("moto")
    log = workdir / "moto.log"
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    cmd = [exe, "-H", HOST, "-p", str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(),
            start_new_session=True,
        )
    try:
        wait_ready("moto_server", proc, log, endpoint, "testing", "testing")
        yield S3Service("moto", endpoint, "testing", "testing", "s3_moto", proc.pid, log)
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory) -> Iterator[S3Service]:
    exe = find_binary("weed")
    workdir = tmp_path_factory.mktemp("seaweed")
    data = workdir / "data"
    data.mkdir()
    log = workdir / "weed.log"
    key, secret = "freestack-test", "freestack-test-secret"
    (master, master_g, volume, volume_g, filer, filer_g, s3p, s3_g, admin, admin_g) = free_ports(10)
    endpoint = f"http://{HOST}:{s3p}"
    cmd = [
        exe,
        "mini",
        f"-dir={data}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={master}",
        f"-master.port.grpc={master_g}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_g}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_g}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.port={s3p}",
        f"-s3.port.grpc={s3_g}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_g}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret),
            start_new_session=True,
        )
    try:
        wait_ready("weed mini", proc, log, endpoint, key, secret)
        yield S3Service("seaweedfs", endpoint, key, secret, "s3_seaweed", proc.pid, log)
    finally:
        stop_process(proc)


_SERVERS = {"moto": "moto_s3", "seaweedfs": "seaweed_s3"}


@pytest.fixture(params=list(_SERVERS))
def s3_server(request) -> Iterator[S3Target]:
    """Each server in turn, with a fresh bucket (emptied and deleted afterwards)."""
    service: S3Service = request.getfixturevalue(_SERVERS[request.param])
    s3 = service.client()
    bucket = f"fs-{request.param[:4]}-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    target = S3Target(service=service, bucket=bucket, s3=s3)
    yield target
    try:
        for up in target.pending_uploads():
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        for k in target.keys():
            s3.delete_object(Bucket=bucket, Key=k)
        s3.delete_bucket(Bucket=bucket)
    except Exception:  # best effort: the server goes away with the session anyway
        pass


def _clear_store_cache() -> None:
    from airflow.sdk.io import store

    store._STORE_CACHE.clear()


@pytest.fixture
def s3_conn(s3_server: S3Target, monkeypatch, tmp_path) -> Iterator[S3Target]:
    """An Airflow connection named ``s3_server.conn_id`` for the server, set as an env var; a fresh
    AIRFLOW_HOME / FREESTACK_HOME; Airflow's filesystem cache forgotten before and after."""
    conn = {
        "conn_type": "aws",
        "login": s3_server.access_key,
        "password": s3_server.secret_key,
        "extra": {"endpoint_url": s3_server.endpoint_url, "region_name": REGION},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{s3_server.conn_id.upper()}", json.dumps(conn))
    (tmp_path / "airflow").mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("FREESTACK_HOME", str(tmp_path / "home"))
    # keep botocore away from any ambient AWS settings: the connection is the only source
    for var in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _clear_store_cache()
    yield s3_server
    _clear_store_cache()


@pytest.fixture
def data_conn(s3_conn: S3Target, monkeypatch) -> Iterator[S3Target]:
    """``freestack_data_default`` backed by ``s3://<conn>@<bucket>/data``, owner ``alice``."""
    conn = {
        "conn_type": "freestack_data",
        "login": "alice",
        "extra": {"root": s3_conn.uri("data")},
    }
    monkeypatch.setenv("AIRFLOW_CONN_FREESTACK_DATA_DEFAULT", json.dumps(conn))
    monkeypatch.delenv("FREESTACK_DATA_ROOT", raising=False)
    _clear_store_cache()
    yield s3_conn
    _clear_store_cache()
