"""The asyncio executor: one :class:`Engine`, many runs, each a DAG of agents.

Scheduling (engine.md): an agent becomes ready the moment its dependencies
allow (its ``trigger_rule``), never level by level; ready work waits in a heap
ordered by the longest remaining path, so the critical path is never starved;
at most ``max_parallel_agents`` calls of a run are in flight and at most
``max_concurrent_workflows`` runs share an engine. A ``foreach`` agent's items
are separate units of work in the same heap.

Bookkeeping happens in done-callbacks on the event loop, so a finished call
costs a few dictionary and heap operations, whatever the size of the graph.

Every attempt passes two seams, :meth:`_Run.admit` before the call and
:meth:`_Run.settle` after it: rate limits and budgets (next release) plug in
there, and nowhere else.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aoe.config import Settings
from aoe.engine.events import (
    AgentFinished,
    AgentStarted,
    AgentState,
    AttemptFinished,
    AttemptStarted,
    EventBus,
    RunFinished,
    RunStarted,
    RunStatus,
)
from aoe.errors import AttemptTimeout, RunError
from aoe.outputs import parse_output
from aoe.providers import ProviderPool
from aoe.providers.base import Message, Request, Response, Usage
from aoe.templates import evaluate, render
from aoe.workflow import Agent, SourceText, Workflow

_JSON_INSTRUCTION = "Answer with one JSON value and nothing else: no prose, no code fences."


def new_run_id() -> str:
    """A short, sortable, unique id: UTC time then randomness."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


class Engine:
    """Runs workflows with shared providers and a limit on runs at once."""

    def __init__(self, settings: Settings, providers: ProviderPool | None = None) -> None:
        self.settings = settings
        self.providers = providers or ProviderPool(settings)
        self._slots: asyncio.Semaphore | None = None

    async def run(
        self,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        bus: EventBus,
        *,
        run_id: str | None = None,
        max_parallel: int | None = None,
        mock: bool = False,
    ) -> RunStatus:
        """Run a workflow to its end; the events on ``bus`` tell how it went."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.config.engine.max_concurrent_workflows)
        run = _Run(self, workflow, inputs, bus, run_id or new_run_id(), max_parallel, mock)
        async with self._slots:
            return await run.execute()

    async def aclose(self) -> None:
        await self.providers.aclose()


class _AgentRun:
    """One agent's state during a run."""

    __slots__ = (
        "agent",
        "attempts",
        "cost",
        "dependents",
        "error",
        "finished_at",
        "foreach",
        "items",
        "items_left",
        "output",
        "priority",
        "started_at",
        "state",
        "undecided",
        "usage",
    )

    def __init__(self, agent: Agent, priority: float) -> None:
        self.agent = agent
        self.priority = priority
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
        self.finished_at: float | None = None


