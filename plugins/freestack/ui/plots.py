"""The pages' interactive plots, built with Plotly (the browser draws them with the plotly.js that ships
inside the ``plotly`` package, served by the plugin: nothing is loaded from another host).

Each function returns a figure as JSON text, which a page embeds as data and ``views.js`` draws (a running
sweep's page gets them again from its live endpoint: ``sweep_live.js``). The
traces are written as plain dicts in Plotly's figure schema (``make_subplots`` lays out the panels):
building 500 trials through ``graph_objects``' validation took most of a page's second.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from freestack.ui.catalog.score_pages import SHOWN_CLASSES
from freestack.ui.catalog.sweep_pages import LOG_DISTRIBUTIONS

if TYPE_CHECKING:
    from freestack.ui.catalog.model_pages import VersionRow
    from freestack.ui.catalog.monitoring_pages import MonitoringPage
    from freestack.ui.catalog.score_pages import ScoredDay, ScoresPage
    from freestack.ui.catalog.sweep_pages import SweepPage

COLORS = {
    "finished": "#1f77b4",
    "early-stopped": "#9e9e9e",
    "failed": "#d62728",
    "crashed": "#d62728",
    "running": "#ff7f0e",
}
LAYOUT = {"margin": {"l": 55, "r": 15, "t": 40, "b": 45}, "template": "plotly_white", "height": 330}


def _axis_value(v: Any) -> Any:
    """A parameter value as Plotly can place it: numbers as they are, the rest (lists, strings) as text."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return v
    return json.dumps(v) if not isinstance(v, str) else v


def is_log(page: SweepPage, name: str, values: list[Any]) -> bool:
    """A parameter drawn on a log axis: log-distributed in the sweep config (W&B's log_uniform_values...),
    or, where the config does not say, positive numbers over more than 50x."""
    dist = page.distributions.get(name)
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if dist is None:
        return len(nums) == len(values) and bool(nums) and min(nums) > 0 and max(nums) / min(nums) > 50
    return dist in LOG_DISTRIBUTIONS and all(v > 0 for v in nums)


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
    layout = make_subplots(
        rows=rows, cols=cols, subplot_titles=params, horizontal_spacing=0.08, vertical_spacing=0.18
    ).layout.to_plotly_json()
    scored = [t for t in page.trials if t.value is not None]
    data: list[dict[str, Any]] = []
    for k, name in enumerate(params):
        axes = {"xaxis": _axis_ref("x", k), "yaxis": _axis_ref("y", k)}
        for state in dict.fromkeys(t.state for t in scored):
            group = [t for t in scored if t.state == state]
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": state,
                    "legendgroup": state,
                    "showlegend": k == 0,
                    "x": [_axis_value(t.params.get(name)) for t in group],
                    "y": [t.value for t in group],
                    "text": [t.trial for t in group],
                    "marker": {"color": COLORS.get(state, "#555"), "size": 8},
                    "hovertemplate": "%{text}: %{y:.4g}<extra></extra>",
                    **axes,
                }
            )
        if page.best is not None and page.best.value is not None:
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": "best",
                    "legendgroup": "best",
                    "showlegend": k == 0,
                    "x": [_axis_value(page.best.params.get(name))],
                    "y": [page.best.value],
                    "marker": {"symbol": "star", "size": 16, "color": "#d62728"},
                    **axes,
                }
            )
        if is_log(page, name, [t.params.get(name) for t in scored]):
            layout[_axis_ref("xaxis", k)]["type"] = "log"
        if k % cols == 0:
            layout[_axis_ref("yaxis", k)]["title"] = {"text": page.sweep.metric}
    layout.update(
        LAYOUT,
        height=300 * rows + 80,
        margin={**LAYOUT["margin"], "t": 80},
        title={"text": f"{page.sweep.metric} ({page.sweep.goal}) by parameter", "font": {"size": 14}},
    )
    return _figure(data, layout)


