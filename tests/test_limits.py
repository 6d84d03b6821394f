"""The rate limiter in virtual time: every sliding window holds, and nothing is wasted."""

from __future__ import annotations

import asyncio
import bisect
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoe.config.settings import load_settings
from aoe.policy.limits import (
    DAY,
    HOUR,
    MINUTE,
    Limits,
    LocalRateLimiter,
    RequestTooLarge,
    VirtualClock,
    Waiting,
    limits_for_config,
)


class Call(NamedTuple):
    arrives: float
    tokens: int  # reserved
    used: int  # reported afterwards (at most the reservation)
    lasts: float


class Admitted(NamedTuple):
    at: float
    call: Call


def simulate(limits: Limits, calls: list[Call]) -> list[Admitted]:
    clock = VirtualClock()
    limiter = LocalRateLimiter(lambda provider, model: ("p", limits), clock)
    admitted: list[Admitted] = []

    async def one(call: Call) -> None:
        await clock.sleep(call.arrives)
        permit = await limiter.acquire("p", "m", call.tokens)
        admitted.append(Admitted(clock.now(), call))
        await clock.sleep(call.lasts)
        limiter.release(permit, call.used)

    async def main() -> None:
        await clock.run(*(one(c) for c in calls))

    asyncio.run(main())
    return sorted(admitted)


def busiest(times: list[float], weights: list[float], length: float) -> float:
    """The most weight that starts in any window [s, s + length)."""
    best = 0.0
    for i, start in enumerate(times):
        end = bisect.bisect_left(times, start + length)
        best = max(best, sum(weights[i:end]))
    return best


def in_flight_peak(admitted: list[Admitted]) -> int:
    events = sorted(
        [(a.at, 1) for a in admitted] + [(a.at + a.call.lasts, -1) for a in admitted],
        key=lambda e: (e[0], e[1]),
    )
    peak = current = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


calls = st.lists(
    st.builds(
        lambda arrives, tokens, share, lasts: Call(arrives, tokens, int(tokens * share), lasts),
        st.floats(0, 300),
        st.integers(1, 400),
        st.floats(0, 1),
        st.floats(0, 30),
    ),
    min_size=1,
    max_size=60,
)
limit_sets = st.builds(
    Limits,
    st.none() | st.integers(1, 8),
    st.none() | st.integers(5, 40),
    st.none() | st.integers(20, 60),
    st.none() | st.integers(400, 1500),
    st.none() | st.integers(1, 4),
)


@given(limit_sets, calls)
@settings(max_examples=300, deadline=None)
@pytest.mark.slow
def test_no_window_ever_holds_more_than_its_limit(limits: Limits, requests: list[Call]) -> None:
    admitted = simulate(limits, requests)
    assert len(admitted) == len(requests)  # everyone gets in, in the end
    times = [a.at for a in admitted]
    ones = [1.0] * len(times)
    for length, limit in (
        (MINUTE, limits.requests_per_minute),
        (HOUR, limits.requests_per_hour),
        (DAY, limits.requests_per_day),
    ):
        if limit is not None:
            assert busiest(times, ones, length) <= limit
    if limits.tokens_per_minute is not None:
        used = [float(a.call.used) for a in admitted]
        assert busiest(times, used, MINUTE) <= limits.tokens_per_minute
    if limits.concurrent_requests is not None:
        assert in_flight_peak(admitted) <= limits.concurrent_requests
    for a in admitted:
        assert a.at >= a.call.arrives


@given(st.integers(2, 30), st.integers(3, 10))
@settings(max_examples=50, deadline=None)
@pytest.mark.slow
def test_throughput_reaches_the_limit_when_demand_exceeds_it(rpm: int, minutes: int) -> None:
    # twice the allowed rate, spread evenly over the horizon
    count = 2 * rpm * minutes
    spacing = MINUTE / (2 * rpm)
    admitted = simulate(
        Limits(requests_per_minute=rpm), [Call(i * spacing, 1, 1, 0.5) for i in range(count)]
    )
    horizon = minutes * MINUTE
    within = sum(1 for a in admitted if a.at < horizon)
    assert within >= 0.95 * rpm * minutes


def test_tokens_limit_throughput_with_corrections() -> None:
    # each call reserves 1,000 tokens and uses 250: once corrected, the window fills
    # with what was used, and only the one reservation in flight is headroom
    calls = [Call(i * 0.5, 1000, 250, 1.0) for i in range(600)]
    admitted = simulate(Limits(tokens_per_minute=10_000), calls)
    within = [a for a in admitted if a.at < 5 * MINUTE]
    assert sum(a.call.used for a in within) >= 0.85 * 10_000 * 5


