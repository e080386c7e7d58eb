"""The local sweep controller: W&B sweep semantics with no server, coordinated through object storage.

State lives under ``runs/<pipeline>/<sweep_id>/`` on the storage root (local disk or S3):

    sweep.json                      the sweep: config (W&B schema), the training request, run cap
    trials/t0000/trial.json         one trial: proposed config, state, lease, per-epoch history, result
    trials/t0000/train/...          its checkpoints (a re-leased trial resumes from them)
    trials/t0000/model/...          its model, in Hugging Face layout

There is no controller process. Each agent is a loop:

1. read every ``trial.json``;
2. if a running trial is leased to an earlier try of this agent's own slot (Airflow retried the agent
   task: that try is dead), take it over at once; if a trial's lease went ``sweep_lease_seconds`` without
   a heartbeat (its agent died), take it over. Either is a compare-and-swap write of its ``trial.json``
   (S3 ``If-Match`` / a locked rename on local disk), and the trial resumes from its checkpoints;
3. otherwise ask the engine (``sweeps.next_run``) for a suggestion and create the next trial number
   with a create-if-absent write (S3 ``If-None-Match: *`` / an exclusive link on local disk): of two
   agents proposing trial N at once exactly one wins, the other reads again and proposes N+1;
4. train it, writing each epoch's metrics into ``trial.json``, while a heartbeat thread renews the lease
   every third of its TTL (however long an epoch takes), and after each epoch ask ``sweeps.stop_runs``
   whether hyperband stops it; an agent whose lease was taken over drops the trial at its next write;
5. when nothing is left to propose (run cap reached, grid exhausted), wait while other agents' trials
   run (one may die and need taking over), then stop. While it waits it reads only the running trials'
   files, every twentieth of a trial's length (as this agent's own trials took; within 0.02 s and its
   poll interval), and looks again as soon as one of them ends: the last agent stops with the last trial,
   not up to a poll interval later.

Trial numbers below the run cap are the only ones ever created, so ``run_cap`` is exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError
from freestack.settings import settings
from freestack.storage import cas, join, storage_root, subfolders
from freestack.sweeps import pareto
from freestack.sweeps.config import engine_part, engine_run_config, json_safe, plain_values, sweeps_engine
from freestack.sweeps.spec import OPTUNA_METHODS, SweepSpec, grid_size
from freestack.sweeps.values import best_of, kept_value

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
TRIAL_FILE = "trial.json"
TERMINAL = ("finished", "failed", "crashed")
#: consecutive failed trials after which an agent gives up (the trainer, not the hyperparameters, is broken)
MAX_CONSECUTIVE_FAILURES = 3
#: heartbeats per lease TTL: a lease outlives two missed heartbeats (a slow write, a long GC pause)
HEARTBEATS_PER_LEASE = 3
#: a waiting agent reads the running trials every this much of a trial's length (its own trials' median)
WATCH_FRACTION = 1 / 20
MIN_WATCH_SECONDS = 0.02


def lease_seconds() -> float:
    """Seconds without a heartbeat after which another agent takes a trial over (the
    ``sweep_lease_seconds`` setting)."""
    return settings().sweep_lease_seconds


def heartbeat_seconds(ttl: float) -> float:
    """How often the holder of a lease of ``ttl`` seconds renews it."""
    return ttl / HEARTBEATS_PER_LEASE


def agent_threads(agents: int) -> int | None:
    """CPU threads per agent: the cores shared out among the agents (None on a GPU)."""
    configured = settings().agent_threads
    if configured:
        return configured
    if gpu_count():
        return None
    return max(1, (os.cpu_count() or 1) // max(1, agents))


def gpu_count() -> int:
    """NVIDIA GPUs visible to this machine, counted without importing torch."""
    try:
        return len([d for d in os.listdir("/proc/driver/nvidia/gpus") if not d.startswith(".")])
    except OSError:
        return 0


def default_pool_slots() -> int:
    """Slots of the sweep agents' pool: one per GPU, else one per CPU core."""
    return gpu_count() or os.cpu_count() or 1


class SweepError(FreestackError):
    """The sweep cannot go on; the message says why and what to do."""


