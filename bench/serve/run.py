"""Serving benchmark: requests/s and p50/p99 latency of the Seldon server against a bare HTTP server
and in-process predict, same model, same payloads, same load generator, in the same run.

    python -m bench.serve.run [--quick] [--repeats 3] [--warmup 2] [--duration 8] [--out bench/results/serve.json]

1. Makes a small digits MLP (``FreestackNet(kind="mlp")``, 64 features, 10 classes, hidden 128/64,
   fixed seed) and registers it as ``bench`` ``v1`` in a temporary ``file://`` registry.
2. Starts the servers, each bound to 127.0.0.1 except the stock one:
   - ``seldon``: ``python -m freestack_server`` started exactly as ``docker/serving.Dockerfile`` starts
     it (its ``CMD`` and ``ENV``, read from the Dockerfile: tests/support/images.py), Seldon 1.17.1's REST
     app under freestack's gunicorn worker, 2 workers: what production runs;
   - ``seldon_local``: the same program as the local deploy starts it (``--env-file``, deploy.local's
     defaults): ``image_vs_local`` = ``seldon`` ÷ this at concurrency 8, same round (target >= 0.95);
   - ``seldon_logged``: ``seldon`` with the request log on for every request (``log_sample_rate: 1.0``,
     Parquet under the scratch folder, as the monitor reads it): ``logging_ratio`` = its requests/s ÷
     ``seldon``'s at concurrency 8 and on the batch cell, same round (target >= 0.95);
   - ``seldon_sync``: the image with ``FREESTACK_SERVER_WORKER_CLASS=sync`` (gunicorn's sync worker, 2 x 1);
   - ``seldon_stock``: ``seldon-core-microservice freestack_server.seldon.model.Model --service-type MODEL``
     with 2 gunicorn workers: the serving image's program before it ran ``freestack_server`` (stock
     metrics); it binds 0.0.0.0, so it is started once, measured, and stopped;
   - ``mlserver``: ``python -m freestack_server`` as ``docker/mlserver.Dockerfile`` starts it: MLServer
     1.7.1 (``.venv-mlserver``) with freestack's runtime (``freestack_server.mlserver.runtime``), the same version, asked
     over the Open Inference Protocol (V2: ``/v2/models/bench/infer``, the rows as one FP32 tensor):
     the model in the server's own process (``parallel_workers: 0``), concurrent requests batched;
   - ``bare``: ``bench/serve/bare.py``, uvicorn + starlette, 2 processes on SO_REUSEPORT sockets (the
     baseline);
   - ``inproc``: the bare server's per-request work (``json.loads``, forward, ``json.dumps``) in a loop,
     no HTTP; at concurrency c it runs min(c, cores) such processes at once: the machine's ceiling;
   - ``inproc_seldon`` (diagnostic, concurrency 1 only): one request through Seldon's
     ``seldon_methods.predict`` and our envelope check, without Flask, gunicorn or HTTP.
3. For every server: concurrency 1, 8 and 32 with one 64-feature row per request, and one batch cell
   (32 rows per request at concurrency 8), ``--repeats`` rounds interleaved across servers (the stock
   server's rounds run back to back). Each cell is a fresh ``bench.serve.load`` process (asyncio,
   keep-alive connections, pre-encoded request bytes): ``--warmup`` seconds not counted, then
   ``--duration`` seconds measured. Per cell: requests/s, p50/p90/p99/max latency and quantiles,
   errors (non-200 answers or lost connections: must be 0), the generator's CPU seconds, the server's
   CPU seconds (all its processes, from /proc, and the busiest ones) and how busy the machine was.
4. Summary: medians over rounds; ``ratio_rps`` = server / ``bare`` at the same cell, and the same
   ratio within each round (``ratio_rps_by_round``). Target:
   ``seldon`` (the faster runtime) >= 0.8 of ``bare``'s requests/s at concurrency 8, with p99 < 5 ms,
   and >= 1.0 with 32 rows a request (``summary.checks``; ``summary.checks_oip`` holds MLServer's
   runtime to the same). Writes the JSON report (machine, params, raw samples, summary) and prints a
   table. ``--quick`` is a smoke size (one round, ~1.5 s per cell).

The load generator and the servers share the machine (2 cores in CI): the generator's own CPU share
is reported per cell, so a ratio can be read with what the load cost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import free_port, host, parser, usable_cores, write_report

REPO = Path(__file__).resolve().parents[2]
SERVING_PY = REPO / ".venv-serving" / "bin" / "python"
MLSERVER_PY = REPO / ".venv-mlserver" / "bin" / "python"
STOCK_BIN = REPO / ".venv-serving" / "bin" / "seldon-core-microservice"
ROUTE = "/api/v1.0/predictions"
V2_ROUTE = "/v2/models/bench/infer"
N_FEATURES = 64
CLASSES = list(range(10))
HIDDEN = [128, 64]
CONCURRENCY = (1, 8, 32)
BATCH_ROWS = 32
BATCH_CONCURRENCY = 8
SERVERS = (
    "seldon",
    "seldon_local",
    "seldon_logged",
    "seldon_sync",
    "seldon_stock",
    "mlserver",
    "bare",
    "inproc",
    "inproc_seldon",
)
HTTP_SERVERS = ("seldon", "seldon_local", "seldon_logged", "seldon_sync", "seldon_stock", "mlserver", "bare")
#: the runtime's batching under test
MLSERVER_EXTRA: dict[str, Any] = {"batch_rows": 64}

#: what each image-started Seldon server adds to the image's ENV (as a manifest would)
IMAGE_VARIANTS: dict[str, dict[str, str]] = {
    "seldon": {},  # the image as it is: FREESTACK_SERVER_* defaults (2 workers, the freestack worker)
    "seldon_logged": {},
    "seldon_sync": {"FREESTACK_SERVER_WORKER_CLASS": "sync"},  # gunicorn's sync worker, 2 x 1
}
BARE_WORKERS = 2


# ---------------------------------------------------------------------------------------------------------
# the model and the payloads


def make_model(workdir: Path) -> tuple[str, Path]:
    """Register the benchmark's MLP; return (version URI, local version folder)."""
    import numpy as np
    import torch

    from freestack.ml.models import FreestackNet
    from freestack.registry.core import ModelRegistry

    features = [f"px_{i}" for i in range(N_FEATURES)]
    torch.manual_seed(0)
    net = FreestackNet(
        kind="mlp",
        task="classification",
        n_features=N_FEATURES,
        n_outputs=len(CLASSES),
        hidden=HIDDEN,
        features=features,
        classes=CLASSES,
    )
    rng = np.random.default_rng(0)
    mean, std = rng.uniform(0, 8, N_FEATURES), rng.uniform(1, 6, N_FEATURES)
    net.set_scaling(mean, std)
    src = workdir / "model"
    for old in (src, workdir / "registry"):  # a kept --workdir: register afresh
        shutil.rmtree(old, ignore_errors=True)
    net.save_pretrained(src)
    pre = {
        "task": "classification",
        "features": features,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "classes": CLASSES,
        "target": "label",
        "target_mean": 0.0,
        "target_std": 1.0,
    }
    (src / "preprocessing.json").write_text(json.dumps(pre))
    root = (workdir / "registry").as_uri()
    uri = ModelRegistry(root, "bench").register(src.as_uri(), "v1")
    return uri, workdir / "registry" / "registry" / "bench" / "v1"


