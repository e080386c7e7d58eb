"""The local deploy target: a supervised ``seldon-core-microservice`` on 127.0.0.1, switched blue/green.

``deploy_local`` starts the new version beside the one serving (blue on ``port``, green on
``port + 1``), waits for ``/health/status``, sends real test rows whose answers must equal the
evaluation's in-process predictions, and only then replaces the deployment record
``deployments/<model>/<name>.json`` (compare-and-swap) and stops the old process. If the new version
fails to load or to answer the same, it is stopped and the old one keeps serving.

The server runs in the serving environment (``.venv-serving``) in its own session, so it outlives the
Airflow task that started it; the record keeps its pid, port, version and log. This module is plain
Python over the registry and storage: the operators and ``freestack serve`` both use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freestack.errors import FreestackError

log = logging.getLogger(__name__)

HISTORY = 20


class DeployError(FreestackError):
    """The deployment could not be made or changed; the message says why and what to do."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------------
# where things are


def serving_python() -> str:
    """The serving environment's interpreter: ``FREESTACK_SERVING_PYTHON`` or ``<checkout>/.venv-serving``."""
    from freestack.config import checkout_dir

    env = os.environ.get("FREESTACK_SERVING_PYTHON")
    py = Path(env) if env else checkout_dir() / ".venv-serving" / "bin" / "python"
    if not py.exists():
        raise DeployError(
            f"the serving environment is missing ({py}): run `make serving-venv` (seldon-core 1.17.1 needs its "
            "own virtualenv) or set FREESTACK_SERVING_PYTHON to a python that has include/serving/requirements.txt"
        )
    return str(py)


def serving_dir() -> Path:
    """Where local servers keep their config, logs and model cache: ``FREESTACK_SERVING_DIR`` or
    ``<home>/.freestack/serving``."""
    from freestack.config import project_home

    env = os.environ.get("FREESTACK_SERVING_DIR")
    path = Path(env) if env else project_home() / ".freestack" / "serving"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir() -> Path:
    from freestack.config import checkout_dir

    return checkout_dir() / "include" / "serving"


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
        from freestack.hooks.datastore import DataStoreHook

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


# ------------------------------------------------------------------------------------------------------
# the deployment record


class Deployments:
    """``deployments/<model>/<name>.json`` under a storage root, replaced by compare-and-swap."""

    def __init__(self, root_uri: str, model: str):
        from freestack.storage import join, to_path

        self.root = to_path(root_uri)
        self.model = model
        self.folder = join(self.root, "deployments", model)

    def path(self, name: str):
        from freestack.storage import join

        return join(self.folder, f"{name}.json")

    def read(self, name: str) -> tuple[dict[str, Any] | None, Any]:
        from freestack.storage import cas

        got = cas.read(self.path(name))
        if got is None:
            return None, None
        return json.loads(got.data), got.token

    def get(self, name: str) -> dict[str, Any] | None:
        return self.read(name)[0]

    def write(self, name: str, record: dict[str, Any], token: Any) -> None:
        from freestack.storage import cas

        data = json.dumps(record, indent=2, sort_keys=True).encode()
        try:
            if token is None:
                cas.create(self.path(name), data)
            else:
                cas.replace(self.path(name), data, token)
        except cas.CasConflict:
            raise DeployError(
                f"deployment {self.model}/{name} was changed by someone else meanwhile; retry the deploy"
            ) from None

    def names(self) -> list[str]:
        from freestack.storage import list_objects

        try:
            return sorted(p.name[: -len(".json")] for p in list_objects(self.folder) if p.name.endswith(".json"))
        except FileNotFoundError:
            return []


