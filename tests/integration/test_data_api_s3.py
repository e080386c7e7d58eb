"""The Data API over an S3 backing store (moto server on 127.0.0.1): the same protocol, the data as
objects under the prefix, the ACL document beside them, nothing left by an interrupted upload."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import requests

from tests.integration.conftest import REGION
from tests.integration.data_api_service import HOST, start_service, stop

pytestmark = pytest.mark.s3


def test_data_api_over_s3(moto_s3, tmp_path):
    from Algorithmia.acl import AclType, ReadAcl
    from Algorithmia.errors import DataApiError

    s3 = moto_s3.client()
    bucket = f"fs-data-api-{os.getpid()}-{int(time.time())}"
    s3.create_bucket(Bucket=bucket)
    conn = {
        "conn_type": "aws",
        "login": moto_s3.access_key,
        "password": moto_s3.secret_key,
        "extra": {"endpoint_url": moto_s3.endpoint_url, "region_name": REGION},
    }
    api = start_service(
        tmp_path,
        root_uri=f"s3://{moto_s3.conn_id}@{bucket}/data",
        users=("alice", "bob"),
        env={
            f"AIRFLOW_CONN_{moto_s3.conn_id.upper()}": json.dumps(conn),
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )

    def keys() -> list[str]:
        out = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="data/"):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    try:
        alice, bob = api.client("alice"), api.client("bob")
        d = alice.dir("data://.my/models")
        d.create(ReadAcl.private)
        assert d.exists()
        d.file("config.json").putJson({"lr": 0.1})
        big = os.urandom(12 * 1024 * 1024 + 5)  # several multipart parts on S3
        local = tmp_path / "big.bin"
        local.write_bytes(big)
        d.file("big.bin").putFile(str(local))
        assert alice.file("data://alice/models/config.json").getJson() == {"lr": 0.1}
        r = requests.get(f"{api.url}/v1/data/.my/models/big.bin", headers=api.headers("alice"), timeout=60)
        assert r.content == big
        assert [f.getName() for f in d.files()] == ["big.bin", "config.json"]
        assert keys() == [
            "data/alice/models/.freestack-acl.json",
            "data/alice/models/.freestack-dir",
            "data/alice/models/big.bin",
            "data/alice/models/config.json",
        ]
        assert s3.get_object(Bucket=bucket, Key="data/alice/models/big.bin")["Body"].read() == big

        with pytest.raises(DataApiError):
            bob.file("data://alice/models/config.json").getJson()
        d.update_permissions(ReadAcl.public)
        assert d.get_permissions().read_acl == AclType.public
        assert bob.file("data://alice/models/config.json").getJson() == {"lr": 0.1}

        # an upload cut off mid-body: no object, no multipart upload left open
        port = int(api.url.rsplit(":", 1)[1])
        with socket.create_connection((HOST, port), timeout=10) as sock:
            sock.sendall(
                (
                    f"PUT /v1/data/alice/models/cut.bin HTTP/1.1\r\nHost: x\r\nAuthorization: {api.keys['alice']}\r\n"
                    f"Content-Length: {20 * 1024 * 1024}\r\n\r\n"
                ).encode()
            )
            sock.sendall(os.urandom(9 * 1024 * 1024))
        deadline = time.monotonic() + 15
        while s3.list_multipart_uploads(Bucket=bucket).get("Uploads") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
        assert "data/alice/models/cut.bin" not in keys()

        assert d.delete(force=True)
        assert keys() == []
    finally:
        stop(api.proc)
