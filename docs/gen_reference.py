"""The reference pages, generated from the code at every docs build (mkdocs-gen-files), so they cannot drift:

- ``reference/spec.md``: every block of a pipeline spec, from the pydantic models that validate it;
- ``reference/settings.md``: every ``FREESTACK_*`` setting, from :class:`freestack.settings.Settings`;
- ``reference/cli.md``: every ``freestack`` command, from the CLI's own parser.
"""

from __future__ import annotations

import argparse
import types
import typing
from enum import Enum
from typing import Any, Literal, get_args, get_origin

import mkdocs_gen_files
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

# ---------------------------------------------------------------------------------------------------------
# types and defaults as a reader writes them in YAML


def type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (list, tuple, set):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    from datetime import date
    from pathlib import Path

    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", date: "date"}
    if annotation in names:
        return names[annotation]
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(its defaults)"
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else str(value)
    return f"`{text}`" if len(text) < 60 else f"`{text[:57]}...`"


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation refers to (a block, a list of columns, an optional block...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in models_in(a)]


def field_table(model: type[BaseModel]) -> list[str]:
    rows = ["| field | type | default | what it is |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        shown = field.alias or name
        description = (field.description or "").replace("\n", " ").replace("|", "\\|")
        rows.append(f"| `{shown}` | {type_name(field.annotation)} | {default_text(field)} | {description} |")
    return rows


# ---------------------------------------------------------------------------------------------------------
# the pages


def spec_page() -> str:
    from freestack.spec import PipelineSpec

    lines = [
        "# Pipeline spec reference",
        "",
        "One YAML file per pipeline in `include/pipelines/` (the `pipelines_dir` setting elsewhere), named",
        "after the pipeline. This page is generated from the models that validate a spec when it is read:",
        "an unknown field, a wrong type or a value out of range is an error naming the file and the field,",
        "and that spec's DAGs are not built (the other pipelines are). Stage blocks live with their stage",
        "(`freestack.<stage>.spec`); `freestack.spec` assembles them.",
        "",
    ]
    seen: set[type[BaseModel]] = set()
    queue: list[type[BaseModel]] = [PipelineSpec]
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines += [f"## {model.__name__}", "", f"*{model.__module__}* — {doc}", "", *field_table(model), ""]
        for field in model.model_fields.values():
            queue += [m for m in models_in(field.annotation) if m not in seen]
    return "\n".join(lines)


def settings_page() -> str:
    from freestack.settings import PREFIX, Settings

    lines = [
        "# Settings reference",
        "",
        "Every `FREESTACK_*` environment variable, read and checked in one place",
        "(`freestack.settings.Settings`, pydantic-settings). A value that does not parse is an error naming",
        "the variable. This page is generated from that class.",
        "",
        "| variable | type | default | what it is |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{PREFIX}{name.upper()}` | {type_name(field.annotation)} | {default_text(field)} | {description} |")
    return "\n".join(lines) + "\n"


def cli_page() -> str:
    from freestack.cli import parser

    lines = [
        "# CLI reference",
        "",
        "`freestack` (also `python -m freestack.cli`, and `make demo`, `make up`, `make down`), as its own",
        "`--help` prints it. This page is generated from the command's parser.",
        "",
    ]
    for path, sub in commands(parser(), ["freestack"]):
        lines += [f"## `{' '.join(path)}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def commands(ap: argparse.ArgumentParser, path: list[str]):
    yield path, ap
    for action in ap._actions:  # argparse keeps its sub-commands here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, [*path, name])


for target, page in (("reference/spec.md", spec_page), ("reference/settings.md", settings_page),
                     ("reference/cli.md", cli_page)):  # fmt: skip
    with mkdocs_gen_files.open(target, "w") as f:
        f.write(page())
