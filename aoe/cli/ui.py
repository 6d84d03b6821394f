"""What aoe shows people: diagnostics, graphs and tables, for terminals and pipes.

Rich is imported only by the functions that draw with it, so commands that
print plain lines (``aoe validate``) start without it. Colour is used only on
a terminal, and never when ``NO_COLOR`` is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple, TextIO

from aoe.types import Diagnostic

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.tree import Tree

    from aoe.config.settings import Settings
    from aoe.events import Event
    from aoe.format.workflow import Workflow
    from aoe.policy.plan import Plan

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


# -- runs ------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def _money(usd: float) -> str:
    if usd == 0:
        return "$0"
    if usd < 0.01:
        return "$" + f"{usd:.6f}".rstrip("0")
    return f"${usd:,.4f}" if usd < 1 else f"${usd:,.2f}"


class PlainProgress:
    """One line per event, for pipes and CI logs: no colour, no escape codes;
    lines below ``level`` (``LOG_LEVEL``) are left out."""

    def __init__(self, stream: TextIO, level: str = "INFO") -> None:
        from aoe.observe.logs import LEVELS

        self.stream = stream
        self.least = LEVELS.get(level.upper(), 20)

    def __call__(self, event: Event) -> None:
        if self.least > 20:
            from aoe.observe.logs import LEVELS

            if LEVELS[event_level(event)] < self.least:
                return
        line = describe_event(event)
        if line is not None:
            clock = time.strftime("%H:%M:%S", time.localtime(event.at))
            self.stream.write(f"{clock} {line}\n")
            self.stream.flush()


def describe_event(event: Event) -> str | None:
    """A run event as one line of text (None for events not worth a line)."""
    from aoe import events as ev

    if isinstance(event, ev.RunStarted):
        budget = f", budget {_money(event.budget)}" if event.budget is not None else ""
        if event.session > 1:
            return (
                f"run {event.run_id}: {event.workflow} resumed (session {event.session}), "
                f"{_money(event.spent)} spent before, up to {event.max_parallel} at once{budget}"
            )
        return (
            f"run {event.run_id}: {event.workflow} started, {plural(event.agents, 'agent')}, "
            f"up to {event.max_parallel} at once{budget}"
        )
    number = getattr(event, "item", None)
    item = f" item {number}" if number is not None else ""
    if isinstance(event, ev.AgentStarted):
        items = f" ({plural(event.items, 'item')})" if event.items is not None else ""
        return f"{event.agent_id}: started{items}"
    if isinstance(event, ev.AgentWaiting):
        return f"{event.agent_id}{item}: waiting for the rate limits of {event.provider}"
    if isinstance(event, ev.AttemptFinished):
        if event.cached:
            return (
                f"{event.agent_id}{item}: answered from the cache "
                f"({event.provider}/{event.model}, no cost)"
            )
        if event.error_kind == ev.NOT_ANSWERED:
            return f"{event.agent_id}{item}: attempt {event.attempt} cancelled"
        what = f"{event.provider}/{event.model}, {event.usage.total} tokens, {_money(event.cost)}"
        if event.error is not None:
            return (
                f"{event.agent_id}{item}: attempt {event.attempt} failed after "
                f"{_duration(event.duration)} ({what}): {event.error}"
            )
        return (
            f"{event.agent_id}{item}: attempt {event.attempt} answered in "
            f"{_duration(event.duration)} ({what})"
        )
    if isinstance(event, ev.AgentRetrying):
        return f"{event.agent_id}{item}: retrying in {_duration(event.delay)}"
    if isinstance(event, ev.AgentFallback):
        return (
            f"{event.agent_id}{item}: falling back to {event.provider}/{event.model} "
            f"({event.error})"
        )
    if isinstance(event, ev.AgentFinished):
        if event.resumed:
            return f"{event.agent_id}: completed in an earlier session (its recorded output)"
        why = f": {event.error}" if event.error else ""
        took = f" in {_duration(event.duration)}" if event.duration else ""
        return f"{event.agent_id}: {event.state}{took}{why}"
    if isinstance(event, ev.RunFinished):
        budget = f" of {_money(event.budget)}" if event.budget is not None else ""
        return (
            f"run {event.run_id}: {event.status} in {_duration(event.duration)}, "
            f"{event.usage.total} tokens, {_money(event.cost)}{budget}"
        )
    return None


class JsonLines:
    """One JSON object per event (``--log-format json``), for log collectors: the
    fields of :mod:`aoe.observe.logs` (``function`` is the event, ``agent_finished``...)
    and the event's own; lines below ``level`` are left out."""

    def __init__(self, stream: TextIO, level: str = "INFO") -> None:
        from aoe.observe.logs import LEVELS

        self.stream = stream
        self.least = LEVELS.get(level.upper(), 20)

    def __call__(self, event: Event) -> None:
        import json

        from aoe.events import event_dict
        from aoe.observe.logs import LEVELS, timestamp

        level = event_level(event)
        if LEVELS[level] < self.least:
            return
        record: dict[str, object] = {
            "timestamp": timestamp(event.at),
            "level": level,
            "message": describe_event(event) or type(event).__name__,
            "module": "aoe.engine",
            "function": _snake(type(event).__name__),
            "event": type(event).__name__,
        }
        for name, value in event_dict(event).items():
            if name not in ("type", "at", "output", "outputs"):
                record[name] = value
        self.stream.write(json.dumps(record, default=str) + "\n")
        self.stream.flush()


def event_level(event: Event) -> str:
    """INFO, WARNING for a failed attempt, ERROR for a failed agent or run."""
    from aoe import events as ev

    if isinstance(event, ev.AttemptFinished) and event.error:
        return "WARNING"
    if (isinstance(event, ev.AgentFinished) and event.state.failure) or (
        isinstance(event, ev.RunFinished) and event.status.exit_code != 0
    ):
        return "ERROR"
    return "INFO"


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class _Row:
    __slots__ = ("attempts", "cached", "cost", "duration", "model", "started", "state", "tokens")

    def __init__(self, model: str) -> None:
        self.model = model
        self.state = "pending"
        self.attempts = 0
        self.tokens = 0
        self.cost = 0.0
        self.started: float | None = None
        self.duration: float | None = None
        self.cached = False


class LiveView:
    """The terminal view of a run: a row per agent (the running ones first when
    they do not all fit), progress, tokens and spend; a summary table at the end."""

    def __init__(self, workflow: Workflow, console: Console, budget: float | None = None) -> None:
        from rich.live import Live

        self.workflow = workflow
        self.console = console
        self.budget = budget
        self.rows = {agent_id: _Row(agent.llm.label) for agent_id, agent in workflow.agents.items()}
        self.finished = 0
        self.cost = 0.0
        self.tokens = 0
        self.status: str | None = None
        self.live = Live(
            console=console, refresh_per_second=8, transient=True, get_renderable=self.render
        )

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def __call__(self, event: Event) -> None:
        from aoe import events as ev

        if isinstance(event, ev.AgentStarted):
            row = self.rows[event.agent_id]
            row.state = "running"
            row.started = time.perf_counter()
        elif isinstance(event, ev.AgentWaiting):
            self.rows[event.agent_id].state = "waiting"
        elif isinstance(event, ev.AttemptStarted):
            self.rows[event.agent_id].state = "running"
        elif isinstance(event, ev.AgentRetrying):
            self.rows[event.agent_id].state = "retrying"
        elif isinstance(event, ev.AttemptFinished):  # the engine's totals, not re-added here
            row = self.rows[event.agent_id]
            row.attempts += 1
            row.cached = event.cached
            row.tokens = event.agent_usage.total
            row.cost = event.agent_cost
            self.tokens = event.run_usage.total
            self.cost = event.run_cost
        elif isinstance(event, ev.AgentFinished):
            row = self.rows[event.agent_id]
            row.state = "resumed" if event.resumed else str(event.state)
            if row.cached and event.state is ev.AgentState.COMPLETED:
                row.state = "cached"
            row.duration = event.duration
            row.tokens = event.usage.total
            row.cost = event.cost
            self.finished += 1
        elif isinstance(event, ev.RunStarted):
            self.cost = event.spent
        elif isinstance(event, ev.RunFinished):
            self.status = str(event.status)
            self.tokens = event.usage.total
            self.cost = event.cost

    def table(self, *, limit: int | None = None) -> Table:
        from rich.markup import escape
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_edge=False)
        table.add_column("agent")
        table.add_column("state")
        table.add_column("model")
        for column in ("attempts", "tokens", "cost", "time"):
            table.add_column(column, justify="right")
        order = {"running": 0, "retrying": 0, "pending": 2}
        rows = sorted(self.rows.items(), key=lambda kv: order.get(kv[1].state, 1))
        if limit is not None and len(rows) > limit:
            rows = rows[:limit]
        now = time.perf_counter()
        for agent_id, row in rows:
            duration = row.duration
            if duration is None and row.started is not None:
                duration = now - row.started
            style = _STATE_STYLE.get(row.state, "white")
            table.add_row(
                escape(agent_id),
                f"[{style}]{row.state}[/]",
                escape(row.model),
                str(row.attempts),
                f"{row.tokens:,}",
                _money(row.cost),
                _duration(duration),
            )
        return table

    def header(self) -> str:
        from rich.markup import escape

        spend = _money(self.cost) + (f" of {_money(self.budget)}" if self.budget else "")
        return (
            f"[bold]{escape(self.workflow.name)}[/]  {self.finished}/{len(self.rows)} agents done"
            f"  ·  {self.tokens:,} tokens  ·  {spend}"
        )

    def render(self) -> RenderableType:
        from rich.console import Group

        height = max(self.console.size.height - 4, 5)
        return Group(self.header(), self.table(limit=height))

    def summary(self) -> None:
        """The final table, printed for good once the live view is gone."""
        self.console.print(self.table())
        status = f"  ·  [bold]{self.status}[/]" if self.status else ""
        self.console.print(self.header() + status)


