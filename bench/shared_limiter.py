"""The rate limiter shared through Redis, from four processes, beside the local one.

A private redis-server on 127.0.0.1 (a free port, no persistence) serves four
worker processes. Reported:

- throughput: acquires + releases per second from the four processes at once,
  with every limit set high enough never to wait (so what is measured is the
  script's round trip), beside the in-process limiter in one process, measured
  in the same run;
- accuracy over a real minute: requests_per_minute 600 and twice that demand
  (the four processes each ask 300 times, spread evenly over the minute, each
  call lasting 50 ms). How many were admitted in the minute (goal: at least
  95 % of 600), and the busiest sixty-second window over every admission of
  every process (goal: never more than 600).

Run with ``make bench`` or ``python bench/shared_limiter.py`` (``--seconds``
shortens the accuracy run; its goal scales with it).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aoe.policy.limits import Limits, LocalRateLimiter  # noqa: E402
from aoe.redis.client import connect  # noqa: E402
from aoe.redis.limits import RedisRateLimiter  # noqa: E402
from tests.redisserver import RedisServer  # noqa: E402

PROCESSES = 4
HIGH = Limits(10**9, 10**9, 10**9, 10**12, 10**6)


async def throughput_worker(url: str, seconds: float, prefix: str) -> dict[str, float]:
    limiter = RedisRateLimiter(connect(url), lambda p, m: ("bench", HIGH), prefix=prefix)
    count = 0
    began = time.perf_counter()
    deadline = began + seconds

    async def loop() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            permit = await limiter.acquire("bench", "model", 10)
            limiter.release(permit, 10)
            count += 1

    await asyncio.gather(*(loop() for _ in range(8)))  # 8 in flight per process
    elapsed = time.perf_counter() - began
    await asyncio.sleep(0.2)  # the last releases
    await limiter.aclose()
    return {"count": count, "elapsed": elapsed}


async def accuracy_worker(url: str, seconds: float, prefix: str, start: float) -> list[float]:
    rpm = 600
    limiter = RedisRateLimiter(
        connect(url), lambda p, m: ("bench", Limits(requests_per_minute=rpm)), prefix=prefix
    )
    count = int(2 * rpm * seconds / 60 / PROCESSES)
    spacing = seconds / count
    admitted: list[float] = []

    async def one(i: int) -> None:
        await asyncio.sleep(max(start + i * spacing - time.time(), 0.0))
        permit = await limiter.acquire("bench", "model", 1)
        admitted.append(time.time())
        await asyncio.sleep(0.05)
        limiter.release(permit, 1)

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    await asyncio.sleep(max(start + seconds - time.time(), 0.0))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await limiter.aclose()
    return admitted


async def local_throughput(seconds: float) -> float:
    limiter = LocalRateLimiter(lambda p, m: ("bench", HIGH))
    count = 0
    began = time.perf_counter()
    deadline = began + seconds

    async def loop() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            permit = await limiter.acquire("bench", "model", 10)
            limiter.release(permit, 10)
            count += 1
            if count % 100 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(loop() for _ in range(8)))
    return count / (time.perf_counter() - began)


def busiest(times: list[float], length: float) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + length) - i for i, t in enumerate(times)), default=0)


def workers(mode: str, url: str, seconds: float, prefix: str) -> list[object]:
    start = time.time() + 1.0  # every process starts its clock together
    command = [sys.executable, __file__, "--worker", mode, "--url", url]
    command += ["--seconds", str(seconds), "--prefix", prefix, "--start", str(start)]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(PROCESSES)
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=seconds + 120)
        if process.returncode != 0:
            raise SystemExit(f"a worker failed (exit {process.returncode})")
        results.append(json.loads(out))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="of the accuracy run")
    parser.add_argument("--throughput-seconds", type=float, default=5.0)
    parser.add_argument("--worker", choices=["throughput", "accuracy"])
    parser.add_argument("--url")
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--start", type=float, default=0.0)
    args = parser.parse_args()
    if args.worker == "throughput":
        print(json.dumps(asyncio.run(throughput_worker(args.url, args.seconds, args.prefix))))
        return
    if args.worker == "accuracy":
        admitted = asyncio.run(accuracy_worker(args.url, args.seconds, args.prefix, args.start))
        print(json.dumps(admitted))
        return

    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder))
        try:
            url = server.url
            local = asyncio.run(local_throughput(args.throughput_seconds))
            found = workers("throughput", url, args.throughput_seconds, "tp")
            total = sum(r["count"] for r in found)  # type: ignore[index]
            elapsed = max(r["elapsed"] for r in found)  # type: ignore[index]
            print(f"shared rate limiter: redis-server on 127.0.0.1, {PROCESSES} processes\n")
            print(
                f"  throughput: {total / elapsed:,.0f} acquires + releases per second from "
                f"{PROCESSES} processes ({total / elapsed / PROCESSES:,.0f} each); "
                f"in-process limiter, one process: {local:,.0f}/s "
                f"({total / elapsed / local:.3f}x)"
            )
            admitted = [t for times in workers("accuracy", url, args.seconds, "acc") for t in times]  # type: ignore[attr-defined]
        finally:
            server.stop()
    demand = int(2 * 600 * args.seconds / 60 / PROCESSES) * PROCESSES
    expected = min(600, demand)  # what the limit lets through in the run
    start = min(admitted) if admitted else 0.0
    within = sum(1 for t in admitted if t < start + args.seconds)
    peak = busiest(admitted, 60.0)
    print(
        f"  accuracy, {args.seconds:.0f} s at 600 requests per minute, {demand} asked for: "
        f"{within} admitted in the run ({within / expected:.1%} of what the limit allows, "
        f"goal >= 95 %); busiest 60 s window {peak} "
        f"(goal <= 600: {'met' if peak <= 600 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
