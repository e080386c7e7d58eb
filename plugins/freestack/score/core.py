"""Batch scoring: a registered version scores one interval's input rows into one Parquet file per day.

:func:`plan` resolves the version (an alias is resolved once, when the run starts), checks that it loads
(:class:`~freestack.score.model.ScoringModel`) and that every input file has its feature columns, and
lists the interval's input partitions (0-byte files left out, by name); :func:`score` scores one day of them with a day's writer,
:mod:`~freestack.score.predictions_writer` (a text-generation version's: :mod:`~freestack.score.answers_writer`),
into temporaries published in one step (:mod:`~freestack.score.published` lays the day's folder out): a
rerun replaces the interval whole, and a reader never sees a half-written file.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from freestack import step_cache
from freestack.errors import ScoreError
from freestack.registry.core import RegistryError, registry_for
from freestack.score.day import input_files, input_names, log_sample
from freestack.score.model import ScoringModel
from freestack.score.predictions_writer import write_predictions
from freestack.score.published import (
    FAILED,
    FAILED_QUARANTINE,
    MANIFEST,
    PART,
    QUARANTINE,
    STAGING,
    UnreadableScores,
    output_dir,
    read_scores_manifest,
)
from freestack.storage import AtomicWriter, abort_all, join, remove_temporaries, to_path, write_json

if TYPE_CHECKING:
    from collections.abc import Callable

    from freestack.score.rows import Counts
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)


def days_of(start: datetime, end: datetime) -> list[str]:
    """The days (ds) of the data interval ``[start, end)``; a zero-length interval is its start day."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date() if end > start else start.date()
    return [(first + timedelta(days=k)).isoformat() for k in range((last - first).days + 1)]


def resolve_version(spec: PipelineSpec) -> dict[str, str]:
    """``{"version", "uri", "asked"}``: the registered version ``score.version`` names now."""
    reg, asked = registry_for(spec), spec.score.version
    try:
        version = reg.resolve(asked)
    except RegistryError as exc:
        raise ScoreError(
            f"score.version {asked!r}: {exc}. Train and register a version first "
            f"({spec.name}_train), or name one in the spec"
        ) from None
    return {"version": version, "uri": reg.version_uri(version), "asked": asked}


def plan(spec: PipelineSpec, start: datetime, end: datetime) -> dict[str, Any]:
    """The run's version (checked: it loads, and every input file has its columns) and one job per day
    of ``[start, end)`` that has input; ``skipped`` names the days without. An empty file (0 bytes, or no
    header) is left out of its day with a line naming it (``job["empty"]``)."""
    resolved = resolve_version(spec)
    model = ScoringModel(resolved["uri"], "cpu")  # only to check it loads and what it takes
    jobs, skipped = [], []
    for ds in days_of(start, end):
        files, empty = [], []
        for item in input_files(spec, ds):
            try:
                names = input_names(spec, item)
            except (OSError, ValueError) as exc:
                kind = item.get("kind", "parquet")
                raise ScoreError(
                    f"{item['uri']} cannot be read as {kind} ({str(exc)[:300]}): replace or "
                    "remove the file, then clear this task",
                    ds=ds,
                ) from None
            if names is None:
                log.warning(
                    "%s: %s is empty (%d bytes): not scored; write its rows or remove it",
                    ds,
                    item["uri"],
                    item["size"],
                )
                empty.append(item["uri"])
                continue
            if item.get("kind") != "image" or not files:  # image files all give the same columns
                check_columns(spec, model, item, resolved["version"], names, ds)
            files.append(item)
        if not files:
            skipped.append(ds)
            continue
        jobs.append(
            {
                "ds": ds,
                "version": resolved["version"],
                "version_uri": resolved["uri"],
                "inputs": files,
                "output": output_dir(spec, ds),
                "empty": empty,
            }
        )
    return {**resolved, "jobs": jobs, "skipped": skipped}