def test_large_requests_are_not_starved() -> None:
    # a big request arrives behind a stream of small ones: it is admitted in order
    small = [Call(i * 0.1, 50, 50, 0.0) for i in range(400)]
    big = Call(1.0, 900, 900, 0.0)
    admitted = simulate(Limits(tokens_per_minute=1000), [*small, big])
    order = [a.call for a in admitted]
    assert order.index(big) <= 11  # it keeps its place in the queue


def test_a_request_bigger_than_the_token_limit_fails_at_once() -> None:
    limiter = LocalRateLimiter(lambda p, m: ("openai", Limits(tokens_per_minute=100)))

    async def main() -> None:
        with pytest.raises(RequestTooLarge, match="more than the 100 tokens per minute"):
            await limiter.acquire("openai", "gpt-4o", 101)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("limits", "said"),
    [
        (Limits(requests_per_minute=2), Waiting("2 requests per minute", 50.0)),
        (Limits(requests_per_hour=1), Waiting("1 request per hour", 3590.0)),
        (Limits(tokens_per_minute=100), Waiting("100 tokens per minute", 50.0)),
        (Limits(concurrent_requests=1), Waiting("1 call at once")),
    ],
)
def test_a_wait_says_which_limit_holds_it_and_for_how_long(limits: Limits, said: Waiting) -> None:
    """Issue 16: a rate-limit wait said neither which limit nor for how long."""
    clock = VirtualClock()
    limiter = LocalRateLimiter(lambda p, m: ("openai", limits), clock)
    told: list[Waiting] = []

    async def main() -> None:
        first = await limiter.acquire("openai", "m", 60)
        if limits.concurrent_requests is None:
            limiter.release(first, 60)
            await clock.sleep(10)  # the window's first entry leaves it 10 s later
            if limits.requests_per_minute == 2:
                await limiter.acquire("openai", "m", 60)
        task = asyncio.ensure_future(limiter.acquire("openai", "m", 60, told.append))
        await clock.sleep(0.1)
        task.cancel()

    async def run() -> None:
        await clock.run(main())

    asyncio.run(run())
    assert told == [said]


def test_cancelled_waiters_leave_the_queue() -> None:
    clock = VirtualClock()
    limiter = LocalRateLimiter(lambda p, m: ("p", Limits(requests_per_minute=1)), clock)
    admitted: list[str] = []

    async def take(name: str, cancel_after: float | None = None) -> None:
        task = asyncio.ensure_future(limiter.acquire("p", "m", 1))
        if cancel_after is not None:
            await clock.sleep(cancel_after)
            task.cancel()
            return
        await task
        admitted.append(name)

    async def main() -> None:
        await clock.run(take("first"), take("gone", cancel_after=5), take("third"))

    asyncio.run(main())
    assert admitted == ["first", "third"]


def test_limits_from_the_config(tmp_path: object) -> None:
    import pathlib

    folder = pathlib.Path(str(tmp_path))
    (folder / "c.yaml").write_text(
        "rate_limiting:\n  requests_per_minute: 100\n  tokens_per_minute: 5000\n"
        "  per_provider:\n    anthropic: {requests_per_minute: 50, concurrent_requests: null}\n"
        "  per_model:\n    gpt-4o: {tokens_per_minute: 300}\n"
    )
    settings = load_settings(str(folder / "c.yaml"), environ={}, cwd=folder)
    limits_for = limits_for_config(settings.config.rate_limiting)
    key, openai = limits_for("openai", "gpt-4o-mini")
    assert key == "openai"
    assert (openai.requests_per_minute, openai.tokens_per_minute, openai.concurrent_requests) == (
        100,
        5000,
        10,
    )
    key, anthropic = limits_for("anthropic", "claude-haiku-4-5")
    assert key == "anthropic"
    assert (anthropic.requests_per_minute, anthropic.concurrent_requests) == (50, None)
    key, model = limits_for("openai", "gpt-4o")
    assert key == "openai/gpt-4o"
    assert (model.requests_per_minute, model.tokens_per_minute) == (100, 300)
    assert limits_for("mock", "gpt-4o")[1].unlimited


def test_models_without_limits_of_their_own_cost_nothing_to_remember(tmp_path: object) -> None:
    """Workflows name any model they like: a service must not keep an entry for
    every model name it was ever sent."""
    import tracemalloc

    environ = {"RATE_LIMIT_RPM": "100"}
    settings = load_settings(environ=environ, cwd=tmp_path)  # type: ignore[arg-type]
    limits_for = limits_for_config(settings.config.rate_limiting)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keys = {limits_for("openai", f"model-{i}")[0] for i in range(50_000)}
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert keys == {"openai"}
    assert grown < 1_000_000, f"{grown:,} bytes kept for 50,000 model names"
