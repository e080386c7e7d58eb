"""``train.cache``: a training whose inputs are those of an earlier successful one reuses its version.

Off by default: asking for a training usually means wanting one, and an automatic run already skips a
window a registered version was trained on (:func:`freestack.train.window.already_trained`). With
``train.cache: true`` a run of the train task keys on what decides the trained weights
(:mod:`freestack.step_cache`):

* ``partitions``: the window's partitions, each ds with the sha256 the run fixed;
* ``spec``: the spec's ``source``, ``model`` and ``train`` blocks with the run's form values and
  overrides applied (:func:`freestack.train.core.effective_spec`), less the fields that only say when or
  where it runs (``cache``, ``schedule``, the ingest wait, ``queue``);
* ``base``: the commit of a fine-tuned model's base (a Hub repo's revision, resolved now);
* ``code_version``: freestack's version and a digest of its sources.

The entry is ``runs/<pipeline>/train_cache/<partitions digest>.json`` under the storage root (one per
window's data, so a miss names the input that changed), naming the version the training made and its
outcome. A hit with the version still a candidate returns that outcome (the
evaluation that follows hits its own cache); a hit whose version was registered since ends the run as an
automatic run with nothing new to train does: the version went through the gate already. A miss, or a
version since deleted, trains. A hit is checked against the version it names: a version whose lineage names
other partitions (an entry edited or copied) is a miss saying so; and changed data, which finds no entry of
its own, names the days that changed since the newest entry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from freestack import step_cache
from freestack.registry.core import registry_for
from freestack.storage import join, storage_root, to_path
from freestack.train.core import effective_spec
from freestack.train.pretrained import pretrained_base
from freestack.train.request import TrainOutcome, TrainRequest
from freestack.train.window import Window
from freestack.version.write import read_lineage

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)
STAGE = "train"
#: train fields that say when or where a training runs, not what it learns
NOT_INPUTS = {"cache", "schedule", "ingest_wait_minutes", "ingest_poke_seconds", "queue"}


@dataclass
class Reuse:
    """One training's lookup: ``found`` (its key and hit or miss), and on a hit the earlier outcome (its
    ``version_uri`` the registered version's when ``registered`` names the version it became)."""

    found: step_cache.Lookup
    outcome: TrainOutcome | None = None
    registered: str | None = None

    def record(self) -> dict[str, Any]:
        """What lineage keeps (:meth:`freestack.step_cache.Lookup.record`): a registered version is a hit too."""
        if self.registered is None:
            return self.found.record()
        run = self.found.entry.run.get("run_id") if self.found.entry else None
        return {"key": self.found.key, "hit": True, "from_run": run or "?", "miss": None}

    def line(self) -> str:
        """The log and run-note line: a hit names the version and the run that trained it."""
        if self.registered is not None:
            return (
                f"train: cache hit: version {self.registered}, registered since, was trained on these inputs "
                f"in run {self.found.entry.run.get('run_id') if self.found.entry else '?'} "
                f"(key {self.found.key[:12]})"
            )
        what = f"version {self.outcome.version}" if self.outcome else "the version"
        return f"train: {self.found.line(what)}"

    def save(self, outcome: TrainOutcome, run: dict[str, Any]) -> None:
        """Record a finished training under this key: the version folder it wrote is the entry's output."""
        kept = {
            "version": outcome.version,
            "version_uri": outcome.version_uri,
            "metrics": outcome.metrics,
            "partitions": outcome.partitions,
            "summary": outcome.summary,
            "tracking": outcome.tracking,
        }
        step_cache.save(self.found, run, [outcome.version_uri], {"version": outcome.version, "outcome": kept})


def partitions(spec: PipelineSpec, req: TrainRequest) -> list[list[str]]:
    """The window's partitions the training reads: ``[ds, sha256]`` each."""
    window = Window.from_dict(req.window or {})
    return [[p.ds, p.sha256] for p in window.of_days(effective_spec(spec, req).train.window_days)]


def inputs(spec: PipelineSpec, req: TrainRequest) -> dict[str, str]:
    """The digests a training's key is made of (``code_version`` is added by :func:`freestack.step_cache.lookup`)."""
    run_spec = effective_spec(spec, req)
    blocks = {"source": run_spec.source, "model": run_spec.model, "train": run_spec.train}
    return {
        "partitions": step_cache.digest(partitions(spec, req)),
        "spec": step_cache.spec_digest({"name": spec.name, **blocks}, {"train": NOT_INPUTS}),
        "base": _base_commit(run_spec),
    }


def _base_commit(spec: PipelineSpec) -> str:
    """The fine-tuned model's base commit (fetched as the training would), or ``none``."""
    if not spec.model.base:
        return "none"
    return str(pretrained_base(spec).commit)


