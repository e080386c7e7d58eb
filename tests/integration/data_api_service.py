"""A real Data API service for the tests: ``freestack data-api`` under uvicorn on 127.0.0.1.

Test modules import the fixtures they use from here (``from tests.integration.data_api_service import
data_api``...). The service is started once per session on a free port, with its own backing folder
and keys file, and stopped by its pid at the end. Users ``alice``, ``bob`` and ``carol`` get a key
each; a listing page holds ``PAGE_SIZE`` entries, so pagination is exercised with a dozen files.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.ports import free_port

HOST = "127.0.0.1"
PAGE_SIZE = 5
START_TIMEOUT_S = 60.0
BIN = Path(sys.executable).parent
USERS = ("alice", "bob", "carol")


def service_env(keys: Path, **extra: str) -> dict[str, str]:
    """Our environment, minus connections that could point the service elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AWS_"))}
    env["FREESTACK_DATA_API_KEYS"] = str(keys)
    env.update(extra)
    return env


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT_S) -> None:
    import requests

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode} while starting:\n{log_tail(log)}")
        try:
            r = requests.get(f"{url}/v1/freestack/health", timeout=2)
            if r.status_code == 200:
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(
        f"the service did not answer at {url} within {timeout:.0f}s ({last!r}):\n{log_tail(log)}"
    )


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM to the pid we started, SIGKILL to the same pid if it hangs."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class DataApi:
    """One running service."""

    url: str
    root: Path  # the backing folder: <root>/<owner>/<collection>/...
    keys_path: Path
    proc: subprocess.Popen
    log: Path
    keys: dict[str, str] = field(default_factory=dict)  # user -> API key

    @property
    def pid(self) -> int:
        return self.proc.pid

    def new_key(self, user: str) -> str:
        from freestack.dataapi.keys import KeyStore

        store = KeyStore(self.keys_path)
        try:
            return store.create_key(user, label="tests")[1]
        finally:
            store.close()

    def client(self, user: str | None):
        """The official Algorithmia client for ``user`` (None: no key)."""
        import Algorithmia

        return Algorithmia.client(self.keys[user] if user else None, self.url)

    def headers(self, user: str | None) -> dict[str, str]:
        return {"Authorization": f"Simple {self.keys[user]}"} if user else {}

    def raw(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with ``path`` sent exactly as given (no client-side normalisation of ``..``)."""
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            hdrs = {**self.headers(user), **(headers or {})}
            if body is not None:
                hdrs.setdefault("Content-Length", str(len(body)))
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def collection(self) -> str:
        """A fresh collection name."""
        return f"c{uuid.uuid4().hex[:10]}"

    def files_under(self, *parts: str) -> dict[str, bytes]:
        """Every file below ``root/parts`` (hidden ones included), relative path -> bytes."""
        base = self.root.joinpath(*parts)
        if not base.exists():
            return {}
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def start_service(
    workdir: Path,
    *,
    page_size: int = PAGE_SIZE,
    users=USERS,
    extra_args=(),
    root_uri: str | None = None,
    env: dict[str, str] | None = None,
) -> DataApi:
    """Start the service over ``workdir/data`` (or ``root_uri``, e.g. an S3 prefix, with ``env`` holding
    its connection) on a free port, with a key for each of ``users`` (new keys when
    the keys file has them already)."""
    root = workdir / "data"
    root.mkdir(parents=True, exist_ok=True)
    keys_path = workdir / "keys.sqlite"
    log = workdir / "data-api.log"
    port = free_port()
    url = f"http://{HOST}:{port}"
    cmd = [
        str(BIN / "freestack"),
        "data-api",
        "--host",
        HOST,
        "--port",
        str(port),
        "--root",
        root_uri or root.as_uri(),
        "--keys",
        str(keys_path),
        "--page-size",
        str(page_size),
        "--log-level",
        "warning",
        *extra_args,
    ]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=service_env(keys_path, FREESTACK_HOME=str(workdir / "home"), **(env or {})),
            start_new_session=True,
        )
    try:
        wait_healthy(url, proc, log)
    except BaseException:
        stop(proc)
        raise
    api = DataApi(url=url, root=root, keys_path=keys_path, proc=proc, log=log)
    for user in users:
        api.keys[user] = api.new_key(user)
    return api


@pytest.fixture(scope="session")
def data_api(tmp_path_factory) -> Iterator[DataApi]:
    """The shared service (users alice, bob, carol); tests use fresh collection names."""
    api = start_service(tmp_path_factory.mktemp("data-api"))
    try:
        yield api
    finally:
        stop(api.proc)


def rss_peak_kib(pid: int) -> int:
    """VmHWM (peak resident set) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def rss_now_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
