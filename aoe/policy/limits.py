"""Provider rate limits, held in every sliding window.

A limit of *L requests per minute* here means: in **any** window of sixty
seconds, at most L requests start. A token bucket lets a full minute's
allowance through at once and then refills, so two adjacent minutes can see
2L; providers count the way this module does. The same holds for requests per
hour and per day and for tokens per minute; ``concurrent_requests`` bounds the
calls in flight.

Each provider has one set of windows shared by all its models, except a model
named under ``rate_limiting.per_model``, which gets windows of its own (its
keys over the provider's). Every run of the process shares them. Requests
wait in order of arrival, so a large request is never starved by small ones.
Tokens are reserved as the caller's estimate and corrected with the reported
usage when the call ends.

:class:`RateLimiter` is the interface; :class:`LocalRateLimiter` holds the
windows in this process. A Redis-backed limiter (shared by processes) will
implement the same two methods. Time comes from a :class:`Clock`, so tests
run in virtual time.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, Protocol

from aoe.config.models import RateLimitingSection, RateLimits
from aoe.errors import RunError

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


class Limits(NamedTuple):
    """One set of limits; None is no limit."""

    requests_per_minute: int | None = None
    requests_per_hour: int | None = None
    requests_per_day: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None

    @property
    def unlimited(self) -> bool:
        return all(v is None for v in self)


class RequestTooLarge(RunError):
    """A request that alone needs more tokens than ``tokens_per_minute`` allows."""

    retryable = False

    @classmethod
    def of(cls, scope: str, tokens: int, limit: int) -> RequestTooLarge:
        return cls(
            f"the request needs up to {tokens:,} tokens, more than the {limit:,} tokens per "
            f"minute allowed for {scope}; lower max_tokens or shorten the prompt, or raise "
            "tokens_per_minute if your tier allows it"
        )


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Monotonic time and asyncio's sleep."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Waiting(NamedTuple):
    """Why a request waits, told to ``on_wait``: the limit that holds it
    (``30 requests per minute``, ``4 calls at once``) and, where known, the
    seconds until it may go."""

    limit: str
    seconds: float | None = None


OnWait = Callable[[Waiting], None]


class Permit(NamedTuple):
    """An admitted request: give it back with :meth:`RateLimiter.release`."""

    scope: str  # the windows it counts in: a provider, or provider/model
    ident: int
    admitted_at: float
    tokens: int
    waited: float  # seconds it waited for the limits


class RateLimiter(Protocol):
    async def acquire(
        self,
        provider: str,
        model: str,
        tokens: int,
        on_wait: OnWait | None = None,
    ) -> Permit:
        """Wait until a request of ``tokens`` fits every window, then take it;
        ``on_wait`` is told once, if it has to wait at all, which limit holds it."""
        ...

    def release(self, permit: Permit, used_tokens: int | None) -> None:
        """The call ended: free its concurrency slot and correct its tokens."""
        ...


class _Window:
    """Starts within the last ``length`` seconds and their amounts (requests or tokens)."""

    __slots__ = ("entries", "length", "limit", "total")

    def __init__(self, length: float, limit: int) -> None:
        self.length = length
        self.limit = limit
        self.entries: deque[list[float]] = deque()  # [start, amount]
        self.total = 0.0

    def expire(self, now: float) -> None:
        entries = self.entries
        while entries and entries[0][0] <= now - self.length:
            self.total -= entries.popleft()[1]

    def wait_for(self, now: float, amount: float) -> float:
        """Seconds until ``amount`` more fits (0 if it fits now)."""
        excess = self.total + amount - self.limit
        if excess <= 0:
            return 0.0
        freed = 0.0
        for start, used in self.entries:  # oldest first: the first to leave the window
            freed += used
            if freed >= excess:
                return start + self.length - now
        return self.length  # more than the window can ever hold: the caller refuses it


class _Scope:
    """The windows of one provider (or one model), its queue and its calls in flight."""

    __slots__ = ("blocking", "changed", "concurrent", "in_flight", "queue", "tokens", "windows")

    def __init__(self, limits: Limits) -> None:
        self.windows: list[_Window] = [
            _Window(length, limit)
            for length, limit in (
                (MINUTE, limits.requests_per_minute),
                (HOUR, limits.requests_per_hour),
                (DAY, limits.requests_per_day),
            )
            if limit is not None
        ]
        self.tokens = (
            _Window(MINUTE, limits.tokens_per_minute)
            if limits.tokens_per_minute is not None
            else None
        )
        self.concurrent = limits.concurrent_requests
        self.in_flight = 0
        self.queue: deque[asyncio.Future[None]] = deque()
        self.changed: asyncio.Future[None] | None = None  # set when a call ends
        self.blocking = ""  # the limit the last wait_for found full

    def wait_for(self, now: float, tokens: int) -> float | None:
        """0 if a request fits now, seconds to wait, or None: wait for a call to end."""
        if self.concurrent is not None and self.in_flight >= self.concurrent:
            self.blocking = at_once(self.concurrent)
            return None
        wait = 0.0
        for window in self.windows:
            window.expire(now)
            seconds = window.wait_for(now, 1)
            if seconds > wait:
                noun = "request" if window.limit == 1 else "requests"
                wait, self.blocking = seconds, f"{window.limit:,} {noun} per {_PER[window.length]}"
        if self.tokens is not None:
            self.tokens.expire(now)
            seconds = self.tokens.wait_for(now, tokens)
            if seconds > wait:
                wait, self.blocking = seconds, f"{self.tokens.limit:,} tokens per minute"
        return wait

    def take(self, now: float, tokens: int) -> list[float] | None:
        for window in self.windows:
            window.entries.append([now, 1.0])
            window.total += 1
        self.in_flight += 1
        if self.tokens is None:
            return None
        entry = [now, float(tokens)]
        self.tokens.entries.append(entry)
        self.tokens.total += tokens
        return entry


class LocalRateLimiter:
    """The in-process limiter: exact sliding windows, first come first served."""

    def __init__(
        self,
        limits_for: Callable[[str, str], tuple[str, Limits]],
        clock: Clock | None = None,
    ) -> None:
        """``limits_for(provider, model)`` gives the scope's key and its limits."""
        self._limits_for = limits_for
        self.clock: Clock = clock or SystemClock()
        self._scopes: dict[str, _Scope] = {}
        self._token_entries: dict[int, list[float]] = {}
        self._ids = 0

    def _scope(self, provider: str, model: str) -> tuple[str, _Scope | None]:
        key, limits = self._limits_for(provider, model)
        if limits.unlimited:
            return key, None
        scope = self._scopes.get(key)
        if scope is None:
            scope = self._scopes[key] = _Scope(limits)
        return key, scope

    async def acquire(
        self,
        provider: str,
        model: str,
        tokens: int,
        on_wait: OnWait | None = None,
    ) -> Permit:
        key, scope = self._scope(provider, model)
        self._ids += 1
        ident = self._ids
        arrived = self.clock.now()
        if scope is None:
            return Permit(key, ident, arrived, tokens, 0.0)
        if scope.tokens is not None and tokens > scope.tokens.limit:
            raise RequestTooLarge.of(key, tokens, scope.tokens.limit)
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        scope.queue.append(turn)
        told = on_wait is None
        if scope.queue[0] is turn:
            turn.set_result(None)
        elif on_wait is not None:
            on_wait(Waiting(f"{len(scope.queue) - 1:,} calls before it in line for {key}"))
            told = True
        try:
            await turn  # our turn: everyone who came before us has been admitted
            while True:
                now = self.clock.now()
                wait = scope.wait_for(now, tokens)
                if wait == 0.0:
                    entry = scope.take(now, tokens)
                    break
                if not told and on_wait is not None:
                    on_wait(Waiting(scope.blocking, wait))
                    told = True
                await self._wait(scope, wait)
        finally:
            if scope.queue and scope.queue[0] is turn:
                scope.queue.popleft()
                if scope.queue:  # the next in line may try now
                    scope.queue[0].set_result(None)
            elif turn in scope.queue:  # cancelled while waiting for its turn
                scope.queue.remove(turn)
        if entry is not None:
            self._token_entries[ident] = entry
        return Permit(key, ident, now, tokens, now - arrived)

    async def _wait(self, scope: _Scope, seconds: float | None) -> None:
        """Until ``seconds`` pass or a call ends (its slot freed, its tokens corrected)."""
        if scope.changed is None or scope.changed.done():
            scope.changed = asyncio.get_running_loop().create_future()
        changed = scope.changed
        if seconds is None:
            await changed
            return
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait((sleeper, changed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()

    def release(self, permit: Permit, used_tokens: int | None) -> None:
        scope = self._scopes.get(permit.scope)
        if scope is None:
            return
        scope.in_flight -= 1
        entry = self._token_entries.pop(permit.ident, None)
        if entry is not None and used_tokens is not None and scope.tokens is not None:
            # the provider counts what was used: correct the reservation
            if entry[0] > self.clock.now() - MINUTE:
                scope.tokens.total += used_tokens - entry[1]
            entry[1] = float(used_tokens)
        if scope.changed is not None and not scope.changed.done():
            scope.changed.set_result(None)


_PER = {MINUTE: "minute", HOUR: "hour", DAY: "day"}


def at_once(calls: int) -> str:
    """``4 calls at once``; ``1 call at once``."""
    return f"{calls:,} call{'' if calls == 1 else 's'} at once"


def limits_for_config(config: RateLimitingSection) -> Callable[[str, str], tuple[str, Limits]]:
    """``limits_for`` from the engine config. A provider's limits are the defaults
    with its ``per_provider`` keys over them; a model under ``per_model`` has windows
    of its own, its keys over its provider's; other models share their provider's.
    The mock provider has no limits unless ``per_provider`` gives it some; a
    rehearsal's ``mock:NAME`` (``--mock-limits``) has NAME's limits, in windows
    of its own."""

    def over(base: Limits, section: RateLimits) -> Limits:
        return base._replace(**{name: getattr(section, name) for name in section.model_fields_set})

    defaults = Limits(*(getattr(config, name) for name in Limits._fields))
    cache: dict[tuple[str, str], tuple[str, Limits]] = {}

    def limits_for(provider: str, model: str) -> tuple[str, Limits]:
        # by provider, unless the model has limits of its own: workflows name any
        # models they like, and a service must not keep an entry for each
        if model not in config.per_model:
            model = ""
        found = cache.get((provider, model))
        if found is None and provider.startswith("mock:"):  # a rehearsal of NAME's
            key, limits = limits_for(provider.removeprefix("mock:"), model)
            found = cache[(provider, model)] = (f"mock:{key}", limits)
        if found is None:
            if provider in config.per_provider:
                base = over(defaults, config.per_provider[provider])
            elif provider == "mock":  # offline: limits only when asked for by name
                found = cache[(provider, model)] = (provider, Limits())
                return found
            else:
                base = defaults
            if model in config.per_model:
                found = (f"{provider}/{model}", over(base, config.per_model[model]))
            else:
                found = (provider, base)
            cache[(provider, model)] = found
        return found

    return limits_for


class VirtualClock:
    """Time that passes only when told to: limiter tests and simulations run in it.

    :meth:`run` drives coroutines until they finish, moving time straight to
    the next wake-up whenever every one of them is waiting.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (self._now + max(seconds, 0.0), self._count, future))
        await future

    async def run(self, *coroutines: Coroutine[Any, Any, Any]) -> list[Any]:
        tasks = [asyncio.ensure_future(c) for c in coroutines]
        while not all(t.done() for t in tasks):
            for _ in range(50):  # let every task that can move, move
                await asyncio.sleep(0)
            self._sleepers = [s for s in self._sleepers if not s[2].done()]
            heapq.heapify(self._sleepers)
            if not self._sleepers:
                if all(t.done() for t in tasks):
                    break
                raise RuntimeError("deadlock: every task waits and no clock is running")
            wake, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, wake)
            future.set_result(None)
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, other = heapq.heappop(self._sleepers)
                if not other.done():
                    other.set_result(None)
        return [t.result() for t in tasks]