def make_bodies(workdir: Path) -> dict[str, Path]:
    """One digits row (pixels 0..16 as JSON floats) and a batch of BATCH_ROWS rows, in Seldon's message
    (``row``, ``batch``) and as a V2 inference request (``row_v2``, ``batch_v2``)."""
    import numpy as np

    rng = np.random.default_rng(1)
    rows = rng.integers(0, 17, size=(BATCH_ROWS, N_FEATURES)).astype(float).tolist()
    out = {}
    for name, data in (("row", rows[:1]), ("batch", rows)):
        path = workdir / f"body-{name}.json"
        path.write_text(json.dumps({"data": {"ndarray": data}}))
        out[name] = path
        v2 = {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [len(data), N_FEATURES],
                    "data": [v for r in data for v in r],
                }
            ]
        }
        out[f"{name}_v2"] = workdir / f"body-{name}-v2.json"
        out[f"{name}_v2"].write_text(json.dumps(v2))
    return out


def check_answer(name: str, answer: dict[str, Any], expected: list[list[float]]) -> None:
    """Every server must answer the same probabilities (Seldon's and the bare server's shape alike, or
    the V2 answer's ``probabilities`` output)."""
    import numpy as np

    if "outputs" in answer:
        probs = next((o for o in answer["outputs"] if o["name"] == "probabilities"), {})
        got = np.reshape(np.asarray(probs.get("data", []), dtype=np.float64), probs.get("shape", [-1]))
    else:
        got = np.asarray(answer.get("data", {}).get("ndarray"), dtype=np.float64)
    if got.shape != np.shape(expected) or not np.allclose(got, expected, atol=1e-5):
        raise SystemExit(f"{name} answered {json.dumps(answer)[:500]}, expected probabilities {expected}")


def expected_probs(folder: Path, body: bytes) -> list[list[float]]:
    import torch

    from freestack.ml.models import FreestackNet

    net = FreestackNet.from_pretrained(str(folder))
    msg = json.loads(body)
    if "inputs" in msg:
        x = torch.tensor(msg["inputs"][0]["data"], dtype=torch.float32).reshape(msg["inputs"][0]["shape"])
    else:
        x = torch.tensor(msg["data"]["ndarray"], dtype=torch.float32)
    return net.predict_proba(x).tolist()


# ---------------------------------------------------------------------------------------------------------
# processes


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "FREESTACK_"))}
    env.update(extra)
    return env


