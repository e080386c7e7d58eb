"""freestack's own modules are imported at the top of a module, where the import graph shows them.

An import of a freestack module inside a function hides an edge of that graph. It stays only where it
is needed: the module imported loads torch, pandas, pyarrow, numpy, Airflow or FastAPI, and its importer
must stay light (the DAG file at parse time, the CLI at start, the Airflow plugin in every process).
This test counts such imports across ``plugins/`` and holds the count under a ceiling.

Per package: ``python -m tests.unit.test_imports`` (from the checkout's root).
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
OWN = ("freestack", "freestack_server")

#: the most function-level imports of freestack's own modules that plugins/ may hold. It only goes down:
#: when a change takes the count lower, lower this to the new count (print it with the command above)
CEILING = 86


def is_own(node: ast.AST) -> bool:
    """Whether ``node`` imports a freestack module: ``freestack...``, ``freestack_server...`` or a
    relative module."""
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").split(".")[0] in OWN
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] in OWN for alias in node.names)
    return False


def package_of(path: Path) -> str:
    """The package a file counts for: ``freestack/cli`` for plugins/freestack/cli/serve.py, ``freestack``
    for plugins/freestack/dags.py, the file's name for a module at plugins/'s top."""
    parts = path.relative_to(PLUGINS).parts
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def function_level_imports(path: Path) -> list[int]:
    """The lines of ``path`` where a function (at any depth, methods included) imports a freestack
    module; an import in a function nested in another counts once."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lines: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            lines.update(node.lineno for node in ast.walk(fn) if is_own(node))
    return sorted(lines)


def counts(root: Path = PLUGINS) -> Counter[str]:
    """Function-level imports of freestack's own modules, per package (see :func:`package_of`)."""
    found: Counter[str] = Counter()
    for path in sorted(root.rglob("*.py")):
        found[package_of(path)] += len(function_level_imports(path))
    return found


def test_function_level_imports_of_freestack_modules_stay_under_the_ceiling():
    found = counts()
    total = sum(found.values())
    worst = ", ".join(f"{pkg} {n}" for pkg, n in found.most_common(5) if n)
    assert total <= CEILING, (
        f"{total} imports of freestack modules inside functions (ceiling {CEILING}; most in {worst}): "
        "import at the module's top unless the module imported loads a heavy library that the importer "
        "must not load"
    )


if __name__ == "__main__":
    found = counts()
    for pkg, n in sorted(found.items()):
        if n:
            print(f"{pkg:32s} {n:4d}")
    print(f"{'total':32s} {sum(found.values()):4d}  (ceiling {CEILING})")
