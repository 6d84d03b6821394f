"""What aoe shows people: diagnostics, graphs and tables, for terminals and pipes.

Rich is imported only by the functions that draw with it, so commands that
print plain lines (``aoe validate``) start without it. Colour is used only on
a terminal, and never when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

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


def graph_tree(workflow: Workflow) -> Tree:
    """The workflow as a tree: roots first, each agent under the agents it depends on.

    An agent with several dependencies is drawn in full under the deepest of
    them (the one that finishes last) and referred to (``-> see id``) under the
    others. The critical path is bold.
    """
    from rich.markup import escape
    from rich.tree import Tree

    graph = workflow.graph
    critical = set(graph.critical_path().nodes)
    root = Tree(f"[bold]{escape(workflow.name)}[/] ({plural(len(graph), 'agent')})")

    def label(agent_id: str) -> str:
        agent = workflow.agents[agent_id]
        name = f"[bold]{agent_id}[/]" if agent_id in critical else agent_id
        parts = [name, f"[dim]{escape(agent.llm.label)}[/]"]
        if agent.foreach is not None:
            parts.append("[cyan]foreach[/]")
        if agent.when is not None:
            parts.append("[cyan]when[/]")
        if agent.trigger_rule != "all_completed":
            parts.append(f"[cyan]{agent.trigger_rule}[/]")
        if agent.description:
            parts.append(f"- {escape(agent.description)}")
        return " ".join(parts)

    level = graph.levels()

    def home(agent_id: str) -> str | None:
        deps = graph.dependencies(agent_id)
        return max(deps, key=lambda d: level[d]) if deps else None

    # Depth-first, iteratively: a 5,000-agent chain must not recurse.
    stack: list[tuple[Tree, str, str | None]] = [(root, n, None) for n in reversed(graph.roots)]
    while stack:
        parent, agent_id, via = stack.pop()
        if home(agent_id) != via:
            parent.add(f"[dim]-> see {agent_id}[/]")
            continue
        branch = parent.add(label(agent_id))
        stack.extend((branch, child, agent_id) for child in reversed(graph.dependents(agent_id)))
    return root


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