def check_columns(
    spec: PipelineSpec,
    model: ScoringModel,
    item: dict[str, Any],
    version: str,
    names: list[str] | None = None,
    ds: str | None = None,
) -> None:
    """The input file must hold every feature column the version was trained on (and the key)."""
    names = input_names(spec, item) if names is None else names
    uri, key = item["uri"], spec.source.schema_.key
    missing = [c for c in [*model.pre.features, *([key] if key else [])] if c not in (names or [])]
    if missing:
        raise ScoreError(
            f"{uri} has no column(s) {missing}, which version {version} of {spec.model_name} takes: "
            f"score an input with the columns it was trained on ({', '.join(model.pre.features[:8])}"
            f"{'...' if len(model.pre.features) > 8 else ''}), or train a version on these",
            ds=ds,
        )


def score(
    spec: PipelineSpec,
    job: dict[str, Any],
    run: dict[str, str] | None = None,
    model: ScoringModel | None = None,
    *,
    write: Callable[..., tuple[Counts, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Score ``job``'s day (from :func:`plan`) and publish it; returns the manifest. The quarantine is
    published first, the part last: the part is the one commit point. Over ``score.max_error_fraction``
    nothing is published and the rows not scored are kept as ``_failed_quarantine.parquet``. ``write``
    fills the temporaries (a text-generation version's: :func:`freestack.score.answers_writer.write_answers`).
    With ``score.cache``, a day published from the same inputs is returned as it is (:func:`cached`)."""
    found = cached(spec, job)
    if found is not None and found.hit and (reused := _reused(job, found)) is not None:
        return reused
    job = {**job, "cache": found.record()} if found is not None else job  # the manifest records it
    model = model or ScoringModel(job["version_uri"], spec.train.device)
    if model.generative and write is None:
        raise ScoreError(
            f"{job['version']} is a text-generation version: its days are answered by "
            "freestack.score.answers_writer.score, not scored"
        )
    out_dir = to_path(job["output"])
    part_w, quar_w = AtomicWriter(join(out_dir, PART)), AtomicWriter(join(out_dir, STAGING))
    try:
        counts, manifest = (write or write_predictions)(spec, job, model, part_w, quar_w, run)
    except BaseException:
        abort_all(quar_w, part_w)  # both temporaries go, whatever aborting the first raises
        raise
    limit = spec.score.max_error_fraction
    if limit is not None and counts.rows_quarantined / counts.rows_in > limit:
        part_w.abort()  # the day's published scores, if any, stay as they were, with their quarantine
        kept = quar_w.commit_as(join(out_dir, FAILED_QUARANTINE))
        join(out_dir, STAGING).unlink(missing_ok=True)
        raise ScoreError(_over_limit(job["ds"], counts, limit, kept.uri), ds=job["ds"])
    if counts.rows_quarantined:
        quar_w.commit_as(join(out_dir, QUARANTINE))
    else:
        quar_w.abort()
    part_w.commit()
    if not counts.rows_quarantined:  # an earlier run's quarantine belongs to the scores just replaced
        join(out_dir, QUARANTINE).unlink(missing_ok=True)
    for name in (FAILED, FAILED_QUARANTINE, STAGING):  # an earlier failure of the day is answered
        join(out_dir, name).unlink(missing_ok=True)
    write_json(join(out_dir, MANIFEST), manifest)
    remove_temporaries(out_dir)
    if found is not None:
        step_cache.save(found, run, [PART, MANIFEST, *([QUARANTINE] if counts.rows_quarantined else [])])
    if counts.sample:
        log_sample(spec, job, model, counts.sample)
    for uri in job.get("empty", []):
        log.warning("%s: %s is empty: not scored", job["ds"], uri)
    log.info(
        "%s: %d rows scored with %s, %d quarantined -> %s",
        job["ds"],
        counts.rows_scored,
        job["version"],
        counts.rows_quarantined,
        join(out_dir, PART),
    )
    return manifest


def cached(spec: PipelineSpec, job: dict[str, Any]) -> step_cache.Lookup | None:
    """The day's scores cache (:mod:`freestack.step_cache`), keyed on the bytes of the day's input files (read
    now), the version's files and its Hub base's commit, and the spec blocks scoring reads (not
    ``score.version``: the version it resolved to is keyed); None with ``score.cache`` off. The version's
    name, each input file's sha256 and each block's digest are kept in words: a miss says what changed in
    them. A hit needs the published files to hold the bytes the entry recorded when they were written (the
    part, its manifest and quarantine, hashed again: scores rewritten since, even with their footer kept, are
    a miss), and is checked against the published manifest (:func:`_reused`). A miss removes the old
    entry before the day is scored again. A teacher's days (``score.teacher``) are not cached: the endpoint
    may answer otherwise tomorrow."""
    if not spec.score.cache or spec.score.teacher is not None:
        return None
    files = [[i["uri"], step_cache.file_digest(i["uri"])] for i in job["inputs"]]
    blocks = {"name": spec.name, "source": spec.source, "model": spec.model, "score": spec.score}
    leave_out = {"score": {"cache", "schedule", "queue", "version"}}
    found = step_cache.lookup(
        "score",
        job["output"],
        {
            "inputs": step_cache.digest(files),
            "empty": step_cache.digest(job.get("empty") or []),
            "version": job["version"],
            "version_files": step_cache.version_digest(job["version_uri"]),
            "base": step_cache.base_commit(job["version_uri"]),
            "spec": step_cache.spec_digest(blocks, leave_out),
        },
        shown={
            "inputs": _input_shown(job["inputs"], [sha for _, sha in files]),
            "version": step_cache.Shown(value=job["version"]),
            "spec": step_cache.spec_shown(blocks, leave_out),
        },
    )
    if not found.hit:
        log.info("%s: %s", job["ds"], found.line(""))
        step_cache.forget(found)
    return found


def _input_shown(inputs: list[dict[str, Any]], digests: list[str]) -> step_cache.Shown:
    """A day's input files in words, each with its sha256: a folder's files by their path under it, a
    lake partition's part by its last two (``ds=2026-11-02/part.parquet``)."""

    def name(item: dict[str, Any]) -> str:
        folder, uri = str(item.get("folder") or "").rstrip("/") + "/", str(item.get("uri") or "")
        if folder != "/" and uri.startswith(folder):
            return uri[len(folder) :]
        return "/".join(uri.split("/")[-2:])

    return step_cache.Shown(items={name(i): sha for i, sha in zip(inputs, digests, strict=True)})


def _reused(job: dict[str, Any], found: step_cache.Lookup) -> dict[str, Any] | None:
    """The day's published manifest (its scores kept as they are), with this run's cache record; an
    earlier failure's files and killed runs' temporaries are removed, as a publishing run removes them.
    None, the hit turned into a miss and its entry removed, when the part's manifest cannot be read, or
    is not of these inputs: it names another version or other input files (sha256), or was written under
    another key (the entry edited, or the day scored since uncached)."""
    out_dir = to_path(job["output"])
    try:
        manifest = read_scores_manifest(job["output"])
    except UnreadableScores as exc:
        found.miss = f"the published scores cannot be read: {exc}"  # bounded: its own words, whole
    else:
        items = [i for i in manifest.get("inputs") or [] if isinstance(i, dict)]
        recorded = {
            "inputs": _input_shown(items, [str(i.get("sha256") or "") for i in items]),
            "version": step_cache.Shown(value=str(manifest.get("version"))),
        }
        key = (manifest.get("cache") or {}).get("key")
        found.miss = step_cache.not_of(found, recorded, key, f"the manifest of {PART}")
    if found.miss is not None:
        log.warning("%s: %s", job["ds"], found.line(""))
        step_cache.forget(found)
        return None
    for name in (FAILED, FAILED_QUARANTINE, STAGING):
        join(out_dir, name).unlink(missing_ok=True)
    remove_temporaries(out_dir)
    log.info("%s: %s", job["ds"], found.line(f"the scores of {job['ds']}"))
    return {**manifest, "cache": found.record()}


def _over_limit(ds: str, counts: Counts, limit: float, kept: str) -> str:
    common = "; ".join(f"{why} ({n} row{'s' * (n > 1)})" for why, n in counts.reasons.most_common(3))
    share = counts.rows_quarantined / counts.rows_in
    return (
        f"{ds}: {counts.rows_quarantined} of {counts.rows_in} rows were not scored ({share:.1%}), over "
        f"score.max_error_fraction {limit:.1%}: nothing was published. Each of those rows and its reason "
        f"is in {kept}; the commonest: {common}. Fix the input and clear this task, or raise the limit"
    )
