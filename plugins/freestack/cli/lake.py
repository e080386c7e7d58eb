"""``freestack lake PIPELINE``: a pipeline's lake partitions, their rows and quarantine reasons."""

from __future__ import annotations

from freestack.cli.common import Json, Pipeline, load_pipeline
from freestack.cli.output import emit, out, print_json, table
from freestack.cli.reports import lake_data


def lake(pipeline: Pipeline, json: Json = False) -> int:
    """A pipeline's lake: partitions, rows, quarantined rows and why."""
    load_pipeline(pipeline)  # an unknown pipeline or an invalid spec: one line saying so
    data = lake_data(pipeline)
    if json:
        print_json(data)
        return 0
    console = out()
    if not data["partitions"]:
        console.print(
            f"lake of {pipeline!r} under {data['root']}: no partitions yet (land data and run {pipeline}_ingest)"
        )
        return 0
    t = table(
        "ds",
        "rows",
        "quarantined",
        "part sha256",
        "quarantine reasons",
        right=("rows", "quarantined"),
        title=f"lake of {pipeline!r} under {data['root']}",
    )
    for p in data["partitions"]:
        reasons = "\n".join(f"{n} x {r}" for r, n in p["quarantine_reasons"].items())
        t.add_row(
            p["ds"],
            "?" if p["rows"] is None else str(p["rows"]),
            str(p["quarantined"]),
            str(p["sha256"] or "?")[:12],
            reasons,
        )
    emit(t, console=console)
    return 0


__all__ = ["lake"]