class LeaseLost(FreestackError):  # noqa: N818
    """Another agent took this trial over (our lease expired); this agent must drop it."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(json_safe(doc), indent=1, sort_keys=True, default=str) + "\n").encode()


def sweep_id_for(pipeline: str, key: str, end_ds: str) -> str:
    """A stable sweep id for one Airflow run (a retried ``create_sweep`` finds its own sweep)."""
    digest = hashlib.sha256(f"{pipeline}|{key}|{end_ds}".encode()).hexdigest()[:8]
    return f"sweep-{end_ds.replace('-', '')}-{digest}"


def sweep_dir(spec: PipelineSpec, sweep_id: str):
    return join(storage_root(spec.storage_root), "runs", spec.name, sweep_id)


def trial_id(number: int) -> str:
    return f"t{number:04d}"


def trial_folder(spec: PipelineSpec, sweep_id: str, tid: str):
    return join(sweep_dir(spec, sweep_id), "trials", tid)


# ---------------------------------------------------------------------------------------------------------
# the sweep document


def create_sweep(
    spec: PipelineSpec, sweep_id: str, request: dict[str, Any], *, agents: int
) -> dict[str, Any]:
    """Write ``sweep.json`` (once: a retry finds the same sweep and reuses it)."""
    if spec.sweep is None:
        raise SweepError(f"pipeline {spec.name!r} has no sweep: block; add one (W&B sweep configuration)")
    config = spec.sweep
    cap = config.run_cap
    size = grid_size(config)
    doc = {
        "id": sweep_id,
        "pipeline": spec.name,
        "mode": "local",
        "config": config,
        "run_cap": cap,
        "grid_size": size,
        "max_trials": min(x for x in (cap, size) if x is not None),
        "request": request,
        "agents": agents,
        "spec_hash": spec.spec_hash(),
        "created_at": _iso(time.time()),
        "uri": str(sweep_dir(spec, sweep_id)),
    }
    path = join(sweep_dir(spec, sweep_id), SWEEP_FILE)
    try:
        cas.create(path, _dump({**doc, "config": config.config()}))
        log.info(
            "sweep %s created at %s: %s, at most %d trials",
            sweep_id,
            path.parent,
            config.method,
            doc["max_trials"],
        )
        return doc
    except cas.CasConflict:
        existing = load_sweep(spec, sweep_id)
        if existing["config"].config() != config.config():  # as the document stores them
            raise SweepError(
                f"sweep {sweep_id} already exists at {path} with a different sweep config; "
                "start a new run (a new sweep id) to search a changed space"
            ) from None
        log.info("sweep %s exists already (a retry); its agents go on where it stands", sweep_id)
        return existing


def load_sweep(spec: PipelineSpec, sweep_id: str) -> dict[str, Any]:
    path = join(sweep_dir(spec, sweep_id), SWEEP_FILE)
    got = cas.read(path)
    if got is None:
        raise SweepError(f"sweep {sweep_id} does not exist ({path} is missing); run create_sweep first")
    return parse_sweep(got.data)


def parse_sweep(data: bytes) -> dict[str, Any]:
    """A sweep document as ``sweep.json`` holds it, its config read into the sweep's model
    (:meth:`~freestack.sweeps.spec.SweepSpec.stored`: a document of an older version too)."""
    doc = json.loads(data)
    return {**doc, "config": SweepSpec.stored(doc["config"])}


def load_trials(spec: PipelineSpec, sweep_id: str) -> list[tuple[dict[str, Any], str]]:
    """Every trial document with its version token, by trial number."""
    folder = join(sweep_dir(spec, sweep_id), "trials")
    out = []
    for name in subfolders(folder):
        if not name.startswith(("t", "w-")):  # local trials, and W&B server trials
            continue
        got = cas.read(join(folder, name, TRIAL_FILE))
        if got is not None:
            out.append((json.loads(got.data), got.token))
    return out


def engine_runs(config: SweepSpec, trials: list[dict[str, Any]]) -> list[Any]:
    """The trials as the engine's SweepRun objects."""
    engine = sweeps_engine()
    metric = config.metric.name if config.metric is not None else None
    goal = config.metric.goal if config.metric is not None else "minimize"
    runs = []
    for t in trials:
        summary = dict(t.get("summary") or {})
        if metric and (b := kept_value(t, metric, goal)) is not None:
            summary[metric] = b
        # by alias: the engine's pydantic-v1 model config does not let v2 fill these by field name
        fields = {
            "name": t["id"],
            "state": t["state"] if t["state"] in ("running", *TERMINAL) else "running",
            "config": engine_run_config(t["config"], config),
            "sampledHistory": [dict(r) for r in t.get("history") or []],
            "summaryMetrics": summary,
        }
        run = engine.SweepRun(**fields)
        if len(run.history) != len(fields["sampledHistory"]):  # pragma: no cover - an engine upgrade
            raise RuntimeError("the sweeps engine dropped a run's history; pin sweeps==0.2.0")
        runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------------------
