"""``freestack validate [SPEC...]``: read pipeline specs as the DAG processor does and say what is wrong.

With no argument, every spec in the pipelines folder; an argument is a spec file or a pipeline name.
A valid spec prints one line (every DAG the DAG factory builds for it, which of them start paused, and
its task); an invalid one prints the same message the UI's import
error shows (the file, the field, the fix) on stderr, and the command exits 1. Across files, a local
deployment whose three ports (port, port + 1, port + 2) overlap another spec's is refused too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from freestack.cli.errors import say_error
from freestack.cli.output import print_json
from freestack.errors import SpecError
from freestack.settings import pipelines_dir
from freestack.spec import PipelineSpec, load_spec, pipeline_dags, port_overlap, spec_file
from freestack.train.request import TrainingError


def _targets(specs: list[str]) -> list[Path]:
    if not specs:
        folder = pipelines_dir()
        return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
    return [Path(s) if s.endswith((".yaml", ".yml")) or "/" in s else spec_file(s) for s in specs]


def _check_model(spec, path: Path) -> None:
    """A custom model is imported, built and run on a batch (as the train DAG's first task does)."""
    if spec.model.type != "custom":
        return
    from freestack.train.core import check_custom_model

    try:
        check_custom_model(spec)
    except TrainingError as exc:
        raise SpecError(str(path), "model", str(exc).removeprefix(f"pipeline {spec.name!r}: ")) from None


def _read(paths: list[Path]) -> dict[Path, PipelineSpec | SpecError]:
    """Each spec checked and every spec of the pipelines folder (whose deployments' ports the checked
    ones must not overlap), read once: a spec or the error that broke it."""
    read: dict[Path, PipelineSpec | SpecError] = {}
    for path in [*paths, *_targets([])]:
        if path not in read:
            try:
                read[path] = load_spec(path)
            except SpecError as exc:
                read[path] = exc
    return read


def _check_ports(spec: PipelineSpec, path: Path, read: dict[Path, PipelineSpec | SpecError]) -> None:
    """A local deployment's ports overlap no other spec's deployment (SpecError naming both)."""
    for other_path, other in read.items():
        if isinstance(other, SpecError) or other_path.resolve() == path.resolve():
            continue
        problem = port_overlap(spec, other, str(other_path))
        if problem:
            raise SpecError(str(path), "deploy.local.port", problem)


def _task(spec) -> str | None:
    """The task the spec trains: a pretrained model's own (text-classification, image-classification), else
    the spec's (classification, regression), else None (the data decides)."""
    if spec.model.type == "huggingface":
        from freestack.train.pretrained import pretrained_task

        return pretrained_task(spec)
    return spec.task


def validate(
    specs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[SPEC]...",
            help="Spec files or pipeline names; default: every spec in the pipelines folder.",
        ),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="One JSON object per spec: file, ok, error.")] = False,
) -> int:
    """Check pipeline specs (each file, field and fix, as the UI's import error says); exit 1 if any is invalid."""
    paths = _targets(list(specs or []))
    if not paths:
        say_error("no pipeline specs to check; pass a spec file, or add one to the pipelines folder")
        return 1
    results, bad = [], 0
    read = _read(paths)
    for path in paths:
        try:
            spec = read[path]
            if isinstance(spec, SpecError):
                raise spec
            _check_model(spec, path)
            _check_ports(spec, path, read)
        except SpecError as exc:
            bad += 1
            results.append({"file": str(path), "ok": False, "error": str(exc)})
            if not json:
                say_error(str(exc))
            continue
        dags = pipeline_dags(spec)
        task = _task(spec)
        results.append(
            {
                "file": str(path),
                "ok": True,
                "pipeline": spec.name,
                "dags": [d for d, _, _ in dags],
                "paused_at_creation": [d for d, _, manual in dags if not manual],
                "task": task or "auto",
                "sha256": spec.file_sha256,
            }
        )
        if not json:
            paused = [d for d, _, manual in dags if not manual]
            print(
                f"ok {path}: DAGs {', '.join(d for d, _, _ in dags)} ({', '.join(paused)} start paused); "
                f"task {task or 'decided by the data'}"
            )
    if json:
        print_json(results)
    return 1 if bad else 0


__all__ = ["validate"]
