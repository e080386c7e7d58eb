"""What every block of a pipeline spec shares: the model base and how validation errors read.

Each stage keeps its own block (``freestack.<stage>.spec``); :mod:`freestack.spec` assembles them into
the pipeline spec. This module imports nothing of freestack, so any block can use it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class SpecModel(BaseModel):
    """A spec block: unknown fields are errors, and a loaded spec cannot be changed by accident."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def field_path(loc: tuple) -> str:
    """``("source", "schema", "columns", 3, "name")`` as ``source.schema.columns[3].name``."""
    out = ""
    for part in loc:
        if part in ("function-after", "function-before", "function-wrap"):
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def problems(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field path, message)`` for every error, the message without pydantic's "Value error, "."""
    return [(field_path(tuple(e["loc"])), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]


def block_problems(exc: ValidationError) -> str:
    """A block's validation errors on one line (``field.path: message; ...``)."""
    return "; ".join(msg if field == "(top level)" else f"{field}: {msg}" for field, msg in problems(exc))


__all__ = ["SpecModel", "block_problems", "field_path", "problems"]
