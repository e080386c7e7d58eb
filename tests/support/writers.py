"""Writers in other processes, mid-write: for what a killed (or a live) writer leaves in a folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from freestack.storage.objects import TMP_MARK

_WRITER = """
import sys, time
from freestack.storage import AtomicWriter, to_path
w = AtomicWriter(to_path(sys.argv[1]))
w.write(b"z" * int(sys.argv[2]))
w.flush()
print("ready", flush=True)
time.sleep(600)
"""


def writing(uri: str, size: int) -> subprocess.Popen:
    """A process that has written ``size`` bytes of ``uri`` (flushed into its temporary) and waits, its
    write unfinished; stop it with :func:`kill` (SIGKILL: what a killed task does)."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, uri, str(size)], stdout=subprocess.PIPE)
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the writer of {uri} did not start (exit status {proc.returncode})")
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def temporaries(folder: Path) -> list[Path]:
    """The write temporaries directly in ``folder``, by name."""
    return sorted(p for p in folder.iterdir() if TMP_MARK in p.name)


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look last written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))