def all_deployments(root_uri: str) -> list[dict[str, Any]]:
    """Every deployment record under the root, with its model and name."""
    from freestack.storage import join, to_path

    folder = join(to_path(root_uri), "deployments")
    out = []
    try:
        models = sorted(p.name for p in folder.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return out
    for model in models:
        d = Deployments(root_uri, model)
        for name in d.names():
            rec = d.get(name)
            if rec:
                out.append(rec)
    return out


# ------------------------------------------------------------------------------------------------------
# processes


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_ours(pid: int | None, config_path: str | None = None) -> bool:
    """True when ``pid`` is a live freestack model-server supervisor (for ``config_path``, if given)."""
    if not pid:
        return False
    cmd = _cmdline(int(pid))
    return "freestack.serving.server supervise" in cmd and (config_path is None or config_path in cmd)


def process_alive(record: dict[str, Any] | None) -> bool:
    if not record or record.get("state") != "serving" or record.get("target", "local") != "local":
        return False
    if record.get("hostname") != socket.gethostname():
        return False
    return is_ours(record.get("pid"), record.get("config"))


def stop_process(pid: int, *, grace_seconds: float = 15.0) -> None:
    """SIGTERM the server's process group (supervisor, gunicorn, workers, metrics), SIGKILL after grace."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # we always start servers as group leaders; anything else is not ours to signal
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        _reap(pid)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as gunicorn binds: connections of a stopped server lingering in TIME_WAIT do not count
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_port_floor() -> int:
    """The lowest port the kernel hands to client sockets (``ip_local_port_range``; 32768 if unknown).
    Servers that must be able to bind a chosen port later pick it below this."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_block(host: str = "127.0.0.1") -> int:
    """A ``port`` for ``deploy.local`` whose four ports are free on ``host``: blue (P), green (P+1)
    and their metrics (P+100, P+101), as ``FREESTACK_SERVE_PORT`` for tests and benchmarks.

    The block lies below the kernel's ephemeral range: a process that opens thousands of client
    connections may otherwise have one of them take a port that a later deploy wants to bind.
    """
    import random

    top = max(ephemeral_port_floor() - 200, 12000)
    for _ in range(200):
        p = random.randint(10000, top)
        ok = True
        for q in (p, p + 1, p + 100, p + 101):
            with socket.socket() as s:
                try:
                    s.bind((host, q))
                except OSError:
                    ok = False
                    break
        if ok:
            return p
    raise RuntimeError(f"no free port block on {host}")


def supervisors(marker: str) -> list[int]:
    """Pids of the live model-server supervisors whose command line contains ``marker`` (a path)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmd = _cmdline(int(entry.name))
            if "freestack.serving.server supervise" in cmd and marker in cmd:
                out.append(int(entry.name))
    return out


def _strays(name: str) -> list[int]:
    """Supervisors started for deployment ``name`` from this serving dir (left by a killed deploy task)."""
    return supervisors(str(serving_dir() / name) + "/")


def http_json(url: str, payload: Any = None, *, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (our own local server)
            body = resp.read()
            code = resp.status
    except urllib.error.HTTPError as exc:
        body, code = exc.read(), exc.code
    try:
        return code, json.loads(body)
    except ValueError:
        return code, body.decode(errors="replace")


def log_tail(path: str | os.PathLike, lines: int = 30) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    keep = [ln for ln in text if "pkg_resources" not in ln]
    return "\n".join(keep[-lines:])


class LocalServer:
    """One started model server (not yet switched to)."""

    def __init__(self, proc: subprocess.Popen, cfg: dict[str, Any], config_path: Path, log_path: Path):
        self.proc, self.cfg, self.config_path, self.log_path = proc, cfg, config_path, log_path

    @property
    def url(self) -> str:
        return f"http://{self.cfg['host']}:{self.cfg['port']}"

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise DeployError(
                    f"the model server for {self.cfg['model']} {self.cfg['version']} exited with code {rc} "
                    f"before it was healthy; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            try:
                code, body = http_json(f"{self.url}/health/status", timeout=2.0)
                if code == 200:
                    return
                last = f"HTTP {code}: {str(body)[:300]}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise DeployError(
            f"the model server for {self.cfg['model']} {self.cfg['version']} was not healthy within {timeout:.0f} s "
            f"({last}); last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def stop(self) -> None:
        stop_process(self.proc.pid, grace_seconds=10.0)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=1)


def start_server(
    *,
    name: str,
    model: str,
    version: str,
    version_uri: str,
    port: int,
    metrics_port: int | None,
    local,
    request_log_uri: str | None,
    color: str,
) -> LocalServer:
    """Start the supervised server for one version (returns at once; call ``wait_ready``)."""
    from freestack.config import checkout_dir

    python = serving_python()
    src_uri, src_env = model_source(version_uri)
    home = serving_dir() / name
    home.mkdir(parents=True, exist_ok=True)
    cache = home / f"{color}-cache"
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    cfg = {
        "name": name,
        "model": model,
        "version": version,
        "predictor": color,
        "model_dir": str(model_dir()),
        "host": local.host,
        "port": port,
        "metrics_port": metrics_port,
        "workers": local.workers,
        "threads": local.threads,
        "worker_class": local.worker_class,
        "timeout": local.timeout_seconds,
        "parameters": {
            "model_uri": src_uri,
            "max_batch_rows": local.max_batch_rows,
            "request_log_uri": request_log_uri or "",
            "request_log_rate": local.log_sample_rate if request_log_uri else 0.0,
        },
    }
    config_path = home / f"{color}.json"
    config_path.write_text(json.dumps(cfg, indent=2))
    log_path = home / f"{color}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(src_env)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(checkout_dir() / "plugins"), str(model_dir())]),
        "FREESTACK_SERVING_CACHE": str(cache),
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    with open(log_path, "ab") as out:
        out.write(f"\n=== {_now()} starting {model} {version} on {local.host}:{port} ({color}) ===\n".encode())
        proc = subprocess.Popen(
            [python, "-m", "freestack.serving.server", "supervise", str(config_path)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(home), env=env,
            start_new_session=True,
        )  # fmt: skip
    return LocalServer(proc, cfg, config_path, log_path)


# ------------------------------------------------------------------------------------------------------
# smoke test


def smoke_sample(version_uri: str, n: int, spec=None) -> dict[str, Any]:
    """The evaluation's test rows and in-process outputs for a version (``evaluation/smoke.json``); for a
    version evaluated before that file existed, computed here from the trainer's test split."""
    from freestack.storage import join, to_path

    path = join(to_path(version_uri), "evaluation", "smoke.json")
    try:
        sample = json.loads(path.read_text())
    except FileNotFoundError:
        if spec is None:
            raise DeployError(f"{version_uri} has no evaluation/smoke.json and no pipeline spec was given") from None
        from freestack.evaluate.core import load_model_folder, test_split
        from freestack.evaluate.core import smoke_sample as compute

        model, pre, _m, lineage, _h = load_model_folder(version_uri)
        window = lineage.get("window") or {}
        test, _parts = test_split(spec, window["end_ds"], int(window.get("days") or spec.train.window_days))
        schema = spec.source.schema_
        sample = compute(model, pre, test, schema.key, schema.target, n)
    for k in ("rows", "outputs", "labels", "keys", "predicted"):
        if k in sample:
            sample[k] = sample[k][:n]
    return sample


def smoke_test(url: str, sample: dict[str, Any], *, atol: float = 1e-4) -> dict[str, Any]:
    """Send the sample's rows; every answer must equal the in-process output (same class, values within
    ``atol``). Returns what was compared; raises DeployError naming the first row that differs."""
    payload = {"data": {"names": sample["features"], "ndarray": sample["rows"]}}
    code, body = http_json(f"{url}/api/v1.0/predictions", payload, timeout=30.0)
    if code != 200 or not isinstance(body, dict) or "data" not in body:
        raise DeployError(f"the smoke request to {url} answered HTTP {code}: {str(body)[:500]}")
    got = body["data"].get("ndarray")
    if got is None and "tensor" in body["data"]:
        t = body["data"]["tensor"]
        width = t["shape"][1] if len(t["shape"]) > 1 else 1
        got = [t["values"][i : i + width] for i in range(0, len(t["values"]), width)]
    expected = sample["outputs"]
    if not isinstance(got, list) or len(got) != len(expected):
        raise DeployError(f"the smoke request sent {len(expected)} rows and got {str(got)[:200]} back")
    worst = 0.0
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        g_row = g if isinstance(g, list) else [g]
        e_row = e if isinstance(e, list) else [e]
        if len(g_row) != len(e_row):
            raise DeployError(f"smoke row {i}: the server answered {len(g_row)} values, evaluation had {len(e_row)}")
        diff = max(abs(float(a) - float(b)) for a, b in zip(g_row, e_row, strict=True))
        worst = max(worst, diff)
        if sample.get("task") == "classification":
            if max(range(len(g_row)), key=g_row.__getitem__) != max(range(len(e_row)), key=e_row.__getitem__):
                raise DeployError(
                    f"smoke row {i} (key {sample.get('keys', ['?'] * (i + 1))[i]}): the server predicts another "
                    "class than the evaluation did in-process; the served model is not the evaluated one"
                )
        if diff > atol:
            raise DeployError(f"smoke row {i}: the server's answer differs from the evaluation's by {diff:.2e}")
    names = body["data"].get("names")
    if sample.get("classes") and names and list(names) != list(sample["classes"]):
        raise DeployError(f"the server names its outputs {names}, the model's classes are {sample['classes']}")
    return {"rows": len(expected), "max_abs_diff": worst, "meta": body.get("meta", {})}


# ------------------------------------------------------------------------------------------------------
# deploy / stop


def deploy_local(
    *,
    root_uri: str,
    model: str,
    name: str,
    version: str,
    version_uri: str,
    local,
    spec=None,
    reason: str | None = None,
) -> dict[str, Any]:
    """Serve ``version`` as deployment ``name``: start, check, switch the record, stop the old server.

    Idempotent: if the record already serves this version from a live, healthy server, nothing changes.
    """
    deployments = Deployments(root_uri, model)
    current, token = deployments.read(name)
    live = process_alive(current)
    if live and current.get("version") == version:
        code, _ = http_json(f"{current['url']}/health/status", timeout=5.0)
        if code == 200:
            log.info("%s/%s already serves %s at %s", model, name, version, current["url"])
            return {**current, "unchanged": True}
    # a server left behind by an interrupted deploy of this deployment is ours to stop
    for pid in _strays(name):
        if not (live and pid == current.get("pid")):
            log.warning("stopping a model server left by an interrupted deploy (pid %d)", pid)
            stop_process(pid)
    colors = {"blue": local.port, "green": local.port + 1}
    color = "blue"
    if live and current.get("color") == "blue":
        color = "green"
    port = colors[color]
    if not _port_free(local.host, port):
        raise DeployError(
            f"port {local.host}:{port} for the {color} server of {model}/{name} is taken by another program; "
            f"free it or set deploy.local.port in the pipeline spec (blue uses port, green port + 1)"
        )
    metrics_base = local.metrics_port or local.port + 100
    metrics_port = metrics_base + (0 if color == "blue" else 1)
    if not _port_free(local.host, metrics_port):
        raise DeployError(f"metrics port {local.host}:{metrics_port} is taken; set deploy.local.metrics_port")
    from freestack.storage import join

    request_log = str(join(deployments.root, "deployments", model, name, "requests")) if local.log_sample_rate else None
    sample = smoke_sample(version_uri, local.smoke_rows, spec)
    server = start_server(
        name=name, model=model, version=version, version_uri=version_uri, port=port, metrics_port=metrics_port,
        local=local, request_log_uri=request_log, color=color,
    )  # fmt: skip
    try:
        server.wait_ready(local.start_timeout_seconds)
        checked = smoke_test(server.url, sample)
        log.info("smoke test of %s %s at %s: %d rows equal the evaluation's (max |diff| %.1e)", model, version,
                 server.url, checked["rows"], checked["max_abs_diff"])  # fmt: skip
        previous = None
        if live:
            previous = {k: current.get(k) for k in ("version", "version_uri", "url", "pid", "color", "deployed_at")}
        history = list((current or {}).get("history", []))
        history.append({"version": version, "at": _now(), "color": color, "reason": reason})
        record = {
            "name": name,
            "model": model,
            "target": "local",
            "state": "serving",
            "version": version,
            "version_uri": version_uri,
            "url": server.url,
            "predict_url": f"{server.url}/api/v1.0/predictions",
            "metrics_url": f"http://{local.host}:{metrics_port}/metrics",
            "host": local.host,
            "port": port,
            "color": color,
            "pid": server.proc.pid,
            "hostname": socket.gethostname(),
            "config": str(server.config_path),
            "log": str(server.log_path),
            "request_log_uri": request_log,
            "workers": local.workers,
            "threads": local.threads,
            "deployed_at": _now(),
            "smoke": {"rows": checked["rows"], "max_abs_diff": checked["max_abs_diff"]},
            "previous": previous,
            "history": history[-HISTORY:],
        }
        deployments.write(name, record, token)
    except BaseException:
        server.stop()
        raise
    if live:
        time.sleep(1.0)  # let requests already sent to the old server finish before it drains
        stop_process(int(current["pid"]))
        log.info("stopped the %s server of %s %s (pid %s)", current.get("color"), model, current.get("version"),
                 current.get("pid"))  # fmt: skip
    return record


def stop_local(root_uri: str, model: str, name: str) -> dict[str, Any]:
    """Stop deployment ``name``'s server and mark its record stopped."""
    deployments = Deployments(root_uri, model)
    record, token = deployments.read(name)
    if record is None:
        raise DeployError(f"there is no deployment {model}/{name}; see `freestack serve status`")
    if record.get("target", "local") != "local":
        raise DeployError(f"{model}/{name} runs on Kubernetes; delete the SeldonDeployment there")
    if process_alive(record):
        stop_process(int(record["pid"]))
    elif record.get("hostname") not in (None, socket.gethostname()):
        raise DeployError(f"{model}/{name} is served from host {record['hostname']}; stop it there")
    record = {**record, "state": "stopped", "stopped_at": _now()}
    deployments.write(name, record, token)
    return record


def describe(record: dict[str, Any]) -> dict[str, Any]:
    """The record with what is true now: process alive, health answer."""
    out = dict(record)
    if record.get("target", "local") == "local":
        alive = process_alive(record)
        out["alive"] = alive
        health = None
        if alive:
            try:
                code, _ = http_json(f"{record['url']}/health/status", timeout=3.0)
                health = "ok" if code == 200 else f"HTTP {code}"
            except OSError as exc:
                health = f"unreachable ({exc})"
        out["health"] = health
    return out


__all__ = [
    "DeployError", "Deployments", "all_deployments", "deploy_local", "describe", "model_source", "serving_dir",
    "serving_python", "smoke_sample", "smoke_test", "stop_local", "stop_process",
]  # fmt: skip
