"""What aoe shows people: diagnostics, graphs and tables, for terminals and pipes.

Rich is imported only by the functions that draw with it, so commands that
print plain lines (``aoe validate``) start without it. Colour is used only on
a terminal, and never when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, TextIO

from aoe.diagnostics import Diagnostic

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.tree import Tree

    from aoe.config import Settings
    from aoe.workflow import Workflow

_SEVERITY_COLOUR = {"error": "\x1b[1;31m", "warning": "\x1b[1;33m"}
_RESET = "\x1b[0m"


def use_colour(stream: TextIO) -> bool:
    """Colour only for a terminal, and only when NO_COLOR is not set."""
    if "NO_COLOR" in os.environ or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def format_diagnostic(diagnostic: Diagnostic, colour: bool = False) -> str:
    """``FILE:LINE:COL: error: MESSAGE``, the severity coloured on a terminal."""
    if not colour:
        return diagnostic.format()
    d = diagnostic
    severity = f"{_SEVERITY_COLOUR[str(d.severity)]}{d.severity}{_RESET}"
    return f"\x1b[1m{d.where}:{_RESET} {severity}: {d.message}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def console(stream: TextIO | None = None, *, width: int | None = None) -> Console:
    """A Rich console for ``stream``: colour on terminals only, NO_COLOR honoured."""
    from rich.console import Console

    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


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


def config_table(rows: Sequence[tuple[str, str, str]]) -> Table:
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False)
    table.add_column("setting", style="bold", overflow="fold")
    table.add_column("value", overflow="fold")
    table.add_column("source", style="dim", overflow="fold")
    for key, value, source in rows:
        table.add_row(escape(key), escape(value), escape(source))
    return table


def config_rows(settings: Settings) -> list[tuple[str, str, str]]:
    return [(s.key, s.shown, s.source) for s in settings.settings()]


def config_lines(rows: Sequence[tuple[str, str, str]]) -> str:
    """``key = value  (source)`` lines, aligned, for pipes and files."""
    width = max((len(key) for key, _, _ in rows), default=0)
    return "".join(f"{key:<{width}} = {value}  ({source})\n" for key, value, source in rows)
