"""The sweep controller against real S3 servers (moto, SeaweedFS): conditional writes as the lock."""

from __future__ import annotations

import pytest

from tests.support.sweeps import write_spec
from tests.unit.sweeps.test_sweeps import LR, assert_no_duplicates, run_two_agents

pytestmark = pytest.mark.s3


def test_compare_and_swap_on_s3(s3_conn):
    from freestack.storage import cas, join, to_path

    p = join(to_path(s3_conn.uri("cas")), "trial.json")
    assert cas.read(p) is None
    token = cas.create(p, b"v1")
    with pytest.raises(cas.CasConflict, match="already exists"):
        cas.create(p, b"other")
    got = cas.read(p)
    assert got.data == b"v1" and got.token == token
    t2 = cas.replace(p, b"v2", token)
    with pytest.raises(cas.CasConflict, match="changed since it was read"):
        cas.replace(p, b"stale", token)  # If-Match with the old ETag loses
    assert cas.read(p).data == b"v2" and cas.read(p).token == t2
    with pytest.raises(cas.CasConflict, match="no longer exists"):
        cas.replace(join(to_path(s3_conn.uri("cas")), "missing.json"), b"x", t2)
    assert s3_conn.keys("cas/") == ["cas/trial.json"]


def test_two_agent_processes_never_run_the_same_trial_on_s3(s3_conn, tmp_path):
    spec_path = write_spec(
        tmp_path / "specs",
        {
            "method": "random",
            "run_cap": 10,
            "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
            "metric": {"name": "val_accuracy", "goal": "maximize"},
            "parameters": {"learning_rate": LR},
        },
        storage_root=s3_conn.uri("root"),
    )
    reports, trials, starts = run_two_agents(spec_path, "par-s3", tmp_path, sleep=0.02)
    assert_no_duplicates(reports, trials, starts, 10)
    assert any(t["stopped"] for t in trials)  # hyperband works the same on S3
    assert "root/runs/digits/par-s3/trials/t0009/trial.json" in s3_conn.keys("root/runs/")
