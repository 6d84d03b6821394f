"""One attempt: a unit's model called once, from its request to its settlement.

The response cache answers first when it can (no admission, no cost). Else
the attempt is admitted (:mod:`aoe.engine.admission`), told, recorded first
when a run store is on, and made within the agent's timeout, counted from
the last piece of the reply that arrived (a slow but live stream is not cut:
:class:`IdleDeadline`); a reported usage over ``max_tokens`` is the provider's
fault, billed as reported. Its reply is cleaned, counted against the run's
reply bytes and checked against the agent's output format; then it is
settled, whatever happened. It raises the :class:`RunError` that ended it,
which the unit's retry policy reads; a reply that failed its check leaves
feedback for the model's next attempt.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aoe.engine.admission import Admission, Call, Outcome
from aoe.engine.agents import Unit
from aoe.errors import (
    AttemptTimeout,
    OutputInvalid,
    ProviderUnavailable,
    RepliesTooLarge,
    ReplyTruncated,
    RequestRejected,
    RunError,
    scrub,
)
from aoe.events import (
    AgentState,
    AttemptFinished,
    AttemptStarted,
    Checkpoint,
    EventBus,
    TextListener,
)
from aoe.format.workflow import Agent, LLMConfig
from aoe.policy.outputs import clean_text
from aoe.providers import ProviderPool
from aoe.providers.base import Progress, over_max_tokens
from aoe.sandbox.pool import Lane, checks_here
from aoe.state.cache import ResponseCache, fingerprint
from aoe.types import Message, Request, Response, Usage


class Attempts:
    """The attempts of one run's units. The providers are the engine's; the cache,
    the reply bytes and where each agent's replies are checked are the run's."""

    def __init__(
        self,
        admission: Admission,
        providers: ProviderPool,
        lane: Lane,
        *,
        mock: bool,
        cache: ResponseCache | None,
        max_reply_bytes: int | None,
    ) -> None:
        self.admission = admission
        self.run_id = admission.run_id
        self.bus: EventBus = admission.bus
        self.providers = providers
        self.lane = lane  # templates and checks that need the sandbox, one at a time
        self.mock = mock
        self.cache = cache
        self.reply_bytes = 0  # characters of replies, all attempts together
        self.max_reply_bytes = max_reply_bytes
        self.checks_here: dict[str, bool] = {}  # by agent: its replies checked in-process

    async def attempt(self, unit: Unit, llm: LLMConfig, messages: list[Message]) -> Any:
        """One call: admitted, made, settled; its output. Raises the error that ended
        it. A cached answer takes the call's place: no admission, no cost."""
        record = unit.record
        agent = record.agent
        request = self.request(agent, llm, messages)
        key = None
        checkpoint = self.bus.checkpoint
        cache = self.cache
        if cache is not None and (
            request.provider == "mock" or not (cache.on if agent.cache is None else agent.cache)
        ):
            cache = None  # not for this agent
        if checkpoint is not None or cache is not None:
            key = fingerprint(request)
        if cache is not None:
            assert key is not None
            hit = cache.get(key, agent.cache_ttl)
            if hit is not None and (agent.output.allow_truncated or not hit.truncated):
                try:
                    output = await self.check(agent, hit.text)
                except RunError:
                    pass  # an entry that no longer fits: ask the model
                else:
                    self.cached(unit, request, hit, output)
                    return output
        ticket = await self.admission.admit(unit, request, llm)
        unit.attempts += 1
        record.attempts += 1
        call = Call(unit, unit.attempts, llm, request, ticket)
        if not record.state.final:  # (another item may have ended it)
            record.state = AgentState.RUNNING
        self.bus.emit(
            AttemptStarted(
                run_id=self.run_id,
                at=time.time(),
                agent_id=agent.id,
                item=unit.item,
                attempt=call.number,
                provider=request.provider,
                model=request.model,
                waited=ticket.permit.waited,
                reserved=ticket.reservation.amount,
                fingerprint=key,
            )
        )
        if checkpoint is not None:
            await self.recorded_first(call, checkpoint)
        return await self.call(call, key if cache is not None else None)

    async def recorded_first(self, call: Call, checkpoint: Checkpoint) -> None:
        """Wait until the attempt and every agent this one depends on are recorded:
        a run resumed from its record then knows of every call it may have paid."""
        try:
            waiter = checkpoint.flushed()
            if waiter is not None:
                await waiter
        except BaseException:
            self.admission.settle(call, Outcome(None, 0.0))
            raise

    async def call(self, call: Call, key: str | None) -> Any:
        """The provider called within the agent's timeout, its reply checked (and
        kept in the cache under ``key``), the attempt settled."""
        unit = call.unit
        agent = unit.record.agent
        request = call.request
        provider = self.providers.get(request.provider)
        began = time.perf_counter()
        response: Response | None = None
        deadline = IdleDeadline(agent.timeout, agent.timeout_total)
        try:
            text = self.bus.text
            progress = deadline.alive if text is None else _telling(deadline, text, unit)
            try:
                async with deadline.timeout:
                    response = await provider.complete(request, progress, live=text is not None)
            finally:
                deadline.disarm()
            if response.usage.output_tokens > request.max_tokens:
                fault = over_max_tokens(request.provider, response, request.max_tokens)
                if fault is not None:
                    raise fault
            if response.truncated and not agent.output.allow_truncated:
                raise ReplyTruncated(
                    f"the reply was cut off at max_tokens ({request.max_tokens:,}) and "
                    "output.allow_truncated is false: raise llm.max_tokens, or ask for a "
                    "shorter answer"
                )
            response = response._replace(text=clean_text(response.text))
            self.count(response.text)
            output = await self.check(agent, response.text)
            if key is not None:
                assert self.cache is not None
                self.cache.put(key, request, response)
        except asyncio.CancelledError:
            # with the reply's usage if it came (cancelled while checked)
            outcome = Outcome(
                response, time.perf_counter() - began, billed_unknown=response is None
            )
            self.admission.settle(call, outcome)
            raise
        except Exception as e:
            error = _as_run_error(e, deadline, request.provider, response)
            if isinstance(error, OutputInvalid) and response is not None:
                unit.feedback[:] = [
                    Message("assistant", response.text),
                    Message(
                        "user",
                        f"That reply cannot be used: {error.message}. Answer "
                        "again with only the JSON, matching the schema.",
                    ),
                ]
            unknown = response is None and _outcome_unknown(error)
            duration = time.perf_counter() - began
            self.admission.settle(call, Outcome(response, duration, error, billed_unknown=unknown))
            raise error from None
        # positional: built with a keyword, a NamedTuple costs a dict, on every call
        self.admission.settle(call, Outcome(response, time.perf_counter() - began, None, output))
        return output

    def count(self, reply: str) -> None:
        """A reply's characters against what the run may keep of them all."""
        self.reply_bytes += len(reply)
        if self.max_reply_bytes is not None and self.reply_bytes > self.max_reply_bytes:
            raise RepliesTooLarge(
                f"the run's replies came to over {self.max_reply_bytes:,} characters "
                "together, the most this service keeps of a run; ask for shorter "
                "outputs (max_tokens) or fewer of them"
            )

    def cached(self, unit: Unit, request: Request, response: Response, output: Any) -> None:
        """An attempt answered from the cache: told like a call that cost nothing."""
        unit.attempts += 1
        record = unit.record
        record.truncated = record.truncated or response.truncated
        record.attempts += 1
        self.bus.emit(
            AttemptFinished(
                run_id=self.run_id,
                at=time.time(),
                agent_id=record.agent.id,
                item=unit.item,
                attempt=unit.attempts,
                provider=request.provider,
                model=response.model,
                duration=0.0,
                usage=Usage(),
                cost=0.0,
                agent_usage=record.usage,
                agent_cost=record.cost,
                run_usage=self.admission.usage,
                run_cost=self.admission.cost,
                finish_reason=response.finish_reason,
                truncated=response.truncated,
                cached=True,
                output=output,
            )
        )

    async def check(self, agent: Agent, text: str) -> Any:
        """The agent's output from a reply (:class:`OutputInvalid` if it does not fit),
        checked in this process when that is cheap, else in the sandbox."""
        if agent.output.format != "json":
            return text
        here = self.checks_here.get(agent.id)
        if here is None:
            here = self.checks_here[agent.id] = checks_here(agent.output.schema)
        return await self.lane.check(text, agent.output.schema, here=here)

    def request(self, agent: Agent, llm: LLMConfig, messages: list[Message]) -> Request:
        return Request(
            provider="mock" if self.mock else llm.provider,
            model=llm.model,
            messages=tuple(messages),
            max_tokens=llm.max_tokens,
            temperature=llm.temperature,
            top_p=llm.top_p,
            stop=llm.stop,
            seed=llm.seed,
            params=llm.params,
            output_format=agent.output.format,
            json_schema=agent.output.schema,
            timeout=agent.timeout,
        )


