"""What a run tells the world: typed, read-only events on a bus.

The engine emits; the live view, the log lines, the results writer (and,
later, the run store and the metrics) subscribe. Each figure is computed once,
by the engine, and carried by its event: an attempt's cost, and the agent's
and the run's totals after it. The bus keeps a bounded log of recent events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar, dataclass_transform

from aoe.errors import scrub
from aoe.types import Usage


class AgentState(StrEnum):
    """pending -> (waiting) -> running <-> retrying -> one final state.

    ``waiting`` is time spent for a rate limit before an attempt: not an attempt.
    """

    PENDING = "pending"
    WAITING = "waiting"
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


# AttemptFinished.error_kind of a call stopped in flight (no answer, maybe billed)
NOT_ANSWERED = "cancelled"


class RunStatus(StrEnum):
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELLED = "cancelled"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]


_EXIT_CODES = {
    RunStatus.COMPLETED: 0,
    RunStatus.PARTIAL: 0,
    RunStatus.FAILED: 1,
    RunStatus.BUDGET_EXCEEDED: 3,
    RunStatus.CANCELLED: 130,
}


_E = TypeVar("_E")


@dataclass_transform(frozen_default=True, kw_only_default=True)
def event(cls: type[_E]) -> type[_E]:
    """An event class: a slotted dataclass, frozen for the type checker. Not at run
    time: a frozen dataclass takes ~5 µs to build instead of ~0.7, and a run emits
    several events for every call. Subscribers share each event: they read it.
    Built with keywords only: an event has up to 21 fields, several of the same
    type (costs, totals), and a value in the wrong place would pass unnoticed."""
    return dataclass(slots=True, kw_only=True)(cls)


@event
class Event:
    run_id: str
    at: float  # time.time()


@event
class RunStarted(Event):
    workflow: str
    agents: int
    max_parallel: int
    budget: float | None
    session: int = 1  # 1, then one more for each `aoe resume`
    spent: float = 0.0  # USD spent by the run's earlier sessions


@event
class AgentStarted(Event):
    """An agent's dependencies allowed it and its first unit began."""

    agent_id: str
    items: int | None = None  # foreach: how many items it runs


@event
class PromptRendered(Event):
    """An agent's prompt (of one ``foreach`` item) as rendered, before its first
    attempt: what the report shows it was asked."""

    agent_id: str
    item: int | None
    system: str | None  # with the JSON instruction aoe adds for `output: {format: json}`
    prompt: str


@event
class AgentWaiting(Event):
    """A rate limit holds the agent's next attempt back: which one (``limit``,
    ``30 requests per minute``) and, where known, for how long (``seconds``)."""

    agent_id: str
    item: int | None
    provider: str
    model: str
    limit: str | None = None
    seconds: float | None = None


@event
class AttemptStarted(Event):
    agent_id: str
    item: int | None
    attempt: int  # within the item (or the agent), every model counted
    provider: str
    model: str
    waited: float  # seconds the rate limits held it back
    reserved: float  # USD reserved for its worst case
    fingerprint: str | None = None  # of the request, when a run store or cache wants it


@event
class AttemptFinished(Event):
    """One call made: ``error`` is None when it produced a valid output. The
    agent's and the run's totals after it are carried along."""

    agent_id: str
    item: int | None
    attempt: int
    provider: str
    model: str
    duration: float
    usage: Usage
    cost: float
    agent_usage: Usage
    agent_cost: float
    run_usage: Usage
    run_cost: float
    error: str | None = None
    error_kind: str | None = None
    finish_reason: str | None = None
    truncated: bool = False  # the reply was cut off at max_tokens (by the server or by aoe)
    usage_estimated: bool = False  # the server reported no usage: aoe counted it
    cached: bool = False  # answered from the response cache: no call, no cost
    output: Any = None  # the valid output it produced (a foreach item's is recorded)


@event
class AgentRetrying(Event):
    """The last attempt failed in a way worth another; the next starts after ``delay``."""

    agent_id: str
    item: int | None
    attempt: int  # the one that failed
    delay: float
    error: str


@event
class AgentFallback(Event):
    """The model gave up; the next in ``fallbacks`` gets a full cycle of its own."""

    agent_id: str
    item: int | None
    provider: str
    model: str
    error: str


@event
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
    resumed: bool = False  # completed in an earlier session of the run: its record's output
    truncated: bool = False  # its output (or an item's) is a reply cut off at max_tokens


@event
class RunFinished(Event):
    status: RunStatus
    duration: float
    usage: Usage
    cost: float
    budget: float | None
    outputs: dict[str, Any]
    output_errors: dict[str, str]


Subscriber = Callable[[Event], None]
TextListener = Callable[[str, "int | None", str], None]
"""Told each piece of a reply as it arrives: the agent, its ``foreach`` item,
the text. Not an event: never journaled, kept or counted (a view that shows
replies arriving listens, with :attr:`EventBus.text`)."""


def event_dict(event: Event) -> dict[str, Any]:
    """An event as JSON-ready data: its type, then its fields (usage as an object)."""
    data: dict[str, Any] = {"type": type(event).__name__}
    for name in _names(type(event)):
        value = getattr(event, name)
        if isinstance(value, Usage):
            value = {"input_tokens": value.input_tokens, "output_tokens": value.output_tokens}
        elif name == "error" and isinstance(value, str):
            value = scrub(value)  # what leaves the process never carries a secret
        data[name] = value
    return data


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        from dataclasses import fields

        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


class Checkpoint(Protocol):
    """A subscriber that records events durably (the run store). The engine calls
    it before each call, so that what finished before is recorded first."""

    def __call__(self, event: Event) -> None: ...

    def flushed(self) -> Awaitable[None] | None:
        """None when every event so far is recorded durably; else something to
        await; raises if it cannot be recorded."""


class EventBus:
    """Delivers each event to every subscriber, in order, and keeps the last
    ``keep`` events (the in-memory log is bounded, whatever the run's size).

    A subscriber that raises does not stop the run or the other subscribers:
    the first such error is kept in ``failure`` for whoever runs the engine.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self._subscribers: list[Subscriber] = []
        self.log: deque[Event] = deque(maxlen=keep)
        self.failure: BaseException | None = None
        self.checkpoint: Checkpoint | None = None
        self.text: TextListener | None = None  # replies as they arrive, for a view

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def record_with(self, checkpoint: Checkpoint) -> None:
        """Subscribe the run store; the engine waits on it before each call."""
        self.subscribe(checkpoint)
        self.checkpoint = checkpoint

    def emit(self, event: Event) -> None:
        self.log.append(event)
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception as e:  # a bug in a subscriber: keep the run going
                if self.failure is None:
                    self.failure = e