class Server:
    """One server under test: its process group, port and log."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        log: Path,
        *,
        env: dict[str, str],
        cwd: Path,
        description: str,
        settings: dict[str, Any],
        route: str = ROUTE,
        v2: bool = False,
    ):
        self.name, self.cmd, self.port, self.log = name, cmd, port, log
        self.route, self.v2 = route, v2  # where it is asked, and whether over V2 (the *_v2 bodies)
        self.description, self.settings = description, settings
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )

    def wait_ready(self, body: bytes, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{self.port}{self.route}",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=5) as r:
                    return json.loads(r.read())
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.3)
        self.stop()
        raise SystemExit(
            f"{self.name} did not answer within {timeout:.0f} s ({last}):\n{self.log.read_text()[-3000:]}"
        )

    def cpu_seconds(self) -> tuple[float, float]:
        return _group_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _group_cpu(pgid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every live process in process group ``pgid``."""
    per = _group_cpu_by_pid(pgid)
    return sum(u for u, _ in per.values()), sum(s for _, s in per.values())


def _group_cpu_by_pid(pgid: int) -> dict[int, tuple[float, float]]:
    """{pid: (user, system) CPU seconds} of the live processes in process group ``pgid``."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            out[int(entry.name)] = (int(fields[11]) / _TICK, int(fields[12]) / _TICK)
    return out


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def start_servers(
    names: list[str], workdir: Path, uri: str, folder: Path, bodies: dict[str, Path]
) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    plugins = str(REPO / "plugins")
    for name in names:
        port = free_port()
        log = workdir / f"{name}.log"
        if name in ("seldon", "seldon_logged", "seldon_sync"):
            extra = dict(IMAGE_VARIANTS[name])
            if name == "seldon_logged":  # every request into the request log, as deploy writes it by default
                extra.update(
                    FREESTACK_REQUEST_LOG_URI=(workdir / "monitoring" / "bench").as_uri(),
                    FREESTACK_REQUEST_LOG_RATE="1.0",
                )
            servers[name] = _image_server(
                name,
                "seldon",
                uri,
                workdir,
                extra,
                "python -m freestack_server as docker/serving.Dockerfile starts it (its CMD "
                "and ENV) on 127.0.0.1: Seldon's REST app under freestack's gunicorn worker",
            )
        elif name == "seldon_local":
            servers[name] = _local_server(workdir, uri)
        elif name == "seldon_stock":
            cmd = [
                str(STOCK_BIN),
                "freestack_server.seldon.model.Model",
                "--service-type",
                "MODEL",
                "--http-port",
                str(port),
                "--metrics-port",
                str(free_port()),
                "--grpc-port",
                str(free_port()),
            ]
            servers[name] = Server(
                name,
                cmd,
                port,
                log,
                env=_env(PYTHONPATH=plugins, FREESTACK_MODEL_URI=uri, GUNICORN_WORKERS="2"),
                cwd=REPO,
                settings={"workers": 2, "threads": 1, "worker_class": "sync"},
                description="seldon-core-microservice with freestack's model class, 2 gunicorn workers: the serving "
                "image's program before it ran freestack_server (binds 0.0.0.0)",
            )
        elif name == "mlserver":
            servers[name] = _mlserver(workdir, uri)
        elif name == "bare":
            cmd = [
                sys.executable,
                "-m",
                "bench.serve.bare",
                "--port",
                str(port),
                "--workers",
                str(BARE_WORKERS),
            ]
            servers[name] = Server(
                name,
                cmd,
                port,
                log,
                env=_env(BENCH_SERVE_MODEL_DIR=str(folder), PYTHONPATH=str(REPO)),
                cwd=REPO,
                settings={"workers": BARE_WORKERS},
                description="uvicorn + starlette (bench/serve/bare.py)",
            )
    try:
        for s in servers.values():
            body = bodies["row_v2" if s.v2 else "row"].read_bytes()
            s.first_answer = s.wait_ready(body)
            check_answer(s.name, s.first_answer, expected_probs(folder, body))
    except BaseException:  # one did not come up: the others are stopped too, not left running
        for s in servers.values():
            s.stop()
        raise
    wait_idle(list(servers.values()))
    return servers


def _image_server(
    name: str, runtime: str, uri: str, workdir: Path, extra: dict[str, str], description: str, **kwargs: Any
) -> Server:
    """The runtime's image command and ENV (tests/support/images.py) with a manifest's ``extra`` variables."""
    from tests.support.images import image_launch

    port = free_port()
    argv, env = image_launch(
        runtime,
        uri,
        workdir / name,
        port,
        env={"FREESTACK_SERVER_MODEL": "bench", "FREESTACK_SERVER_VERSION": "v1", **extra},
    )
    env.update(
        {
            "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(free_port()),
            "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(free_port()),
        }
    )
    (workdir / name).mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in env.items() if k.startswith("FREESTACK_SERVER_") or k in extra}
    return Server(
        name,
        argv,
        port,
        workdir / f"{name}.log",
        env=env,
        cwd=workdir / name,
        settings=settings,
        description=description,
        **kwargs,
    )


def _local_server(workdir: Path, uri: str) -> Server:
    """The local deploy's launch of the same program: its variables in an env file (``--env-file``)."""
    from freestack.serving.launch import Slot, server_config
    from freestack.serving.spec import LocalTarget
    from freestack_server.core.config import write_env_file

    port = free_port()
    launch = server_config(
        "bench",
        "bench",
        "v1",
        Slot("blue", port, free_port()),
        LocalTarget(log_sample_rate=0),
        model_uri=uri,
        request_log_uri=None,
    )
    env_file = workdir / "seldon_local.env"
    write_env_file(env_file, launch.variables())
    return Server(
        "seldon_local",
        [str(SERVING_PY), "-m", "freestack_server", "--env-file", str(env_file)],
        port,
        workdir / "seldon_local.log",
        env=_env(PYTHONPATH=str(REPO / "plugins")),
        cwd=workdir,
        settings=launch.config.env(),
        description="python -m freestack_server --env-file F, as the local "
        "deploy starts it (deploy.local's defaults)",
    )


