"""Trial leases of the local sweep controller, on real storage in a temporary folder.

A lease is renewed by a heartbeat thread every third of its TTL; another agent takes a trial over once its
lease has gone a TTL without a heartbeat, and a retry of the same agent slot (Airflow's next try of the
same mapped ``agent`` task) takes it over at once. The first tests run agents as threads of this process
(an agent "dies" when its heartbeat stops); the last ones run them as processes and kill or pause one.

Run as a module, this file is one agent process:
``python -m tests.unit.sweeps.test_leases SPEC SWEEP_ID SLOT TRY TTL SLEEP LOG``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.support.sweeps import ROOT, objective, write_spec

LR = {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1}
SLOT0, SLOT1 = "digits_train/manual__1/agent/0", "digits_train/manual__1/agent/1"


@pytest.fixture
def make_sweep(tmp_path, storage):
    """A created sweep of ``run_cap`` random trials on a fresh storage root; returns (spec, spec file)."""
    from freestack.spec import load_spec
    from freestack.sweeps.core import create_sweep

    def make(sweep_id: str, run_cap: int = 1):
        path = write_spec(
            tmp_path / "specs", {"method": "random", "run_cap": run_cap, "parameters": {"learning_rate": LR}}
        )
        spec = load_spec(path)
        create_sweep(spec, sweep_id, {"end_ds": "2026-11-05"}, agents=2)
        return spec, path

    return make


def agent(spec, sweep_id, slot, try_number, run_trial=None, **kw):
    from freestack.sweeps.core import LocalAgent

    return LocalAgent(
        spec,
        sweep_id,
        run_trial or objective(),
        agent_id=f"{slot}/try{try_number}",
        slot=slot,
        try_number=try_number,
        **kw,
    )


def trials_of(spec, sweep_id) -> dict:
    from freestack.sweeps.core import load_trials

    return {d["id"]: d for d, _ in load_trials(spec, sweep_id)}


def epochs(doc) -> list[int]:
    return [r["epoch"] for r in doc["history"]]


def row(epoch: int) -> dict:
    return {"epoch": epoch, "val_accuracy": 0.1 * epoch, "val_loss": 1.0 - 0.1 * epoch}


def in_thread(fn) -> tuple[threading.Thread, dict]:
    """Run ``fn`` in a thread; its result or exception lands in the returned dict."""
    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate, what: str, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while not (got := predicate()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
    return got


# ---------------------------------------------------------------------------------------------------------
# the settings


def test_the_default_lease_notices_a_dead_agent_in_seconds(make_sweep):
    from freestack.settings import Settings
    from freestack.sweeps.core import HEARTBEATS_PER_LEASE, heartbeat_seconds

    default = Settings.model_fields["sweep_lease_seconds"].default
    assert default <= 15
    assert HEARTBEATS_PER_LEASE >= 3  # the lease outlives at least two missed heartbeats
    assert heartbeat_seconds(default) == default / HEARTBEATS_PER_LEASE
    spec, _ = make_sweep("defaults")
    assert agent(spec, "defaults", SLOT0, 1).ttl == default


# ---------------------------------------------------------------------------------------------------------
# a retry of the same agent slot


def test_a_retry_of_the_same_slot_reclaims_its_trial_at_once_and_resumes_it(make_sweep):
    from freestack.sweeps.core import TrialLease, load_trials

    spec, _ = make_sweep("reclaim")
    first = agent(spec, "reclaim", SLOT0, 1, ttl=300)
    doc, token = first._propose([])
    TrialLease(first._trial_path(doc["id"]), doc, token, first.agent_id, 300).update(
        lambda d: d["history"].extend([row(1), row(2)])
    )  # two epochs, then try 1 dies; its lease would last another 300 s
    held = trials_of(spec, "reclaim")[doc["id"]]["lease"]

    trials = load_trials(spec, "reclaim")
    for slot, try_number in [(SLOT1, 2), (SLOT0, 1)]:  # another slot, or the same try, must wait for the TTL
        other = agent(spec, "reclaim", slot, try_number, ttl=300)
        assert other._reclaim_own(trials) is None and other._take_over_expired(trials) is None

    retry = agent(spec, "reclaim", SLOT0, 2, ttl=300)
    report = retry.run()
    assert report.resumed == [doc["id"]] and report.trials == [doc["id"]]
    t = trials_of(spec, "reclaim")[doc["id"]]
    assert t["state"] == "finished" and epochs(t) == list(range(1, 9))  # resumed after epoch 2
    assert [a["owner"] for a in t["attempts"]] == [first.agent_id, retry.agent_id]
    taken = t["attempts"][1]
    assert taken["reason"] == "reclaimed" and taken["after"] == first.agent_id
    assert taken["silent_s"] < held["expires_at"] - held["renewed_at"]  # while try 1's lease was still valid
    assert t["lease"]["slot"] == SLOT0 and t["lease"]["try"] == 2 and t["lease"]["attempt"] == 1


def test_an_earlier_try_still_running_loses_its_trial_to_the_retry_and_stops(make_sweep):
    """A try Airflow gave up on (its worker stopped answering) may still be alive: the retry takes its
    trial anyway, its heartbeat finds the lease gone, it trains that trial no further and takes no other."""
    spec, _ = make_sweep("zombie", run_cap=3)
    reclaimed = threading.Event()
    reported: list[int] = []

    def slow(doc, report):
        for epoch in range(len(doc["history"]) + 1, 9):
            reported.append(epoch)
            if epoch == 3:
                assert reclaimed.wait(60)
                wait_for(lambda: leases[0].lost, "the heartbeat to notice the lost lease")
            report(row(epoch))
        return {"summary": {"task": "classification"}, "epochs_run": 8}

    from freestack.sweeps.core import TrialLease

    leases: list[TrialLease] = []
    enter = TrialLease.__enter__
    zombie = agent(spec, "zombie", SLOT0, 1, slow, ttl=0.9)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrialLease, "__enter__", lambda self: leases.append(self) or enter(self))
        thread, out = in_thread(zombie.run)
        wait_for(
            lambda: leases and len(trials_of(spec, "zombie")["t0000"]["history"]) == 2,
            "try 1 to train two epochs",
        )
    retry = agent(spec, "zombie", SLOT0, 2, ttl=0.9, poll_seconds=0.1)
    retry_thread, retry_out = in_thread(retry.run)
    wait_for(lambda: trials_of(spec, "zombie")["t0000"]["lease"]["try"] == 2, "the retry to reclaim t0000")
    reclaimed.set()
    thread.join(60)
    retry_thread.join(120)
    assert "error" not in out and "error" not in retry_out, (out, retry_out)
    assert reported == [1, 2, 3]  # epoch 3 was not reported, and no further epoch trained
    assert out["result"].lost == ["t0000"] and out["result"].trials == []  # and took no other trial
    trials = trials_of(spec, "zombie")
    assert sorted(retry_out["result"].trials) == sorted(trials) and all(
        d["state"] == "finished" for d in trials.values()
    )
    assert epochs(trials["t0000"]) == list(range(1, 9))


# ---------------------------------------------------------------------------------------------------------
# a silent lease: another slot takes it over after the TTL, not before


def test_a_lease_whose_heartbeat_stopped_is_taken_over_after_the_ttl_not_before(make_sweep, monkeypatch):
    from freestack.sweeps.core import TrialLease

    spec, _ = make_sweep("silent")
    ttl = 1.5
    leases: list[TrialLease] = []
    enter = TrialLease.__enter__
    monkeypatch.setattr(TrialLease, "__enter__", lambda self: leases.append(self) or enter(self))
    release = threading.Event()
    reported: list[int] = []

    def dies(doc, report):  # two epochs, then its heartbeat stops and it hangs, as a killed agent would
        for epoch in range(1, 9):
            if epoch == 3:
                leases[0].stop()
                assert release.wait(60)
            reported.append(epoch)
            report(row(epoch))
        return {"summary": {"task": "classification"}, "epochs_run": 8}

    victim = agent(spec, "silent", SLOT0, 1, dies, ttl=ttl)
    thread, out = in_thread(victim.run)
    wait_for(
        lambda: len(trials_of(spec, "silent").get("t0000", {}).get("history", [])) == 2,
        "two epochs of the victim",
    )
    other = agent(spec, "silent", SLOT1, 1, ttl=ttl, poll_seconds=0.1)
    report = other.run()  # waits while the lease is renewed, takes it over once it has gone a TTL silent
    release.set()
    thread.join(60)
    assert "error" not in out, out
    t = trials_of(spec, "silent")["t0000"]
    assert report.resumed == ["t0000"] and report.trials == ["t0000"]
    assert [a["owner"] for a in t["attempts"]] == [victim.agent_id, other.agent_id]
    taken = t["attempts"][1]
    assert taken["reason"] == "expired" and taken["silent_s"] >= ttl
    assert epochs(t) == list(range(1, 9))  # the victim's late epoch 3 was refused
    assert reported == [1, 2, 3] and out["result"].lost == ["t0000"]


def test_the_heartbeat_keeps_a_trial_through_epochs_longer_than_the_lease(make_sweep):
    spec, _ = make_sweep("long")
    ttl = 0.9
    holder = agent(spec, "long", SLOT0, 1, objective(epochs=3, sleep=3 * ttl), ttl=ttl)
    thread, out = in_thread(holder.run)
    wait_for(lambda: trials_of(spec, "long"), "the holder's trial")
    watcher = agent(spec, "long", SLOT1, 1, ttl=ttl, poll_seconds=0.1)
    report = watcher.run()
    thread.join(60)
    t = trials_of(spec, "long")["t0000"]
    assert report.resumed == [] and out["result"].trials == ["t0000"]
    assert len(t["attempts"]) == 1 and t["state"] == "finished" and epochs(t) == [1, 2, 3]


def test_an_agent_with_nothing_left_stops_with_the_last_trial_not_a_poll_later(make_sweep):
    """Waiting on another agent's trial, an agent reads just that trial, every twentieth of its own trials'
    length: it stops within that of the last trial's end, though it would look again only after 5 s."""
    spec, _ = make_sweep("tail", run_cap=2)
    slow = agent(spec, "tail", SLOT0, 1, objective(epochs=4, sleep=0.4), poll_seconds=5.0)
    thread, out = in_thread(slow.run)
    wait_for(lambda: trials_of(spec, "tail"), "the slow agent's trial")
    quick = agent(spec, "tail", SLOT1, 1, objective(epochs=4, sleep=0.05), poll_seconds=5.0)
    report = quick.run()
    ended = time.monotonic()
    thread.join(60)
    done = trials_of(spec, "tail")
    assert report.trials == ["t0001"] and out["result"].trials == ["t0000"]
    assert {d["state"] for d in done.values()} == {"finished"}
    # its own trial took ~0.2 s: it read the slow trial every ~10 ms (at least MIN_WATCH_SECONDS)
    assert 0.02 <= quick.watch_seconds() < 0.1
    last_write = done["t0000"]["lease"]["renewed_at"]
    assert time.time() - (time.monotonic() - ended) - last_write < 1.0  # not the 5 s poll


