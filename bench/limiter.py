"""The rate limiter: accuracy over a real minute, and its cost per acquire.

Accuracy: requests_per_minute 600, and twice that demand (1,200 requests
spread evenly over one real minute, each call lasting 50 ms). Reported: how
many were admitted within that minute (goal: at least 95 % of 600), and the
busiest sixty-second window over every admission (goal: never more than 600).

Cost: acquire + release of a request that does not have to wait, with all
five limits configured, against an ``asyncio.Semaphore`` acquire + release
measured in the same run.

Run with ``python bench/limiter.py`` (``--seconds`` for a shorter check).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import time

from aoe.policy.limits import Limits, LocalRateLimiter


async def accuracy(seconds: float) -> None:
    rpm = 600
    limiter = LocalRateLimiter(lambda p, m: ("bench", Limits(requests_per_minute=rpm)))
    count = int(2 * rpm * seconds / 60)
    spacing = seconds / count
    start = time.monotonic()
    admitted: list[float] = []

    async def one(i: int) -> None:
        await asyncio.sleep(max(start + i * spacing - time.monotonic(), 0.0))
        permit = await limiter.acquire("bench", "model", 1)
        admitted.append(time.monotonic() - start)
        await asyncio.sleep(0.05)
        limiter.release(permit, 1)

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    await asyncio.sleep(seconds + 0.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    admitted.sort()
    within = sum(1 for t in admitted if t < seconds)
    # a sliding window lets a full minute's allowance start at once, then keeps the pace
    allowed = min(count, rpm * max(1.0, seconds / 60))
    busiest = max(
        (bisect.bisect_left(admitted, t + 60.0) - i for i, t in enumerate(admitted)), default=0
    )
    print(f"accuracy: {count:,} requests over {seconds:g} s against {rpm} per minute")
    print(
        f"  admitted within the {seconds:g} s: {within:,} of {allowed:,.0f} allowed "
        f"({within / allowed:.1%}; goal >= 95 %: {'met' if within >= 0.95 * allowed else 'MISSED'})"
    )
    print(
        f"  busiest 60 s window: {busiest} (limit {rpm}; over-limit windows: "
        f"{'none' if busiest <= rpm else 'SOME'})"
    )


async def cost(rounds: int) -> None:
    generous = Limits(10**9, 10**9, 10**9, 10**12, 10**9)
    limiter = LocalRateLimiter(lambda p, m: ("bench", generous))
    semaphore = asyncio.Semaphore(10**9)

    started = time.perf_counter()
    for _ in range(rounds):
        async with semaphore:
            pass
    baseline = (time.perf_counter() - started) / rounds

    started = time.perf_counter()
    for _ in range(rounds):
        permit = await limiter.acquire("bench", "model", 500)
        limiter.release(permit, 400)
    ours = (time.perf_counter() - started) / rounds
    print(
        f"cost per acquire + release, no wait, five limits: {ours * 1e6:.1f} us "
        f"(asyncio.Semaphore: {baseline * 1e6:.2f} us; {ours / baseline:.1f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=50_000)
    args = parser.parse_args()
    asyncio.run(accuracy(args.seconds))
    asyncio.run(cost(args.rounds))


if __name__ == "__main__":
    main()