class _Run:
    def __init__(
        self,
        engine: Engine,
        workflow: Workflow,
        inputs: Mapping[str, Any],
        bus: EventBus,
        run_id: str,
        max_parallel: int | None,
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
        remaining = workflow.graph.remaining_path()
        self.agents = {
            agent_id: _AgentRun(agent, remaining[agent_id])
            for agent_id, agent in workflow.agents.items()
        }
        for record in self.agents.values():
            for dep in record.agent.depends_on:
                self.agents[dep].dependents.append(record)
        self.order = {agent_id: i for i, agent_id in enumerate(workflow.graph.topological_order())}
        # ready units: (-priority, order, item, agent) — the longest remaining path first
        self.ready: list[tuple[float, int, int, _AgentRun]] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.stopping = False  # fail-fast: nothing new starts
        self.cancelled = False
        self.crashed = False  # a bug ended the run: it failed, whatever the agents did
        self.unfinished = len(self.agents)
        self.done: asyncio.Future[None] | None = None
        self.usage = Usage()
        self.cost = 0.0
        self.started = 0.0

    # -- the run -------------------------------------------------------------------
    async def execute(self) -> RunStatus:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        self.started = time.perf_counter()
        self.bus.emit(
            RunStarted(
                self.run_id, time.time(), self.workflow.name, len(self.agents), self.max_parallel
            )
        )
        self.decide([r for r in self.agents.values() if r.undecided == 0])
        self.dispatch()
        try:
            await self.done
        except asyncio.CancelledError:
            await self.cancel()
            raise
        finally:
            status = self.finish()
        return status

    async def cancel(self) -> None:
        """Stop now: cancel the calls in flight and wait until they are gone."""
        self.cancelled = True
        self.stopping = True
        self.ready.clear()
        tasks = list(self.in_flight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def finish(self) -> RunStatus:
        """Final states for what never ran, the run's status, outputs; RunFinished."""
        now = time.time()
        final_state = AgentState.CANCELLED if self.cancelled else AgentState.SKIPPED
        for record in self.agents.values():
            if not record.state.final:
                started = record.started_at is not None
                reason = (
                    "the run was cancelled"
                    if self.cancelled
                    else (
                        "the run stopped after a failure before this agent finished"
                        if started
                        else "the run stopped after a failure before this agent started"
                    )
                )
                state = AgentState.CANCELLED if started or self.cancelled else final_state
                self.end(record, state, error=reason, at=now)
        states = [r.state for r in self.agents.values()]
        if self.cancelled:
            status = RunStatus.CANCELLED
        elif self.crashed:
            status = RunStatus.FAILED
        elif AgentState.BUDGET_EXCEEDED in states and not self.workflow.allow_partial_completion:
            status = RunStatus.BUDGET_EXCEEDED
        elif any(state.failure for state in states):
            status = (
                RunStatus.PARTIAL if self.workflow.allow_partial_completion else RunStatus.FAILED
            )
        else:
            status = RunStatus.COMPLETED
        outputs, errors = self.render_outputs()
        self.bus.emit(
            RunFinished(
                self.run_id,
                now,
                status,
                time.perf_counter() - self.started,
                self.usage,
                self.cost,
                outputs,
                errors,
            )
        )
        return status

    # -- deciding and dispatching ------------------------------------------------------
    def decide(self, records: list[_AgentRun]) -> None:
        """Agents whose dependencies all reached a final state (or that can already
        tell they will be skipped): skip them, or queue their work."""
        work = list(records)
        while work:
            record = work.pop()
            if record.state is not AgentState.PENDING:
                continue
            if self.stopping:
                continue  # everything not started is skipped at the end
            verdict = self.trigger(record)
            if verdict is None:
                continue  # not yet
            if verdict:
                verdict = self.start(record)
            if not verdict:
                work.extend(self.release(record))

    def trigger(self, record: _AgentRun) -> bool | str | None:
        """True: may start; a reason string: skipped; None: wait for more dependencies."""
        agent = record.agent
        deps = [self.agents[d] for d in agent.depends_on]
        rule = agent.trigger_rule
        if rule == "all_completed":
            failed = next(
                (d for d in deps if d.state.final and d.state is not AgentState.COMPLETED), None
            )
            if failed is not None:
                self.end(
                    record,
                    AgentState.SKIPPED,
                    error=f"{failed.agent.id} did not complete ({failed.state})",
                )
                return False
            return True if record.undecided == 0 else None
        if record.undecided:
            return None
        if (
            rule == "any_completed"
            and deps
            and not any(d.state is AgentState.COMPLETED for d in deps)
        ):
            self.end(record, AgentState.SKIPPED, error="none of its dependencies completed")
            return False
        return True

    def start(self, record: _AgentRun) -> bool:
        """Evaluate ``when`` and ``foreach`` and queue the agent's units; False if it
        ended without a call (skipped by its condition, or failed to evaluate)."""
        agent = record.agent
        context = self.context(agent) if agent.when or agent.foreach else {}
        if agent.when is not None:
            try:
                go = _evaluate(agent.when, context)
            except Exception as e:
                self.fail_agent(record, f"its when condition could not be evaluated: {e}")
                return False
            if not go:
                self.end(record, AgentState.SKIPPED, error="its when condition is false")
                return False
        entry = (-record.priority, self.order[agent.id])
        if agent.foreach is None:
            heapq.heappush(self.ready, (*entry, -1, record))
            return True
        try:
            items = _evaluate(agent.foreach, context)
        except Exception as e:
            self.fail_agent(record, f"its foreach expression could not be evaluated: {e}")
            return False
        if not isinstance(items, list | tuple):
            self.fail_agent(
                record, f"its foreach expression gave {type(items).__name__}, not a list"
            )
            return False
        record.foreach = list(items)
        record.items = [None] * len(items)
        record.items_left = len(items)
        if not items:
            record.output = []
            self.complete(record)
            return False
        for index in range(len(items)):
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
        """Start queued units while slots are free."""
        while self.free and self.ready and not self.stopping:
            _, _, item, record = heapq.heappop(self.ready)
            if record.state.final:
                continue  # its agent already failed: the rest of its items never run
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
        """One unit in its own task. When it ends, the next units start from here,
        in the same step of the loop: a dependent waits for no extra round."""
        task = asyncio.current_task()
        try:
            await self.run_unit(record, None if item < 0 else item)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug, not a run error: the run ends with it
            self.stopping = self.crashed = True
            if self.done is not None and not self.done.done():
                self.done.set_exception(e)
            return
        finally:
            self.in_flight.discard(task)
            self.free += 1
        self.dispatch()

    # -- one unit of work ----------------------------------------------------------------
    async def run_unit(self, record: _AgentRun, item: int | None) -> None:
        agent = record.agent
        try:
            context = self.context(agent, item)
            request = self.request(agent, context)
        except Exception as e:
            self.fail_agent(record, f"its prompt could not be rendered: {e}")
            return
        record.attempts += 1
        attempt = record.attempts
        provider = self.engine.providers.get(request.provider)
        self.bus.emit(
            AttemptStarted(
                self.run_id, time.time(), agent.id, item, attempt, request.provider, request.model
            )
        )
        await self.admit(agent, request)
        began = time.perf_counter()
        response: Response | None = None
        error: RunError | None = None
        try:
            async with asyncio.timeout(agent.timeout):  # no extra task, unlike wait_for
                response = await provider.complete(request)
        except TimeoutError:
            error = AttemptTimeout(f"no answer within the timeout of {agent.timeout:g} s")
        except RunError as e:
            error = e
        except asyncio.CancelledError:
            self.settle(
                record,
                request,
                None,
                item,
                attempt,
                time.perf_counter() - began,
                "cancelled",
                "cancelled",
            )
            raise
        output: Any = None
        if response is not None:
            try:
                output = parse_output(response.text, agent.output)
            except RunError as e:
                error = e
        self.settle(
            record,
            request,
            response,
            item,
            attempt,
            time.perf_counter() - began,
            error.message if error else None,
            type(error).__name__ if error else None,
        )
        if error is not None:
            self.fail_agent(record, error.message, _state_for(error))
        elif item is None:
            record.output = output
            self.complete(record)
        elif not record.state.final:
            assert record.items is not None
            record.items[item] = output
            record.items_left -= 1
            if record.items_left == 0:
                record.output = record.items
                self.complete(record)

    async def admit(self, agent: Agent, request: Request) -> None:
        """Where an attempt is admitted: rate limits and the budget reservation
        (next release) wait or refuse here. Today every attempt is admitted."""

    def settle(
        self,
        record: _AgentRun,
        request: Request,
        response: Response | None,
        item: int | None,
        attempt: int,
        duration: float,
        error: str | None,
        error_kind: str | None,
    ) -> None:
        """Where an attempt is settled: its usage and cost counted, the event told."""
        usage = response.usage if response is not None else Usage()
        price = self.settings.price_of(record.agent.llm.provider, request.model)
        if price is None and self.mock:
            price = self.settings.price_of("mock", request.model)
        cost = price.cost(*usage) if price is not None else 0.0
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
                attempt,
                request.provider,
                response.model if response is not None else request.model,
                duration,
                usage,
                cost,
                error,
                error_kind,
                response.finish_reason if response else None,
            )
        )

    # -- final states ------------------------------------------------------------------
    def complete(self, record: _AgentRun) -> None:
        self.end(record, AgentState.COMPLETED)
        self.decide(self.release(record))

    def fail_agent(
        self, record: _AgentRun, error: str, state: AgentState = AgentState.FAILED
    ) -> None:
        if record.state.final:
            return  # another item of the same foreach agent failed first
        self.end(record, state, error=error)
        if not self.workflow.allow_partial_completion:
            self.stopping = True  # in-flight calls finish; nothing new starts
            self.ready.clear()
        else:
            self.decide(self.release(record))

    def end(
        self,
        record: _AgentRun,
        state: AgentState,
        *,
        error: str | None = None,
        at: float | None = None,
    ) -> None:
        record.state = state
        record.error = error
        now = time.perf_counter()
        record.finished_at = now
        self.unfinished -= 1
        duration = now - record.started_at if record.started_at is not None else 0.0
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
                record.output if state is AgentState.COMPLETED else None,
                error,
            )
        )

    # -- templates -----------------------------------------------------------------------
    def context(self, agent: Agent | None, item: int | None = None) -> dict[str, Any]:
        """What templates see: inputs, the agent's dependencies (every agent for the
        workflow's outputs), the workflow's name, and a foreach unit's item."""
        names = agent.depends_on if agent is not None else tuple(self.agents)
        context: dict[str, Any] = {
            "inputs": self.inputs,
            "agents": {
                name: {
                    "output": self.agents[name].output
                    if self.agents[name].state is AgentState.COMPLETED
                    else None,
                    "status": str(self.agents[name].state),
                }
                for name in names
            },
            "workflow": {"name": self.workflow.name},
        }
        if agent is not None and item is not None:
            context["item"] = self.agents[agent.id].foreach[item]
            context["index"] = item
        return context

    def request(self, agent: Agent, context: Mapping[str, Any]) -> Request:
        messages: list[Message] = []
        system = _render(agent.system, context) if agent.system is not None else None
        if agent.output.format == "json":
            system = f"{system}\n\n{_JSON_INSTRUCTION}" if system else _JSON_INSTRUCTION
        if system:
            messages.append(Message("system", system))
        messages.append(Message("user", _render(agent.prompt, context)))
        llm = agent.llm
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
        )

    def render_outputs(self) -> tuple[dict[str, Any], dict[str, str]]:
        outputs: dict[str, Any] = {}
        errors: dict[str, str] = {}
        if not self.workflow.outputs:
            return outputs, errors
        context = self.context(None)
        for name, source in self.workflow.outputs.items():
            try:
                outputs[name] = _render(source, context)
            except Exception as e:
                outputs[name] = None
                errors[name] = f"cannot render: {e}"
        return outputs, errors


def _render(source: SourceText, context: Mapping[str, Any]) -> str:
    return render(source.text, context)


def _evaluate(source: SourceText, context: Mapping[str, Any]) -> Any:
    return evaluate(source.text, context)


def _state_for(error: RunError) -> AgentState:
    from aoe.errors import RateLimited

    return AgentState.RATE_LIMITED if isinstance(error, RateLimited) else AgentState.FAILED
