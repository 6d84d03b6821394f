"""The live view of a run on a terminal: a row per agent, progress, tokens and spend.

It redraws from the engine's events alone (the totals are the engine's, never
re-added here), and prints a summary table once the run is over.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aoe.cli.ui.text import duration, money

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

    from aoe.events import Event
    from aoe.format.workflow import Workflow


class _Row:
    """What the view shows of one agent."""

    __slots__ = (
        "attempts",
        "cached",
        "cost",
        "cut",
        "duration",
        "items",
        "items_done",
        "model",
        "started",
        "state",
        "tail",
        "tokens",
        "waiting",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self.state = "pending"
        self.attempts = 0
        self.tokens = 0
        self.cost = 0.0
        self.started: float | None = None
        self.duration: float | None = None
        self.cached = False
        self.cut = False  # its output is a reply cut off at max_tokens
        self.items: int | None = None  # foreach: how many items it runs
        self.items_done = 0
        self.waiting = ""  # the limit it waits for
        self.tail = ""  # -v: the last words of its reply as they arrive


class LiveView:
    """The terminal view of a run: a row per agent (the running ones first when
    they do not all fit), progress, tokens and spend; a summary table at the end."""

    TAIL = 48
    """Characters of a running agent's reply the view shows (``-v``)."""

    def __init__(
        self,
        workflow: Workflow,
        console: Console,
        budget: float | None = None,
        *,
        verbose: bool = False,
    ) -> None:
        from rich.live import Live

        self.verbose = verbose  # a column of each running agent's reply, arriving
        self.workflow = workflow
        self.console = console
        self.budget = budget
        self.rows = {agent_id: _Row(agent.llm.label) for agent_id, agent in workflow.agents.items()}
        self.prefixes = _shared_prefixes(list(self.rows))
        self.finished = 0
        self.cost = 0.0
        self.tokens = 0
        self.status: str | None = None
        self.run_id = ""
        self.began: float | None = None  # when the run (this session) started
        self.took: float | None = None  # its time, once it ended
        self.live = Live(
            console=console, refresh_per_second=8, transient=True, get_renderable=self.render
        )

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def text(self, agent_id: str, item: int | None, piece: str) -> None:
        """``-v``: the last words of an agent's reply as they arrive."""
        row = self.rows[agent_id]
        row.tail = (row.tail + piece)[-self.TAIL :]

    def __call__(self, event: Event) -> None:
        from aoe import events as ev

        if isinstance(event, ev.AgentStarted):
            row = self.rows[event.agent_id]
            row.state = "running"
            row.started = time.perf_counter()
            row.items = event.items
        elif isinstance(event, ev.AgentWaiting):
            row = self.rows[event.agent_id]
            row.state = "waiting"
            row.waiting = event.limit or ""  # which limit holds it
        elif isinstance(event, ev.AttemptStarted):
            self.rows[event.agent_id].state = "running"
        elif isinstance(event, ev.AgentRetrying):
            self.rows[event.agent_id].state = "retrying"
        elif isinstance(event, ev.AttemptFinished):  # the engine's totals, not re-added here
            row = self.rows[event.agent_id]
            row.attempts += 1
            row.cached = event.cached
            if event.item is not None and event.error is None:
                row.items_done += 1
            row.tokens = event.agent_usage.total
            row.cost = event.agent_cost
            self.tokens = event.run_usage.total
            self.cost = event.run_cost
        elif isinstance(event, ev.AgentFinished):
            row = self.rows[event.agent_id]
            row.state = "resumed" if event.resumed else str(event.state)
            if row.cached and event.state is ev.AgentState.COMPLETED:
                row.state = "cached"
            row.cut = event.truncated
            row.duration = event.duration
            row.tokens = event.usage.total
            row.cost = event.cost
            self.finished += 1
        elif isinstance(event, ev.RunStarted):
            self.cost = event.spent
            self.run_id = event.run_id
            self.began = time.perf_counter()
        elif isinstance(event, ev.RunFinished):
            self.status = str(event.status)
            self.tokens = event.usage.total
            self.cost = event.cost
            if self.began is not None:
                self.took = time.perf_counter() - self.began

    def table(self, *, limit: int | None = None) -> Table:
        from rich.markup import escape
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_edge=False)
        table.add_column("agent")
        table.add_column("state")
        table.add_column("model")
        for column in ("attempts", "tokens", "cost", "time"):
            table.add_column(column, justify="right")
        if self.verbose:
            table.add_column("reply", no_wrap=True, overflow="ellipsis", max_width=self.TAIL)
        rows = list(self.rows.items())  # in the workflow's order: rows do not jump
        if limit is not None and len(rows) > limit:  # the running ones, then what fits
            keep = {a for a, r in rows if r.state in _ACTIVE}
            keep.update(a for a, r in rows if a not in keep and len(keep) < limit)
            rows = [(a, r) for a, r in rows if a in keep][:limit]
        narrow = self.console.width < 120  # the model without its provider, shortened
        name_width = max(12, self.console.width - 66)  # what the other columns leave
        now = time.perf_counter()
        for agent_id, row in rows:
            took = row.duration
            if took is None and row.started is not None:
                took = now - row.started
            style = _STATE_STYLE.get(row.state, "white")
            items = f" {row.items_done}/{row.items}" if row.items and row.state in _ACTIVE else ""
            if row.state == "waiting" and row.waiting:
                items += f" ({_shortened(row.waiting, 24)})"
            model = row.model.split("/", 1)[-1] if narrow else row.model
            table.add_row(
                escape(_shortened(agent_id, name_width, self.prefixes[agent_id])),
                f"[{style}]{row.state}{items}[/]" + (" [yellow](cut off)[/]" if row.cut else ""),
                escape(model if len(model) <= 14 or not narrow else model[:13] + "…"),
                str(row.attempts),
                f"{row.tokens:,}",
                money(row.cost),
                duration(took),
                *([escape(" ".join(row.tail.split()))] if self.verbose else []),
            )
        return table

    def header(self) -> str:
        """``brief  RUN_ID  ·  3/7 completed, 2 running, 1 failed  ·  1 min 04 s  ·
        tokens  ·  spend``: what a person needs at a glance, which run included
        (after Ctrl-C it said "36/36 agents done" of a run half of which never ran)."""
        from rich.markup import escape

        states: dict[str, int] = {}
        for row in self.rows.values():
            states[row.state] = states.get(row.state, 0) + 1
        done = sum(states.get(s, 0) for s in ("completed", "cached", "resumed"))
        counts = [f"{done}/{len(self.rows)} completed"]
        running = sum(states.get(s, 0) for s in ("running", "retrying", "waiting"))
        if running and self.status is None:
            counts.append(f"{running} running")
        for state in ("failed", "rate_limited", "budget_exceeded", "skipped", "cancelled"):
            if states.get(state):
                counts.append(f"{states[state]} {state.replace('_', ' ')}")
        took = self.took
        if took is None and self.began is not None:
            took = time.perf_counter() - self.began
        spend = money(self.cost) + (f" of {money(self.budget)}" if self.budget else "")
        return "  ·  ".join(
            [
                f"[bold]{escape(self.workflow.name)}[/]"
                + (f"  {self.run_id}" if self.run_id else ""),
                ", ".join(counts),
                *([duration(took)] if took is not None else []),
                f"{self.tokens:,} tokens",
                spend,
            ]
        )

    def render(self) -> RenderableType:
        from rich.console import Group

        height = max(self.console.size.height - 4, 5)
        return Group(self.header(), self.table(limit=height))

    def summary(self) -> None:
        """The final table, printed for good once the live view is gone (the
        line under it is the end of the run's: :mod:`aoe.cli.ui.summary`)."""
        self.console.print(self.table())