def test_slow_storage_writes_cause_no_false_take_over(make_sweep, monkeypatch):
    """Each of the holder's writes takes 45% of the TTL (a slow object store): heartbeats are spaced
    from the start of the previous one, and a watcher that saw the lease renewed lately leaves it."""
    from freestack.storage import cas

    spec, _ = make_sweep("slow")
    ttl = 2.0
    real = cas.replace

    def slow_replace(path, data, token):
        if json.loads(data)["lease"]["owner"].startswith(SLOT0):
            time.sleep(0.45 * ttl)
        return real(path, data, token)

    monkeypatch.setattr(cas, "replace", slow_replace)
    holder = agent(spec, "slow", SLOT0, 1, objective(epochs=3, sleep=ttl), ttl=ttl)
    thread, out = in_thread(holder.run)
    wait_for(lambda: trials_of(spec, "slow"), "the holder's trial")
    watcher = agent(spec, "slow", SLOT1, 1, ttl=ttl, poll_seconds=0.1)
    report = watcher.run()
    thread.join(60)
    assert "error" not in out, out
    t = trials_of(spec, "slow")["t0000"]
    assert report.resumed == [] and out["result"].trials == ["t0000"] and out["result"].lost == []
    assert [a["owner"] for a in t["attempts"]] == [holder.agent_id] and t["state"] == "finished"


