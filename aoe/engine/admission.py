"""Where every attempt of a run is admitted, and where it is settled.

Admission, before a call: the attempt's worst-case cost is reserved in its
unit's cost_limit and the run's budget, then in the daily budgets every
process shares, then the rate limits are waited out (a wait is not an
attempt). It raises :class:`BudgetExceeded` or :class:`RequestTooLarge`, and
then no call is made and nothing stays reserved.

Settlement, after the call whatever happened: the rate limiter and every
budget are corrected with what was used, the agent's and the run's totals are
counted (here only), and the attempt is told as :class:`AttemptFinished`. An
attempt whose outcome is unknown may have been billed: it is charged what was
reserved. Each admitted attempt is settled exactly once.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from aoe.config.prices import Price
from aoe.config.settings import Settings
from aoe.engine.agents import Unit
from aoe.errors import RunError
from aoe.events import NOT_ANSWERED, AgentState, AgentWaiting, AttemptFinished, EventBus
from aoe.format.workflow import LLMConfig
from aoe.policy.costs import (
    DailySpend,
    Ledger,
    Reservation,
    prompt_tokens_estimate,
    reserve,
    settle,
    worst_case,
)
from aoe.policy.limits import Permit, RateLimiter, Waiting
from aoe.types import Request, Response, Usage


class Ticket(NamedTuple):
    """What an admitted attempt holds until it is settled."""

    reservation: Reservation
    permit: Permit
    shared: list[str] | None = None  # the shared daily budgets' keys, when they apply


class Call(NamedTuple):
    """An admitted attempt: what its settlement needs to know of it."""

    unit: Unit
    number: int  # within the unit, every model counted
    llm: LLMConfig
    request: Request
    ticket: Ticket


class Outcome(NamedTuple):
    """How an admitted attempt ended."""

    response: Response | None  # None: no reply came
    duration: float  # seconds from the call to its end
    error: RunError | None = None  # None: the reply gave a valid output
    output: Any = None
    billed_unknown: bool = False  # no answer came, and the provider may have billed it


class Prices:
    """The price of each model a run calls, looked up once. A mock run uses the
    mock's price for a model without one of its own."""

    def __init__(self, settings: Settings, mock: bool) -> None:
        self._settings = settings
        self._mock = mock
        self._prices: dict[tuple[str, str], Price | None] = {}

    def of(self, llm: LLMConfig) -> Price | None:
        key = (llm.provider, llm.model)
        if key in self._prices:
            return self._prices[key]
        price = self._settings.price_of(llm.provider, llm.model)
        if price is None and self._mock:
            price = self._settings.price_of("mock", llm.model)
        self._prices[key] = price
        return price


class Admission:
    """The admission and settlement of one run's attempts, and the run's totals
    (``usage``, ``cost``: what settlement counted, so nothing counts them twice).
    The limiter and the daily spend are the engine's, shared with other runs."""

    def __init__(
        self,
        run_id: str,
        bus: EventBus,
        ledger: Ledger,
        prices: Prices,
        *,
        limiter: RateLimiter,
        spend: DailySpend | None,
        workflow: str,
        rehearsal: bool = False,
    ) -> None:
        self.run_id = run_id
        self.bus = bus
        self.ledger = ledger  # the run's cost_budget
        self.prices = prices
        self.limiter = limiter
        self.spend = spend
        self.workflow = workflow  # its name: the daily budgets may be per workflow
        # a mock run held to the named providers' limits: "mock:openai", whose
        # windows have openai's limits but are not openai's (no real quota used)
        self.rehearsal = rehearsal
        self.usage = Usage()
        self.cost = 0.0

    async def admit(self, unit: Unit, request: Request, llm: LLMConfig) -> Ticket:
        """The rate limits waited out, then the attempt's worst case reserved.
        Raises :class:`BudgetExceeded` or :class:`RequestTooLarge`; no call is made.

        The budget is reserved only once the call may go: a call waiting for a
        slot holds none, so it never keeps another call that could go now from
        the budget (an issue 15 run stopped with enough left for the call it
        refused, held by calls still waiting)."""
        tokens = prompt_tokens_estimate(request.messages) + request.max_tokens
        record = unit.record
        held_by = f"mock:{llm.provider}" if self.rehearsal else request.provider

        def waiting(why: Waiting) -> None:
            if not record.state.final:  # (another item may have ended it)
                record.state = AgentState.WAITING
            self.bus.emit(
                AgentWaiting(
                    run_id=self.run_id,
                    at=time.time(),
                    agent_id=record.agent.id,
                    item=unit.item,
                    provider=held_by,
                    model=request.model,
                    limit=why.limit,
                    seconds=why.seconds,
                )
            )

        permit = await self.limiter.acquire(held_by, request.model, tokens, on_wait=waiting)
        try:
            reservation = reserve(
                worst_case(request.messages, request.max_tokens, self.prices.of(llm)),
                unit.ledger,
                self.ledger,
            )
        except BaseException:
            self.limiter.release(permit, 0)  # no call: its slot and tokens back
            raise
        spend = self.spend
        shared = None
        if spend is not None:  # the daily budgets every process shares
            try:
                shared = await spend.reserve(self.workflow, reservation.amount)
            except BaseException:
                settle(reservation, 0.0)
                self.limiter.release(permit, 0)
                raise
        return Ticket(reservation, permit, shared)

    def settle(self, call: Call, outcome: Outcome) -> None:
        """The limiter and the budgets corrected with what ``call`` used, the totals
        counted once, the attempt told."""
        response = outcome.response
        usage = response.usage if response is not None else Usage()
        ticket = call.ticket
        self.limiter.release(ticket.permit, usage.total if response is not None else None)
        if outcome.billed_unknown:
            cost = ticket.reservation.amount
        else:
            price = self.prices.of(call.llm)
            cost = price.cost(*usage) if price is not None else 0.0
        settle(ticket.reservation, cost)
        if self.spend is not None:
            self.spend.settle(ticket.shared, ticket.reservation.amount, cost)
        record = call.unit.record
        if outcome.error is None and response is not None and response.truncated:
            record.truncated = True  # its output (or an item's) is cut off
        record.usage = record.usage + usage
        record.cost += cost
        self.usage = self.usage + usage
        self.cost += cost
        error = outcome.error
        if error is not None:
            kind: str | None = type(error).__name__
        else:
            kind = None if response is not None else NOT_ANSWERED
        self.bus.emit(
            AttemptFinished(
                run_id=self.run_id,
                at=time.time(),
                agent_id=record.agent.id,
                item=call.unit.item,
                attempt=call.number,
                provider=call.request.provider,
                model=response.model if response is not None else call.request.model,
                duration=outcome.duration,
                usage=usage,
                cost=cost,
                agent_usage=record.usage,
                agent_cost=record.cost,
                run_usage=self.usage,
                run_cost=self.cost,
                error=error.message if error is not None else None,
                error_kind=kind,
                finish_reason=response.finish_reason if response is not None else None,
                truncated=response is not None and response.truncated,
                usage_estimated=response is not None and response.estimated,
                output=outcome.output,
            )
        )