# leases


class TrialLease:
    """This agent's hold on one trial. Every write is a compare-and-swap on ``trial.json`` that also
    renews the lease, and a heartbeat thread renews it every :func:`heartbeat_seconds` (counted from the
    start of the previous renewal, so a slow write does not space them out). A lost race means another
    agent took the trial over: :class:`LeaseLost`, and :attr:`lost` is set for the trainer to see."""

    def __init__(self, path, doc: dict[str, Any], token: str, owner: str, ttl: float):
        self.path = path
        self.doc = doc
        self.token = token
        self.owner = owner
        self.ttl = ttl
        self.period = heartbeat_seconds(ttl)
        self.lost = False
        self._renewed = time.monotonic()  # the lease was just written (created or taken over)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        with self._lock:
            if self.lost:
                raise LeaseLost(f"trial {self.doc['id']} was taken over by another agent")
            doc = json.loads(json.dumps(self.doc))
            mutate(doc)
            started, now = time.monotonic(), time.time()
            doc["lease"].update(expires_at=now + self.ttl, renewed_at=now, ttl=self.ttl)
            doc["updated_at"] = _iso(now)
            try:
                self.token = cas.replace(self.path, _dump(doc), self.token)
            except cas.CasConflict:
                current = cas.read(self.path)
                cur = json.loads(current.data) if current else {}
                self.lost = True
                raise LeaseLost(
                    f"trial {self.doc['id']} was taken over by {cur.get('lease', {}).get('owner')!r} "
                    f"({(cur.get('attempts') or [{}])[-1].get('reason', 'expired')})"
                ) from None
            self.doc = doc
            self._renewed = started
            return doc

    def renew(self) -> None:
        """Renew the lease, unless a write renewed it less than a heartbeat ago or the trial is over."""
        with self._lock:
            if self.doc["state"] in TERMINAL or time.monotonic() - self._renewed < self.period:
                return
            self.update(lambda d: None)

    def _beat(self) -> None:
        while not self._stop.wait(max(0.0, self._renewed + self.period - time.monotonic())):
            try:
                self.renew()
            except LeaseLost as exc:
                log.warning("%s; this agent stops training it at its next epoch", exc)
                return
            except Exception as exc:  # storage trouble: try again shortly
                log.warning("lease renewal of trial %s failed (%s); retrying", self.doc["id"], exc)
                self._stop.wait(min(1.0, self.period / 3))

    def stop(self) -> None:
        """Stop the heartbeat (the lease then expires after its TTL unless written again)."""
        self._stop.set()

    def __enter__(self) -> TrialLease:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.doc['id']}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)


# ---------------------------------------------------------------------------------------------------------
# the agent