class IdleDeadline:
    """An ``asyncio.timeout`` (:attr:`timeout`, to ``async with``) counted from
    the last sign of life: :meth:`alive` (told each piece of a streamed reply)
    moves the deadline on.

    A piece costs one clock read; the deadline is looked at only when it comes
    (then put off to ``seconds`` after the last piece, or expired), so a long
    reply does not reschedule a timer per token. Expiry is asyncio's own: the
    task is cancelled and the block raises :class:`TimeoutError`. The watch
    starts when this is made (just before the block) and stops with
    :meth:`disarm`; the block is asyncio's own context manager, unwrapped, so
    an attempt pays what ``asyncio.timeout`` cost it."""

    __slots__ = ("_loop", "_watch", "end", "ended", "last", "seconds", "timeout", "total")

    def __init__(self, seconds: float, total: float | None = None) -> None:
        self.timeout = asyncio.timeout(None)
        self.seconds = seconds
        self.total = total
        self._loop = loop = asyncio.get_running_loop()
        self.last = loop.time()
        self.end = self.last + total if total is not None else float("inf")
        self.ended = False  # expired by ``total``, not by a silence of ``seconds``
        due = min(self.last + seconds, self.end)
        self._watch: asyncio.TimerHandle | None = loop.call_at(due, self._look)

    def alive(self, piece: str = "") -> None:
        self.last = self._loop.time()

    def disarm(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _look(self) -> None:
        due = min(self.last + self.seconds, self.end)
        now = self._loop.time()
        if due > now:
            self._watch = self._loop.call_at(due, self._look)
        else:
            self._watch = None
            self.ended = self.end <= now
            self.timeout.reschedule(now)


def _telling(deadline: IdleDeadline, text: TextListener, unit: Unit) -> Progress:
    """The deadline moved on and the listener told, at each piece."""
    agent_id, item = unit.record.agent.id, unit.item

    def progress(piece: str) -> None:
        deadline.alive()
        text(agent_id, item, piece)

    return progress


def _outcome_unknown(error: RunError) -> bool:
    """No answer came back: the request may have been processed (and billed)."""
    if isinstance(error, AttemptTimeout):
        return True
    return isinstance(error, ProviderUnavailable) and error.status is None and error.sent


def _as_run_error(
    error: Exception, deadline: IdleDeadline, provider: str, response: Response | None
) -> RunError:
    if isinstance(error, RunError):
        if (
            isinstance(error, OutputInvalid)
            and response is not None
            and response.finish_reason in ("length", "max_tokens")
        ):
            return OutputInvalid(
                f"{error.message} (the reply was cut off at max_tokens: raise llm.max_tokens)"
            )
        return error
    if isinstance(error, TimeoutError):
        if deadline.ended:
            return AttemptTimeout(
                f"the reply was not over within the timeout_total of {deadline.total:g} s"
            )
        return AttemptTimeout(f"no answer within the timeout of {deadline.seconds:g} s")
    # a provider that broke its contract: this attempt fails, the run goes on
    return RequestRejected(
        f"{provider}: unexpected {type(error).__name__}: {scrub(str(error))}", provider=provider
    )
