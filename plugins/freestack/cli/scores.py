"""``freestack scores PIPELINE``: the days a pipeline's ``<p>_score`` DAG scored, newest first."""

from __future__ import annotations

from freestack.cli.common import Json, Pipeline, load_pipeline
from freestack.cli.errors import CliError
from freestack.cli.output import emit, out, print_json, table
from freestack.score.published import scored_days


def scores(pipeline: Pipeline, json: Json = False) -> int:
    """The scored days: rows scored and quarantined, the version, the distribution of predictions."""
    spec = load_pipeline(pipeline)
    if spec.score is None:
        raise CliError(
            f"pipeline {pipeline!r} has no score: block", "add one to its spec (docs/stages/score.md)"
        )
    days = scored_days(spec)
    if json:
        print_json(days)
        return 0
    console = out()
    if not days:
        console.print(
            f"{pipeline}: no day scored yet (unpause {pipeline}_score, or "
            f"`freestack backfill {pipeline} --dag score --start ... --end ...`)"
        )
        return 0
    t = table(
        "ds",
        "rows",
        "quarantined",
        "version",
        "predictions",
        "scored at",
        right=("rows", "quarantined"),
        title=f"scores of {pipeline!r} ({spec.score.output})",
    )
    for d in days:
        f = d.get("failed") or {}
        failed = f"failed in {f.get('task') or 'a task'}: {f['error']}" if f else None
        if "problem" in d:  # a day that cannot be read (or failed) says why, and the others are listed
            t.add_row(d["ds"], "?", "?", "?", failed or f"unreadable: {d['problem']}", f.get("failed_at", ""))
            continue
        t.add_row(
            d["ds"],
            str(d["rows_scored"]),
            str(d["rows_quarantined"]),
            d["version"],
            _spread(d),
            d["scored_at"],
        )
        if failed:  # a later run failed: the scores listed are the last published
            t.add_row("", "", "", "", f"then {failed}", f.get("failed_at", ""))
    emit(t, console=console)
    return 0


def _spread(day: dict) -> str:
    """The day's predictions in a few words: the commonest classes, or a regression's range and mean."""
    p = day.get("predictions") or {}
    if "count" in p:
        return f"{p['min']:.4g} to {p['max']:.4g}, mean {p['sum'] / max(p['count'], 1):.4g}"
    top = sorted(p.items(), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{k}: {v}" for k, v in top) + (" ..." if len(p) > 4 else "")


__all__ = ["scores"]
