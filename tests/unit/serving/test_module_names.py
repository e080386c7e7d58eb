"""The model server's docstrings, comments and requirements files name modules (and what is in them) that
exist: a reader who follows ``freestack_server.mlserver.runtime`` or ``freestack.version.files.weight_files`` finds it."""

from __future__ import annotations

import re
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[3] / "plugins"
SERVER = PLUGINS / "freestack_server"
#: a dotted name of the project's, not inside a string literal (a logger's or an environ key's name)
DOTTED = re.compile(r"""(?<![\w."'/-])(freestack(?:_server)?(?:\.[A-Za-z_]\w*)+)""")
RELATIVE = re.compile(r":(?:mod|func|class|data):`(\.[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)`")


def _module(parts: list[str]) -> tuple[Path, list[str]] | None:
    """The source file of the longest module prefix of ``parts``, and the rest of the name."""
    for n in range(len(parts), 0, -1):
        base = PLUGINS.joinpath(*parts[:n])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path, parts[n:]
    return None


def _defines(source: str, name: str) -> bool:
    pattern = rf"^\s*(?:(?:async def|def|class) {name}\b|{name}\s*[:=])"  # a module's or a class's
    return re.search(pattern, source, re.MULTILINE) is not None


def missing_names(path: Path) -> list[str]:
    text = path.read_text()
    names = DOTTED.findall(text)
    inside = path.is_relative_to(PLUGINS)  # a relative name is its package's
    package = ".".join(path.relative_to(PLUGINS).parent.parts) if inside else "freestack_server"
    names += [f"{package}{rel}" for rel in RELATIVE.findall(text)]
    out = []
    for name in sorted(set(names)):
        found = _module(name.split("."))
        if found is None or found[0].parent == PLUGINS:
            out.append(f"{path.name}: {name} (no such module)")
            continue
        source, rest = found[0].read_text(), found[1]
        if rest and not _defines(source, rest[0]):
            out.append(f"{path.name}: {name} ({found[0].relative_to(PLUGINS)} has no {rest[0]})")
    return out


def test_the_model_servers_words_name_modules_that_exist():
    files = sorted([*SERVER.rglob("*.py"), *SERVER.glob("requirements-*.txt")])
    assert len(files) > 10
    missing = [m for f in files for m in missing_names(f)]
    assert not missing, "\n".join(missing)


def test_a_stale_name_is_caught(tmp_path):
    stale = tmp_path / "stale.py"
    stale.write_text(
        '"""Wrapped by :mod:`freestack.serving.mlserver` and '
        'freestack_server.mlserver.runtime.NoSuchThing."""\nlog = "freestack.serving"\n'
    )
    assert missing_names(stale) == [
        "stale.py: freestack.serving.mlserver (freestack/serving/__init__.py has no mlserver)",
        "stale.py: freestack_server.mlserver.runtime.NoSuchThing (freestack_server/mlserver/runtime.py has no NoSuchThing)",
    ]