def metric_over_epochs(page: SweepPage) -> str:
    """The metric after each epoch, one line per trial (the best trial drawn thicker)."""
    best = page.best.trial if page.best else None
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": t.trial,
            "x": list(range(1, len(t.history) + 1)),
            "y": t.history,
            "line": {"color": COLORS.get(t.state, "#555"), "width": 3 if t.trial == best else 1},
            "opacity": 1.0 if t.trial == best else 0.55,
            "hovertemplate": f"{t.trial} ({t.state}) epoch %{{x}}: %{{y:.4g}}<extra></extra>",
        }
        for t in page.trials
    ]
    layout = {
        **LAYOUT,
        "showlegend": len(page.trials) <= 20,
        "xaxis": {"title": {"text": "epoch"}},
        "yaxis": {"title": {"text": page.sweep.metric}},
        "title": {"text": f"{page.sweep.metric} after each epoch, per trial", "font": {"size": 14}},
    }
    return _figure(data, layout)


def metric_over_versions(rows: list[VersionRow], metric: str) -> str:
    """A model's test metric, version after version (promoted ones in green, blocked ones in red)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for decision, color in (("promoted", "#2ca02c"), ("blocked", "#d62728"), ("none", "#555")):
        group = [r for r in rows if r.gate.decision == decision and metric in r.metrics]
        if group:
            fig.add_scatter(
                x=[r.created for r in group],
                y=[r.metrics[metric] for r in group],
                mode="markers",
                name=decision,
                marker={"color": color, "size": 7},
                text=[r.version for r in group],
                hovertemplate="%{text}: %{y:.4g}<extra></extra>",
            )
    fig.update_layout(
        **{**LAYOUT, "height": 260},
        xaxis_title="registered",
        yaxis_title=metric,
        title={"text": f"{metric} by version", "font": {"size": 14}},
    )
    return fig.to_json()


def _empty(title: str, note: str, height: int = 200) -> str:
    """A figure with nothing to draw yet, saying why."""
    return _figure(
        [],
        {
            **LAYOUT,
            "height": height,
            "title": {"text": title, "font": {"size": 14}},
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "annotations": [
                {"text": note, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}
            ],
        },
    )


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Ticks of a log10 axis from ``lo`` to ``hi`` (log10 values), labelled in the original units: 1 and 3
    times each power of ten (only the powers over more than three decades), the ends where fewer than two."""
    mults = (1,) if hi - lo > 3 else (1, 3)
    ticks = [math.log10(m) + e for e in range(math.floor(lo), math.ceil(hi) + 1) for m in mults]
    ticks = [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]
    if len(ticks) < 2:
        ticks = sorted({lo, hi, *ticks})
    return ticks, [f"{10**t:.3g}" for t in ticks]


def _dimension(name: str, values: list[Any], log: bool, choices: bool = False) -> dict[str, Any]:
    """One axis of the parallel coordinates: its label, each trial's position on it (0..1) and its ticks
    (position, text): log10 of a log-distributed parameter (ticks in the original units), numbers as they
    are (ticked at each value when they are a parameter's ``values``), anything else as categories."""
    label, ticks = name, None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        labels = [str(_axis_value(v)) for v in values]
        cats = sorted(set(labels))
        raw, ticks = [float(cats.index(v)) for v in labels], [(float(k), c[:24]) for k, c in enumerate(cats)]
    elif log:
        label, raw = f"{name} (log)", [math.log10(v) for v in values]
        ticks = list(zip(*_log_ticks(min(raw), max(raw)), strict=True))
    else:
        raw = [float(v) for v in values]
        ticks = [(v, f"{v:.4g}") for v in sorted(set(raw))] if choices and len(set(raw)) <= 12 else None
    lo, hi = min(raw), max(raw)
    if ticks is None:
        ticks = [(t, f"{t:.3g}") for t in ([lo + (hi - lo) * k / 4 for k in range(5)] if hi > lo else [lo])]
    at = (lambda v: (v - lo) / (hi - lo)) if hi > lo else (lambda v: 0.5)
    return {
        "label": label,
        "y": [round(at(v), 5) for v in raw],
        "ticks": [(round(at(v), 5), t) for v, t in ticks],
    }


