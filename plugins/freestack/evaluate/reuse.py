"""Reusing an earlier evaluation instead of evaluating again.

With ``gate.cache``, an evaluation of the same inputs (the candidate's and production's files, the
partitions its lineage names, the spec blocks evaluate reads, the Hub base's commit) is found in the
step cache (:mod:`freestack.step_cache`) and returned as it was written; a registered version's
evaluation stands as recorded, for versions are immutable.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from freestack import step_cache
from freestack.monitor.core import REFERENCE_FILE
from freestack.storage import join, to_path
from freestack.version.files import CARD, LINEAGE

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

log = logging.getLogger(__name__)

#: what evaluate (and registration's card) writes into a candidate's folder: not part of its digest
WRITTEN_INTO = ("evaluation", REFERENCE_FILE, CARD)


def cached(
    spec: PipelineSpec, candidate_uri: str, champion_uri: str | None, end_ds: str | None
) -> step_cache.Lookup | None:
    """The candidate's evaluation cache (:mod:`freestack.step_cache`), keyed on the candidate's and production's
    files, the bytes of the partitions its lineage names, the spec blocks evaluate reads and the Hub base's
    commit; None with ``gate.cache`` off, for a window other than the candidate's own, or a candidate
    whose lineage cannot be read (the evaluation then says what is wrong). The versions' names, each
    partition's digest and each block's are kept in words: a miss says what changed in them, and a hit
    is checked against them (:func:`reused_evaluation`). A miss removes the old entry."""
    try:
        lineage = json.loads(join(to_path(candidate_uri), LINEAGE).read_text())
    except (OSError, ValueError):
        return None
    window = lineage.get("window") or {}
    if not spec.gate.cache or (end_ds and end_ds != window.get("end_ds")):
        return None
    partitions = [p for p in lineage.get("partitions") or [] if p.get("uri")]
    parts = [[p.get("ds"), step_cache.file_digest(p["uri"])] for p in partitions]
    blocks = {
        "name": spec.name,
        **{k: getattr(spec, k) for k in ("source", "train", "model", "gate", "monitor", "deploy")},
    }
    champion = "none"
    if champion_uri:
        try:
            champion = str(
                json.loads(join(to_path(champion_uri), LINEAGE).read_text()).get("version") or "none"
            )
        except (OSError, ValueError, AttributeError):
            champion = step_cache.MISSING
    found = step_cache.lookup(
        "evaluate",
        candidate_uri,
        {
            "candidate": step_cache.version_digest(candidate_uri, WRITTEN_INTO),
            "champion": step_cache.version_digest(champion_uri) if champion_uri else "none",
            "partitions": step_cache.digest(parts),
            "spec": step_cache.spec_digest(blocks, {"gate": {"cache"}}),
            "base": step_cache.base_commit(candidate_uri),
        },
        name=f"evaluation/{step_cache.ENTRY}",
        shown={
            "candidate": step_cache.Shown(value=str(lineage.get("version") or to_path(candidate_uri).name)),
            "champion": step_cache.Shown(value=champion),
            "partitions": step_cache.Shown(items={str(ds): sha for ds, sha in parts}, gone="left the window"),
            "spec": step_cache.spec_shown(blocks, {"gate": {"cache"}}),
        },
    )
    if not found.hit:
        log.info("%s", found.line(""))
        step_cache.forget(found)
    return found


def written_files(images: list[str], judged: bool) -> list[str]:
    """What an evaluation writes into the candidate's folder: the outputs its cache entry lists."""
    written = ["evaluation/metrics.json", "evaluation/report.html", "evaluation/smoke.json", REFERENCE_FILE]
    return written + [f"evaluation/{n}" for n in [*images, *(["judge.json"] if judged else [])]]


def reused_evaluation(candidate_uri: str, found: step_cache.Lookup) -> dict[str, Any] | None:
    """The earlier run's evaluation of the same inputs, as :func:`freestack.evaluate.core.evaluate` returned it (its W&B run);
    None, the hit turned into a miss and its entry removed, when its ``metrics.json`` cannot be read, or
    is not this evaluation of these inputs: it names another candidate or champion version, other window
    partitions, or it was written under another key (the entry edited, or evaluate run since uncached)."""
    try:
        summary = _summary_in(candidate_uri)
    except (OSError, ValueError) as exc:
        found.miss = f"the earlier evaluation cannot be read ({type(exc).__name__})"
    else:
        recorded = {
            "candidate": step_cache.Shown(value=str(summary.get("version"))),
            "champion": step_cache.Shown(value=str(summary.get("champion_version") or "none")),
            "partitions": step_cache.Shown(
                items=dict.fromkeys((summary.get("window") or {}).get("partitions") or [], "")
            ),
        }
        key = (summary.get("cache") or {}).get("key")
        found.miss = step_cache.not_of(found, recorded, key, "evaluation/metrics.json")
    if found.miss is not None:
        log.warning("%s", found.line(""))
        step_cache.forget(found)
        return None
    summary.update(wandb=(found.entry.extra.get("wandb") if found.entry else None), cache=found.record())
    log.info("%s", found.line(f"the evaluation of {summary.get('version')}"))
    return summary


def recorded_evaluation(candidate_uri: str) -> dict[str, Any]:
    """The evaluation a committed version holds (an evaluate task cleared after its gate registered
    the version): versions are immutable, so nothing is written into it again."""
    summary = _summary_in(candidate_uri)
    log.info(
        "%s is a registered version: its evaluation stands as recorded (%s)", candidate_uri, summary["report"]
    )
    return summary


def _summary_in(candidate_uri: str) -> dict[str, Any]:
    """The summary an evaluation wrote into ``evaluation/metrics.json``, its paths made whole again."""
    folder = join(to_path(candidate_uri), "evaluation")
    summary = json.loads(join(folder, "metrics.json").read_text())
    plots = {
        n: rel if "://" in rel else str(join(to_path(candidate_uri), *rel.split("/")))
        for n, rel in (summary.get("plots") or {}).items()
    }
    summary.update(
        candidate_uri=str(candidate_uri), plots=plots, report=str(join(folder, "report.html")), wandb=None
    )
    return summary


__all__ = ["WRITTEN_INTO", "cached", "recorded_evaluation", "reused_evaluation", "written_files"]
