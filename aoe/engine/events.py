"""What a run tells the world: typed, frozen events on a bus.

The engine emits; the live view, the log lines, the results writer (and,
later, the run store and the metrics) subscribe. Each figure is computed once,
by the engine, and carried by its event. The bus keeps a bounded log of
recent events for whoever asks late.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aoe.providers.base import Usage


class AgentState(StrEnum):
    """An agent's state: pending -> running <-> retrying -> one final state."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXCEEDED = "budget_exceeded"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL

    @property
    def failure(self) -> bool:
        """A final state that stops a run without partial completion."""
        return self in _FAILURES


_FINAL = frozenset(
    {
        AgentState.COMPLETED,
        AgentState.FAILED,
        AgentState.RATE_LIMITED,
        AgentState.BUDGET_EXCEEDED,
        AgentState.SKIPPED,
        AgentState.CANCELLED,
    }
)
_FAILURES = frozenset({AgentState.FAILED, AgentState.RATE_LIMITED, AgentState.BUDGET_EXCEEDED})


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELLED = "cancelled"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]


_EXIT_CODES = {
    RunStatus.RUNNING: 1,
    RunStatus.COMPLETED: 0,
    RunStatus.PARTIAL: 0,
    RunStatus.FAILED: 1,
    RunStatus.BUDGET_EXCEEDED: 3,
    RunStatus.CANCELLED: 130,
}


@dataclass(frozen=True, slots=True)
class Event:
    run_id: str
    at: float  # time.time()


@dataclass(frozen=True, slots=True)
class RunStarted(Event):
    workflow: str
    agents: int
    max_parallel: int


@dataclass(frozen=True, slots=True)
class AgentStarted(Event):
    """An agent's dependencies allowed it and it began (its items, for foreach)."""

    agent_id: str
    items: int | None = None  # foreach: how many items it runs


@dataclass(frozen=True, slots=True)
class AttemptStarted(Event):
    agent_id: str
    item: int | None
    attempt: int
    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class AttemptFinished(Event):
    """One call made: ``error`` is None when it produced a valid output."""

    agent_id: str
    item: int | None
    attempt: int
    provider: str
    model: str
    duration: float
    usage: Usage
    cost: float
    error: str | None = None
    error_kind: str | None = None
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class AgentFinished(Event):
    """An agent reached its final state."""

    agent_id: str
    state: AgentState
    duration: float
    usage: Usage
    cost: float
    attempts: int
    output: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RunFinished(Event):
    status: RunStatus
    duration: float
    usage: Usage
    cost: float
    outputs: dict[str, Any]
    output_errors: dict[str, str]


Subscriber = Callable[[Event], None]


class EventBus:
    """Delivers each event to every subscriber, in order, and keeps the last
    ``keep`` events (the in-memory log is bounded, whatever the run's size)."""

    def __init__(self, keep: int = 10_000) -> None:
        self._subscribers: list[Subscriber] = []
        self.log: deque[Event] = deque(maxlen=keep)

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def emit(self, event: Event) -> None:
        self.log.append(event)
        for subscriber in self._subscribers:
            subscriber(event)


def now() -> float:
    return time.time()