def _lines(
    dims: list[dict[str, Any]], scored: list[Any], lo: float, hi: float, minimize: bool
) -> list[dict[str, Any]]:
    """One trace per colour band (the trials' lines, separated by gaps) from the worst band to the best:
    Plotly's Viridis colours, as the colour bar's scale (the metric's ``lo`` to ``hi``)."""
    from plotly.colors import sequential

    rank = [((t.value - lo) / (hi - lo) if hi > lo else 1.0) for t in scored]
    rank = [1 - r for r in rank] if minimize else rank
    bands = sequential.Viridis
    xs = list(range(len(dims)))
    out = []
    for band, color in enumerate(bands):
        group = [k for k, r in enumerate(rank) if min(int(r * len(bands)), len(bands) - 1) == band]
        if not group:
            continue
        x, y, text = [], [], []
        for k in group:
            x += [*xs, None]
            y += [*(d["y"][k] for d in dims), None]
            text += [f"{scored[k].trial}: {scored[k].value:.4g}"] * len(xs) + [None]
        out.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": x,
                "y": y,
                "text": text,
                "showlegend": False,
                "line": {"color": color, "width": 1.5},
                "opacity": 0.8,
                "hovertemplate": "%{text}<extra></extra>",
            }
        )
    return out


def parallel_coordinates(page: SweepPage) -> str:
    """Every scored trial as a line across its parameters and the metric (colour: the metric, brighter is
    better; the best trial in red); log-distributed parameters on log10 axes labelled in their own units.
    Drawn as SVG lines: Plotly's ``parcoords`` draws with WebGL through generated code, which the pages'
    Content-Security-Policy (no ``unsafe-eval``) does not let run."""
    title = f"{page.sweep.metric}: parameters of each trial (parallel coordinates)"
    scored = [t for t in page.trials if t.value is not None]
    params = [p for p in page.parameters if all(t.params.get(p) is not None for t in scored)]
    if not scored or not params:
        return _empty(title, "no trial has a metric value yet")
    values = [t.value for t in scored]
    columns = {p: [t.params[p] for t in scored] for p in params}
    dims = [
        *(
            _dimension(p, v, is_log(page, p, v), page.distributions.get(p) == "categorical")
            for p, v in columns.items()
        ),
        _dimension(page.sweep.metric or "metric", values, False),
    ]
    lo, hi = min(values), max(values)
    data = [*_lines(dims, scored, lo, hi, page.sweep.goal == "minimize"), _colorbar(page, lo, hi)]
    best = next((k for k, t in enumerate(scored) if page.best and t.trial == page.best.trial), None)
    if best is not None:
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"best ({scored[best].trial})",
                "x": list(range(len(dims))),
                "y": [d["y"][best] for d in dims],
                "line": {"color": "#d62728", "width": 3},
                "hoverinfo": "skip",
            }
        )
    return _figure(data, _parallel_layout(dims, title))


def pareto_front(page: SweepPage) -> str:
    """A sweep on several objectives: two as a scatter of every scored trial (the second objective across,
    the first up), the Pareto front's trials joined and the candidate starred; more as parallel coordinates
    over the objectives, the front's trials in red."""
    names = [n for n, _ in page.objectives]
    title = "Pareto front: " + " vs ".join(f"{n} ({g})" for n, g in page.objectives)
    scored = [t for t in page.trials if all(t.objectives.get(n) is not None for n in names)]
    if not scored:
        return _empty(title, "no trial has a value on every objective yet")
    if len(names) > 2:
        dims = [
            _dimension(f"{n} ({g})", [t.objectives[n] for t in scored], False) for n, g in page.objectives
        ]
        data = [_objective_line(dims, k, t, t.trial in page.front) for k, t in enumerate(scored)]
        return _figure(data, _parallel_layout(dims, title))
    y, x = names
    on = sorted((t for t in scored if t.trial in page.front), key=lambda t: t.objectives[x])
    off = [t for t in scored if t.trial not in page.front]
    best = [t for t in scored if t.trial == page.sweep.best_trial][:1]
    star = {"color": "#d62728", "size": 18, "symbol": "star"}
    data = [
        _points("other trials", off, x, y, {"color": "#9ca3af", "size": 8}, "markers"),
        _points("Pareto front", on, x, y, {"color": "#d62728", "size": 10}, "lines+markers"),
        *(_points(f"candidate ({t.trial})", [t], x, y, star, "markers") for t in best),
    ]
    goals = dict(page.objectives)
    layout = {
        **LAYOUT,
        "height": 380,
        "title": {"text": title, "font": {"size": 14}},
        "xaxis": {"title": {"text": f"{x} ({'lower' if goals[x] == 'minimize' else 'higher'} is better)"}},
        "yaxis": {"title": {"text": f"{y} ({'lower' if goals[y] == 'minimize' else 'higher'} is better)"}},
        "legend": {"orientation": "h", "y": -0.2},
    }
    return _figure(data, layout)


