"""An import-linter contract type (import-linter's documented extension point; ``make lint`` runs it):
no import cycle between the modules of a package, however long.

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
