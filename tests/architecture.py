"""import-linter contract types (import-linter's documented extension point; ``make lint`` runs them):
no import cycle between the modules of a package, however long (``acyclic_modules``); and which stage
package may import which, never two both ways (``stage_pairs``).

import-linter's own ``acyclic_siblings`` compares whole sub-packages; freestack's stage packages each
hold a spec block that the pipeline spec assembles and operators that read the assembled spec, so at
package level that is a loop by design, while no module ever imports itself back. This contract looks
at modules: it reports every strongly connected group of two or more modules, with a chain through it.
"""

from __future__ import annotations

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck
from importlinter.domain.helpers import module_expressions_to_modules


class AcyclicModulesContract(Contract):
    type_name = "acyclic_modules"

    packages = fields.SetField(subfield=fields.ModuleExpressionField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        roots = {m.name for m in module_expressions_to_modules(graph, self.packages)}
        modules = {m for m in graph.modules if any(m == r or m.startswith(r + ".") for r in roots)}
        edges = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
        cycles = [sorted(group) for group in strongly_connected(edges) if len(group) > 1]
        chains = [graph.find_shortest_chain(c[0], c[1]) or () for c in cycles]
        back = [graph.find_shortest_chain(c[1], c[0]) or () for c in cycles]
        return ContractCheck(
            kept=not cycles, metadata={"cycles": cycles, "chains": list(zip(chains, back, strict=True))}
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for group, (there, back) in zip(check.metadata["cycles"], check.metadata["chains"], strict=True):
            output.print_error(f"{len(group)} modules import each other: {', '.join(group)}", bold=True)
            output.print(f"  {' -> '.join(there)}")
            output.print(f"  {' -> '.join(back)}")
            output.new_line()


class StagePairsContract(Contract):
    """Which stage may import which. ``stages`` are packages; ``allowed`` lists ties ``a -> b`` (a module of
    ``a`` may import any module of ``b``). Broken by an import across stages that no tie allows, and by
    two ties that point both ways (each stage of such a pair would build on the other). A tie no module
    uses any more is a warning, so the list stays the one the code has.

    import-linter's ``layers`` contract lets stages of one layer import one another freely; this one
    names those ties, so a new one is a decision in ``pyproject.toml``, not an accident."""

    type_name = "stage_pairs"

    stages = fields.ListField(subfield=fields.ModuleField())
    allowed = fields.ListField(subfield=fields.ImportExpressionField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        stages = [m.name for m in self.stages]
        ties = stage_ties(graph, stages)
        allowed = {(str(e.importer), str(e.imported)) for e in self.allowed}
        unknown = sorted(name for pair in allowed for name in pair if name not in stages)
        both_ways = sorted({tuple(sorted(p)) for p in allowed if (p[1], p[0]) in allowed})
        unlisted = {pair: imports for pair, imports in sorted(ties.items()) if pair not in allowed}
        unused = [
            f"{a} -> {b} is allowed but nothing imports across it: drop it"
            for a, b in sorted(allowed - set(ties))
        ]
        return ContractCheck(
            kept=not (unlisted or both_ways or unknown),
            warnings=unused,
            metadata={"unlisted": unlisted, "both_ways": both_ways, "unknown": unknown},
        )

    def render_broken_contract(self, check: ContractCheck) -> None:
        for name in check.metadata["unknown"]:
            output.print_error(f"{name} is named in allowed but is not one of the stages", bold=True)
        for a, b in check.metadata["both_ways"]:
            output.print_error(f"{a} and {b} are allowed to import each other: keep one direction", bold=True)
        for (a, b), imports in check.metadata["unlisted"].items():
            output.print_error(f"{a} imports {b}, and no tie allows it:", bold=True)
            for line in imports:
                output.print(f"  {line}")
            output.new_line()


def stage_ties(graph: grimp.ImportGraph, stages: list[str]) -> dict[tuple[str, str], list[str]]:
    """``{(a, b): ["importer -> imported (l.N)", ...]}`` for every stage ``a`` that imports stage ``b``."""

    def stage_of(module: str) -> str | None:
        return next((s for s in stages if module == s or module.startswith(s + ".")), None)

    ties: dict[tuple[str, str], list[str]] = {}
    for importer in sorted(m for s in stages for m in graph.find_descendants(s) | {s} if m in graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            target = stage_of(imported)
            if target is None or target == stage_of(importer):
                continue
            lines = sorted(
                {d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)}
            )
            where = ", ".join(f"l.{n}" for n in lines)
            ties.setdefault((stage_of(importer), target), []).append(f"{importer} -> {imported} ({where})")
    return ties


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of a directed graph, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups
