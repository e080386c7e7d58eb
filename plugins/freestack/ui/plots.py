"""The pages' interactive plots, built with Plotly (the browser draws them with the plotly.js that ships
inside the ``plotly`` package, served by the plugin: nothing is loaded from another host).

Each function returns a figure as JSON text, which a page embeds as data and ``views.js`` draws.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from freestack.ui.catalog import SweepPage, VersionRow

COLORS = {"finished": "#1f77b4", "early-stopped": "#9e9e9e", "failed": "#d62728", "crashed": "#d62728",
          "running": "#ff7f0e"}  # fmt: skip
LAYOUT = {"margin": {"l": 55, "r": 15, "t": 40, "b": 45}, "template": "plotly_white", "height": 330}


def _axis_value(v: Any) -> Any:
    """A parameter value as Plotly can place it: numbers as they are, the rest (lists, strings) as text."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v
    return json.dumps(v) if not isinstance(v, str) else v


def _log_axis(values: list[Any]) -> bool:
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return len(nums) == len(values) and bool(nums) and min(nums) > 0 and max(nums) / min(nums) > 50


def metric_vs_params(page: SweepPage) -> str:
    """One panel per parameter: every scored trial's metric against its value (colour: its state; star:
    the best trial)."""
    from plotly.subplots import make_subplots

    params = page.parameters or ["(none)"]
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=params, horizontal_spacing=0.08, vertical_spacing=0.18)
    scored = [t for t in page.trials if t.value is not None]
    for k, name in enumerate(params):
        r, c = k // cols + 1, k % cols + 1
        for state in dict.fromkeys(t.state for t in scored):
            group = [t for t in scored if t.state == state]
            fig.add_scatter(x=[_axis_value(t.params.get(name)) for t in group], y=[t.value for t in group],
                            mode="markers", name=state, legendgroup=state, showlegend=k == 0,
                            marker={"color": COLORS.get(state, "#555"), "size": 8},
                            text=[t.trial for t in group], hovertemplate="%{text}: %{y:.4g}<extra></extra>",
                            row=r, col=c)  # fmt: skip
        if page.best is not None and page.best.value is not None:
            fig.add_scatter(x=[_axis_value(page.best.params.get(name))], y=[page.best.value], mode="markers",
                            name="best", legendgroup="best", showlegend=k == 0, row=r, col=c,
                            marker={"symbol": "star", "size": 16, "color": "#d62728"})  # fmt: skip
        if _log_axis([t.params.get(name) for t in scored]):
            fig.update_xaxes(type="log", row=r, col=c)
        fig.update_yaxes(title_text=page.sweep.metric if c == 1 else None, row=r, col=c)
    fig.update_layout(**{**LAYOUT, "height": 300 * rows + 80, "margin": {**LAYOUT["margin"], "t": 80}},
                      title={"text": f"{page.sweep.metric} ({page.sweep.goal}) by parameter", "font": {"size": 14}})  # fmt: skip
    return fig.to_json()


def metric_over_epochs(page: SweepPage) -> str:
    """The metric after each epoch, one line per trial (the best trial drawn thicker)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    best = page.best.trial if page.best else None
    for t in page.trials:
        fig.add_scatter(x=list(range(1, len(t.history) + 1)), y=t.history, mode="lines", name=t.trial,
                        line={"color": COLORS.get(t.state, "#555"), "width": 3 if t.trial == best else 1},
                        opacity=1.0 if t.trial == best else 0.55,
                        hovertemplate=f"{t.trial} ({t.state}) epoch %{{x}}: %{{y:.4g}}<extra></extra>")  # fmt: skip
    fig.update_layout(**LAYOUT, showlegend=len(page.trials) <= 20, xaxis_title="epoch", yaxis_title=page.sweep.metric,
                      title={"text": f"{page.sweep.metric} after each epoch, per trial", "font": {"size": 14}})  # fmt: skip
    return fig.to_json()


def metric_over_versions(rows: list[VersionRow], metric: str) -> str:
    """A model's test metric, version after version (promoted ones in green, blocked ones in red)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for decision, color in (("promoted", "#2ca02c"), ("blocked", "#d62728"), ("none", "#555")):
        group = [r for r in rows if r.gate.decision == decision and metric in r.metrics]
        if group:
            fig.add_scatter(x=[r.created for r in group], y=[r.metrics[metric] for r in group], mode="markers",
                            name=decision, marker={"color": color, "size": 7}, text=[r.version for r in group],
                            hovertemplate="%{text}: %{y:.4g}<extra></extra>")  # fmt: skip
    fig.update_layout(**{**LAYOUT, "height": 260}, xaxis_title="registered", yaxis_title=metric,
                      title={"text": f"{metric} by version", "font": {"size": 14}})  # fmt: skip
    return fig.to_json()


__all__ = ["metric_over_epochs", "metric_over_versions", "metric_vs_params"]