def _points(
    name: str, trials: list[Any], x: str, y: str, marker: dict[str, Any], mode: str
) -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": mode,
        "name": name,
        "x": [t.objectives[x] for t in trials],
        "y": [t.objectives[y] for t in trials],
        "text": [t.trial for t in trials],
        "marker": marker,
        "line": {"color": marker["color"], "shape": "hv"},
        "hovertemplate": f"%{{text}}<br>{x} %{{x:.4g}}<br>{y} %{{y:.4g}}<extra></extra>",
    }


def _objective_line(dims: list[dict[str, Any]], k: int, trial: Any, front: bool) -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": "lines",
        "name": trial.trial + (" (front)" if front else ""),
        "x": list(range(len(dims))),
        "y": [d["y"][k] for d in dims],
        "showlegend": False,
        "line": {"color": "#d62728" if front else "#9ca3af", "width": 2.5 if front else 1},
        "hovertemplate": f"{trial.trial}{' (front)' if front else ''}<extra></extra>",
    }


def _colorbar(page: SweepPage, lo: float, hi: float) -> dict[str, Any]:
    """An invisible trace whose colour bar says what the lines' colours mean."""
    return {
        "type": "scatter",
        "x": [None],
        "y": [None],
        "mode": "markers",
        "showlegend": False,
        "hoverinfo": "skip",
        "marker": {
            "color": [lo, hi],
            "cmin": lo,
            "cmax": hi,
            "colorscale": "Viridis",
            "showscale": True,
            "reversescale": page.sweep.goal == "minimize",
            "colorbar": {"title": {"text": page.sweep.metric}},
        },
    }


def _parallel_layout(dims: list[dict[str, Any]], title: str) -> dict[str, Any]:
    """The parallel coordinates' axes: a vertical line per dimension, its ticks as text beside it, its label on top."""
    shapes = [
        {"type": "line", "x0": k, "x1": k, "y0": 0, "y1": 1, "line": {"color": "#888", "width": 1}}
        for k in range(len(dims))
    ]
    notes = [
        {
            "x": k,
            "y": y,
            "text": text,
            "showarrow": False,
            "xanchor": "right",
            "xshift": -3,
            "font": {"size": 10},
        }
        for k, d in enumerate(dims)
        for y, text in d["ticks"]
    ]
    return {
        **LAYOUT,
        "height": 400,
        "shapes": shapes,
        "annotations": notes,
        "legend": {"orientation": "h", "y": -0.12},
        "xaxis": {
            "tickvals": list(range(len(dims))),
            "ticktext": [d["label"] for d in dims],
            "side": "top",
            "range": [-0.4, len(dims) - 0.8],
            "showgrid": False,
            "zeroline": False,
        },
        "yaxis": {"visible": False, "range": [-0.04, 1.04]},
        "margin": {"l": 30, "r": 20, "t": 90, "b": 40},
        "title": {"text": title, "font": {"size": 14}},
    }


