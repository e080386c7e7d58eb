"""Step caching: a stage's task reuses an earlier run's outputs when the inputs that decide them did not change.

A cached step names its inputs, each as a sha256 (the partitions' or files' bytes, the spec blocks it reads as
canonical JSON, the model versions, freestack's code: its version and a digest of its source files); the cache key is the sha256 of that list. When
a step has run, a small JSON entry is written whole beside its outputs (``_cache.json``): the key, the inputs,
the run that made it, the outputs' paths (relative to the folder) and each output's sha256 as that run wrote
it (a folder's: each of its files'). The next run computes the key first:

* the same key, the entry intact, every output still there and each with the bytes its recorded sha256
  says (hashed again now): a hit, and the outputs are reused as they are;
* otherwise a miss, naming which input changed (or that the entry is missing, unreadable, records no
  digest of an output, or an output is gone or holds other bytes than its run wrote), and the step does
  its work; the old entry is removed before it starts (:func:`forget`), so a run that fails half-way leaves
  no entry pointing at half-replaced outputs.

A step may also show its inputs in words (:class:`Shown`: a version's name, the digest of each partition,
file or spec block), kept in the entry: a miss then says what changed (``champion v0001 -> v0002``,
``partitions 2026-11-02 (other bytes)``), and a hit is checked against what the outputs it would reuse
record of their own inputs (:func:`not_of`), so an entry edited by hand, or outputs a step left uncached
wrote over, is a miss saying so, never a wrong reuse.

A corrupt entry is a miss, never a wrong reuse. Used by ``evaluate`` (:mod:`freestack.evaluate.core`),
``score`` (:mod:`freestack.score.core`) and, with ``train.cache``, ``train`` (:mod:`freestack.train.reuse`);
imports no stage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from freestack import __version__
from freestack.storage import join, sha256_of, to_path, write_json
from freestack.version.files import LINEAGE, MARKER

if TYPE_CHECKING:
    from collections.abc import Iterable

    from airflow.sdk import ObjectStoragePath

log = logging.getLogger(__name__)
ENTRY = "_cache.json"
#: what an input that cannot be read digests to: never equal to a file's sha256, so it is a miss
MISSING = "missing"
#: a miss with no entry to compare with: the step's first run in that folder
FIRST = "no earlier run"


class Shown(BaseModel):
    """An input in the words a miss names it by: a ``value`` (a version's name) shown as it was and is, and
    named ``items`` (partitions by ds, files by name, spec blocks) with their digests, of which a miss names
    those that changed (``changed``), came (``new``) or went (``gone``). An item's empty digest is not
    known (an output that records names only): it is compared by name."""

    value: str | None = None
    items: dict[str, str] = Field(default_factory=dict)
    changed: str = Field("other bytes", description="what an item whose digest changed is said to have")
    gone: str = Field("gone", description="what an item no longer among them is said to be")


class CacheEntry(BaseModel):
    """``_cache.json``: what one successful run of a step was keyed on and where its outputs are."""

    stage: str = Field(description="the step: train, evaluate or score")
    key: str = Field(description="sha256 of the inputs (canonical JSON)")
    inputs: dict[str, str] = Field(description="each input's sha256 (or value), by name")
    run: dict[str, Any] = Field(default_factory=dict, description="the run that made the outputs")
    outputs: list[str] = Field(description="the outputs, relative to the entry's folder (or URIs)")
    written_at: str = ""
    extra: dict[str, Any] = Field(default_factory=dict, description="what the step keeps besides its files")
    digests: dict[str, str] = Field(
        default_factory=dict,
        description="each output's sha256 as its run wrote it, by output name; a folder's files each by "
        "<output>/<path under it>",
    )
    shown: dict[str, Shown] = Field(default_factory=dict, description="inputs in words, by input name")


@functools.cache
def code_digest() -> str:
    """sha256 of freestack's source files (each ``.py`` of the package, by its relative path): an edit to
    the code is a miss, whatever version the package says it is."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(f"{path.relative_to(root).as_posix()}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def digest(value: Any) -> str:
    """sha256 of ``value`` as canonical JSON (sorted keys, no spaces): equal values, equal digests."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def spec_digest(blocks: dict[str, Any], leave_out: dict[str, set[str]] | None = None) -> str:
    """The digest of the spec blocks a step reads (pydantic models dumped as JSON, ``leave_out`` naming
    fields of a block that do not decide the step's outputs, ``cache`` itself among them)."""
    dumped = {}
    for name, block in blocks.items():
        if isinstance(block, BaseModel):
            block = block.model_dump(mode="json", by_alias=True, exclude=(leave_out or {}).get(name))
        dumped[name] = block
    return digest(dumped)


def file_digest(uri: str | ObjectStoragePath) -> str:
    """sha256 of a file's bytes, read now; :data:`MISSING` when it cannot be read."""
    try:
        return sha256_of(to_path(uri))
    except (OSError, ValueError):
        return MISSING


def version_digest(uri: str, leave_out: Iterable[str] = ()) -> str:
    """A model version folder's digest: its registration manifest's sha256 (it holds every file's), or, for
    a folder not registered yet (a candidate), the digest of every file's sha256 but those under the names
    in ``leave_out`` (the files a step writes into it)."""
    folder = to_path(uri)
    if join(folder, MARKER).exists():
        return file_digest(join(folder, MARKER))
    skip = tuple(leave_out)
    rels = _files_in(folder)
    if rels is None:
        return MISSING
    kept = [r for r in rels if not any(r == s or r.startswith(s.rstrip("/") + "/") for s in skip)]
    return digest({r: file_digest(join(folder, r)) for r in kept}) if kept else MISSING


def _files_in(folder: ObjectStoragePath) -> list[str] | None:
    """The files under ``folder`` (its subfolders' too), by their paths under it, listed now; None when it
    cannot be listed."""
    base = folder.path.rstrip("/")
    folder.fs.invalidate_cache(folder.path)
    try:
        return sorted(f[len(base) + 1 :] for f in folder.fs.find(folder.path))
    except (OSError, ValueError):
        return None


def spec_shown(blocks: dict[str, Any], leave_out: dict[str, set[str]] | None = None) -> Shown:
    """The spec blocks of :func:`spec_digest`, each digested on its own: a miss names the blocks that changed."""
    return Shown(
        items={name: spec_digest({name: block}, leave_out) for name, block in blocks.items()},
        changed="other settings",
    )


def base_commit(version_uri: str) -> str:
    """The Hub base's commit a version was fine-tuned from (its lineage's ``base.commit``), or ``none``."""
    try:
        lineage = json.loads(join(to_path(version_uri), LINEAGE).read_text())
    except (OSError, ValueError):
        return MISSING
    base = lineage.get("base") if isinstance(lineage, dict) else None
    return str((base or {}).get("commit") or "none")


@dataclass
class Lookup:
    """One step's key against its folder's entry: a hit (``miss`` None) or why not."""

    stage: str
    folder: str
    name: str
    key: str
    inputs: dict[str, str]
    entry: CacheEntry | None
    miss: str | None
    shown: dict[str, Shown] = field(default_factory=dict)

    @property
    def hit(self) -> bool:
        return self.miss is None

    @property
    def from_run(self) -> str | None:
        """The run whose outputs a hit reuses."""
        return (self.entry.run.get("run_id") or "?") if self.hit and self.entry else None

    @property
    def same_inputs(self) -> bool:
        """The entry is intact, the step's, and keyed on these inputs (whether or not its outputs are there)."""
        e = self.entry
        return e is not None and e.stage == self.stage and e.key == self.key and e.key == digest(e.inputs)

    def record(self) -> dict[str, Any]:
        """What lineage and the manifests keep: ``{key, hit, from_run}``, and a miss's reason."""
        return {"key": self.key, "hit": self.hit, "from_run": self.from_run, "miss": self.miss}

    def line(self, what: str) -> str:
        """The task's log and run-note line (:func:`note`)."""
        return note(self.record(), what) or ""


def note(record: dict[str, Any] | None, what: str) -> str | None:
    """The line a task logs and adds to its run's note for a :meth:`Lookup.record`: ``cache hit: reused
    <what> from run <run_id> (key <12 hex>)`` or ``cache miss: <why> (key <12 hex>)``; None without one."""
    if not record or not record.get("key"):
        return None
    key = str(record["key"])[:12]
    if record.get("hit"):
        return f"cache hit: reused {what} from run {record.get('from_run')} (key {key})"
    return f"cache miss: {record.get('miss')} (key {key})"


def lookup(
    stage: str,
    folder: str,
    inputs: dict[str, str],
    name: str = ENTRY,
    shown: dict[str, Shown] | None = None,
) -> Lookup:
    """``inputs`` (with freestack's code version added) keyed, and compared with the entry ``name`` under
    ``folder``: a hit only when that entry is readable, is the stage's, holds this key (and its own inputs
    digest to it) and every output it lists is still there with the sha256 recorded when it was written
    (hashed again now). ``shown``: inputs in words (by input name), kept in the entry, so that a later miss
    says what changed in them."""
    inputs = {**inputs, "code_version": f"{__version__}+{code_digest()[:16]}"}
    key = digest(inputs)
    entry, miss = _read(to_path(folder), name)
    if entry is not None:
        miss = _why_not(entry, stage, key, inputs, to_path(folder), shown or {})
    return Lookup(stage, str(folder), name, key, inputs, entry, miss, shown or {})


def _read(folder: ObjectStoragePath, name: str) -> tuple[CacheEntry | None, str | None]:
    path = join(folder, name)
    try:
        return CacheEntry.model_validate_json(path.read_bytes()), None
    except FileNotFoundError:
        return None, FIRST
    except (OSError, ValueError, ValidationError) as exc:
        log.warning("the cache entry %s cannot be read: %s", path, str(exc)[:300])
        return None, f"the cache entry cannot be read ({type(exc).__name__})"


def _why_not(
    entry: CacheEntry,
    stage: str,
    key: str,
    inputs: dict[str, str],
    folder: ObjectStoragePath,
    shown: dict[str, Shown],
) -> str | None:
    """None for a usable entry, else why it is not (the inputs that changed, first: those shown in words
    on both sides say how, ``spec changed since run R: gate (other settings)``)."""
    if entry.stage != stage or entry.key != digest(entry.inputs):
        return "the cache entry is not intact"
    if entry.key != key:
        changed = sorted(k for k in {*inputs, *entry.inputs} if inputs.get(k) != entry.inputs.get(k))
        said = f"{', '.join(changed) or 'the key'} changed since run {entry.run.get('run_id') or '?'}"
        how = _differing({k: v for k, v in entry.shown.items() if k in changed}, shown)
        if not how:
            return said
        if len(changed) == 1 and changed[0] in how:  # one input, named already
            return f"{said}: {how[changed[0]]}"
        return f"{said}: {'; '.join(f'{name} {words}' for name, words in how.items())}"
    gone = [rel for rel in entry.outputs if not _output(folder, rel).exists()]
    if gone or not entry.outputs:
        return f"outputs gone: {', '.join(gone[:3]) or 'none listed'}"
    return _rewritten(entry, folder)


def _rewritten(entry: CacheEntry, folder: ObjectStoragePath) -> str | None:
    """Why the outputs are not those the entry's run wrote, None when they are: an output the entry
    records no sha256 of (an entry from before digests were kept, or edited), or a file whose bytes
    differ now from the sha256 recorded when it was written (rewritten since, or removed from a folder)."""
    run = entry.run.get("run_id") or "?"
    for name in entry.outputs:
        under = name.rstrip("/") + "/"
        recorded = {k: v for k, v in entry.digests.items() if k == name or k.startswith(under)}
        if not recorded:
            return f"the cache entry records no sha256 of {name}: its outputs cannot be checked"
        for path, sha in sorted(recorded.items()):
            now = file_digest(_output(folder, path))
            if now != sha:
                said = "it is gone" if now == MISSING else f"sha256 {now[:12]} now"
                return f"{path} is not what run {run} wrote (sha256 {sha[:12]} then, {said})"
    return None


def output_digests(folder: str | ObjectStoragePath, outputs: list[str]) -> dict[str, str]:
    """Each output's sha256 read now, by its name (an output relative to ``folder``, or a URI); a folder's
    files each by ``<output>/<path under it>``: what :func:`save` records and a hit is checked against."""
    root, digests = to_path(folder), {}
    for name in outputs:
        path = _output(root, name)
        files = _files_in(path) if path.is_dir() else None
        if not files:
            digests[name] = file_digest(path)
            continue
        for rel in files:
            digests[f"{name.rstrip('/')}/{rel}"] = file_digest(join(path, rel))
    return digests


def differences(was: dict[str, Shown], now: dict[str, Shown]) -> list[str]:
    """How each input shown on both sides differs, in words, ``was`` to ``now``: ``champion v0001 ->
    v0002``, ``partitions 2026-11-02 (other bytes), 2026-11-06 (new), 2026-10-30 (gone)``; [] when alike."""
    return [f"{name} {how}" for name, how in _differing(was, now).items()]


def _differing(was: dict[str, Shown], now: dict[str, Shown]) -> dict[str, str]:
    """:func:`differences` by input name, each without its name."""
    said = {}
    for name in sorted(was.keys() & now.keys()):
        before, after = was[name], now[name]
        old, new = before.items, after.items
        both = sorted(old.keys() & new.keys())
        items = [f"{k} ({after.changed})" for k in both if old[k] and new[k] and old[k] != new[k]]
        items += [f"{k} (new)" for k in sorted(new.keys() - old.keys())]
        items += [f"{k} ({after.gone})" for k in sorted(old.keys() - new.keys())]
        more = f", and {len(items) - 5} more" if len(items) > 5 else ""
        words = (
            [f"{before.value or 'none'} -> {after.value or 'none'}"] if before.value != after.value else []
        )
        words += [", ".join(items[:5]) + more] if items else []
        if words:
            said[name] = "; ".join(words)
    return said


def not_of(found: Lookup, recorded: dict[str, Shown], recorded_key: str | None, what: str) -> str | None:
    """Why the outputs a hit would reuse are not of ``found``'s inputs, None when they are: ``what`` (the
    file naming them) records other inputs than the key shows (``recorded``, in the key's names), or was
    written under another key (the key its run recorded: ``recorded_key``), that is by a run the entry does
    not name (an entry edited or copied by hand, or the step run since with its cache off)."""
    how = differences(recorded, found.shown)
    if how:
        return f"{what} records other inputs than these (recorded -> now: {'; '.join(how)})"
    if recorded_key != found.key:
        written = f"key {recorded_key[:12]}" if recorded_key else "no key"
        return f"{what} was written under {written}, not by the run the cache entry names"
    return None


def _output(folder: ObjectStoragePath, name: str) -> ObjectStoragePath:
    """An entry's output: a path relative to its folder, or a URI (a step whose output lives elsewhere)."""
    return to_path(name) if "://" in name else join(folder, name)


def forget(found: Lookup) -> None:
    """Remove the entry before the step replaces its outputs (a run that fails half-way leaves none)."""
    join(to_path(found.folder), found.name).unlink(missing_ok=True)


def save(
    found: Lookup, run: dict[str, Any] | None, outputs: list[str], extra: dict[str, Any] | None = None
) -> CacheEntry:
    """Write the entry of a run that made ``outputs`` (relative to the folder, or URIs) under ``found``'s
    key, with each output's sha256 as it is now (:func:`output_digests`): call it once they are written."""
    entry = CacheEntry(
        stage=found.stage,
        key=found.key,
        inputs=found.inputs,
        run=dict(run or {}),
        outputs=outputs,
        written_at=datetime.now(UTC).isoformat(timespec="seconds"),
        extra=extra or {},
        shown=found.shown,
        digests=output_digests(found.folder, outputs),
    )
    write_json(join(to_path(found.folder), found.name), entry.model_dump(mode="json"))
    return entry


__all__ = [
    "ENTRY",
    "FIRST",
    "MISSING",
    "base_commit",
    "CacheEntry",
    "Lookup",
    "Shown",
    "differences",
    "digest",
    "file_digest",
    "forget",
    "lookup",
    "not_of",
    "note",
    "output_digests",
    "save",
    "spec_digest",
    "spec_shown",
    "version_digest",
]
