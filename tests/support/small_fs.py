"""A real small filesystem to fill: a tmpfs of a few MiB, mounted for a test (root only: CI runs as root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from freestack.storage.objects import TMP_MARK


@contextmanager
def mounted_tmpfs(mount: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` at ``mount`` (made), unmounted after; the test skips, saying why, where
    mounting is not permitted. Fails if it cannot be unmounted: a file on it was left open."""
    mount.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs this test fills needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        busy = subprocess.run(["umount", str(mount)], capture_output=True, text=True)
        if busy.returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)
            pytest.fail(
                f"{mount} could not be unmounted (a file on it was left open?): {busy.stderr.strip()}"
            )


def ballast(mount: Path, free_mib: float) -> Path:
    """Another user's data: a file filling the filesystem until ``free_mib`` is left."""
    vfs = os.statvfs(mount)
    path = mount / "ballast.bin"
    path.write_bytes(b"\xa5" * int(vfs.f_bavail * vfs.f_frsize - free_mib * 2**20))
    return path


def free_mib(mount: Path) -> float:
    vfs = os.statvfs(mount)
    return vfs.f_bavail * vfs.f_frsize / 2**20


def temporaries(mount: Path) -> list[str]:
    """Every write temporary on the filesystem, at any depth."""
    return [str(p) for p in mount.rglob("*") if TMP_MARK in p.name]
