"""``aoe serve``: a long-running service with ``/health``, ``/metrics`` and an API.

Runs are submitted over HTTP and run in this process, on one shared engine (so
its rate limits and its limit on runs, ``MAX_CONCURRENT_WORKFLOWS``, hold
across them), each recorded in the run store like ``aoe run``'s. Routes:

- ``GET /health`` — healthy / degraded / unhealthy with the reason
  (:mod:`aoe.observe.health`); 200, or 503 when unhealthy. ``GET /health/live``: 200
  while the process serves at all (a liveness probe).
- ``GET /metrics`` — Prometheus metrics (:mod:`aoe.observe.metrics`), unless
  ``ENABLE_METRICS`` is off.
- ``POST /api/v1/runs`` — submit ``{"workflow": YAML, "inputs": {...}}``
  (optionally ``name``, ``budget``, ``max_parallel``, ``mock``, ``cache``):
  202 with the run id; 400 with the diagnostics of ``aoe validate`` for a
  workflow or inputs that are wrong, or naming the field that is; 408 for a
  body slower than ``--body-timeout``; 413 for a body over the limit; 429 when
  the queue is full; 503 while draining.
- ``GET /api/v1/runs`` (``?status=&workflow=&limit=``), ``GET
  /api/v1/runs/{id}`` (with its agents), ``GET /api/v1/runs/{id}/events``
  (Server-Sent Events: what happened so far, then live until the run ends),
  ``POST /api/v1/runs/{id}/cancel``.

With Redis configured (:class:`Shared`), a submission goes on the work queue
(:mod:`aoe.service.worker`) instead; a worker in this process (unless ``--no-worker``)
and every ``aoe worker`` run what is queued, and every replica answers for
every run from its record in Redis (:mod:`aoe.redis.records`): get, list,
events (recorded, then live from its journal) and cancel (a key its worker
polls). A full queue makes ``/health`` degraded and submissions 429; Redis
unreachable makes it unhealthy and the API 503.

Bodies and answers are strict JSON, bodies checked by pydantic models
(:mod:`aoe.service.models`); connections are capped and held to deadlines so
that slow clients cannot take the service down (:mod:`aoe.service.connections`).

It binds 127.0.0.1 unless told otherwise; binding any other address needs a
bearer token (``AOE_API_TOKEN``), which every ``/api/`` request must then carry
(compared in constant time). SIGTERM (or SIGINT) drains: new runs are refused,
``/health`` turns unhealthy, runs in progress are cancelled — their finished
agents are recorded and they can be resumed with ``aoe resume`` — and the
process exits once they are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import signal
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import web

from aoe.engine.executor import new_run_id
from aoe.errors import (
    DiagnosticsError,
    OptionInvalid,
    RedisFailed,
    RedisUnreachable,
    RunNotFound,
    Signal,
    UserError,
)
from aoe.events import Event, RunFinished, RunStarted, event_dict
from aoe.observe.health import Health, HealthMonitor
from aoe.observe.metrics import Metrics, health_value
from aoe.redis.client import text as reply_text
from aoe.service.connections import (
    Connection,
    Gate,
    Limits,
    Site,
    default_max_connections,
    descriptor_limit,
    most_connections,
)
from aoe.service.models import BodyInvalid, Submission, dumps, parse_body, runs_query, submission
from aoe.service.wiring import engine_for

if TYPE_CHECKING:
    from aoe.config.settings import Settings
    from aoe.redis.copies import SharedRecord
    from aoe.state.rows import RunRow
    from aoe.state.store import Store

log = logging.getLogger("aoe.serve")

API = "/api/v1"
MAX_BODY = 512 << 10  # bytes of a request body: a workflow, its files and inputs
MAX_AGENTS = 5_000  # agents and foreach items of one submitted run: ~6 KB each as it runs
LOADING_QUEUE = 8  # submissions waiting to be parsed; beyond, 429 (each holds its body)
MAX_REPLY_BYTES = 16 << 20  # characters of one run's replies: kept in its events and record
KEEP_EVENTS = 10_000  # events of a live run kept for listeners who come late
HEARTBEAT = 15.0  # seconds between SSE comments on a quiet stream
SEEN_RUNS = 10_000  # runs whose journal position in Redis a service remembers
MOST_SECONDS = 86_400.0  # the longest a client may be given for anything
_LAGGED = object()  # a listener too slow to keep up
_END = object()


class ServeOptions(NamedTuple):
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_body: int = MAX_BODY
    max_agents: int = MAX_AGENTS
    max_reply_bytes: int = MAX_REPLY_BYTES
    queue_limit: int = 1000  # runs waiting for a slot before new ones are refused
    metrics: bool = True
    worker: bool = True  # with Redis: run queued runs here too, not only take them
    max_connections: int | None = None  # None: derived from the descriptor limit
    header_timeout: float = 10.0  # seconds for a request's line and headers
    body_timeout: float = 30.0  # seconds for a request's body
    idle_timeout: float = 75.0  # seconds a keep-alive connection may wait between requests


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Listener:
    """One SSE client of a live run: a bounded queue of events."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=KEEP_EVENTS)

    def put(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:  # it fell too far behind: tell it, and stop
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(_LAGGED)


class _Live:
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
        self.listeners: set[_Listener] = set()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.started = True
        elif isinstance(event, RunFinished):
            self.finished = True
        self.log.append(event)
        for listener in self.listeners:
            listener.put(event)

    def end(self) -> None:
        self.finished = True
        for listener in self.listeners:
            listener.put(_END)

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
        self.live: dict[str, _Live] = {}
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
            self.shared = Shared(self, subscribers)

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
        from aoe.format.inputs import GivenInput, bind_inputs
        from aoe.providers import missing_keys
        from aoe.service.runner import load_text, providers_used

        if self.draining:
            raise Refused(503, "the service is shutting down: submit to another instance")
        if self.counts()[1] >= self.options.queue_limit:
            raise Refused(429, f"{self.options.queue_limit} runs are waiting already: retry later")
        text, inputs, name = body.workflow, body.inputs, body.name
        options = {
            "budget": body.budget,
            "max_parallel": body.max_parallel,
            "mock": body.mock,
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
                workflow = await asyncio.to_thread(load_text, text, name, self.settings)
        finally:
            self.waiting -= 1
        if len(workflow.agents) > self.options.max_agents:
            raise Refused(
                400,
                f"the workflow has {len(workflow.agents):,} agents; this service runs at most "
                f"{self.options.max_agents:,} agents and foreach items in one run (--max-agents)",
            )
        values = bind_inputs(
            workflow.inputs,
            {key: GivenInput(value, "the submitted inputs") for key, value in inputs.items()},
        )
        if not options["mock"] and (self.shared is None or self.options.worker):
            # (an instance that runs nothing need not hold the keys)
            missing = missing_keys(providers_used(workflow), self.settings)
            if missing:
                raise MissingApiKey(missing)
        if self.shared is not None:
            return await self.shared.submit(text, name, workflow, inputs, options)
        run_id = new_run_id()
        live = _Live(run_id, workflow.name)
        self.live[run_id] = live
        live.task = asyncio.get_running_loop().create_task(
            self._run(live, workflow, values, options), name=f"aoe-run-{run_id}"
        )
        return {"run_id": run_id, "status": "queued", "url": f"{API}/runs/{run_id}"}

    async def _run(
        self, live: _Live, workflow: Any, values: dict[str, Any], options: dict[str, Any]
    ) -> None:
        from aoe.service.runner import run_workflow

        subscribers: list[Callable[[Event], None]] = [live, self.monitor]
        if self.metrics is not None:
            subscribers.append(self.metrics)
        try:
            await run_workflow(
                workflow,
                values,
                self.settings,
                subscribers=subscribers,
                run_id=live.run_id,
                store=self.store,
                engine=self.engine,
                mock=options["mock"],
                budget=options["budget"],
                max_parallel=options["max_parallel"],
                cache=options["cache"],
                max_units=options["max_units"],
                max_reply_bytes=options["max_reply_bytes"],
            )
        except asyncio.CancelledError:
            if not live.started:  # cancelled in the queue: its record says so
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


class Shared:
    """What an ``aoe serve`` does with Redis: submissions go on the work queue,
    a worker in this process (unless ``--no-worker``) runs queued runs on the
    service's engine, and the API reports any run from its record in Redis, a
    copy of which it keeps in ``shared.db`` beside the run store."""

    BACKLOG_EVERY = 2.0  # seconds between looks at the queue's length
    PRUNE_EVERY = 3600.0  # seconds between prunings of shared.db

    def __init__(self, service: Service, subscribers: list[Callable[[Event], None]]) -> None:
        from aoe.redis.queue import client_for, stream_keys
        from aoe.service.worker import Worker
        from aoe.state.store import Store

        self.service = service
        settings = service.settings
        self.prefix = settings.config.redis.key_prefix
        self.client = client_for(settings)
        self.queue, _ = stream_keys(self.prefix)
        self.records = Store(service.store.path.with_name("shared.db"))
        self.worker = (
            Worker(
                settings,
                service.store,
                concurrency=service.limit,
                engine=service.engine,
                subscribers=subscribers,
            )
            if service.options.worker
            else None
        )
        self.backlog = 0  # queued runs no worker has taken, as last seen
        self.outage: str | None = None  # why Redis is unreachable, if it is
        self.worker_failure: str | None = None
        self._restoring = asyncio.Lock()  # one restore into shared.db at a time
        # per run: the head's epoch and the journal entry shared.db's copy is read to
        self._seen: dict[str, tuple[str, str]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._working: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._watcher = loop.create_task(self._watch_backlog())
        if self.worker is not None:
            self._working = loop.create_task(self.worker.serve(self._stop))
            self._working.add_done_callback(self._worker_ended)

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        """A worker that stopped before the service did is a fault to report."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("the worker of this service stopped: %r; it runs no more queued runs", error)
        self.worker_failure = f"its worker stopped ({error!r}): it runs no queued runs"

    def counts(self) -> tuple[int, int]:
        return (0 if self.worker is None else len(self.worker.running)), self.backlog

    def problem(self) -> str | None:
        """What keeps this service from working, for ``/health``."""
        if self.outage is not None:
            return f"Redis is unreachable ({self.outage}): runs can be neither queued nor reported"
        return self.worker_failure

    async def _watch_backlog(self) -> None:
        from aoe.redis.queue import backlog

        prune_at = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= prune_at:
                prune_at = time.monotonic() + self.PRUNE_EVERY
                await self._prune()
            try:
                self.backlog = await backlog(self.client, self.queue)
                if self.outage is not None:
                    log.warning("Redis answers again")
                self.outage = None
            except Exception as e:
                if isinstance(e, RedisUnreachable):
                    if self.outage is None:
                        log.error("Redis is unreachable (%s)", e)
                    self.outage = f"{e}"
                else:  # not fatal to the service: seen again in 2 s
                    log.error("cannot read the work queue's length: %s", e)
            # stopped by the event, not cancelled: a Redis command cancelled in
            # flight has been seen to leave its task hanging (redis-py 8.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.BACKLOG_EVERY)

    async def _prune(self) -> None:
        """Drop the copies in ``shared.db`` of runs that began (or last resumed
        or ended) ``RECORD_TTL`` ago, as their records in Redis expire; a copy
        asked about again is read anew. A failure is logged, not fatal."""
        from aoe.errors import StateUnusable, StateWriteFailed
        from aoe.redis.copies import prune_copies
        from aoe.redis.records import RECORD_TTL

        try:
            async with self._restoring:
                dropped = await asyncio.to_thread(prune_copies, self.records.path, RECORD_TTL)
                for run_id in dropped:
                    self._seen.pop(run_id, None)
        except (StateWriteFailed, StateUnusable, sqlite3.Error) as e:
            log.error("cannot prune %s: %s", self.records.path, e)
            return
        if dropped:
            log.info("dropped %d old run records from %s", len(dropped), self.records.path)

    async def submit(
        self, text: str, name: str, workflow: Any, inputs: dict[str, Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        from aoe.redis.queue import enqueue

        if self.backlog >= self.service.options.queue_limit:
            raise Refused(429, f"{self.backlog} runs are waiting in the queue already: retry later")
        try:
            run_id = await enqueue(
                self.service.settings,
                text,
                name,
                inputs,
                options,
                dict(workflow.files),
                workflow_name=workflow.name,
                client=self.client,
            )
        except OptionInvalid as e:  # Redis is unreachable
            raise Refused(503, str(e)) from None
        return {"run_id": run_id, "status": "queued", "url": f"{API}/runs/{run_id}"}

    async def run(self, run_id: str) -> dict[str, Any] | None:
        """The run with its agents, from its record in Redis; None if none there."""
        from aoe.redis.copies import head_of, summary_from

        head = await head_of(self.client, self.prefix, run_id, export=False)
        if head is None:
            return None
        summary = summary_from(run_id, head)
        if await self._bring_up(run_id, head) is None:  # queued, or cancelled before it started
            return {**summary, "agents": []}
        run = self.records.run(run_id).to_dict()
        run.pop("workflow_text", None)
        run.update({k: v for k, v in summary.items() if v is not None})  # its worker's word
        run["agents"] = [agent.to_dict() for agent in self.records.agents(run_id)]
        return run

    async def _bring_up(self, run_id: str, head: dict[str, str]) -> SharedRecord | None:
        """Bring ``shared.db``'s copy of the run up to its record in Redis (None
        if there is none yet), reading only the journal's entries this service
        has not read before, unless its copy turns out not to reach them."""
        from aoe.redis.copies import Partial, fetch

        if not head.get("session"):  # queued: no session began, nothing to read
            return None
        seen = self._seen.get(run_id)
        # the same epoch: the same session's journal (a rewrite after Redis lost
        # the record starts a new stream; a copy it does not continue is Partial)
        after = seen[1] if seen is not None and seen[0] == head.get("epoch") else None
        record = await fetch(self.client, self.prefix, run_id, head, after=after)
        if record is None:
            return None
        try:
            await self._restore(record)
        except Partial:  # this copy is not where it was (shared.db lost it)
            record = await fetch(self.client, self.prefix, run_id)
            if record is None:  # expired meanwhile
                return None
            await self._restore(record)
        # (concurrent GETs may leave an earlier entry here: that costs a re-read)
        self._seen.pop(run_id, None)
        self._seen[run_id] = (record.head["epoch"], record.last)
        while len(self._seen) > SEEN_RUNS:  # the runs asked about least recently go
            del self._seen[next(iter(self._seen))]
        return record

    async def _restore(self, record: SharedRecord) -> None:
        from aoe.redis.copies import restore_into

        async with self._restoring:  # one writer of shared.db at a time
            await asyncio.to_thread(restore_into, record, self.records.path)

    async def runs(
        self, status: str | None, workflow: str | None, limit: int
    ) -> list[dict[str, Any]]:
        from aoe.redis.copies import list_runs

        return await list_runs(
            self.client, self.prefix, status=status, workflow=workflow, limit=min(limit, 1000)
        )

    async def cancel(self, run_id: str) -> tuple[int, dict[str, Any]] | None:
        """Ask the worker running it (or the next to take it) to stop it."""
        from aoe.redis.records import cancel

        status = await cancel(self.client, self.prefix, run_id)
        if status is None:
            return None
        if status == "cancelled-now":  # no worker had it; one that takes it acks it
            return 200, {"run_id": run_id, "status": "cancelled"}
        if status != "cancelling":
            return 409, {"error": f"run {run_id} is not running (it is {status})"}
        return 202, {"run_id": run_id, "status": "cancelling"}

    async def events(self, request: web.Request, run_id: str) -> web.StreamResponse | None:
        """The run's events over SSE: those recorded, then live from its journal in
        Redis until the run ends."""
        from aoe.redis.copies import head_of
        from aoe.redis.records import FINAL, record_keys
        from aoe.state.journal import read_journal

        head = await head_of(self.client, self.prefix, run_id, export=False)
        if head is None:
            return None
        record = await self._bring_up(run_id, head)
        recorded: list[dict[str, Any]] = []
        last = "0-0"
        if record is not None:
            recorded = self.records.events(run_id)
            last = record.last
        response = await _event_stream(request)
        number = 0
        for number, row in enumerate(recorded, 1):
            await response.write(_sse(number, row["type"], row))
        head_key, journal = record_keys(self.prefix, run_id)
        quiet = 0.0

        async def over() -> bool:  # its head's word: final, or gone (expired)
            status = await self.client.hget(head_key, "status")
            return status is None or reply_text(status) in FINAL

        # a RunFinished of an earlier session (a drained worker's) is not the end:
        # the head says whether the run is over
        ended = head.get("status") in FINAL
        try:
            while not ended and not self.service.draining:
                answer: Any = await self.client.xread({journal: last}, count=100, block=2000)
                if not answer:
                    quiet += 2.0
                    if quiet >= HEARTBEAT:
                        await response.write(b": keep-alive\n\n")
                        quiet = 0.0
                    ended = await over()
                    continue
                finished = False
                for entry_id, fields in answer[0][1]:
                    last = reply_text(entry_id)
                    for event, _ in read_journal(bytes(fields[b"d"]), run_id):
                        number += 1
                        kind = type(event).__name__
                        await response.write(_sse(number, kind, event_dict(event)))
                        finished = finished or isinstance(event, RunFinished)
                if finished:  # its worker writes the head's final word right after
                    for _ in range(10):
                        ended = await over()
                        if ended:
                            break
                        await asyncio.sleep(0.2)
            if ended:
                await response.write(_sse(None, "end", {"run_id": run_id}))
            else:  # this service is stopping; the run goes on elsewhere
                reconnect = {"error": "this service is shutting down: reconnect to follow the run"}
                await response.write(_sse(None, "error", reconnect))
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away
        return response

    async def aclose(self) -> None:
        """The worker hands its runs back to the queue (another worker resumes
        them), then the connections close."""
        self._stop.set()
        if self._working is not None:
            await asyncio.gather(self._working, return_exceptions=True)
        if self._watcher is not None:  # ends within its Redis timeout; else cut short
            await asyncio.wait({self._watcher}, timeout=10)
            self._watcher.cancel()

    async def close(self) -> None:
        """Once the HTTP server has stopped: the connection and the records' copy."""
        await self.client.aclose()
        self.records.close()


async def _event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


class Refused(Signal):
    """A request the service answers with ``status`` and ``message`` (busy, shutting
    down, not found): raised in the service, turned into the answer by the handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- HTTP ------------------------------------------------------------------------------
def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Every answer: strict JSON (no NaN or Infinity, whatever a record holds)."""
    return web.json_response(value, status=status, headers=headers, dumps=dumps)


def _error(status: int, message: str, **more: Any) -> web.Response:
    return _json({"error": message, **more}, status=status)


def make_app(service: Service) -> web.Application:
    """The aiohttp application of a service."""
    token = service.options.token
    options = service.options

    def find(run_id: str) -> RunRow:
        """A run's record; :class:`Refused` 404 without the store's path, which
        is the server's business."""
        try:
            return service.store.run(run_id)
        except RunNotFound as e:
            where = str(service.store.path)
            message = str(e).replace(f" in {where}", "").replace(where, "the run store")
            raise Refused(404, message) from None

    @web.middleware
    async def guard(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if isinstance(request.protocol, Connection):  # no deadline while it is answered
            request.protocol.busy_with()
        if token is not None and request.path.startswith("/api/"):
            given = request.headers.get("Authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), token.encode()
            ):
                return _json(
                    {"error": "a bearer token is required: Authorization: Bearer $AOE_API_TOKEN"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="aoe"'},
                )
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the body is over {options.max_body:,} bytes")
        except web.HTTPException as e:  # no such route, method not allowed: JSON too
            response = _error(e.status, e.reason)
            if "Allow" in e.headers:
                response.headers["Allow"] = e.headers["Allow"]
            return response
        except Refused as e:
            return _error(e.status, e.message)
        except UserError as e:  # a record from Redis this instance cannot use
            if service.shared is None:
                return _internal(request, e)
            return _error(503, str(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if service.shared is None or not isinstance(e, RedisFailed):
                return _internal(request, e)
            # Redis unreachable, or refusing: the caller may try again (elsewhere)
            log.error("%s %s: Redis failed: %s", request.method, request.path, e)
            return _error(503, f"Redis, where runs are queued and recorded, failed: {e}")

    async def health(request: web.Request) -> web.Response:
        result = service.health()
        return _json(result.to_json(), status=result.http_status)

    async def live(request: web.Request) -> web.Response:
        return _json({"status": "alive"})

    async def metrics(request: web.Request) -> web.Response:
        if service.metrics is None:
            return _error(404, "metrics are off (ENABLE_METRICS=false)")
        service.health()  # the health and queue gauges, as of now
        active, _ = service.counts()
        service.metrics.active.set(active)
        body, content_type = service.metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def submit(request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(options.body_timeout):
                raw = await request.read()
        except TimeoutError:
            response = _error(
                408, f"the body did not arrive within {options.body_timeout:g} s (--body-timeout)"
            )
            response.force_close()
            return response
        try:
            body = submission(parse_body(raw))
        except BodyInvalid as e:
            return _error(400, str(e))
        try:
            accepted = await service.submit(body)
        except DiagnosticsError as e:
            return _error(400, _first_line(e), diagnostics=[d.to_json() for d in e.diagnostics])
        except UserError as e:
            return _error(400, str(e))
        except (ValueError, RecursionError) as e:  # a name with a NUL, a deep input
            return _error(400, f"the submission cannot be used: {e}")
        return _json(accepted, status=202, headers={"Location": accepted["url"]})

    async def runs(request: web.Request) -> web.Response:
        try:
            query = runs_query(dict(request.query))
        except BodyInvalid as e:
            return _error(400, str(e))
        if service.shared is not None:
            shared = await service.shared.runs(query.status, query.workflow, query.limit)
            return _json({"runs": shared})
        listed = service.store.runs(status=query.status, workflow=query.workflow, limit=query.limit)
        found = [run.to_dict() for run in listed]
        for run in found:
            live_run = service.live.get(run["run_id"])
            if live_run is not None and live_run.state == "queued":
                run["status"] = "queued"
        return _json({"runs": found})

    async def one_run(request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        if service.shared is not None:
            shared = await service.shared.run(run_id)
            if shared is not None:
                return _json(shared)
        row = find(run_id)
        run = row.to_dict()
        live_run = service.live.get(row.run_id)
        if live_run is not None and live_run.state == "queued":
            run["status"] = "queued"
        run.pop("workflow_text", None)
        run["agents"] = [agent.to_dict() for agent in service.store.agents(row.run_id)]
        return _json(run)

    async def cancel(request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        if service.shared is not None:
            answer = await service.shared.cancel(run_id)
            if answer is not None:
                return _json(answer[1], status=answer[0])
        if service.cancel(run_id):
            return _json({"run_id": run_id, "status": "cancelling"}, status=202)
        run = find(run_id)
        return _error(409, f"run {run.run_id} is not running here (it is {run.status})")

    async def events(request: web.Request) -> web.StreamResponse:
        run_id = request.match_info["run_id"]
        if service.shared is not None:
            streamed = await service.shared.events(request, run_id)
            if streamed is not None:
                return streamed
        live_run = service.live.get(run_id)
        recorded: list[dict[str, Any]] = []
        if live_run is None:
            run_id = find(run_id).run_id
            live_run = service.live.get(run_id)
            if live_run is None:
                recorded = service.store.events(run_id)
        response = await _event_stream(request)
        if live_run is None:
            for number, row in enumerate(recorded, 1):
                await response.write(_sse(number, row["type"], row))
            await response.write(_sse(None, "end", {"run_id": run_id}))
            return response
        listener = _Listener()
        backlog = list(live_run.log)  # and from now on, the rest: no gap, no repeat
        finished = live_run.finished
        if not finished:
            live_run.listeners.add(listener)
        try:
            number = 0
            for event in backlog:
                number += 1
                await response.write(_sse(number, type(event).__name__, event_dict(event)))
            while not finished:
                try:
                    item = await asyncio.wait_for(listener.queue.get(), HEARTBEAT)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is _END:
                    break
                if item is _LAGGED:
                    await response.write(
                        _sse(None, "error", {"error": "this stream fell behind: reconnect"})
                    )
                    return response
                number += 1
                await response.write(_sse(number, type(item).__name__, event_dict(item)))
            await response.write(_sse(None, "end", {"run_id": run_id}))
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away
        finally:
            live_run.listeners.discard(listener)
        return response

    app = web.Application(middlewares=[guard], client_max_size=service.options.max_body)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", live)
    app.router.add_get("/metrics", metrics)
    app.router.add_post(f"{API}/runs", submit)
    app.router.add_get(f"{API}/runs", runs)
    app.router.add_get(f"{API}/runs/{{run_id}}", one_run)
    app.router.add_get(f"{API}/runs/{{run_id}}/events", events)
    app.router.add_post(f"{API}/runs/{{run_id}}/cancel", cancel)
    return app


def _first_line(error: Exception) -> str:
    count = len(getattr(error, "diagnostics", ()))
    return f"the workflow or its inputs are invalid ({count} problem{'s' if count != 1 else ''})"


def _internal(request: web.Request, error: BaseException) -> web.Response:
    """A bug: logged (one line in JSON, its traceback in its ``exception``), and
    a JSON 500 that says no more."""
    log.error("%s %s failed: %r", request.method, request.path, error, exc_info=error)
    return _error(500, "internal error: the service's log has the details")


def _sse(number: int | None, kind: str, data: Any) -> bytes:
    head = f"id: {number}\n" if number is not None else ""
    return f"{head}event: {kind}\ndata: {dumps(data)}\n\n".encode()


def connection_limits(options: ServeOptions) -> Limits:
    """The limits on clients; raises OptionInvalid for a ``--max-connections``
    that the limit on open files cannot hold."""
    for flag, seconds in (
        ("--header-timeout", options.header_timeout),
        ("--body-timeout", options.body_timeout),
        ("--idle-timeout", options.idle_timeout),
    ):
        if not 0 < seconds <= MOST_SECONDS:  # (NaN too)
            raise OptionInvalid(f"{flag} must be a number of seconds, up to {MOST_SECONDS:g}")
    descriptors = descriptor_limit()
    cap = options.max_connections
    if cap is None:
        cap = default_max_connections(descriptors)
    elif cap > most_connections(descriptors):
        raise OptionInvalid(
            f"--max-connections {cap} needs more open files than this process may have "
            f"({descriptors}, with some for the run store and providers): give at most "
            f"{most_connections(descriptors)}, or raise the limit (LimitNOFILE, ulimit -n)"
        )
    return Limits(cap, options.header_timeout, options.body_timeout, options.idle_timeout)


def _return_large_blocks() -> None:
    """Keep glibc's malloc from holding on to the memory of large requests.

    A service allocates and frees large blocks all day (request bodies, the
    workflows parsed from them). glibc raises its mmap threshold to the size of
    the first large block freed, and serves later ones from its heap, whose
    freed pages it keeps: `aoe serve` grew by ~0.5 MB per 0.9 MB workflow
    submitted, never given back. A fixed threshold (as ``MALLOC_MMAP_THRESHOLD_``
    would set) keeps blocks over 128 KiB in mmap, returned when freed."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD; musl ignores it
    except (OSError, AttributeError):
        return


async def serve(settings: Settings, store: Store, options: ServeOptions) -> None:
    """Serve until SIGTERM or SIGINT, then drain; says so in the log."""
    if not is_loopback(options.host) and not options.token:
        raise OptionInvalid(
            f"binding {options.host} (beyond this machine) needs a bearer token: set "
            "AOE_API_TOKEN to a long random secret, or bind 127.0.0.1"
        )
    limits = connection_limits(options)
    _return_large_blocks()
    service = Service(settings, store, options)
    service.warm_up()
    if service.shared is not None:
        service.shared.start()
    app = make_app(service)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    gate = Gate(runner.server, limits)
    site = Site(runner, options.host, options.port, gate)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise OptionInvalid(
            f"cannot listen on {options.host}:{options.port}: {e.strerror or e}; "
            "choose another --port"
        ) from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "listening on http://%s:%s (pid %s, %s runs at once, %s connections)",
        options.host, site.port, os.getpid(), service.limit, limits.max_connections,
    )  # fmt: skip
    try:
        await stop.wait()
        log.info("draining: no new runs; cancelling the runs in progress")
        await service.drain()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        if service.shared is not None:
            await service.shared.close()
    log.info("stopped; the runs it cancelled can be resumed with `aoe resume`")
