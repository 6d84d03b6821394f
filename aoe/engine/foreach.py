"""Whether an agent whose dependencies allow it runs (``when``), and over what
(``foreach``): its items, checked against what a run may hold.

An expression that is a name, or a name compared with a literal, is
evaluated here, on the event loop; anything more in the sandbox (it may be
slow or hostile), in a task of its own. Either way the answer is a
:class:`Start` for the scheduler to act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from aoe.engine.context import reason
from aoe.format.rendering import MAX_FOREACH_ITEMS, evaluate, inline_expression, too_many_items
from aoe.format.workflow import Agent
from aoe.sandbox.pool import Lane


class Start(NamedTuple):
    """What an agent's ``when`` and ``foreach`` say."""

    items: list[Any] | None = None  # foreach: the items it runs over; else one unit
    skipped: bool = False  # its when condition is false
    error: str | None = None  # an expression could not be evaluated: the agent fails


_GO = Start()
_SKIP = Start(skipped=True)


def inline(agent: Agent) -> bool:
    """Whether :func:`start_here` may evaluate the agent's expressions."""
    when, foreach = agent.when, agent.foreach
    return (when is None or inline_expression(when.text)) and (
        foreach is None or inline_expression(foreach.text)
    )


def start_here(agent: Agent, context: Mapping[str, Any]) -> Start:
    """``when`` and ``foreach`` evaluated in this process (they are :func:`inline`)."""
    if agent.when is not None:
        try:
            go = bool(evaluate(agent.when.text, context))
        except Exception as e:
            return Start(error=f"its when condition could not be evaluated: {e}")
        if not go:
            return _SKIP
    if agent.foreach is None:
        return _GO
    try:
        items = evaluate(agent.foreach.text, context)
    except Exception as e:
        return Start(error=f"its foreach expression could not be evaluated: {e}")
    if not isinstance(items, list | tuple):
        return Start(error=f"its foreach expression gave {_kind(items)}, not a list")
    return Start(list(items))


async def start_in_sandbox(agent: Agent, context: Mapping[str, Any], lane: Lane) -> Start:
    """``when`` and ``foreach`` evaluated in the sandbox (it checks the items' type)."""
    try:
        go = agent.when is None or await lane.when(agent.when.text, context)
    except Exception as e:
        return Start(error=f"its when condition could not be evaluated: {reason(e)}")
    if not go:
        return _SKIP
    if agent.foreach is None:
        return _GO
    try:
        items = await lane.foreach(agent.foreach.text, context)
    except Exception as e:
        return Start(error=f"its foreach expression could not be evaluated: {reason(e)}")
    return Start(items)


def refusal(items: int, units: int, max_units: int | None) -> str | None:
    """Why ``items`` items are too many, given the ``units`` (agents and items) the
    run holds already and the most it may (``max_units``); None: they are not."""
    if items > MAX_FOREACH_ITEMS:
        return f"its foreach expression {too_many_items(items)}"
    if max_units is not None and units + items - 1 > max_units:
        return (
            f"its foreach expression gave {items:,} items: with the run's other "
            f"agents and items that is over the {max_units:,} this service runs "
            "in one run (batch the items)"
        )
    return None


def _kind(value: Any) -> str:
    return "nothing (undefined)" if value is None else type(value).__name__