def _add_epoch(history: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Append an epoch's row; a trial resumed from a checkpoint older than its history (its holder died
    between reporting an epoch and checkpointing it) trains that epoch again, and its new row replaces the old."""
    epoch = row.get("epoch")
    if epoch is not None:
        history[:] = [r for r in history if r.get("epoch") is None or r["epoch"] < epoch]
    history.append(dict(row))


@dataclass
class AgentReport:
    agent: str
    trials: list[str] = field(default_factory=list)  # trials this agent finished (or failed)
    resumed: list[str] = field(default_factory=list)  # trials taken over from a dead agent
    lost: list[str] = field(default_factory=list)  # trials another agent took over from this one
    epochs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


TrialRunner = Callable[[dict[str, Any], Callable[[dict[str, float]], bool]], dict[str, Any]]


class LocalAgent:
    """One agent of a local sweep. ``run_trial(trial_doc, report_epoch) -> result`` trains one trial;
    ``report_epoch(row)`` returns True when the trial must stop (hyperband).

    ``slot`` names the agent's place in the sweep across retries (in Airflow: ``<dag_id>/<run_id>/<task_id>/
    <map_index>``) and ``try_number`` the attempt: a trial leased to an earlier try of the same slot is
    taken over at once, without waiting for its lease to expire."""

    def __init__(
        self,
        spec: PipelineSpec,
        sweep_id: str,
        run_trial: TrialRunner,
        *,
        agent_id: str | None = None,
        slot: str | None = None,
        try_number: int = 1,
        ttl: float | None = None,
        poll_seconds: float | None = None,
    ):
        self.spec = spec
        self.sweep_id = sweep_id
        self.run_trial = run_trial
        self.slot = slot
        self.try_number = try_number
        self.agent_id = agent_id or (
            f"{slot}/try{try_number}/pid{os.getpid()}"
            if slot
            else f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        )
        self.ttl = ttl if ttl is not None else lease_seconds()
        if self.ttl <= 0:
            raise SweepError(
                f"the trial lease must last a positive number of seconds, not {self.ttl}; "
                "fix the sweep_lease_seconds setting (FREESTACK_SWEEP_LEASE_SECONDS)"
            )
        # each running trial's last seen version, and when (monotonic) this agent saw it change: a lease
        # seen renewed within its TTL is alive whatever the clocks of the two machines say
        self._seen: dict[str, tuple[str, float | None]] = {}
        # an agent with nothing to start looks again this often (others may finish, or die)
        self.poll = poll_seconds if poll_seconds is not None else min(1.0, self.ttl / 4)
        self.sweep = load_sweep(spec, sweep_id)
        self.config: SweepSpec = self.sweep["config"]
        self.max_trials = int(self.sweep["max_trials"])
        self.report = AgentReport(agent=self.agent_id)
        self._trial_seconds: list[float] = []  # how long this agent's own trials took (monotonic)
        # the process that started this agent (Airflow's task supervisor): when it dies (its worker was
        # killed) this process is re-parented and must stop, not go on taking and failing trials
        self._parent = os.getppid()

    def orphaned(self) -> bool:
        """The supervising process is gone: this agent's results could no longer be reported."""
        return os.getppid() != self._parent

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> AgentReport:
        failures = 0
        while True:
            if self.orphaned():
                raise SweepError(
                    f"agent {self.agent_id}: its supervising process is gone (the worker died); it takes no "
                    "more trials, and the one it held is taken over by its retry, or by another agent once its lease expires"
                )
            trials = load_trials(self.spec, self.sweep_id)
            self._observe(trials)
            if (newer := self._superseded(trials)) is not None:
                log.warning(
                    "agent %s: try %d of its slot runs now; this earlier try stops", self.agent_id, newer
                )
                break
            claimed = self._reclaim_own(trials) or self._take_over_expired(trials) or self._propose(trials)
            if claimed == "retry":
                continue
            if claimed is None:
                running = [d for d, _ in trials if d["state"] == "running"]
                if not running:
                    break
                soonest = min(d["lease"]["expires_at"] for d in running) - time.time()
                self._await_running(trials, max(0.2, min(self.poll, soonest + 0.2)))
                continue
            started = time.monotonic()
            ok = self._run_claimed(*claimed)
            self._trial_seconds.append(time.monotonic() - started)
            failures = 0 if ok else failures + 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise SweepError(
                    f"agent {self.agent_id}: {failures} trials in a row failed; see their trial.json 'error' "
                    "and the task log (the trainer or the data, not the hyperparameters, is likely at fault)"
                )
        log.info(
            "agent %s done: ran %s, took over %s, lost %s; %d epochs",
            self.agent_id,
            self.report.trials,
            self.report.resumed,
            self.report.lost,
            self.report.epochs,
        )
        return self.report

    def _await_running(self, trials, seconds: float) -> None:
        """Wait up to ``seconds`` while other agents' trials run, reading just those trials' files every
        :meth:`watch_seconds`; back at once when one of them is no longer running (or gone)."""
        watched = {d["id"]: token for d, token in trials if d["state"] == "running"}
        deadline, step = time.monotonic() + seconds, self.watch_seconds()
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(step, left))
            for tid, token in watched.items():
                got = cas.read(self._trial_path(tid))
                if got is None:
                    return
                if got.token != token:
                    doc = json.loads(got.data)
                    self._observe([(doc, got.token)])  # a renewal seen: the holder lives
                    if doc["state"] != "running":
                        return
                    watched[tid] = got.token

    def watch_seconds(self) -> float:
        """How often a waiting agent reads the running trials: a twentieth of its own trials' median length,
        within ``MIN_WATCH_SECONDS`` and the poll interval (the poll interval before it has run one)."""
        if not self._trial_seconds:
            return self.poll
        return min(self.poll, max(MIN_WATCH_SECONDS, statistics.median(self._trial_seconds) * WATCH_FRACTION))

    def _trial_path(self, number_or_id):
        tid = number_or_id if isinstance(number_or_id, str) else trial_id(number_or_id)
        return join(trial_folder(self.spec, self.sweep_id, tid), TRIAL_FILE)

    def _lease(self, now: float, attempt: int) -> dict[str, Any]:
        return {
            "owner": self.agent_id,
            "slot": self.slot,
            "try": self.try_number,
            "attempt": attempt,
            "ttl": self.ttl,
            "expires_at": now + self.ttl,
            "renewed_at": now,
        }

    def _observe(self, trials) -> None:
        mono = time.monotonic()
        for doc, token in trials:
            seen = self._seen.get(doc["id"])
            if seen is None:
                self._seen[doc["id"]] = (token, None)  # first sight: no renewal seen yet
            elif seen[0] != token:
                self._seen[doc["id"]] = (token, mono)

    def _silent(self, doc: dict[str, Any], now: float) -> bool:
        """The trial's lease went its TTL without a heartbeat: by the holder's timestamps, and by what this
        agent saw (a renewal seen less than a TTL ago means the holder lives, if its clock is behind)."""
        lease = doc["lease"]
        if lease["expires_at"] > now:
            return False
        seen = self._seen.get(doc["id"])
        ttl = lease.get("ttl") or lease["expires_at"] - lease["renewed_at"]
        return seen is None or seen[1] is None or time.monotonic() - seen[1] >= ttl

    def _superseded(self, trials) -> int | None:
        """The try number of a later try of this agent's slot, if one holds (or held) a trial."""
        if self.slot is None:
            return None
        tries = [d["lease"].get("try") or 0 for d, _ in trials if d["lease"].get("slot") == self.slot]
        newest = max(tries, default=0)
        return newest if newest > self.try_number else None

    def _reclaim_own(self, trials):
        """A running trial leased to an earlier try of this agent's slot: that try is dead (Airflow retried
        it), so it is taken over at once."""
        if self.slot is None:
            return None
        for doc, token in trials:
            lease = doc["lease"]
            if (
                doc["state"] == "running"
                and lease.get("slot") == self.slot
                and (lease.get("try") or 0) < self.try_number
            ):
                return self._take_over(doc, token, "reclaimed")
        return None

    def _take_over_expired(self, trials):
        now = time.time()
        for doc, token in trials:
            if doc["state"] == "running" and self._silent(doc, now):
                return self._take_over(doc, token, "expired")
        return None

    def _take_over(self, doc: dict[str, Any], token: str, reason: str):
        now = time.time()
        prev = doc["lease"]
        new = json.loads(json.dumps(doc))
        new["lease"] = self._lease(now, prev["attempt"] + 1)
        silent = round(now - prev["renewed_at"], 3)
        new["attempts"] = [
            *doc.get("attempts", []),
            {
                "owner": self.agent_id,
                "at": _iso(now),
                "after": prev["owner"],
                "reason": reason,
                "silent_s": silent,
            },
        ]
        try:
            token = cas.replace(self._trial_path(doc["id"]), _dump(new), token)
        except cas.CasConflict:
            return "retry"  # someone else took it (or its owner renewed it): look again
        why = (
            "it was leased to an earlier try of this agent's slot"
            if reason == "reclaimed"
            else "its lease expired"
        )
        log.warning(
            "trial %s: %s (%s, last heartbeat %.1fs ago); agent %s takes it over (attempt %d)",
            doc["id"],
            why,
            prev["owner"],
            silent,
            self.agent_id,
            new["lease"]["attempt"],
        )
        self.report.resumed.append(doc["id"])
        return new, token

    def _propose(self, trials):
        n = len(trials)
        if n >= self.max_trials:
            return None
        engine = sweeps_engine()
        docs = [d for d, _ in trials]
        # the same trial number gets the same random draw, whichever agent proposes it
        import numpy as np

        seed = int(hashlib.sha256(f"{self.sweep_id}|{n}".encode()).hexdigest()[:8], 16)
        saved = random.getstate(), np.random.get_state()
        random.seed(seed)  # the engine samples distributions with the random module
        np.random.seed(seed)  # and bayes with numpy
        try:
            if self.config.method in OPTUNA_METHODS:  # Optuna's sampler, seeded the same way
                config, info = json_safe(pareto.suggest(self.config, docs, seed)), None
            else:
                suggestion = engine.next_run(engine_part(self.config), engine_runs(self.config, docs))
                if suggestion is None:  # the grid is exhausted
                    return None
                config, info = json_safe(suggestion.config), suggestion.search_info
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
        now = time.time()
        doc = {
            "id": trial_id(n),
            "number": n,
            "sweep_id": self.sweep_id,
            "config": config,
            "params": plain_values(config),
            "search_info": json_safe(info) if info else None,
            "state": "running",
            "stopped": False,
            "history": [],
            "summary": {},
            "lease": self._lease(now, 0),
            "attempts": [{"owner": self.agent_id, "at": _iso(now)}],
            "created_at": _iso(now),
            "updated_at": _iso(now),
        }
        try:
            token = cas.create(self._trial_path(n), _dump(doc))
        except cas.CasConflict:
            return "retry"  # another agent created trial n first: read again, propose n+1
        log.info("trial %s proposed by agent %s: %s", doc["id"], self.agent_id, doc["params"])
        return doc, token

    def _run_claimed(self, doc: dict[str, Any], token: str) -> bool:
        lease = TrialLease(self._trial_path(doc["id"]), doc, token, self.agent_id, self.ttl)
        early = self.config.early_terminate is not None

        def report_epoch(row: dict[str, float]) -> bool:
            self.report.epochs += 1
            cur = lease.update(lambda d: _add_epoch(d["history"], row))
            if not early:
                return False
            others = [d for d, _ in load_trials(self.spec, self.sweep_id) if d["id"] != cur["id"]]
            to_stop = sweeps_engine().stop_runs(
                engine_part(self.config), engine_runs(self.config, [*others, cur])
            )
            if any(r.name == cur["id"] for r in to_stop):
                log.info("trial %s: hyperband stops it after epoch %d", cur["id"], row.get("epoch", 0))
                lease.update(lambda d: d.update(stopped=True))
                return True
            return False

        with lease:
            try:
                result = self.run_trial(lease.doc, report_epoch)
            except LeaseLost as exc:
                log.warning("%s; this agent drops it", exc)
                self.report.lost.append(doc["id"])
                return True
            except Exception as exc:
                if lease.lost or self.orphaned():  # not the trial's fault: another agent takes it over
                    self.report.lost.append(doc["id"])
                    return True
                log.exception("trial %s failed", doc["id"])
                error = f"{type(exc).__name__}: {exc}"
                try:
                    lease.update(lambda d: d.update(state="failed", error=error))
                except LeaseLost:
                    self.report.lost.append(doc["id"])
                    return True
                self.report.trials.append(doc["id"])
                return False
            try:
                lease.update(lambda d: d.update(state="finished", **json_safe(result)))
            except LeaseLost as exc:
                log.warning("%s; its result is discarded", exc)
                self.report.lost.append(doc["id"])
                return True
        self.report.trials.append(doc["id"])
        return True


__all__ = [
    "AgentReport",
    "LeaseLost",
    "LocalAgent",
    "SweepError",
    "TrialLease",
    "agent_threads",
    "best_of",
    "kept_value",
    "create_sweep",
    "default_pool_slots",
    "engine_runs",
    "gpu_count",
    "heartbeat_seconds",
    "lease_seconds",
    "load_sweep",
    "load_trials",
    "parse_sweep",
    "sweep_dir",
    "sweep_id_for",
    "trial_folder",
    "trial_id",
]
