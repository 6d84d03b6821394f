"""A unit of work, an agent or one item of a ``foreach`` agent, from its prompt
to its end: the prompt rendered once, then the agent's model and each
fallback in turn, each with a full cycle of retries (tenacity).

A model falls back when it gave up in a way another model may not: rate
limited, unavailable, out of time, or too large for its limits. A rejected
request or a bad reply ends the unit; so does a budget. What the unit came to
is handed back to the scheduler as an :class:`Ended`: what that means for the
agent and the rest of the run is the scheduler's to decide.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from aoe.config.models import RetryPolicySection
from aoe.engine.agents import AgentRun, Unit
from aoe.engine.attempt import Attempts
from aoe.engine.context import reason
from aoe.errors import AttemptTimeout, ProviderUnavailable, RateLimited, RunError
from aoe.events import AgentFallback, AgentRetrying, AgentState, PromptRendered
from aoe.format.workflow import Agent, LLMConfig, RetryOverrides
from aoe.policy.costs import BudgetExceeded, Ledger
from aoe.policy.limits import RequestTooLarge
from aoe.policy.retry import RetryPolicy, delay, policy_for, retryable
from aoe.types import Message

_JSON_INSTRUCTION = "Answer with one JSON value and nothing else: no prose, no code fences."


class Ended(NamedTuple):
    """What a unit came to: its output, or why it did not complete."""

    state: AgentState  # completed, or the final state it failed in
    output: Any = None  # completed: its output
    error: str | None = None  # failed: why
    run_budget: bool = False  # it stopped at the run's budget, not at a cost_limit


class Units:
    """Runs one run's units: prompts, models, fallbacks and retries; the attempts
    themselves are :class:`Attempts`'. ``sleep`` waits between retries (a test's
    clock may make it instant); ``rng`` draws their jitter."""

    def __init__(
        self,
        attempts: Attempts,
        retry_policy: RetryPolicySection,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.attempts = attempts
        self.run_id = attempts.run_id
        self.bus = attempts.bus
        self.lane = attempts.lane
        self.retry_policy = retry_policy  # the engine's; an agent's retry keys override it
        self.rng = rng
        self.sleep = sleep
        self.policies: dict[RetryOverrides, RetryPolicy] = {}

    async def run(self, record: AgentRun, item: int | None, context: Mapping[str, Any]) -> Ended:
        """The unit of ``record`` (``item`` of a ``foreach`` agent), its prompt
        rendered with ``context``."""
        agent = record.agent
        try:
            messages = await self.messages(agent, context)
        except Exception as e:
            return Ended(AgentState.FAILED, error=f"its prompt could not be rendered: {reason(e)}")
        self.bus.emit(
            PromptRendered(
                run_id=self.run_id,
                at=time.time(),
                agent_id=agent.id,
                item=item,
                system=messages[0].content if len(messages) > 1 else None,
                prompt=messages[-1].content,
            )
        )
        ledger = record.ledger
        if item is not None:  # each item has a cost_limit of its own
            ledger = Ledger(record.ledger.limit, f"agent {agent.id}'s cost_limit for item {item}")
            ledger.spent = record.item_spent.get(item, 0.0)
        unit = Unit(record, item, ledger)
        error: RunError | None = None
        for index, llm in enumerate(agent.models):
            if index and record.state.final:  # another item ended the agent: no fallback
                break
            if index:
                assert error is not None
                self.bus.emit(
                    AgentFallback(
                        run_id=self.run_id,
                        at=time.time(),
                        agent_id=agent.id,
                        item=item,
                        provider=llm.provider,
                        model=llm.model,
                        error=error.message,
                    )
                )
            try:
                output = await self.cycle(unit, llm, messages)
            except BudgetExceeded as e:
                return Ended(AgentState.BUDGET_EXCEEDED, error=e.message, run_budget=e.run_budget)
            except RunError as e:
                error = e
                if not _falls_back(e):
                    break
                continue
            return Ended(AgentState.COMPLETED, output)
        assert error is not None
        state = AgentState.RATE_LIMITED if isinstance(error, RateLimited) else AgentState.FAILED
        return Ended(state, error=error.message)

    async def cycle(self, unit: Unit, llm: LLMConfig, messages: list[Message]) -> Any:
        """One model's attempts, retried as the policy says: the output, or the last
        error. The first attempt is made directly: most calls need no retry, and
        tenacity's machinery costs ~80 µs a call here, most of the engine's budget
        per agent. After a retryable failure tenacity takes over, that failure
        counted as its first attempt."""
        record = unit.record
        policy = self.policy(record.agent)
        unit.feedback = []
        try:
            return await self.attempts.attempt(unit, llm, messages)
        except RunError as error:
            if policy.attempts == 1 or not error.retryable or record.state.final:
                raise
            failed: RunError | None = error

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return delay(policy, state.attempt_number, error, self.rng)

        last: list[BaseException] = []  # the failure a retry waits after

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            if error is not None:
                last[:] = [error]
            record.state = AgentState.RETRYING
            self.bus.emit(
                AgentRetrying(
                    run_id=self.run_id,
                    at=time.time(),
                    agent_id=record.agent.id,
                    item=unit.item,
                    attempt=unit.attempts,
                    delay=state.upcoming_sleep,
                    error=str(getattr(error, "message", error)),
                )
            )

        def again(error: BaseException) -> bool:
            """Retryable, and its agent still open: once another ``foreach`` item
            ended the agent, its other items stop spending on it."""
            return retryable(error) and not record.state.final

        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait,
            retry=retry_if_exception(again),
            sleep=self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for retry in retrying:
            with retry:
                if failed is not None:  # the attempt made above
                    first, failed = failed, None
                    raise first
                if record.state.final and last:  # ended while this one waited to retry
                    raise last[0]
                return await self.attempts.attempt(unit, llm, [*messages, *unit.feedback])
        raise AssertionError("tenacity ended without a result")  # pragma: no cover

    def policy(self, agent: Agent) -> RetryPolicy:
        policy = self.policies.get(agent.retry)  # most agents share the engine's
        if policy is None:
            policy = policy_for(agent.retry, self.retry_policy)
            self.policies[agent.retry] = policy
        return policy

    async def messages(self, agent: Agent, context: Mapping[str, Any]) -> list[Message]:
        messages: list[Message] = []
        system = None
        if agent.system is not None:
            system = await self.lane.render(agent.system.text, context)
        if agent.output.format == "json":
            system = f"{system}\n\n{_JSON_INSTRUCTION}" if system else _JSON_INSTRUCTION
        if system:
            messages.append(Message("system", system))
        messages.append(Message("user", await self.lane.render(agent.prompt.text, context)))
        return messages


def _falls_back(error: RunError) -> bool:
    """The model gave up in a way another model may not: rate limited, unavailable,
    out of time, or too large for its limits. Not a rejected request or a bad reply."""
    return isinstance(error, RateLimited | ProviderUnavailable | AttemptTimeout | RequestTooLarge)
