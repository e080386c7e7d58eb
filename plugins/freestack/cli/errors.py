"""How the ``freestack`` command reports a failure: one line on stderr, ``error: <what was wrong>; <what
exists or what to do>``, and an exit code. No traceback unless ``freestack --debug ...`` asked for it.

Exit codes: 0 done, 1 an error (a known one, or an unexpected one with a hint to rerun with ``--debug``),
2 a usage error (an unknown command or option, a value that does not parse), 130 interrupted.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from types import ModuleType
from typing import Any

import typer

from freestack.errors import FreestackError
from freestack.specbase import problems

USAGE = 2
INTERRUPTED = 130


class CliError(FreestackError):
    """A command cannot do what it was asked: ``what`` was wrong, ``hint`` says what exists or what to do."""

    def __init__(self, what: str, hint: str | None = None):
        self.what, self.hint = what, hint
        super().__init__(f"{what}; {hint}" if hint else what)


def one_line(text: str) -> str:
    """``text`` on one line: its lines joined with ``; `` (a multi-line message stays readable)."""
    return "; ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def validation_line(exc: Any) -> str:
    """A pydantic ``ValidationError`` (a spec block checked outside a spec file) as one line: what was
    invalid, then each field and its message, as spec errors read (:func:`freestack.specbase.problems`:
    without pydantic's "Value error, ", its error types and its links)."""
    return f"invalid {exc.title}: " + "; ".join(
        m if f == "(top level)" else f"{f}: {m}" for f, m in problems(exc)
    )


def say_error(text: str) -> None:
    print(f"error: {one_line(text)}", file=sys.stderr, flush=True)


def click_impl() -> ModuleType:
    """The click that typer runs on: its own copy (newer typer releases vendor click), else click."""
    import typer.core

    return getattr(typer.core, "_click", None) or importlib.import_module("click")


def report(exc: BaseException, *, debug: bool = False) -> int:
    """Print ``exc`` as one line (after its traceback with ``debug``); return the exit code."""
    ex = click_impl().exceptions
    exit_, abort = (
        (typer.Exit, getattr(ex, "Exit", typer.Exit)),
        (typer.Abort, getattr(ex, "Abort", typer.Abort)),
    )
    if isinstance(exc, exit_):
        return exc.exit_code
    if isinstance(exc, SystemExit):
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        say_error(str(exc.code))
        return 1
    if debug and not isinstance(exc, (ex.ClickException, KeyboardInterrupt, *abort)):
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, getattr(ex, "NoArgsIsHelpError", ())):
        print(exc.format_message())  # the command's help: it was given nothing to do
        return USAGE
    if isinstance(exc, ex.UsageError):
        where = f"`{exc.ctx.command_path} --help`" if exc.ctx is not None else "`freestack --help`"
        say_error(f"{exc.format_message().rstrip('.')}; see {where}")
        return exc.exit_code
    if isinstance(exc, ex.ClickException):
        say_error(exc.format_message())
        return exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, *abort)):
        say_error("interrupted")
        return INTERRUPTED
    return _known_or_unexpected(exc, debug)


def _known_or_unexpected(exc: BaseException, debug: bool) -> int:
    if isinstance(exc, FreestackError):
        say_error(str(exc))
    elif type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic"):
        say_error(validation_line(exc))
    elif isinstance(exc, OSError) and exc.strerror:
        say_error(f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror)
    else:
        hint = "" if debug else "; rerun as `freestack --debug ...` for the traceback"
        say_error(f"unexpected {type(exc).__name__}: {one_line(str(exc)) or '(no message)'}{hint}")
    return 1


__all__ = [
    "INTERRUPTED",
    "USAGE",
    "CliError",
    "click_impl",
    "one_line",
    "report",
    "say_error",
    "validation_line",
]
