"""One agent's state during a run, and one unit of its work.

:class:`AgentRun` is the one record both halves of the engine write: the
scheduler its place in the graph (dependencies not yet decided, its
``foreach`` items, its final state), the attempts what it costs (its
attempts, usage and cost). :class:`Unit` is what the attempts of one unit
share. Both slotted and mutable: a run touches them on every call.
"""

from __future__ import annotations

from typing import Any

from aoe.events import AgentState
from aoe.format.workflow import Agent, Workflow
from aoe.policy.costs import Ledger
from aoe.types import Message, Usage


class AgentRun:
    """One agent's state during a run."""

    __slots__ = (
        "agent",
        "attempts",
        "cost",
        "dependents",
        "error",
        "foreach",
        "item_spent",
        "items",
        "items_left",
        "ledger",
        "output",
        "priority",
        "restored_items",
        "started_at",
        "state",
        "truncated",
        "undecided",
        "usage",
    )

    def __init__(self, agent: Agent, priority: float, ledger: Ledger) -> None:
        self.agent = agent
        self.priority = priority
        self.ledger = ledger  # its cost_limit over all attempts (foreach items: one each)
        self.state = AgentState.PENDING
        self.undecided = len(agent.depends_on)  # dependencies not yet final
        self.dependents: list[AgentRun] = []
        self.output: Any = None
        self.error: str | None = None
        self.foreach: list[Any] = []  # foreach: the items it runs over
        self.items: list[Any] | None = None  # foreach: the items' outputs, in order
        self.items_left = 0
        self.attempts = 0
        self.usage = Usage()
        self.cost = 0.0
        self.started_at: float | None = None
        self.restored_items: dict[int, Any] = {}  # foreach items finished in an earlier session
        self.item_spent: dict[int, float] = {}  # and what items spent then
        self.truncated = False  # an output it kept came from a reply cut off at max_tokens


def agents_of(workflow: Workflow, default_limit: float | None) -> dict[str, AgentRun]:
    """A record for each agent, each knowing its dependents, each with its ledger
    (its cost_limit, else the engine's default) and its priority (the longest
    path from it to the end)."""
    remaining = workflow.graph.remaining_path()
    agents: dict[str, AgentRun] = {}
    for agent_id, agent in workflow.agents.items():
        limit = agent.cost_limit if agent.cost_limit is not None else default_limit
        ledger = Ledger(limit, f"agent {agent_id}'s cost_limit")
        agents[agent_id] = AgentRun(agent, remaining[agent_id], ledger)
    for record in agents.values():
        for dep in record.agent.depends_on:
            agents[dep].dependents.append(record)
    return agents


class Unit:
    """One unit of work: an agent, or one item of a ``foreach`` agent. Its attempts
    are numbered over every model it tries, and it has a cost_limit of its own
    (an item: one each, of the agent's size)."""

    __slots__ = ("attempts", "feedback", "item", "ledger", "record")

    def __init__(self, record: AgentRun, item: int | None, ledger: Ledger) -> None:
        self.record = record
        self.item = item
        self.ledger = ledger
        self.attempts = 0
        # a reply that failed its check and what was wrong with it: told to the
        # model's next attempt (each model starts without)
        self.feedback: list[Message] = []
