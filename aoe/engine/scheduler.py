"""The scheduler: one run of a workflow, from its first ready agent to its end.

An agent becomes ready the moment its dependencies allow (its
``trigger_rule``), never level by level; ready work waits in a heap ordered
by the longest remaining path, so the critical path is never starved; at most
``max_parallel_agents`` units of a run are in flight. A ``foreach`` agent's
items are separate units in the same heap. Each unit runs in a task of its
own (:mod:`aoe.engine.unit`); when it ends, the scheduler gives its agent a
final state, decides the dependents and starts the next units in the same
step of the loop. Bookkeeping runs on the event loop without recursion, so a
finished call costs a few dictionary and heap operations whatever the size of
the graph.

A failure stops the run unless it allows partial completion (nothing new
starts; calls in flight finish); cancellation stops it at once. Whatever
never ran gets its final state at the end, with the reason.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Mapping
from typing import Any, Protocol

from aoe.config.settings import Settings
from aoe.engine.admission import Admission, Prices
from aoe.engine.agents import AgentRun, agents_of
from aoe.engine.attempt import Attempts
from aoe.engine.context import context_of, render_outputs
from aoe.engine.foreach import Start, inline, refusal, start_here, start_in_sandbox
from aoe.engine.resumption import Resumption, restore
from aoe.engine.unit import Units
from aoe.events import (
    AgentFinished,
    AgentStarted,
    AgentState,
    EventBus,
    RunFinished,
    RunStarted,
    RunStatus,
)
from aoe.format.workflow import Agent, Workflow
from aoe.policy.costs import DailySpend, Ledger
from aoe.policy.limits import Clock, RateLimiter
from aoe.providers import ProviderPool
from aoe.sandbox.pool import Sandbox
from aoe.state.cache import ResponseCache


class Shared(Protocol):
    """What a run is handed by its engine (:class:`aoe.engine.engine.Engine`),
    shared with the engine's other runs."""

    settings: Settings
    providers: ProviderPool
    limiter: RateLimiter
    spend: DailySpend | None
    clock: Clock
    rng: random.Random
    sandbox: Sandbox


