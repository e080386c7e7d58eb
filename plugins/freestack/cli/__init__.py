"""``freestack`` command line: the demo, the local Airflow, and a look into the lake, models, serving
and the Data API.

    freestack demo              land the demo data and run the pipeline DAGs on it
    freestack up | down         airflow standalone on 127.0.0.1, in the background
    freestack lake PIPELINE     partitions, row counts and quarantine reasons
    freestack models ...        registered versions, aliases, promote, rollback, push to the Hub
    freestack serve ...         deployments: status, logs, predict, deploy, stop, canary
    freestack data-api          the Algorithmia-compatible Data API on 127.0.0.1 (keys, acl: its users)
"""

from __future__ import annotations

import argparse


def parser() -> argparse.ArgumentParser:
    """The ``freestack`` command's parser (the CLI reference in the docs is generated from it)."""
    from freestack.cli.data import register as register_data_api
    from freestack.cli.demo import demo
    from freestack.cli.models import register as register_models
    from freestack.cli.serve import register as register_serve
    from freestack.cli.stack import airflow, down, lake, up

    ap = argparse.ArgumentParser(
        prog="freestack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="land the demo data and run the pipeline on it").set_defaults(
        fn=lambda a: demo()
    )
    p_up = sub.add_parser("up", help="start airflow standalone on 127.0.0.1")
    p_up.add_argument("--timeout", type=float, default=240)
    p_up.set_defaults(fn=lambda a: up(a.timeout))
    sub.add_parser("down", help="stop the airflow standalone started by `up`").set_defaults(
        fn=lambda a: down()
    )
    p_lake = sub.add_parser("lake", help="show a pipeline's lake partitions and quarantine")
    p_lake.add_argument("pipeline")
    p_lake.set_defaults(fn=lambda a: lake(a.pipeline))
    p_af = sub.add_parser("airflow", help="run any airflow command against this project's instance",
                          prefix_chars="\0")  # fmt: skip
    p_af.add_argument("args", nargs=argparse.REMAINDER)
    p_af.set_defaults(fn=lambda a: airflow(a.args))
    register_data_api(sub)  # data-api, keys, acl
    register_models(sub)  # models list|show|promote|rollback|alias|push
    register_serve(sub)  # serve status|stop|logs|predict|deploy|canary
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.fn(args)


__all__ = ["main", "parser"]
