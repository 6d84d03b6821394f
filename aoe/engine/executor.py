"""The asyncio executor: one :class:`Engine`, many runs, each a DAG of agents.

Scheduling (engine.md): an agent becomes ready the moment its dependencies
allow (its ``trigger_rule``), never level by level; ready work waits in a heap
ordered by the longest remaining path, so the critical path is never starved;
at most ``max_parallel_agents`` units of a run are in flight and at most
``max_concurrent_workflows`` runs share an engine. A ``foreach`` agent's items
are separate units in the same heap, each with its own attempts and its own
``cost_limit``.

A unit tries its model and then each fallback, each with a full cycle of
retries (tenacity). Every attempt passes two seams: :meth:`_Run.admit` (the
budget reservation, then the rate limits; a wait there is not an attempt)
and :meth:`_Run.settle` (the rate limiter and the budget corrected with what
was used; the attempt told). Bookkeeping runs on the event loop without
recursion, so a finished call costs a few dictionary and heap operations
whatever the size of the graph.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from aoe.config.prices import Price
from aoe.config.settings import Settings
from aoe.errors import (
    AttemptTimeout,
    OutputInvalid,
    ProviderUnavailable,
    RateLimited,
    RepliesTooLarge,
    RequestRejected,
    RunError,
    UserError,
)
from aoe.events import (
    NOT_ANSWERED,
    AgentFallback,
    AgentFinished,
    AgentRetrying,
    AgentStarted,
    AgentState,
    AgentWaiting,
    AttemptFinished,
    AttemptStarted,
    EventBus,
    RunFinished,
    RunStarted,
    RunStatus,
)
from aoe.format.rendering import (
    MAX_FOREACH_ITEMS,
    evaluate,
    inline,
    inline_expression,
    too_many_items,
)
from aoe.format.workflow import Agent, LLMConfig, RetryOverrides, SourceText, Workflow
from aoe.policy.costs import (
    BudgetExceeded,
    DailySpend,
    Ledger,
    Reservation,
    prompt_tokens_estimate,
    reserve,
    settle,
    worst_case,
)
from aoe.policy.limits import (
    Clock,
    LocalRateLimiter,
    Permit,
    RateLimiter,
    RequestTooLarge,
    SystemClock,
    limits_for_config,
)
from aoe.policy.outputs import clean_text
from aoe.policy.retry import RetryPolicy, delay, policy_for, retryable
from aoe.providers import ProviderPool
from aoe.sandbox.pool import Sandbox, SandboxFailed, checks_here
from aoe.state.cache import ResponseCache, fingerprint
from aoe.types import Message, Request, Response, Usage

_JSON_INSTRUCTION = "Answer with one JSON value and nothing else: no prose, no code fences."


def new_run_id() -> str:
    """A short, sortable, unique id: UTC time then randomness."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class Engine:
    """Runs workflows with shared providers, shared rate limits and a limit on runs."""

    def __init__(
        self,
        settings: Settings,
        providers: ProviderPool | None = None,
        *,
        limiter: RateLimiter | None = None,
        spend: DailySpend | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """An engine for ``settings``. It is handed what it shares with other
        processes: ``limiter`` (else limits held in this process) and ``spend``
        (the daily budgets, required when the config sets them);
        :func:`aoe.service.wiring.engine_for` picks them from the config."""
        self.settings = settings
        self.providers = providers or ProviderPool(settings)
        self.clock: Clock = clock or SystemClock()
        self.spend = spend
        costs = settings.config.cost_tracking
        if spend is None and (costs.daily_budget is not None or costs.workflow_daily_budgets):
            raise UserError(
                "cost_tracking.daily_budget and workflow_daily_budgets are shared through "
                "Redis: set REDIS_HOST (or redis.url), or remove them"
            )
        self.limiter: RateLimiter = limiter or LocalRateLimiter(
            limits_for_config(settings.config.rate_limiting), self.clock
        )
        self.rng = rng or random.Random()
        self.sandbox = Sandbox()  # its processes start when a template first needs one
        self._slots: asyncio.Semaphore | None = None

    async def run(
        self,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        bus: EventBus,
        *,
        run_id: str | None = None,
        max_parallel: int | None = None,
        budget: float | None = None,
        mock: bool = False,
        cache: ResponseCache | None = None,
        resumption: Resumption | None = None,
        max_units: int | None = None,
        max_reply_bytes: int | None = None,
    ) -> RunStatus:
        """Run a workflow to its end; the events on ``bus`` tell how it went.
        ``budget`` (USD) replaces the workflow's ``cost_budget``; ``cache`` answers
        repeated requests; ``resumption`` continues a run from its record;
        ``max_units`` bounds its agents and ``foreach`` items together, and
        ``max_reply_bytes`` the characters of its replies (a service running other
        people's workflows: each costs memory)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.config.engine.max_concurrent_workflows)
        run = _Run(self, workflow, inputs, bus, run_id or new_run_id(), max_parallel, budget, mock)
        run.cache = cache
        run.max_units = max_units
        run.max_reply_bytes = max_reply_bytes
        if resumption is not None:
            run.resume(resumption)
        # SDKs are imported here, before any call is out: an import blocks the loop
        for provider in providers_of(workflow, mock):
            self.providers.get(provider)
        async with self._slots:
            return await run.execute()

    async def aclose(self) -> None:
        await self.sandbox.aclose()
        await self.providers.aclose()
        close = getattr(self.limiter, "aclose", None)
        if close is not None:  # a shared limiter's connection
            await close()
        if self.spend is not None:  # its last settlements, then its connection
            await self.spend.aclose()


class _AgentRun:
    """One agent's state during a run."""

    __slots__ = (
        "agent",
        "attempts",
        "cost",
        "dependents",
        "error",
        "foreach",
        "item_spent",
        "items",
        "items_left",
        "ledger",
        "output",
        "priority",
        "restored_items",
        "started_at",
        "state",
        "undecided",
        "usage",
    )

    def __init__(self, agent: Agent, priority: float, ledger: Ledger) -> None:
        self.agent = agent
        self.priority = priority
        self.ledger = ledger  # its cost_limit over all attempts (foreach items: one each)
        self.state = AgentState.PENDING
        self.undecided = len(agent.depends_on)  # dependencies not yet final
        self.dependents: list[_AgentRun] = []
        self.output: Any = None
        self.error: str | None = None
        self.foreach: list[Any] = []  # foreach: the items it runs over
        self.items: list[Any] | None = None  # foreach: the items' outputs, in order
        self.items_left = 0
        self.attempts = 0
        self.usage = Usage()
        self.cost = 0.0
        self.started_at: float | None = None
        self.restored_items: dict[int, Any] = {}  # foreach items finished in an earlier session
        self.item_spent: dict[int, float] = {}  # and what items spent then


class Restored(NamedTuple):
    """An agent that completed in an earlier session of the run, from its record."""

    output: Any
    usage: Usage
    cost: float
    attempts: int


class Resumption(NamedTuple):
    """What earlier sessions of a run left: the agents that completed (they are
    not called again) and what was spent, which counts against the budgets."""

    session: int
    completed: Mapping[str, Restored]
    spent: float  # USD the run may have been billed so far
    usage: Usage
    agent_spent: Mapping[str, float]  # agents that did not complete: USD already spent
    items: Mapping[str, Mapping[int, Any]] = {}  # foreach agents: outputs of finished items
    item_spent: Mapping[str, Mapping[int, float]] = {}  # and what each item spent


class _Admission(NamedTuple):
    reservation: Reservation
    permit: Permit
    shared: list[str] | None = None  # the shared daily budgets' keys, when they apply


class _Run:
    def __init__(
        self,
        engine: Engine,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        bus: EventBus,
        run_id: str,
        max_parallel: int | None,
        budget: float | None,
        mock: bool,
    ) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.workflow = workflow
        self.inputs = dict(inputs)
        self.bus = bus
        self.run_id = run_id
        self.mock = mock
        self.free = max_parallel or workflow.max_parallel_agents
        self.max_parallel = self.free
        costs = self.settings.config.cost_tracking
        run_limit = budget if budget is not None else workflow.cost_budget
        if run_limit is None:
            run_limit = costs.default_workflow_budget
        self.ledger = Ledger(run_limit, "the run's cost_budget")
        remaining = workflow.graph.remaining_path()
        self.agents: dict[str, _AgentRun] = {}
        for agent_id, agent in workflow.agents.items():
            limit = (
                agent.cost_limit if agent.cost_limit is not None else (costs.default_agent_budget)
            )
            ledger = Ledger(limit, f"agent {agent_id}'s cost_limit")
            self.agents[agent_id] = _AgentRun(agent, remaining[agent_id], ledger)
        for record in self.agents.values():
            for dep in record.agent.depends_on:
                self.agents[dep].dependents.append(record)
        self.order = {agent_id: i for i, agent_id in enumerate(workflow.graph.topological_order())}
        # ready units: (-priority, order, item or -1, agent) — longest remaining path first
        self.ready: list[tuple[float, int, int, _AgentRun]] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = False  # fail-fast: nothing new starts
        self.cancelled = False
        self.crashed: BaseException | None = None  # a bug ended the run
        self.run_budget_hit = False
        self.done: asyncio.Future[None] | None = None
        self.usage = Usage()
        self.cost = 0.0
        self.started = 0.0
        self.policies: dict[RetryOverrides, RetryPolicy] = {}
        self.prices: dict[tuple[str, str], Price | None] = {}
        self.cache: ResponseCache | None = None
        self.session = 1
        self.restored: list[_AgentRun] = []
        self.lane = engine.sandbox.lane()  # templates that need the sandbox, one at a time
        self.units = len(workflow.agents)  # agents, and foreach items beyond one each
        self.max_units: int | None = None
        self.reply_bytes = 0  # characters of replies, all attempts together
        self.max_reply_bytes: int | None = None
        self.checks_here: dict[str, bool] = {}  # by agent: its replies checked in-process

    def resume(self, resumption: Resumption) -> None:
        """Start from a run's record: completed agents keep their outputs, and what
        was spent counts against the run's budget and each agent's limit."""
        self.session = resumption.session
        self.ledger.spent = resumption.spent
        self.cost = resumption.spent
        self.usage = resumption.usage
        for agent_id, restored in resumption.completed.items():
            record = self.agents.get(agent_id)
            if record is None:
                continue  # no longer in the workflow
            record.state = AgentState.COMPLETED
            record.output = restored.output
            record.usage = restored.usage
            record.cost = restored.cost
            record.attempts = restored.attempts
            self.restored.append(record)
        for agent_id, spent in resumption.agent_spent.items():
            if agent_id in self.agents and agent_id not in resumption.completed:
                self.agents[agent_id].ledger.spent = spent
        for agent_id, items in resumption.items.items():
            if agent_id in self.agents and agent_id not in resumption.completed:
                self.agents[agent_id].restored_items = dict(items)
        for agent_id, spent_by_item in resumption.item_spent.items():
            if agent_id in self.agents:
                self.agents[agent_id].item_spent = dict(spent_by_item)

    # -- the run -------------------------------------------------------------------
    async def execute(self) -> RunStatus:
        self.done = asyncio.get_running_loop().create_future()
        self.started = time.perf_counter()
        self.bus.emit(
            RunStarted(
                self.run_id,
                time.time(),
                self.workflow.name,
                len(self.agents),
                self.max_parallel,
                self.ledger.limit,
                self.session,
                self.ledger.spent,
            )
        )
        try:
            for record in self.restored:
                self.end(record, AgentState.COMPLETED, resumed=True)
                self.release(record)
            self.decide(
                [
                    r
                    for r in self.agents.values()
                    if r.undecided == 0 and r.state is AgentState.PENDING
                ]
            )
            self.dispatch()
            await self.done
        except asyncio.CancelledError:
            await self.cancel()
            raise
        except BaseException as e:
            self.crashed = e
            await self.cancel()
            raise
        finally:
            status = await self.finish()
            self.lane.close()
        return status

    async def cancel(self) -> None:
        """Stop now: cancel the calls in flight and wait until they are gone."""
        if self.crashed is None:
            self.cancelled = True
        self.stopping = True
        self.ready.clear()
        tasks = list(self.in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def finish(self) -> RunStatus:
        """Final states for what never ran, the run's status, outputs; RunFinished."""
        now = time.time()
        for record in self.agents.values():
            if record.state.final:
                continue
            started = record.started_at is not None
            if self.cancelled:
                reason = "the run was cancelled"
            elif self.crashed is not None:
                reason = f"the run stopped: {self.crashed}"
            else:
                reason = "the run stopped after a failure before this agent " + (
                    "finished" if started else "started"
                )
            if record.items is not None and started:
                record.output = record.items  # the items that finished were paid for: keep them
            state = AgentState.CANCELLED if started or self.cancelled else AgentState.SKIPPED
            self.end(record, state, reason, at=now, keep_output=True)
        status = self.status()
        outputs, errors = await self.render_outputs()
        self.bus.emit(
            RunFinished(
                self.run_id,
                now,
                status,
                time.perf_counter() - self.started,
                self.usage,
                self.cost,
                self.ledger.limit,
                outputs,
                errors,
            )
        )
        return status

    def status(self) -> RunStatus:
        if self.cancelled:
            return RunStatus.CANCELLED
        if self.crashed is not None:
            return RunStatus.FAILED
        states = {r.state for r in self.agents.values()}
        if AgentState.BUDGET_EXCEEDED in states and (
            self.run_budget_hit or not self.workflow.allow_partial_completion
        ):
            return RunStatus.BUDGET_EXCEEDED
        if any(state.failure for state in states):
            return RunStatus.PARTIAL if self.workflow.allow_partial_completion else RunStatus.FAILED
        return RunStatus.COMPLETED

    # -- deciding and dispatching ------------------------------------------------------
    def decide(self, records: list[_AgentRun]) -> None:
        """Agents whose dependencies allow a verdict: skip them, or queue their units.
        A worklist, not recursion: a skip releases its dependents onto the same list."""
        work = list(records)
        while work:
            record = work.pop()
            if record.state is not AgentState.PENDING or self.stopping:
                continue  # when stopping, everything not started is skipped at the end
            verdict = self.trigger(record)
            if verdict is None:
                continue  # not yet
            if verdict and self.start(record):
                continue
            work.extend(self.release(record))  # it ended without a call

    def trigger(self, record: _AgentRun) -> bool | None:
        """True: may start; False: skipped (ended here); None: wait for more dependencies."""
        agent = record.agent
        deps = [self.agents[d] for d in agent.depends_on]
        if agent.trigger_rule == "all_completed":
            failed = next(
                (d for d in deps if d.state.final and d.state is not AgentState.COMPLETED), None
            )
            if failed is not None:
                self.end(
                    record,
                    AgentState.SKIPPED,
                    f"{failed.agent.id} did not complete ({failed.state})",
                )
                return False
            return True if record.undecided == 0 else None
        if record.undecided:
            return None
        if (
            agent.trigger_rule == "any_completed"
            and deps
            and not any(d.state is AgentState.COMPLETED for d in deps)
        ):
            self.end(record, AgentState.SKIPPED, "none of its dependencies completed")
            return False
        return True

    def start(self, record: _AgentRun) -> bool:
        """Evaluate ``when`` and ``foreach`` and queue the agent's units. False when it
        ended without a call (skipped by its condition, failed to evaluate, nothing to
        do): the caller then releases its dependents. An expression that is more than
        a name (compared with a literal) is evaluated in the sandbox, by a task of its
        own (:meth:`prepare`), and the agent counts as started meanwhile."""
        agent = record.agent
        if not (_inline(agent.when) and _inline(agent.foreach)):
            self.in_flight.add(asyncio.ensure_future(self.prepare(record)))
            return True
        context = self.context(agent) if agent.when or agent.foreach else {}
        if agent.when is not None:
            try:
                go = bool(evaluate(agent.when.text, context))
            except Exception as e:
                self.fail(record, f"its when condition could not be evaluated: {e}")
                return False
            if not go:
                self.end(record, AgentState.SKIPPED, "its when condition is false")
                return False
        if agent.foreach is None:
            return self.queue(record, None)
        try:
            items = evaluate(agent.foreach.text, context)
        except Exception as e:
            self.fail(record, f"its foreach expression could not be evaluated: {e}")
            return False
        if not isinstance(items, list | tuple):
            self.fail(record, f"its foreach expression gave {_kind(items)}, not a list")
            return False
        return self.queue(record, list(items))

    async def prepare(self, record: _AgentRun) -> None:
        """:meth:`start` for an agent whose ``when`` or ``foreach`` needs the sandbox."""
        task = asyncio.current_task()
        agent = record.agent
        try:
            context = self.context(agent)
            started = False
            try:
                go = agent.when is None or await self.lane.when(agent.when.text, context)
            except Exception as e:
                self.fail(record, f"its when condition could not be evaluated: {_reason(e)}")
            else:
                if not go:
                    self.end(record, AgentState.SKIPPED, "its when condition is false")
                elif agent.foreach is None:
                    started = self.queue(record, None)
                else:
                    try:
                        items = await self.lane.foreach(agent.foreach.text, context)
                    except Exception as e:
                        self.fail(
                            record, f"its foreach expression could not be evaluated: {_reason(e)}"
                        )
                    else:
                        started = self.queue(record, items)
            if not started:
                self.decide(self.release(record))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, not a run error: the run ends with it
            self.crash(e)
            return
        finally:
            self.in_flight.discard(task)
        self.dispatch()

    def crash(self, error: Exception) -> None:
        """A bug in a task of the run: nothing new starts, and the run ends with it."""
        self.stopping = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(error)

    def queue(self, record: _AgentRun, items: list[Any] | None) -> bool:
        """Queue the agent's units: one, or one per ``foreach`` item not yet done.
        False when nothing is left to do (every item finished in an earlier session),
        or when there are too many items (the agent fails)."""
        if record.state.final or self.stopping:
            return True  # it ended meanwhile, or nothing new starts: finish() decides
        entry = (-record.priority, self.order[record.agent.id])
        if items is None:
            heapq.heappush(self.ready, (*entry, -1, record))
            return True
        if len(items) > MAX_FOREACH_ITEMS:
            self.fail(record, f"its foreach expression {too_many_items(len(items))}")
            return False
        if self.max_units is not None and self.units + len(items) - 1 > self.max_units:
            self.fail(
                record,
                f"its foreach expression gave {len(items):,} items: with the run's other "
                f"agents and items that is over the {self.max_units:,} this service runs "
                "in one run (batch the items)",
            )
            return False
        self.units += max(len(items) - 1, 0)
        record.foreach = items
        record.items = [None] * len(items)
        record.items_left = len(items)
        for index, output in record.restored_items.items():  # paid for in an earlier session
            if index < len(items):
                record.items[index] = output
                record.items_left -= 1
        if not record.items_left:
            record.output = record.items
            self.end(record, AgentState.COMPLETED)
            return False
        for index in range(len(items)):
            if index not in record.restored_items:
                heapq.heappush(self.ready, (*entry, index, record))
        return True

    def release(self, record: _AgentRun) -> list[_AgentRun]:
        """Dependents that may now be decided, now that ``record`` is final."""
        ready = []
        for dependent in record.dependents:
            dependent.undecided -= 1
            if dependent.state is AgentState.PENDING and (
                dependent.undecided == 0 or record.state is not AgentState.COMPLETED
            ):
                ready.append(dependent)
        return ready

    def dispatch(self) -> None:
        """Start queued units while slots are free; resolve the run when all is done."""
        while self.free and self.ready and not self.stopping:
            _, _, item, record = heapq.heappop(self.ready)
            if record.state.final:
                continue  # its agent already ended: the rest of its items never run
            self.free -= 1
            if record.started_at is None:
                record.started_at = time.perf_counter()
                record.state = AgentState.RUNNING
                self.bus.emit(
                    AgentStarted(
                        self.run_id,
                        time.time(),
                        record.agent.id,
                        len(record.items) if record.items is not None else None,
                    )
                )
            self.in_flight.add(asyncio.ensure_future(self.unit(record, item)))
        if not self.in_flight and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def unit(self, record: _AgentRun, item: int) -> None:
        """One unit in its own task. When it ends, the next units start from here, in
        the same step of the loop: a dependent waits for no extra round."""
        task = asyncio.current_task()
        try:
            await self.run_unit(record, None if item < 0 else item)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, not a run error: the run ends with it
            self.crash(e)
            return
        finally:
            self.in_flight.discard(task)
            self.free += 1
        self.dispatch()

    # -- one unit of work: the model, then each fallback ------------------------------
    async def run_unit(self, record: _AgentRun, item: int | None) -> None:
        agent = record.agent
        try:
            messages = await self.messages(agent, self.context(agent, item))
        except Exception as e:
            self.fail(record, f"its prompt could not be rendered: {_reason(e)}", decide=True)
            return
        ledger = record.ledger
        if item is not None:  # each item has a cost_limit of its own
            ledger = Ledger(record.ledger.limit, f"agent {agent.id}'s cost_limit for item {item}")
            ledger.spent = record.item_spent.get(item, 0.0)
        attempts = _Counter()
        error: RunError | None = None
        for index, llm in enumerate(agent.models):
            if index:
                assert error is not None
                self.bus.emit(
                    AgentFallback(
                        self.run_id,
                        time.time(),
                        agent.id,
                        item,
                        llm.provider,
                        llm.model,
                        error.message,
                    )
                )
            try:
                output = await self.cycle(record, item, llm, messages, ledger, attempts)
            except BudgetExceeded as e:
                self.run_budget_hit = self.run_budget_hit or e.run_budget
                self.fail(record, e.message, AgentState.BUDGET_EXCEEDED, decide=True)
                return
            except RunError as e:
                error = e
                if not _falls_back(e):
                    break
                continue
            self.succeed(record, item, output)
            return
        assert error is not None
        state = AgentState.RATE_LIMITED if isinstance(error, RateLimited) else AgentState.FAILED
        self.fail(record, error.message, state, decide=True)

    async def cycle(
        self,
        record: _AgentRun,
        item: int | None,
        llm: LLMConfig,
        messages: list[Message],
        ledger: Ledger,
        attempts: _Counter,
    ) -> Any:
        """One model's attempts, retried as the policy says: the output, or the last
        error. The first attempt is made directly: most calls need no retry, and
        tenacity's machinery costs ~80 µs a call here, most of the engine's budget
        per agent. After a retryable failure tenacity takes over, that failure
        counted as its first attempt."""
        policy = self.policy(record.agent)
        feedback: list[Message] = []
        try:
            return await self.attempt(record, item, llm, messages, ledger, attempts, feedback)
        except RunError as error:
            if policy.attempts == 1 or not error.retryable:
                raise
            failed: RunError | None = error

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return delay(policy, state.attempt_number, error, self.engine.rng)

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            record.state = AgentState.RETRYING
            self.bus.emit(
                AgentRetrying(
                    self.run_id,
                    time.time(),
                    record.agent.id,
                    item,
                    attempts.value,
                    state.upcoming_sleep,
                    str(getattr(error, "message", error)),
                )
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait,
            retry=retry_if_exception(retryable),
            sleep=self.engine.clock.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for retry in retrying:
            with retry:
                if failed is not None:  # the attempt made above
                    first, failed = failed, None
                    raise first
                return await self.attempt(
                    record, item, llm, [*messages, *feedback], ledger, attempts, feedback
                )
        raise AssertionError("tenacity ended without a result")  # pragma: no cover

    def policy(self, agent: Agent) -> RetryPolicy:
        policy = self.policies.get(agent.retry)  # most agents share the engine's
        if policy is None:
            policy = policy_for(agent.retry, self.settings.config.retry_policy)
            self.policies[agent.retry] = policy
        return policy

    async def attempt(
        self,
        record: _AgentRun,
        item: int | None,
        llm: LLMConfig,
        messages: list[Message],
        ledger: Ledger,
        attempts: _Counter,
        feedback: list[Message],
    ) -> Any:
        """One call: admitted, made, settled. Raises the error that ended it.
        A cached answer takes the call's place: no admission, no cost."""
        agent = record.agent
        request = self.request(agent, llm, messages)
        key = None
        checkpoint = self.bus.checkpoint
        cache = self.cache if agent.cache and request.provider != "mock" else None
        if checkpoint is not None or cache is not None:
            key = fingerprint(request)
        if cache is not None:
            assert key is not None
            hit = cache.get(key)
            if hit is not None:
                try:
                    output = await self.check(agent, hit.text)
                except RunError:
                    pass  # an entry that no longer fits: ask the model
                else:
                    self.cached(record, item, attempts, request, hit, output)
                    return output
        admission = await self.admit(record, item, request, llm, ledger)
        attempts.value += 1
        record.attempts += 1
        number = attempts.value
        record.state = AgentState.RUNNING
        self.bus.emit(
            AttemptStarted(
                self.run_id,
                time.time(),
                agent.id,
                item,
                number,
                request.provider,
                request.model,
                admission.permit.waited,
                admission.reservation.amount,
                key,
            )
        )
        if checkpoint is not None:
            # the attempt and every agent this one depends on are recorded first
            try:
                waiter = checkpoint.flushed()
                if waiter is not None:
                    await waiter
            except BaseException:
                self.settle(record, item, number, llm, request, admission, None, 0.0, None)
                raise
        provider = self.engine.providers.get(request.provider)
        began = time.perf_counter()
        response: Response | None = None
        try:
            async with asyncio.timeout(agent.timeout):
                response = await provider.complete(request)
            response = response._replace(text=clean_text(response.text))
            self.reply_bytes += len(response.text)
            if self.max_reply_bytes is not None and self.reply_bytes > self.max_reply_bytes:
                raise RepliesTooLarge(
                    f"the run's replies came to over {self.max_reply_bytes:,} characters "
                    "together, the most this service keeps of a run; ask for shorter "
                    "outputs (max_tokens) or fewer of them"
                )
            output = await self.check(agent, response.text)
            if cache is not None:
                assert key is not None
                cache.put(key, request, response)
        except asyncio.CancelledError:
            self.settle(  # with the reply's usage if it came (cancelled while checked)
                record,
                item,
                number,
                llm,
                request,
                admission,
                response,
                time.perf_counter() - began,
                None,
                billed_unknown=response is None,
            )
            raise
        except Exception as e:
            error = _as_run_error(e, agent.timeout, request.provider, response)
            if isinstance(error, OutputInvalid) and response is not None:
                feedback[:] = [
                    Message("assistant", response.text),
                    Message(
                        "user",
                        f"That reply cannot be used: {error.message}. Answer "
                        "again with only the JSON, matching the schema.",
                    ),
                ]
            self.settle(
                record,
                item,
                number,
                llm,
                request,
                admission,
                response,
                time.perf_counter() - began,
                error,
                billed_unknown=response is None and _outcome_unknown(error),
            )
            raise error from None
        self.settle(
            record,
            item,
            number,
            llm,
            request,
            admission,
            response,
            time.perf_counter() - began,
            None,
            output=output,
        )
        return output

    async def admit(
        self,
        record: _AgentRun,
        item: int | None,
        request: Request,
        llm: LLMConfig,
        ledger: Ledger,
    ) -> _Admission:
        """Where an attempt is admitted: its worst-case cost reserved in the agent's
        (or the item's) limit and the run's budget, then the rate limits waited out.
        Raises :class:`BudgetExceeded` or :class:`RequestTooLarge`; no call is made."""
        price = self.price(llm)
        reservation = reserve(
            worst_case(request.messages, request.max_tokens, price), ledger, self.ledger
        )
        spend = self.engine.spend
        shared = None
        if spend is not None:  # the daily budgets every process shares
            try:
                shared = await spend.reserve(self.workflow.name, reservation.amount)
            except BaseException:
                settle(reservation, 0.0)
                raise
        tokens = prompt_tokens_estimate(request.messages) + request.max_tokens

        def waiting() -> None:
            record.state = AgentState.WAITING
            self.bus.emit(
                AgentWaiting(
                    self.run_id, time.time(), record.agent.id, item, request.provider, request.model
                )
            )

        try:
            permit = await self.engine.limiter.acquire(
                request.provider, request.model, tokens, on_wait=waiting
            )
        except BaseException:
            settle(reservation, 0.0)
            if spend is not None:
                spend.settle(shared, reservation.amount, 0.0)
            raise
        return _Admission(reservation, permit, shared)

    def settle(
        self,
        record: _AgentRun,
        item: int | None,
        number: int,
        llm: LLMConfig,
        request: Request,
        admission: _Admission,
        response: Response | None,
        duration: float,
        error: RunError | None,
        *,
        billed_unknown: bool = False,
        output: Any = None,
    ) -> None:
        """Where an attempt is settled: the limiter and the budget corrected with what
        was used, the totals counted once, the attempt told. An attempt whose outcome
        is unknown may have been billed: it is charged its reservation."""
        usage = response.usage if response is not None else Usage()
        self.engine.limiter.release(admission.permit, usage.total if response else None)
        if billed_unknown:
            cost = admission.reservation.amount
        else:
            price = self.price(llm)
            cost = price.cost(*usage) if price is not None else 0.0
        settle(admission.reservation, cost)
        if self.engine.spend is not None:
            self.engine.spend.settle(admission.shared, admission.reservation.amount, cost)
        record.usage = record.usage + usage
        record.cost += cost
        self.usage = self.usage + usage
        self.cost += cost
        self.bus.emit(
            AttemptFinished(
                self.run_id,
                time.time(),
                record.agent.id,
                item,
                number,
                request.provider,
                response.model if response is not None else request.model,
                duration,
                usage,
                cost,
                record.usage,
                record.cost,
                self.usage,
                self.cost,
                error.message if error else None,
                type(error).__name__ if error else (None if response else NOT_ANSWERED),
                response.finish_reason if response else None,
                False,
                output,
            )
        )

    def cached(
        self,
        record: _AgentRun,
        item: int | None,
        attempts: _Counter,
        request: Request,
        response: Response,
        output: Any,
    ) -> None:
        """An attempt answered from the cache: told like a call that cost nothing."""
        attempts.value += 1
        record.attempts += 1
        self.bus.emit(
            AttemptFinished(
                self.run_id,
                time.time(),
                record.agent.id,
                item,
                attempts.value,
                request.provider,
                response.model,
                0.0,
                Usage(),
                0.0,
                record.usage,
                record.cost,
                self.usage,
                self.cost,
                None,
                None,
                response.finish_reason,
                True,
                output,
            )
        )

    def price(self, llm: LLMConfig) -> Price | None:
        key = (llm.provider, llm.model)
        if key in self.prices:
            return self.prices[key]
        price = self.settings.price_of(llm.provider, llm.model)
        if price is None and self.mock:
            price = self.settings.price_of("mock", llm.model)
        self.prices[key] = price
        return price

    # -- final states ------------------------------------------------------------------
    def succeed(self, record: _AgentRun, item: int | None, output: Any) -> None:
        if record.state.final:
            return  # the agent ended meanwhile (another item failed)
        if item is None:
            record.output = output
        else:
            assert record.items is not None
            record.items[item] = output
            record.items_left -= 1
            if record.items_left:
                return
            record.output = record.items
        self.end(record, AgentState.COMPLETED)
        self.decide(self.release(record))

    def fail(
        self,
        record: _AgentRun,
        error: str,
        state: AgentState = AgentState.FAILED,
        *,
        decide: bool = False,
    ) -> None:
        """End an agent that did not complete. Without partial completion nothing new
        starts; with it, its dependents are decided (``decide``: here, unless the
        caller does it, as :meth:`decide` itself does)."""
        if record.state.final:
            return  # another item of the same foreach agent failed first
        if record.items is not None:
            record.output = record.items  # finished items were paid for: keep them
        self.end(record, state, error, keep_output=True)
        if not self.workflow.allow_partial_completion:
            self.stopping = True  # in-flight calls finish; nothing new starts
            self.ready.clear()
        elif decide:
            self.decide(self.release(record))

    def end(
        self,
        record: _AgentRun,
        state: AgentState,
        error: str | None = None,
        *,
        at: float | None = None,
        keep_output: bool = False,
        resumed: bool = False,
    ) -> None:
        record.state = state
        record.error = error
        duration = time.perf_counter() - record.started_at if record.started_at is not None else 0.0
        output = record.output if state is AgentState.COMPLETED or keep_output else None
        self.bus.emit(
            AgentFinished(
                self.run_id,
                at or time.time(),
                record.agent.id,
                state,
                duration,
                record.usage,
                record.cost,
                record.attempts,
                output,
                error,
                resumed,
            )
        )

    # -- templates -----------------------------------------------------------------------
    def context(self, agent: Agent | None, item: int | None = None) -> dict[str, Any]:
        """What templates see: inputs, the agent's dependencies (every agent for the
        workflow's outputs), the workflow's name, and a foreach unit's item."""
        names = agent.depends_on if agent is not None else tuple(self.agents)
        agents = {}
        for name in names:
            dep = self.agents[name]
            agents[name] = {
                "output": dep.output if dep.state is AgentState.COMPLETED else None,
                "status": str(dep.state),
            }
        context: dict[str, Any] = {
            "inputs": self.inputs,
            "agents": agents,
            "workflow": {"name": self.workflow.name},
        }
        if agent is not None and item is not None:
            context["item"] = self.agents[agent.id].foreach[item]
            context["index"] = item
        return context

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

    async def render_outputs(self) -> tuple[dict[str, Any], dict[str, str]]:
        outputs: dict[str, Any] = {}
        errors: dict[str, str] = {}
        if not self.workflow.outputs:
            return outputs, errors
        context = self.context(None)
        for name, source in self.workflow.outputs.items():
            if self.cancelled and not inline(source.text):
                outputs[name] = None  # not worth a sandbox process while stopping
                errors[name] = "not rendered: the run was cancelled"
                continue
            try:
                outputs[name] = await self.lane.render(source.text, context)
            except Exception as e:
                outputs[name] = None
                errors[name] = f"cannot render: {_reason(e)}"
        return outputs, errors


class _Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


def _inline(source: SourceText | None) -> bool:
    return source is None or inline_expression(source.text)


def _reason(error: Exception) -> str:
    return error.message if isinstance(error, SandboxFailed) else str(error)


def _kind(value: Any) -> str:
    return "nothing (undefined)" if value is None else type(value).__name__


def _falls_back(error: RunError) -> bool:
    """The model gave up in a way another model may not: rate limited, unavailable,
    out of time, or too large for its limits. Not a rejected request or a bad reply."""
    return isinstance(error, RateLimited | ProviderUnavailable | AttemptTimeout | RequestTooLarge)


def _outcome_unknown(error: RunError) -> bool:
    """No answer came back: the request may have been processed (and billed)."""
    if isinstance(error, AttemptTimeout):
        return True
    return isinstance(error, ProviderUnavailable) and error.status is None


def _as_run_error(
    error: Exception, timeout: float, provider: str, response: Response | None
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
        return AttemptTimeout(f"no answer within the timeout of {timeout:g} s")
    # a provider that broke its contract: this attempt fails, the run goes on
    return RequestRejected(
        f"{provider}: unexpected {type(error).__name__}: {error}", provider=provider
    )


def providers_of(workflow: Workflow, mock: bool) -> list[str]:
    """Every provider a run may call, fallbacks included, in order of first use."""
    if mock:
        return ["mock"]
    return list(
        dict.fromkeys(llm.provider for agent in workflow.agents.values() for llm in agent.models)
    )