_ACTIVE = frozenset({"running", "retrying", "waiting"})


def _shortened(text: str, width: int, prefix: str = "") -> str:
    """``text`` in ``width`` characters: without the ``prefix`` every agent's id
    shares, then without its middle. Agents named ``report_section_1_detail`` …
    ``report_section_7_summary`` stay apart (cut at their end, seven read
    ``report_section_…``): ``…1_detail``."""
    if len(text) <= width:
        return text
    if prefix and text.startswith(prefix):
        text = "…" + text[len(prefix) :]
        if len(text) <= width:
            return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def _shared_prefixes(names: list[str]) -> dict[str, str]:
    """Each name's longest start (to a ``_``, ``-`` or ``.``) that another name
    shares: what tells it from no other. Neighbours in sorted order share the
    most, so only they are compared."""
    ordered = sorted(names)
    found = {}
    for i, name in enumerate(ordered):
        longest = 0
        for other in ordered[max(i - 1, 0) : i] + ordered[i + 1 : i + 2]:
            same = 0
            for a, b in zip(name, other, strict=False):
                if a != b:
                    break
                same += 1
            longest = max(longest, same)
        cut = max(name.rfind(c, 0, longest) for c in "_-.")
        found[name] = name[: cut + 1] if cut >= 2 else ""
    return found


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