def _mlserver(workdir: Path, uri: str) -> Server:
    variables = {
        "FREESTACK_SERVER_BATCH_ROWS": str(MLSERVER_EXTRA["batch_rows"]),
        "FREESTACK_TORCH_THREADS": "1",
    }
    return _image_server(
        "mlserver",
        "mlserver",
        uri,
        workdir,
        variables,
        "python -m freestack_server as docker/mlserver.Dockerfile starts it: MLServer 1.7.1 + "
        "freestack_server.mlserver.runtime (Open Inference Protocol, V2) on 127.0.0.1",
        route=V2_ROUTE,
        v2=True,
    )


def wait_idle(servers: list[Server], timeout: float = 90.0) -> None:
    """Answering once means one worker is up; wait until every worker has loaded (the servers' CPU
    time stops growing) so that no cell starts while a sibling is still booting."""
    deadline = time.monotonic() + timeout
    last = sum(sum(s.cpu_seconds()) for s in servers)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(sum(s.cpu_seconds()) for s in servers)
        if now - last < 0.05 * max(1, len(servers)):
            return
        last = now


# ---------------------------------------------------------------------------------------------------------
# the measurements


def measure_http(
    server: Server, body: Path, concurrency: int, warmup: float, duration: float
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.serve.load",
        "--port",
        str(server.port),
        "--path",
        server.route,
        "--body-file",
        str(body),
        "--concurrency",
        str(concurrency),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    ]
    load = os.getloadavg()[0]
    gen = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=_env(PYTHONPATH=str(REPO)),
    )
    marks: dict[str, Any] = {}
    result = None
    for line in gen.stdout:
        line = line.strip()
        if line == "W":
            marks["cpu0"], marks["busy0"] = _group_cpu_by_pid(server.proc.pid), _machine_busy()
        elif line == "E":
            marks["cpu1"], marks["busy1"] = _group_cpu_by_pid(server.proc.pid), _machine_busy()
        elif line.startswith("{"):
            result = json.loads(line)
    err = gen.stderr.read()
    gen.wait(timeout=60)
    if result is None:
        raise SystemExit(
            f"the load generator failed on {server.name} (exit {gen.returncode}):\n{err[-3000:]}"
        )
    window = result["duration_s"]
    before, after = marks["cpu0"], marks["cpu1"]
    per_pid = {
        pid: (u - before.get(pid, (0.0, 0.0))[0], s - before.get(pid, (0.0, 0.0))[1])
        for pid, (u, s) in after.items()
    }
    user, system = sum(u for u, _ in per_pid.values()), sum(s for _, s in per_pid.values())
    cpu = user + system
    busy = marks["busy1"][0] - marks["busy0"][0]
    total = marks["busy1"][1] - marks["busy0"][1]
    result.update(
        {
            "server_cpu_s": round(cpu, 3),
            "server_system_cpu_fraction": round(system / cpu, 3) if cpu else None,
            # the busiest processes' CPU seconds: how evenly the workers shared the load
            "server_process_cpu_s": sorted(
                (round(u + s, 2) for u, s in per_pid.values() if u + s >= 0.01), reverse=True
            )[:4],
            "server_cores_busy": round(cpu / window, 3) if window else None,
            "server_cpu_us_per_request": round(cpu / result["requests"] * 1e6, 1)
            if result["requests"]
            else None,
            "machine_busy_fraction": round(busy / total, 3) if total else None,
            "loadavg_1m_before": load,
        }
    )
    return result


