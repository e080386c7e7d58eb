"""The monitor's report: one self-contained HTML page per interval (tables, and matplotlib plots inline)."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from freestack.ml.plots import png

PANELS = 6  # distributions drawn per version: the prediction and the most drifted series


def _psi_plot(v: dict[str, Any], threshold: float) -> bytes:
    import matplotlib.pyplot as plt

    top = v["series"][:20][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(top) + 1.2))
    ax.barh(
        [s["name"] for s in top],
        [s["psi"] for s in top],
        color=["#d62728" if s["drifted"] else "#1f77b4" for s in top],
    )
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set_xlabel("population stability index")
    ax.set_title(f"version {v['version']}: PSI per column (red: drifted)", fontsize=10)
    ax.legend(fontsize=8)
    return png(fig, dpi=90)


def _distribution_plot(v: dict[str, Any]) -> bytes:
    import matplotlib.pyplot as plt

    pred = [s for s in v["series"] if s["name"] == "prediction"]
    chosen = pred + [s for s in v["series"] if s["name"] != "prediction"][: PANELS - len(pred)]
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.0), squeeze=False)
    for ax, s in zip(axes[0], chosen, strict=True):
        bins = s.get("bins") or {}
        ref, cur = np.asarray(bins.get("reference", [])), np.asarray(bins.get("current", []))
        x = np.arange(len(ref))
        ax.bar(x - 0.2, ref, 0.4, label="reference")
        ax.bar(x + 0.2, cur, 0.4, label="this interval")
        labels = bins.get("labels")
        ax.set_xticks(
            x,
            [str(label)[:8] for label in labels] if labels else [f"d{i}" for i in x],
            fontsize=6,
            rotation=90,
        )
        ax.set_title(f"{s['name']} (PSI {s['psi']:.2f})", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"version {v['version']}: share of rows per bin (deciles of the reference)", fontsize=9)
    return png(fig, dpi=90)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(x: Any) -> str:
        return html.escape(f"{x:.4g}" if isinstance(x, float) else str(x))

    body = "".join("<tr>" + "".join(f"<td>{cell(x)}</td>" for x in r) + "</tr>" for r in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{body}</table>"


def _verdict(signal: dict[str, Any]) -> str:
    """A text signal's last cell: whether it drifted, or that it is off or was not measured (its note,
    below the table, says why)."""
    if signal["drifted"]:
        return "alert" if signal.get("alerts") else "yes (reported only)"
    if signal.get("off"):
        return "off (see the note below)"
    return "not measured (see the note below)" if signal.get("note") else "no"


def _text_section(text: dict[str, Any]) -> str:
    """A text-generation version's text signals (:mod:`freestack.monitor.text_drift`) as a table."""
    if not text.get("signals"):
        return f"<h3>text signals</h3><p>{html.escape(text.get('note', 'none judged'))}</p>"
    head = ["signal", "statistic", "rows", "this interval", "evaluation", "threshold", "p-value", "drifted"]
    rows = [
        [
            s["name"],
            s["statistic"],
            s["rows"],
            "" if s.get("value") is None else s["value"],
            "" if s.get("reference") is None else s["reference"],
            s.get("threshold", ""),
            "" if s.get("p_value") is None else s["p_value"],
            _verdict(s),
        ]
        for s in text["signals"]
    ]
    mix = ", ".join(f"{k} {v:.1%}" for k, v in sorted(text.get("finish_reasons", {}).items()))
    ref = text.get("reference", {})
    notes = "".join(
        f"<li>{html.escape(s['name'])}: {html.escape(s['note'])}</li>"
        for s in text["signals"]
        if s.get("note")
    )
    return (
        f"<h3>text signals (reference: {ref.get('rows', 0)} prompts and answers of {html.escape(ref.get('source', ''))})</h3>"
        + _table(head, rows)
        + (f"<ul>{notes}</ul>" if notes else "")
        + f"<p>stop reasons: {html.escape(mix or 'none logged')}; prompts cut from the left: "
        f"{text.get('prompts_cut', 0.0):.1%}</p>"
    )


def render(summary: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
    """The report page and its plots (name -> PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    images: dict[str, bytes] = {}
    overview = [
        summary["status"],
        summary["rows"],
        summary["files"],
        summary["labels"],
        len(summary["alerts"]),
    ]
    parts = [
        f"<h1>{html.escape(summary['model'])}: monitoring {html.escape(summary['interval']['start'])} to "
        f"{html.escape(summary['interval']['end'])}</h1>",
        _table(["status", "logged rows", "log files", "labels", "alerts"], [overview]),
    ]
    if summary["alerts"]:
        parts.append(
            "<h2>alerts</h2><ul>"
            + "".join(f"<li>{html.escape(a['message'])}</li>" for a in summary["alerts"])
            + "</ul>"
        )
    notes = summary["notes"] + summary["problems"]
    if notes:
        parts.append("<h2>notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    t = summary["thresholds"]
    for v in summary["versions"]:
        parts.append(
            f"<h2>version {html.escape(v['version'])}: {html.escape(v.get('status', ''))}, {v['rows']} rows</h2>"
        )
        if not v.get("series"):
            continue
        for name, data in (
            (f"psi-{v['version']}.png", _psi_plot(v, t["psi"])),
            (f"distributions-{v['version']}.png", _distribution_plot(v)),
        ):
            images[name] = data
            parts.append(
                f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}"></figure>'
            )
        if lab := v.get("labels"):
            value = lab.get("value") if lab.get("value") is not None else lab.get("note", "")
            head = ["rows", "metric", "this interval", "at registration", "worse by", "threshold", "drifted"]
            row = [lab["rows"], lab["metric"], value, lab["reference"], lab.get("drop", "")]
            row += [t["metric_drop"], lab["drifted"]]
            parts.append("<h3>labelled rows</h3>" + _table(head, [row]))
        if v.get("text"):
            parts.append(_text_section(v["text"]))
        head = ["column", "kind", "rows", "PSI", "test", "p-value", "drifted"]
        keys = ("name", "kind", "rows", "psi", "test", "p_value")
        rows = [[*(s[k] for k in keys), "yes" if s["drifted"] else ""] for s in v["series"]]
        parts.append(
            f"<h3>columns (PSI threshold {t['psi']:g}, p-value threshold {t['p_value']:g})</h3>"
            + _table(head, rows)
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(summary['model'])} monitoring</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}img{max-width:100%}</style></head><body>"
        + "".join(parts)
        + "</body></html>"
    )
    return page, images


__all__ = ["render"]
