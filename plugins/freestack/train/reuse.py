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
version since deleted, trains. A hit is checked, never taken on the entry's word (an entry edited or
copied is a miss saying why):

* against the sha256 of each file the training wrote into the version's folder, recorded in the entry
  (:func:`freestack.step_cache.save`): a candidate's files are hashed again, a registered version's are
  those its registration manifest lists (but ``lineage.json`` and ``README.md``, which registration
  rewrites), its lineage read as checked against that manifest;
* against the lineage of the version it names: its partitions (each ds and sha256), the digest of its
  settings (``keyed_spec``, :func:`freestack.train.core.keyed_spec`) and its base's commit must be this
  key's.

Changed data, which finds no entry of its own, names the days that changed since the newest entry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from freestack import step_cache
from freestack.registry.core import ModelRegistry, registry_for
from freestack.storage import join, storage_root, to_path
from freestack.train.core import NOT_INPUTS, effective_spec, keyed_spec
from freestack.train.pretrained import pretrained_base
from freestack.train.request import TrainOutcome, TrainRequest
from freestack.train.window import Window
from freestack.version import Manifest, VersionError
from freestack.version import open as open_version
from freestack.version.files import CARD, LINEAGE
from freestack.version.write import read_lineage

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)
STAGE = "train"
#: what registration writes anew into a version: not the files the training wrote
REWRITTEN = (LINEAGE, CARD)


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
    return {
        "partitions": step_cache.digest(partitions(spec, req)),
        "spec": keyed_spec(run_spec),
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
    miss (which trains). A hit is checked against the files the training wrote and the lineage of the
    version it names (:func:`_registered`, :func:`_candidate`): an entry edited, or copied from elsewhere,
    is a miss saying why. A first run of a window's data names what changed since the newest earlier entry."""
    given = inputs(spec, req)
    # one entry per window's data: a retraining of the same partitions with other settings names them
    found = step_cache.lookup(STAGE, folder(spec), given, name=f"{given['partitions'][:24]}.json")
    entry, reg = found.entry, registry_for(spec)
    if found.same_inputs and entry is not None:
        version = str(entry.extra.get("version") or "")
        if version and reg.is_registered(version):
            return _registered(found, reg, version, spec, req)
    if found.hit and entry is not None:
        return _candidate(found, spec, req)
    if found.miss == step_cache.FIRST:
        return Reuse(replace(found, miss=_changed_since(spec, req) or step_cache.FIRST))
    return Reuse(found)


def _registered(
    found: step_cache.Lookup, reg: ModelRegistry, version: str, spec: PipelineSpec, req: TrainRequest
) -> Reuse:
    """An entry (keyed on these inputs) naming a version registered since: that version, when its
    lineage (read as checked against its registration manifest) is of these inputs and its manifest lists
    the files the entry's run trained; else a miss saying which is not."""
    entry = found.entry
    assert entry is not None
    try:
        opened = open_version(reg.version_uri(version))
    except VersionError as exc:
        return Reuse(
            replace(found, miss=f"the cache entry names version {version}, which cannot be read: {exc}")
        )
    lineage = opened.lineage.model_dump(mode="json")
    why = _trained_on_others(lineage, version, found.inputs, spec, req) or _not_trained_by(
        entry, opened.manifest, version
    )
    if why is not None:
        return Reuse(replace(found, miss=why))
    earlier = {**entry.extra["outcome"], "version_uri": reg.version_uri(version)}
    return Reuse(found, outcome=TrainOutcome(**earlier), registered=version)


def _candidate(found: step_cache.Lookup, spec: PipelineSpec, req: TrainRequest) -> Reuse:
    """A hit on a candidate (its files hashed again by the lookup): its outcome, when it is the folder the
    entry's run wrote and its lineage is of these inputs; else a miss saying which is not."""
    entry = found.entry
    assert entry is not None
    outcome = TrainOutcome(**entry.extra["outcome"])
    if outcome.version_uri not in entry.outputs:
        why = f"the cache entry's outcome names {outcome.version_uri}, not the folder its run wrote"
        return Reuse(replace(found, miss=why))
    lineage = read_lineage(outcome.version_uri).model_dump(mode="json")
    why = _trained_on_others(lineage, outcome.version, found.inputs, spec, req)
    return Reuse(replace(found, miss=why)) if why else Reuse(found, outcome=outcome)


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
    lineage: dict[str, Any], version: str, given: dict[str, str], spec: PipelineSpec, req: TrainRequest
) -> str | None:
    """Why the version an entry names cannot be this training's (:func:`_lineage_differs` from ``given``,
    the key's inputs); None when it is."""
    why = _lineage_differs(lineage, given, sorted(partitions(spec, req)))
    if why is None:
        return None
    return (
        f"the cache entry names version {version}, whose lineage {why} (the entry was edited or copied): "
        "training again"
    )


def _lineage_differs(lineage: dict[str, Any], given: dict[str, str], wanted: list[list[str]]) -> str | None:
    """How a version's lineage is not of a key's inputs: it names other partitions than the window's
    (``wanted``, ``[ds, sha256]`` each), records other settings (or none) than the key's ``spec``, or
    another base commit than its ``base``; None when it is of them."""
    seen = sorted([str(p.get("ds")), str(p.get("sha256"))] for p in lineage.get("partitions") or [])
    settings, base = lineage.get("keyed_spec"), str((lineage.get("base") or {}).get("commit") or "none")
    if seen != wanted:
        return f"names other partitions than these {len(wanted)}"
    if not settings:
        return "records no digest of the settings it was trained with (keyed_spec)"
    if settings != given["spec"]:
        return (
            f"records other settings than these (keyed_spec {str(settings)[:12]}, now {given['spec'][:12]})"
        )
    if base != given["base"]:
        return f"names another base commit ({base[:12]}, now {given['base'][:12]})"
    return None


def _not_trained_by(entry: step_cache.CacheEntry, manifest: Manifest | None, version: str) -> str | None:
    """Why registered ``version`` does not hold the files the entry's run trained (their sha256 as recorded
    in the entry, but those registration rewrites, against its registration manifest); None when it does."""
    under = (entry.outputs[0] if entry.outputs else "").rstrip("/") + "/"
    trained = {
        k[len(under) :]: sha
        for k, sha in entry.digests.items()
        if k.startswith(under) and k[len(under) :] not in REWRITTEN
    }
    if not trained:
        return (
            f"the cache entry records no sha256 of the files its run trained: version {version} cannot be "
            "checked against them"
        )
    files = manifest.files if manifest is not None else {}
    other = sorted(rel for rel, sha in trained.items() if rel not in files or files[rel].sha256 != sha)
    if not other:
        return None
    run = entry.run.get("run_id") or "?"
    named = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
    return (
        f"the cache entry names version {version}, whose registered files are not those run {run} trained "
        f"({named}; the entry was edited or copied): training again"
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