_STATE_STYLE = {
    "completed": "green",
    "cached": "green",
    "resumed": "green",
    "running": "cyan",
    "waiting": "blue",
    "retrying": "yellow",
    "pending": "dim",
    "failed": "bold red",
    "rate_limited": "red",
    "budget_exceeded": "red",
    "skipped": "dim",
    "cancelled": "magenta",
}


def plan_text(plan: Plan) -> str:
    """``aoe plan`` for people: order, critical path, costs, limits."""
    lines = [f"plan of {plan.workflow} ({plural(len(plan.agents), 'agent')})", ""]
    lines.append("order: " + ", ".join(plan.order))
    lines.append("critical path: " + " -> ".join(plan.critical_path))
    lines.append("")
    header = ("agent", "model", "calls", "attempts", "prompt", "output", "worst case")
    rows = [header]
    for a in plan.agents:
        calls = "?" if a.units is None else str(a.units)
        worst = (
            "no price"
            if a.worst_case_per_unit is None
            else _money(a.worst_case)
            if a.worst_case is not None
            else f"{_money(a.worst_case_per_unit)} each"
        )
        rows.append(
            (
                a.id,
                f"{a.provider}/{a.model}",
                calls,
                str(a.attempts_per_unit),
                f"~{a.prompt_tokens:,}",
                f"{a.max_tokens:,}",
                worst,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lines.append("")
    budget = f" of the {_money(plan.budget)} budget" if plan.budget is not None else ""
    lines.append(f"worst case: {_money(plan.worst_case)}{budget}")
    if plan.unknown:
        lines.append(
            "  not counted, as their number of calls or their price is known only "
            "at run time: " + ", ".join(plan.unknown)
        )
    if plan.over_budget:
        lines.append(
            f"warning: the worst case is over the budget; the run stops when the next call "
            f"could pass {_money(plan.budget or 0)} (real costs are usually far lower)"
        )
    if plan.limits:
        lines.append("")
        lines.append("rate limits:")
        for limit in plan.limits:
            lines.append(
                f"  {limit.scope}: {limit.limit} {limit.needed:,} of {limit.allowed:,}"
                + (f", at least {_duration(limit.least_seconds)}" if limit.least_seconds else "")
            )
        lines.append(f"least wall time the rate limits allow: {_duration(plan.least_seconds)}")
    return "\n".join(lines) + "\n"
