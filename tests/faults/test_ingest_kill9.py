"""Fault injection: ``kill -9`` of ingest task processes at random points of their work.

A child process re-ingests one interval again and again, its landing files switching between two
versions, and is killed with SIGKILL at a random moment (a fixed seed: the same points every run; a
bounded number of kills, loopback only). After every kill the partition must read as one whole publish
(every hash the manifest gives matches the bytes it names), every visible file must be complete, and
no process may be left. At the end an ingest that runs to completion gives the same bytes as one that
was never interrupted, and leaves no temporary behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from freestack.ingest.core import ingest_partition
from freestack.ingest.lake import read_manifest
from freestack.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
DS = "2026-11-02"
KILLS = 8
SEED = 20261123

CHILD = f"""
import os, shutil, sys
from freestack.ingest.core import ingest_partition
from freestack.spec import load_spec
spec = load_spec(sys.argv[1])
landing, versions = sys.argv[2], sys.argv[3:]
print("ready", flush=True)
for i in range(1000):
    shutil.copyfile(versions[i % 2], os.path.join(landing, "digits.csv"))
    ingest_partition(spec, "{DS}")
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_whole(spec, partition: Path, sources: set[str]) -> None:
    """The partition as a reader sees it is one publish, and nothing visible is partial."""
    m = read_manifest(spec, DS)
    if m is None:
        assert not (partition / "part.parquet").exists()
        return
    part = partition / "part.parquet"
    assert m["part"]["sha256"] == _sha(part), "manifest and part disagree"
    assert m["rows_good"] == pq.read_metadata(part).num_rows
    assert {s["sha256"] for s in m["sources"]} <= sources, "the manifest names landing bytes never landed"
    if m["quarantine"]:
        q = Path(m["quarantine"]["uri"].removeprefix("file://"))
        assert m["quarantine"]["sha256"] == _sha(q) and pq.read_metadata(q).num_rows == m["rows_quarantined"]
    for f in partition.iterdir():
        if f.name.startswith("."):
            continue  # a killed writer's hidden temporary: never visible as the object
        if f.suffix == ".parquet":
            pq.read_metadata(f)  # complete: its footer is there
        else:
            json.loads(f.read_text())


@pytest.fixture
def landed(storage, tmp_path):
    from datetime import date

    from demo.landing import make_landing

    make_landing(storage, date(2026, 11, 2), 1)
    landing = Path(storage.removeprefix("file://")) / "landing" / "digits" / DS
    first = tmp_path / "a.csv"
    shutil.copyfile(landing / "digits.csv", first)
    lines = first.read_text().splitlines(keepends=True)
    second = tmp_path / "b.csv"
    second.write_text("".join(lines[: len(lines) // 2]) + "1,2,3\n")  # fewer rows and a malformed one
    return landing, first, second


@pytest.mark.slow
def test_kill_9_of_ingest_at_random_points_never_leaves_a_mixed_partition(
    storage, landed, tmp_path, monkeypatch
):
    landing, first, second = landed
    spec_path = ROOT / "include" / "pipelines" / "digits.yaml"
    spec = load_spec(spec_path)
    partition = Path(storage.removeprefix("file://")) / "lake" / "digits" / f"ds={DS}"
    sources = {_sha(first), _sha(second)}
    rng = random.Random(SEED)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "plugins"), str(ROOT / "include"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(spec_path), str(landing), str(first), str(second)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 1.5))
        assert proc.poll() is None, "the ingest loop ended before it was killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
        _check_whole(spec, partition, sources)

    # an uninterrupted ingest of the first version, elsewhere, is the reference
    shutil.copyfile(first, landing / "digits.csv")
    result = ingest_partition(spec, DS)
    assert not [f.name for f in partition.iterdir() if ".freestack-tmp-" in f.name], "temporaries left behind"
    reference_root = tmp_path / "reference"
    (reference_root / "landing" / "digits" / DS).mkdir(parents=True)
    shutil.copyfile(first, reference_root / "landing" / "digits" / DS / "digits.csv")
    monkeypatch.setenv("FREESTACK_STORAGE_ROOT", reference_root.as_uri())
    reference = ingest_partition(spec, DS)
    assert result.part["sha256"] == reference.part["sha256"], "not byte-identical to an uninterrupted ingest"
    assert result.quarantine["sha256"] == reference.quarantine["sha256"]
    assert sorted(f.name for f in partition.iterdir()) == sorted(
        ["_manifest.json", "part.parquet", Path(result.quarantine["uri"]).name]
    )
