"""How a service is doing, from the engine's own figures.

:class:`HealthMonitor` subscribes to the events of every run a service makes
and keeps, for the last :attr:`HealthMonitor.window` seconds, each attempt's
rate-limit wait and whether the provider answered. :meth:`HealthMonitor.check`
turns them, with the runs in progress against the limit, into one of:

- ``unhealthy`` (HTTP 503): the service is draining, or its queue is full and
  it refuses new runs;
- ``degraded`` (HTTP 200): every run slot is taken (new runs wait), attempts
  waited on the rate limits for more than ``max_wait`` seconds on average, or
  more than ``max_error_rate`` of the calls failed (at least ``min_calls``);
- ``healthy`` (HTTP 200) otherwise.

The reason says which figure decided it, with its value.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aoe.events import AttemptFinished, AttemptStarted, Event
from aoe.observe.metrics import request_status


@dataclass
class Health:
    status: str  # healthy, degraded, unhealthy
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return 503 if self.status == "unhealthy" else 200

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, **self.figures}


class HealthMonitor:
    """A subscriber of every run's events; :meth:`check` says how things are."""

    def __init__(
        self,
        *,
        window: float = 300.0,
        max_wait: float = 5.0,
        max_error_rate: float = 0.25,
        min_calls: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_wait = max_wait
        self.max_error_rate = max_error_rate
        self.min_calls = min_calls
        self.clock = clock
        self._waits: deque[tuple[float, float]] = deque()  # (when, seconds waited)
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed)
        self._wait_sum = 0.0
        self._failures = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptStarted):
            self._waits.append((self.clock(), event.waited))
            self._wait_sum += event.waited
        elif isinstance(event, AttemptFinished) and not event.cached:
            status = request_status(event)
            if status == "cancelled":
                return  # no answer was asked for to the end: says nothing of the provider
            failed = status != "ok"
            self._calls.append((self.clock(), failed))
            self._failures += failed

    def _forget(self) -> None:
        oldest = self.clock() - self.window
        while self._waits and self._waits[0][0] < oldest:
            self._wait_sum -= self._waits.popleft()[1]
        while self._calls and self._calls[0][0] < oldest:
            self._failures -= self._calls.popleft()[1]
        if not self._waits:
            self._wait_sum = 0.0  # no drift from the subtractions

    def figures(self) -> tuple[float, float, int]:
        """Mean rate-limit wait (s), provider error rate and calls, over the window."""
        self._forget()
        wait = self._wait_sum / len(self._waits) if self._waits else 0.0
        calls = len(self._calls)
        return wait, (self._failures / calls if calls else 0.0), calls

    def check(
        self,
        *,
        active: int,
        limit: int,
        queued: int,
        queue_limit: int,
        draining: bool,
        problem: str | None = None,
        shared_queue: bool = False,
    ) -> Health:
        """``problem``: what keeps this service from working at all (Redis
        unreachable, its worker stopped), if anything.
        ``shared_queue``: the queue is Redis's, the same for every replica, so a
        full one is no reason to take this one out of service (submissions get
        429 wherever they go)."""
        wait, error_rate, calls = self.figures()
        figures = {
            "active_runs": active,
            "max_concurrent_workflows": limit,
            "queued_runs": queued,
            "queue_limit": queue_limit,
            "rate_limit_wait_seconds": round(wait, 3),
            "provider_error_rate": round(error_rate, 3),
            "calls": calls,
            "window_seconds": self.window,
        }
        if draining:
            return Health("unhealthy", "draining: no new runs (shutting down)", figures)
        if problem is not None:
            return Health("unhealthy", problem, figures)
        if queued >= queue_limit and shared_queue:
            return Health(
                "degraded",
                f"the work queue is full: {queued} runs wait for a worker, new runs are refused",
                figures,
            )
        if queued >= queue_limit:
            return Health(
                "unhealthy",
                f"the queue is full: {queued} runs wait for a slot, new runs are refused",
                figures,
            )
        if active >= limit:
            return Health(
                "degraded", f"every run slot is taken ({active} of {limit}): new runs wait", figures
            )
        if wait > self.max_wait:
            return Health(
                "degraded",
                f"high rate-limit waits: {wait:.1f} s per attempt on average (over "
                f"{self.max_wait:g} s) in the last {self.window:g} s",
                figures,
            )
        if calls >= self.min_calls and error_rate > self.max_error_rate:
            return Health(
                "degraded",
                f"providers failed {error_rate:.0%} of {calls} calls in the last "
                f"{self.window:g} s (over {self.max_error_rate:.0%})",
                figures,
            )
        return Health("healthy", "ok", figures)