def measure_inproc(
    mode: str, body: Path, procs: int, warmup: float, duration: float, *, folder: Path, uri: str
) -> dict[str, Any]:
    from bench.serve.load import summarize_hist

    if mode == "bare":
        cmd = [sys.executable, "-m", "bench.serve.inproc", "--mode", "bare", "--model-dir", str(folder)]
        env = _env(PYTHONPATH=str(REPO))
    else:
        cmd = [
            str(SERVING_PY),
            "-m",
            "bench.serve.inproc",
            "--mode",
            "seldon",
            "--model-dir",
            str(folder),
            "--model-uri",
            uri,
        ]
        env = _env(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]))
    cmd += ["--body-file", str(body), "--warmup", str(warmup), "--duration", str(duration)]
    load = os.getloadavg()[0]
    ps = [
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for _ in range(procs)
    ]
    for p in ps:  # every process loaded and warm: start them together
        line = p.stdout.readline()
        while line and line.strip() != "ready":  # libraries may print while loading
            line = p.stdout.readline()
        if line.strip() != "ready":
            for q in ps:
                q.kill()
            raise SystemExit(f"in-process {mode} failed before its loop:\n{p.stderr.read()[-3000:]}")
    for p in ps:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in ps:
        out, err = p.communicate(timeout=warmup + duration + 180)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            raise SystemExit(f"in-process {mode} failed (exit {p.returncode}):\n{err[-3000:]}")
        outs.append(json.loads(lines[-1]))
    hist: dict[int, int] = {}
    for o in outs:
        for k, v in o["latency_us_hist"].items():
            hist[int(k)] = hist.get(int(k), 0) + v
    n = sum(o["requests"] for o in outs)
    return {
        "processes": procs,
        "duration_s": min(o["duration_s"] for o in outs),
        "requests": n,
        "errors": sum(o["errors"] for o in outs),
        "rps": round(sum(o["rps"] for o in outs), 2),
        **summarize_hist(hist),
        "per_process_rps": [o["rps"] for o in outs],
        "cpu_us_per_request": round(sum(o["cpu_s"] for o in outs) / n * 1e6, 2) if n else None,
        "latency_us_hist": {str(k): v for k, v in sorted(hist.items())},
        "loadavg_1m_before": load,
    }


QUANTILES = (1, 10, 25, 50, 75, 90, 95, 99, 99.9)


def latency_quantiles(hist: dict[str, int]) -> dict[str, float | None]:
    """What the report keeps of a sample's latency histogram: its quantiles in ms (the sample's own
    p50/p99 fields come from the same 3-significant-digit histogram)."""
    from bench.serve.load import percentile

    h = {int(k): v for k, v in hist.items()}
    return {f"p{q:g}": (None if (v := percentile(h, q)) is None else round(v / 1000.0, 3)) for q in QUANTILES}


def cells(concurrency: list[int]) -> list[tuple[str, str, int]]:
    """(cell label, body name, concurrency)."""
    out = [(f"c{c}", "row", c) for c in concurrency]
    out.append((f"batch{BATCH_ROWS}_c{BATCH_CONCURRENCY}", "batch", BATCH_CONCURRENCY))
    return out


# ---------------------------------------------------------------------------------------------------------
# the report


