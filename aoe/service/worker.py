"""A work queue of runs on a Redis Stream: ``aoe submit`` and ``aoe worker``.

The stream itself (reading, claiming, acknowledging) is :mod:`aoe.redis.queue`;
this module is what a worker does with the runs it reads.

``aoe submit WORKFLOW`` checks the workflow and its inputs here (exit 2 when
wrong, as ``aoe run``), picks the run's id, and appends the run — its YAML,
inputs and options — to the stream ``<prefix>:{queue}:runs``. Workers read it
as one consumer group, so each run goes to one worker at a time:

- a worker records the run in its run store as ``aoe run`` does, and
  acknowledges the message only once the run's record is final;
- while it runs, the worker keeps the message claimed (its idle time reset
  every ``lease / 3`` seconds); a worker that dies stops doing so, and after
  ``lease`` seconds another worker takes the message over (``XAUTOCLAIM``) and
  *resumes* the run from its record: completed agents are not called again;
- a message delivered more than ``max_deliveries`` times (a run that kills its
  workers), or one that cannot be read, goes to the dead-letter stream
  ``<prefix>:{queue}:dead`` with the reason, and is acknowledged;
- SIGTERM drains: the worker reads no more, cancels its runs (their finished
  agents recorded) and hands their messages back to the queue, where another
  worker takes them at once and resumes them.

Each worker records its runs in its own run store (``AOE_STATE_DIR``) and in
Redis (:mod:`aoe.redis.records`): a worker that takes a run over, on any host,
first brings its store up to what Redis holds, so the workers need no shared
volume, and any ``aoe serve`` can report on the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

from aoe.errors import RedisFailed, RedisUnreachable, ResumeRefused, StateWriteFailed
from aoe.redis.queue import RunQueue, client_for

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aoe.config.settings import Settings
    from aoe.engine.engine import Engine
    from aoe.events import Subscriber
    from aoe.redis.records import RecordMirror
    from aoe.state.rows import RunRow
    from aoe.state.store import Store

log = logging.getLogger("aoe.worker")

CANCEL_POLL = 0.5  # seconds between checks for runs cancelled on request
LEASE = 30.0
MAX_DELIVERIES = 3


class Worker:
    """One ``aoe worker``: reads runs from the queue and runs them, ``concurrency``
    at a time, on one engine."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        concurrency: int = 4,
        lease: float = LEASE,
        max_deliveries: int = MAX_DELIVERIES,
        engine: Engine | None = None,
        subscribers: Sequence[Subscriber] = (),
    ) -> None:
        from aoe.service.wiring import engine_for

        self.settings = settings
        self.prefix = settings.config.redis.key_prefix
        self.subscribers = subscribers
        self.store = store
        self.concurrency = concurrency
        self.lease = lease
        self.max_deliveries = max_deliveries
        self.client = client_for(settings)
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.queue = RunQueue(self.client, self.prefix, self.name)
        self.own_engine = engine is None
        self.engine = engine_for(settings) if engine is None else engine
        self.running: dict[str, asyncio.Task[None]] = {}  # message id -> its run
        self.run_ids: dict[str, str] = {}  # message id -> run id, of those running
        self.cancelled: set[str] = set()  # runs stopped on request (aoe serve)
        self.stopping = False
        self.done = 0
        self._fields: dict[str, dict[str, str]] = {}  # of the messages being run

    async def serve(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: take messages (reclaimed ones first), run them."""
        while True:  # Redis may come up after the workers
            try:
                await self.queue.setup()
                break
            except RedisUnreachable as e:
                log.error("Redis is unreachable (%s): waiting for it", e)
                await _first(stop, timeout=2.0)
                if stop.is_set():
                    await self.drain()
                    return
        log.info(
            "worker %s: reading %s (%d at a time, lease %gs)",
            self.name, self.queue.stream, self.concurrency, self.lease,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        keeper = loop.create_task(self._keep_claims())
        watcher = loop.create_task(self._watch_cancels())
        outage = False
        try:
            while not stop.is_set():
                room = self.concurrency - len(self.running)
                if room <= 0:
                    await _first(stop, *self.running.values())
                    continue
                try:
                    messages = await self.queue.reclaimed(room, self.lease) or await self.queue.new(
                        room
                    )
                except RedisFailed as e:
                    if "NOGROUP" in str(e):  # a Redis that restarted without its data
                        log.error("the queue's consumer group is gone: making it again")
                        with contextlib.suppress(Exception):  # unreachable: next time
                            await self.queue.setup()
                        await _first(stop, timeout=1.0)
                        continue
                    if not isinstance(e, RedisUnreachable):
                        raise
                    if not outage:
                        log.error("Redis is unreachable (%s): waiting for it", e)
                        outage = True
                    await _first(stop, timeout=1.0)
                    continue
                if outage:
                    log.warning("Redis answers again")
                    outage = False
                for message_id, fields, deliveries in messages:
                    self._start(message_id, fields, deliveries)
        finally:
            keeper.cancel()
            watcher.cancel()
            self.stopping = True
            await self.drain()

    def _start(self, message_id: str, fields: dict[str, str], deliveries: int) -> None:
        if message_id in self.running:  # taken back while this worker still runs it
            return
        task = asyncio.get_running_loop().create_task(
            self._process(message_id, fields, deliveries), name=f"aoe-message-{message_id}"
        )
        self.running[message_id] = task
        self.run_ids[message_id] = fields.get("run_id", "?")
        self._fields[message_id] = fields
        task.add_done_callback(lambda done: self._finished(message_id, done))

    def _finished(self, message_id: str, task: asyncio.Task[None]) -> None:
        if self.running.get(message_id) is task:
            del self.running[message_id]
            self.cancelled.discard(self.run_ids.pop(message_id, ""))
            if not self.stopping:
                self._fields.pop(message_id, None)

    async def _process(self, message_id: str, fields: dict[str, str], deliveries: int) -> None:

        run_id = fields.get("run_id", "?")
        if deliveries > self.max_deliveries:
            await self._dead(
                message_id, fields, f"delivered {deliveries} times: its workers keep dying"
            )
            return
        try:
            # parsing a workflow of up to --max-body bytes: off the event loop
            workflow, inputs, options = await asyncio.to_thread(self._read, fields)
        except Exception as e:  # a message no worker can ever run
            await self._dead(message_id, fields, f"cannot be run: {e}")
            return
        from aoe.redis.records import RecordMirror

        redis = self.settings.config.redis
        mirror = RecordMirror(
            self.client, run_id, prefix=redis.key_prefix, on_unavailable=redis.on_unavailable
        )
        try:
            if await self.queue.cancel_asked(run_id):
                await self._cancelled(message_id, run_id, mirror)
                return
            status = await self._run(run_id, workflow, inputs, options, mirror)
        except asyncio.CancelledError:
            if run_id not in self.cancelled:
                log.info(
                    "run %s cancelled; left for another worker", run_id, extra={"run_id": run_id}
                )
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            try:
                await self._cancelled(message_id, run_id, mirror)
            except Exception as e:  # Redis: the lease hands it on; the next worker sees
                log.warning(  # the cancel key and ends it
                    "run %s cancelled; its record in Redis not updated (%s)",
                    run_id, e, extra={"run_id": run_id},
                )  # fmt: skip
            return
        except (ResumeRefused, StateWriteFailed) as e:  # not now: left for later
            log.warning("run %s left in the queue: %s", run_id, e, extra={"run_id": run_id})
            return
        except Exception as e:
            if isinstance(e, RedisFailed):
                # Redis away or refusing (out of memory, a failover): not the
                # run's fault; its lease hands it on
                log.warning(
                    "run %s left in the queue: Redis failed (%s)",
                    run_id, e, extra={"run_id": run_id},
                )  # fmt: skip
                return
            await self._dead(message_id, fields, f"run {run_id} could not be run: {e}")
            return
        await self._ack(message_id)
        self.done += 1
        log.info("run %s ended %s", run_id, status, extra={"run_id": run_id})

    async def _ack(self, message_id: str) -> None:
        """Acknowledge a message whose run is final, if this worker still holds
        it (not one another took over meanwhile); while Redis is unreachable,
        keep trying (else the lease hands the finished run to another worker,
        which finds it done)."""
        self.run_ids.pop(message_id, None)  # no cancel for it now: it is over
        while True:
            try:
                await self.queue.ack(message_id)
                return
            except Exception as e:
                if not isinstance(e, RedisUnreachable) or self.stopping:
                    log.warning("message %s not acknowledged (%s)", message_id, e)
                    return
                await asyncio.sleep(1.0)

    def _read(self, fields: dict[str, str]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        from aoe.service.runner import bind, load_text

        files = json.loads(fields.get("files") or "{}")
        workflow = load_text(
            fields["workflow"], fields.get("name") or "queued.yaml", self.settings, files
        )
        given = json.loads(fields.get("inputs") or "{}")
        options = json.loads(fields.get("options") or "{}")
        values = bind(workflow, given, "the queued inputs")
        return workflow, values, options

    async def _run(
        self,
        run_id: str,
        workflow: Any,
        inputs: dict[str, Any],
        options: dict[str, Any],
        mirror: RecordMirror,
    ) -> Any:
        """A fresh run, or — when its record exists (another worker started it) —
        its resumption, which never calls a completed agent again."""
        from aoe.errors import RunNotFound
        from aoe.redis.copies import restore
        from aoe.service.resume import plan_resume
        from aoe.service.runner import RunOptions, run_workflow

        # a service's limits (max_units, max_reply_bytes) travel with its run
        chosen = RunOptions.from_record(options)
        arguments: dict[str, Any] = {"mirror": mirror, "subscribers": self.subscribers}
        # what another worker, maybe on another host, recorded of it; its
        # session begins only if no other began one since
        mirror.expected = await restore(self.client, self.prefix, self.store, run_id)
        try:
            # the queue decides who owns the run (its lease), not the record's pid,
            # which may be of another host
            plan = plan_resume(self.store, run_id, self.settings, take_over=True)
        except RunNotFound:
            return await run_workflow(
                workflow,
                inputs,
                self.settings,
                chosen.but(run_id=run_id),
                store=self.store,
                engine=self.engine,
                **arguments,
            )
        if plan.done:  # its worker died after recording its end
            run = self.store.run(run_id)
            await mirror.finish(run)
            return run.status
        log.info(
            "run %s: resuming after another worker (%d agents kept)",
            run_id, len(plan.kept), extra={"run_id": run_id},
        )  # fmt: skip
        return await run_workflow(
            plan.workflow,
            plan.inputs,
            self.settings,
            chosen,
            store=self.store,
            engine=self.engine,
            resume=plan,
            **arguments,
        )

    async def _cancelled(self, message_id: str, run_id: str, mirror: RecordMirror) -> None:
        """A run cancelled on request, before or while it ran: final, acknowledged."""
        from aoe.errors import RunNotFound
        from aoe.redis.records import mark

        try:
            run: RunRow | None = self.store.run(run_id)
        except RunNotFound:  # not started here
            run = None
        if run is not None and not run.status.final:
            self.store.mark_cancelled(run_id)  # stopped before its session began
            run = self.store.run(run_id)
        if run is not None and mirror.epoch is not None:  # its session, its record
            await mirror.finish(run)
        else:
            await mark(
                self.client,
                self.prefix,
                run_id,
                {"status": "cancelled", "finished_at": time.time()},
            )
        await self._ack(message_id)
        self.cancelled.discard(run_id)
        self.done += 1
        log.info("run %s cancelled on request", run_id, extra={"run_id": run_id})

    async def _watch_cancels(self) -> None:
        """Stop the runs whose cancel key ``aoe serve`` set (checked twice a second)."""
        while True:
            await asyncio.sleep(CANCEL_POLL)
            running = {
                run_id: message_id
                for message_id, run_id in self.run_ids.items()
                if run_id not in self.cancelled
            }
            if not running:
                continue
            with contextlib.suppress(Exception):  # unreachable: next time
                found = await self.queue.cancels(running)
                for run_id, value in zip(running, found, strict=True):
                    task = self.running.get(running[run_id])
                    if value and task is not None:
                        log.info("run %s: cancel requested", run_id, extra={"run_id": run_id})
                        self.cancelled.add(run_id)
                        task.cancel()

    async def _dead(self, message_id: str, fields: dict[str, str], reason: str) -> None:
        from aoe.redis.records import mark

        log.error("message %s to the dead letters: %s", message_id, reason)
        try:
            await self.queue.bury(message_id, fields, reason)
        except Exception as e:  # Redis away: the message stays; its next delivery tries again
            log.warning("message %s not moved to the dead letters yet (%s)", message_id, e)
            return
        run_id = fields.get("run_id")
        if run_id:  # its record says so, rather than "running" until it expires;
            # before the acknowledgement, which tells a watcher the message is done
            with contextlib.suppress(Exception):
                summary = {"status": "failed", "finished_at": time.time(), "error": reason}
                await mark(self.client, self.prefix, run_id, summary)
        await self._ack(message_id)

    async def _keep_claims(self) -> None:
        """Reset the idle time of the messages being run, so none is taken over;
        a run whose message another worker took (this one seemed dead, Redis was
        away for longer than the lease) is cancelled here: the other one has it."""
        while True:
            await asyncio.sleep(self.lease / 3)
            if not self.running:
                continue
            with contextlib.suppress(Exception):
                still = await self.queue.held()
                for message_id, task in list(self.running.items()):
                    if message_id not in still:
                        log.warning("message %s was taken over: its run stops here", message_id)
                        task.cancel()
                ids: list[Any] = [m for m in self.running if m in still]
                if ids:
                    # only if idle a while (ours, renewed every lease/3 s): one another
                    # worker took just now is not taken back
                    idle = int(self.lease * 1000 / 6)
                    await self.queue.renew(ids, idle)

    async def drain(self) -> None:
        """Cancel the runs in progress (recorded, resumable) and hand their messages
        back: each is queued again as a new message and the old one acknowledged,
        in one transaction, so another worker resumes it at once and a drain does
        not count as a delivery (a long run outlives any number of restarts)."""
        running = dict(self.running)
        for task in running.values():
            task.cancel()
        if running:
            await asyncio.gather(*running.values(), return_exceptions=True)
        for message_id in running:
            fields = self._fields.get(message_id)
            if fields is None:
                continue
            with contextlib.suppress(Exception):  # unreachable: the lease hands it over
                if await self.queue.hand_back(message_id, fields):
                    log.info("run %s handed back to the queue", fields.get("run_id"))
        if self.own_engine:
            await self.engine.aclose()
        await self.client.aclose()


async def _first(stop: asyncio.Event, *tasks: asyncio.Task[Any], timeout: float = 1.0) -> None:
    """Until ``stop`` is set, one of ``tasks`` ends, or ``timeout`` passes."""
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, *tasks}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def work(settings: Settings, store: Store, **options: Any) -> int:
    """``aoe worker``: until SIGTERM or SIGINT; the number of runs it finished."""
    worker = Worker(settings, store, **options)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await worker.serve(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("worker %s stopped after %d runs", worker.name, worker.done)
    return worker.done