def folder(spec: PipelineSpec) -> str:
    return str(join(storage_root(spec.storage_root), "runs", spec.name, "train_cache"))


def lookup(spec: PipelineSpec, req: TrainRequest) -> Reuse:
    """The run's key against its entry: the candidate to reuse, the registered version it became, or a
    miss (which trains). A hit is checked against the version it names: one whose lineage names other
    partitions (an entry edited, or copied from elsewhere) is a miss saying so. A first run of a window's
    data names what changed since the newest earlier entry."""
    given = inputs(spec, req)
    # one entry per window's data: a retraining of the same partitions with other settings names them
    found = step_cache.lookup(STAGE, folder(spec), given, name=f"{given['partitions'][:24]}.json")
    entry, reg = found.entry, registry_for(spec)
    if found.same_inputs and entry is not None:
        version = str(entry.extra.get("version") or "")
        if version and reg.is_registered(version):
            why = _trained_on_others(reg.lineage(version) or {}, version, spec, req)
            if why is not None:
                return Reuse(replace(found, miss=why))
            earlier = {**entry.extra["outcome"], "version_uri": reg.version_uri(version)}
            return Reuse(found, outcome=TrainOutcome(**earlier), registered=version)
    if found.hit and entry is not None:
        outcome = TrainOutcome(**entry.extra["outcome"])
        lineage = read_lineage(outcome.version_uri).model_dump(mode="json")
        why = _trained_on_others(lineage, outcome.version, spec, req)
        return Reuse(replace(found, miss=why)) if why else Reuse(found, outcome=outcome)
    if found.miss == step_cache.FIRST:
        return Reuse(replace(found, miss=_changed_since(spec, req) or step_cache.FIRST))
    return Reuse(found)


def cached(
    spec: PipelineSpec,
    req: TrainRequest,
    run: dict[str, Any],
    train: Callable[[], TrainOutcome | None],
    said: Callable[[Reuse], None] = lambda reuse: None,
) -> tuple[Reuse | None, TrainOutcome | None]:
    """A training with ``train.cache`` (both train operators'): the key looked up and ``said`` (logged,
    noted; it may end the task), the earlier outcome on a hit, else ``train()``'s, recorded under the key
    for ``run`` (the Airflow run). Without ``train.cache``: ``train()``'s, nothing looked up."""
    earlier = lookup(spec, req) if spec.train.cache else None
    if earlier is not None:
        said(earlier)
        if earlier.outcome is not None:
            return earlier, earlier.outcome
    outcome = train()
    if earlier is not None and outcome is not None:
        earlier.save(outcome, run)
    return earlier, outcome


def save_finished(spec: PipelineSpec, req: TrainRequest, outcome: TrainOutcome, run: dict[str, Any]) -> None:
    """Record a training that ended after its task deferred (a PyTorchJob): what :func:`cached` records
    when the training runs in the task."""
    if spec.train.cache:
        lookup(spec, req).save(outcome, run)


def _trained_on_others(
    lineage: dict[str, Any], version: str, spec: PipelineSpec, req: TrainRequest
) -> str | None:
    """Why the version an entry names cannot be this training's (its lineage's partitions are not the
    window's); None when they are."""
    seen = sorted([str(p.get("ds")), str(p.get("sha256"))] for p in lineage.get("partitions") or [])
    wanted = sorted(partitions(spec, req))
    if seen == wanted:
        return None
    return (
        f"the cache entry names version {version}, whose lineage names other partitions than these "
        f"{len(wanted)} (the entry was edited or copied): training again"
    )


def _changed_since(spec: PipelineSpec, req: TrainRequest) -> str | None:
    """What changed in the window's data since the newest entry of this pipeline (entries are filed by
    their partitions, so changed data finds none of its own): ``partitions changed since run R: ...``."""
    newest: step_cache.CacheEntry | None = None
    for path in to_path(folder(spec)).glob("*.json"):
        try:
            entry = step_cache.CacheEntry.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            continue
        if newest is None or entry.written_at > newest.written_at:
            newest = entry
    if newest is None:
        return None
    run, outcome = newest.run.get("run_id") or "?", newest.extra.get("outcome") or {}
    before = {str(p.get("ds")): str(p.get("sha256")) for p in outcome.get("partitions") or []}
    now = {ds: sha for ds, sha in partitions(spec, req)}
    changed = [f"{ds} (other bytes)" for ds in sorted(now) if ds in before and before[ds] != now[ds]]
    changed += [f"{ds} (new)" for ds in sorted(now) if ds not in before]
    changed += [f"{ds} (left the window)" for ds in sorted(before) if ds not in now]
    return f"partitions changed since run {run}: {', '.join(changed[:5]) or 'the same days'}"


__all__ = ["NOT_INPUTS", "Reuse", "cached", "folder", "inputs", "lookup", "partitions", "save_finished"]