def _median(samples: list[dict[str, Any]], key: str) -> float | None:
    vals = [s[key] for s in samples if s.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def summarise(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "statistic": "median over rounds; ratio_rps = server / bare at the same cell (medians); "
        "ratio_rps_by_round = the same within each round"
    }
    for server, per_cell in samples.items():
        row = {}
        for cell, ss in per_cell.items():
            r = {k: _median(ss, k) for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")}
            r["errors"] = sum(s["errors"] for s in ss)
            r["rounds"] = len(ss)
            for k in (
                "generator_cpu_fraction",
                "server_cores_busy",
                "server_cpu_us_per_request",
                "machine_busy_fraction",
                "cpu_us_per_request",
            ):
                if any(k in s for s in ss):
                    r[k] = _median(ss, k)
            row[cell] = r
        out[server] = row
    base = out.get("bare", {})
    for server, row in out.items():
        if server in ("statistic", "bare") or not isinstance(row, dict):
            continue
        for cell, r in row.items():
            b = base.get(cell)
            if b and b.get("rps") and r.get("rps"):
                r["ratio_rps"] = round(r["rps"] / b["rps"], 3)
            # the same ratio within each round (both measured minutes apart at most), then the median
            bare_rounds = {
                s["round"]: s["rps"] for s in samples.get("bare", {}).get(cell, []) if s.get("rps")
            }
            rounds = [
                round(s["rps"] / bare_rounds[s["round"]], 3)
                for s in samples[server][cell]
                if s.get("rps") and s.get("round") in bare_rounds
            ]
            if rounds and server != "seldon_stock":  # the stock server's rounds run after the others
                r["ratio_rps_by_round"] = rounds
                r["ratio_rps_same_round_median"] = round(statistics.median(rounds), 3)
    out["logging"] = _logging_ratio(samples)
    out["image_vs_local"] = _same_round_ratio(samples, "seldon", "seldon_local", 0.95)
    s8, sb = (
        out.get("seldon", {}).get("c8", {}),
        out.get("seldon", {}).get(f"batch{BATCH_ROWS}_c{BATCH_CONCURRENCY}", {}),
    )
    if s8:
        out["checks"] = {
            "target": "seldon >= 0.8 x bare requests/s at concurrency 8 with p99 < 5 ms, >= 1.0 x bare with "
            f"{BATCH_ROWS} rows a request, 0 errors",
            "seldon_c8_ratio": s8.get("ratio_rps"),
            "seldon_c8_ratio_same_round_median": s8.get("ratio_rps_same_round_median"),
            "seldon_c8_p99_ms": s8.get("p99_ms"),
            "ratio_ok": bool(s8.get("ratio_rps") and s8["ratio_rps"] >= 0.8),
            "p99_ok": bool(s8.get("p99_ms") is not None and s8["p99_ms"] < 5.0),
            "seldon_batch_ratio": sb.get("ratio_rps"),
            "batch_ok": bool(sb.get("ratio_rps") and sb["ratio_rps"] >= 1.0),
            "errors_ok": all(
                r.get("errors", 0) == 0
                for srv, row in out.items()
                if isinstance(row, dict) and srv != "checks"
                for r in row.values()
                if isinstance(r, dict)
            ),
        }
    m8, mb = (
        out.get("mlserver", {}).get("c8", {}),
        out.get("mlserver", {}).get(f"batch{BATCH_ROWS}_c{BATCH_CONCURRENCY}", {}),
    )
    if m8:
        out["checks_oip"] = {
            "target": "the faster runtime (here mlserver) >= 0.8 x bare requests/s at concurrency 8 with p99 < 5 ms, "
            f"and >= 1.0 x bare with {BATCH_ROWS} rows a request",
            "mlserver_c8_ratio": m8.get("ratio_rps"),
            "mlserver_c8_p99_ms": m8.get("p99_ms"),
            "mlserver_batch_ratio": mb.get("ratio_rps"),
            "c8_ok": bool(m8.get("ratio_rps") and m8["ratio_rps"] >= 0.8 and (m8.get("p99_ms") or 1e9) < 5.0),
            "batch_ok": bool(mb.get("ratio_rps") and mb["ratio_rps"] >= 1.0),
        }
    return out


def _logging_ratio(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Requests/s with the request log on ÷ off (seldon_logged / seldon), per round, then the median; the
    target is on the one-row cell at concurrency 8 (the batch cell is reported beside it)."""
    out: dict[str, Any] = {
        "target": "seldon_logged >= 0.95 x seldon requests/s at concurrency 8, one row a request"
    }
    for cell in ("c8", f"batch{BATCH_ROWS}_c{BATCH_CONCURRENCY}"):
        off = {s["round"]: s["rps"] for s in samples.get("seldon", {}).get(cell, []) if s.get("rps")}
        on = [
            s["rps"] / off[s["round"]]
            for s in samples.get("seldon_logged", {}).get(cell, [])
            if s.get("round") in off
        ]
        if on:
            out[cell] = round(statistics.median(on), 3)
            out[f"{cell}_by_round"] = [round(x, 3) for x in on]
    out["ok"] = bool(out.get("c8", 0) >= 0.95)
    return out


def _same_round_ratio(
    samples: dict[str, dict[str, list[dict[str, Any]]]], top: str, bottom: str, target: float
) -> dict[str, Any]:
    """Requests/s of ``top`` ÷ ``bottom`` at concurrency 8, per round, then the median."""
    below = {s["round"]: s["rps"] for s in samples.get(bottom, {}).get("c8", []) if s.get("rps")}
    ratios = [
        s["rps"] / below[s["round"]] for s in samples.get(top, {}).get("c8", []) if s.get("round") in below
    ]
    if not ratios:
        return {}
    median = round(statistics.median(ratios), 3)
    return {
        "target": f"{top} >= {target} x {bottom} requests/s at concurrency 8",
        "c8": median,
        "c8_by_round": [round(x, 3) for x in ratios],
        "ok": median >= target,
    }


def _request_log_in_process(names: list[str], uri: str, duration: float, repeats: int) -> dict[str, Any]:
    """``bench.serve.requestlog`` in the serving environment: the log's cost on the model's predict alone."""
    if "seldon_logged" not in names:
        return {}
    cmd = [
        str(SERVING_PY),
        "-m",
        "bench.serve.requestlog",
        "--model-uri",
        uri,
        "--seconds",
        str(min(duration, 4.0)),
        "--repeats",
        str(max(repeats, 3)),
    ]
    got = subprocess.run(
        cmd,
        cwd=REPO,
        env=_env(PYTHONPATH=f"{REPO / 'plugins'}:{REPO}"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in got.stdout.splitlines() if ln.startswith("{")]
    return {
        "logging_in_process": json.loads(lines[-1])
        if got.returncode == 0 and lines
        else {"error": got.stderr[-500:]}
    }


def _recorded(
    names: list[str],
    uri: str,
    summary: dict[str, Any],
    warmup: float,
    duration: float,
    workdir: Path,
    repeats: int,
) -> dict[str, Any]:
    """What a version records as its serving costs (``freestack.serving.costs``, as evaluate measures it:
    the deploy's own server started, one row a request, one at a time), ``repeats`` times, against this
    run's concurrency-1 cell of the same runtime's server (its median over rounds), same version, same
    machine: ``ratio`` = recorded / benchmark per latency quantile, each time (``ratios``) and their median
    (``ratio``); the target is agreement within 25% (0.75 to 1.25)."""
    from freestack.serving.costs import measure_serving
    from freestack.serving.spec import DeploySpec

    os.environ["FREESTACK_SERVING_DIR"] = str(workdir / "serving")
    rows = json.loads((workdir / "body-batch.json").read_text())["data"]["ndarray"]
    sample = {"task": "classification", "features": [f"px_{i}" for i in range(N_FEATURES)], "rows": rows}
    out: dict[str, Any] = {}
    for runtime in ("seldon", "mlserver"):
        bench = (summary.get(runtime) or {}).get("c1")
        if runtime not in names or not bench:
            continue
        measure = {"seconds": duration, "warmup_seconds": warmup, "batch_rows": BATCH_ROWS, "concurrency": 8}
        deploy = DeploySpec(runtime=runtime, measure=measure)
        got = [
            measure_serving(uri, model="bench", version="v1", deploy=deploy, sample=sample).model_dump()
            for _ in range(repeats)
        ]
        ratios = {q: [round(g[f"latency_{q}_ms"] / bench[f"{q}_ms"], 3) for g in got] for q in ("p50", "p99")}
        ratio = {q: statistics.median(r) for q, r in ratios.items()}
        out[runtime] = {
            "recorded": {
                k: statistics.median(g[k] for g in got) for k in ("latency_p50_ms", "latency_p99_ms")
            },
            "measurements": got,
            "bench_c1": {q: bench.get(f"{q}_ms") for q in ("p50", "p99")},
            "ratios": ratios,
            "ratio": ratio,
            "agree": all(0.75 <= r <= 1.25 for r in ratio.values()),
        }
        print(f"  recorded {runtime}: vs the bench's c=1 cell {ratios}", flush=True)
    return {"recorded": out} if out else {}


def machine() -> dict[str, Any]:
    import starlette
    import torch
    import uvicorn

    info = {
        **host(),
        "torch": torch.__version__,
        "uvicorn": uvicorn.__version__,
        "starlette": starlette.__version__,
    }
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        pass
    if SERVING_PY.exists():
        code = (
            "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('seldon-core', 'flask', 'werkzeug', 'gunicorn', 'flask-cors', 'torch', 'numpy')}))"
        )
        got = subprocess.run([str(SERVING_PY), "-c", code], capture_output=True, text=True, timeout=60)
        if got.returncode == 0:
            info["serving_env"] = json.loads(got.stdout)
    return info


def print_table(report: dict[str, Any]) -> None:
    s = report["summary"]
    print(
        f"\nServing benchmark ({report['machine']['cores']} cores, {report['params']['repeats']} round(s), "
        f"{report['params']['duration_s']} s per cell): medians"
    )
    print(
        f"{'server':<14} {'cell':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'ratio':>6} "
        f"{'srv cores':>9} {'gen cpu':>7}"
    )
    for server in SERVERS:
        if server not in s:
            continue
        for cell, r in s[server].items():
            print(
                f"{server:<14} {cell:<12} {r['rps'] or 0:>9.1f} {r['p50_ms'] or 0:>8.2f} {r['p99_ms'] or 0:>8.2f} "
                f"{r['errors']:>6} {r.get('ratio_rps', '') or '':>6} {r.get('server_cores_busy', '') or '':>9} "
                f"{r.get('generator_cpu_fraction', '') or '':>7}"
            )
    if "checks" in s:
        c = s["checks"]
        print(
            f"\nseldon at c=8: {c['seldon_c8_ratio']} x bare, p99 {c['seldon_c8_p99_ms']} ms "
            f"(ratio_ok={c['ratio_ok']}, p99_ok={c['p99_ok']}, errors_ok={c['errors_ok']}); {BATCH_ROWS} rows a "
            f"request: {c['seldon_batch_ratio']} x bare (batch_ok={c['batch_ok']})"
        )
    if s.get("logging"):
        print(f"request log on / off: {s['logging']}")
    if s.get("logging_in_process"):
        print(f"request log on / off, the model's predict alone: {s['logging_in_process']}")


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench.serve.run", __doc__, out="serve.json", workdir=True)
    ap.add_argument("--quick", action="store_true", help="smoke size: 1 round, 0.5 s warm-up, 1 s per cell")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds not counted per cell (default 2)")
    ap.add_argument("--duration", type=float, default=None, help="seconds measured per cell (default 8)")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS)
    )
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 8.0)
    conc = [int(c) for c in args.concurrency.split(",") if c.strip()]
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if set(names) - set(SERVERS):
        ap.error(f"--servers must be a subset of {','.join(SERVERS)}")
    if any(n.startswith("seldon") for n in names) and not SERVING_PY.exists():
        ap.error(f"{SERVING_PY} is missing: run `make serving-venv` first")
    if "mlserver" in names and not MLSERVER_PY.exists():
        ap.error(f"{MLSERVER_PY} is missing: run `make mlserver-venv` first")

    own = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="freestack-bench-serve-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIRFLOW_HOME", str(workdir / "airflow"))
    servers: dict[str, Server] = {}
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        uri, folder = make_model(workdir)
        bodies = make_bodies(workdir)
        plan = cells(conc)
        for n in names:
            samples[n] = {label: [] for label, _, c in plan if n != "inproc_seldon" or (label == "c1")}
        interleaved = [n for n in names if n in HTTP_SERVERS and n != "seldon_stock"]
        print(
            f"model {uri}; servers {', '.join(names)}; {repeats} round(s) of {warmup}+{duration} s per cell",
            flush=True,
        )
        servers = start_servers(interleaved, workdir, uri, folder, bodies)
        answers = {n: s.first_answer for n, s in servers.items()}

        def one(name: str, label: str, body: str, c: int, r: int) -> None:
            if name in servers:
                s = measure_http(
                    servers[name], bodies[f"{body}_v2" if servers[name].v2 else body], c, warmup, duration
                )
            else:
                procs = 1 if name == "inproc_seldon" else min(c, usable_cores())
                s = measure_inproc(
                    "bare" if name == "inproc" else "seldon",
                    bodies[body],
                    procs,
                    warmup,
                    duration,
                    folder=folder,
                    uri=uri,
                )
            s["round"] = r
            samples[name][label].append(s)
            print(
                f"  {name:<14} {label:<12} {s['rps']:>9.1f} req/s  p50 {s['p50_ms']} ms  p99 {s['p99_ms']} ms"
                f"  errors {s['errors']}",
                flush=True,
            )

        for r in range(repeats):
            print(f"round {r + 1}/{repeats}", flush=True)
            for name in (
                names if r % 2 == 0 else names[::-1]
            ):  # every other round in reverse: no server always first
                if name == "seldon_stock":
                    continue
                for label, body, c in plan:
                    if label in samples[name]:
                        one(name, label, body, c, r)
        for srv in list(servers.values()):
            srv.stop()
        if "seldon_stock" in names:
            print("seldon_stock (started once, measured, stopped)", flush=True)
            stock = start_servers(["seldon_stock"], workdir, uri, folder, bodies)
            servers.update(stock)
            answers["seldon_stock"] = stock["seldon_stock"].first_answer
            try:
                for r in range(repeats):
                    for label, body, c in plan:
                        one("seldon_stock", label, body, c, r)
            finally:
                stock["seldon_stock"].stop()
        for per_cell in samples.values():
            for ss in per_cell.values():
                for sample in ss:
                    sample["latency_ms_quantiles"] = latency_quantiles(sample.pop("latency_us_hist"))
        report = {
            "name": "serve",
            "machine": machine(),
            "params": {
                "repeats": repeats,
                "warmup_s": warmup,
                "duration_s": duration,
                "concurrency": conc,
                "cells": {
                    label: {"rows_per_request": BATCH_ROWS if body == "batch" else 1, "concurrency": c}
                    for label, body, c in plan
                },
                "model": {
                    "kind": "mlp",
                    "n_features": N_FEATURES,
                    "hidden": HIDDEN,
                    "classes": len(CLASSES),
                    "torch_threads_per_process": 1,
                },
                "payload": '{"data": {"ndarray": [[64 floats 0..16]]}} POSTed to ' + ROUTE + "; mlserver: "
                '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, 64], ...}]} to ' + V2_ROUTE,
                "request_bytes": {k: v.stat().st_size for k, v in bodies.items()},
                "servers": {
                    n: {"description": s.description, "settings": s.settings} for n, s in servers.items()
                },
                "inproc": "the bare server's per-request work in a loop, min(c, cores) processes at concurrency c",
                "inproc_seldon": "json.loads + envelope check + seldon_methods.predict + json.dumps, 1 process",
                "load_generator": "bench/serve/load.py: 1 process, asyncio (uvloop), keep-alive raw connections, "
                "closed loop, pre-encoded request",
                "latency_ms_quantiles": "per sample, from the generator's latency histogram (us, 3 significant digits)",
            },
            "first_answers": answers,
            "samples": samples,
            "summary": {
                **(summary := summarise(samples)),
                **_request_log_in_process(names, uri, duration, repeats),
                **_recorded(names, uri, summary, warmup, duration, workdir, repeats),
            },
        }
    finally:
        for srv in servers.values():
            srv.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    out = write_report(report, args.out, indent=1)
    print_table(report)
    print(f"\nreport: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
