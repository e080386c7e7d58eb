"""What several commands share: the ``--json`` and ``--root`` options, and finding a pipeline by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from freestack.cli.errors import CliError
from freestack.settings import pipelines_dir
from freestack.spec import load_spec, spec_file

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec

Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
Root = Annotated[
    str | None,
    typer.Option(
        "--root",
        help="Storage root URI (default: FREESTACK_STORAGE_ROOT, else the project's).",
        show_default=False,
    ),
]
Pipeline = Annotated[
    str,
    typer.Argument(
        metavar="PIPELINE",
        help="A pipeline name (its spec: include/pipelines/PIPELINE.yaml).",
        show_default=False,
    ),
]


def pipeline_names() -> list[str]:
    """The pipelines in the pipelines folder (its spec files' names), valid or not."""
    folder = pipelines_dir()
    return (
        sorted({p.stem for p in [*folder.glob("*.yaml"), *folder.glob("*.yml")]}) if folder.is_dir() else []
    )


def has_pipeline(name: str) -> bool:
    return name in pipeline_names()


def load_pipeline(name: str) -> PipelineSpec:
    """Pipeline ``name``'s spec; :class:`CliError` naming the pipelines there are when there is none
    (an invalid spec raises its :class:`~freestack.errors.SpecError`, which names the file and field)."""
    if not has_pipeline(name):
        names = pipeline_names()
        hint = (
            f"pipelines: {', '.join(names)}" if names else f"there is no pipeline spec in {pipelines_dir()}"
        )
        raise CliError(f"no pipeline {name!r}", hint)
    return load_spec(spec_file(name))


__all__ = ["Json", "Pipeline", "Root", "has_pipeline", "load_pipeline", "pipeline_names"]
