"""``freestack`` command line (typer + rich): the demo, the local Airflow, and a look into the lake,
models, serving and the Data API.

    freestack demo                          land the demo data and run the pipeline DAGs on it
    freestack up | down                     airflow standalone on 127.0.0.1, in the background
    freestack airflow ARGS...               any airflow command against this project's instance
    freestack backfill PIPELINE --start --end   a backfill on the running Airflow, followed to its end
    freestack validate [SPEC...]            check pipeline specs (file, field, fix); exit 1 if one is invalid
    freestack lake PIPELINE                 partitions, row counts and quarantine reasons
    freestack scores PIPELINE               the days <p>_score scored: rows, version, predictions
    freestack models ...                    registered versions, aliases, promote, rollback, push to the Hub
    freestack serve ...                     deployments: status, logs, predict, deploy, stop, canary
    freestack data-api | keys | acl | data  the Algorithmia-compatible Data API, its users, ACLs, copies

Every failure is one line on stderr (``error: <what was wrong>; <what exists or what to do>``) and a
non-zero exit (1; 2 for a usage error); ``freestack --debug ...`` adds the traceback. List and show
commands take ``--json``. :func:`command` is the click command tree (the CLI reference in the docs is
generated from it).

A command imports what loads numpy, pyarrow, torch, Airflow or FastAPI (ingest.core, score.core,
serving.local and its smoke test, train.core, ml.prep, the hooks, the Data API app) inside its function:
the rest of the CLI, ``--help`` included, does without them.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from freestack.cli import backfill as _backfill
from freestack.cli import demo as demo_cli
from freestack.cli import lake as _lake
from freestack.cli import scores as _scores
from freestack.cli import stack
from freestack.cli import validate as _validate
from freestack.cli.data import register as register_data
from freestack.cli.errors import report
from freestack.cli.models import app as models_app
from freestack.cli.serve import app as serve_app

_state = {"debug": False}

app = typer.Typer(
    name="freestack",
    help="The free end-to-end ML stack on Apache Airflow: the demo, the local Airflow, the lake, models, "
    "serving and the Data API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


#: commands that print their results on stdout: Airflow, once imported, logs INFO there (a quiet level for them)
_QUIET = {"models", "serve", "lake", "scores", "backfill", "keys", "acl", "data"}
_LOG_LEVEL = "AIRFLOW__LOGGING__LOGGING_LEVEL"


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error.")] = False,
) -> None:
    _state["debug"] = debug
    if ctx.invoked_subcommand in _QUIET and _LOG_LEVEL not in os.environ:
        os.environ[_LOG_LEVEL] = "WARNING"  # read when the command first imports Airflow; main() restores it


@app.command("demo")
def _demo() -> int:
    """Start Airflow, land the demo data, backfill ingest and train under the real scheduler."""
    return demo_cli.demo()


@app.command("up")
def _up(
    timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="How long to wait for it to answer while it shows no progress (its log does not grow, its port does not open); 30 minutes at most in all.",
        ),
    ] = 240,
) -> int:
    """Start airflow standalone on 127.0.0.1 in the background.

    Exit code 0 once it answers, 3 when it still starts after the wait (it goes on in the background), 1 when it cannot start."""
    return stack.up(timeout)


@app.command("down")
def _down(
    grace: Annotated[
        float,
        typer.Option(
            min=0, metavar="SECONDS", help="How long each process gets after SIGTERM before SIGKILL."
        ),
    ] = 30.0,
) -> int:
    """Stop every process of the airflow standalone started by `up` (orphaned ones too) and the local
    model servers; list each and how it ended."""
    return stack.down(grace)


class _Passthrough(TyperCommand):
    """A command that hands every argument after its name, untouched (``--help``, ``-o json``, ``--``
    included), to its callback as ``ctx.args``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.args = list(args)
        return []

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return ["ARGS..."]


@app.command(
    "airflow",
    cls=_Passthrough,
    add_help_option=False,
    help="Run any airflow command against this project's instance (its AIRFLOW_HOME, DAGs, plugins and "
    "settings); every argument passes to airflow as it is: `freestack airflow dags list -o json`, "
    "`freestack airflow --help`.",
)
def _airflow(ctx: typer.Context) -> int:
    return stack.airflow(list(ctx.args))


app.command("validate")(_validate.validate)
app.command("lake")(_lake.lake)
app.command("scores")(_scores.scores)
app.command("backfill")(_backfill.backfill)
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")
register_data(app)  # data-api, keys, acl, data


@functools.cache
def command() -> Any:
    """The ``freestack`` command as a click group (typer's click: every command, argument and option,
    with its help; sub-groups in ``.commands``)."""
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> int:
    """Run ``freestack`` with ``argv`` (default: the process's arguments); return the exit code."""
    _state["debug"] = False
    level = os.environ.get(_LOG_LEVEL)
    try:
        rv = command().main(args=argv, prog_name="freestack", standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001  (every failure becomes one line and an exit code)
        return report(exc, debug=_state["debug"])
    finally:
        if level is None:
            os.environ.pop(_LOG_LEVEL, None)
    return rv if isinstance(rv, int) else 0


__all__ = ["app", "command", "main"]
