"""The runs of one ``aoe serve`` process: one engine, its run slots, the runs
submitted and waiting for one, and the figures ``/health`` reports.

Runs are submitted over HTTP (:mod:`aoe.service.app`) and run in this process,
on one shared engine (so its rate limits and its limit on runs,
``MAX_CONCURRENT_WORKFLOWS``, hold across them), each recorded in the run store
like ``aoe run``'s. A run here is a :class:`LiveRun`: its task, its recent
events and the SSE clients that follow them. With Redis configured, runs go on
the work queue instead (:class:`aoe.service.shared.Shared`), and this module
only counts and drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aoe.engine.engine import new_run_id
from aoe.events import Event, RunFinished, RunStarted
from aoe.observe.health import Health, HealthMonitor
from aoe.observe.metrics import Metrics, health_value
from aoe.service.models import Refused, Submission
from aoe.service.options import API, ServeOptions
from aoe.service.wiring import engine_for

if TYPE_CHECKING:
    from aoe.config.settings import Settings
    from aoe.service.shared import Shared
    from aoe.state.store import Store

log = logging.getLogger("aoe.serve")

LOADING_QUEUE = 8  # submissions waiting to be parsed; beyond, 429 (each holds its body)
KEEP_EVENTS = 10_000  # events of a live run kept for listeners who come late
LAGGED = object()  # put to a listener too slow to keep up
END = object()  # put to every listener when the run ends


class Listener:
    """One SSE client of a live run: a bounded queue of events."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=KEEP_EVENTS)

    def put(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:  # it fell too far behind: tell it, and stop
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(LAGGED)


class LiveRun:
    """A run of this service, queued or running: its task, its recent events
    and who listens to them. A subscriber of the run's events."""

    def __init__(self, run_id: str, workflow: str) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.task: asyncio.Task[Any] | None = None
        self.started = False
        self.finished = False
        self.submitted = time.time()
        self.log: deque[Event] = deque(maxlen=KEEP_EVENTS)
        self.listeners: set[Listener] = set()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.started = True
        elif isinstance(event, RunFinished):
            self.finished = True
            log.info(
                "run %s of %s ended %s in %.1f s: %s tokens, $%.6f",
                self.run_id,
                self.workflow,
                event.status,
                event.duration,
                f"{event.usage.total:,}",
                event.cost,
            )
        self.log.append(event)
        for listener in self.listeners:
            listener.put(event)

    def end(self) -> None:
        self.finished = True
        for listener in self.listeners:
            listener.put(END)

    @property
    def state(self) -> str:
        return "finished" if self.finished else "running" if self.started else "queued"


class Service:
    """The runs of one ``aoe serve`` process and what it knows about them."""

    def __init__(self, settings: Settings, store: Store, options: ServeOptions) -> None:
        self.settings = settings
        self.store = store
        self.options = options
        self.engine = engine_for(settings)
        self.limit = settings.config.engine.max_concurrent_workflows
        self.monitor = HealthMonitor()
        self.metrics = Metrics() if options.metrics else None
        self.live: dict[str, LiveRun] = {}
        self.loading = asyncio.Semaphore(1)  # submitted workflows parsed one at a time
        self.waiting = 0  # submissions waiting to be parsed (each holds its body)
        self.draining = False
        self.stopped = asyncio.Event()
        # with Redis: runs go on its queue, and are reported from its records
        self.shared: Shared | None = None
        if settings.config.redis.configured:
            subscribers: list[Callable[[Event], None]] = [self.monitor]
            if self.metrics is not None:
                subscribers.append(self.metrics)
            from aoe.service.shared import Shared  # (redis, imported only when configured)

            self.shared = Shared(settings, store, options, self.engine, subscribers)

    def warm_up(self) -> list[str]:
        """Make the clients of every provider that has its key, before serving: a
        vendor SDK's import takes ~1 s and would block the first runs' loop."""
        from aoe.providers import missing_keys

        names = ["openai", "anthropic", *self.settings.config.providers]
        ready = [name for name in names if not missing_keys([name], self.settings)]
        for name in ready:
            self.engine.providers.get(name)
        return ready

    # -- figures ---------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        """Runs in progress and runs waiting for a slot (with Redis: runs of this
        instance's worker, and runs in the queue that no worker has taken)."""
        if self.shared is not None:
            return self.shared.counts()
        active = sum(1 for live in self.live.values() if live.started and not live.finished)
        queued = sum(1 for live in self.live.values() if not live.started and not live.finished)
        return active, queued

    def health(self) -> Health:
        active, queued = self.counts()
        health = self.monitor.check(
            active=active,
            limit=self.limit,
            queued=queued,
            queue_limit=self.options.queue_limit,
            draining=self.draining,
            problem=None if self.shared is None else self.shared.problem(),
            shared_queue=self.shared is not None,
        )
        if self.metrics is not None:
            self.metrics.health.set(health_value(health.status))
            self.metrics.queued.set(queued)
        return health

    # -- runs ------------------------------------------------------------------------
    async def submit(self, body: Submission) -> dict[str, Any]:
        """Check a submission and start it (with Redis: queue it); raises
        :class:`Refused` or a UserError."""
        from aoe.errors import MissingApiKey
        from aoe.providers import missing_keys
        from aoe.service.runner import bind, load_text, providers_used

        if self.draining:
            raise Refused(503, "the service is shutting down: submit to another instance")
        if self.counts()[1] >= self.options.queue_limit:
            raise Refused(429, f"{self.options.queue_limit} runs are waiting already: retry later")
        text, inputs, name = body.workflow, body.inputs, body.name
        options = {
            "budget": body.budget,
            "max_parallel": body.max_parallel,
            "mock": body.mock,
            "mock_limits": body.mock_limits,
            "cache": body.cache,
            "max_units": self.options.max_agents,
            "max_reply_bytes": self.options.max_reply_bytes,
        }
        # parsing and checking a workflow of up to --max-body bytes takes a while:
        # not on the event loop, which answers the probes and the other clients;
        # and one at a time (a dense file of 512 KiB peaks at ~60 MB as it is parsed)
        if self.waiting >= LOADING_QUEUE:
            raise Refused(429, f"{LOADING_QUEUE} submissions are being read already: retry later")
        self.waiting += 1
        try:
            async with self.loading:
                workflow = await asyncio.to_thread(load_text, text, name, self.settings, body.files)
        finally:
            self.waiting -= 1
        if len(workflow.agents) > self.options.max_agents:
            raise Refused(
                400,
                f"the workflow has {len(workflow.agents):,} agents; this service runs at most "
                f"{self.options.max_agents:,} agents and foreach items in one run (--max-agents)",
            )
        values = bind(workflow, inputs, "the submitted inputs")
        if not options["mock"] and (self.shared is None or self.options.worker):
            # (an instance that runs nothing need not hold the keys)
            missing = missing_keys(providers_used(workflow), self.settings)
            if missing:
                raise MissingApiKey(missing)
        if self.shared is not None:
            return await self.shared.submit(text, name, workflow, inputs, options)
        run_id = new_run_id()
        live = LiveRun(run_id, workflow.name)
        self.live[run_id] = live
        live.task = asyncio.get_running_loop().create_task(
            self._run(live, workflow, values, options), name=f"aoe-run-{run_id}"
        )
        return {"run_id": run_id, "status": "queued", "url": f"{API}/runs/{run_id}"}

    async def resume(self, run_id: str, budget: float | None = None) -> dict[str, Any]:
        """Resume a run of this service's store that did not complete (failed,
        cancelled, stopped by its budget, or interrupted): its completed agents
        are kept, the others run. Raises :class:`Refused` (404, 409, 503)."""
        from aoe.errors import ResumeRefused, RunNotFound
        from aoe.service.resume import plan_resume

        if self.draining:
            raise Refused(503, "the service is shutting down: resume it on another instance")
        if run_id in self.live:
            raise Refused(409, f"run {run_id} is running here already")
        changes = {} if budget is None else {"budget": budget}
        try:
            plan = await asyncio.to_thread(
                plan_resume, self.store, run_id, self.settings, options=changes
            )
        except RunNotFound:  # (gone since the route found it; the store's path is not told)
            raise Refused(404, f"no run {run_id}") from None
        except ResumeRefused as e:
            raise Refused(409, str(e)) from None
        if plan.done:
            raise Refused(409, f"run {plan.run_id} completed: there is nothing to resume")
        if plan.run_id in self.live:  # (a prefix was given)
            raise Refused(409, f"run {plan.run_id} is running here already")
        live = LiveRun(plan.run_id, plan.workflow.name)
        self.live[plan.run_id] = live
        options = {
            **plan.options,
            "max_units": self.options.max_agents,
            "max_reply_bytes": self.options.max_reply_bytes,
        }
        live.task = asyncio.get_running_loop().create_task(
            self._run(live, plan.workflow, plan.inputs, options, resume=plan),
            name=f"aoe-run-{plan.run_id}",
        )
        return {"run_id": plan.run_id, "status": "resuming", "url": f"{API}/runs/{plan.run_id}"}

    async def _run(
        self,
        live: LiveRun,
        workflow: Any,
        values: dict[str, Any],
        options: dict[str, Any],
        resume: Any = None,
    ) -> None:
        from aoe.service.runner import RunOptions, run_workflow

        subscribers: list[Callable[[Event], None]] = [live, self.monitor]
        if self.metrics is not None:
            subscribers.append(self.metrics)
        try:
            await run_workflow(
                workflow,
                values,
                self.settings,
                RunOptions.from_record(options, run_id=live.run_id),
                subscribers=subscribers,
                store=self.store,
                engine=self.engine,
                resume=resume,
            )
        except asyncio.CancelledError:
            if not live.started and resume is None:  # cancelled in the queue: its record says so
                with contextlib.suppress(Exception):
                    self.store.mark_cancelled(live.run_id)
        except Exception as e:  # a run's failure (its store, a bug) must not stop the others
            with contextlib.suppress(Exception):
                self.store.mark_cancelled(live.run_id)
            log.error("run %s stopped: %s", live.run_id, e, extra={"run_id": live.run_id})
        finally:
            live.end()
            self.live.pop(live.run_id, None)
            if self.draining and not self.live:
                self.stopped.set()

    def cancel(self, run_id: str) -> bool:
        live = self.live.get(run_id)
        if live is None or live.task is None or live.finished:
            return False
        live.task.cancel()
        return True

    async def drain(self) -> None:
        """No new runs; cancel those in progress and wait until they are recorded."""
        self.draining = True
        tasks = [live.task for live in self.live.values() if live.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.shared is not None:
            await self.shared.aclose()
        await self.engine.aclose()
