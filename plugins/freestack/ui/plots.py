"""The pages' interactive plots, built with Plotly (the browser draws them with the plotly.js that ships
inside the ``plotly`` package, served by the plugin: nothing is loaded from another host).

Each function returns a figure as JSON text, which a page embeds as data and ``views.js`` draws. The
traces are written as plain dicts in Plotly's figure schema (``make_subplots`` lays out the panels):
building 500 trials through ``graph_objects``' validation took most of a page's second.
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


def _figure(data: list[dict[str, Any]], layout: dict[str, Any]) -> str:
    return json.dumps({"data": data, "layout": layout}, separators=(",", ":"), allow_nan=False, default=str)


def _axis_ref(kind: str, k: int) -> str:
    return kind if k == 0 else f"{kind}{k + 1}"


def metric_vs_params(page: SweepPage) -> str:
    """One panel per parameter: every scored trial's metric against its value (colour: its state; star:
    the best trial)."""
    from plotly.subplots import make_subplots

    params = page.parameters or ["(none)"]
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    layout = make_subplots(rows=rows, cols=cols, subplot_titles=params, horizontal_spacing=0.08,
                           vertical_spacing=0.18).layout.to_plotly_json()  # fmt: skip
    scored = [t for t in page.trials if t.value is not None]
    data: list[dict[str, Any]] = []
    for k, name in enumerate(params):
        axes = {"xaxis": _axis_ref("x", k), "yaxis": _axis_ref("y", k)}
        for state in dict.fromkeys(t.state for t in scored):
            group = [t for t in scored if t.state == state]
            data.append({"type": "scatter", "mode": "markers", "name": state, "legendgroup": state, "showlegend": k == 0,
                         "x": [_axis_value(t.params.get(name)) for t in group], "y": [t.value for t in group],
                         "text": [t.trial for t in group], "marker": {"color": COLORS.get(state, "#555"), "size": 8},
                         "hovertemplate": "%{text}: %{y:.4g}<extra></extra>", **axes})  # fmt: skip
        if page.best is not None and page.best.value is not None:
            data.append({"type": "scatter", "mode": "markers", "name": "best", "legendgroup": "best", "showlegend": k == 0,
                         "x": [_axis_value(page.best.params.get(name))], "y": [page.best.value],
                         "marker": {"symbol": "star", "size": 16, "color": "#d62728"}, **axes})  # fmt: skip
        if _log_axis([t.params.get(name) for t in scored]):
            layout[f"xaxis{k + 1 if k else ''}"]["type"] = "log"
        if k % cols == 0:
            layout[f"yaxis{k + 1 if k else ''}"]["title"] = {"text": page.sweep.metric}
    layout.update(LAYOUT, height=300 * rows + 80, margin={**LAYOUT["margin"], "t": 80},
                  title={"text": f"{page.sweep.metric} ({page.sweep.goal}) by parameter", "font": {"size": 14}})  # fmt: skip
    return _figure(data, layout)


def metric_over_epochs(page: SweepPage) -> str:
    """The metric after each epoch, one line per trial (the best trial drawn thicker)."""
    best = page.best.trial if page.best else None
    data = [{"type": "scatter", "mode": "lines", "name": t.trial, "x": list(range(1, len(t.history) + 1)), "y": t.history,
             "line": {"color": COLORS.get(t.state, "#555"), "width": 3 if t.trial == best else 1},
             "opacity": 1.0 if t.trial == best else 0.55,
             "hovertemplate": f"{t.trial} ({t.state}) epoch %{{x}}: %{{y:.4g}}<extra></extra>"} for t in page.trials]  # fmt: skip
    layout = {**LAYOUT, "showlegend": len(page.trials) <= 20, "xaxis": {"title": {"text": "epoch"}},
              "yaxis": {"title": {"text": page.sweep.metric}},
              "title": {"text": f"{page.sweep.metric} after each epoch, per trial", "font": {"size": 14}}}  # fmt: skip
    return _figure(data, layout)


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
