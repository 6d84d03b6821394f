"""The dependency graph of a workflow: cycles, order, critical path, drawings.

Standard library only (and :mod:`aoe.errors`, which is pure) and free of
asyncio, so the validator, the planner and the executor share one
implementation. Nodes are agent ids; an edge ``a -> b``
means *b depends on a* (a must finish first). Every algorithm here is
iterative and linear in nodes plus edges, so a 5,000-agent chain costs no
recursion and little time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import pairwise
from typing import NamedTuple

from aoe.errors import AoeError


class GraphError(AoeError, ValueError):
    """The graph is not a DAG of known nodes. The loader reports cycles and unknown
    dependencies as diagnostics first, so one that reaches a caller is a bug in aoe."""


class CriticalPath(NamedTuple):
    """The heaviest chain of dependencies: ``nodes`` in run order, ``length`` its weight."""

    nodes: tuple[str, ...]
    length: float


class Graph:
    """A DAG of nodes in declaration order.

    ``dependencies`` maps every node to the nodes it depends on. Unknown
    dependencies and cycles raise :class:`GraphError`; use
    :func:`unknown_dependencies` and :func:`find_cycles` first to report them.
    """

    __slots__ = ("_dependencies", "_dependents", "_index", "_order", "nodes")

    def __init__(self, dependencies: Mapping[str, Sequence[str]]) -> None:
        self.nodes: tuple[str, ...] = tuple(dependencies)
        self._index = {node: i for i, node in enumerate(self.nodes)}
        self._dependencies: dict[str, tuple[str, ...]] = {}
        self._dependents: dict[str, list[str]] = {node: [] for node in self.nodes}
        for node, deps in dependencies.items():
            unique = tuple(dict.fromkeys(deps))
            for dep in unique:
                if dep not in self._index:
                    raise GraphError(f"{node} depends on unknown node {dep}")
                self._dependents[dep].append(node)
            self._dependencies[node] = unique
        self._order = self._topological_order()
        if len(self._order) < len(self.nodes):  # Kahn's sort stops short of a cycle
            cycle = find_cycles(self._dependencies)[0]
            raise GraphError("dependency cycle: " + format_cycle(cycle))

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._index

    def dependencies(self, node: str) -> tuple[str, ...]:
        return self._dependencies[node]

    def dependents(self, node: str) -> tuple[str, ...]:
        return tuple(self._dependents[node])

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Every dependency as ``(dependency, dependent)``, in declaration order."""
        return [(dep, node) for node in self.nodes for dep in self._dependencies[node]]

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if not self._dependencies[n])

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(n for n in self.nodes if not self._dependents[n])

    def topological_order(self) -> tuple[str, ...]:
        """Every node after its dependencies; ties broken by declaration order."""
        return self._order

    def _topological_order(self) -> tuple[str, ...]:
        index = self._index
        waiting = {n: len(d) for n, d in self._dependencies.items()}
        ready = [index[n] for n, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            node = self.nodes[heapq.heappop(ready)]
            order.append(node)
            for child in self._dependents[node]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, index[child])
        return tuple(order)

    def levels(self) -> dict[str, int]:
        """Each node's depth: 0 for roots, else one more than its deepest dependency."""
        level: dict[str, int] = {}
        for node in self._order:
            deps = self._dependencies[node]
            level[node] = 1 + max(level[d] for d in deps) if deps else 0
        return level

    def remaining_path(self, weight: Callable[[str], float] | None = None) -> dict[str, float]:
        """For each node, the weight of the heaviest path from it to a sink, itself included.

        The scheduler starts the ready node with the largest value first, so
        the critical path is never starved.
        """
        w = weight or _unit
        remaining: dict[str, float] = {}
        for node in reversed(self._order):
            after = self._dependents[node]
            remaining[node] = w(node) + (max(remaining[c] for c in after) if after else 0.0)
        return remaining

    def critical_path(self, weight: Callable[[str], float] | None = None) -> CriticalPath:
        """The heaviest chain (by default: the one with the most agents)."""
        if not self.nodes:
            return CriticalPath((), 0.0)
        w = weight or _unit
        best: dict[str, float] = {}
        via: dict[str, str | None] = {}
        for node in self._order:
            deps = self._dependencies[node]
            prev = max(deps, key=lambda d: (best[d], -self._index[d])) if deps else None
            best[node] = w(node) + (best[prev] if prev is not None else 0.0)
            via[node] = prev
        end = max(self.nodes, key=lambda n: (best[n], -self._index[n]))
        chain: list[str] = []
        cursor: str | None = end
        while cursor is not None:
            chain.append(cursor)
            cursor = via[cursor]
        return CriticalPath(tuple(reversed(chain)), best[end])

    def to_mermaid(
        self, labels: Mapping[str, str] | None = None, *, highlight: Iterable[str] = ()
    ) -> str:
        """A Mermaid flowchart: one node per agent, one edge per dependency."""
        # Node ids get a prefix: Mermaid reserves words such as "end" and "graph".
        lines = ["flowchart TD"]
        for node in self.nodes:
            label = _mermaid_text(labels.get(node, node) if labels else node)
            lines.append(f'    n_{node}["{label}"]')
        lines.extend(f"    n_{dep} --> n_{node}" for dep, node in self.edges)
        marked = [f"n_{n}" for n in highlight if n in self._index]
        if marked:
            lines.append("    classDef critical stroke-width:3px")
            lines.append(f"    class {','.join(marked)} critical")
        return "\n".join(lines) + "\n"

    def to_dot(
        self, name: str, labels: Mapping[str, str] | None = None, *, highlight: Iterable[str] = ()
    ) -> str:
        """A Graphviz digraph, valid input for ``dot``; ``highlight`` is a path
        (the critical path) whose nodes and edges are drawn heavier."""
        path = list(highlight)
        marked = set(path)
        on_path = set(pairwise(path))
        lines = [
            f"digraph {_dot_id(name)} {{",
            "    rankdir=TB;",
            '    node [shape=box, style=rounded, fontname="Helvetica"];',
        ]
        for node in self.nodes:
            label = labels.get(node, node) if labels else node
            extra = ", penwidth=2" if node in marked else ""
            lines.append(f"    {_dot_id(node)} [label={_dot_id(label)}{extra}];")
        for dep, node in self.edges:
            extra = " [penwidth=2]" if (dep, node) in on_path else ""
            lines.append(f"    {_dot_id(dep)} -> {_dot_id(node)}{extra};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _unit(_: str) -> float:
    return 1.0


def find_cycles(dependencies: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle for each strongly connected part of the graph that has one.

    Each cycle is a path that starts and ends at the same node, following
    "depends on": ``['a', 'c', 'b', 'a']`` means a depends on c, c on b and b
    on a. Self-dependencies come out as ``['a', 'a']``. Unknown dependencies
    are ignored. Iterative Tarjan, linear time.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for start in dependencies:
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            deps = dependencies[node]
            recurse = False
            while i < len(deps):
                dep = deps[i]
                i += 1
                if dep not in dependencies:
                    continue
                if dep not in index:
                    work.append((node, i))
                    work.append((dep, 0))
                    recurse = True
                    break
                if dep in on_stack:
                    low[node] = min(low[node], index[dep])
            if recurse:
                continue
            if low[node] == index[node]:
                cycle = _close_component(node, stack, on_stack, dependencies)
                if cycle is not None:
                    cycles.append(cycle)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    order = {node: i for i, node in enumerate(dependencies)}
    cycles.sort(key=lambda c: order[c[0]])
    return cycles


def _close_component(
    node: str, stack: list[str], on_stack: set[str], dependencies: Mapping[str, Sequence[str]]
) -> list[str] | None:
    """Pop the strongly connected component ``node`` roots off Tarjan's stack; a
    cycle in it, if it has one (more than one node, or a self-dependency)."""
    component: list[str] = []
    while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
            break
    if len(component) > 1 or node in dependencies[node]:
        return _cycle_in(set(component), dependencies, node)
    return None


def _cycle_in(
    component: set[str], dependencies: Mapping[str, Sequence[str]], start: str
) -> list[str]:
    """A shortest cycle through ``start`` inside one strongly connected component."""
    if start in dependencies[start]:
        return [start, start]
    parent: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following: list[str] = []
        for node in frontier:
            for dep in dependencies[node]:
                if dep == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    path.reverse()
                    return [*path, start]
                if dep in component and dep not in seen:
                    seen.add(dep)
                    parent[dep] = node
                    following.append(dep)
        frontier = following
    raise AssertionError("a strongly connected component without a cycle")  # pragma: no cover


def format_cycle(cycle: Sequence[str]) -> str:
    return " -> ".join(cycle)


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("\n", "<br/>")
    )


def _dot_id(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
