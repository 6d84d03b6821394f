"""Events for tests, with every field the test does not care about filled in.

Events are keyword-only (each construction names its fields); a test that
feeds a subscriber one attempt names what it is about and leaves the rest here.
"""

from __future__ import annotations

from typing import Any

from aoe.events import AttemptFinished, AttemptStarted
from aoe.types import Usage


def attempt_started(**fields: Any) -> AttemptStarted:
    """An attempt of agent ``a`` of run ``r`` on openai/gpt-4o-mini, unless told."""
    given: dict[str, Any] = {
        "run_id": "r",
        "at": 0.0,
        "agent_id": "a",
        "item": None,
        "attempt": 1,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "waited": 0.0,
        "reserved": 0.02,
        **fields,
    }
    return AttemptStarted(**given)


def attempt_finished(
    *, usage: Usage | None = None, cost: float = 0.0, **fields: Any
) -> AttemptFinished:
    """As :func:`attempt_started`, finished; the agent's and the run's totals are
    this attempt's ``usage`` and ``cost`` unless told."""
    usage = Usage() if usage is None else usage
    given: dict[str, Any] = {
        "run_id": "r",
        "at": 0.0,
        "agent_id": "a",
        "item": None,
        "attempt": 1,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "duration": 0.1,
        "usage": usage,
        "cost": cost,
        "agent_usage": usage,
        "agent_cost": cost,
        "run_usage": usage,
        "run_cost": cost,
        **fields,
    }
    return AttemptFinished(**given)
