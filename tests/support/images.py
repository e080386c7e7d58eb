"""The model server started exactly as its image starts it: the Dockerfile's ``CMD`` and ``ENV``, read from
the Dockerfile itself, run in the serving environment of this checkout (``.venv-serving`` for
``docker/serving.Dockerfile``, ``.venv-mlserver`` for ``docker/mlserver.Dockerfile``).

Only what a container gets from outside differs, as Seldon's operator or a manifest would give it: the
ports (``PREDICTIVE_UNIT_*``: free ones here), the model (``FREESTACK_MODEL_URI``) and the interface
(``FREESTACK_SERVER_HOST=127.0.0.1``: nothing here listens beyond loopback). The image's ``pip install``
of the project is ``PYTHONPATH=plugins`` here.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "seldon": ROOT / "docker" / "serving.Dockerfile",
    "mlserver": ROOT / "docker" / "mlserver.Dockerfile",
}
PYTHONS = {
    "seldon": ROOT / ".venv-serving" / "bin" / "python",
    "mlserver": ROOT / ".venv-mlserver" / "bin" / "python",
}
#: what an image's environment holds that only makes sense inside the image
IMAGE_ONLY = ("HOME", "PIP_", "FREESTACK_SERVER_WORKDIR")


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each instruction, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def image_cmd(dockerfile: Path) -> list[str]:
    """The image's ``CMD``, which must be in exec form (a JSON list)."""
    cmds = [args for word, args in instructions(dockerfile) if word == "CMD"]
    return json.loads(cmds[-1])


def image_env(dockerfile: Path) -> dict[str, str]:
    """Every ``ENV`` of the image, in order (``KEY=value`` pairs; quotes as a shell reads them)."""
    env: dict[str, str] = {}
    for word, args in instructions(dockerfile):
        if word == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@dataclass
class ImageServer:
    """A model server started as its image starts it."""

    proc: subprocess.Popen
    port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as the kubelet sends it; the exit code (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            return None


def image_launch(
    runtime: str,
    model_uri: str,
    workdir: Path,
    port: int,
    *,
    env: dict[str, str] | None = None,
    first_on_path: tuple[Path, ...] = (),
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the ``runtime``'s image command on ``port`` (gRPC ``port + 1``, metrics
    ``port + 2``); ``env``: what a manifest adds (it wins over the image's, as a container's env does);
    ``first_on_path``: folders put before the project's on ``PYTHONPATH`` (a test's fault, say)."""
    dockerfile = DOCKERFILES[runtime]
    variables = {k: v for k, v in image_env(dockerfile).items() if not k.startswith(IMAGE_ONLY)}
    variables.update(
        {
            "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(port),
            "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(port + 1),
            "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(port + 2),
            "FREESTACK_SERVER_HOST": "127.0.0.1",
            "FREESTACK_MODEL_URI": model_uri,
            "FREESTACK_SERVER_WORKDIR": str(workdir),
        }
    )
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("FREESTACK_", "PYTHON", "VIRTUAL_ENV"))
    }
    cmd = image_cmd(dockerfile)
    assert cmd[0] == "python", f"{dockerfile}'s CMD does not start with python: {cmd}"
    return [str(PYTHONS[runtime]), *cmd[1:]], {
        **inherited,
        **variables,
        **(env or {}),
        "PYTHONPATH": os.pathsep.join([*map(str, first_on_path), str(ROOT / "plugins")]),
    }


def start_like_image(
    runtime: str,
    model_uri: str,
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    ready_path: str | None = None,
    timeout: float = 120.0,
    first_on_path: tuple[Path, ...] = (),
) -> ImageServer:
    """Start the ``runtime``'s image command with its image's environment (:func:`image_launch`) on free
    ports; waits until ``ready_path`` answers 200."""
    from freestack.serving.processes import free_port_block

    port = free_port_block()
    argv, full = image_launch(runtime, model_uri, workdir, port, env=env, first_on_path=first_on_path)
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{runtime}-{port}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=full,
            cwd=str(workdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = ImageServer(proc, port, port + 1, port + 2, log_path)
    _wait_ready(
        server, ready_path or ("/v2/health/ready" if runtime == "mlserver" else "/health/ping"), timeout
    )
    return server


def _wait_ready(server: ImageServer, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"the server exited with {server.proc.returncode}:\n{server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise AssertionError(f"the server was not ready within {timeout:.0f} s:\n{server.log()[-3000:]}")