class Run:
    """One run: its agents, its ready units and those in flight, how it ends."""

    def __init__(
        self,
        engine: Shared,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        bus: EventBus,
        run_id: str,
        *,
        max_parallel: int | None = None,
        budget: float | None = None,
        mock: bool = False,
        mock_limits: bool = False,
        cache: ResponseCache | None = None,
        max_units: int | None = None,
        max_reply_bytes: int | None = None,
    ) -> None:
        """See :meth:`Engine.run` for what the keywords mean."""
        self.workflow = workflow
        self.inputs = dict(inputs)
        self.bus = bus
        self.run_id = run_id
        self.free = max_parallel or workflow.max_parallel_agents
        self.max_parallel = self.free
        costs = engine.settings.config.cost_tracking
        run_limit = budget if budget is not None else workflow.cost_budget
        if run_limit is None:
            run_limit = costs.default_workflow_budget
        self.ledger = Ledger(run_limit, "the run's cost_budget")
        self.agents = agents_of(workflow, costs.default_agent_budget)
        self.order = {agent_id: i for i, agent_id in enumerate(workflow.graph.topological_order())}
        # ready units: (-priority, order, item or -1, agent) — longest remaining path first
        self.ready: list[tuple[float, int, int, AgentRun]] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = False  # fail-fast: nothing new starts
        self.cancelled = False
        self.crashed: BaseException | None = None  # a bug ended the run
        self.run_budget_hit = False
        self.done: asyncio.Future[None] | None = None
        self.started = 0.0
        self.session = 1
        self.restored: list[AgentRun] = []
        self.lane = engine.sandbox.lane()  # templates that need the sandbox, one at a time
        self.units = len(workflow.agents)  # agents, and foreach items beyond one each
        self.max_units = max_units
        self.admission = Admission(
            run_id,
            bus,
            self.ledger,
            Prices(engine.settings, mock),
            limiter=engine.limiter,
            spend=engine.spend,
            workflow=workflow.name,
            rehearsal=mock and mock_limits,
        )
        attempts = Attempts(
            self.admission,
            engine.providers,
            self.lane,
            mock=mock,
            cache=cache,
            max_reply_bytes=max_reply_bytes,
        )
        self.calls = Units(
            attempts, engine.settings.config.retry_policy, engine.rng, engine.clock.sleep
        )

    def resume(self, resumption: Resumption) -> None:
        """Start from a run's record: completed agents keep their outputs, and what
        was spent counts against the run's budget and each agent's limit."""
        self.session = resumption.session
        self.ledger.spent = resumption.spent
        self.admission.cost = resumption.spent
        self.admission.usage = resumption.usage
        self.restored = restore(self.agents, resumption)

    # -- the run -------------------------------------------------------------------
    async def execute(self) -> RunStatus:
        self.done = asyncio.get_running_loop().create_future()
        self.started = time.perf_counter()
        self.bus.emit(
            RunStarted(
                run_id=self.run_id,
                at=time.time(),
                workflow=self.workflow.name,
                agents=len(self.agents),
                max_parallel=self.max_parallel,
                budget=self.ledger.limit,
                session=self.session,
                spent=self.ledger.spent,
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

    def crash(self, error: Exception) -> None:
        """A bug in a task of the run: nothing new starts, and the run ends with it."""
        self.stopping = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(error)

    async def finish(self) -> RunStatus:
        """Final states for what never ran, the run's status, outputs; RunFinished."""
        now = time.time()
        for record in self.agents.values():
            if record.state.final:
                continue
            started = record.started_at is not None
            if record.items is not None and started:
                record.output = record.items  # the items that finished were paid for: keep them
            state = AgentState.CANCELLED if started or self.cancelled else AgentState.SKIPPED
            self.end(record, state, self.unfinished(started), at=now, keep_output=True)
        status = self.status()
        outputs: dict[str, Any] = {}
        errors: dict[str, str] = {}
        if self.workflow.outputs:
            seen = self.context(None)
            outputs, errors = await render_outputs(
                self.workflow, seen, self.lane, cancelled=self.cancelled
            )
        self.bus.emit(
            RunFinished(
                run_id=self.run_id,
                at=now,
                status=status,
                duration=time.perf_counter() - self.started,
                usage=self.admission.usage,
                cost=self.admission.cost,
                budget=self.ledger.limit,
                outputs=outputs,
                output_errors=errors,
            )
        )
        return status

    def unfinished(self, started: bool) -> str:
        """Why an agent has no final state when the run ends."""
        if self.cancelled:
            return "the run was cancelled"
        if self.crashed is not None:
            return f"the run stopped: {self.crashed}"
        return "the run stopped after a failure before this agent " + (
            "finished" if started else "started"
        )

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
            # partial: some completed; a run in which none did failed, whatever it allows
            partial = self.workflow.allow_partial_completion and AgentState.COMPLETED in states
            return RunStatus.PARTIAL if partial else RunStatus.FAILED
        return RunStatus.COMPLETED

    # -- deciding and dispatching ------------------------------------------------------
    def decide(self, records: list[AgentRun]) -> None:
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

    def trigger(self, record: AgentRun) -> bool | None:
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

    def start(self, record: AgentRun) -> bool:
        """Evaluate ``when`` and ``foreach`` and queue the agent's units. False when it
        ended without a call (skipped by its condition, failed to evaluate, nothing to
        do): the caller then releases its dependents. An expression that is more than
        a name (compared with a literal) is evaluated in the sandbox, by a task of its
        own (:meth:`prepare`), and the agent counts as started meanwhile."""
        agent = record.agent
        if agent.when is None and agent.foreach is None:
            return self.queue(record, None)
        if not inline(agent):
            self.in_flight.add(asyncio.ensure_future(self.prepare(record)))
            return True
        return self.begin(record, start_here(agent, self.context(agent)))

    async def prepare(self, record: AgentRun) -> None:
        """:meth:`start` for an agent whose ``when`` or ``foreach`` needs the sandbox."""
        task = asyncio.current_task()
        try:
            start = await start_in_sandbox(record.agent, self.context(record.agent), self.lane)
            if not self.begin(record, start):
                self.decide(self.release(record))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, not a run error: the run ends with it
            self.crash(e)
            return
        finally:
            self.in_flight.discard(task)
        self.dispatch()

    def begin(self, record: AgentRun, start: Start) -> bool:
        """Act on what ``when`` and ``foreach`` said; False: the agent ended here."""
        if start.error is not None:
            self.fail(record, start.error)
            return False
        if start.skipped:
            self.end(record, AgentState.SKIPPED, "its when condition is false")
            return False
        return self.queue(record, start.items)

    def queue(self, record: AgentRun, items: list[Any] | None) -> bool:
        """Queue the agent's units: one, or one per ``foreach`` item not yet done.
        False when nothing is left to do (every item finished in an earlier session),
        or when there are too many items (the agent fails)."""
        if record.state.final or self.stopping:
            return True  # it ended meanwhile, or nothing new starts: finish() decides
        entry = (-record.priority, self.order[record.agent.id])
        if items is None:
            heapq.heappush(self.ready, (*entry, -1, record))
            return True
        refused = refusal(len(items), self.units, self.max_units)
        if refused is not None:
            self.fail(record, refused)
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

    def release(self, record: AgentRun) -> list[AgentRun]:
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
                        run_id=self.run_id,
                        at=time.time(),
                        agent_id=record.agent.id,
                        items=len(record.items) if record.items is not None else None,
                    )
                )
            self.in_flight.add(asyncio.ensure_future(self.unit(record, item)))
        if not self.in_flight and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def unit(self, record: AgentRun, item: int) -> None:
        """One unit in its own task. When it ends, the next units start from here, in
        the same step of the loop: a dependent waits for no extra round."""
        task = asyncio.current_task()
        try:
            index = None if item < 0 else item
            ended = await self.calls.run(record, index, self.context(record.agent, index))
            if ended.state is AgentState.COMPLETED:
                self.succeed(record, index, ended.output)
            else:
                assert ended.error is not None
                self.run_budget_hit = self.run_budget_hit or ended.run_budget
                self.fail(record, ended.error, ended.state, decide=True)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, not a run error: the run ends with it
            self.crash(e)
            return
        finally:
            self.in_flight.discard(task)
            self.free += 1
        self.dispatch()

    # -- final states ------------------------------------------------------------------
    def succeed(self, record: AgentRun, item: int | None, output: Any) -> None:
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
        record: AgentRun,
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
        record: AgentRun,
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
                run_id=self.run_id,
                at=at or time.time(),
                agent_id=record.agent.id,
                state=state,
                duration=duration,
                usage=record.usage,
                cost=record.cost,
                attempts=record.attempts,
                output=output,
                error=error,
                resumed=resumed,
                truncated=record.truncated and output is not None,
            )
        )

    def context(self, agent: Agent | None, item: int | None = None) -> dict[str, Any]:
        """What the templates of ``agent`` (a unit's, with ``item``) see now."""
        return context_of(self.agents, self.inputs, self.workflow, agent, item)
