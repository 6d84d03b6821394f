"""Continuing a run from its record (``aoe resume``, a worker taking over).

What earlier sessions left is handed to the engine as a :class:`Resumption`:
agents that completed are not called again, and what was spent counts against
the budgets, so that a run resumed twice never spends its budget twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from aoe.engine.agents import AgentRun
from aoe.events import AgentState
from aoe.types import Usage


class Restored(NamedTuple):
    """An agent that completed in an earlier session of the run, from its record."""

    output: Any
    usage: Usage
    cost: float
    attempts: int


class Resumption(NamedTuple):
    """What earlier sessions of a run left: the agents that completed (they are
    not called again) and what was spent, which counts against the budgets."""

    session: int
    completed: Mapping[str, Restored]
    spent: float  # USD the run may have been billed so far
    usage: Usage
    agent_spent: Mapping[str, float]  # agents that did not complete: USD already spent
    items: Mapping[str, Mapping[int, Any]] = {}  # foreach agents: outputs of finished items
    item_spent: Mapping[str, Mapping[int, float]] = {}  # and what each item spent


def restore(agents: Mapping[str, AgentRun], resumption: Resumption) -> list[AgentRun]:
    """Put what earlier sessions left into a run's agents: the completed ones keep
    their outputs (returned, to be told as resumed), the others what they spent
    (against their cost_limit) and a ``foreach`` agent its finished items. Agents
    no longer in the workflow are passed over."""
    restored = []
    for agent_id, done in resumption.completed.items():
        record = agents.get(agent_id)
        if record is None:
            continue  # no longer in the workflow
        record.state = AgentState.COMPLETED
        record.output = done.output
        record.usage = done.usage
        record.cost = done.cost
        record.attempts = done.attempts
        restored.append(record)
    for agent_id, spent in resumption.agent_spent.items():
        if agent_id in agents and agent_id not in resumption.completed:
            agents[agent_id].ledger.spent = spent
    for agent_id, items in resumption.items.items():
        if agent_id in agents and agent_id not in resumption.completed:
            agents[agent_id].restored_items = dict(items)
    for agent_id, spent_by_item in resumption.item_spent.items():
        if agent_id in agents:
            agents[agent_id].item_spent = dict(spent_by_item)
    return restored
