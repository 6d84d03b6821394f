"""What an ``aoe serve`` does with Redis: the replica's side of a shared service.

With Redis configured, a submission goes on the work queue
(:mod:`aoe.service.worker`) instead of running here; a worker in this process
(unless ``--no-worker``) and every ``aoe worker`` run what is queued, and every
replica answers for every run from its record in Redis
(:mod:`aoe.redis.records`): get, list, events (recorded, then live from its
journal) and cancel (a key its worker polls). A full queue makes ``/health``
degraded and submissions 429; Redis unreachable makes it unhealthy and the API
503.

:class:`Shared` is handed what it shares with the local service (the settings,
the run store, the engine, the subscribers that keep ``/health`` and
``/metrics``) rather than the service itself, so that it never imports
:mod:`aoe.service.local`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from aoe.errors import OptionInvalid, RedisUnreachable
from aoe.events import Event, RunFinished, event_dict
from aoe.observe.results import published
from aoe.redis.client import text as reply_text
from aoe.service.models import Refused
from aoe.service.options import API, ServeOptions
from aoe.service.sse import HEARTBEAT, KEEP_ALIVE, event_stream, frame

if TYPE_CHECKING:
    from aoe.config.settings import Settings
    from aoe.engine.engine import Engine
    from aoe.redis.copies import SharedRecord
    from aoe.state.store import Store

log = logging.getLogger("aoe.serve")

SEEN_RUNS = 10_000  # runs whose journal position in Redis a service remembers


class Shared:
    """What an ``aoe serve`` does with Redis: submissions go on the work queue,
    a worker in this process (unless ``--no-worker``) runs queued runs on the
    service's engine, and the API reports any run from its record in Redis, a
    copy of which it keeps in ``shared.db`` beside the run store."""

    BACKLOG_EVERY = 2.0  # seconds between looks at the queue's length
    PRUNE_EVERY = 3600.0  # seconds between prunings of shared.db

    def __init__(
        self,
        settings: Settings,
        store: Store,
        options: ServeOptions,
        engine: Engine,
        subscribers: list[Callable[[Event], None]],
    ) -> None:
        from aoe.redis.queue import client_for, stream_keys
        from aoe.service.worker import Worker
        from aoe.state.store import Store

        self.settings = settings
        self.options = options
        self.prefix = settings.config.redis.key_prefix
        self.client = client_for(settings)
        self.queue, _ = stream_keys(self.prefix)
        self.records = Store(store.path.with_name("shared.db"))
        self.worker = (
            Worker(
                settings,
                store,
                concurrency=settings.config.engine.max_concurrent_workflows,
                engine=engine,
                subscribers=subscribers,
            )
            if options.worker
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

        if self.backlog >= self.options.queue_limit:
            raise Refused(429, f"{self.backlog} runs are waiting in the queue already: retry later")
        try:
            run_id = await enqueue(
                self.settings,
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
        from aoe.observe.results import RESULTS_VERSION, listed, recorded
        from aoe.redis.copies import head_of, summary_from

        head = await head_of(self.client, self.prefix, run_id, export=False)
        if head is None:
            return None
        summary = summary_from(run_id, head)
        if await self._bring_up(run_id, head) is None:  # queued, or cancelled before it started
            head_only = listed(summary)
            del head_only["session"]
            return {
                "results_version": RESULTS_VERSION,
                **head_only,
                "session": None,
                "inputs": {},
                "agents": {},
                "outputs": {},
                "output_errors": {},
            }
        run = recorded(self.records, run_id)
        if summary.get("status"):  # its worker's word
            run["status"] = summary["status"]
        return run

    async def recorded(self, run_id: str) -> Store | None:
        """The store holding the run's copy, brought up to its record in Redis;
        None if Redis has no record of it (or it never started)."""
        from aoe.redis.copies import head_of

        head = await head_of(self.client, self.prefix, run_id, export=False)
        if head is None or await self._bring_up(run_id, head) is None:
            return None
        return self.records

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

    async def resume(self, run_id: str, budget: float | None) -> dict[str, Any] | None:
        """Queue a run that ended without completing again, from its record: the
        worker that takes it resumes it. None if Redis has no record of it."""
        from pathlib import PurePosixPath

        from aoe.redis.copies import head_of
        from aoe.redis.queue import enqueue
        from aoe.redis.records import FINAL, cancel_key

        head = await head_of(self.client, self.prefix, run_id, export=False)
        if head is None:
            return None
        status = head.get("status") or ""
        if status not in FINAL:
            raise Refused(409, f"run {run_id} is {status}: only a run that ended is resumed")
        if status == "completed":
            raise Refused(409, f"run {run_id} completed: there is nothing to resume")
        if await self._bring_up(run_id, head) is None:
            raise Refused(409, f"run {run_id} never started: submit it again")
        run = self.records.run(run_id)
        options = {**run.settings}
        # (a cancel asked before is done with: the worker that takes it must not
        # end it at once)
        await self.client.delete(cancel_key(self.prefix, run.run_id))
        if budget is not None:
            options["budget"] = budget
        try:
            await enqueue(
                self.settings,
                run.workflow_text,
                PurePosixPath(run.workflow_path).name,
                dict(run.inputs),
                options,
                dict(run.workflow_files),
                workflow_name=run.workflow_name,
                client=self.client,
                run_id=run.run_id,
            )
        except OptionInvalid as e:  # Redis is unreachable
            raise Refused(503, str(e)) from None
        return {"run_id": run.run_id, "status": "queued", "url": f"{API}/runs/{run.run_id}"}

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
        from aoe.redis.records import FINAL

        head = await head_of(self.client, self.prefix, run_id, export=False)
        if head is None:
            return None
        record = await self._bring_up(run_id, head)
        recorded: list[dict[str, Any]] = []
        last = "0-0"
        if record is not None:
            recorded = self.records.events(run_id)
            last = record.last
        response = await event_stream(request)
        number = 0
        for number, row in enumerate(recorded, 1):
            await response.write(frame(number, row["type"], published(row)))
        try:
            # a RunFinished of an earlier session (a drained worker's) is not the end:
            # the head says whether the run is over
            ended = head.get("status") in FINAL or await self._follow(
                response, run_id, last, number
            )
            if ended:
                await response.write(frame(None, "end", {"run_id": run_id}))
            else:  # this service is stopping; the run goes on elsewhere
                reconnect = {"error": "this service is shutting down: reconnect to follow the run"}
                await response.write(frame(None, "error", reconnect))
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away
        return response

    async def _follow(
        self, response: web.StreamResponse, run_id: str, last: str, number: int
    ) -> bool:
        """Write the run's journal entries after ``last`` as they arrive, numbered
        on from ``number``: True once its head says the run is over (and every
        entry before that word is written), False if this service stops first.

        A RunFinished is not the end: a drained worker's session ends cancelled
        and another worker's session goes on, maybe at once and to the end. The
        head is asked whenever the journal is quiet; its final word comes only
        after the last entry of the session that wrote it, so one more read
        after it finds everything."""
        from aoe.redis.records import record_keys

        head_key, journal = record_keys(self.prefix, run_id)
        quiet = 0.0
        finished = False  # a RunFinished came: ask the head more often
        while not self._stop.is_set():
            block = 200 if finished else 2000
            answer: Any = await self.client.xread({journal: last}, count=100, block=block)
            if answer:
                last, number, ended = await self._write(response, run_id, answer, number)
                finished = finished or ended
                continue
            quiet += block / 1000
            if quiet >= HEARTBEAT:
                await response.write(KEEP_ALIVE)
                quiet = 0.0
            if await self._over(head_key):
                answer = await self.client.xread({journal: last}, count=100_000)
                if answer:
                    await self._write(response, run_id, answer, number)
                return True
        return False

    @staticmethod
    async def _write(
        response: web.StreamResponse, run_id: str, answer: Any, number: int
    ) -> tuple[str, int, bool]:
        """An XREAD's entries as frames; the last entry's id, the last frame's
        number, and whether a RunFinished was among them."""
        from aoe.state.journal import read_journal

        last = ""
        finished = False
        for entry_id, fields in answer[0][1]:
            last = reply_text(entry_id)
            for event, _ in read_journal(bytes(fields[b"d"]), run_id):
                number += 1
                data = published(event_dict(event))
                await response.write(frame(number, type(event).__name__, data))
                finished = finished or isinstance(event, RunFinished)
        return last, number, finished

    async def _over(self, head_key: str) -> bool:
        """The head's word: the run is final, or gone (expired)."""
        from aoe.redis.records import FINAL

        status = await self.client.hget(head_key, "status")
        return status is None or reply_text(status) in FINAL

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
