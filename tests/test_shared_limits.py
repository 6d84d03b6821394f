"""The rate limits shared through a real Redis: one script, every window, leases."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from aoe.config.settings import load_settings
from aoe.policy.costs import BudgetExceeded
from aoe.policy.limits import Limits, RequestTooLarge, Waiting
from aoe.redis.client import connect
from aoe.redis.limits import RedisRateLimiter
from aoe.redis.spend import SharedSpend
from tests.conftest import RunCli, WriteFile, child_env, read_lines, wait_for
from tests.fakeserver import FakeProvider, Received, Reply
from tests.redisserver import RedisServer
from tests.test_resilience import busiest

PREFIX = uuid.uuid4().hex[:12]


@pytest.fixture(autouse=True)
def _fresh_prefix() -> None:
    global PREFIX
    PREFIX = uuid.uuid4().hex[:12]


def limiter(
    url: str, limits: Limits, *, lease: float = 30.0, on_unavailable: str = "fail_closed"
) -> RedisRateLimiter:
    """A limiter on keys of this test alone (a shared Redis holds other tests' too,
    and keeps a window's keys for a while after them)."""
    prefix = f"aoe-test:{PREFIX}"
    return RedisRateLimiter(
        connect(url),
        lambda provider, model: (provider, limits),
        prefix=prefix,
        lease=lease,
        on_unavailable=on_unavailable,
    )


@pytest.mark.slow
async def test_requests_per_minute_are_shared_by_limiters(redis_url: str) -> None:
    one = limiter(redis_url, Limits(requests_per_minute=5))
    two = limiter(redis_url, Limits(requests_per_minute=5))
    try:
        for _ in range(3):
            await one.acquire("openai", "m", 10)
        for _ in range(2):
            await two.acquire("openai", "m", 10)
        waited: list[Waiting] = []
        sixth = asyncio.ensure_future(two.acquire("openai", "m", 10, waited.append))
        done, _ = await asyncio.wait({sixth}, timeout=0.5)
        assert not done  # the minute's five are taken, by both
        [why] = waited
        assert why.limit == "the rate limits shared by all processes"
        assert why.seconds is not None
        assert 0 < why.seconds <= 60
        sixth.cancel()
    finally:
        await one.aclose()
        await two.aclose()


async def test_concurrency_slots_are_shared_and_freed(redis_url: str) -> None:
    one = limiter(redis_url, Limits(concurrent_requests=2))
    two = limiter(redis_url, Limits(concurrent_requests=2))
    try:
        first = await one.acquire("openai", "m", 1)
        await two.acquire("openai", "m", 1)
        third = asyncio.ensure_future(two.acquire("openai", "m", 1))
        done, _ = await asyncio.wait({third}, timeout=0.3)
        assert not done
        one.release(first, 1)
        await asyncio.wait_for(third, 5)  # a slot freed in Redis lets it in
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.slow
async def test_a_dead_holder_frees_its_slots_when_its_lease_ends(
    redis_url: str,
) -> None:
    dead = limiter(redis_url, Limits(concurrent_requests=1), lease=1.0)
    alive = limiter(redis_url, Limits(concurrent_requests=1), lease=1.0)
    try:
        await dead.acquire("openai", "m", 1)
        assert dead._renewer is not None
        dead._renewer.cancel()  # the process died: nobody renews its lease
        waited: list[Waiting] = []
        await asyncio.wait_for(alive.acquire("openai", "m", 1, waited.append), 10)
        # the slot was taken, until the lease ran out
        assert waited == [Waiting("1 call at once, all processes")]
    finally:
        await dead.aclose()
        await alive.aclose()


@pytest.mark.slow
async def test_a_renewed_lease_holds_its_slot(redis_url: str) -> None:
    holder = limiter(redis_url, Limits(concurrent_requests=1), lease=0.6)
    other = limiter(redis_url, Limits(concurrent_requests=1), lease=0.6)
    try:
        permit = await holder.acquire("openai", "m", 1)
        waiting = asyncio.ensure_future(other.acquire("openai", "m", 1))
        done, _ = await asyncio.wait({waiting}, timeout=1.5)  # > 2 leases: renewed
        assert not done
        holder.release(permit, 1)
        await asyncio.wait_for(waiting, 5)
    finally:
        await holder.aclose()
        await other.aclose()


async def test_tokens_are_corrected_with_the_usage(redis_url: str) -> None:
    one = limiter(redis_url, Limits(tokens_per_minute=1000))
    try:
        permit = await one.acquire("openai", "m", 900)  # reserved: the worst case
        one.release(permit, 100)  # used: far less
        for _ in range(50):
            if b"100" in (await one.client.get(f"{one.prefix}:{{openai}}:tpm:total") or b""):
                break
            await asyncio.sleep(0.01)
        await asyncio.wait_for(one.acquire("openai", "m", 900), 2)  # fits again
    finally:
        await one.aclose()


@pytest.mark.redis(own=True)  # stops it
@pytest.mark.slow
async def test_fail_closed_waits_for_redis_and_says_so(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    one = limiter(redis_server.url, Limits(requests_per_minute=100))
    try:
        await one.acquire("openai", "m", 1)
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="aoe.limits"):
            waiting = asyncio.ensure_future(one.acquire("openai", "m", 1))
            done, _ = await asyncio.wait({waiting}, timeout=1.5)
            assert not done  # no limit is passed: it waits
            assert "Redis is unreachable" in caplog.text
            assert "fail_closed" in caplog.text
            redis_server.start()
            await asyncio.wait_for(waiting, 10)
            assert "answers again" in caplog.text
        assert one.outages == 1
    finally:
        await one.aclose()


@pytest.mark.redis(own=True)  # stops it
async def test_local_falls_back_to_this_process_limits(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    one = limiter(redis_server.url, Limits(requests_per_minute=2), on_unavailable="local")
    try:
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="aoe.limits"):
            permit = await asyncio.wait_for(one.acquire("openai", "m", 1), 10)
            one.release(permit, 1)
            await asyncio.wait_for(one.acquire("openai", "m", 1), 10)
            third = asyncio.ensure_future(one.acquire("openai", "m", 1))
            done, _ = await asyncio.wait({third}, timeout=0.3)
            assert not done  # the local windows hold the limit meanwhile
            third.cancel()
        assert "falling back to this process's own rate limits" in caplog.text
    finally:
        await one.aclose()


SCALE = 15.0
"""The shared windows of the processes below run this many times faster: a minute
is 4 s, so the minute's limit is met and waited out in seconds, not minutes."""

SCALED_AOE = (
    "import aoe.redis.limits as s; "
    f"s.WINDOWS = tuple(w / {SCALE!r} for w in s.WINDOWS); "
    f"s.TOKEN_WINDOW /= {SCALE!r}; "
    "from aoe.cli.main import main; main()"
)


@pytest.mark.slow
@pytest.mark.subprocess
def test_four_processes_hold_every_limit_at_the_server(
    redis_server: RedisServer,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Four `aoe run` at once, one Redis: what the provider sees keeps every limit.
    The second minute's requests wait for the first minute to pass (a minute of
    SCALE times shorter windows)."""
    minute = 60.0 / SCALE
    fake.respond = lambda request: Reply(text="ok", input_tokens=20, output_tokens=10, delay=0.05)
    agents = "".join(f"  a{i}: {{prompt: 'p{i}'}}\n" for i in range(6))
    path = write(
        "version: 1\nname: shared\nmax_parallel_agents: 6\n"
        "defaults: {llm: {model: gpt-4o-mini, max_tokens: 30}}\nagents:\n" + agents
    )
    env = child_env(
        provider_env,
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(redis_server.port),
        RATE_LIMIT_RPM="12",
        RATE_LIMIT_CONCURRENT="2",
        RATE_LIMIT_TPM="100000",
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCALED_AOE, "run", str(path), "-q", "--no-cache"],
            cwd=tmp_path,
            env={**env, "AOE_STATE_DIR": str(tmp_path / f"state{n}")},
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr
    # when each call was admitted, by Redis's clock: the hour's window keeps them all
    client = redis.Redis(port=redis_server.port)
    try:
        entries: Any = client.zrange("aoe:{openai}:rph", 0, -1, withscores=True)
        admitted = [float(score) for _, score in entries]
    finally:
        client.close()
    assert len(admitted) == 24
    assert busiest(admitted, [1.0] * 24, minute) <= 12  # every minute's window
    assert max(admitted) - min(admitted) >= minute  # the limit was met, and waited out
    # at the server: no call came before its admission (Redis's clock is this
    # machine's wall clock), so the k-th arrival is never before the k-th admission
    arrivals = sorted(r.wall for r in fake.received)
    assert len(arrivals) == 24
    assert all(a >= s for a, s in zip(arrivals, sorted(admitted), strict=True))
    assert fake.max_in_flight <= 2


# -- the shared daily budgets -------------------------------------------------------------


def spend(url: str, daily: float | None, **per_workflow: float) -> SharedSpend:
    return SharedSpend(
        connect(url), daily=daily, per_workflow=per_workflow, prefix=f"aoe-test:{PREFIX}"
    )


async def test_daily_budgets_are_reserved_and_settled_across_processes(redis_url: str) -> None:
    one, two = spend(redis_url, 0.01, brief=0.004), spend(redis_url, 0.01, brief=0.004)
    try:
        first = await one.reserve("other", 0.006)
        with pytest.raises(BudgetExceeded, match=r"daily budget of \$0\.0100"):
            await two.reserve("other", 0.006)  # 0.006 reserved elsewhere: it would pass
        one.settle(first, 0.006, 0.002)  # the call cost less than its worst case
        await one.aclose()  # its settlements are written first
        one = spend(redis_url, 0.01, brief=0.004)
        spent, reserved = await two.today()
        assert spent == pytest.approx(0.002)
        assert reserved == pytest.approx(0.0)
        second = await two.reserve("other", 0.006)  # fits now: 0.002 spent
        two.settle(second, 0.006, 0.001)
        await asyncio.gather(*two._pending)
        with pytest.raises(BudgetExceeded, match="brief's daily budget"):
            await one.reserve("brief", 0.005)  # the workflow's own cap
        assert await one.reserve("brief", 0.001) is not None
        assert await one.reserve("unbudgeted", 0.0) is not None  # the day's cap applies
    finally:
        await one.aclose()
        await two.aclose()


def test_a_daily_budget_needs_redis(
    cli: RunCli, write: WriteFile, provider_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "aoe.yaml"
    config.write_text("cost_tracking: {daily_budget: 1.0}\n")
    path = write("version: 1\nname: w\nagents:\n  a: {prompt: hi, llm: {model: gpt-4o-mini}}\n")
    result = cli("run", path, "--config", config, env=provider_env)
    assert result.exit_code == 2
    assert "REDIS_HOST" in result.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_four_processes_never_pass_the_shared_daily_budget(
    redis_server: RedisServer,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # usage a provider could bill: no more prompt tokens than the prompt has
    fake.respond = lambda request: Reply(text="ok", input_tokens=4, output_tokens=500)
    price = load_settings(environ={}).prices.lookup("gpt-4o-mini")
    assert price is not None
    per_call = price.cost(4, 500)
    cap = 20.5 * per_call  # room for 20 calls of the 4 x 8 asked for
    config = tmp_path / "aoe.yaml"
    config.write_text(
        f"cost_tracking: {{daily_budget: {cap!r}}}\nredis: {{key_prefix: {PREFIX}}}\n"
    )
    agents = "".join(f"  a{i}: {{prompt: 'p{i} {{{{ inputs.n }}}}'}}\n" for i in range(8))
    path = write(
        "version: 1\nname: capped\nmax_parallel_agents: 8\ninputs: {n: {type: string}}\n"
        "defaults: {llm: {model: gpt-4o-mini, max_tokens: 500}}\nagents:\n" + agents
    )
    env = child_env(
        provider_env,
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(redis_server.port),
        RATE_LIMIT_RPM="10000",
        RATE_LIMIT_CONCURRENT="100",
    )
    command = [sys.executable, "-m", "aoe", "run", str(path), "-q", "--no-cache"]
    command += ["--config", str(config)]
    processes = [
        subprocess.Popen(
            [*command, "-i", f"n={n}"],
            cwd=tmp_path,
            env={**env, "AOE_STATE_DIR": str(tmp_path / f"state{n}")},
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    codes = []
    for process in processes:
        _, stderr = process.communicate(timeout=180)
        assert "Traceback" not in stderr
        codes.append(process.returncode)
    billed = len(fake.received) * per_call  # what the provider would charge
    assert billed <= cap
    assert len(fake.received) >= 16  # the cap was used, not refused wholesale
    assert 3 in codes  # and some run was stopped by it


@pytest.mark.redis(own=True)  # stops it
@pytest.mark.slow
@pytest.mark.subprocess
def test_redis_stopped_mid_run_waits_then_finishes_losing_nothing(
    redis_server: RedisServer,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """fail_closed, end to end: `aoe run` waits while Redis is down, says so, and
    finishes once it is back; every agent called once."""
    stopped = threading.Event()

    def respond(request: Received) -> Reply:
        if request.prompt.startswith("a0") and not stopped.is_set():
            redis_server.stop()  # Redis goes away while the run is under way
            stopped.set()
        return Reply(text="ok")

    fake.respond = respond
    agents = "".join(
        f"  a{i}: {{prompt: 'a{i}'{', depends_on: a' + str(i - 1) if i else ''}}}\n"
        for i in range(4)
    )
    path = write(
        "version: 1\nname: outage\ndefaults: {llm: {model: gpt-4o-mini}}\nagents:\n" + agents
    )
    env = child_env(
        provider_env,
        AOE_STATE_DIR=str(tmp_path / "state"),
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=str(redis_server.port),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "aoe", "run", str(path), "-q", "--no-cache"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert stopped.wait(60)
    lines = read_lines(process)
    wait_for(lambda: any("Redis is unreachable" in line for line in lines))
    assert [r.prompt for r in fake.received] == ["a0"]  # the run waits for Redis
    redis_server.start()
    process.wait(timeout=120)
    stderr = "".join(lines.done())
    assert process.returncode == 0, stderr
    assert "Redis is unreachable" in stderr
    assert "fail_closed" in stderr
    assert "answers again" in stderr
    assert "Traceback" not in stderr
    assert [r.prompt for r in fake.received] == ["a0", "a1", "a2", "a3"]  # each once


async def test_a_request_over_the_token_limit_fails_at_once(redis_url: str) -> None:
    one = limiter(redis_url, Limits(tokens_per_minute=100))
    try:
        with pytest.raises(RequestTooLarge, match="more than the 100 tokens per minute"):
            await asyncio.wait_for(one.acquire("openai", "m", 101), 2)
    finally:
        await one.aclose()
