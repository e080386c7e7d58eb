"""A model card (Hugging Face ``README.md``: YAML metadata, then Markdown) as HTML for the version page,
rendered with markdown-it-py. Raw HTML in the card is not passed through, and links keep to http(s)."""

from __future__ import annotations

from pydantic import BaseModel


class RenderedCard(BaseModel):
    metadata: str
    html: str


def split_front_matter(text: str) -> tuple[str, str]:
    """(YAML metadata, Markdown body) of a card; the metadata is "" when the card has none."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[4:end].strip(), text[end + 4 :].lstrip("-\n")
    return "", text


def render_card(text: str | None) -> RenderedCard | None:
    from markdown_it import MarkdownIt

    if not text:
        return None
    metadata, body = split_front_matter(text)
    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    return RenderedCard(metadata=metadata, html=md.render(body))


__all__ = ["RenderedCard", "render_card", "split_front_matter"]
