"""A model card (Hugging Face ``README.md``: YAML metadata, then Markdown) as HTML for the version page,
rendered with markdown-it-py. Raw HTML in the card is not passed through, and links keep to http(s).

The version page shows the card's metadata as a key/value table (:attr:`RenderedCard.facts`: lists joined,
empty values left out) and leaves out what it shows itself: the metrics (``model-index``, the "Metrics"
section), the training window and partitions, the gate's decision and the lineage."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

#: the card's sections the version page shows in its own tables
PAGE_SECTIONS = ("Metrics", "Training data", "Gate decision", "Lineage")
#: metadata the version page shows itself: the metrics, the window, the partitions, the gate, the lineage
PAGE_KEYS = {
    "model-index",
    "freestack.metrics",
    "freestack.window",
    "freestack.partitions",
    "freestack.gate",
    "freestack.spec_hash",
    "freestack.code_version",
    "freestack.airflow",
    "freestack.wandb",
    "freestack.model",
    "freestack.version",
    "freestack.sweep",
}


class RenderedCard(BaseModel):
    metadata: str
    html: str
    #: (key, value) of the metadata the page does not show elsewhere, nested keys dotted, lists joined
    facts: list[tuple[str, str]] = []


def split_front_matter(text: str) -> tuple[str, str]:
    """(YAML metadata, Markdown body) of a card; the metadata is "" when the card has none."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[4:end].strip(), text[end + 4 :].lstrip("-\n")
    return "", text


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v if x not in (None, "", [], {}))
    return str(v)


def card_facts(metadata: str) -> list[tuple[str, str]]:
    """The metadata as (dotted key, text) rows: lists of plain values joined, empty values and what
    :data:`PAGE_KEYS` names left out ("freestack." dropped from the keys)."""
    import yaml

    try:
        data = yaml.safe_load(metadata) if metadata else None
    except yaml.YAMLError:
        return [("metadata", metadata)]
    out: list[tuple[str, str]] = []

    def walk(prefix: str, v: Any) -> None:
        if prefix in PAGE_KEYS or v in (None, "", [], {}):
            return
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), sub)
        elif isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
            for k, sub in enumerate(v):
                walk(f"{prefix}[{k}]", sub)
        else:
            out.append((prefix.removeprefix("freestack."), _value(v)))

    walk("", data if isinstance(data, dict) else {"metadata": data})
    return out


def _without_sections(body: str, titles: tuple[str, ...]) -> str:
    """The Markdown body less its level-2 sections named ``titles`` (fenced code is not read for headings)."""
    kept, skipping, fenced = [], False, False
    for line in body.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            skipping = line[3:].strip() in titles
        if not skipping:
            kept.append(line)
    return "".join(kept)


def render_card(text: str | None) -> RenderedCard | None:
    from markdown_it import MarkdownIt

    if not text:
        return None
    metadata, body = split_front_matter(text)
    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    return RenderedCard(
        metadata=metadata, html=md.render(_without_sections(body, PAGE_SECTIONS)), facts=card_facts(metadata)
    )


__all__ = ["PAGE_KEYS", "PAGE_SECTIONS", "RenderedCard", "card_facts", "render_card", "split_front_matter"]
