"""Limits, retries, budgets and fallbacks, end to end: the official SDKs over real
HTTP against the fake provider, judged by what the server received."""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aoe.config.prices import BUILTIN_PRICES
from aoe.config.settings import Settings, load_settings
from aoe.events import (
    AgentFallback,
    AgentFinished,
    AgentRetrying,
    AgentWaiting,
    AttemptFinished,
    Event,
    EventBus,
    RunFinished,
    RunStatus,
)
from aoe.format.workflow import Workflow
from aoe.service.runner import load
from aoe.service.wiring import engine_for
from tests.conftest import RunCli, WriteFile
from tests.fakeserver import Drop, Fail, FakeProvider, Received, Reply

SCALE = 30.0  # the limiter's minute lasts two real seconds


class ScaledClock:
    """Time that runs SCALE times faster than the wall: minutes of limits in seconds."""

    def __init__(self) -> None:
        self.origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.origin) * SCALE

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / SCALE)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def states(self) -> dict[str, str]:
        return {e.agent_id: str(e.state) for e in self.of(AgentFinished)}


def settings_with(env: dict[str, str], tmp_path: Path, **extra: str) -> Settings:
    return load_settings(environ={**env, **extra}, cwd=tmp_path)


class Admissions:
    """The engine's limiter, noting when (on its own clock) it admitted each call."""

    def __init__(self, limiter: Any) -> None:
        self.limiter = limiter
        self.at: list[float] = []

    async def acquire(self, *args: Any, **kwargs: Any) -> Any:
        permit = await self.limiter.acquire(*args, **kwargs)
        self.at.append(permit.admitted_at)
        return permit

    def release(self, permit: Any, used_tokens: int | None) -> None:
        self.limiter.release(permit, used_tokens)


async def run(
    workflow: Workflow,
    settings: Settings,
    *,
    clock: Any = None,
    budget: float | None = None,
    admissions: list[float] | None = None,
) -> tuple[RunStatus, Recorder]:
    recorder = Recorder()
    bus = EventBus()
    bus.subscribe(recorder)
    engine = engine_for(settings, clock=clock)
    if admissions is not None:
        noted = Admissions(engine.limiter)
        noted.at = admissions
        engine.limiter = noted
    try:
        status = await engine.run(workflow, {}, bus, budget=budget)
    finally:
        await engine.aclose()
    return status, recorder


def agents(count: int, **llm: Any) -> str:
    params = ", ".join(f"{k}: {v}" for k, v in {"model": "gpt-4o-mini", **llm}.items())
    return "".join(f"  a{i}: {{prompt: p{i}, llm: {{{params}}}}}\n" for i in range(count))


def busiest(times: list[float], weights: list[float], length: float) -> float:
    order = sorted(range(len(times)), key=times.__getitem__)
    times = [times[i] for i in order]
    weights = [weights[i] for i in order]
    best = 0.0
    for i, start in enumerate(times):
        end = bisect.bisect_left(times, start + length)
        best = max(best, sum(weights[i:end]))
    return best


# -- rate limits, at the server -----------------------------------------------------------


