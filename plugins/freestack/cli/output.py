"""What the ``freestack`` command prints, through rich: tables and colour on a terminal, plain text when
stdout is a pipe or a file (no colour codes, no progress bars, lines not wrapped), JSON for ``--json``."""

from __future__ import annotations

import json
import os
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

#: the width of plain output (a pipe, a file) when COLUMNS does not say: tables are not squeezed to 80
PLAIN_WIDTH = 160


def out() -> Console:
    """A console on the current stdout (a test's capture too): soft-wrapped text, no markup parsing (a
    path with brackets prints as it is), no syntax highlighting; styles are given with ``style=``."""
    console = Console(soft_wrap=True, highlight=False, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PLAIN_WIDTH
    return console


def emit(*renderables: Any, console: Console | None = None) -> None:
    """Print tables and text: styled on a terminal; otherwise plain, without the padding that ends a
    table's lines."""
    console = console or out()
    if console.is_terminal:
        console.print(*renderables)
        return
    with console.capture() as captured:
        console.print(*renderables)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()), flush=True)


def print_json(obj: Any) -> None:
    """``obj`` as JSON on stdout, and nothing else (for scripts: ``--json``)."""
    print(json.dumps(obj, indent=2, default=str), flush=True)


def table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
    """A table with one header line and no frame; columns named in ``right`` are right-aligned."""
    t = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False)
    for name in columns:
        t.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return t


def progress(*columns: ProgressColumn | str, console: Console | None = None) -> Progress:
    """A rich progress display, live on a terminal and disabled (silent) otherwise. The default columns:
    description, bar, done/total, elapsed time."""
    console = console or out()
    cols = columns or (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*cols, console=console, disable=not console.is_terminal)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``count`` and ``word``, in the plural unless the count is one: ``1 day``, ``5 days``, ``0 runs``."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def fmt(value: Any) -> str:
    """A metric or a cell: floats with 4 decimals, None as ``-``."""
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


__all__ = ["PLAIN_WIDTH", "emit", "fmt", "out", "plural", "print_json", "progress", "table"]
