"""Scoring a folder or a file of rows with a registered version, for :class:`FreestackScoreOperator
<freestack.providers.operators.FreestackScoreOperator>`: the score stage's own day, given the version's
in-memory spec (:func:`freestack.providers.versions.version_spec`) and one job built from the arguments.

The rows are read, checked, encoded, predicted (a text-generation version's prompts answered) and
published whole into the output folder exactly as ``<p>_score`` publishes a day
(:func:`freestack.score.core.score`): ``part.parquet`` (its footer holding the manifest) is the commit
point, written to a temporary first, so a reader never sees half of it; ``_manifest.json`` and, when rows
were refused, ``_quarantine.parquet`` beside it.

Imports numpy and the score stage: the operator imports this module in ``execute``, never at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from freestack.errors import ScoreError
from freestack.providers.versions import registry_of, resolve, version_spec, where
from freestack.score import answers_writer, core
from freestack.score.day import input_files
from freestack.score.folder_input import file_item, kind_of
from freestack.score.model import ScoringModel
from freestack.spec import PipelineSpec
from freestack.storage import to_path
from freestack.version import open as open_version


@dataclass(frozen=True)
class ScoreRequest:
    """What to score with what: the operator's arguments as rendered for the run."""

    model: str
    asked: str  # a version, an alias or latest
    argument: str  # which argument named it (version or alias), for the error that names it
    input_uri: str
    output_uri: str
    ds: str
    storage: str | None = None
    columns: tuple[str, ...] = ("prediction", "probabilities")
    batch_rows: int = 4096
    max_error_fraction: float | None = None
    monitor: bool = False
    max_new_tokens: int | None = None  # a text-generation version's; None: the score stage's default


def score(req: ScoreRequest, run: dict[str, str]) -> dict[str, Any]:
    """Score the request's input with its version and publish the scores whole; the manifest."""
    reg = registry_of(req.model, req.storage)
    version = resolve(reg, req.asked, req.argument)
    uri = reg.version_uri(version)
    block = {
        "columns": list(req.columns),
        "batch_rows": req.batch_rows,
        "max_error_fraction": req.max_error_fraction,
        "monitor": req.monitor,
        "version": version,
    }
    opened = open_version(uri)
    if req.max_new_tokens is not None and opened.preprocessing and opened.preprocessing.task == "generation":
        block["generation"] = {"max_new_tokens": req.max_new_tokens}
    spec = version_spec(opened, req.model, req.storage, block)
    model = ScoringModel(uri, spec.train.device)
    job = plan(spec, model, version, uri, req)
    scorer = answers_writer.score if model.generative else core.score
    return scorer(spec, job, run, model)


def plan(
    spec: PipelineSpec, model: ScoringModel, version: str, uri: str, req: ScoreRequest
) -> dict[str, Any]:
    """The score stage's job for the input: its files (a folder's, as the stage lists a folder input, or
    the one file), each checked for the version's columns; empty files left out, by name."""
    source = where(req.input_uri, req.storage)
    path = to_path(source)
    if path.is_file():
        items = [_file_item(path)]
    else:  # the folder as the score stage lists a folder input (its braces kept as they are)
        folder = source.replace("{", "{{").replace("}", "}}")
        spec = spec.model_copy(update={"score": spec.score.model_copy(update={"input": folder})})
        items = input_files(spec, req.ds)
    files = [i for i in items if i["size"]]
    if not files:
        raise ScoreError(
            f"input_uri {req.input_uri!r} holds no rows to score: a Parquet or CSV file (or images), "
            f"not empty, {'is expected there' if items else 'was not found'} ({source})",
            ds=req.ds,
        )
    for item in files if files[0].get("kind") != "image" else files[:1]:
        core.check_columns(spec, model, item, version, ds=req.ds)
    return {
        "ds": req.ds,
        "version": version,
        "version_uri": uri,
        "inputs": files,
        "output": where(req.output_uri, req.storage),
        "empty": [i["uri"] for i in items if not i["size"]],
    }


def _file_item(path) -> dict[str, Any]:
    """One input file as the score stage lists it (its folder is the file's own)."""
    if kind_of(path.name) is None:
        raise ScoreError(
            f"input_uri {str(path)!r} is not a Parquet, CSV or image file: name a folder, or one of those"
        )
    return file_item(path, path.parent)


__all__ = ["ScoreRequest", "plan", "score", "where"]