@pytest.mark.slow
async def test_the_server_sees_every_limit_held(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_with(
        provider_env,
        tmp_path,
        RATE_LIMIT_RPM="4",
        RATE_LIMIT_TPM="2000",
        RATE_LIMIT_CONCURRENT="2",
    )
    workflow = load(
        write(
            "version: 1\nname: limits\nmax_parallel_agents: 12\nagents:\n"
            + agents(12, max_tokens=300)
        )
    )
    fake.respond = lambda request: Reply(text="ok", output_tokens=10, delay=0.05)
    clock = ScaledClock()
    admitted: list[float] = []  # on the limiter's clock, scaled
    status, recorder = await run(workflow, settings, clock=clock, admissions=admitted)
    assert status is RunStatus.COMPLETED
    arrivals = [(r.arrived - fake.received[0].arrived) * SCALE for r in fake.received]
    assert len(arrivals) == 12
    # the limiter's own word, on the clock it keeps its windows by: admitted at
    # most 4 in any (scaled) minute
    assert len(admitted) == 12
    assert busiest(admitted, [1.0] * 12, 60.0) <= 4
    # the server's: the same, less the longest way from an admission to the
    # server; both on the monotonic clock, in real seconds. The i-th arrival
    # and the i-th admission, in order: never more than any call's own way, and
    # enough (k arrivals in a span of 60 - way mean k admissions in one of 60)
    first = sorted(r.arrived for r in fake.received)
    way = max(
        reached - (clock.origin + at / SCALE)
        for reached, at in zip(first, sorted(admitted), strict=True)
    )
    print(f"the longest way from admission to the server: {way * 1000:.0f} ms")
    assert busiest(arrivals, [1.0] * 12, 60.0 - max(way, 0.0) * SCALE) <= 4
    assert fake.max_in_flight <= 2
    assert recorder.of(AgentWaiting)  # waiting showed, and took time
    assert busiest(arrivals, [1.0] * 12, 3 * 60.0) <= 12


async def test_a_request_bigger_than_the_token_limit_fails_at_once(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_with(provider_env, tmp_path, RATE_LIMIT_TPM="500")
    workflow = load(write("version: 1\nname: big\nagents:\n" + agents(1, max_tokens=800)))
    status, recorder = await run(workflow, settings)
    assert status is RunStatus.FAILED
    [finished] = recorder.of(AgentFinished)
    assert "more than the 500 tokens per minute allowed for openai" in (finished.error or "")
    assert fake.received == []


# -- retries --------------------------------------------------------------------------------


async def test_429_with_retry_after_is_waited_out(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_with(provider_env, tmp_path)
    workflow = load(write("version: 1\nname: x\nagents:\n" + agents(1)))
    fake.script(Fail(429, "slow down", retry_after=0.4), Reply(text="fine"))
    status, recorder = await run(workflow, settings)
    assert status is RunStatus.COMPLETED
    first, second = fake.received
    assert first.finished is not None
    assert second.arrived - first.finished >= 0.4
    [retrying] = recorder.of(AgentRetrying)
    assert retrying.delay >= 0.4


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(Fail(500), id="500"),
        pytest.param(Fail(503), id="503"),
        pytest.param(Fail(529), id="529"),
        pytest.param(Fail(408), id="408"),
        pytest.param(Fail(429, retry_after_ms=50), id="429-ms"),
        pytest.param(Drop(), id="dropped"),
        pytest.param(Reply(text="late", delay=30.0), id="timeout"),
    ],
)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.slow
async def test_transient_failures_are_retried(
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
    failure: Any,
    provider: str,
) -> None:
    model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    settings = settings_with(provider_env, tmp_path)
    # a short timeout only where it is the failure: elsewhere a slow moment of a
    # loaded machine would time an attempt out, and make a retry of its own
    timeout = 1.0 if isinstance(failure, Reply) else 30.0
    workflow = load(
        write(
            f"version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    timeout: {timeout}\n"
            f"    llm: {{provider: {provider}, model: {model}}}\n"
        )
    )
    fake.script(failure, failure, Reply(text="third time"))
    status, recorder = await run(workflow, settings)
    assert status is RunStatus.COMPLETED
    assert len(fake.received) == 3  # ours: the SDK made no retries of its own
    assert [a.error is None for a in recorder.of(AttemptFinished)] == [False, False, True]
    assert len(recorder.of(AgentRetrying)) == 2


@pytest.mark.parametrize("status_code", [400, 401, 403, 404, 422])
async def test_client_errors_are_not_retried(
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Path,
    status_code: int,
) -> None:
    settings = settings_with(provider_env, tmp_path)
    workflow = load(write("version: 1\nname: x\nagents:\n" + agents(1)))
    fake.script(Fail(status_code, "no way"))
    status, recorder = await run(workflow, settings)
    assert status is RunStatus.FAILED
    assert len(fake.received) == 1
    [finished] = recorder.of(AgentFinished)
    assert f"HTTP {status_code}: no way" in (finished.error or "")


async def test_retries_used_up_on_429_end_rate_limited(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_with(provider_env, tmp_path, MAX_RETRIES="2")
    workflow = load(write("version: 1\nname: x\nagents:\n" + agents(1)))
    fake.respond = lambda request: Fail(429, "busy")
    status, recorder = await run(workflow, settings)
    assert status is RunStatus.FAILED
    assert recorder.states() == {"a0": "rate_limited"}
    assert len(fake.received) == 3


async def test_an_invalid_reply_is_retried_with_the_reason(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_with(provider_env, tmp_path)
    workflow = load(
        write(
            "version: 1\nname: x\nagents:\n  a:\n    prompt: give me a score\n"
            "    llm: {model: gpt-4o-mini}\n"
            "    output: {format: json, schema: {type: object, required: [score],"
            " properties: {score: {type: integer}}}}\n"
        )
    )
    fake.script(Reply(json={"score": "high"}), Reply(json={"score": 7}))
    status, recorder = await run(workflow, settings)
    assert status is RunStatus.COMPLETED
    assert recorder.of(AgentFinished)[0].output == {"score": 7}
    retry = fake.received[1].body["messages"]
    assert retry[-2] == {"role": "assistant", "content": '{"score": "high"}'}
    assert "'high' is not of type 'integer'" in retry[-1]["content"]
    assert retry[-1]["role"] == "user"
    first, second = recorder.of(AttemptFinished)
    assert first.error_kind == "OutputInvalid"
    assert first.cost > 0
    assert second.error is None


# -- fallbacks -------------------------------------------------------------------------------


async def test_fallbacks_take_over_and_the_results_say_who_answered(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_with(provider_env, tmp_path, MAX_RETRIES="1")
    workflow = load(
        write(
            "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n"
            "    llm: {model: gpt-4o}\n"
            "    fallbacks: [{model: gpt-4o-mini},\n"
            "                {provider: anthropic, model: claude-haiku-4-5}]\n"
        )
    )

    def respond(request: Received) -> Any:
        return Reply(text="from claude") if request.api == "anthropic" else Fail(503, "down")

    fake.respond = respond
    status, recorder = await run(workflow, settings)
    assert status is RunStatus.COMPLETED
    assert [(r.api, r.model) for r in fake.received] == [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-haiku-4-5"),
    ]
    assert [f.model for f in recorder.of(AgentFallback)] == ["gpt-4o-mini", "claude-haiku-4-5"]
    assert recorder.of(AgentFinished)[0].output == "from claude"


async def test_a_bad_request_does_not_fall_back(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_with(provider_env, tmp_path)
    workflow = load(
        write(
            "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    llm: {model: gpt-4o}\n"
            "    fallbacks: [{model: gpt-4o-mini}]\n"
        )
    )
    fake.respond = lambda request: Fail(400, "unsupported parameter")
    status, _ = await run(workflow, settings)
    assert status is RunStatus.FAILED
    assert len(fake.received) == 1


# -- budgets -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_budget_is_never_passed_with_twenty_calls_in_flight(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_with(
        provider_env, tmp_path, RATE_LIMIT_CONCURRENT="50", RATE_LIMIT_RPM="1000"
    )
    workflow = load(
        write(
            "version: 1\nname: spend\nmax_parallel_agents: 20\ncost_budget: 0.15\n"
            "allow_partial_completion: true\nagents:\n" + agents(60, model="gpt-4o", max_tokens=500)
        )
    )
    usage: list[tuple[int, int]] = []
    # the first twenty calls are answered once all twenty are at the server: twenty
    # in flight at once, however slowly this machine sends them (a fixed delay
    # was not always enough: under load the first answer went out before the
    # twentieth call came, and 19 were in flight)
    lock = threading.Lock()
    all_in = threading.Event()

    def respond(request: Received) -> Reply:
        # a realistic bill: no more prompt tokens than prompt bytes, output within max_tokens
        with lock:
            usage.append((20, 450))
            if len(usage) == 20:
                all_in.set()
            first_wave = len(usage) <= 20
        if first_wave:
            all_in.wait(60)
        return Reply(text="x" * 1800, input_tokens=20, output_tokens=450)

    fake.respond = respond
    status, recorder = await run(workflow, settings)
    assert status is RunStatus.BUDGET_EXCEEDED
    assert fake.max_in_flight == 20
    price = BUILTIN_PRICES["gpt-4o"]
    spent_at_server = sum(price.cost(i, o) for i, o in usage)
    assert spent_at_server <= 0.15
    assert spent_at_server > 0.12  # and the budget was put to use
    [finished] = recorder.of(RunFinished)
    assert finished.cost == pytest.approx(spent_at_server)
    refused = [e for e in recorder.of(AgentFinished) if str(e.state) == "budget_exceeded"]
    assert refused
    assert "is left of the run's cost_budget $0.1500" in (refused[0].error or "")
    assert "no call was made" in (refused[0].error or "")


async def test_an_agents_cost_limit_covers_all_its_attempts(
    write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], tmp_path: Path
) -> None:
    settings = settings_with(provider_env, tmp_path, MAX_RETRIES="10")
    workflow = load(
        write(
            "version: 1\nname: x\nagents:\n  a:\n    prompt: hi\n    cost_limit: 0.02\n"
            "    llm: {model: gpt-4o, max_tokens: 500}\n"
            "    output: {format: json, schema: {type: object, required: [ok]}}\n"
        )
    )
    fake.respond = lambda request: Reply(text="not json", input_tokens=100, output_tokens=400)
    status, recorder = await run(workflow, settings)
    assert status is RunStatus.BUDGET_EXCEEDED
    [finished] = recorder.of(AgentFinished)
    assert str(finished.state) == "budget_exceeded"
    assert "agent a's cost_limit $0.0200" in (finished.error or "")
    assert finished.cost <= 0.02
    assert len(fake.received) < 11  # stopped by the limit, not by the retries


def test_budget_flag_and_exit_code_3(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    path = write("version: 1\nname: x\nagents:\n" + agents(3, model="gpt-4o", max_tokens=2000))
    result = cli("run", path, "--budget", "0.03", "--output", "-", env=provider_env)
    assert result.exit_code == 3
    assert '"status": "budget_exceeded"' in result.stdout
    assert '"cost_budget_usd": 0.03' in result.stdout


async def test_a_mock_run_rehearses_the_named_providers_limits_when_asked(
    write: WriteFile, provider_env: dict[str, str], tmp_path: Path
) -> None:
    """issue 16: `--mock` ignored the providers' limits, so `aoe plan`'s "at
    least 1 min" could not be rehearsed. With ``mock_limits`` a mock run is held
    to openai's limits, in windows of its own ("mock:openai": a rehearsal uses
    none of the real quota); without, it is not held at all."""
    settings = settings_with(provider_env, tmp_path, RATE_LIMIT_RPM="2")
    workflow = load(write("version: 1\nname: rehearsed\nagents:\n" + agents(4)))
    for rehearsed in (False, True):
        recorder = Recorder()
        bus = EventBus()
        bus.subscribe(recorder)
        admitted: list[float] = []
        engine = engine_for(settings, clock=ScaledClock())
        noted = Admissions(engine.limiter)
        noted.at = admitted
        engine.limiter = noted
        try:
            status = await engine.run(workflow, {}, bus, mock=True, mock_limits=rehearsed)
        finally:
            await engine.aclose()
        assert status is RunStatus.COMPLETED
        waits = recorder.of(AgentWaiting)
        if not rehearsed:
            assert waits == []
            continue
        assert {w.provider for w in waits} == {"mock:openai"}
        assert any("mock:openai" in (w.limit or "") for w in waits)
        assert busiest(admitted, [1.0] * 4, 60.0) <= 2  # openai's 2 a minute, held
        assert max(admitted) - min(admitted) >= 60.0  # the 4 took over a (scaled) minute
