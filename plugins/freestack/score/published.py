"""A scored day's folder, as the score task publishes it and the CLI's ``freestack scores`` and the views'
Scores page read it back::

    <output>/part.parquet          key, ds, prediction, probabilities (or the value), version, scored_at;
                                   its footer holds the manifest (the record)
    <output>/_manifest.json        a copy of the manifest: version, its lineage, the inputs' sha256, counts
    <output>/_quarantine.parquet   rows not scored, with the reason for each (when there are any), laid out
                                   as ingest's quarantine: _source, _line, _reason, _raw, the columns as text
    <output>/_failed.json          why the day's last run failed (removed when a run publishes the day)
    <output>/_failed_quarantine.parquet   the rows a day over score.max_error_fraction could not score
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from freestack.errors import FreestackError, ScoreError
from freestack.storage import join, storage_root, subfolders, to_path, write_json

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)
PART, MANIFEST, QUARANTINE = "part.parquet", "_manifest.json", "_quarantine.parquet"
FAILED, FAILED_QUARANTINE = "_failed.json", "_failed_quarantine.parquet"
#: the quarantine's name until the day is published (as QUARANTINE) or fails (as FAILED_QUARANTINE)
STAGING = "_quarantine-staging.parquet"
FOOTER_KEY = b"freestack.scores"


def output_dir(spec: PipelineSpec, ds: str) -> str:
    """Where ``ds``'s scores go (a URI)."""
    rel = spec.score.output.format(pipeline=spec.name, ds=ds, model=spec.model_name)
    return rel if "://" in rel else str(join(storage_root(spec.storage_root), rel))


_DS = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class UnreadableScores(ScoreError):
    """A scored day whose record cannot be read; the message says what is wrong."""


def scores_parent(spec: PipelineSpec) -> tuple[ObjectStoragePath, str, str]:
    """The folder holding the days' folders, and what a day folder's name has before and after its ds."""
    before, after = spec.score.output.split("{ds}", 1)
    parent, _, prefix = before.format(pipeline=spec.name, model=spec.model_name).rpartition("/")
    root = (
        to_path(parent)
        if "://" in parent
        else join(storage_root(spec.storage_root), *([parent] if parent else []))
    )
    return root, prefix, after.split("/", 1)[0]


def score_days(spec: PipelineSpec) -> list[str]:
    """The days (ds) with a folder under the spec's score output, newest first (one listing, nothing read)."""
    parent, prefix, suffix = scores_parent(spec)
    names = [n for n in subfolders(parent) if n.startswith(prefix) and n.endswith(suffix)]
    days = [n[len(prefix) : len(n) - len(suffix)] for n in names if len(n) > len(prefix) + len(suffix)]
    return sorted((d for d in days if _DS.match(d)), reverse=True)


def read_scores_manifest(folder: str) -> dict[str, Any]:
    """The manifest in the footer of a scored day's part (the record); :class:`UnreadableScores` says why not."""
    import pyarrow.parquet as pq

    try:
        with join(to_path(folder), PART).open("rb") as f:
            raw = (pq.read_metadata(f).metadata or {}).get(FOOTER_KEY)
    except FileNotFoundError:
        raise UnreadableScores(
            f"no {PART}: the day was never published (its score task failed, or is running)"
        ) from None
    except (OSError, ValueError) as exc:
        raise UnreadableScores(f"{PART} cannot be read as Parquet ({str(exc)[:200]})") from None
    if not raw:
        raise UnreadableScores(
            f"{PART} has no scores manifest in its footer (key {FOOTER_KEY.decode()}): "
            "it was not written by the score task"
        )
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise UnreadableScores(f"the manifest in the footer of {PART} is not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise UnreadableScores(f"the manifest in the footer of {PART} is not a JSON object")
    return manifest


def scored_days(spec: PipelineSpec) -> list[dict[str, Any]]:
    """The manifests of the scored days, newest first; a day that cannot be read is ``{"ds", "problem"}``;
    a day whose last run failed has ``failed`` (:func:`read_failure`), published scores or not."""
    out = []
    for ds in score_days(spec):
        folder = output_dir(spec, ds)
        try:
            day = read_scores_manifest(folder)
        except UnreadableScores as exc:
            day = {"ds": ds, "problem": str(exc)}
        if (failed := read_failure(folder)) is not None:
            day["failed"] = failed
        out.append(day)
    return out


def record_failure(
    spec: PipelineSpec, ds: str, error: str, *, task: str, run: dict[str, Any] | None = None
) -> None:
    """Write why ``ds``'s run failed into the day's folder (``_failed.json``), where the Scores page and
    ``freestack scores`` read it; the next run that publishes the day removes it. A record that cannot be
    written is logged, never raised over the error it records."""
    record = {
        "ds": ds,
        "error": error,
        "task": task,
        "run": run or {},
        "failed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        write_json(join(to_path(output_dir(spec, ds)), FAILED), record)
    except (OSError, FreestackError) as exc:
        log.warning("%s: the failure could not be recorded in %s (%s)", ds, output_dir(spec, ds), exc)


def read_failure(folder: str) -> dict[str, Any] | None:
    """The day's last failure (``error``, ``task``, ``run``, ``failed_at``); None when its last run
    published it."""
    try:
        record = json.loads(join(to_path(folder), FAILED).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"error": f"{FAILED} cannot be read ({str(exc)[:200]})"}
    if not isinstance(record, dict) or not record.get("error"):
        return {"error": f"{FAILED} holds no error"}
    return record
