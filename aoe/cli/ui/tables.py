"""Tables people read: the engine config (``aoe config show``) and a run's plan
(``aoe plan``), as a Rich table on a terminal or aligned text for pipes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aoe.cli.ui.text import duration, money, plural

if TYPE_CHECKING:
    from rich.table import Table

    from aoe.config.settings import Settings
    from aoe.policy.plan import Plan


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
            else money(a.worst_case)
            if a.worst_case is not None
            else f"{money(a.worst_case_per_unit)} each"
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
    budget = f" of the {money(plan.budget)} budget" if plan.budget is not None else ""
    lines.append(f"worst case: {money(plan.worst_case)}{budget}")
    if plan.unknown:
        lines.append(
            "  not counted, as their number of calls or their price is known only "
            "at run time: " + ", ".join(plan.unknown)
        )
    if plan.over_budget:
        lines.append(
            f"warning: the worst case is over the budget; the run stops when the next call "
            f"could pass {money(plan.budget or 0)} (real costs are usually far lower)"
        )
    lines += _limit_lines(plan)
    return "\n".join(lines) + "\n"


def _limit_lines(plan: Plan) -> list[str]:
    """What the rate limits need of the run, and the least wall time they allow."""
    if not plan.limits:
        return []
    lines = ["", "rate limits:"]
    for limit in plan.limits:
        lines.append(
            f"  {limit.scope}: {limit.limit} {limit.needed:,} of {limit.allowed:,}"
            + (f", at least {duration(limit.least_seconds)}" if limit.least_seconds else "")
        )
    lines.append(f"least wall time the rate limits allow: {duration(plan.least_seconds)}")
    if plan.least_seconds >= 1:
        lines.append("  (`aoe run --mock --mock-limits` rehearses it offline, held to them)")
    return lines