def test_a_taken_over_trial_that_repeats_an_epoch_keeps_one_row_per_epoch(make_sweep):
    """The holder reported epoch 3 and died before writing its checkpoint: the next holder trains epoch 3
    again from the checkpoint of epoch 2, and the history keeps one row for it."""
    from freestack.sweeps.core import TrialLease

    spec, _ = make_sweep("repeat")
    first = agent(spec, "repeat", SLOT0, 1, ttl=300)
    doc, token = first._propose([])
    TrialLease(first._trial_path(doc["id"]), doc, token, first.agent_id, 300).update(
        lambda d: d["history"].extend([row(1), row(2), row(3)])
    )

    def from_checkpoint(doc, report):
        for epoch in range(len(doc["history"]), 9):  # the checkpoint is one epoch behind the history
            report(row(epoch))
        return {"summary": {"task": "classification"}, "epochs_run": 8}

    agent(spec, "repeat", SLOT0, 2, from_checkpoint, ttl=300).run()
    t = trials_of(spec, "repeat")["t0000"]
    assert epochs(t) == list(range(1, 9)) and t["history"][2] == row(3)


# ---------------------------------------------------------------------------------------------------------
# real agent processes


def agent_proc(spec_path, sweep_id, slot, try_number, ttl, sleep, log_file):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.unit.sweeps.test_leases",
            str(spec_path),
            sweep_id,
            slot,
            str(try_number),
            str(ttl),
            str(sleep),
            str(log_file),
        ],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def mid_trial_of(spec, sweep_id, owner: str, proc):
    """The trial ``owner`` is training, once it has reported two epochs (and not all eight)."""

    def probe():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        held = [
            d
            for d in trials_of(spec, sweep_id).values()
            if d["state"] == "running" and d["lease"]["owner"] == owner and 2 <= len(d["history"]) < 8
        ]
        return held[0] if held else None

    return wait_for(probe, f"{owner} to be mid-trial", 120)


