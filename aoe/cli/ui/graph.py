"""The dependency graph of a workflow drawn as a tree (``aoe graph``).

A Rich tree for a terminal, the same tree as plain text for pipes and files;
the critical path is in bold. Iterative throughout: a 5,000-agent chain must
not recurse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from aoe.cli.ui.text import plural

if TYPE_CHECKING:
    from rich.tree import Tree

    from aoe.format.workflow import Workflow


class TreeLine(NamedTuple):
    """One line of the graph drawn as a tree: how deep, whether it is the last of
    its siblings at each level, and the agent (or a reference to one drawn elsewhere)."""

    last: tuple[bool, ...]
    agent_id: str
    reference: bool


def tree_lines(workflow: Workflow) -> list[TreeLine]:
    """The workflow as a tree: roots first, each agent under the agents it depends on.

    An agent with several dependencies is drawn in full under the deepest of
    them (the one that finishes last) and referred to (``-> see id``) under the
    others. Iterative: a 5,000-agent chain must not recurse.
    """
    graph = workflow.graph
    level = graph.levels()

    def home(agent_id: str) -> str | None:
        deps = graph.dependencies(agent_id)
        return max(deps, key=lambda d: level[d]) if deps else None

    lines: list[TreeLine] = []
    roots = graph.roots
    stack: list[tuple[tuple[bool, ...], str, str | None]] = [
        ((i == len(roots) - 1,), n, None) for i, n in reversed(list(enumerate(roots)))
    ]
    while stack:
        last, agent_id, via = stack.pop()
        if home(agent_id) != via:
            lines.append(TreeLine(last, agent_id, True))
            continue
        lines.append(TreeLine(last, agent_id, False))
        children = graph.dependents(agent_id)
        stack.extend(
            ((*last, i == len(children) - 1), child, agent_id)
            for i, child in reversed(list(enumerate(children)))
        )
    return lines


def _label(workflow: Workflow, agent_id: str, critical: set[str], markup: bool) -> str:
    """An agent's line: id, model, what is special about it, its description.

    With ``markup``, Rich markup (the id bold on the critical path); without,
    plain text, and Rich is not imported."""
    agent = workflow.agents[agent_id]

    def escape(text: str) -> str:
        return text.replace("[", "\\[") if markup else text

    def style(text: str, how: str) -> str:
        return f"[{how}]{escape(text)}[/]" if markup else text

    parts = [style(agent_id, "bold") if agent_id in critical else agent_id]
    parts.append(style(agent.llm.label, "dim"))
    if agent.foreach is not None:
        parts.append(style("foreach", "cyan"))
    if agent.when is not None:
        parts.append(style("when", "cyan"))
    if agent.trigger_rule != "all_completed":
        parts.append(style(agent.trigger_rule, "cyan"))
    if agent.description:
        parts.append("- " + escape(agent.description))
    return " ".join(parts)


def graph_tree(workflow: Workflow) -> Tree:
    """The tree of :func:`tree_lines` for a terminal, the critical path in bold."""
    from rich.markup import escape
    from rich.tree import Tree

    critical = set(workflow.graph.critical_path().nodes)
    root = Tree(f"[bold]{escape(workflow.name)}[/] ({plural(len(workflow.graph), 'agent')})")
    branches = [root]
    for line in tree_lines(workflow):
        parent = branches[len(line.last) - 1]
        if line.reference:
            parent.add(f"[dim]-> see {line.agent_id}[/]")
            continue
        del branches[len(line.last) :]
        branches.append(parent.add(_label(workflow, line.agent_id, critical, markup=True)))
    return root


def graph_text(workflow: Workflow) -> str:
    """The same tree as plain text: for pipes and files, and graphs too deep for a
    terminal's width. Lines are never wrapped or cut, however deep the graph."""
    critical = set(workflow.graph.critical_path().nodes)
    out = [f"{workflow.name} ({plural(len(workflow.graph), 'agent')})"]
    for line in tree_lines(workflow):
        prefix = "".join("    " if last else "│   " for last in line.last[:-1])
        prefix += "└── " if line.last[-1] else "├── "
        label = (
            f"-> see {line.agent_id}"
            if line.reference
            else _label(workflow, line.agent_id, critical, markup=False)
        )
        out.append(prefix + label)
    return "\n".join(out) + "\n"


def tree_depth(workflow: Workflow) -> int:
    return max((len(line.last) for line in tree_lines(workflow)), default=0)


def critical_path_line(workflow: Workflow) -> str:
    path = workflow.graph.critical_path()
    return f"critical path: {' -> '.join(path.nodes)} ({plural(len(path.nodes), 'agent')})"
