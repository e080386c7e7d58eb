"""The sweep page's live view: while a sweep runs, ``static/sweep_live.js`` asks
``/api/sweeps/<pipeline>/<sweep>/live?known=<signature>`` every few seconds what changed, and redraws it.

The answer is the page's own parts rendered again (the summary, each trial's row, the importance table;
the templates' ``sweep_parts.html`` macros) and its figures built again (:mod:`freestack.ui.plots`), or just
the status when nothing changed since the signature the page has (:attr:`SweepPage.signature`). A sweep
is running, finished or stopped as :func:`freestack.ui.catalog.sweep_pages.sweep_status` reads it from
storage; the script stops asking once it is not running.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from freestack.ui import plots

if TYPE_CHECKING:
    from freestack.ui.catalog.sweep_pages import SweepPage

#: how often the page asks while the sweep runs
POLL_SECONDS = 3.0


class SweepUpdate(BaseModel):
    status: str = Field(description="running, finished or stopped (the script stops polling unless running)")
    signature: str
    changed: bool = Field(description="False: the page is up to date, and nothing else is sent")
    poll_seconds: float = POLL_SECONDS
    summary: str = Field("", description="the summary paragraph's HTML")
    header: str = Field("", description="the trials table's header row")
    rows: list[tuple[str, str]] = Field([], description="(trial, its row's HTML), every trial")
    importance: str = Field("", description="the parameter importance table (or why there is none)")
    figures: dict[str, str] = Field({}, description="element id -> the Plotly figure (JSON) to draw there")


def sweep_update(s: SweepPage, known: str, templates: Any) -> SweepUpdate:
    """What the page at signature ``known`` must redraw (nothing when it is current)."""
    if known == s.signature:
        return SweepUpdate(status=s.status, signature=s.signature, changed=False)
    parts = templates.get_template("sweep_parts.html").module
    return SweepUpdate(
        status=s.status,
        signature=s.signature,
        changed=True,
        summary=str(parts.summary(s)),
        header=str(parts.header(s)),
        rows=[(t.trial, str(parts.trial_row(s, t))) for t in s.trials],
        importance=str(parts.importance(s)),
        figures={
            **({"fig-0": plots.pareto_front(s)} if s.objectives else {}),
            "fig-1": plots.metric_vs_params(s),
            "fig-2": plots.metric_over_epochs(s),
            "fig-3": plots.parallel_coordinates(s),
            "fig-4": plots.importance_chart(s),
        },
    )


__all__ = ["POLL_SECONDS", "SweepUpdate", "sweep_update"]
