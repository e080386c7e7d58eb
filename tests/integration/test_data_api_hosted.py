"""The Data API hosted by the Airflow API server (the freestack plugin's ``fastapi_apps``), and a 1 GiB
object through the standalone service with the server's memory measured. Both slow: run with -m slow."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.integration.data_api_service import (
    HOST,
    log_tail,
    rss_now_kib,
    rss_peak_kib,
    service_env,
    start_service,
    stop,
    wait_healthy,
)
from tests.integration.test_data_api_security import NON_FINAL
from tests.support.ports import free_port

BIN = Path(sys.executable).parent
GiB = 1 << 30
MiB = 1 << 20


@pytest.mark.slow
def test_airflow_api_server_hosts_the_data_api(airflow_db, tmp_path):
    from Algorithmia.acl import AclType, ReadAcl

    from freestack.dataapi import PLUGIN_URL_PREFIX
    from freestack.dataapi.keys import KeyStore

    keys = tmp_path / "keys.sqlite"
    key = KeyStore(keys).create_key("alice")[1]
    data = tmp_path / "data"
    port = free_port()
    log = tmp_path / "api-server.log"
    env = service_env(keys, FREESTACK_DATA_API_ROOT=data.as_uri(), FREESTACK_HOME=str(tmp_path / "home"))
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "-H", HOST, "-p", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    url = f"http://{HOST}:{port}{PLUGIN_URL_PREFIX}"
    try:
        wait_healthy(url, proc, log, timeout=180)
        import Algorithmia

        c = Algorithmia.client(key, url)
        d = c.dir("data://.my/hosted")
        d.create(ReadAcl.public)
        c.file("data://.my/hosted/config.json").putJson({"lr": 0.01})
        assert c.file("data://.my/hosted/config.json").getJson() == {"lr": 0.01}
        assert [f.getName() for f in d.files()] == ["config.json"]
        assert d.get_permissions().read_acl == AclType.public
        assert Algorithmia.client(None, url).file("data://alice/hosted/config.json").getJson() == {"lr": 0.01}
        assert json.loads((data / "alice" / "hosted" / "config.json").read_text()) == {"lr": 0.01}

        # bytes come back as stored: Airflow's gzip middleware leaves file bodies alone (ranges stay right)
        blob = os.urandom(3 * MiB)
        c.file("data://.my/hosted/blob.bin").put(blob)
        r = requests.get(f"{url}/v1/data/.my/hosted/blob.bin", headers={"Authorization": key}, timeout=30)
        assert r.headers.get("Content-Encoding") == "identity" and r.content == blob
        r = requests.get(
            f"{url}/v1/data/alice/hosted/blob.bin", headers={"Range": "bytes=100-199"}, timeout=30
        )
        assert r.status_code == 206 and r.content == blob[100:200]
        # refusals are the same JSON errors
        r = requests.put(f"{url}/v1/data/alice/hosted/x.txt", data=b"x", timeout=30)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]

        # an encoded '/' is refused in any segment, behind the API server's mount as in the service
        def names() -> list[Path]:  # what is stored (not the service's own hidden files)
            return sorted(
                p.relative_to(data)
                for p in data.rglob("*")
                if not any(n.startswith(".") for n in p.relative_to(data).parts)
            )

        before = names()
        for path in NON_FINAL:
            r = requests.put(
                f"{url}{path.format(coll='hosted')}", data=b"evil", headers={"Authorization": key}, timeout=30
            )
            assert r.status_code == 400 and "encoded '/'" in r.json()["error"]["message"], (path, r.text)
        assert names() == before
    except BaseException:
        print(log_tail(log))
        raise
    finally:
        stop(proc, timeout=30)


def _blocks(n_mib: int, seed: bytes):
    """``n_mib`` distinct 1 MiB blocks, generated as they are sent (nothing held in memory)."""
    base = hashlib.sha256(seed).digest() * (MiB // 32)
    for i in range(n_mib):
        yield i.to_bytes(8, "big") + base[8:]


@pytest.mark.slow
def test_one_gib_up_and_down_in_bounded_memory(tmp_path):
    api = start_service(tmp_path, users=("alice",))
    try:
        url = f"{api.url}/v1/data/.my/big/one_gib.bin"
        headers = api.headers("alice")
        requests.post(
            f"{api.url}/v1/data/.my", json={"name": "big"}, headers=headers, timeout=30
        ).raise_for_status()
        idle = rss_now_kib(api.pid)

        want = hashlib.sha256()

        def body():
            for block in _blocks(GiB // MiB, b"freestack"):
                want.update(block)
                yield block

        r = requests.put(url, data=body(), headers=headers, timeout=600)  # chunked: streamed from a generator
        assert r.status_code == 200, r.text
        stored = api.root / "alice" / "big" / "one_gib.bin"
        assert stored.stat().st_size == GiB

        got, size = hashlib.sha256(), 0
        with requests.get(url, headers=headers, stream=True, timeout=600) as resp:
            assert resp.status_code == 200 and int(resp.headers["Content-Length"]) == GiB
            for chunk in resp.iter_content(MiB):
                got.update(chunk)
                size += len(chunk)
        assert size == GiB and got.hexdigest() == want.hexdigest()

        # freestack's data:// writer and reader over HTTP: the same file, streamed through bounded buffers
        from freestack.storage.httpfs import DataApiHttpFileSystem

        fs = DataApiHttpFileSystem(api.url, api_key=api.keys["alice"])
        with fs.open("alice/big/copy.bin", "wb") as f:
            for block in _blocks(GiB // MiB, b"freestack"):
                f.write(block)
        again, n = hashlib.sha256(), 0
        with fs.open("alice/big/copy.bin", "rb") as f:
            while chunk := f.read(8 * MiB):
                again.update(chunk)
                n += len(chunk)
        assert n == GiB and again.hexdigest() == want.hexdigest()

        peak = rss_peak_kib(api.pid)
        print(f"server RSS idle {idle // 1024} MiB, peak {peak // 1024} MiB")
        # the server never held more than a few MiB of any of the four 1 GiB transfers
        assert peak - idle < 128 * 1024, f"server peak RSS grew by {(peak - idle) // 1024} MiB"
        with open(stored, "rb") as fh:
            on_disk = hashlib.file_digest(fh, "sha256").hexdigest()
        assert on_disk == want.hexdigest()
    finally:
        stop(api.proc)