def test_a_killed_agent_process_is_resumed_by_its_retry_and_the_sweep_completes(make_sweep, tmp_path):
    spec, spec_path = make_sweep("kill", run_cap=4)
    ttl = 30.0  # the other slot waits the TTL: the trial is the retry's unless it reclaims late
    starts = tmp_path / "starts"
    victim = agent_proc(spec_path, "kill", SLOT0, 1, ttl, 0.3, starts)
    other = agent_proc(spec_path, "kill", SLOT1, 1, ttl, 0.3, starts)
    held = mid_trial_of(spec, "kill", f"{SLOT0}/try1", victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    retry = agent_proc(spec_path, "kill", SLOT0, 2, ttl, 0.3, starts)
    reports = [finish(retry), finish(other)]

    trials = trials_of(spec, "kill")
    assert sorted(trials) == [f"t{i:04d}" for i in range(4)]
    assert all(d["state"] == "finished" and epochs(d) == list(range(1, 9)) for d in trials.values())
    t = trials[held["id"]]
    assert [a["owner"] for a in t["attempts"]] == [f"{SLOT0}/try1", f"{SLOT0}/try2"]
    taken = t["attempts"][1]
    assert taken["reason"] == "reclaimed" and taken["silent_s"] < ttl
    print(f"reclaimed by the retry {taken['silent_s']:.1f} s after the killed agent's last heartbeat")
    # no trial lost, none run twice to completion: each finished once, by the agent holding it last
    by_victim = [i for i, d in trials.items() if d["lease"]["owner"] == f"{SLOT0}/try1"]
    finished = sorted(reports[0]["trials"] + reports[1]["trials"] + by_victim)
    assert finished == sorted(trials), (reports, by_victim)
    started = sorted(json.loads(line)["trial"] for line in starts.read_text().splitlines())
    assert started == sorted([*trials, held["id"]])  # the killed trial started twice, every other once


def test_a_paused_agent_process_keeps_its_lease(make_sweep, tmp_path):
    """Stopped (SIGSTOP) for a third of the TTL, as by a long garbage-collection pause, the holder keeps
    its trial: the other agent, watching, takes nothing over."""
    spec, spec_path = make_sweep("pause")
    ttl = 3.0
    log_file = tmp_path / "starts"
    holder = agent_proc(spec_path, "pause", SLOT0, 1, ttl, 1.0, log_file)
    wait_for(lambda: trials_of(spec, "pause"), "the holder's trial")
    watcher = agent_proc(spec_path, "pause", SLOT1, 1, ttl, 1.0, log_file)
    wait_for(lambda: SLOT1 in ready(log_file), "the watcher to start")
    time.sleep(0.5)  # its first look at the trials
    os.kill(holder.pid, signal.SIGSTOP)
    time.sleep(ttl / 3)
    os.kill(holder.pid, signal.SIGCONT)
    reports = [finish(holder), finish(watcher)]
    t = trials_of(spec, "pause")["t0000"]
    assert reports[0]["trials"] == ["t0000"] and reports[1]["resumed"] == [] and len(t["attempts"]) == 1


def ready(log_file) -> list[str]:
    """The slots of the agent processes that are up (their sweep loaded, about to look at the trials)."""
    path = f"{log_file}.ready"
    return open(path).read().split() if os.path.exists(path) else []


def main(argv: list[str]) -> None:
    from freestack.spec import load_spec

    spec_path, sweep_id, slot, try_number, ttl, sleep, log_file = argv[:7]
    one = agent(
        load_spec(spec_path),
        sweep_id,
        slot,
        int(try_number),
        objective(sleep=float(sleep), log_file=log_file),
        ttl=float(ttl),
        poll_seconds=0.2,
    )
    with open(f"{log_file}.ready", "a") as f:
        f.write(slot + "\n")
    report = one.run()
    print(json.dumps(report.as_dict()))


if __name__ == "__main__":
    main(sys.argv[1:])