def importance_chart(page: SweepPage) -> str:
    """Parameter importance (random forest) and correlation with the metric, one bar pair per parameter."""
    title = f"parameter importance for {page.sweep.metric}"
    if not page.importance:
        return _empty(title, page.importance_note or "no parameter importance yet", height=110)
    rows = page.importance[::-1]  # the most important on top
    names = [i.parameter for i in rows]
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "name": "importance",
            "y": names,
            "x": [i.importance for i in rows],
            "marker": {"color": "#1f77b4"},
            "hovertemplate": "%{y}: importance %{x:.3f}<extra></extra>",
        },
        {
            "type": "bar",
            "orientation": "h",
            "name": "correlation",
            "y": names,
            "x": [i.correlation for i in rows],
            "marker": {"color": ["#2ca02c" if (i.correlation or 0) >= 0 else "#d62728" for i in rows]},
            "hovertemplate": "%{y}: correlation %{x:.3f}<extra></extra>",
        },
    ]
    layout = {
        **LAYOUT,
        "barmode": "group",
        "height": 120 + 45 * len(rows),
        "xaxis": {"range": [-1, 1], "zeroline": True},
        "title": {"text": title, "font": {"size": 14}},
        "margin": {**LAYOUT["margin"], "l": 140},
    }
    return _figure(data, layout)


#: drift lines shown at first (the largest PSI); the others are a click on their legend entry away
SHOWN_SERIES = 8


def drift_over_time(page: MonitoringPage) -> str | None:
    """Each monitored feature's PSI across the judged intervals (oldest first), with the PSI threshold; the
    :data:`SHOWN_SERIES` features that drifted most are drawn, the rest wait in the legend. None with no
    judged series."""
    judged = [r for r in page.intervals[::-1] if r.drift]
    if not judged:
        return None
    peak: dict[str, float] = {}
    for r in judged:
        for name, (psi, _) in r.drift.items():
            peak[name] = max(psi, peak.get(name, 0.0))
    ranked = sorted(peak, key=lambda n: -peak[n])
    ends = [r.end for r in judged]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": ends,
            "y": [r.drift[name][0] if name in r.drift else None for r in judged],
            "customdata": [r.drift[name][1] if name in r.drift else None for r in judged],
            "visible": True if k < SHOWN_SERIES else "legendonly",
            "hovertemplate": f"{name}: PSI %{{y:.3f}}, p-value %{{customdata:.2g}}<extra>%{{x}}</extra>",
        }
        for k, name in enumerate(ranked)
    ]
    psi = page.thresholds.get("psi")
    layout = {
        **LAYOUT,
        "height": 360,
        "shapes": _threshold(psi),
        "xaxis": {"title": {"text": "interval end"}},
        "yaxis": {"title": {"text": "PSI"}, "rangemode": "tozero"},
        "title": {
            "text": f"{page.model}: drift per feature over time (PSI; dashed: the threshold {psi})",
            "font": {"size": 14},
        },
    }
    return _figure(data, layout)


#: the text signals that are MMD² of embeddings (the others are rates)
EMBEDDINGS = ("prompts", "completions")


def text_signals_over_time(page: MonitoringPage) -> str | None:
    """A text-generation model's text signals across the judged intervals (oldest first): the embeddings'
    MMD² with ``monitor.text.min_mmd`` at the top, the answers' rates (empty, refusal, truncation) below,
    and the judge's mean score (1-5) at the bottom when it is measured. None when no interval has them."""
    judged = [r for r in page.intervals[::-1] if r.text]
    if not judged:
        return None
    names = sorted({n for r in judged for n in r.text}, key=lambda n: (_panel(n), n))
    panels = {"y": ("MMD²", [0.55, 1.0]), "y2": ("rate", [0.0, 0.45])}
    if "judge" in names:
        panels = {"y": ("MMD²", [0.72, 1.0]), "y2": ("rate", [0.38, 0.64]), "y3": ("judge score", [0.0, 0.3])}
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": name,
            "x": [r.end for r in judged],
            "y": [r.text.get(name) for r in judged],
            "yaxis": _panel(name),
            "hovertemplate": f"{name}: {panels[_panel(name)][0]} %{{y:.4f}}<extra>%{{x}}</extra>",
        }
        for name in names
    ]
    mmd = page.min_mmd
    axes = {
        ("yaxis" if k == "y" else f"yaxis{k[1:]}"): {"title": {"text": t}, "domain": d, "rangemode": "tozero"}
        for k, (t, d) in panels.items()
    }
    layout = {
        **LAYOUT,
        "height": 420 + 120 * ("y3" in panels),
        "shapes": _threshold(mmd, yref="y"),
        "xaxis": {"title": {"text": "interval end"}, "anchor": list(panels)[-1]},
        **axes,
        "title": {
            "text": f"{page.model}: text signals over time (MMD² of embeddings; dashed: monitor.text.min_mmd "
            f"{mmd}; answers' rates and judge score below)",
            "font": {"size": 14},
        },
    }
    return _figure(data, layout)


