"""The reference pages, generated from the code at every docs build (mkdocs-gen-files), so they cannot drift:

- ``reference/spec.md``: every block of a pipeline spec, from the pydantic models that validate it;
- ``reference/settings.md``: every ``FREESTACK_*`` setting, from :class:`freestack.settings.Settings`;
- ``reference/cli.md``: every ``freestack`` command, its arguments and options, from the CLI's command tree;
- ``reference/version.md``: the JSON files of a model version folder, from the records that read them
  (:mod:`freestack.version.records`).
"""

from __future__ import annotations

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


def version_page() -> str:
    from freestack.version import files
    from freestack.version.records import (
        FineTuned,
        Lineage,
        Manifest,
        ManifestFile,
        Metrics,
        ModelConfig,
        Preprocessing,
    )

    lines = [
        "# Model version reference",
        "",
        "A model version is one folder (`candidates/<model>/<version>/` while it is evaluated,",
        "`registry/<model>/<version>/` once registered), read and loaded through `freestack.version`:",
        "`freestack.version.open(uri)` reads its JSON files into the records below, `.verify()` checks every",
        f"file against the registration manifest (`{files.MARKER}`), and `.load()` verifies, then gives the",
        "model with everything it predicts with. Each record keeps the keys it does not name, so a version",
        "written by earlier code still reads. This page is generated from those records.",
        "",
    ]
    for name, model in (
        (files.CONFIG, ModelConfig),
        (f"{files.CONFIG}: freestack", FineTuned),
        (files.PREPROCESSING, Preprocessing),
        (files.LINEAGE, Lineage),
        (files.METRICS, Metrics),
        (files.MARKER, Manifest),
        (f"{files.MARKER}: files", ManifestFile),
    ):
        doc = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
        lines += [f"## {model.__name__}", "", f"`{name}` (*{model.__module__}*) — {doc}", ""]
        lines += [*field_table(model), ""]
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
    return (
        "\n".join([*lines, *variable_rows(Settings, PREFIX), "", *model_sections(Settings)])
        + "\n\n"
        + server_settings_table()
    )


def variable_rows(settings_class: Any, prefix: str) -> list[str]:
    """One table row per field of a pydantic-settings class: its variable, type, default and description."""
    rows = []
    for name, field in settings_class.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{prefix}{name.upper()}` | {type_name(field.annotation)} | {default_text(field)} | {description} |"
        )
    return rows


def server_settings_table() -> str:
    """The model server's own variables (:class:`freestack_server.core.config.ServerConfig`)."""
    from freestack_server.core.config import PREFIX as SERVER
    from freestack_server.core.config import ServerConfig

    lines = [
        "## The model server (`FREESTACK_SERVER_*`)",
        "",
        "`python -m freestack_server`, the one command that starts a model server locally, in both images and",
        "in the manifests, reads these (`freestack_server.core.config.ServerConfig`) besides the model settings above;",
        "the images set them with `ENV`, the manifests in the container's `env`, a local deploy in the file it",
        "passes with `--env-file`. Where Seldon's operator has its own name for a setting, that name works too.",
        "",
        "| variable | type | default | what it is |",
        "|---|---|---|---|",
    ]
    return "\n".join([*lines, *variable_rows(ServerConfig, SERVER), "", *model_sections(ServerConfig)]) + "\n"


def model_sections(settings_class: Any) -> list[str]:
    """A section (its field table) for each model a setting's type names, which the type column links to."""
    lines: list[str] = []
    for model in {m: None for f in settings_class.model_fields.values() for m in models_in(f.annotation)}:
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        lines += [f"### {model.__name__}", "", doc, "", *field_table(model), ""]
    return lines


def cli_page() -> str:
    from freestack.cli import command

    lines = [
        "# CLI reference",
        "",
        "`freestack` (also `python -m freestack.cli`, and `make demo`, `make up`, `make down`), as its own",
        "`--help` shows it. This page is generated from the command tree (typer). Every failure is one line on",
        "stderr, `error: <what was wrong>; <what exists or what to do>`, with exit code 1 (2 for a usage error);",
        "`freestack --debug ...` adds the traceback. List and show commands print JSON only with `--json`;",
        "long waits show a progress bar when stdout is a terminal.",
        "",
    ]
    for path, cmd, ctx in commands(command(), ["freestack"]):
        lines += [
            f"## `{' '.join(path)}`",
            "",
            (cmd.help or "").strip(),
            "",
            "```text",
            cmd.get_usage(ctx).strip(),
            "```",
            "",
            *param_table(cmd, ctx),
        ]
        subs = getattr(cmd, "commands", {})
        if subs:
            lines += ["| command | what it does |", "|---|---|"]
            lines += [
                f"| [`{name}`](#{anchor([*path, name])}) | {cell(sub.get_short_help_str(limit=120))} |"
                for name, sub in subs.items()
            ]
            lines.append("")
    return "\n".join(lines)


def commands(cmd: Any, path: list[str], parent: Any = None):
    """(path, command, its context) of ``cmd`` and every command under it, in the order --help lists them."""
    ctx = cmd.context_class(cmd, info_name=path[-1], parent=parent)
    yield path, cmd, ctx
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from commands(sub, [*path, name], ctx)


def param_table(cmd: Any, ctx: Any) -> list[str]:
    records = [
        r
        for p in cmd.get_params(ctx)
        if "--help" not in getattr(p, "opts", ()) and (r := p.get_help_record(ctx))
    ]
    if not records:
        return []
    return [
        "| argument or option | what it is |",
        "|---|---|",
        *(f"| `{name}` | {cell(text)} |" for name, text in records),
        "",
    ]


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def anchor(path: list[str]) -> str:
    """The id mkdocs' toc gives the heading of ``path`` (``## `freestack models list` ``)."""
    return "-".join(path)


for target, page in (
    ("reference/spec.md", spec_page),
    ("reference/settings.md", settings_page),
    ("reference/cli.md", cli_page),
    ("reference/version.md", version_page),
):
    with mkdocs_gen_files.open(target, "w") as f:
        f.write(page())
