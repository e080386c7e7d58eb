"""The project's front page stays short and every link in it resolves (the rest is in docs/)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= 8 * 1024, f"README.md is {len(readme)} bytes; move detail into docs/"
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme.decode())
    relative = [link for link in links if "://" not in link]
    assert relative and all((ROOT / link).exists() for link in relative), relative
    for command in ("make demo", "make test"):
        assert command in readme.decode()


def test_every_docs_page_is_in_the_navigation():
    import yaml

    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    listed = set(re.findall(r":\s*([\w/.-]+\.md)", nav))
    assert pages <= listed, pages - listed
    assert {"reference/spec.md", "reference/settings.md", "reference/cli.md"} <= listed  # generated at build
    yaml.load(nav, Loader=yaml.Loader)  # noqa: S506  (our own file; its one !!python tag is mkdocs')