def _threshold(y: float | None, **ref: str) -> list[dict[str, Any]]:
    """A dashed red line across the plot at ``y`` (``ref``: its ``yref``, the axis); none without a threshold."""
    if y is None:
        return []
    dash = {"color": "#d62728", "dash": "dash"}
    return [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, **ref, "y0": y, "y1": y, "line": dash}]


def _panel(signal: str) -> str:
    """The y axis a text signal is drawn on: the embeddings', the rates' or the judge's."""
    return "y" if signal in EMBEDDINGS else ("y3" if signal == "judge" else "y2")


def predictions_over_days(page: ScoresPage) -> str | None:
    """The predictions of the page's days (oldest first): each class's share of a day's rows, stacked (the
    :data:`SHOWN_CLASSES` most predicted classes, the rest as "other"), or a regression's mean with its min
    and max. None when no day of the page can be drawn."""
    days = [d for d in page.days[::-1] if d.problem is None and (d.classes or d.values)]
    if not days:
        return None
    title = {"text": f"{page.model}: predictions per scored day", "font": {"size": 14}}
    layout = {**LAYOUT, "height": 300, "title": title, "xaxis": {"title": {"text": "ds"}, "type": "category"}}
    if days[-1].values is not None:
        return _figure(
            _values_trace([d for d in days if d.values is not None]),
            {**layout, "yaxis": {"title": {"text": "predicted value"}}},
        )
    days = [d for d in days if d.classes]
    return _figure(
        _class_bars(days),
        {
            **layout,
            "barmode": "stack",
            "yaxis": {"title": {"text": "share of the day's rows"}, "tickformat": ".0%", "range": [0, 1]},
        },
    )


def _class_bars(days: list[ScoredDay]) -> list[dict[str, Any]]:
    """One bar trace per class (in label order), the classes past :data:`SHOWN_CLASSES` as one "other"."""
    total: dict[str, int] = {}
    for d in days:
        for c in d.classes:
            total[c.label] = total.get(c.label, 0) + c.rows
    top = set(sorted(total, key=lambda label: -total[label])[:SHOWN_CLASSES])
    shares = [{c.label: c.share for c in d.classes} for d in days]
    groups = [(label, [s.get(label, 0.0) for s in shares]) for label in total if label in top]
    if len(total) > len(top):
        groups.append(("other", [round(sum(v for k, v in s.items() if k not in top), 4) for s in shares]))
    return [
        {
            "type": "bar",
            "name": label,
            "x": [d.ds for d in days],
            "y": y,
            "hovertemplate": f"{label}: %{{y:.1%}}<extra>%{{x}}</extra>",
        }
        for label, y in groups
    ]


def _values_trace(days: list[ScoredDay]) -> list[dict[str, Any]]:
    """A regression's mean per day, its min and max as the error bar."""
    stats = [d.values for d in days if d.values is not None]
    mean = [s.mean for s in stats]
    return [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "mean",
            "x": [d.ds for d in days],
            "y": mean,
            "error_y": {
                "type": "data",
                "symmetric": False,
                "array": [(s.max or 0) - (s.mean or 0) for s in stats],
                "arrayminus": [(s.mean or 0) - (s.min or 0) for s in stats],
            },
            "customdata": [[s.min, s.max, s.count] for s in stats],
            "hovertemplate": "mean %{y:.4g} (min %{customdata[0]:.4g}, max %{customdata[1]:.4g}; %{customdata[2]} rows)<extra>%{x}</extra>",
        }
    ]


__all__ = [
    "drift_over_time",
    "text_signals_over_time",
    "importance_chart",
    "is_log",
    "metric_over_epochs",
    "metric_over_versions",
    "metric_vs_params",
    "parallel_coordinates",
    "pareto_front",
    "predictions_over_days",
]
